"""`check` and `check_batch`: the answer checker's public entry points (`checker.md` §0).

How one check runs:
1. text completions are extracted and judged in the caller's process with the fast comparator
   (regex, `Fraction`, linear in the input and capped in size), which settles GSM8K-, SVAMP-,
   MathQA- and most MATH-style answers in microseconds without a process round trip;
2. what it leaves undecided (symbolic MATH answers) and every P-CoT program goes to the worker
   pool (`timeout.py`), in one batch per worker, each item under its own wall-clock deadline;
   an overrun kills the worker and the item becomes `timeout`.
So every operation whose time is not bounded by the input size runs where it can be killed, and
the call returns within about `timeout` per undecided item whatever the input.

`reft_compat=True` reproduces mwp_ReFT's reward exactly (`checker.md` §8): the text after the
last `\\nTherefore, the answer is: `, `float()`, |pred - gold| <= 0.01, MathQA string equality,
P-CoT through ReFT's `process_code` (but in rlft's sandbox) with ReFT's 2 s limit
(`TIMEOUT = 2` in `train_rl_reft.py`; `reft.md` quotes 10 s, the code says 2).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any
from collections.abc import Sequence

from rewards.equivalence import FastScalar
from rewards.judge import DATASETS, default_fallback, default_tolerance, judge_text
from rewards.timeout import get_pool

DEFAULT_TIMEOUT = 5.0
"""Seconds allowed per check (and per program run) before it is killed and scored 0."""

REFT_PROGRAM_TIMEOUT = 2.0
FORMATS = ("text", "program")
PROGRAM_PREFIX = 'def solution():\n    """{question}"""\n'
_REFT_ANSWER_TRIGGER = "\nTherefore, the answer is: "
_REFT_COT_TRIGGER = "\nAnswer reasoning:\n"


@dataclass(frozen=True)
class Verdict:
    """The checker's decision on one completion.

    Attributes:
        correct: the extracted answer equals the gold.
        score: the ReFT reward: 1 if correct, `partial_reward` if an answer was extracted but is
            wrong, 0 otherwise (no answer, timeout, guard, error).
        extracted: the answer text the completion committed to (a program's return value), or None.
        gold: the gold answer as given.
        seconds: wall time spent on this check.
        error: why there is no answer or no decision (for logs), else None.
        status: correct | wrong | no_answer | timeout | guard | error.
    """

    correct: bool
    score: float
    extracted: str | None
    gold: str
    seconds: float
    error: str | None
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_for(status: str, partial_reward: float) -> float:
    """ReFT's terminal score (`reft.md` §4.1)."""
    if status == "correct":
        return 1.0
    return partial_reward if status == "wrong" else 0.0


def _verdict(status: str, extracted: str | None, gold: str, seconds: float, error: str | None,
             partial_reward: float) -> Verdict:
    if extracted is not None and len(extracted) > 300:
        extracted = extracted[:300] + "…"  # never log huge strings (checker.md §6)
    return Verdict(correct=status == "correct", score=score_for(status, partial_reward),
                   extracted=extracted, gold=gold, seconds=seconds, error=error, status=status)


def _broadcast(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} completions")
        return list(value)
    return [value] * n


def _reft_float(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _reft_compare(pred: Any, gold: str, dataset: str) -> str:
    """ReFT's compare_answer_fn_mapper on an already post-processed prediction."""
    if dataset == "mathqa":
        g = gold.lower().replace('"', "").replace("'", "").strip()
        return "correct" if pred == g else "wrong"
    g_val = _reft_float(gold.replace(",", "").strip())
    if pred is None:
        return "no_answer"
    if g_val is None:
        return "error"
    return "correct" if abs(pred - g_val) <= 1e-2 else "wrong"


def _reft_text(completion: str, gold: str, dataset: str) -> tuple[str, str | None]:
    text = completion.strip().split(_REFT_COT_TRIGGER)[-1].strip()
    raw = text.split(_REFT_ANSWER_TRIGGER)[-1]
    if dataset == "mathqa":
        pred = raw.lower().replace('"', "").replace("'", "").strip()
        return _reft_compare(pred, gold, dataset), pred
    return _reft_compare(_reft_float(raw.strip()), gold, dataset), raw.strip()


def _reft_program_result(res: dict[str, Any], gold: str, dataset: str) -> tuple[str, str | None]:
    """Judge a raw sandbox result the way ReFT judges `run_python_code`'s return value."""
    ok = res.get("kind") in ("number", "text", "nonfinite")
    value = res.get("extracted") if ok else None
    if dataset == "mathqa":  # str(None) is "none": ReFT gives crashed MathQA programs 0.1
        pred = ("none" if value is None else str(value)).lower().replace('"', "").replace("'", "").strip()
        return _reft_compare(pred, gold, dataset), pred
    return _reft_compare(_reft_float(value), gold, dataset), value


def check(completion: str, gold: str, *, dataset: str = "gsm8k", fmt: str = "text",
          options: str | list[str] | None = None, partial_reward: float = 0.1,
          timeout: float = DEFAULT_TIMEOUT, tolerance: float | None = None, reft_compat: bool = False,
          last_number_fallback: bool | None = None, question: str | None = None,
          memory_mb: int = 1024) -> Verdict:
    """Check one completion against its gold answer.

    Args:
        completion: the generated text; for `fmt="program"` the full program text, i.e. the
            prefix `def solution():\\n    \"\"\"{question}\"\"\"\\n` plus the generated body (if the
            text has no `def solution` and `question` is given, the prefix is added).
        gold: the gold answer (`18`, `14.0`, `\\frac{14}{3}`, a MathQA letter, or a full GSM8K
            solution ending in `#### 18`).
        dataset: gsm8k | svamp | mathqa | mathqa-numeric | math | arithmetic.
        fmt: text (N-CoT) or program (P-CoT).
        options: MathQA's inline options (`a ) 12 , b ) 15 , …`); else read from `question`.
        partial_reward: score of an extracted but wrong answer.
        timeout: seconds per expensive check or program run; overruns score 0.
        tolerance: absolute numeric tolerance; default 0 except 0.01 for mathqa-numeric.
        reft_compat: reproduce mwp_ReFT's extraction and comparison exactly.
        last_number_fallback: default on for the numeric datasets, off for math and mathqa.
        question: the question text (MathQA options, P-CoT prefix).
        memory_mb: memory a P-CoT program may allocate.

    Returns:
        A Verdict.
    """
    return check_batch([completion], [gold], datasets=dataset, fmts=fmt, options=[options],
                       partial_reward=partial_reward, timeout=timeout, tolerance=tolerance,
                       reft_compat=reft_compat, last_number_fallback=last_number_fallback,
                       questions=[question], memory_mb=memory_mb, workers=1)[0]


def check_batch(completions: Sequence[str], golds: Sequence[str], *,
                datasets: str | Sequence[str] = "gsm8k", fmts: str | Sequence[str] = "text",
                options: Sequence[Any] | None = None, partial_reward: float = 0.1,
                timeout: float = DEFAULT_TIMEOUT, workers: int | None = None,
                tolerance: float | None = None, reft_compat: bool = False,
                last_number_fallback: bool | None = None,
                questions: Sequence[str | None] | None = None, memory_mb: int = 1024) -> list[Verdict]:
    """Check many completions; the expensive ones run in parallel on the worker pool.

    `datasets` and `fmts` may be one value for all or one per completion; `options` and
    `questions` are per completion. `workers` caps the worker processes used (default: the
    pool size, i.e. the CPUs). See `check` for the other arguments.
    """
    n = len(completions)
    if len(golds) != n:
        raise ValueError(f"{len(golds)} golds for {n} completions")
    ds = _broadcast(datasets, n, "datasets")
    fs = _broadcast(fmts, n, "fmts")
    opts = _broadcast(options, n, "options") if options is not None else [None] * n
    qs = _broadcast(questions, n, "questions") if questions is not None else [None] * n
    for d, f in zip(ds, fs):
        if d not in DATASETS:
            raise ValueError(f"unknown dataset {d!r}; expected one of {sorted(DATASETS)}")
        if f not in FORMATS:
            raise ValueError(f"unknown format {f!r}; expected one of {FORMATS}")

    verdicts: list[Verdict | None] = [None] * n
    fast_seconds = [0.0] * n
    tasks: list[dict[str, Any]] = []
    task_index: list[int] = []
    for i in range(n):
        t0 = time.perf_counter()
        completion, gold, dataset = str(completions[i]), str(golds[i]), ds[i]
        tol = Fraction(tolerance).limit_denominator(10**9) if tolerance is not None else default_tolerance(dataset)
        if fs[i] == "program":
            program = completion
            if "def solution" not in program and qs[i]:
                program = PROGRAM_PREFIX.format(question=qs[i]) + program
            limit = REFT_PROGRAM_TIMEOUT if reft_compat else timeout
            tasks.append({"kind": "program", "program": program, "gold": gold, "dataset": dataset,
                          "options": opts[i], "question": qs[i], "timeout": limit,
                          "tolerance": (tol.numerator, tol.denominator), "reft_compat": reft_compat,
                          "memory_mb": memory_mb})
            task_index.append(i)
        elif reft_compat:
            status, pred = _reft_text(completion, gold, dataset)
            verdicts[i] = _verdict(status, pred, gold, time.perf_counter() - t0, None, partial_reward)
        else:
            fallback = default_fallback(dataset) if last_number_fallback is None else last_number_fallback
            out = judge_text(completion, gold, dataset=dataset, options=opts[i], tolerance=tol,
                             last_number_fallback=fallback, cmp=FastScalar(tol), question=qs[i])
            if out.status == "undecided":
                tasks.append({"kind": "judge", "answer": out.extracted, "gold": gold, "dataset": dataset,
                              "options": opts[i], "question": qs[i], "timeout": timeout,
                              "tolerance": (tol.numerator, tol.denominator)})
                task_index.append(i)
            else:
                verdicts[i] = _verdict(out.status, out.extracted, gold, time.perf_counter() - t0,
                                       out.error, partial_reward)
        fast_seconds[i] = time.perf_counter() - t0

    if tasks:
        results = get_pool(workers).run(tasks, workers)
        for i, res in zip(task_index, results):
            if res.get("status") == "raw":  # reft_compat program: judge with ReFT's rules
                status, pred = _reft_program_result(res, golds[i], ds[i])
                res = {**res, "status": status, "extracted": pred}
            verdicts[i] = _verdict(res.get("status", "error"), res.get("extracted"), str(golds[i]),
                                   fast_seconds[i] + float(res.get("seconds", 0.0)), res.get("error"),
                                   partial_reward)
    return [v if v is not None else _verdict("error", None, str(golds[i]), 0.0, "internal: no result",
                                             partial_reward) for i, v in enumerate(verdicts)]
