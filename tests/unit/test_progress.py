"""`progress`: plain timed lines off a terminal (log files), a tqdm bar on one; a fake clock, no sleeps."""

import io

from tqdm.auto import tqdm

from rlft.utils.logging import progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total: int, steps: int, *, initial: int = 0, every: float = 30.0, enabled: bool = True) -> str:
    """`steps` updates of 1, one per fake second, with a changing postfix; returns what was written."""
    stream, clock = io.StringIO(), FakeClock()
    bar = progress(total, desc="demo", initial=initial, enabled=enabled, every_seconds=every, stream=stream, clock=clock)
    for step in range(1, steps + 1):
        clock.t = float(step)
        bar.set_postfix(loss=f"{1 / step:.3f}")
        bar.update(1)
    clock.t += 5.0  # the loop's tail (eval, checkpoint) before close
    bar.close()
    bar.close()  # a second close writes nothing
    return stream.getvalue()


def test_one_line_per_interval_and_a_last_line_at_close() -> None:
    text = _run(total=100, steps=100)
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines == [
        # 30 steps in 30 s: 1 it/s, 70 to go
        "demo: 30/100 (30%), 1 it/s, elapsed 0:00:30, eta 0:01:10, loss=0.033",
        "demo: 60/100 (60%), 1 it/s, elapsed 0:01:00, eta 0:00:40, loss=0.017",
        "demo: 90/100 (90%), 1 it/s, elapsed 0:01:30, eta 0:00:10, loss=0.011",
        # close at 105 s: 100 / 105 it/s, nothing left
        "demo: 100/100 (100%), 0.952 it/s, elapsed 0:01:45, eta 0:00:00, loss=0.010",
    ]


def test_short_loop_writes_only_the_last_line() -> None:
    lines = _run(total=10, steps=10).splitlines()
    assert lines == ["demo: 10/10 (100%), 0.667 it/s, elapsed 0:00:15, eta 0:00:00, loss=0.100"]


def test_resumed_run_counts_rate_from_its_own_work() -> None:
    # 50 done before the restart; 30 more in 30 s -> 1 it/s, 20 left -> eta 20 s (not 80/30 it/s)
    first = _run(total=100, steps=30, initial=50).splitlines()[0]
    assert first == "demo: 80/100 (80%), 1 it/s, elapsed 0:00:30, eta 0:00:20, loss=0.033"


def test_every_seconds_sets_the_interval() -> None:
    assert len(_run(total=100, steps=100, every=10.0).splitlines()) == 11  # at 10, 20, ..., 100 s, and close


def test_disabled_writes_nothing() -> None:
    assert _run(total=100, steps=100, enabled=False) == ""


def test_terminal_gets_a_tqdm_bar() -> None:
    stream = FakeTerminal()
    bar = progress(3, desc="demo", stream=stream)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()
