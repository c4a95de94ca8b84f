"""How the cost of an RL iteration grows with the work (issue 10): response length, batch size, model size.

    python benchmarks/scaling.py                     # the grid below, ~10 min on 2 CPU cores
    python benchmarks/scaling.py --quick             # 2 points per axis, a smoke run

Each point is one `benchmarks/ppo_throughput.py --runs rlft-grpo` run in its own process (so peak RSS,
`VmHWM`, is that point's), GRPO with KL in the loss, a random-init model (almost every response runs to
the length budget, so "response length" is the budget), `--steps` iterations of which the first is a
warm-up, in one precision (`--precision`, default fp32, as the grids so far; rlft's `model.precision`). Axes, the
others held at the middle value:
- response length T (new tokens) at 8 prompts x 4 samples, tiny model;
- batch (prompts x 4 samples) at T = 64, tiny model;
- model: tiny (3.3M) and SmolLM2-135M at 4 prompts x 2 samples, T = 32.
Writes a markdown table (seconds per iteration by phase, samples/s, peak RSS) to `--out` and
`scaling.png` (time and memory against each axis) to the run directory.
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from peers import PRECISIONS
from ppo_throughput import PHASES, machine, versions

ROOT = Path(__file__).resolve().parent.parent


def grid(quick: bool) -> list[dict]:
    lengths = (32, 128) if quick else (32, 64, 128, 192)  # the tiny model: 512 positions, prompts up to 300
    batches = (2, 8) if quick else (2, 4, 8, 16)
    points = [{"axis": "response length", "x": t, "model": "tiny", "prompts": 8, "group": 4, "tokens": t}
              for t in lengths]
    points += [{"axis": "batch (samples)", "x": p * 4, "model": "tiny", "prompts": p, "group": 4, "tokens": 64}
               for p in batches]
    points += [{"axis": "model", "x": m, "model": m, "prompts": 4, "group": 2, "tokens": 32} for m in ("tiny", "smollm2")]
    return points


def run_point(point: dict, args, run_dir: Path, done: set[str]) -> dict:
    name = f"{point['model']}_p{point['prompts']}_g{point['group']}_t{point['tokens']}"
    out_dir = run_dir / name
    results = out_dir / "results.json"
    # The same point on two axes runs once per invocation; results of an earlier invocation (other code)
    # are never reused.
    if name not in done:
        done.add(name)
        results.unlink(missing_ok=True)
        cmd = [sys.executable, str(ROOT / "benchmarks/ppo_throughput.py"), "--runs", "rlft-grpo", "--no-ceilings",
               "--steps", str(args.steps), "--prompts", str(point["prompts"]), "--group", str(point["group"]),
               "--max-new-tokens", str(point["tokens"]), "--model-size", point["model"], "--threads", str(args.threads),
               "--precision", args.precision, "--run-dir", str(out_dir), "--out", str(out_dir / "report.md")]
        print(f"scaling: {name} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads(results.read_text())["summary"][args.precision]["rlft-grpo"]
    return {**point, "name": name, **summary}


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("scaling: matplotlib not installed; no plot", file=sys.stderr)
        return
    axes_names = ["response length", "batch (samples)", "model"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for col, axis in enumerate(axes_names):
        pts = [r for r in rows if r["axis"] == axis]
        xs = [str(r["x"]) for r in pts]
        bottom = [0.0] * len(pts)
        for phase in PHASES:
            vals = [r[phase] for r in pts]
            axes[0][col].bar(xs, vals, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, vals)]
        axes[0][col].set_title(f"seconds per iteration vs {axis}")
        axes[1][col].bar(xs, [r["peak_rss_mib"] for r in pts], color="gray")
        axes[1][col].set_title(f"peak RSS (MiB) vs {axis}")
        axes[1][col].set_xlabel(axis)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="iterations per point; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="two points per axis")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="rlft's model.precision at every point")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_scaling"))
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks_scaling.md"))
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    rows = [run_point(p, args, run_dir, done) for p in grid(args.quick)]
    lines = [
        f"## Cost of an RL iteration vs work (GRPO, rlft) ({datetime.date.today().isoformat()})",
        "",
        f"- command: `python benchmarks/scaling.py {' '.join(sys.argv[1:])}`",
        f"- machine: {machine()}; versions: {versions()}",
        (f"- precision {args.precision}; {args.steps} iterations per point, the first excluded; each point in its own "
         f"process; plot: `{run_dir / 'scaling.png'}`"),
        "",
        ("| axis | value | samples | s/iteration | rollout | logprobs | train | other | samples/s | completion tokens/s "
         "| peak RSS MiB |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['axis']} | {r['x']} | {r['prompts'] * r['group']} | {r['s_per_step']:.2f} | "
                     f"{r['rollout']:.2f} | {r['logprobs']:.2f} | {r['train']:.2f} | {r['other'] + r['reward']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} |")
    text = "\n".join(lines) + "\n"
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    Path(args.out).write_text(text)
    plot(rows, run_dir / "scaling.png")
    print(text)


if __name__ == "__main__":
    main()
