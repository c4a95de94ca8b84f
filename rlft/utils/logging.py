"""Metrics to JSONL (always), TensorBoard (optional) and a one-line console summary.

`MetricLogger.log(step, metrics)` appends one JSON object per call to `metrics.jsonl`; on resume the file
is truncated to the resumed step so it never holds the same step twice.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


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


class MetricLogger:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if (row := _row(ln)) and row.get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
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

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
