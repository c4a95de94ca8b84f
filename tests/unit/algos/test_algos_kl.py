"""KL estimators and controllers (specs/reft.md §19.2-19.3)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import kl


def close(actual: torch.Tensor, expected: object, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_schulman_spec_vector() -> None:
    # d = 0.5: k1 = 0.5, k2 = 0.5 * 0.25 = 0.125, k3 = e^-0.5 - 1 + 0.5 = 0.106531
    lp, ref = torch.tensor([[0.0]]), torch.tensor([[-0.5]])
    close(kl.kl_penalty(lp, ref, kind="k1"), [[0.5]])
    close(kl.kl_penalty(lp, ref, kind="k2"), [[0.125]])
    close(kl.kl_penalty(lp, ref, kind="k3"), [[math.exp(-0.5) - 0.5]])
    close(kl.kl_penalty(lp, ref, kind="k3"), [[0.106531]])


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_identical_inputs_give_zero(kind: str) -> None:
    lp = -torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(kl.kl_penalty(lp, lp.clone(), kind=kind), torch.zeros(3, 4))


def test_k1_sign_convention_old_minus_ref() -> None:
    # specs/reft.md §4.2: kl_t = log pi_old - log pi_ref
    old, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    close(kl.kl_penalty(old, ref, kind="k1"), [[0.5, -1.0]])


def test_k2_k3_non_negative() -> None:
    g = torch.Generator().manual_seed(0)
    wide, tiny = torch.randn(10_000, generator=g) * 3, torch.linspace(-1e-3, 1e-3, 2001)
    d = torch.cat([wide, tiny, torch.tensor([-40.0, 40.0])])
    zero = torch.zeros_like(d)
    assert (kl.kl_penalty(d, zero, kind="k3") >= 0).all()
    assert (kl.kl_penalty(d, zero, kind="k2") >= 0).all()
    assert (kl.kl_penalty(d, zero, kind="k1") < 0).any()  # k1 can be negative


def test_k1_k3_unbiased_exact_expectation() -> None:
    # Over tokens sampled from p: E_p[k1] = E_p[k3] = KL(p || q); E_p[k2] != KL in general.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    true_kl = (p * (p.log() - q.log())).sum()
    for kind in ("k1", "k3"):
        expected = (p * kl.kl_penalty(p.log(), q.log(), kind=kind)).sum()
        torch.testing.assert_close(expected, true_kl)
    assert not torch.allclose((p * kl.kl_penalty(p.log(), q.log(), kind="k2")).sum(), true_kl)


def test_k3_gradient_matches_formula() -> None:
    # d k3 / d logprobs = 1 - exp(-d) = 1 - pi_ref / pi
    lp = torch.tensor([[-0.2, -3.0]], requires_grad=True)
    ref = torch.tensor([[-0.7, -1.0]])
    kl.kl_penalty(lp, ref, kind="k3").sum().backward()
    close(lp.grad, 1 - torch.exp(-(lp.detach() - ref)))


def test_clamp_and_unknown_kind() -> None:
    d = kl.kl_penalty(torch.tensor([[30.0, -30.0]]), torch.zeros(1, 2), kind="k1", clamp=10.0)
    close(d, [[10.0, -10.0]])
    with pytest.raises(ValueError):
        kl.kl_penalty(torch.zeros(1), torch.zeros(1), kind="kl")


def test_inputs_not_modified() -> None:
    lp, ref = torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.0])
    kl.kl_penalty(lp, ref, kind="k3", clamp=1.0)
    assert torch.equal(lp, torch.tensor([0.1, 0.2])) and torch.equal(ref, torch.tensor([0.3, 0.0]))


def test_fixed_controller() -> None:
    c = kl.FixedKLController(kl_coef=0.05)
    c.update(100.0, 64)
    assert c.value == 0.05
    c2 = kl.FixedKLController(kl_coef=0.05)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_controller_hand_value() -> None:
    # beta 0.1, target 6, horizon 10000, observed 12: error = clip(12/6 - 1, -0.2, 0.2) = 0.2
    # beta <- 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    c = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    c.update(12.0, 256)
    assert math.isclose(c.value, 0.100512, rel_tol=1e-12)
    # observed 5.7: error = 5.7/6 - 1 = -0.05 (unclipped): beta *= 1 - 0.05 * 256 / 10000
    c.update(5.7, 256)
    assert math.isclose(c.value, 0.100512 * (1 - 0.05 * 256 / 10_000), rel_tol=1e-9)


def test_adaptive_controller_direction() -> None:
    high = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    low = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    on_target = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    for _ in range(5):
        high.update(20.0, 32)  # KL above target -> penalise more
        low.update(0.5, 32)  # KL below target -> penalise less
        on_target.update(6.0, 32)
    assert high.value > 0.1 > low.value
    assert math.isclose(on_target.value, 0.1)
    # the per-update change is bounded by the 0.2 clip
    c = kl.AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=100)
    c.update(1e9, 10)
    assert math.isclose(c.value, 1.02)


def test_adaptive_controller_state_round_trip() -> None:
    a = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    for observed in (9.0, 3.0, 12.0):
        a.update(observed, 64)
    state = a.state_dict()
    b = kl.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)  # fresh, as after a restart
    b.load_state_dict(state)
    assert b.value == a.value
    a.update(7.0, 64)
    b.update(7.0, 64)
    assert b.value == a.value
    with pytest.raises(ValueError):
        kl.AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=10)
