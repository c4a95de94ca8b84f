"""Reward plug-ins: resolve `reward.fn` specs, combine several with weights, call them safely.

Contract (`checker.md` §10, TRL's): `fn(completions, **columns) -> list[float | None]`, where the
columns are the dataset record's fields (`answer`, `question`, `dataset`, …) as lists. `None` means
"cannot score this one". A function written for TRL's `GRPOTrainer` works unchanged: `call_reward` calls
every function the way TRL 1.x does where its signature allows: `completions` by keyword when it has a
parameter of that name (so TRL's `def f(prompts, completions, **kwargs)` order works), the columns it
accepts (all of them with `**kwargs`; only the named ones otherwise, so a fixed signature never fails on
a column it does not use), and a coroutine (an `async def` reward) run to its end. The caller (rlft's
`RewardRole`) adds TRL's names to the columns: `prompts`, `completion_ids`, `solution`, `trainer_state`.

Spec forms accepted by `get_reward_fn`:
- a built-in name: `math` (the ReFT reward), `math_reft` (the same with `reft_compat=True`);
- `package.module:function`;
- `path/to/file.py:function` (relative to the working directory);
- a name registered under the entry-point group `rlft.rewards`
  (`[project.entry-points."rlft.rewards"] myreward = "mypkg.rewards:score"`).

Failures are never dropped silently (OpenRLHF's reward path logs and loses them). `safe_call`
turns an exception, a hang past the timeout, a wrong-length result, `None`, NaN or inf into
score 0 and counts it, or, with `on_error="raise"`, raises `RewardError` naming the record ids.
Plug-ins given by spec run in a reward worker process (killed on timeout, see `timeout.py`);
built-ins and plain callables run in the caller, in a daemon thread when a timeout is set (a
hung thread cannot be killed: it is abandoned and the batch is scored as failed).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import math
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

from rewards.math_reward import math_reward

ENTRY_POINT_GROUP = "rlft.rewards"
BUILTINS: dict[str, Callable[..., Any]] = {
    "math": math_reward,
    "math_reft": functools.partial(math_reward, reft_compat=True),
}


class RewardError(RuntimeError):
    """A reward function failed and the configuration says to stop the run."""


def _load_file(path: Path, name: str) -> Callable[..., Any]:
    if not path.is_file():
        raise ValueError(f"reward file not found: {path}")
    mod_name = "rlft_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
    if not hasattr(module, name):
        raise ValueError(f"{path} has no function {name!r}")
    return getattr(module, name)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def canonical_spec(spec: str) -> str:
    """Make file specs absolute, so that a worker process resolves the same file."""
    spec = spec.strip()
    if ":" in spec:
        left, right = spec.rsplit(":", 1)
        if left.endswith(".py") or "/" in left or "\\" in left:
            return f"{Path(left).expanduser().resolve()}:{right}"
    return spec


def _parameters(fn: Callable[..., Any]) -> tuple[frozenset[str], bool] | None:
    """Names `fn` accepts by keyword, and whether it takes `**kwargs`; None if it has no signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables
        return None
    named = frozenset(p.name for p in params
                      if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def call_reward(fn: Callable[..., Any], completions: list[Any], columns: dict[str, Any]) -> list[Any]:
    """Call one reward function on a batch, as TRL's `GRPOTrainer` would (see the module docstring).

    Args:
        fn: the reward function.
        completions: the batch (strings, or TRL's conversational message lists).
        columns: per-sample lists (and TRL's `trainer_state`), passed by keyword.

    Returns:
        The function's scores as a list.
    """
    params = _parameters(fn)
    if params is None:
        out = fn(completions, **columns)
    else:
        named, var_kw = params
        kwargs = columns if var_kw else {k: v for k, v in columns.items() if k in named}
        out = fn(completions=completions, **kwargs) if "completions" in named else fn(completions, **kwargs)
    if inspect.isawaitable(out):  # TRL accepts `async def` rewards
        out = asyncio.run(_awaited(out))
    return list(out)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


@dataclass(frozen=True)
class _Adapted:
    """A resolved plug-in behind `call_reward`, so that a reward worker (which calls
    `resolve(spec)(completions, **columns)`) calls it the same way as the trainer's process."""

    fn: Callable[..., Any]

    def __call__(self, completions: list[Any], **columns: Any) -> list[Any]:
        return call_reward(self.fn, completions, columns)


def declares_messages(fn: Callable[..., Any]) -> bool:
    """Whether `fn` annotates `completions` as TRL's conversational form (a list of message lists, e.g.
    ``list[list[dict[str, str]]]``), as TRL's own rewards (`trl.rewards`) do: they read
    ``completion[0]["content"]`` whatever the prompts are."""
    while True:  # down to the plug-in itself
        inner = getattr(fn, "fn", None) if isinstance(fn, (RewardFn, _Adapted)) else getattr(fn, "func", None)
        if inner is None:
            break
        fn = inner
    try:
        param = inspect.signature(fn).parameters.get("completions")
    except (TypeError, ValueError):
        return False
    if param is None or param.annotation is inspect.Parameter.empty:
        return False
    text = param.annotation if isinstance(param.annotation, str) else repr(param.annotation)
    return "dict" in text.replace("Dict", "dict")


def resolve(spec: str) -> Callable[..., Any]:
    """The callable a spec names (see the module docstring for the forms), called through `call_reward`."""
    spec = canonical_spec(spec)
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" in spec:
        left, right = spec.rsplit(":", 1)
        if left.endswith(".py") or "/" in left or "\\" in left:
            fn = _load_file(Path(left), right)
        else:
            module = importlib.import_module(left)
            if not hasattr(module, right):
                raise ValueError(f"module {left!r} has no function {right!r}")
            fn = getattr(module, right)
    else:
        eps = _entry_points()
        if spec not in eps:
            known = sorted(set(BUILTINS) | set(eps))
            raise ValueError(f"unknown reward {spec!r}: not a built-in, `module:function`, "
                             f"`file.py:function` or `{ENTRY_POINT_GROUP}` entry point; known names: {known}")
        fn = eps[spec].load()
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return _Adapted(fn)


@dataclass(frozen=True)
class RewardFn:
    """A resolved reward function that remembers its spec (so it can be re-resolved in a worker)."""

    spec: str
    fn: Callable[..., Any] = field(repr=False, compare=False)

    @property
    def builtin(self) -> bool:
        return self.spec in BUILTINS

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        return call_reward(self.fn, list(completions), columns)


def get_reward_fn(spec: str) -> RewardFn:
    """Resolve `spec` to the batch callable `fn(completions, **columns) -> list[float | None]`."""
    canon = canonical_spec(spec)
    return RewardFn(canon, resolve(canon))


@dataclass(frozen=True)
class CombinedReward:
    """Weighted sum of reward functions; a None from one part is skipped (TRL's nansum), and the
    result is None only when every part returned None."""

    parts: tuple[tuple[Callable[..., Any], float], ...]

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        per_fn = [(call_reward(fn, list(completions), columns), w) for fn, w in self.parts]
        return _weighted(per_fn, len(completions))


def _weighted(per_fn: list[tuple[list[Any], float]], n: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(n):
        vals = [(s[i], w) for s, w in per_fn if s[i] is not None and not _bad(s[i])]
        out.append(sum(float(v) * w for v, w in vals) if vals else None)
    return out


def combine(parts: Sequence[tuple[Callable[..., Any] | str, float]]) -> CombinedReward:
    """Combine `[(fn_or_spec, weight), …]` into one batch reward function."""
    if not parts:
        raise ValueError("combine needs at least one (fn, weight) pair")
    resolved = tuple((get_reward_fn(f) if isinstance(f, str) else f, float(w)) for f, w in parts)
    return CombinedReward(resolved)


def _bad(x: Any) -> bool:
    if isinstance(x, (str, bytes)):  # "0.7" is a plug-in bug, not a score: count it instead of coercing
        return True
    try:
        return not math.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def _record_ids(columns: dict[str, Any], idx: Sequence[int]) -> list[Any]:
    for key in ("id", "item_id", "record_id"):
        ids = columns.get(key)
        if ids is not None and len(ids) > max(idx, default=-1):
            return [ids[i] for i in idx]
    return list(idx)


def _call_in_thread(fn: Callable[..., Any], completions: list[str], columns: dict[str, Any],
                    timeout: float | None) -> list[Any]:
    if timeout is None:
        return call_reward(fn, completions, columns)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call_reward(fn, completions, columns)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="rlft-reward-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"reward function exceeded {timeout:g}s (thread abandoned)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _jsonable(obj: Any) -> Any:
    """Columns cross a process boundary as JSON: arrays become lists, anything else a string."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _call_isolated(spec: str, completions: list[str], columns: dict[str, Any], timeout: float) -> list[Any]:
    from rewards.timeout import get_pool

    columns = json.loads(json.dumps(columns, default=_jsonable))  # fail here, not inside the pool
    task = {"kind": "plugin", "spec": spec, "completions": completions, "columns": columns,
            "timeout": timeout, "sys_path": [p for p in sys.path if p]}
    res = get_pool().run([task], workers=1)[0]
    if res.get("status") == "timeout":
        raise TimeoutError(res.get("error") or "reward plug-in timed out")
    if res.get("status") != "ok":
        raise RuntimeError(res.get("error") or "reward plug-in failed")
    return res["scores"]


def _run_one(fn: Callable[..., Any], completions: list[str], columns: dict[str, Any],
             timeout: float | None, isolate: bool | None) -> tuple[list[float | None], list[bool], str | None]:
    """Scores (None = unscorable), per-sample failure flags and the failure reason of one function."""
    n = len(completions)
    try:
        if isinstance(fn, RewardFn) and (not fn.builtin if isolate is None else isolate):
            raw = _call_isolated(fn.spec, completions, columns, timeout if timeout is not None else 1e9)
        else:
            raw = _call_in_thread(fn, completions, columns, timeout)
    except Exception as e:
        return [None] * n, [True] * n, f"{type(e).__name__}: {str(e)[:200]}"
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
        return [None] * n, [True] * n, f"returned a {type(raw).__name__}, not a list of scores"
    if len(raw) != n:
        return [None] * n, [True] * n, f"returned {len(raw)} scores for {n} completions"
    scores: list[float | None] = []
    failed: list[bool] = []
    for x in raw:
        if x is None:
            scores.append(None)
            failed.append(False)
        elif _bad(x):
            scores.append(None)
            failed.append(True)
        else:
            scores.append(float(x))
            failed.append(False)
    return scores, failed, ("returned NaN, inf or a non-number" if any(failed) else None)


def safe_call(fn: Callable[..., Any] | str, completions: Sequence[str], columns: dict[str, Any], *,
              timeout: float | None = 60.0, on_error: str = "zero",
              isolate: bool | None = None) -> tuple[list[float], int]:
    """Call a reward function so that every failure is scored and counted, never lost.

    A sample fails when its function raised, timed out, returned the wrong number of scores or a
    NaN/inf/non-number, or when every function returned None for it (unscorable).

    Args:
        fn: a `RewardFn` (from `get_reward_fn`), a `CombinedReward`, a spec string or a callable.
        completions: the batch.
        columns: the records' columns as lists (`answer`, `question`, `id`, …).
        timeout: seconds for each function's call on the batch (None: no limit).
        on_error: "zero" scores failed samples 0 and counts them; "raise" raises RewardError
            naming the record ids (from the `id`/`item_id` column, else the batch indices).
        isolate: run plug-ins in a killable worker process. Default: yes for plug-ins given by
            spec, no for built-ins and plain callables. Isolated plug-ins need JSON-serialisable
            columns.

    Returns:
        (scores, n_failed): one float per completion (failed samples score 0), and the count.
    """
    if on_error not in ("zero", "raise"):
        raise ValueError(f"on_error must be 'zero' or 'raise', not {on_error!r}")
    completions = list(completions)
    n = len(completions)
    if isinstance(fn, str):
        fn = get_reward_fn(fn)
    parts = fn.parts if isinstance(fn, CombinedReward) else ((fn, 1.0),)
    total = [0.0] * n
    failed = [False] * n
    scored = [False] * n
    reasons: list[str] = []
    for part, weight in parts:
        scores, part_failed, reason = _run_one(part, completions, columns, timeout, isolate)
        if reason:
            reasons.append(reason)
        for i in range(n):
            failed[i] = failed[i] or part_failed[i]
            score = scores[i]
            if score is not None:
                total[i] += weight * score
                scored[i] = True
    for i in range(n):
        if failed[i] or not scored[i]:
            failed[i] = True
            total[i] = 0.0
    n_failed = sum(failed)
    if n_failed and on_error == "raise":
        ids = _record_ids(columns, [i for i in range(n) if failed[i]])
        raise RewardError(f"reward failed on {n_failed}/{n} samples ({'; '.join(reasons) or 'unscorable'}); "
                          f"record ids: {ids[:20]}")
    return total, n_failed
