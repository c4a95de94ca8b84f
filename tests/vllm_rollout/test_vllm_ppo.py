"""The PPO loop with `rollout.engine=vllm`: the engine is built from the warm-up, samples, and after each
update gets the learner's weights (on the CPU backend by rebuilding from a saved folder).

The check that the sync works: the loop logs `rollout/logprob_diff`, the mean |sampler log-prob - learner
log-prob| over the rollout's tokens. With a large learning rate the weights move far in one update, so
a stale engine would show a large difference at iteration 2; a synced one matches to float precision.
"""

import json

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rlft.config import load_config  # noqa: E402
from rlft.trainers.ppo import run_ppo  # noqa: E402

OVERRIDES = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12", "eval.max_new_tokens=12",
    "ppo.micro_batch_size_per_device=8", "ppo.lr=1e-2",
    "ppo.iterations=2", "ppo.eval_every=2", "ppo.save_every=2", "log.progress=false", "log.tensorboard=false",
    "rollout.engine=vllm", "rollout.vllm_gpu_memory_utilization=0.02",
]


def test_ppo_with_vllm_engine_syncs_weights(tmp_path, tiny_model):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={tiny_model}", *OVERRIDES])
    summary = run_ppo(cfg)
    assert summary["iterations_done"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "eval/accuracy" in rows[-1]
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(tmp_path / "checkpoints" / "ckpt-2" / "model" / "model.safetensors"))
    moved = max(float((before[k] - after[k]).abs().max()) for k in before)
    assert moved > 1e-3, "the update was too small for this test to tell a stale engine from a synced one"
    for row in rows:
        assert row["rollout/logprob_diff"] < 1e-4, row["rollout/logprob_diff"]
        assert torch.isfinite(torch.tensor(row["reward/mean"]))
