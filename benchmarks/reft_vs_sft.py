"""The ReFT effect, measured (issue 4): SFT to its plateau vs ReFT / continued SFT / GRPO from an early warm-up.

    python benchmarks/reft_vs_sft.py                             # the full protocol (hours on 2 CPU cores)
    python benchmarks/reft_vs_sft.py --warmup-epoch 3 compare.seeds=[1] compare.max_seconds=300   # a short run
    python benchmarks/reft_vs_sft.py --warmup-epoch 11 --parallel 2 compare.max_seconds=360 sft.epochs=20  # as run

Protocol (the paper's setting, spec §1 and §12), on `configs/bench_reft_vs_sft.yaml`:
(a) SFT from scratch on a fixed set of training questions for `sft.epochs` epochs, evaluating every
    epoch: its best held-out accuracy is the SFT baseline (it plateaus, then overfits);
(b) ReFT from the early checkpoint of that run at `--warmup-epoch`,
(c) continued SFT from the same warm-up for the same training wall time,
(d) a group-baseline estimator (GRPO-style, KL in the loss) from the same warm-up,
each over the configured seeds (`rlft compare` with `compare.warmup_checkpoint`, one process per method and
seed; `--parallel 2` runs two such processes at a time with one torch thread each). Finished runs are
skipped on a rerun (compare's `compare_result.json`, SFT's `summary.json`). Writes
`RUN_DIR/reft_vs_sft.md` (and appends it to docs/benchmarks.md with `--docs`) plus compare's plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rlft.config import ineffective_reason, load_config
from rlft.experiments.compare import mean_std_ci, run_compare
from rlft.utils.logging import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def _stream(jobs: list[list[str]], threads: int, log: Path) -> subprocess.Popen:
    """Run `jobs` (argument lists of this venv's `rlft`) one after another in a background shell; a failed job
    does not stop the ones after it (the final aggregation retries whatever has no result)."""
    runs = [" ".join(shlex.quote(a) for a in [sys.executable, "-m", "rlft.cli", *job]) for job in jobs]
    script = "rc=0; " + "".join(f"{run} || rc=1; " for run in runs) + "exit $rc"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the bench config")
    parser.add_argument("--config", default=str(ROOT / "configs/bench_reft_vs_sft.yaml"))
    parser.add_argument("--warmup-epoch", type=int, default=3, help="epoch of the SFT run used as the warm-up")
    parser.add_argument("--reuse-sft", default=None,
                        help="a finished SFT-from-scratch run dir to use as (a)'s first seed and the warm-up source")
    parser.add_argument("--parallel", type=int, default=1,
                        help="run the (a)-(d) runs in N concurrent streams of one process each (torch threads = "
                             "cores / N); every run then shares the machine alike")
    parser.add_argument("--docs", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    quiet_libraries()

    base = load_config(args.config, args.overrides)
    root = Path(base.run.dir)
    seeds = list(base.compare.seeds)
    start = time.perf_counter()
    sft_dirs = {seed: root / "sft_full" / f"seed{seed}" for seed in seeds}
    if args.reuse_sft:
        sft_dirs[seeds[0]] = Path(args.reuse_sft)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)

    # `rlft sft` refuses keys it cannot use on its command line: pass it only the overrides it reads
    sft_overrides = [o for o in args.overrides if ineffective_reason(base, "sft", o.partition("=")[0].strip()) is None]

    def sft_job(seed: int) -> list[str]:
        return ["sft", args.config, *sft_overrides, f"run.dir={sft_dirs[seed]}", f"run.seed={seed}"]

    # (a) SFT from scratch to the plateau, one run per seed; the first seed's epoch checkpoint is the warm-up
    todo = [s for s in seeds if not (sft_dirs[s] / "summary.json").exists()]
    if todo and seeds[0] in todo:  # the warm-up comes first
        _stream([sft_job(seeds[0])], threads, root / "sft_warmup.log").wait()
        todo.remove(seeds[0])
    history = json.loads((sft_dirs[seeds[0]] / "summary.json").read_text())["history"]
    warm = next(h for h in history if h["epoch"] == args.warmup_epoch)
    warm_override = f"compare.warmup_checkpoint={warm['checkpoint']}"
    # (b)-(d): one `rlft compare` per (method, seed), which records compare_result.json in its run dir
    runs = [sft_job(s) for s in todo]
    for method in base.compare.methods:
        for seed in seeds:
            runs.append(["compare", args.config, *args.overrides, warm_override,
                         f"compare.methods={json.dumps([method])}", f"compare.seeds=[{seed}]"])
    if args.parallel > 1:
        streams = [_stream(runs[i::args.parallel], threads, root / f"stream{i}.log") for i in range(args.parallel)]
        print(f"reft_vs_sft: {len(runs)} runs in {args.parallel} streams of {threads} thread(s); logs {root}/stream*.log")
        codes = [p.wait() for p in streams]
        if any(codes):
            print(f"reft_vs_sft: a run failed (stream exit codes {codes}); see the logs; finished runs are kept "
                  "and runs without a result are retried by the aggregation below")
    else:
        for job in runs:
            subprocess.run([sys.executable, "-m", "rlft.cli", *job], check=False)
    # aggregate: every run is finished, so this only gathers results.json, the table and the plots
    results = run_compare(args.config, [*args.overrides, warm_override])

    sft_runs = {s: json.loads((sft_dirs[s] / "summary.json").read_text()) for s in seeds
                if (sft_dirs[s] / "summary.json").exists()}
    best = {s: max(h["accuracy"] for h in r["history"]) for s, r in sft_runs.items()}
    best_mean = mean_std_ci(list(best.values()))
    curves = "; ".join(f"seed {s}: " + ", ".join(f"{h['accuracy'] * 100:.1f}" for h in r["history"])
                       for s, r in sft_runs.items())
    cmd = " ".join([f"--warmup-epoch {args.warmup_epoch}", f"--parallel {args.parallel}" if args.parallel > 1 else "",
                    f"--reuse-sft {args.reuse_sft}" if args.reuse_sft else "", *args.overrides]).split()
    lines = [
        f"## ReFT vs SFT on the built-in task ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python benchmarks/reft_vs_sft.py {' '.join(cmd)}`",
        (f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python "
         f"{platform.python_version()}; {args.parallel} concurrent run(s) of {threads} torch thread(s); total "
         f"{(time.perf_counter() - start) / 60:.0f} min"),
        (f"- data: {base.data.n_train} fixed training questions (difficulty {base.data.difficulty}), "
         f"{base.data.n_test} held-out; tiny Llama from scratch"),
        f"- (a) SFT from scratch, {base.sft.epochs} epochs, seeds {list(sft_runs)}: best held-out accuracy "
        f"**{best_mean['mean'] * 100:.1f} ± {best_mean['std'] * 100:.1f}%** (per seed "
        + ", ".join(f"{b * 100:.1f}" for b in best.values()) + f"); per epoch: {curves}",
        f"- warm-up for (b)-(d): epoch {args.warmup_epoch} of (a) seed {seeds[0]}, accuracy {warm['accuracy'] * 100:.1f}%",
        "",
        (root / "results.md").read_text().split("\n", 2)[2],
        "Plots: `accuracy.png` (accuracy vs samples and vs wall time) and `training.png` in the run directory.",
        "",
    ]
    text = "\n".join(lines)
    (root / "reft_vs_sft.md").write_text(text)
    (root / "reft_vs_sft.json").write_text(json.dumps({"sft_full": sft_runs, "compare": results["methods"]},
                                                      indent=2, default=str))
    print(text)
    if args.docs:
        with (ROOT / "docs/benchmarks.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
