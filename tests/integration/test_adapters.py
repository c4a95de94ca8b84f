"""Policy adapters in the real loops on the tiny warm-up model: ReFT PPO with a LoReFT and with a LoRA policy,
SFT with BREP, adapter-only checkpoints that `rlft eval` and `rlft train` load, and `rlft compare` variants.

Mechanics tests (a random model scores ~0); accuracy is measured in docs/results.md.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft.adapters import read_adapter_json
from rlft.cli import main
from rlft.config import ConfigError, load_config
from rlft.trainers.ppo import run_ppo
from rlft.trainers.sft import run_sft

PPO_MICRO = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-3",
    "ppo.eval_every=2", "ppo.save_every=1", "log.progress=false", "log.tensorboard=false", "ppo.iterations=2",
]
SFT_MICRO = [
    "data.difficulty=0", "data.n_train=32", "data.n_test=4", "sft.sequences_per_step=16", "sft.micro_batch_size_per_device=8",
    "sft.lr=3e-2", "sft.epochs=2", "eval.max_new_tokens=12", "log.progress=false", "log.every_steps=1", "log.tensorboard=false",
]
FINITE_KEYS = ("reward/mean", "kl/mean", "policy/loss", "value/loss", "policy/clipfrac", "train/grad_norm")


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run_dir, step):
    return run_dir / "checkpoints" / f"ckpt-{step}" / "model"


@pytest.fixture(scope="module")
def loreft_run(tmp_path_factory, warm_model):
    run_dir = tmp_path_factory.mktemp("loreft")
    summary = run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *PPO_MICRO,
                                         "adapter.kind=loreft", "adapter.repft.rank=2"]))
    return run_dir, summary


def test_reft_with_a_loreft_policy_trains_only_the_adapter(loreft_run, warm_model):
    run_dir, summary = loreft_run
    rows = _metrics(run_dir)
    assert summary["iterations_done"] == 2 and summary["adapter"] == "loreft"
    # 2 layers x (2 r d + r), r = 2, d = 128, plus the value head Linear(128, 1)
    assert summary["trainable_params"] == 2 * (2 * 2 * 128 + 2) + 129
    for row in rows:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in FINITE_KEYS)
        assert row["adapter/orthonormality_error_max"] < 1e-5
    first, second = _ckpt(run_dir, 1), _ckpt(run_dir, 2)
    assert sorted(p.name for p in first.iterdir() if p.suffix in (".json", ".safetensors") and "token" not in p.name) == [
        "adapter.json", "adapter.safetensors", "value_head.safetensors"]  # adapter-only: no copy of the base
    info = read_adapter_json(first)
    assert info["kind"] == "loreft" and info["base_model"] == str(warm_model.resolve())
    a, b = load_file(str(first / "adapter.safetensors")), load_file(str(second / "adapter.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a), "the adapter did not change"
    assert rows[-1]["kl/mean"] != 0.0  # the adapter-off reference now differs from the policy


def test_first_ratio_is_one_and_kl_zero_with_an_adapter_off_reference(tmp_path, warm_model):
    """T8: identity init makes the policy equal its adapter-off reference when the first batch is sampled."""
    run_ppo(load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *PPO_MICRO, "ppo.iterations=1",
                               "ppo.ppo_epochs=1", "adapter.kind=loreft"]))
    row = _metrics(tmp_path)[0]
    assert row["policy/ratio_mean"] == 1.0 and row["policy/clipfrac"] == 0.0 and row["policy/approx_kl"] == 0.0
    assert abs(row["kl/mean"]) < 1e-5 and row["rollout/logprob_diff"] < 1e-5


def test_resume_with_an_adapter_equals_uninterrupted(loreft_run, tmp_path, warm_model):
    full_dir, _ = loreft_run
    args = [f"run.dir={tmp_path}", f"model.path={warm_model}", *PPO_MICRO, "adapter.kind=loreft", "adapter.repft.rank=2"]
    run_ppo(load_config(None, args), stop_after_iterations=1)
    run_ppo(load_config(None, args))
    a = load_file(str(_ckpt(full_dir, 2) / "adapter.safetensors"))
    b = load_file(str(_ckpt(tmp_path, 2) / "adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reft_with_a_lora_policy(tmp_path, warm_model):
    pytest.importorskip("peft")
    summary = run_ppo(load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *PPO_MICRO,
                                         "adapter.kind=lora", "adapter.lora.rank=2", "adapter.lora.target_modules=[q_proj,v_proj]"]))
    # 2 layers x 2 targets x r (d_in + d_out) = 2 x 2 x 2 x 256, plus the value head
    assert summary["trainable_params"] == 2 * 2 * 2 * 256 + 129
    rows = _metrics(tmp_path)
    assert all(torch.isfinite(torch.tensor(r[k])) for r in rows for k in FINITE_KEYS)
    ckpt = _ckpt(tmp_path, 2)
    lora = load_file(str(ckpt / "lora" / "adapter_model.safetensors"))  # peft's own format
    assert lora and all("lora_" in k for k in lora) and not (ckpt / "model.safetensors").exists()
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B left its zero init


def test_sft_with_brep_then_eval_and_train_from_its_checkpoint(tmp_path, warm_model, capsys):
    sft_dir = tmp_path / "sft"
    summary = run_sft(load_config(None, [f"run.dir={sft_dir}", f"model.path={warm_model}", *SFT_MICRO,
                                         "adapter.kind=brep", "adapter.brep.bias_bound=0.5"]))
    losses = [r["sft/loss"] for r in _metrics(sft_dir) if "sft/loss" in r]
    assert losses[-1] < losses[0]  # it learned something with a frozen model
    assert summary["trainable_params"] == 2 * 2 * 256  # s and beta on both layers' up_proj (d_ff 256)
    assert all(r["adapter/bias_norm_max"] <= 0.5 + 1e-6 for r in _metrics(sft_dir) if "adapter/bias_norm_max" in r)
    ckpt = sft_dir / "checkpoints" / "ckpt-4"
    assert read_adapter_json(ckpt / "model")["kind"] == "brep"

    # rlft eval on the adapter checkpoint reproduces the run's own evaluation
    capsys.readouterr()
    eval_keys = [o for o in SFT_MICRO if o.startswith(("data.", "eval."))]  # what `rlft eval` reads
    assert main(["eval", *eval_keys, f"run.dir={sft_dir}", "--model", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert evaluated["adapter"] == "brep" and evaluated["eval/accuracy"] == summary["history"][-1]["accuracy"]
    in_run = [json.loads(line)["completions"] for line in (sft_dir / "predictions_epoch2.jsonl").read_text().splitlines()]
    again = [json.loads(line)["completions"] for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert again == in_run

    # RL continues the SFT adapter; its reference is that checkpoint (KL 0 at the first batch), not the bare base
    rl = [f"run.dir={tmp_path / 'rl'}", f"model.path={ckpt}", *PPO_MICRO, "ppo.iterations=1", "ppo.ppo_epochs=1"]
    with pytest.raises(ConfigError, match="brep adapter checkpoint"):
        run_ppo(load_config(None, [*rl, "adapter.kind=loreft"]))
    run_ppo(load_config(None, [*rl, "adapter.kind=brep"]))
    row = _metrics(tmp_path / "rl")[0]
    assert abs(row["kl/mean"]) < 1e-5 and row["policy/ratio_mean"] == 1.0


def test_compare_runs_adapter_variants_and_reports_trainable_parameters(tmp_path, warm_model, capsys):
    pytest.importorskip("peft")
    code = main(["compare", f"run.dir={tmp_path}", f"compare.warmup_checkpoint={warm_model}", "compare.seeds=[1]",
                 "compare.methods=[sft+lora, reft+loreft]", "sft.epochs=1", "data.n_train=16", *PPO_MICRO,
                 "ppo.iterations=1", "sft.sequences_per_step=16"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    params = {label: r["trainable_params"] for label, r in results["methods"].items()}
    # the default LoRA: r = 8 on q, k, v, o (128 -> 128) and gate, up, down (128 <-> 256), in 2 layers
    assert params["sft+lora"] == 2 * 8 * (4 * (128 + 128) + 3 * (128 + 256))
    assert params["reft+loreft"] == 2 * (2 * 4 * 128 + 4) + 129
    table = (tmp_path / "results.md").read_text()
    assert "trainable params" in table and f"| {params['reft+loreft']:,} |" in table
    assert results["methods"]["reft+loreft"]["overrides"] == ["algo=reft", "adapter.kind=loreft"]
