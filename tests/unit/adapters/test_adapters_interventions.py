"""Intervention modules: identity init (T1), LoReFT's subspace identities (T3), parameter counts (T4),
orthonormal R under weight decay (T2, with torch's parametrisation as the failing control) and BREP's bound (T15)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlft.adapters import attach_adapter
from rlft.adapters.interventions import (BaFT, DiReFT, GatedLoReFT, LoReFT, ScaleBias, orthonormality_error,
                                         random_orthonormal_rows)
from rlft.adapters.positions import PositionMeta
from rlft.learner.torch_learner import TorchLearner
from rlft.models.policy import PolicyModel

D, R = 64, 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls", [LoReFT, DiReFT, BaFT, GatedLoReFT])
def test_fresh_hidden_state_interventions_are_the_identity(cls):
    h = torch.randn(3, 5, D)
    assert (cls(D, R, gen())(h) - h).abs().max() < 1e-6


def test_direft_and_scale_bias_identity_is_exact():
    h = torch.randn(3, 5, D)
    assert torch.equal(DiReFT(D, R, gen())(h), h)
    assert torch.equal(ScaleBias(D)(h), h)


def test_a_closed_gate_is_exactly_the_identity():
    module = GatedLoReFT(D, R, gen())
    with torch.no_grad():
        module.W.normal_(), module.b.normal_()  # far from identity...
        module.gate.bias.fill_(-1e4)  # ...but the gate is shut: sigmoid(-1e4) == 0 in fp32
    h = torch.randn(3, 5, D)
    assert torch.equal(module(h), h)


def test_loreft_subspace_identities():
    module = LoReFT(D, R, gen())
    with torch.no_grad():
        module.W.normal_(), module.b.normal_()
    h = torch.randn(7, D)
    phi = module(h)
    Rm, W, b = module.R, module.W, module.b
    torch.testing.assert_close(phi @ Rm.T, h @ W.T + b, atol=1e-4, rtol=1e-5)  # R Φ(h) = W h + b
    complement = torch.eye(D) - Rm.T @ Rm
    assert ((phi - h) @ complement).abs().max() < 1e-5  # the orthogonal complement is untouched


def test_basis_weights_of_one_recover_loreft():
    baft, loreft = BaFT(D, R, gen()), LoReFT(D, R, gen())
    with torch.no_grad():
        loreft.W.normal_(generator=gen(1)), loreft.b.normal_(generator=gen(2))
        baft.W.copy_(loreft.W), baft.b.copy_(loreft.b), baft.c.fill_(1e4)  # s(h) = sigmoid(1e4) = 1
    h = torch.randn(4, D)
    torch.testing.assert_close(baft(h), loreft(h))


@pytest.mark.parametrize("cls, expected", [
    (LoReFT, 2 * R * D + R), (DiReFT, 2 * R * D + R), (BaFT, 3 * R * D + 2 * R), (GatedLoReFT, 2 * R * D + R + D + 1),
])
def test_parameter_count_formulas(cls, expected):
    assert sum(p.numel() for p in cls(D, R, gen()).parameters()) == expected


def _meta_llama(hidden, intermediate, layers):
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def test_paper_scale_counts_on_the_meta_device(adapter_cfg):
    # LoReFT on LLaMA-7B shapes, r = 8, all 32 layers, tied prefix/suffix: 32 x (2 x 8 x 4096 + 8)
    _, loreft = attach_adapter(_meta_llama(4096, 11008, 32), adapter_cfg("adapter.kind=loreft", "adapter.repft.rank=8"))
    assert loreft.num_parameters() == 2_097_408
    # BREP on Llama-3-8B shapes: s and beta on every layer's up_proj output (d_ff 14336)
    _, brep = attach_adapter(_meta_llama(4096, 14336, 32), adapter_cfg("adapter.kind=brep"))
    assert brep.num_parameters() == 917_504
    # untied prefix/suffix doubles the interventions
    _, untied = attach_adapter(_meta_llama(4096, 11008, 32),
                               adapter_cfg("adapter.kind=loreft", "adapter.repft.rank=8", "adapter.repft.tied=false"))
    assert untied.num_parameters() == 2 * 2_097_408


def test_tiny_two_intervention_count(make_lm, adapter_cfg):
    _, adapter = attach_adapter(make_lm(), adapter_cfg("adapter.kind=loreft", "adapter.repft.layers=[0, -1]"))
    assert adapter.num_parameters() == 1_032  # 2 x (2 x 4 x 64 + 4)


def _train_steps(model: PolicyModel, learner: TorchLearner, steps: int) -> None:
    ids = torch.randint(3, 24, (2, 8), generator=gen(3))
    mb = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_len": torch.tensor([8, 8])}

    def loss_fn(out, _):  # push every logit of token 5 up: a gradient that reaches every intervention
        return -out.logits[..., 5].mean(), {}

    for _ in range(steps):
        learner.train_step([mb], loss_fn)


def test_orthonormal_r_survives_training_with_weight_decay(make_lm, adapter_cfg):
    lm, adapter = attach_adapter(make_lm(), adapter_cfg("adapter.kind=loreft", "adapter.repft.positions=all"))
    model = PolicyModel(lm, adapter=adapter)
    start = [m.R.detach().clone() for m in adapter.interventions]
    learner = TorchLearner(model, lr=1e-2, weight_decay=0.1, total_steps=100, schedule="constant")
    no_decay = {id(p) for g in learner.optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(id(m.R) in no_decay and id(m.W) not in no_decay for m in adapter.interventions)
    _train_steps(model, learner, 100)
    for module, R0 in zip(adapter.interventions, start):
        assert orthonormality_error(module.R.detach()) < 1e-5
        assert module.R.abs().max() > 0.1 and not torch.allclose(module.R, R0)  # alive, and it moved


def test_torch_orthogonal_parametrization_with_weight_decay_zeroes_r():
    """The pitfall rlft avoids (spec §10.1): Householder-parametrised R is exactly 0 after one decayed step."""
    from torch.nn.utils.parametrizations import orthogonal

    proj = orthogonal(torch.nn.Linear(D, R, bias=False))
    optimizer = torch.optim.AdamW(proj.parameters(), lr=1e-3, weight_decay=0.01)
    (proj(torch.randn(8, D)) ** 2).sum().backward()
    optimizer.step()
    assert orthonormality_error(proj.weight.detach()) == 1.0 and proj.weight.abs().max() == 0


def test_brep_bias_stays_inside_the_bound_after_every_step(make_lm, adapter_cfg):
    bound = 0.05
    lm, adapter = attach_adapter(make_lm(), adapter_cfg("adapter.kind=brep", f"adapter.brep.bias_bound={bound}"))
    model = PolicyModel(lm, adapter=adapter)
    learner = TorchLearner(model, lr=0.05, weight_decay=0.0, total_steps=10, schedule="constant")
    norms = []
    for _ in range(10):
        _train_steps(model, learner, 1)
        norms.append(max(float(m.beta.detach().norm()) for m in adapter.interventions))
    assert max(norms) <= bound + 1e-6
    assert norms[-1] > 0.99 * bound  # the bound was active, not just never reached


def test_random_orthonormal_rows():
    rows = random_orthonormal_rows(R, D, gen())
    assert rows.shape == (R, D) and orthonormality_error(rows) < 1e-6


def test_plan_must_match_the_batch(make_lm, adapter_cfg):
    lm, adapter = attach_adapter(make_lm(), adapter_cfg("adapter.kind=loreft"))
    ids = torch.randint(3, 24, (2, 5))
    with adapter.plan(PositionMeta.from_prompt_mask(torch.ones(3, 5))), pytest.raises(RuntimeError, match="3 rows"):
        lm(input_ids=ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(RuntimeError, match="without positions"):
        lm(input_ids=ids, attention_mask=torch.ones_like(ids))
