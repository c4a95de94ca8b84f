"""Fixed-seed metrics of short RL runs, for checking that a refactor changes no behaviour (bit-exact on CPU).

    python benchmarks/fixed_seed_metrics.py --out /tmp/before.json
    python benchmarks/fixed_seed_metrics.py --out /tmp/after.json --compare /tmp/before.json

Builds the test suite's tiny model (random init, seed 0), runs a few iterations of each algorithm from it
with the same seed, and writes every metric except timings. `--compare` exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlft.config import load_config  # noqa: E402
from rlft.models.tiny import build_tiny_model  # noqa: E402
from rlft.tasks import load_records  # noqa: E402
from rlft.tasks.prompts import prompt_text, target_text  # noqa: E402
from rlft.trainers.ppo import run_ppo  # noqa: E402

COMMON = ["data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4",
          "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12", "eval.max_new_tokens=12",
          "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4", "ppo.eval_every=2", "ppo.save_every=2",
          "ppo.iterations=3", "log.progress=false", "log.tensorboard=false",
          "model.precision=fp32"]  # bit-exact comparisons: auto would pick bf16-mixed on a GPU or an AMX CPU
RUNS = {
    "reft": ["algo=reft"],
    "reft_token_mean_mb": ["algo=reft", "ppo.loss_agg=token-mean", "ppo.sequences_per_minibatch=4"],
    "grpo": ["algo=grpo", "kl.placement=loss", "kl.estimator=k3"],
    "grpo_one_step": ["algo=grpo", "ppo.ppo_epochs=1", "kl.coef=0"],
    "rloo": ["algo=rloo"],
    "reinforce_pp": ["algo=reinforce_pp"],
    "carft": ["algo=carft"],
    "carft_lcs": ["algo=carft", "carft.negative=lcs", "carft.partial_reward=embedding"],
    "online_st": ["algo=online_st"],
    "reft_separate_critic": ["algo=reft", "ppo.critic=separate", "ppo.value_warmup_iterations=1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default=None)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlft_fixed_seed_"))
    records = load_records("arithmetic", "train", n_train=16, difficulty=0)
    texts = [prompt_text(r) + target_text(r) for r in records] * 4
    model = build_tiny_model(tmp / "model", texts, seed=0, vocab_size=300, hidden_size=128, num_layers=2,
                             intermediate_size=256)
    results = {}
    for name, extra in RUNS.items():
        if args.only and name not in args.only:
            continue
        run_dir = tmp / name
        run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={model}", *COMMON, *extra]))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results[name] = [{k: v for k, v in r.items() if not k.startswith(("timing/", "time/", "eval/seconds"))}
                         for r in rows]
        print(f"{name}: {len(rows)} iterations, reward/mean {rows[-1].get('reward/mean')}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        diffs = []
        for name, rows in results.items():
            if name not in before:
                continue
            if len(rows) != len(before[name]):
                diffs.append(f"{name}: {len(before[name])} rows before, {len(rows)} after")
            for i, (a, b) in enumerate(zip(before[name], rows)):
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k):
                        diffs.append(f"{name} iteration {i + 1} {k}: {a.get(k)} -> {b.get(k)}")
        print("\n".join(diffs) if diffs else f"bit-exact: {len(results)} runs, every metric equal")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
