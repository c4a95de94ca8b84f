"""run.device and mixed precision on the tiny model: every role on the resolved device, bf16-mixed SFT and GRPO
following their fp32 curves, fp32 master weights and optimizer state, gradient checkpointing, bf16 inference.

CPU autocast to bf16 works on any CPU (slowly where bf16 is emulated), so the mixed-precision tests run
everywhere; the CUDA test skips without a GPU (`tests/gpu/run_gpu_checks.sh` runs it on one).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft.config import load_config
from rlft.dist.local import build_local_roles
from rlft.learner.torch_learner import TorchLearner
from rlft.models.loading import load_policy
from rlft.models.policy import PolicyModel
from rlft.tasks import load_records
from rlft.trainers.ppo import run_ppo
from rlft.trainers.sft import run_sft
from rlft.utils.device import Compute
from rlft.workspace import prepare_model

SFT = ["data.n_train=64", "data.n_test=8", "model.tiny.hidden_size=128", "model.tiny.num_layers=2",
       "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320", "sft.sequences_per_step=16",
       "sft.micro_batch_size_per_device=8", "sft.lr=3e-3", "eval.max_new_tokens=24", "log.progress=false",
       "log.every_steps=1", "log.tensorboard=false"]
RL = ["data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
      "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4",
      "ppo.eval_every=100", "ppo.save_every=100", "log.progress=false", "log.tensorboard=false"]
META = Compute(torch.device("meta"), "fp32")  # a device no code path lands on by accident


def _metric(run_dir, key):
    return [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in r]


def _params(*modules):
    return [p for m in modules for p in m.parameters()]


@pytest.mark.parametrize("extra", [
    ["algo=reft", "ppo.critic=separate"],  # policy + value head, a second learner, a frozen reference
    ["algo=carft"],  # the CARFT head
    ["algo=grpo", "rollout.samples_per_prompt=2", "adapter.kind=loreft"],  # hook modules; the reference is the policy
    ["algo=reft", "adapter.kind=lora"],
])
def test_every_role_lives_on_the_resolved_device(tmp_path, warm_model, extra):
    """Breaks when a role builds or loads a module without moving it (a head made on the CPU, a reference or
    critic loaded where `load_policy` leaves it, adapter modules outside the LM)."""
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *RL, *extra])
    lm, tokenizer, path, adapter = prepare_model(cfg, load_records("arithmetic", "train", n_train=4), compute=META)
    roles = build_local_roles(cfg, lm, tokenizer, path, adapter, total_steps=1, compute=META)
    modules = [roles.policy.model, roles.rollout.model]
    modules += [roles.critic.model] if roles.critic is not None else []
    modules += [roles.reference.model] if roles.reference is not None else []
    modules += [adapter.own_modules()] if adapter.own_modules() is not None else []
    devices = {p.device.type for p in _params(*modules)}
    assert devices == {"meta"}, devices
    head = roles.policy.model.value_head
    assert head is None or {p.device.type for p in head.parameters()} == {"meta"}


def test_a_cpu_reference_stays_on_the_cpu(tmp_path, warm_model):
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *RL, "kl.reference_device=cpu"])
    lm, tokenizer, path, adapter = prepare_model(cfg, [], compute=META)
    roles = build_local_roles(cfg, lm, tokenizer, path, adapter, total_steps=1, compute=META)
    assert {p.device.type for p in roles.reference.model.parameters()} == {"cpu"}
    assert {p.device.type for p in roles.policy.model.parameters()} == {"meta"}


def test_bf16_mixed_sft_follows_the_fp32_loss_curve(tmp_path):
    """8 optimizer steps: the per-step loss of bf16-mixed stays within 0.01 of fp32's (measured: 6e-4 at a loss
    of ~5), it learns as much, and what trains stays fp32: weights and AdamW's moments."""
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        run_dir = tmp_path / precision
        run_sft(load_config(None, [f"run.dir={run_dir}", *SFT, "sft.epochs=2", "eval.every_epoch=false",
                                   f"model.precision={precision}"]))
        runs[precision] = run_dir
    fp32, mixed = _metric(runs["fp32"], "sft/loss"), _metric(runs["bf16-mixed"], "sft/loss")
    assert len(fp32) == len(mixed) == 8
    assert max(abs(a - b) for a, b in zip(fp32, mixed)) < 0.01, (fp32, mixed)
    assert mixed[-1] < mixed[0] - 0.5
    assert mixed != fp32  # it did compute in bf16
    ckpt = runs["bf16-mixed"] / "checkpoints" / "ckpt-8"
    assert {t.dtype for t in load_file(str(ckpt / "model" / "model.safetensors")).values()} == {torch.float32}
    state = torch.load(ckpt / "optim.pt", weights_only=False)["optimizer"]["state"]
    assert {s[k].dtype for s in state.values() for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}


