"""rlft's answer checker and reward plug-ins, as a standalone package.

Depends only on the standard library, sympy and `latex2sympy2_extended`, and never imports `rlft`,
so it is usable from evaluation scripts, Ray reward actors and tests alone. Importing it is cheap:
sympy is loaded only inside the worker processes that need it.

Public API:
- `check(completion, gold, dataset=..., fmt=..., options=...) -> Verdict` and `check_batch`;
- `math_reward(completions, answer=..., ...)` (built-in reward "math") and `math_verdicts`,
  `summarize` for per-status metrics;
- `get_reward_fn(spec)`, `combine([(fn, w), ...])`, `safe_call(fn, completions, columns, ...)`;
- `warmup()` starts the worker pool ahead of the first batch, `shutdown()` stops it.
See `specs/checker.md` for the rules, `docs/checker.md` for where the implementation extends them,
and `docs/benchmarks.md` for accuracy and speed.
"""

from __future__ import annotations

from rewards.check import DEFAULT_TIMEOUT, Verdict, check, check_batch, score_for
from rewards.math_reward import math_reward, math_verdicts, summarize
from rewards.registry import (
    BUILTINS, ENTRY_POINT_GROUP, CombinedReward, RewardError, RewardFn, combine, get_reward_fn,
    safe_call,
)
from rewards.timeout import get_pool, shutdown


def warmup(workers: int | None = None) -> None:
    """Start the worker processes now (they take ~1 s to import sympy) instead of on first use."""
    get_pool(workers).warmup(workers)


__all__ = [
    "BUILTINS", "CombinedReward", "DEFAULT_TIMEOUT", "ENTRY_POINT_GROUP", "RewardError", "RewardFn",
    "Verdict", "check", "check_batch", "combine", "get_reward_fn", "math_reward", "math_verdicts",
    "safe_call", "score_for", "shutdown", "summarize", "warmup",
]
