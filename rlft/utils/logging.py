"""Metrics to JSONL (always), TensorBoard and experiment trackers (optional), and progress output.

`MetricLogger.log(step, metrics)` appends one JSON object per call to `metrics.jsonl`; on resume the file
is truncated to the resumed step so it never holds the same step twice. The same row goes to TensorBoard
(`log.tensorboard`) and to each tracker it was given (W&B, MLflow: `rlft/utils/trackers.py`), at the same
step: it is the one place metrics go.

`progress(total, desc=...)` is the trainers' progress display: a tqdm bar on a terminal, plain lines
every `log.progress_every_seconds` when stderr goes to a file.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rlft.utils.trackers import Tracker


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def _row(line: str) -> dict | None:
    """A metrics row, or None for a blank line or the torn last line of a run killed mid-write (that row is
    past the checkpoint being resumed from, so the resumed run writes it again)."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _number(value: Any) -> float | None:
    """A metric as a float for the trackers (NaN stays NaN), or None for what is not a number."""
    if hasattr(value, "item"):
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class MetricLogger:
    """`trackers`: open W&B / MLflow runs (`rlft.utils.trackers.open_trackers`) that get every row; closed
    with the logger."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 trackers: Sequence[Tracker] = ()):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if (row := _row(ln)) and row.get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self.trackers = list(trackers)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is an optional install; JSONL always works
                print("rlft: tensorboard not installed; metrics go to metrics.jsonl only", file=sys.stderr)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.trackers:
            numbers = {k: x for k, v in metrics.items() if (x := _number(v)) is not None}
            for tracker in self.trackers:
                tracker.log(step, numbers)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close()


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line (per-example predictions, exported records)."""
    with Path(path).open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln] if path.exists() else []


def quiet_libraries() -> None:
    """rlft prints its own progress; transformers' per-file bars and notices only bury it."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def print0(*args: Any) -> None:
    print(*args, flush=True)


def progress(total: int, *, desc: str, initial: int = 0, enabled: bool = True, every_seconds: float = 30.0,
             stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
    """A progress display with `update(n)`, `set_postfix(**figures)` and `close()`.

    On a terminal it is a tqdm bar, as before. Off a terminal (a cluster job's log file, `make demo >
    log.txt`) tqdm would write every redraw, carriage returns included, into the file; there it prints
    one plain line at most every `every_seconds` and a last one at `close()`, with the same figures.

    Args:
        total: units of work (steps, iterations, questions).
        desc: label at the start of every line.
        initial: units already done (a resumed run); the rate and ETA count only this process's work.
        enabled: False shows nothing (`log.progress`).
        every_seconds: least time between two plain lines (`log.progress_every_seconds`).
        stream: where to write (default: sys.stderr at call time).
        clock: seconds, monotonic (tests pass a fake one).
    Returns:
        a tqdm bar, or a `LineProgress`.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled or stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc=desc, initial=initial, every_seconds=every_seconds, stream=stream, clock=clock)


class LineProgress:
    """Progress as whole lines, e.g. `sft epoch 1/3: 40/126 (32%), 1.33 it/s, elapsed 0:00:30, eta 0:01:05,
    loss=0.512`: one at the first `update` at least `every_seconds` after the previous line, one at `close`."""

    def __init__(self, total: int, *, desc: str, initial: int, every_seconds: float, stream: TextIO,
                 clock: Callable[[], float]):
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.every_seconds, self.stream, self.clock = every_seconds, stream, clock
        self.start = self.last_line = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_line >= self.every_seconds:
            self._line(now)

    def set_postfix(self, **figures: Any) -> None:
        """Figures shown after the counts (`loss=0.512`); they appear on the next line written."""
        self.postfix = figures

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(self.clock())

    def _line(self, now: float) -> None:
        self.last_line = now
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = _clock_time((self.total - self.n) / rate) if rate > 0 else "?"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {self.n}/{self.total}{pct}", f"{rate:.3g} it/s", f"elapsed {_clock_time(elapsed)}",
                 f"eta {eta}", *(f"{k}={v}" for k, v in self.postfix.items())]
        print(", ".join(parts), file=self.stream, flush=True)


def _clock_time(seconds: float) -> str:
    """H:MM:SS."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
