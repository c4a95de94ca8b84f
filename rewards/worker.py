"""The reward worker process: runs the expensive checks for `timeout.WorkerPool`.

Started as `python -c "...; from rewards.worker import main; main()"` by the pool. Protocol: one
JSON object per line. The worker prints `{"op": "ready"}` once sympy and the LaTeX parser are
loaded, then reads `{"op": "batch", "tasks": [...]}` lines and answers with one JSON line per
task, in order, as soon as each is done. The parent holds a deadline per task and kills the
worker's process group when one is overrun (a C-level bigint operation cannot be interrupted any
other way); the worker itself never has to watch the clock, except for the programs it forks.

Task kinds:
- `judge`: an extracted answer against a gold, with sympy available;
- `program`: a P-CoT program run in the sandbox of `program.py`, then judged (or returned raw for
  `reft_compat`, which the caller judges with ReFT's rules);
- `plugin`: a reward plug-in resolved by spec and called on a batch (`registry.safe_call`);
- `_spin`: a test hook that never returns (exercises the kill path).

Protocol messages go to a private copy of fd 1; fd 1 itself is pointed at stderr so that a
library that prints cannot corrupt the stream.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from fractions import Fraction
from typing import Any
from collections.abc import Callable


def _handle_judge(task: dict[str, Any]) -> dict[str, Any]:
    from rewards.judge import judge_answer
    from rewards.symbolic import SympyScalar

    tol = Fraction(*task.get("tolerance", (0, 1)))
    out = judge_answer(task["answer"], task["gold"], dataset=task["dataset"], options=task.get("options"),
                       tolerance=tol, cmp=SympyScalar(tol), question=task.get("question"))
    status = "error" if out.status == "undecided" else out.status
    return {"status": status, "extracted": out.extracted, "error": out.error}


def _handle_program(task: dict[str, Any]) -> dict[str, Any]:
    from rewards.judge import judge_answer
    from rewards.program import run_program
    from rewards.symbolic import SympyScalar

    res = run_program(task["program"], timeout=float(task["timeout"]),
                      memory_mb=int(task.get("memory_mb", 1024)), reft_compat=bool(task.get("reft_compat")))
    kind, value = res.get("kind"), res.get("value")
    if task.get("reft_compat"):
        return {"status": "raw", "kind": kind, "extracted": value, "error": res.get("error")}
    if kind == "timeout":
        return {"status": "timeout", "extracted": None, "error": res.get("error")}
    if kind in ("error", "rejected"):
        return {"status": "error", "extracted": None, "error": res.get("error")}
    if kind == "none" or value is None:
        return {"status": "no_answer", "extracted": None, "error": "solution() returned None"}
    if kind == "nonfinite":
        return {"status": "wrong", "extracted": value, "error": None}
    tol = Fraction(*task.get("tolerance", (0, 1)))
    out = judge_answer(str(value), task["gold"], dataset=task["dataset"], options=task.get("options"),
                       tolerance=tol, cmp=SympyScalar(tol), question=task.get("question"))
    status = "error" if out.status == "undecided" else out.status
    return {"status": status, "extracted": value, "error": out.error}


_PLUGINS: dict[str, Callable[..., Any]] = {}


def _handle_plugin(task: dict[str, Any]) -> dict[str, Any]:
    from rewards.registry import resolve

    for p in reversed(task.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = task["spec"]
    if spec not in _PLUGINS:
        if len(_PLUGINS) > 32:  # bounded: a worker serves a handful of plug-ins
            _PLUGINS.clear()
        _PLUGINS[spec] = resolve(spec)
    scores = _PLUGINS[spec](task["completions"], **task.get("columns", {}))
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        raise TypeError(f"returned a {type(scores).__name__}, not a list of scores")
    out: list[float | None] = []
    for s in list(scores):
        if s is None:
            out.append(None)
        elif isinstance(s, (str, bytes)):  # same rule as registry._bad: a string is not a score
            out.append(math.nan)
        else:
            try:
                out.append(float(s))
            except (TypeError, ValueError):
                out.append(math.nan)
    return {"status": "ok", "scores": out}


def _handle(task: dict[str, Any]) -> dict[str, Any]:
    kind = task.get("kind")
    if kind == "judge":
        return _handle_judge(task)
    if kind == "program":
        return _handle_program(task)
    if kind == "plugin":
        return _handle_plugin(task)
    if kind == "_spin":
        while True:  # test hook: only a kill ends this
            pass
    return {"status": "error", "error": f"unknown task kind {kind!r}"}


def _warm_up() -> None:
    """Import sympy and the LaTeX grammar, and run each once, before reporting ready."""
    import sympy  # noqa: F401
    from rewards.symbolic import SympyScalar
    from rewards import program  # noqa: F401

    cmp = SympyScalar()
    cmp.scalar("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    cmp.scalar("\\sin(x)", "\\sin x")


def main() -> None:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(out_fd, view)
            view = view[n:]

    _warm_up()
    send({"op": "ready", "pid": os.getpid()})
    for line in sys.stdin.buffer:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("op") == "exit":
            break
        if msg.get("op") != "batch":
            continue
        for task in msg["tasks"]:
            t0 = time.perf_counter()
            try:
                res = _handle(task)
            except Exception as e:  # one bad item must not take the batch down
                res = {"status": "error", "extracted": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            res["seconds"] = time.perf_counter() - t0
            try:
                send(res)
            except (BrokenPipeError, OSError):
                return  # the parent is gone
