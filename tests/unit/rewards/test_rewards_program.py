"""P-CoT programs: correct execution, and sandbox escapes that must all score 0 quickly and leave
no process behind (checker.md §5)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Callable

import pytest

from rewards import check_batch, program
from rewards.timeout import _ALL_WORKERS

PREFIX = 'def solution():\n    """How many?"""\n'


def prog(body: str) -> str:
    return PREFIX + "\n".join("    " + line for line in body.strip("\n").split("\n")) + "\n"


# (comment, program body, gold, dataset, expected status)
GOOD = [
    ("integer result", "a = 48\nb = a / 2\nreturn a + b", "72", "gsm8k", "correct"),
    ("float noise 0.1+0.2", "return (0.1 + 0.2) * 10", "3", "gsm8k", "correct"),
    ("sympy solve", "x = sympy.Symbol('x')\nreturn sympy.solve(x**2 - 4, x)[1]", "2", "gsm8k", "correct"),
    ("sympy integrate", "x = sympy.Symbol('x')\nreturn sympy.integrate(x**2, (x, 0, 3))", "9", "gsm8k", "correct"),
    ("sympy nsolve", "x = sympy.Symbol('x')\nreturn sympy.nsolve(x**2 - 2, x, 1) ** 2", "2", "gsm8k", "correct"),
    ("sympy S of a string", "return sympy.S('1/3') * 3", "1", "gsm8k", "correct"),
    ("math module", "return math.floor(7.9)", "7", "svamp", "correct"),
    ("fractions import", "from fractions import Fraction\nreturn Fraction(1, 3)", "0.3333333333333333", "mathqa-numeric", "correct"),
    ("wrong value", "return 71", "72", "gsm8k", "wrong"),
    ("float result vs float-repr gold", "return 2 / 3", "0.6666666666666666", "svamp", "correct"),
    ("string number", "return '72'", "72", "gsm8k", "correct"),
    ("MathQA letter", "return 'c'", "c", "mathqa", "correct"),
    ("MathQA value maps to option", "return 870", "c", "mathqa", "correct"),
    ("returns None", "x = 1", "1", "gsm8k", "no_answer"),
    ("raises", "return 1 / 0", "1", "gsm8k", "error"),
    ("nan is wrong, not no answer", "return float('nan')", "1", "gsm8k", "wrong"),
    ("print does not count", "print(72)", "72", "gsm8k", "no_answer"),
]


def test_programs() -> None:
    vs = check_batch([prog(b) for _, b, _, _, _ in GOOD], [g for _, _, g, _, _ in GOOD],
                     datasets=[d for *_, d, _ in GOOD], fmts="program",
                     options=["a ) 156 , b ) 167 , c ) 870 , d ) 352 , e ) 380"] * len(GOOD))
    bad = [(c[0], v.status, v.extracted, v.error) for c, v in zip(GOOD, vs) if v.status != c[4]]
    assert not bad, bad


def test_program_followed_by_rambling_still_runs() -> None:
    text = prog("return 72") + "\nThis program computes the answer.\nIt is 72!!\n"
    assert check_batch([text], ["72"], fmts="program")[0].correct


def test_body_only_with_question_gets_the_prefix() -> None:
    v = check_batch(["    return 5\n"], ["5"], fmts="program", questions=["q?"])[0]
    assert v.correct, v


# Escape attempts: each must score 0 within the time limit
ESCAPES = [
    ("read a file", "return open('/etc/passwd').read()"),
    ("write a file", "open('{marker}', 'w').write('x')\nreturn 1"),
    ("import os", "import os\nos.system('touch {marker}')\nreturn 1"),
    ("socket", "import socket\ns = socket.socket()\ns.connect(('8.8.8.8', 53))\nreturn 1"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()"),
    ("subprocess", "import subprocess\nsubprocess.run(['touch', '{marker}'])\nreturn 1"),
    ("dunder walk", "return ().__class__.__bases__[0].__subclasses__()"),
    ("getattr", "return getattr(sympy, 'sym' + 'pify')(\"__import__('os').system('touch {marker}')\")"),
    ("sympify string", "return sympy.sympify(\"__import__('os').system('touch {marker}')\")"),
    ("S string", "return sympy.S(\"__import__('os').system('touch {marker}')\")"),
    ("simplify string", "return sympy.simplify(\"__import__('os').system('touch {marker}')\")"),
    ("eval", "return eval('1+1')"),
    ("lambdify injection", "f = sympy.Function(\"(lambda *a: __import__('os').system('touch {marker}'))\")\n"
                           "x = sympy.Symbol('x')\nreturn sympy.nsolve(f(x) - 2, x, 1)"),
    ("unbounded memory", "x = [0] * (10 ** 10)\nreturn len(x)"),
    ("doubling memory", "s = 'a'\nwhile True:\n    s = s + s"),
    ("infinite loop", "while True:\n    pass"),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nreturn f(0)"),
    ("huge power", "return 2 ** (10 ** 10)"),
    ("constant huge power", "return 7 ** 123456789"),
]


def test_escapes_score_zero_fast_and_leave_nothing(tmp_path: Path, children_of: Callable[[int], list[int]]) -> None:
    marker = tmp_path / "pwned"
    progs = [prog(body.replace("{marker}", str(marker))) for _, body in ESCAPES]
    t0 = time.monotonic()
    vs = check_batch(progs, ["1"] * len(progs), fmts="program", timeout=1.0)
    elapsed = time.monotonic() - t0
    bad = [(name, v.status, v.error) for (name, _), v in zip(ESCAPES, vs) if v.score != 0.0]
    assert not bad, bad
    assert not marker.exists()
    assert elapsed < 20, elapsed  # two workers; at most a few 1 s timeouts
    for w in list(_ALL_WORKERS):
        if w.proc.poll() is None:
            assert children_of(w.proc.pid) == [], "a sandbox child survived"


def test_runtime_layers_hold_without_the_static_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     children_of: Callable[[int], list[int]]) -> None:
    # Bypass the AST allowlist and run in this process's own fork: restricted builtins, the
    # blocked sympy parser and the audit hook must still stop each attempt.
    pytest.importorskip("sympy")
    existing = set(children_of(os.getpid()))  # processes from before this test (e.g. a Ray session) are not ours
    monkeypatch.setattr(program, "static_check", lambda code: None)
    marker = tmp_path / "pwned"
    walk = ("for c in ().__class__.__base__.__subclasses__():\n"
            "    if c.__name__ == '_wrap_close':\n"
            "        c.__init__.__globals__['{fn}']({arg})\n"
            "return 1")
    attempts = [
        "import os\nos.system('touch {m}')\nreturn 1",
        "open('{m}', 'w').write('x')\nreturn 1",
        "return sympy.sympify(\"__import__('os').system('touch {m}')\")",
        walk.format(fn="system", arg="'touch {m}'"),
        walk.format(fn="open", arg="'{m}', 65"),  # os.open(path, O_WRONLY | O_CREAT)
        "s = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'socket'][0]()\nreturn 1",
        "f = sympy.Function(\"(lambda *a: __import__('os').system('touch {m}'))\")\n"
        "x = sympy.Symbol('x')\nreturn sympy.nsolve(f(x) - 2, x, 1)",
        walk.format(fn="fork", arg=""),
        walk.format(fn="listdir", arg="'/'"),
        walk.format(fn="open", arg="'/etc/passwd', 0"),  # a read-only open outside Python's files
    ]
    for body in attempts:
        res = program.run_program(prog(body.replace("{m}", str(marker))), timeout=5)
        assert res["kind"] in ("error", "timeout"), (body, res)
        assert not marker.exists(), body
    workers = {w.proc.pid for w in list(_ALL_WORKERS)}
    assert [p for p in children_of(os.getpid()) if p not in workers and p not in existing] == []
