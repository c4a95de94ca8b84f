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
