"""The SFT warm-up on a real local Ray cluster: 2 DeepSpeed ZeRO ranks (gloo, `"torch_adam": true`) against
the in-process loop, exact resume, the checkpoint as `rlft train`'s model.path, `rlft compare`'s warm-up.

Same seed, data and batches; the schedule has 2 warm-up steps, then linear decay, so `train/lr` per step
checks that SFT's schedule reaches the DeepSpeed learner. 11 examples in steps of 4 with one sequence per
micro-batch: the last step of each epoch has 3 micro-batches for 2 ranks, so rank 1 pads with a zero-loss
copy (ZeRO's collectives must still match). The only difference is the order of floating-point sums (the
ranks' gradients are reduced across ranks, micro-batches are split differently), amplified on a few entries
by Adam's g / (|g| + eps) (test_deepspeed_learner.py). Measured over the 6 steps: losses within 7e-8
relative, gradient norms 3.4e-7, the weights' change over the run 4e-7 (ZeRO-2) and 1.5e-6 (ZeRO-3)
relative L2; the tolerances below leave a margin of 15x or more.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from rlft.config import load_config  # noqa: E402
from rlft.dist.errors import WorkerLostError  # noqa: E402
from rlft.trainers.sft import run_sft  # noqa: E402

pytestmark = pytest.mark.dist

SMALL = [
    "data.difficulty=0", "data.n_train=11", "data.n_test=2", "sft.epochs=2", "sft.sequences_per_step=4",
    "sft.micro_batch_size_per_device=1", "sft.lr=3e-3", "sft.warmup_ratio=0.34", "sft.schedule=linear",
    "sft.weight_decay=0.01", "sft.max_grad_norm=1.0", "eval.max_new_tokens=6", "log.every_steps=1",
    "log.progress=false", "log.tensorboard=false",
]
RAY = ["cluster.backend=ray", "cluster.learner_ranks=2", "cluster.learner=deepspeed"]
STEPS = 6  # 2 epochs x ceil(11 / 4)


def _cfg(run_dir, model, *extra, command="sft"):
    return load_config(None, [f"run.dir={run_dir}", f"model.path={model}", *SMALL, *extra], command=command)


def _steps(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "sft/loss" in r]


def _change(run_dir, before) -> torch.Tensor:
    after = load_file(str(run_dir / "checkpoints" / f"ckpt-{STEPS}" / "model" / "model.safetensors"))
    return torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(warm_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local")
    run_sft(_cfg(run_dir, warm_model))
    return run_dir


@pytest.fixture(scope="module")
def ray_runs(ray_cluster, warm_model, tmp_path_factory):
    """Uninterrupted Ray runs by ZeRO stage (made on first use, so the resume test reuses stage 3's)."""
    runs = {}

    def get(stage: int):
        if stage not in runs:
            runs[stage] = tmp_path_factory.mktemp(f"zero{stage}")
            run_sft(_cfg(runs[stage], warm_model, *RAY, f"cluster.deepspeed_config=configs/deepspeed/zero{stage}.json"))
        return runs[stage]

    return get


@pytest.mark.parametrize("stage", [2, 3])
def test_ray_sft_matches_in_process(warm_model, local_run, ray_runs, stage):
    run_dir = ray_runs(stage)
    local, remote = _steps(local_run), _steps(run_dir)
    assert [r["step"] for r in remote] == list(range(1, STEPS + 1))
    for a, b in zip(local, remote):
        assert b["train/lr"] == pytest.approx(a["train/lr"], rel=1e-12), a["step"]  # warm-up, then linear decay
        for key, rel in (("sft/loss", 1e-6), ("sft/token_acc", 1e-6), ("train/grad_norm", 1e-5)):
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-9), (a["step"], key)
    assert local[0]["train/lr"] < local[1]["train/lr"] > local[-1]["train/lr"]  # the schedule is not flat
    before = load_file(str(warm_model / "model.safetensors"))
    d_local, d_remote = _change(local_run, before), _change(run_dir, before)
    assert d_local.norm() > 0
    relative = ((d_remote - d_local).norm() / d_local.norm()).item()
    assert relative < 1e-4, f"ZeRO-{stage}: weights after SFT differ by {relative:.2e} (relative L2)"
    # the driver evaluated rank 0's weights: the same greedy answers as the in-process run
    for epoch in (1, 2):
        name = f"predictions_epoch{epoch}.jsonl"
        assert (run_dir / name).read_text() == (local_run / name).read_text()
    ckpt = run_dir / "checkpoints" / f"ckpt-{STEPS}"
    assert (ckpt / "deepspeed").is_dir() and (ckpt / "learner_rng" / "rank1.pt").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):  # an HF folder with its card
        assert (ckpt / "model" / name).exists(), name


