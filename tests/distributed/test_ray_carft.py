"""CARFT and the self-training baselines on a real local Ray cluster with 2 DeepSpeed ranks (gloo), against the
in-process loop on the same batches.

As in `test_ray_ppo.py`: greedy rollouts (temperature 0), so both backends sample the same responses, and
tolerances that allow only a different order of floating-point sums (1e-4 relative on losses, 1e-3 on the
relative L2 distance of the weight updates).

CARFT: 2 ranks x micro-batches of 2 see the same InfoNCE negatives as one process with micro-batches of 4
(the ranks all-gather z_gen), and the per-rank normaliser Σc_i matches when every rank holds as many correct
samples: a stub reward scores every sample 1. `carft/loss` includes log den_i, so it differs if the
gather is missing. A second run (ZeRO-3, the LCS negative and the embedding partial reward) checks that the
anchor pass runs on the learner ranks and never in the driver.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from rlft.config import load_config  # noqa: E402
from rlft.trainers.ppo import run_ppo  # noqa: E402

pytestmark = pytest.mark.dist

SMALL = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=1",
    "rollout.temperature=0", "rollout.max_new_tokens=10", "eval.max_new_tokens=10", "ppo.lr=1e-4",
    "ppo.eval_every=2", "ppo.save_every=1", "ppo.iterations=2", "log.progress=false", "log.tensorboard=false",
]
RAY = ["cluster.backend=ray", "cluster.rollout_workers=2", "cluster.learner_ranks=2", "cluster.reward_workers=2",
       "cluster.learner=deepspeed"]
STUB = '''
def always(completions, **columns):
    return [1.0] * len(completions)

def alternate(completions, **columns):  # per call; 2 workers each get 2 of the 4 samples: 0.1, 1, 0.1, 1
    return [1.0 if i % 2 else 0.1 for i in range(len(completions))]
'''


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "stub.py"
    path.write_text(STUB)
    return path


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _update(run_dir, before, step=1, file="model.safetensors"):
    after = load_file(str(run_dir / "checkpoints" / f"ckpt-{step}" / "model" / file))
    return torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])


def _relative(a, b):
    assert a.norm() > 0
    return ((b - a).norm() / a.norm()).item()


def _run(run_dir, warm_model, *extra):
    return run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *SMALL, *extra]))


@pytest.fixture(scope="module")
def carft_local(warm_model, stub, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("carft_local")
    _run(run_dir, warm_model, "algo=carft", f"reward.fn={stub}:always", "ppo.micro_batch_size_per_device=4")
    return run_dir


def test_carft_on_two_deepspeed_ranks_matches_one_process(ray_cluster, warm_model, stub, carft_local, tmp_path):
    run_dir = tmp_path / "ray"
    summary = _run(run_dir, warm_model, "algo=carft", f"reward.fn={stub}:always", "ppo.micro_batch_size_per_device=2",
                   *RAY, "cluster.deepspeed_config=configs/deepspeed/zero2.json")
    assert summary["iterations_done"] == 2
    local, remote = _metrics(carft_local), _metrics(run_dir)
    assert remote[0]["carft/pos_cos_mean"] != 0 and local[0]["reward/accuracy"] == 1.0
    for key in ("policy/loss", "value/loss", "carft/loss", "carft/pos_cos_mean", "carft/neg_cos_mean",
                "carft/pool_entropy", "reward/mean", "kl/mean"):
        assert remote[0][key] == pytest.approx(local[0][key], rel=1e-4, abs=1e-7), key
    # the value head is the CARFT head, initialised alike on every process, trained and saved by DeepSpeed
    before = load_file(str(warm_model / "model.safetensors"))
    assert _relative(_update(carft_local, before), _update(run_dir, before)) < 1e-3
    head = {k: torch.zeros_like(v) for k, v in load_file(str(carft_local / "checkpoints" / "ckpt-1" / "model" /
                                                                "value_head.safetensors")).items()}
    assert set(head) == {"proj.weight", "proj.bias", "value.weight", "value.bias"}
    local_head, remote_head = (_update(d, head, file="value_head.safetensors") for d in (carft_local, run_dir))
    assert _relative(local_head, remote_head) < 1e-3
    assert remote[1]["rollout/logprob_diff"] < 1e-4  # iteration 2 sampled with the synced weights
    assert remote[1]["carft/loss"] == pytest.approx(local[1]["carft/loss"], rel=1e-3)


@pytest.fixture(scope="module")
def carft_lcs_local(warm_model, stub, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("carft_lcs_local")
    _run(run_dir, warm_model, "algo=carft", f"reward.fn={stub}:alternate", "carft.negative=lcs",
         "carft.partial_reward=embedding", "ppo.micro_batch_size_per_device=4")
    return run_dir


def test_anchor_pass_runs_on_the_learner_ranks_not_in_the_driver(ray_cluster, warm_model, stub, carft_lcs_local,
                                                                  tmp_path, monkeypatch):
    from rlft.dist import ray_roles
    from rlft.models.policy import PolicyModel

    def no_forward_here(self, *args, **kwargs):
        raise AssertionError("a policy forward ran in the driver")

    monkeypatch.setattr(PolicyModel, "forward", no_forward_here)  # the actors are other processes
    calls = []
    pooled = ray_roles.RayLearnerGroup.pooled_embeddings

    def counting(self, batch, pool_fn, micro_batch_size):
        calls.append(pool_fn.__name__)
        return pooled(self, batch, pool_fn, micro_batch_size)

    monkeypatch.setattr(ray_roles.RayLearnerGroup, "pooled_embeddings", counting)
    run_dir = tmp_path / "ray"
    _run(run_dir, warm_model, "algo=carft", f"reward.fn={stub}:alternate", "carft.negative=lcs",
         "carft.partial_reward=embedding", "ppo.micro_batch_size_per_device=2", *RAY,
         "cluster.deepspeed_config=configs/deepspeed/zero3.json")
    assert calls == ["pool_anchor", "pool_response"] * 2  # the anchor and the partial-reward pass, per iteration
    local, remote = _metrics(carft_lcs_local), _metrics(run_dir)
    # the embedding partial reward comes from the ranks' (ZeRO-3 sharded) forwards: the one process's scores
    for key in ("reward/mean", "carft/partial_reward_mean"):
        assert remote[0][key] == pytest.approx(local[0][key], rel=1e-5), key
    assert 0.1 <= remote[0]["carft/partial_reward_mean"] <= 0.3 and remote[0]["timing/anchor"] > 0
    for row in remote:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("carft/loss", "carft/neg_loss", "policy/loss"))
    assert (run_dir / "checkpoints" / "ckpt-2" / "model" / "value_head.safetensors").exists()


def test_online_self_training_on_two_ranks_matches_one_process(ray_cluster, warm_model, stub, tmp_path):
    # micro-batches of 2: 4 gold examples and 2 correct samples make 3 SFT micro-batches, dealt 2 + 1 to the
    # ranks; rank 1 also runs a padding copy whose loss counts zero (ZeRO-3: every pass gathers parameters)
    common = ["algo=online_st", f"reward.fn={stub}:alternate", "ppo.micro_batch_size_per_device=2"]
    _run(tmp_path / "local", warm_model, *common)
    _run(tmp_path / "ray", warm_model, *common, *RAY, "cluster.deepspeed_config=configs/deepspeed/zero3.json")
    local, remote = _metrics(tmp_path / "local"), _metrics(tmp_path / "ray")
    assert local[0]["online_st/n_correct"] == pytest.approx(2)
    for key in ("online_st/gold_loss", "online_st/correct_loss", "online_st/n_correct", "train/grad_norm"):
        assert remote[0][key] == pytest.approx(local[0][key], rel=1e-5), key
    before = load_file(str(warm_model / "model.safetensors"))
    assert _relative(_update(tmp_path / "local", before), _update(tmp_path / "ray", before)) < 1e-3
    assert remote[1]["reward/mean"] == pytest.approx(local[1]["reward/mean"])


def test_offline_self_training_samples_on_ray_engines(ray_cluster, warm_model, stub, tmp_path):
    from rlft.trainers.selftrain import run_offline_st

    common = [f"model.path={warm_model}", "algo=offline_st", f"reward.fn={stub}:alternate", "data.difficulty=0",
              "data.n_train=8", "data.n_test=2", "offline_st.samples_per_question=2", "rollout.temperature=0",
              "rollout.max_new_tokens=10", "eval.max_new_tokens=8", "sft.epochs=1", "sft.sequences_per_step=8",
              "sft.micro_batch_size_per_device=8", "log.progress=false", "log.tensorboard=false"]
    local = run_offline_st(load_config(None, [f"run.dir={tmp_path / 'local'}", *common]))
    remote = run_offline_st(load_config(None, [f"run.dir={tmp_path / 'ray'}", *common, *RAY]))
    rows = [(tmp_path / d / "offline_st_samples.jsonl").read_text() for d in ("local", "ray")]
    assert rows[0] == rows[1] and rows[0].count("\n") == remote["offline_st"]["kept"] > 0
    for key in ("sampled", "correct", "unique_correct", "kept", "union"):
        assert remote["offline_st"][key] == local["offline_st"][key], key
    assert remote["epochs_done"] == 1


def test_compare_on_ray_runs_carft_and_both_self_training_methods(ray_cluster, tmp_path, capsys):
    from rlft.cli import main

    code = main(["compare", f"run.dir={tmp_path}", "data.difficulty=0", "data.n_train=16", "data.n_test=4",
                 "model.tiny.hidden_size=128", "model.tiny.num_layers=2", "model.tiny.intermediate_size=256",
                 "model.tiny.vocab_size=320", "sft.sequences_per_step=8", "sft.micro_batch_size_per_device=4",
                 "sft.epochs=1", "eval.max_new_tokens=8", "rollout.prompts_per_step=4", "rollout.max_new_tokens=8",
                 "ppo.iterations=1", "ppo.micro_batch_size_per_device=2", "offline_st.samples_per_question=2",
                 "log.progress=false", "log.tensorboard=false", "compare.warmup_epochs=1", "compare.seeds=[1]",
                 "compare.methods=[carft, online_st, offline_st]", *RAY])
    assert code == 0, capsys.readouterr().err
    methods = json.loads((tmp_path / "results.json").read_text())["methods"]
    for label in ("carft", "online_st", "offline_st"):
        run = methods[label]["runs"]["1"]
        assert "error" not in run and run["final_accuracy"] is not None, (label, run.get("error"))
        saved = (tmp_path / "runs" / label / "seed1" / "config.yaml").read_text()
        assert "backend: ray" in saved and "learner_ranks: 2" in saved
