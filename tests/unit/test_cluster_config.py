"""The cluster section: validation with clear errors, placement plans, DeepSpeed config files."""

import json
from pathlib import Path

import pytest

from rlft.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
RAY = ["cluster.backend=ray"]


@pytest.mark.parametrize("overrides, message", [
    (["cluster.learner=torch", "cluster.learner_ranks=2"], "cluster.learner=torch runs one rank"),
    (["cluster.placement=colocated", "cluster.learner_ranks=2", "cluster.rollout_workers=3"], "cluster.rollout_workers=2"),
    (["ppo.critic=separate"], "ppo.critic=shared"),
    (["adapter.kind=loreft"], "adapter.kind=loreft runs with cluster.backend=local only"),
    (["rollout.engine=vllm", "cluster.weight_sync=broadcast"], "with rollout.engine=vllm use"),
    (["cluster.on_worker_failure=restart", "cluster.weight_sync=broadcast"], "needs cluster.weight_sync=object_store"),
    (["cluster.learner_ranks=3", "rollout.prompts_per_step=8"], "multiple of 3"),
    (["cluster.rollout_workers=0"], "cluster.rollout_workers must be >= 1"),
    (["cluster.placement=nearby"], "cluster.placement"),
])
def test_bad_cluster_settings_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("=", "=")):
        load_config(None, [*RAY, *overrides])


def test_local_backend_ignores_cluster_sizes():
    load_config(None, ["cluster.learner=torch", "cluster.learner_ranks=2"])  # not validated unless ray


@pytest.mark.parametrize("path", sorted((REPO / "configs/deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_configs_parse_and_set_a_stage(path):
    stage = json.loads(path.read_text())["zero_optimization"]["stage"]
    assert stage in (1, 2, 3)


def test_engine_config_owns_batch_optimizer_and_clipping():
    pytest.importorskip("deepspeed")
    from rlft.learner.deepspeed_learner import build_engine_config

    user = {"zero_optimization": {"stage": 3}, "train_batch_size": 999, "scheduler": {"type": "WarmupLR"},
            "optimizer": {"type": "Adam"}}
    cfg = build_engine_config(user, lr=1e-5, weight_decay=0.1, max_grad_norm=0.5, world_size=4)
    assert cfg["zero_optimization"] == {"stage": 3}
    assert cfg["train_batch_size"] == 4 and cfg["managed_gradient_accumulation"] is False
    assert cfg["optimizer"]["params"]["lr"] == 1e-5 and cfg["optimizer"]["params"]["torch_adam"] is True
    assert cfg["gradient_clipping"] == 0.5 and "scheduler" not in cfg
    assert user["train_batch_size"] == 999  # the user's dict is not modified


def test_bad_deepspeed_config_names_the_file_and_line(tmp_path):
    pytest.importorskip("deepspeed")
    from rlft.learner.deepspeed_learner import load_deepspeed_config

    bad = tmp_path / "zero.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(ValueError, match=r"zero\.json:2: invalid JSON"):
        load_deepspeed_config(bad)
    with pytest.raises(ValueError, match="file not found"):
        load_deepspeed_config(tmp_path / "missing.json")


def test_placement_plans():
    pytest.importorskip("ray")
    from rlft.dist.ray_roles import plan_bundles, split_evenly

    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    cfg = load_config(None, [*RAY, "cluster.learner_ranks=2", "cluster.rollout_workers=2", "cluster.placement=colocated",
                             "cluster.gpus_per_worker=1"])
    bundles, where = plan_bundles(cfg)
    assert bundles == [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]  # rank 0 + engine 0 + reference
    assert where["learner"] == [(0, 1 / 3), (1, 0.5)] and where["reference"] == [(0, 1 / 3)]
    cfg = load_config(None, [*RAY, "cluster.learner_ranks=2", "cluster.rollout_workers=3", "kl.coef=0"])
    bundles, where = plan_bundles(cfg)
    assert bundles == [{"CPU": 1.0}] * 5 and where["reference"] == [] and [b for b, _ in where["rollout"]] == [2, 3, 4]
