"""Bounded time: pathological answers, worker kills, threads and other processes, injection
strings (checker.md §6, §11)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rewards import check, check_batch
from rewards.timeout import get_pool


def box(s: str) -> str:
    return f"The final answer is $\\boxed{{{s}}}$."


# (answer, comment); every one must come back quickly as not correct
PATHOLOGICAL = [
    ("9^{9^{9^9}}", "power tower"),
    ("10^{10^{10}}", "10^(10^10): a C-level bigint that signal.alarm cannot stop"),
    ("(10^{100})!", "huge factorial"),
    ("2^{30^{5}}", "sympy #24187: str() of 2**30**5 hangs"),
    ("\\sin(10^{10^{5}})", "huge sin argument"),
    ("(" * 2000 + "1" + ")" * 2000, "2,000 nested parentheses"),
    ("\\frac{2^{2^{2^{2^{2}}}}}{3^{3^{3^{3}}}}", "nested power-tower fraction (Math-Verify #65)"),
    ("x^{x^{x^{x}}}", "symbolic tower"),
    ("1" * 10_000, "10,000-character number"),
    ("x+" * 5_000 + "1", "10,000-character expression"),
    ("(2^{10000})^{10000}", "power of a power: 10^8-bit result"),
    ("\\sum_{n=1}^{\\infty} n", "unbounded sum"),
]


def test_pathological_answers_are_rejected_quickly() -> None:
    t0 = time.monotonic()
    vs = check_batch([box(a) for a, _ in PATHOLOGICAL], ["1"] * len(PATHOLOGICAL), datasets="math", timeout=2.0)
    elapsed = time.monotonic() - t0
    bad = [(c, v.status) for (_, c), v in zip(PATHOLOGICAL, vs) if v.correct or v.status not in ("guard", "timeout", "wrong", "no_answer")]
    assert not bad, bad
    assert all(v.seconds < 2.5 for v in vs), [(c, v.seconds) for (_, c), v in zip(PATHOLOGICAL, vs)]
    assert elapsed < 10, elapsed


def test_pathological_numeric_answers() -> None:
    texts = ["The answer is " + "9" * 10_000, "The answer is 1e999999999", "#### " + "(" * 3000]
    t0 = time.monotonic()
    vs = check_batch(texts, ["5"] * 3)
    assert time.monotonic() - t0 < 1.0
    assert not any(v.correct for v in vs)


def test_valid_answers_near_the_guards_still_pass() -> None:
    # pathological_valid: big but legitimate values are exact, not rejected
    vs = check_batch([box("2^{100}"), box("20!"), box("\\frac{1}{2^{64}}"), box("(((((3)))))")],
                     ["1267650600228229401496703205376", "2432902008176640000", "5.42101086242752217003726400434970855712890625e-20", "3"],
                     datasets="math")
    assert [v.status for v in vs] == ["correct"] * 4, vs


def test_overrun_kills_and_replaces_the_worker() -> None:
    pool = get_pool()
    kills = pool.kills
    tasks = [{"kind": "_spin", "timeout": 0.5},
             {"kind": "judge", "answer": "2\\sqrt{3}", "gold": "\\sqrt{12}", "dataset": "math", "timeout": 30}]
    t0 = time.monotonic()
    res = pool.run(tasks, workers=1)
    assert res[0]["status"] == "timeout"
    assert res[1]["status"] == "correct"  # the rest of the batch continued on a fresh worker
    assert pool.kills == kills + 1
    assert time.monotonic() - t0 < 60


def _run_cases() -> list[str]:
    cases = [("Therefore, the answer is: 18", "18", "gsm8k"), (box("2\\sqrt{3}"), "\\sqrt{12}", "math"),
             (box("9^{9^{9^9}}"), "3", "math"), (box("(1,2)"), "(2,1)", "math")]
    return [check(c, g, dataset=d).status for c, g, d in cases]


EXPECTED = ["correct", "correct", "guard", "wrong"]


def test_same_verdicts_from_a_thread() -> None:
    out: dict[str, list[str]] = {}
    t = threading.Thread(target=lambda: out.setdefault("v", _run_cases()))
    t.start()
    t.join(60)
    assert out.get("v") == EXPECTED


def test_same_verdicts_from_many_threads_at_once() -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: _run_cases(), range(4)))
    assert results == [EXPECTED] * 4


def test_same_verdicts_from_another_process() -> None:
    # a Ray-like worker: a fresh process that imports rewards and starts its own pool
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(_run_cases).result(timeout=120) == EXPECTED


INJECTIONS = [
    "\\boxed{__import__('os').system('touch {m}')}",
    "The answer is eval(\"open('{m}', 'w')\")",
    "The answer is 1 + (lambda: __import__('os').system('touch {m}'))()",
    "The answer is x = __import__(\"os\").system(\"touch {m}\")",
    "\\boxed{\\input{{m}}}",
    "\\boxed{exec(chr(111)+chr(112)+chr(101)+chr(110))}",
    "\\boxed{().__class__.__bases__[0].__subclasses__()}",
    "#### __import__('subprocess').run(['touch', '{m}'])",
]


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_injection_strings_never_execute(tmp_path: Path, dataset: str) -> None:
    marker = tmp_path / "pwned"
    texts = [t.replace("{m}", str(marker)) for t in INJECTIONS]
    # a gold answer no marker path can spell: the path's digits (pytest-1/...) land in the boxed junk, and a GSM8K
    # box is read for the number in it, so gold "1" was judged correct under /tmp/pytest-of-root/pytest-1
    vs = check_batch(texts, ["424242"] * len(texts), datasets=dataset)
    assert not any(v.correct for v in vs)
    assert not marker.exists()


def test_killing_a_worker_also_kills_its_sandboxed_program(children_of: Callable[[int], list[int]]) -> None:
    # the sandbox child has PR_SET_PDEATHSIG: it must not outlive a worker killed by its caller
    import os

    from rewards.timeout import Worker

    w = Worker()
    try:
        w.wait_ready()
        w.send({"op": "batch", "tasks": [{"kind": "program", "timeout": 30, "gold": "1", "dataset": "gsm8k",
                                          "program": "def solution():\n    while True:\n        pass\n"}]})
        deadline = time.monotonic() + 10
        kids: list[int] = []
        while not kids and time.monotonic() < deadline:
            time.sleep(0.05)
            kids = children_of(w.proc.pid)
        assert kids, "the sandbox child did not start"
    finally:
        w.kill()
    time.sleep(0.3)
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]