@pytest.mark.slow
def test_bf16_mixed_grpo_follows_the_fp32_reward_curve(tmp_path, warm_model):
    """6 GRPO iterations on a graded reward the random tiny model can raise (the share of digits it writes), 3 seeds
    per precision: the mean reward climbs alike (measured: 0.025 -> 0.177 fp32, 0.025 -> 0.154 bf16-mixed, at most
    0.023 apart), the entropy stays within 0.15, and the sampler agrees with the learner's teacher-forced log-probs.
    Why means over seeds: from the first token a bf16 and an fp32 sampler draw differently, one run's curve follows
    that one trajectory (over 8 seeds the final reward's spread is 0.035-0.042 in either precision)."""
    reward = tmp_path / "digits.py"
    reward.write_text("def digit_share(completions, **kwargs):\n"
                      "    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in completions]\n")
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        for seed in (1, 2, 3):
            run_dir = tmp_path / f"{precision}-{seed}"
            run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *RL, "algo=grpo",
                                       "rollout.samples_per_prompt=8", "rollout.max_new_tokens=16",
                                       "ppo.micro_batch_size_per_device=8", "ppo.lr=5e-3", "kl.coef=0.01",
                                       "ppo.iterations=6", f"reward.fn={reward}:digit_share",
                                       f"model.precision={precision}", f"run.seed={seed}"]))
            runs[precision, seed] = {k: _metric(run_dir, k) for k in ("reward/mean", "policy/entropy", "kl/mean",
                                                                      "rollout/logprob_diff")}
    mean = {precision: {k: [sum(v) / 3 for v in zip(*(runs[precision, seed][k] for seed in (1, 2, 3)))]
                        for k in ("reward/mean", "policy/entropy")} for precision in ("fp32", "bf16-mixed")}
    fp32, mixed = mean["fp32"], mean["bf16-mixed"]
    for seed in (1, 2, 3):
        assert runs["bf16-mixed", seed]["reward/mean"][0] == runs["fp32", seed]["reward/mean"][0]  # same first draws
        assert runs["fp32", seed]["kl/mean"][0] == 0.0
        assert 0.0 < abs(runs["bf16-mixed", seed]["kl/mean"][0]) < 5e-3  # a bf16 reference (model.dtype=auto): not 0
        assert max(runs["bf16-mixed", seed]["rollout/logprob_diff"]) < 5e-3
    assert max(abs(a - b) for a, b in zip(fp32["reward/mean"], mixed["reward/mean"])) < 0.05
    assert mixed["reward/mean"][-1] > mixed["reward/mean"][0] + 0.05 and fp32["reward/mean"][-1] > fp32["reward/mean"][0] + 0.05
    assert max(abs(a - b) for a, b in zip(fp32["policy/entropy"], mixed["policy/entropy"])) < 0.15


def _layer_calls(model):
    """Counts each decoder layer's MLP calls: inside the layer, so a checkpointed layer's recompute counts too (HF
    checkpoints `forward`, and hooks on the layer itself run once)."""
    calls = []
    for layer in model.lm.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("train_mode", [True, False])  # SFT trains in train mode, RL in eval mode (spec §9)
