"""Reward plug-in faults (issue #9, promise 2): every bad return is scored 0 and counted, or stops the
run naming the record ids (`reward.on_error`); never coerced or dropped silently. Covers both paths: a
plug-in in a killable worker process (by file spec) and a callable in a thread."""

import math
import textwrap
import time

import pytest

from rewards import RewardError, safe_call

COMPLETIONS = ["a", "b", "c"]
COLUMNS = {"answer": ["1", "2", "3"], "id": ["r0", "r1", "r2"]}

# (plug-in body returning for 3 completions, expected failed count); the comment says what is wrong
BAD_RETURNS = [
    ("[float('inf'), 1.0, 1.0]", 1),       # +inf
    ("[1.0, float('-inf'), 1.0]", 1),      # -inf
    ("[1.0, 1.0, float('nan')]", 1),       # NaN
    ("['1.0', 1.0, 1.0]", 1),              # a string is not a score, even one that parses
    ("[[1.0], 1.0, 1.0]", 1),              # a nested list
    ("[1.0, 1.0]", 3),                     # wrong length: every sample fails (which one is missing?)
    ("1.0", 3),                            # a float, not a list
    ("'101'", 3),                          # a string of the right length
    ("{'a': 1, 'b': 2, 'c': 3}", 3),       # a dict of the right length
    ("None", 3),                           # nothing
    ("1 / 0", 3),                          # raises
]


@pytest.fixture(params=["isolated", "thread"])
def make_fn(request, tmp_path):
    def make(expr: str):
        if request.param == "thread":
            return eval(f"lambda completions, **columns: {expr}")  # noqa: S307 (test-only literal)
        path = tmp_path / f"plug_{abs(hash(expr))}.py"
        path.write_text(f"def fn(completions, **columns):\n    return {expr}\n")
        return f"{path}:fn"
    return make


@pytest.mark.parametrize("expr, n_failed", BAD_RETURNS, ids=[e for e, _ in BAD_RETURNS])
def test_bad_return_is_scored_zero_and_counted(make_fn, expr, n_failed):
    """Breaks if a bad value is coerced (e.g. '1.0' -> 1.0), crashes the caller, or is not counted."""
    scores, failed = safe_call(make_fn(expr), COMPLETIONS, COLUMNS, timeout=30)
    assert failed == n_failed, (scores, failed)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert scores.count(0.0) >= n_failed


@pytest.mark.parametrize("expr, n_failed", BAD_RETURNS[:4], ids=[e for e, _ in BAD_RETURNS[:4]])
def test_on_error_raise_names_the_record(make_fn, expr, n_failed):
    """Breaks if on_error=raise lets a bad score through or the error does not name the record id."""
    bad_id = COLUMNS["id"][[i for i, x in enumerate(eval(expr)) if isinstance(x, str) or not math.isfinite(x)][0]]  # noqa: S307
    with pytest.raises(RewardError, match=bad_id):
        safe_call(make_fn(expr), COMPLETIONS, COLUMNS, timeout=30, on_error="raise")


def test_hung_plugin_worker_is_killed_and_replaced(tmp_path):
    """Breaks if a hung plug-in blocks past its timeout or leaves the pool unable to score."""
    hang = tmp_path / "hang.py"
    hang.write_text(textwrap.dedent("""
        def fn(completions, **columns):
            while True:
                pass
    """))
    t0 = time.monotonic()
    assert safe_call(f"{hang}:fn", COMPLETIONS, COLUMNS, timeout=1.0) == ([0.0, 0.0, 0.0], 3)
    assert time.monotonic() - t0 < 10
    good = tmp_path / "good.py"
    good.write_text("def fn(completions, **columns):\n    return [0.5] * len(completions)\n")
    assert safe_call(f"{good}:fn", COMPLETIONS, COLUMNS, timeout=30) == ([0.5, 0.5, 0.5], 0)
