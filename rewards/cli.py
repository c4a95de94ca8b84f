"""`rlft check`: check one answer from the command line, or a JSONL file of completions.

    rlft check --gold "1/2" "0.5"
    rlft check --gold 18 --dataset gsm8k "... Therefore, the answer is: 18"
    rlft check FILE.jsonl --out VERDICTS.jsonl

Input lines: `completion`, `gold`, `dataset` (gsm8k, svamp, mathqa, mathqa-numeric, math,
arithmetic; default gsm8k), optional `format` (text | program), `options` (MathQA's inline
options), `question` and `id`. Output lines copy `id` and add `correct`, `score` (the ReFT
reward), `extracted`, `seconds`, `status` and `error`. Accuracy and checks per second are printed
at the end. `rlft` wires its `check` subcommand to `main`; `python -m rewards.cli` works too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from collections.abc import Sequence

from rewards.check import DEFAULT_TIMEOUT, check, check_batch
from rewards.judge import DATASETS

_CHUNK = 2000  # lines checked per batch; bounds memory on huge files


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlft check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a completion (with --gold) or a JSONL file")
    p.add_argument("--gold", help="gold answer: check the positional argument as one completion")
    p.add_argument("--out", help="write one verdict per input line to this JSONL file")
    p.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="dataset rules (default: gsm8k, or math when --gold looks like LaTeX)")
    p.add_argument("--format", dest="fmt", default="text", choices=("text", "program"))
    p.add_argument("--options", default=None, help="MathQA inline options, e.g. 'a ) 12 , b ) 15'")
    p.add_argument("--partial-reward", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per check")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    p.add_argument("--reft-compat", action="store_true", help="mwp_ReFT's exact rules")
    return p


def _single(args: argparse.Namespace) -> int:
    dataset = args.dataset or ("math" if "\\" in args.gold or "{" in args.gold else "gsm8k")
    v = check(args.input, args.gold, dataset=dataset, fmt=args.fmt, options=args.options,
              partial_reward=args.partial_reward, timeout=args.timeout, reft_compat=args.reft_compat)
    print(f"verdict:   {v.status} (correct={v.correct}, score={v.score:g})")
    print(f"extracted: {v.extracted!r}")
    print(f"gold:      {v.gold!r}")
    print(f"dataset:   {dataset}")
    print(f"seconds:   {v.seconds:.6f}")
    if v.error:
        print(f"note:      {v.error}")
    return 0


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("completion", "gold"):
                if key not in row:
                    raise ValueError(f"{path}:{lineno}: missing {key!r}")
            if row.get("dataset", "gsm8k") not in DATASETS:
                raise ValueError(f"{path}:{lineno}: unknown dataset {row.get('dataset')!r}")
            rows.append(row)
    return rows


def _file(args: argparse.Namespace) -> int:
    rows = _read_jsonl(args.input)
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    n_correct, statuses = 0, dict[str, int]()
    t0 = time.perf_counter()
    try:
        for k in range(0, len(rows), _CHUNK):
            chunk = rows[k:k + _CHUNK]
            verdicts = check_batch(
                [str(r["completion"]) for r in chunk], [str(r["gold"]) for r in chunk],
                datasets=[r.get("dataset") or args.dataset or "gsm8k" for r in chunk],
                fmts=[r.get("format") or args.fmt for r in chunk],
                options=[r.get("options") for r in chunk], questions=[r.get("question") for r in chunk],
                partial_reward=args.partial_reward, timeout=args.timeout, workers=args.workers,
                reft_compat=args.reft_compat)
            for row, v in zip(chunk, verdicts):
                n_correct += v.correct
                statuses[v.status] = statuses.get(v.status, 0) + 1
                if out is not None:
                    rec = {"id": row["id"]} if "id" in row else {}
                    rec.update(correct=v.correct, score=v.score, extracted=v.extracted,
                               seconds=round(v.seconds, 6), status=v.status, error=v.error)
                    out.write(json.dumps(rec) + "\n")
    finally:
        if out is not None:
            out.close()
    wall = time.perf_counter() - t0
    n = len(rows)
    acc = n_correct / n if n else 0.0
    print(f"{n} checks: accuracy {acc:.4f} ({n_correct}/{n}); {n / wall if wall > 0 else 0:.1f} checks/s "
          f"({wall:.2f} s wall); statuses {json.dumps(statuses, sort_keys=True)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rlft check`; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.gold is not None:
            return _single(args)
        return _file(args)
    except (OSError, ValueError) as e:
        print(f"rlft check: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