def test_gradient_checkpointing_recomputes_layers_with_the_same_gradient(warm_model, train_mode):
    B, P, T = 4, 6, 5
    gen = torch.Generator().manual_seed(0)
    mb = {"prompt_ids": torch.randint(5, 250, (B, P), generator=gen), "prompt_mask": torch.ones(B, P, dtype=torch.long),
          "response_ids": torch.randint(5, 250, (B, T), generator=gen), "response_mask": torch.ones(B, T, dtype=torch.long)}
    mb["input_ids"] = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1)
    mb["attention_mask"] = torch.ones_like(mb["input_ids"])

    def loss_fn(out, batch):
        return out.logits.float().logsumexp(-1).mean() + out.values.mean(), {}

    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = PolicyModel(load_policy(warm_model)[0], value_head="linear", gradient_checkpointing=checkpointing)
        learner = TorchLearner(model, lr=0.0, train_mode=train_mode)
        calls[checkpointing] = _layer_calls(model)
        learner.optimizer.zero_grad = lambda set_to_none=True: None  # keep the gradients readable (lr 0: no update)
        learner.train_step([mb], loss_fn)
        grads[checkpointing] = [p.grad.clone() for p in model.parameters()]
        assert model.training == train_mode
        if checkpointing:  # training forwards cannot share prompt passes (HF drops the KV cache under it)
            assert "gradient checkpointing" in model.prefix_sharing_unsupported_reason()
    layers = 2
    assert len(calls[False]) == layers and len(calls[True]) == 2 * layers  # the backward ran each layer again
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_eval_with_pure_bf16_weights_and_value_rerank(tmp_path, warm_model, capsys):
    """`model.dtype=bfloat16` is for inference: `rlft eval` loads bf16 weights and reranks with the value head."""
    from rlft.cli import main

    run = tmp_path / "rl"
    run_ppo(load_config(None, [f"run.dir={run}", f"model.path={warm_model}", *RL, "ppo.iterations=1"]))
    ckpt = run / "checkpoints" / "ckpt-1"
    assert main(["eval", f"run.dir={tmp_path / 'e'}", "data.difficulty=0", "data.n_test=4", "eval.max_new_tokens=8",
                 "model.dtype=bfloat16", "--model", str(ckpt), "--samples", "2", "--rerank", "value"]) == 0
    out = capsys.readouterr().out
    assert "rlft eval: device cpu, precision bf16-mixed (auto: model.dtype=bfloat16), weights bfloat16" in out
    summary = json.loads((tmp_path / "e" / "eval" / "eval_summary.json").read_text())
    assert summary["eval/n"] == 4 and "eval/rerank_accuracy" in summary


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sft_and_reft_run_on_cuda(tmp_path, warm_model):
    """On a GPU: every role's parameters on cuda, what the roles return on the CPU, both precisions."""
    for precision in ("fp32", "bf16-mixed"):
        cfg = load_config(None, [f"run.dir={tmp_path / precision}", f"model.path={warm_model}", *RL, "run.device=cuda",
                                 f"model.precision={precision}"])
        lm, tokenizer, path, adapter = prepare_model(cfg, [])
        roles = build_local_roles(cfg, lm, tokenizer, path, adapter, total_steps=1)
        assert {p.device.type for p in _params(roles.policy.model, roles.reference.model)} == {"cuda"}
        from rlft.rollout.base import SamplingParams

        batch = roles.rollout.generate([[5, 6, 7], [8, 9]], SamplingParams(n=2, max_new_tokens=6))
        assert batch.response_ids.device.type == "cpu" and batch.rollout_logprobs.device.type == "cpu"
        seqs = {k: getattr(batch, k) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
        logprobs, values = roles.policy.logprobs_and_values(seqs, 2)
        ref = roles.reference.logprobs(seqs, 2)
        assert logprobs.device.type == values.device.type == ref.device.type == "cpu"
        assert (logprobs - batch.rollout_logprobs).abs().max() < (1e-3 if precision == "fp32" else 5e-2)
        roles.close()
    summary = run_sft(load_config(None, [f"run.dir={tmp_path / 'sft'}", *SFT, "sft.epochs=1", "run.device=cuda"]))
    assert summary["epochs_done"] == 1
