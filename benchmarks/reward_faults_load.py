"""Adversarial completions through the reward worker pool: no hang, no leaked process, bounded memory.

    python benchmarks/reward_faults_load.py [--n 10000] [--workers 2] [--timeout 1.0] [--out FILE.json]

Cycles through pathological maths (power towers, huge factorials, 10,000-character expressions) and
escaping programs (fork, exec, file and network access, infinite loops, memory bombs, sandbox-escape
tricks), plus a few valid answers that must stay correct. Checks, in chunks of `--chunk`, that every
completion gets a verdict within its deadline, that no escaping completion is scored correct, that no
process outlives the pool, and how large the pool's resident memory grows. Prints one JSON summary
(issue #9, docs/reliability.md) and writes it to `--out` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rewards  # noqa: E402
from rewards import check_batch  # noqa: E402
from rewards.timeout import get_pool  # noqa: E402


def box(s: str) -> str:
    return f"The final answer is $\\boxed{{{s}}}$."


def prog(body: str) -> str:
    return "def solution():\n" + "".join(f"    {line}\n" for line in body.splitlines())


# (completion, gold, fmt, dataset, must_be_correct)
MATHS = [
    "9^{9^{9^9}}", "10^{10^{10}}", "(10^{100})!", "2^{30^{5}}", "\\sin(10^{10^{5}})", "(" * 2000 + "1" + ")" * 2000,
    "\\frac{2^{2^{2^{2^{2}}}}}{3^{3^{3^{3}}}}", "x^{x^{x^{x}}}", "1" * 10_000, "x+" * 5_000 + "1",
    "(2^{10000})^{10000}", "\\sum_{n=1}^{\\infty} n", "\\int_0^\\infty e^{x^{x}} dx", "\\boxed{" * 500,
]
PROGRAMS = [
    "import os\nos.system('touch /tmp/rlft_escaped')\nreturn 1",
    "import subprocess\nreturn subprocess.check_output(['id'])",
    "import os\nos.fork()\nreturn 1",
    "while True:\n    pass",
    "x = [0] * 10**10\nreturn 1",
    "x = 'a'\nwhile True:\n    x = x + x",
    "return open('/etc/passwd').read()",
    "import socket\nsocket.create_connection(('127.0.0.1', 1))\nreturn 1",
    "return ().__class__.__base__.__subclasses__()",
    "return __import__('os').getpid()",
    "import sys\nsys.exit(0)",
    "def f(n):\n    return f(n + 1)\nreturn f(0)",
    "return 10**10**10",
    "print('x' * 10**8)\nreturn 2",  # output flood; a wrong answer, so any 'correct' is a bug
    "import ctypes\nreturn ctypes.CDLL(None).fork()",
    "return eval(\"__import__('os').system('id')\")",
]
VALID = [(box("\\frac{1}{2}"), "0.5", "text", "math"), (prog("return 6 * 7"), "42", "program", "gsm8k"),
         ("The answer is 12.", "12", "text", "gsm8k")]


def corpus(n: int) -> list[tuple[str, str, str, str, bool]]:
    pool = ([(box(a), "1", "text", "math", False) for a in MATHS]
            + [(prog(p), "1", "program", "gsm8k", False) for p in PROGRAMS]
            + [(c, g, f, d, True) for c, g, f, d in VALID])
    return [pool[i % len(pool)] for i in range(n)]


def descendants(pid: int) -> list[int]:
    """Every live (non-zombie) process below `pid`, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent[int(entry)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total / 2**20


def run(n: int, *, workers: int = 2, timeout: float = 1.0, chunk: int = 500) -> dict:
    items = corpus(n)
    marker = Path("/tmp/rlft_escaped")
    marker.unlink(missing_ok=True)
    # Processes that existed before (e.g. a Ray session another test left running) are not the pool's.
    existing = set(descendants(os.getpid()))
    get_pool(workers).warmup(workers)
    baseline_rss = rss_mb([p for p in descendants(os.getpid()) if p not in existing])
    peak_rss, peak_procs, statuses, wrong = baseline_rss, 0, {}, []
    slowest = 0.0
    t0 = time.monotonic()
    for start in range(0, n, chunk):
        part = items[start:start + chunk]
        t_chunk = time.monotonic()
        vs = check_batch([c for c, *_ in part], [g for _, g, *_ in part], fmts=[f for _, _, f, *_ in part],
                         datasets=[d for *_, d, _ in part], timeout=timeout, workers=workers)
        slowest = max(slowest, max(v.seconds for v in vs))
        for (c, g, f, d, ok), v in zip(part, vs):
            statuses[v.status] = statuses.get(v.status, 0) + 1
            if v.correct != ok:
                wrong.append((c[:60], v.status))
        procs = [p for p in descendants(os.getpid()) if p not in existing]
        peak_procs = max(peak_procs, len(procs))
        peak_rss = max(peak_rss, rss_mb(procs))
        print(f"{start + len(part)}/{n}: {len(part) / (time.monotonic() - t_chunk):.1f}/s, {len(procs)} processes, "
              f"{rss_mb(procs):.0f} MiB", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    rewards.shutdown()
    time.sleep(0.5)
    left = [p for p in descendants(os.getpid()) if p not in existing]
    return {"completions": n, "workers": workers, "timeout_s": timeout, "seconds": round(elapsed, 1),
            "completions_per_s": round(n / elapsed, 1), "slowest_verdict_s": round(slowest, 2),
            "statuses": statuses, "wrong_verdicts": len(wrong), "wrong_examples": wrong[:5],
            "escaped": marker.exists(), "peak_pool_processes": peak_procs,
            "pool_rss_mb_start": round(baseline_rss), "pool_rss_mb_peak": round(peak_rss),
            "processes_left_after_shutdown": len(left)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds per check (the pool's deadline)")
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--out")
    args = ap.parse_args()
    summary = run(args.n, workers=args.workers, timeout=args.timeout, chunk=args.chunk)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
