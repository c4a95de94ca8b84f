"""`rlft launch` submits a tiny ReFT job to a local Ray head with `ray job submit`, and it finishes."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from dist_helpers import free_port  # noqa: E402
from rlft.cli import main  # noqa: E402

pytestmark = pytest.mark.dist


def test_launch_submits_and_finishes_a_job(warm_model, tmp_path, monkeypatch):
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             _node_ip_address="127.0.0.1", logging_level="warning")
    try:
        monkeypatch.setenv("RLFT_LAUNCH_LOCAL_PYTHON", "1")  # the job runs with this venv's python
        run_dir = tmp_path / "job"
        code = main(["launch", f"run.dir={run_dir}", f"model.path={warm_model}", "data.difficulty=0", "data.n_train=8",
                     "data.n_test=2", "rollout.prompts_per_step=2", "rollout.max_new_tokens=8", "eval.max_new_tokens=8",
                     "ppo.iterations=1", "ppo.micro_batch_size_per_device=2", "log.progress=false",
                     "log.tensorboard=false", "cluster.learner=torch", "--address", f"http://127.0.0.1:{port}"])
    finally:
        ray.shutdown()
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations_done"] == 1
    assert (run_dir / "checkpoints" / "ckpt-1" / "model" / "model.safetensors").exists()


def test_launch_validates_the_config_before_submitting(capsys):
    assert main(["launch", "ppo.lrr=1", "--address", "http://127.0.0.1:1"]) == 2
    assert "ppo.lr" in capsys.readouterr().err
