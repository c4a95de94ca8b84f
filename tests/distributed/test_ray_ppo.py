"""The ReFT loop on a real local Ray cluster: 2 rollout engines, a 2-rank DeepSpeed learner (ZeRO-2 and
ZeRO-3 over gloo), a reference actor and a pool of 2 reward workers, against the in-process loop.

Same seed, same data; rollouts are greedy (temperature 0) so both backends sample the same responses
(sampling from 2 engines draws from 2 RNG streams, which no backend can make equal to one). Then the
first iteration's policy/value losses must agree to 1e-4 relative and the updated weights to 1e-3
relative L2 distance of the update: the only differences are the order of floating-point sums (gradients
reduced across 2 ranks, prompts padded per engine rather than per batch), amplified on a few entries by
Adam's g / (|g| + eps) in the first steps (see test_deepspeed_learner.py).
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
from rlft.dist.errors import ClusterTooSmallError, WorkerLostError  # noqa: E402
from rlft.trainers.ppo import run_ppo  # noqa: E402

pytestmark = pytest.mark.dist

SMALL = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=1",
    "rollout.temperature=0", "rollout.max_new_tokens=10", "eval.max_new_tokens=10", "ppo.micro_batch_size_per_device=1",
    "ppo.lr=1e-4", "ppo.eval_every=2", "ppo.save_every=1", "ppo.iterations=2", "log.progress=false",
    "log.tensorboard=false",
]
RAY = ["cluster.backend=ray", "cluster.rollout_workers=2", "cluster.learner_ranks=2", "cluster.reward_workers=2",
       "cluster.learner=deepspeed"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    yield
    ray.shutdown()


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _update(run_dir, before, step=1):
    after = load_file(str(run_dir / "checkpoints" / f"ckpt-{step}" / "model" / "model.safetensors"))
    return torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])


@pytest.fixture(scope="module")
def local_run(warm_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("local")
    run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *SMALL]))
    return run_dir


@pytest.mark.parametrize("stage, sync", [(2, "object_store"), (3, "broadcast")])
def test_ray_deepspeed_matches_in_process_loop(ray_cluster, warm_model, local_run, tmp_path, stage, sync):
    run_dir = tmp_path / f"zero{stage}"
    summary = run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *SMALL, *RAY,
                                         f"cluster.deepspeed_config=configs/deepspeed/zero{stage}.json",
                                         f"cluster.weight_sync={sync}"]))
    assert summary["iterations_done"] == 2
    local, remote = _metrics(local_run), _metrics(run_dir)
    assert len(remote) == 2
    for key in ("policy/loss", "value/loss", "reward/mean", "kl/mean", "rollout/response_len_mean"):
        assert remote[0][key] == pytest.approx(local[0][key], rel=1e-4, abs=1e-7), key
    before = load_file(str(warm_model / "model.safetensors"))
    d_local, d_remote = _update(local_run, before), _update(run_dir, before)
    assert d_local.norm() > 0
    relative = ((d_remote - d_local).norm() / d_local.norm()).item()
    assert relative < 1e-3, f"ZeRO-{stage}: weights after iteration 1 differ by {relative:.2e} (relative L2)"
    # the second iteration sampled with the synced weights: the engines' log-probs equal the learner's
    # recomputation (with stale engine weights they differ by 0.17 per token, measured by skipping the sync)
    assert remote[1]["rollout/logprob_diff"] < 1e-4, remote[1]["rollout/logprob_diff"]
    assert remote[1]["rollout/response_len_mean"] == pytest.approx(local[1]["rollout/response_len_mean"])
    assert remote[1]["timing/sync"] > 0
    if stage == 3:  # resume from DeepSpeed's sharded checkpoint of iteration 1 reproduces iteration 2
        resumed = tmp_path / "resumed"
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(run_dir / "checkpoints" / "ckpt-1", resumed / "checkpoints" / "ckpt-1")
        run_ppo(load_config(None, [f"run.dir={resumed}", f"model.path={warm_model}", *SMALL, *RAY, "run.resume=true",
                                   f"cluster.deepspeed_config=configs/deepspeed/zero{stage}.json",
                                   f"cluster.weight_sync={sync}"]))
        a, b = _update(run_dir, before, step=2), _update(resumed, before, step=2)
        assert ((a - b).norm() / a.norm()).item() < 1e-6
        assert _metrics(resumed)[-1]["policy/loss"] == pytest.approx(remote[1]["policy/loss"], rel=1e-6)


def test_too_small_cluster_fails_early_with_what_is_missing(ray_cluster, warm_model, tmp_path):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *SMALL, *RAY,
                             "cluster.rollout_workers=20"])
    with pytest.raises(ClusterTooSmallError, match=r"CPU: needs 2\d, the cluster has 8"):
        run_ppo(cfg)


def test_killed_rollout_engine_stops_the_run_naming_it_then_resume(ray_cluster, warm_model, tmp_path, monkeypatch):
    from rlft.dist import ray_roles

    overrides = [f"run.dir={tmp_path}", f"model.path={warm_model}", *SMALL, *RAY, "cluster.learner=torch",
                 "cluster.learner_ranks=1", "ppo.iterations=3"]
    generate = ray_roles.RayRolloutGroup.generate
    calls = {"n": 0}

    def generate_then_kill(self, prompt_ids, params):
        calls["n"] += 1
        if calls["n"] == 2:  # the second iteration: engine 1 is killed (SIGKILL) mid-run
            pid = self.where[1]["pid"]
            os.kill(pid, signal.SIGKILL)
        return generate(self, prompt_ids, params)

    monkeypatch.setattr(ray_roles.RayRolloutGroup, "generate", generate_then_kill)
    with pytest.raises(WorkerLostError, match=r"rollout engine 1 \(pid \d+ on 127\.0\.0\.1\) died.*ckpt-1.*run\.resume=true"):
        run_ppo(load_config(None, overrides))
    monkeypatch.setattr(ray_roles.RayRolloutGroup, "generate", generate)
    summary = run_ppo(load_config(None, [*overrides, "run.resume=true"]))
    assert summary["iterations_done"] == 3
    assert [r["step"] for r in _metrics(tmp_path)][-2:] == [2, 3]


def test_killed_learner_rank_stops_the_run_instead_of_hanging(ray_cluster, warm_model, tmp_path, monkeypatch):
    """Rank 0 would wait for rank 1 in a collective forever; the group reports rank 1 at once."""
    from rlft.dist import ray_roles

    train_step = ray_roles.RayLearnerGroup.train_step

    def kill_rank1_then_step(self, micro_batches, loss_fn):
        os.kill(self.where[1]["pid"], signal.SIGKILL)
        return train_step(self, micro_batches, loss_fn)

    monkeypatch.setattr(ray_roles.RayLearnerGroup, "train_step", kill_rank1_then_step)
    with pytest.raises(WorkerLostError, match=r"learner rank 1 \(pid \d+ on 127\.0\.0\.1\) died.*no checkpoint yet"):
        run_ppo(load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *SMALL, *RAY]))


def test_restart_policy_replaces_killed_engine_and_reward_worker(ray_cluster, warm_model, tmp_path, monkeypatch):
    """cluster.on_worker_failure=restart: the run finishes; the new engine got the latest weights."""
    from rlft.dist import ray_roles

    generate, score = ray_roles.RayRolloutGroup.generate, ray_roles.RayRewardPool.score
    calls = {"generate": 0, "score": 0}

    def kill_engine_then_generate(self, prompt_ids, params):
        calls["generate"] += 1
        if calls["generate"] == 2:
            os.kill(self.where[0]["pid"], signal.SIGKILL)
        return generate(self, prompt_ids, params)

    def kill_reward_then_score(self, texts, records, truncated, completion_ids=None):
        calls["score"] += 1
        if calls["score"] == 1:
            os.kill(self.where[1]["pid"], signal.SIGKILL)
        return score(self, texts, records, truncated, completion_ids)

    monkeypatch.setattr(ray_roles.RayRolloutGroup, "generate", kill_engine_then_generate)
    monkeypatch.setattr(ray_roles.RayRewardPool, "score", kill_reward_then_score)
    run_dir = tmp_path / "restart"
    summary = run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *SMALL, *RAY,
                                         "cluster.learner=torch", "cluster.learner_ranks=1",
                                         "cluster.on_worker_failure=restart"]))
    assert summary["iterations_done"] == 2
    rows = _metrics(run_dir)
    # iteration 2 sampled on the replaced engine 0: it must hold the synced weights, not the warm-up's
    assert rows[1]["rollout/logprob_diff"] < 1e-4
