"""The NLFT paper's claim at this machine's scale (issue 22): SFT vs NLFT vs ReFT trained on 50, 200 and 800 questions.

    python benchmarks/nlft_vs_sft.py                                 # 3 seeds x {50, 200, 800} x {sft, nlft, reft}
    python benchmarks/nlft_vs_sft.py --sizes 50 200 --seeds 1        # a shorter run
    python benchmarks/nlft_vs_sft.py sft.epochs=5                    # overrides of the bench config

The paper (Liu et al. 2024) fine-tunes Llama-3-8B on 50-800 GSM8K questions and reports NLFT's accuracy gain over
SFT at 50 questions, and 78 % less time and 92 % less memory than ReFT. Here, on `benchmarks/configs/nlft_vs_sft.yaml`:
1. a warm-up: `rlft sft` on `--warmup-questions` problems of the built-in task drawn with another generator seed
   (`data.seed=1`, so the methods' questions are new to it), `--warmup-epochs` epochs, every weight; its held-out
   accuracy is measured on the methods' held-out set (`rlft eval`). Every method starts from it (a tiny random-init
   model cannot follow a judgment in words, so the paper's no-warm-up setting does not apply; docs/nlft.md §6);
2. for each size N and seed: continued SFT (`rlft sft`, LoRA), NLFT (`rlft train algo=nlft`, LoRA) and ReFT
   (`rlft train algo=reft`, every weight) on the first N questions, the same number of passes over them
   (`sft.epochs`; ReFT: ceil(epochs x N / rollout.prompts_per_step) iterations); one held-out evaluation at the end.
Each run is its own process: wall time, training seconds (NLFT's include its sampling and judging) and peak RSS
(`ru_maxrss`) are per run. Finished runs are skipped on a rerun (`bench.json` in the run directory). Writes
`RUN_DIR/nlft_vs_sft.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rlft.config import load_config
from rlft.experiments.compare import mean_std_ci
from rlft.tasks import load_records

ROOT = Path(__file__).resolve().parents[1]
# one run in a process of its own, reporting its exit code, wall time and peak resident memory
WRAPPER = ("import json, resource, sys, time\nfrom rlft.cli import main\nstart = time.perf_counter()\n"
           "code = main(sys.argv[2:])\njson.dump({'code': code, 'wall_seconds': time.perf_counter() - start, "
           "'maxrss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, open(sys.argv[1], 'w'))\n")
METHODS = ("sft", "nlft", "reft")


def run_job(run_dir: Path, argv: list[str], log, env: dict, report_only: bool = False) -> dict:
    """`rlft argv...` in a subprocess with `run.dir=run_dir`, once: its `bench.json` plus the run's summary.
    `report_only`: never start a run; one without a result is reported as missing."""
    done = run_dir / "bench.json"
    if not done.exists() and report_only:
        return {"error": "not run"}
    if not done.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"nlft_vs_sft: {' '.join(argv[:1] + argv[2:])} -> {run_dir}", flush=True)
        code = subprocess.run([sys.executable, "-c", WRAPPER, str(done), *argv, f"run.dir={run_dir}"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
        if code != 0 or not done.exists():
            return {"error": f"exit code {code}; see the log"}
    out = json.loads(done.read_text())
    summary = run_dir / "summary.json"
    if summary.exists():
        out["summary"] = json.loads(summary.read_text())
    return out


def method_argv(method: str, config: str, overrides: list[str], n: int, seed: int, warm: str, epochs: int,
                prompts_per_step: int) -> list[str]:
    common = [config, *overrides, f"model.path={warm}", f"data.limit_train={n}", f"run.seed={seed}"]
    if method == "sft":
        return ["sft", *common, "adapter.kind=lora"]
    if method == "nlft":
        return ["train", *common, "algo=nlft"]
    iterations = math.ceil(epochs * n / prompts_per_step)
    return ["train", *common, "algo=reft", f"ppo.iterations={iterations}", f"ppo.eval_every={iterations}",
            f"ppo.save_every={iterations}"]


def result_row(out: dict) -> dict | None:
    s = out.get("summary")
    if "error" in out or s is None or not s.get("history"):
        return None
    return {"accuracy": s["history"][-1]["accuracy"], "train_seconds": s["train_seconds"],
            "wall_seconds": out["wall_seconds"], "maxrss_mib": out["maxrss_mib"],
            "trainable_params": s.get("trainable_params"), "nlft": s.get("nlft")}


def overlap(base, warm_n: int) -> dict:
    """Questions the warm-up's problems share with the methods' training and held-out problems (same text)."""
    d = base.data
    warm = {r.question for r in load_records("arithmetic", "train", n_train=warm_n, n_test=d.n_test, seed=1,
                                             difficulty=d.difficulty)}
    train = load_records("arithmetic", "train", n_train=d.n_train, n_test=d.n_test, seed=d.seed, difficulty=d.difficulty)
    test = load_records("arithmetic", "test", n_train=d.n_train, n_test=d.n_test, seed=d.seed, difficulty=d.difficulty)
    return {"train": sum(r.question in warm for r in train), "test": sum(r.question in warm for r in test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the bench config")
    parser.add_argument("--config", default=str(ROOT / "benchmarks/configs/nlft_vs_sft.yaml"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warmup-questions", type=int, default=2000)
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: on a shared 2-core machine, 2 threads per process ran 5x "
                             "slower than 1 from OpenMP contention)")
    parser.add_argument("--report-only", action="store_true", help="write the table from the finished runs only")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    warm_n = args.warmup_questions
    base = load_config(args.config, args.overrides)
    root = Path(base.run.dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = (root / "bench.log").open("a")

    # 1. the warm-up, on problems of another generator seed, and its accuracy on the methods' held-out set
    warm_out = run_job(root / "warmup", ["sft", args.config, *args.overrides, "data.seed=1", f"data.n_train={warm_n}",
                                         f"sft.epochs={args.warmup_epochs}", "sft.sequences_per_step=32",
                                         "sft.micro_batch_size_per_device=16", "adapter.kind=full"], log, env)
    warm = warm_out["summary"]["final_checkpoint"]
    warm_eval = root / "warmup_eval" / "eval_summary.json"
    if not warm_eval.exists():
        subprocess.run([sys.executable, "-m", "rlft.cli", "eval", args.config, *args.overrides, "--model", warm,
                        "--out", str(warm_eval.parent)], stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    warm_accuracy = json.loads(warm_eval.read_text())["eval/accuracy"]

    # 2. every method x size x seed
    runs: dict = {}
    for n in args.sizes:
        for seed in args.seeds:
            for method in args.methods:
                argv = method_argv(method, args.config, args.overrides, n, seed, warm, base.sft.epochs,
                                   base.rollout.prompts_per_step)
                runs.setdefault(str(n), {}).setdefault(method, {})[str(seed)] = \
                    run_job(root / f"n{n}" / method / f"seed{seed}", argv, log, env, args.report_only)

    # 3. the table
    table = {n: {m: [r for r in map(result_row, by_seed.values()) if r] for m, by_seed in methods.items()}
             for n, methods in runs.items()}
    stats = {n: {m: {k: mean_std_ci([r[k] for r in rows]) for k in ("accuracy", "train_seconds", "wall_seconds",
                                                                       "maxrss_mib")} for m, rows in methods.items()}
             for n, methods in table.items()}
    lines = [
        f"## SFT vs NLFT vs ReFT from 50-800 questions ({time.strftime('%Y-%m-%d')})", "",
        f"- command: `{' '.join(['python benchmarks/nlft_vs_sft.py', *sys.argv[1:]])}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared), Python "
        f"{platform.python_version()}, one run at a time, {args.threads} torch thread(s); total "
        + (f"{(time.perf_counter() - start) / 60:.0f} min" if not args.report_only else
           f"{sum(r.get('wall_seconds', 0) for m in runs.values() for by in m.values() for r in by.values()) / 60:.0f} min "
           "of runs (report only)"),
        f"- warm-up: {args.warmup_epochs} SFT epochs on {warm_n} problems of generator seed 1 (every weight): "
        f"{warm_accuracy * 100:.1f} % on the methods' {base.data.n_test} held-out problems; problems it shares with "
        f"the methods' data (same question text): {overlap(base, warm_n)}",
        f"- every method: {base.sft.epochs} passes over the first N of {base.data.n_train} questions (difficulty "
        f"{base.data.difficulty}); SFT and NLFT a LoRA (rank {base.adapter.lora.rank}, "
        f"{', '.join(base.adapter.lora.target_modules)}), lr {base.sft.lr}, {base.sft.sequences_per_step} "
        f"sequences/step; ReFT every weight, lr {base.ppo.lr}, {base.rollout.prompts_per_step} questions/iteration",
        "", "Held-out greedy accuracy in %, mean ± std [95 % t-interval] over seeds "
        f"{args.seeds}; train seconds exclude evaluation (NLFT's include sampling and judging); peak RSS is the "
        "whole process's (interpreter, torch, model, evaluation included).", "",
        "| questions | method | accuracy | gain vs warm-up (points) | train seconds | peak RSS MiB | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, methods in stats.items():
        for m, s in methods.items():
            acc = s["accuracy"]
            if acc["mean"] is None:
                lines.append(f"| {n} | {m} | – | – | – | – | 0 |")
                continue
            ci = f" [{acc['ci95'][0] * 100:.1f}, {acc['ci95'][1] * 100:.1f}]" if acc["ci95"] else ""
            lines.append(f"| {n} | {m} | {acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f}{ci} | "
                         f"{(acc['mean'] - warm_accuracy) * 100:+.1f} | {s['train_seconds']['mean']:.0f} | "
                         f"{s['maxrss_mib']['mean']:.0f} | {acc['n']} |")
    judged = [(n, r["nlft"]) for n, methods in table.items() for r in methods.get("nlft", []) if r.get("nlft")]
    if judged:
        lines += ["", "NLFT's judged samples per run (positive / negative of N): " + "; ".join(
            f"{n}: {c['positive']}/{c['negative']}" for n, c in judged)]
    text = "\n".join(lines) + "\n"
    (root / "nlft_vs_sft.md").write_text(text)
    (root / "nlft_vs_sft.json").write_text(json.dumps({"warmup_accuracy": warm_accuracy, "runs": runs, "stats": stats},
                                                      indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
