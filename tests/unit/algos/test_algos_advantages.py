"""Critic-free estimators (specs/reft.md §19.1 test vectors)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import advantages, ppo


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# S = [1, 0, 0.1, 1]: mean = 2.1 / 4 = 0.525
# deviations [0.475, -0.525, -0.425, 0.475], squares sum 0.225625*2 + 0.275625 + 0.180625 = 0.9075
# unbiased var 0.9075 / 3 = 0.3025 -> std 0.55
SCORES = torch.tensor([1.0, 0.0, 0.1, 1.0])


def test_grpo_spec_vector() -> None:
    close(advantages.grpo(SCORES, group_size=4), [0.8636, -0.9545, -0.7727, 0.8636])  # deviation / 0.55


def test_rloo_spec_vector() -> None:
    # 4/3 * deviation, e.g. 1 - (0 + 0.1 + 1)/3 = 0.6333
    close(advantages.rloo(SCORES, group_size=4), [0.6333, -0.7, -0.5667, 0.6333])


def test_mean_subtraction_spec_vector() -> None:
    # Dr. GRPO and REINFORCE++-baseline before whitening
    close(advantages.grpo(SCORES, group_size=4, scale=False), [0.475, -0.525, -0.425, 0.475], atol=1e-6)


def test_groups_are_independent_and_contiguous() -> None:
    scores = torch.cat([SCORES, torch.tensor([0.0, 1.0, 1.0, 1.0])])
    adv = advantages.grpo(scores, group_size=4)
    close(adv[:4], [0.8636, -0.9545, -0.7727, 0.8636])
    # group 2: mean 0.75, std 0.5 -> [-1.5, 0.5, 0.5, 0.5]
    close(adv[4:], [-1.5, 0.5, 0.5, 0.5])
    close(advantages.rloo(scores, group_size=2), [1.0, -1.0, -0.9, 0.9, -1.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_equal_scores_give_zero_advantage() -> None:
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    for adv in (advantages.grpo(scores, group_size=3), advantages.rloo(scores, group_size=3)):
        assert torch.isfinite(adv).all() and torch.equal(adv, torch.zeros(6))
    close(advantages.group_metrics(torch.cat([scores, SCORES[:3]]), group_size=3)["reward/zero_std_frac"], 2 / 3)


def test_group_size_checks() -> None:
    with pytest.raises(ValueError):
        advantages.grpo(SCORES, group_size=1)
    with pytest.raises(ValueError):
        advantages.rloo(SCORES, group_size=3)  # 4 is not a multiple of 3


def test_integer_scores_are_promoted() -> None:
    close(advantages.grpo(torch.tensor([1, 0]), group_size=2, scale=False), [0.5, -0.5])


def test_broadcast_to_tokens() -> None:
    out = advantages.broadcast_to_tokens(torch.tensor([0.5, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    close(out, [[0.5, 0.5, 0.0], [-1.0, 0.0, 0.0]])


def test_reinforce_pp_returns_hand_values() -> None:
    # row 0: mask [1, 1, 0], S = 1, kl [1, 2, x]; beta 0.1: r = [-0.1, -0.2 + 1] = [-0.1, 0.8]
    #        reward-to-go (gamma 1) = [0.7, 0.8]
    # row 1: mask [1, 1, 1], S = 0, kl [0, 0, 1]: r = [0, 0, -0.1] -> returns [-0.1, -0.1, -0.1]
    scores = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    kl = torch.tensor([[1.0, 2.0, float("nan")], [0.0, 0.0, 1.0]])
    adv, ret = advantages.reinforce_pp(scores, mask, kl, kl_coef=0.1)
    close(ret, [[0.7, 0.8, 0.0], [-0.1, -0.1, -0.1]], atol=1e-6)
    # whitening over the 5 valid returns: mean 0.24, unbiased var = (.2116 + .3136 + 3 * .1156) / 4 = 0.2180
    mu, sd = 0.24, math.sqrt(0.218)
    close(adv, [[(0.7 - mu) / sd, (0.8 - mu) / sd, 0.0], [(-0.1 - mu) / sd] * 3])
    close(ppo.masked_mean(adv, mask), 0.0, atol=1e-6)


def test_reinforce_pp_baseline_composition() -> None:
    # REINFORCE++-baseline = group mean subtracted first; without KL each row's returns are constant
    mask = torch.ones(4, 2)
    shifted = advantages.grpo(SCORES, group_size=4, scale=False)
    _, ret = advantages.reinforce_pp(shifted, mask)
    close(ret, shifted[:, None].expand(4, 2), atol=1e-6)


def test_reinforce_pp_sharded_whitening() -> None:
    # two shards: whiten each shard's raw returns with gathered statistics = whitening the whole batch
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, generator=g)
    kl = torch.randn(4, 5, generator=g) * 0.1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    full_adv, full_ret = advantages.reinforce_pp(scores, mask, kl, kl_coef=0.05)
    shards = [
        advantages.reinforce_pp(scores[i : i + 2], mask[i : i + 2], kl[i : i + 2], kl_coef=0.05)[1] for i in (0, 2)
    ]
    mean, var = ppo.masked_mean(full_ret, mask), ppo.masked_var(full_ret, mask)
    rewhitened = [ppo.masked_whiten(r, mask[i : i + 2], mean=mean, var=var) for r, i in zip(shards, (0, 2))]
    close(torch.cat(rewhitened), full_adv, atol=1e-6)


# ---------------------------------------------------------------- Dr. GRPO (Liu et al. 2025)


def _dr_grpo_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # SCORES in one group of 4 with response lengths 1, 2, 3, 2 (T = 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    adv = advantages.broadcast_to_tokens(advantages.grpo(SCORES, group_size=4, scale=False), mask)
    logprobs = torch.full((4, 3), -1.0, requires_grad=True)
    return logprobs, adv, mask


def test_dr_grpo_loss_hand_value() -> None:
    # Â = [0.475, -0.525, -0.425, 0.475]; ratio 1: loss = -Σ_b Â_b |o_b| / (B · max_len)
    # = -(0.475·1 - 0.525·2 - 0.425·3 + 0.475·2) / (4 · 4) = 0.9 / 16 = 0.05625
    logprobs, adv, mask = _dr_grpo_batch()
    loss, _ = ppo.policy_loss(logprobs, logprobs.detach(), adv, mask, agg="seq-mean-token-sum-norm", max_len=4)
    close(loss, 0.05625, atol=1e-6)


def test_dr_grpo_token_gradient_does_not_depend_on_length() -> None:
    # Dr. GRPO: ∂loss/∂log π_t = -Â_b / (B · max_len) on every valid token, whatever |o_b|;
    # GRPO's seq-mean-token-mean gives -Â_b / (B · |o_b|), the length bias Dr. GRPO removes
    logprobs, adv, mask = _dr_grpo_batch()
    a = torch.tensor([0.475, -0.525, -0.425, 0.475])[:, None]
    lengths = mask.sum(-1, keepdim=True).float()
    loss, _ = ppo.policy_loss(logprobs, logprobs.detach(), adv, mask, agg="seq-mean-token-sum-norm", max_len=4)
    (grad,) = torch.autograd.grad(loss, logprobs)
    close(grad, torch.where(mask != 0, -a / 16, 0.0), atol=1e-6)
    loss, _ = ppo.policy_loss(logprobs, logprobs.detach(), adv, mask, agg="seq-mean-token-mean")
    (grad,) = torch.autograd.grad(loss, logprobs)
    close(grad, torch.where(mask != 0, -a / (4 * lengths), 0.0), atol=1e-6)


def test_dr_grpo_scales_with_the_score_grpo_does_not() -> None:
    # no std division: c·S + d gives c·Â (shift-invariant, not scale-invariant); GRPO is both
    shifted = 3.0 * SCORES - 2.0
    dr_grpo = advantages.grpo(SCORES, group_size=4, scale=False)
    close(advantages.grpo(shifted, group_size=4, scale=False), 3.0 * dr_grpo)
    close(advantages.grpo(shifted, group_size=4), advantages.grpo(SCORES, group_size=4))


# ---------------------------------------------------------------- REINFORCE++-baseline (OpenRLHF)


def test_reinforce_pp_baseline_hand_values() -> None:
    # scores [1, 0 | 1, 1], G = 2: shifted S' = [0.5, -0.5, 0, 0]; beta 0.1, r_t = -0.1·kl_t + S'·1[t_last]
    # row 0: mask [1, 1, 0], kl [1, 2, x]: r = [-0.1, -0.2 + 0.5] -> returns [0.2, 0.3]
    # row 1: mask [1, 0, 0], kl [0.5, x, x]: r = [-0.05 - 0.5] -> returns [-0.55]
    # row 2: mask [1, 1, 1], kl [0, 1, 0]: r = [0, -0.1, 0] -> returns [-0.1, -0.1, 0]
    # row 3: mask [1, 1, 0], kl [0, 0, x]: returns [0, 0]
    # KL after the shift (OpenRLHF). verl baselines score + Σ(-β·kl) instead: 0.7 vs -0.05, row 0 -> 0.375 everywhere
    nan = float("nan")
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[1.0, 2.0, nan], [0.5, nan, nan], [0.0, 1.0, 0.0], [0.0, 0.0, nan]])
    adv, ret = advantages.reinforce_pp_baseline(scores, mask, kl, group_size=2, kl_coef=0.1)
    close(ret, [[0.2, 0.3, 0.0], [-0.55, 0.0, 0.0], [-0.1, -0.1, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    # 8 valid returns, sum -0.25: mean -0.03125; Σx² - 8·mean² = 0.4525 - 0.0078125 = 0.4446875
    # unbiased var 0.4446875 / 7
    mu, sd = -0.03125, math.sqrt(0.4446875 / 7)
    expected = torch.tensor([[0.2, 0.3, 0.0], [-0.55, 0.0, 0.0], [-0.1, -0.1, 0.0], [0.0, 0.0, 0.0]])
    close(adv, torch.where(mask != 0, (expected - mu) / sd, 0.0), atol=1e-5)
    close(ppo.masked_mean(adv, mask), 0.0, atol=1e-6)
    close(ppo.masked_var(adv, mask), 1.0, atol=1e-5)


def test_reinforce_pp_baseline_ignores_a_constant_per_group() -> None:
    # the group mean absorbs any per-group offset, with or without KL
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(6, generator=g)
    kl = torch.randn(6, 4, generator=g) * 0.1
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    offset = torch.tensor([5.0, -3.0]).repeat_interleave(3)
    base = advantages.reinforce_pp_baseline(scores, mask, kl, group_size=3, kl_coef=0.05)
    moved = advantages.reinforce_pp_baseline(scores + offset, mask, kl, group_size=3, kl_coef=0.05)
    for a, b in zip(base, moved):
        close(a, b, atol=1e-5)
    # and it is REINFORCE++ on the mean-shifted scores
    direct = advantages.reinforce_pp(advantages.grpo(scores, group_size=3, scale=False), mask, kl, kl_coef=0.05)
    for a, b in zip(base, direct):
        assert torch.equal(a, b)


def test_reinforce_pp_baseline_flat_groups_without_kl_give_zero() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]])
    adv, ret = advantages.reinforce_pp_baseline(scores, mask, group_size=2)
    assert torch.isfinite(adv).all() and torch.equal(adv, torch.zeros(4, 2)) and torch.equal(ret, torch.zeros(4, 2))
    with pytest.raises(ValueError):
        advantages.reinforce_pp_baseline(scores, mask, group_size=1)


def test_reinforce_pp_baseline_keeps_inputs() -> None:
    scores, mask, kl = torch.tensor([1.0, 0.0]), torch.tensor([[1, 1], [1, 0]]), torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    before = [t.clone() for t in (scores, mask, kl)]
    advantages.reinforce_pp_baseline(scores, mask, kl, group_size=2, kl_coef=0.1)
    assert all(torch.equal(a, b) for a, b in zip((scores, mask, kl), before))
