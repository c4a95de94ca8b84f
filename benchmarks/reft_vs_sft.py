"""The ReFT effect, measured (issue 4): SFT to its plateau vs ReFT / continued SFT / GRPO from an early warm-up.

    python benchmarks/reft_vs_sft.py                             # the full protocol (hours on 2 CPU cores)
    python benchmarks/reft_vs_sft.py --warmup-epoch 3 compare.seeds=[1] compare.max_seconds=300   # a short run

Protocol (the paper's setting, spec §1 and §12), on `configs/bench_reft_vs_sft.yaml`:
(a) SFT from scratch on a fixed set of training questions for `sft.epochs` epochs, evaluating every
    epoch: its best held-out accuracy is the SFT baseline (it plateaus, then overfits);
(b) ReFT from the early checkpoint of that run at `--warmup-epoch`,
(c) continued SFT from the same warm-up for the same training wall time,
(d) a group-baseline estimator (GRPO-style, KL in the loss) from the same warm-up,
each over the configured seeds (`rlft compare` with `compare.warmup_checkpoint`). Writes
`RUN_DIR/reft_vs_sft.md` (and appends it to docs/benchmarks.md with `--docs`) plus compare's plots.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rlft.config import load_config
from rlft.experiments.compare import run_compare
from rlft.trainers.sft import run_sft
from rlft.utils.logging import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides of the bench config")
    parser.add_argument("--config", default=str(ROOT / "configs/bench_reft_vs_sft.yaml"))
    parser.add_argument("--warmup-epoch", type=int, default=3, help="epoch of the SFT run used as the warm-up")
    parser.add_argument("--docs", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    quiet_libraries()

    base = load_config(args.config, args.overrides)
    root = Path(base.run.dir)
    start = time.perf_counter()
    # (a) SFT to the plateau; its per-epoch checkpoints are kept (sft.keep_last_checkpoints)
    sft = run_sft(load_config(args.config, [*args.overrides, f"run.dir={root / 'sft_full'}"]))
    history = sft["history"]
    warm = next(h for h in history if h["epoch"] == args.warmup_epoch)
    # (b)-(d) from the early checkpoint
    results = run_compare(args.config, [*args.overrides, f"compare.warmup_checkpoint={warm['checkpoint']}"])

    best_sft = max(h["accuracy"] for h in history)
    best_epoch = next(h["epoch"] for h in history if h["accuracy"] == best_sft)
    curve = ", ".join(f"{h['accuracy'] * 100:.1f}" for h in history)
    lines = [
        f"## ReFT vs SFT on the built-in task ({time.strftime('%Y-%m-%d')})",
        "",
        f"- command: `python benchmarks/reft_vs_sft.py --warmup-epoch {args.warmup_epoch} {' '.join(args.overrides)}`",
        f"- machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"total {(time.perf_counter() - start) / 60:.0f} min",
        f"- data: {base.data.n_train} fixed training questions (difficulty {base.data.difficulty}), "
        f"{base.data.n_test} held-out; tiny Llama from scratch",
        f"- (a) SFT from scratch, {len(history)} epochs: best held-out accuracy **{best_sft * 100:.1f}%** at epoch "
        f"{best_epoch}; per epoch: {curve}",
        f"- warm-up for (b)-(d): epoch {args.warmup_epoch} of (a), accuracy {warm['accuracy'] * 100:.1f}%",
        "",
        (root / "results.md").read_text().split("\n", 2)[2],
        "Plots: `accuracy.png` (accuracy vs samples and vs wall time) and `training.png` in the run directory.",
        "",
    ]
    text = "\n".join(lines)
    (root / "reft_vs_sft.md").write_text(text)
    (root / "reft_vs_sft.json").write_text(json.dumps({"sft_full": sft, "compare": results["methods"]}, indent=2, default=str))
    print(text)
    if args.docs:
        with (ROOT / "docs/benchmarks.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