def test_ray_sft_resume_equals_uninterrupted(ray_cluster, warm_model, ray_runs, tmp_path):
    full = ray_runs(3)
    run_dir = tmp_path / "part"
    stage3 = ["cluster.deepspeed_config=configs/deepspeed/zero3.json"]
    run_sft(_cfg(run_dir, warm_model, *RAY, *stage3), stop_after_epoch=1)  # as if killed after epoch 1
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["ckpt-3"]
    summary = run_sft(_cfg(run_dir, warm_model, *RAY, *stage3))  # the same command again: resumes
    assert summary["epochs_done"] == 2
    a, b = _steps(full), _steps(run_dir)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        assert y["sft/loss"] == pytest.approx(x["sft/loss"], rel=1e-6), x["step"]
    before = load_file(str(warm_model / "model.safetensors"))
    d_full, d_resumed = _change(full, before), _change(run_dir, before)
    assert ((d_resumed - d_full).norm() / d_full.norm()).item() < 1e-6


def test_killed_learner_rank_stops_the_run_naming_the_last_checkpoint(ray_cluster, warm_model, tmp_path, monkeypatch):
    from rlft.dist import ray_roles

    train_step, calls = ray_roles.RayLearnerGroup.train_step, {"n": 0}

    def kill_rank1_in_epoch_2(self, micro_batches, loss_fn):
        calls["n"] += 1
        if calls["n"] == 4:  # the first step of epoch 2: rank 0 would wait for rank 1 in a collective
            os.kill(self.where[1]["pid"], signal.SIGKILL)
        return train_step(self, micro_batches, loss_fn)

    monkeypatch.setattr(ray_roles.RayLearnerGroup, "train_step", kill_rank1_in_epoch_2)
    with pytest.raises(WorkerLostError, match=r"learner rank 1 \(pid \d+ on 127\.0\.0\.1\) died.*ckpt-3.*run\.resume=true"):
        run_sft(_cfg(tmp_path, warm_model, *RAY))


def test_ray_sft_checkpoint_is_a_warm_up_for_rlft_train(warm_model, ray_runs, tmp_path):
    from rlft.trainers.ppo import run_ppo

    ckpt = tmp_path / "warm"  # the checkpoint without DeepSpeed's shards: the HF folder alone must do
    shutil.copytree(ray_runs(3) / "checkpoints" / f"ckpt-{STEPS}", ckpt, ignore=shutil.ignore_patterns("deepspeed"))
    summary = run_ppo(load_config(None, [
        f"run.dir={tmp_path / 'reft'}", f"model.path={ckpt}", "data.difficulty=0", "data.n_train=4", "data.n_test=2",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=6", "eval.max_new_tokens=6", "ppo.iterations=1",
        "ppo.micro_batch_size_per_device=2", "log.progress=false", "log.tensorboard=false"], command="train"))
    assert summary["iterations_done"] == 1
    # RL started from the SFT weights: one step at ppo.lr moved them far less than SFT moved the base model
    base = load_file(str(warm_model / "model.safetensors"))
    sft = load_file(str(ckpt / "model" / "model.safetensors"))
    rl = load_file(str(tmp_path / "reft" / "checkpoints" / "ckpt-1" / "model" / "model.safetensors"))
    assert rl.keys() == sft.keys() == base.keys()
    rl_change = torch.cat([(rl[k] - sft[k]).flatten() for k in sorted(sft)]).norm()
    sft_change = torch.cat([(sft[k] - base[k]).flatten() for k in sorted(sft)]).norm()
    assert 0 < rl_change < 0.1 * sft_change


def test_compare_runs_its_warm_up_on_the_learner_ranks(ray_cluster, warm_model, tmp_path):
    from rlft.experiments.compare import run_compare

    results = run_compare(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *SMALL, *RAY,
                                 "cluster.deepspeed_config=configs/deepspeed/zero2.json", "compare.methods=[sft]",
                                 "compare.warmup_epochs=1", "sft.epochs=1", "compare.seeds=[1]"])
    warm = tmp_path / "warmup" / "checkpoints" / "ckpt-3"
    assert (warm / "deepspeed").is_dir() and (warm / "model" / "model.safetensors").exists()
    assert results["methods"]["sft"]["failed"] == 0
    continued = tmp_path / "runs" / "sft" / "seed1" / "checkpoints" / "ckpt-3"
    assert (continued / "deepspeed").is_dir()  # the continued-SFT method trained on the ranks too
