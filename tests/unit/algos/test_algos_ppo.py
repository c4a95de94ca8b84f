"""Hand-computed values and invariances for rlft.algos.ppo (specs/reft.md §6-§8, §18)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import ppo


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- masked statistics


def test_masked_mean_empty_mask_is_zero() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    close(ppo.masked_mean(x, torch.zeros(2, 2)), 0.0)
    # per-row: row 0 has no valid entry -> 0; row 1 = 3
    close(ppo.masked_mean(x, torch.tensor([[0, 0], [1, 0]]), dim=1), [0.0, 3.0])


def test_masked_mean_ignores_garbage() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), -1e30]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(ppo.masked_mean(x, mask), (1 + 2 + 4) / 3)


def test_masked_var_unbiased_and_biased() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, squared deviations 1 + 0 + 1 = 2 -> biased 2/3, unbiased 2/2
    close(ppo.masked_var(x, mask, unbiased=False), 2 / 3)
    close(ppo.masked_var(x, mask), 1.0)
    # a single valid entry gives 0 instead of 0/0
    close(ppo.masked_var(x, torch.tensor([[0, 1, 0, 0]])), 0.0)


WHITEN_ADV = torch.tensor([[0.68, 0.40, 7.0, -3.0], [0.2, -0.1, 0.5, 0.3]])
WHITEN_MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
# valid: 0.68 0.40 0.2 -0.1 0.5 0.3; mu = 1.98/6 = 0.33
# squared deviations .1225 .0049 .0169 .1849 .0289 .0009 = 0.359 -> unbiased var 0.359/5 = 0.0718
WHITENED = [[1.3062, 0.2612, 0.0, 0.0], [-0.4852, -1.6047, 0.6344, -0.1120]]


def test_masked_whiten_spec_vector() -> None:
    close(ppo.masked_mean(WHITEN_ADV, WHITEN_MASK), 0.33)
    close(ppo.masked_var(WHITEN_ADV, WHITEN_MASK), 0.0718)
    w = ppo.masked_whiten(WHITEN_ADV, WHITEN_MASK)
    close(w, WHITENED)  # e.g. (0.68 - 0.33) / sqrt(0.0718) = 1.3062; masked positions are 0
    close(ppo.masked_mean(w, WHITEN_MASK), 0.0, atol=1e-6)
    close(ppo.masked_var(w, WHITEN_MASK), 1.0, atol=1e-5)


def test_masked_whiten_shift_mean_false_adds_mean_back() -> None:
    w = ppo.masked_whiten(WHITEN_ADV, WHITEN_MASK, shift_mean=False)
    close(ppo.masked_mean(w, WHITEN_MASK), 0.33)
    close(w[1, 0], -0.4852 + 0.33)


def test_masked_whiten_global_over_two_ranks() -> None:
    # row 1 on rank 0, row 2 on rank 1; the statistics come from the gathered batch
    rank0 = (WHITEN_ADV[:1], WHITEN_MASK[:1])
    rank1 = (WHITEN_ADV[1:], WHITEN_MASK[1:])
    gathered_x = torch.cat([rank0[0], rank1[0]])
    gathered_m = torch.cat([rank0[1], rank1[1]])
    mean, var = ppo.masked_mean(gathered_x, gathered_m), ppo.masked_var(gathered_x, gathered_m)
    w0 = ppo.masked_whiten(rank0[0], rank0[1], mean=mean, var=var)
    w1 = ppo.masked_whiten(rank1[0], rank1[1], mean=mean, var=var)
    close(torch.cat([w0, w1]), WHITENED)
    # per-rank statistics would differ: row 1 alone whitens to +-0.7071
    assert not torch.allclose(ppo.masked_whiten(*rank0), w0, atol=1e-2)


def test_masked_whiten_does_not_modify_input() -> None:
    x = WHITEN_ADV.clone()
    ppo.masked_whiten(x, WHITEN_MASK)
    assert torch.equal(x, WHITEN_ADV)


# ---------------------------------------------------------------- reward shaping


def test_shape_rewards_score_on_eos_token() -> None:
    # response [y0, y1, EOS, pad], score 1, no KL -> rewards [0, 0, 1, 0]
    mask = torch.tensor([[1, 1, 1, 0]])
    close(ppo.shape_rewards(torch.tensor([1.0]), mask, torch.zeros(1, 4), kl_coef=0.05), [[0.0, 0.0, 1.0, 0.0]])
    close(ppo.shape_rewards(torch.tensor([1.0]), mask, None, kl_coef=0.05), [[0.0, 0.0, 1.0, 0.0]])


def test_shape_rewards_truncated_scores_last_token() -> None:
    # truncated response of length 4 without EOS: mask all ones, score at index 3
    r = ppo.shape_rewards(torch.tensor([0.1]), torch.ones(1, 4), torch.zeros(1, 4), kl_coef=0.05)
    close(r, [[0.0, 0.0, 0.0, 0.1]])


def test_shape_rewards_kl_per_token() -> None:
    # beta 0.05, kl [0.2, -0.1, 0.4], S = 1: r = [-0.01, 0.005, -0.02 + 1 = 0.98]; garbage kl at the pad
    kl = torch.tensor([[0.2, -0.1, 0.4, float("nan")]])
    r = ppo.shape_rewards(torch.tensor([1.0]), torch.tensor([[1, 1, 1, 0]]), kl, kl_coef=0.05)
    close(r, [[-0.01, 0.005, 0.98, 0.0]], atol=1e-6)
    # the coefficient may be a tensor (from a KL controller)
    r2 = ppo.shape_rewards(torch.tensor([1.0]), torch.tensor([[1, 1, 1, 0]]), kl, kl_coef=torch.tensor(0.05))
    close(r2, r, atol=1e-7)


def test_shape_rewards_batch_and_empty_row() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    r = ppo.shape_rewards(torch.tensor([1.0, 0.1, 1.0]), mask, torch.zeros(3, 3), kl_coef=0.1)
    close(r, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]])


def test_shape_rewards_matches_reference_full_coordinates() -> None:
    # reference: padded prompt length P, EOS at full index 57 -> score at full index 56, mask 0 from 57.
    # rlft: response index t <-> full position P - 1 + t, and EOS is response token e = 57 - P.
    P, L = 10, 60
    e = 57 - P
    mask = (torch.arange(L) <= e).long()[None]  # (1, L)
    r = ppo.shape_rewards(torch.tensor([1.0]), mask, torch.zeros(1, L), kl_coef=0.05)
    t_score = int(r[0].nonzero())
    assert t_score == e and P - 1 + t_score == 56
    full_mask_positions = [P - 1 + t for t in range(L) if mask[0, t]]
    assert full_mask_positions[0] == P - 1 and full_mask_positions[-1] == 56


# ---------------------------------------------------------------- GAE


def test_gae_two_step_spec_vector() -> None:
    # V = [0.3, 0.6], r = [0, 1], V after last = 0: delta = [0 + 0.6 - 0.3, 1 - 0.6] = [0.3, 0.4]
    # A = [0.3 + 0.95 * 0.4, 0.4] = [0.68, 0.40]; R = A + V = [0.98, 1.00]
    adv, ret = ppo.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.3, 0.6]]), torch.ones(1, 2), gamma=1.0, lam=0.95)
    close(adv, [[0.68, 0.40]], atol=1e-6)
    close(ret, [[0.98, 1.00]], atol=1e-6)


KL_REWARDS = torch.tensor([[-0.01, 0.005, 0.98]])
KL_VALUES = torch.tensor([[0.5, 0.4, 0.7]])


@pytest.mark.parametrize(
    ("gamma", "lam", "expected_adv"),
    [
        # delta = [-0.01 + 0.4 - 0.5, 0.005 + 0.7 - 0.4, 0.98 - 0.7] = [-0.11, 0.305, 0.28]
        # A2 = 0.28, A1 = 0.305 + 0.95 * 0.28 = 0.571, A0 = -0.11 + 0.95 * 0.571 = 0.43245
        (1.0, 0.95, [0.43245, 0.571, 0.28]),
        # lambda = 1: A1 = 0.305 + 0.28 = 0.585, A0 = -0.11 + 0.585 = 0.475
        (1.0, 1.0, [0.475, 0.585, 0.28]),
        # gamma = 0: A = r - V = [-0.51, -0.395, 0.28]
        (0.0, 0.95, [-0.51, -0.395, 0.28]),
    ],
)
def test_gae_with_kl_spec_vectors(gamma: float, lam: float, expected_adv: list[float]) -> None:
    adv, ret = ppo.gae(KL_REWARDS, KL_VALUES, torch.ones(1, 3), gamma=gamma, lam=lam)
    close(adv, [expected_adv], atol=1e-6)
    close(ret, adv + KL_VALUES, atol=1e-6)
    if (gamma, lam) == (1.0, 0.95):
        close(ret, [[0.93245, 0.971, 0.98]], atol=1e-6)


def test_gae_shape_rewards_pipeline() -> None:
    kl = torch.tensor([[0.2, -0.1, 0.4, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards = ppo.shape_rewards(torch.tensor([1.0]), mask, kl, kl_coef=0.05)
    values = torch.tensor([[0.5, 0.4, 0.7, 123.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.43245, 0.571, 0.28, 0.0]], atol=1e-6)
    close(ret, [[0.93245, 0.971, 0.98, 0.0]], atol=1e-6)


def _random_batch(seed: int, B: int = 5, T: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    lengths = torch.tensor([T, 1, 3, 0, 5][:B])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return rewards, values, mask


def test_gae_masked_values_do_not_matter() -> None:
    rewards, values, mask = _random_batch(0)
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.99, lam=0.95)
    noise = torch.randn(values.shape, generator=torch.Generator().manual_seed(1)) * 100
    noisy_values = torch.where(mask.bool(), values, noise)
    noisy_rewards = torch.where(mask.bool(), rewards, noise)
    adv2, ret2 = ppo.gae(noisy_rewards, noisy_values, mask, gamma=0.99, lam=0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards, values, mask = _random_batch(2)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    r = rewards * mask
    reward_to_go = r.flip(1).cumsum(1).flip(1)  # sum_{s >= t} r_s
    close(adv, (reward_to_go - values) * mask, atol=1e-5)
    close(ret, reward_to_go * mask, atol=1e-5)


def _gae_loop(rewards: list[float], values: list[float], n: int, gamma: float, lam: float) -> list[float]:
    """Reference: plain Python over one row with n valid steps."""
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (0.0, 0.5), (1.0, 0.0)])
def test_gae_vectorised_equals_python_loop(gamma: float, lam: float) -> None:
    rewards, values, mask = _random_batch(3)
    adv, _ = ppo.gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        expected = _gae_loop(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        close(adv[b], expected, atol=1e-5)


def test_gae_truncated_bootstraps_nothing() -> None:
    # mask all ones (no EOS): the value after index 3 is 0, so A_3 = r_3 - V_3
    rewards, values = torch.tensor([[0.0, 0, 0, 1]]), torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    adv, _ = ppo.gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=0.95)
    close(adv[0, 3], 0.6, atol=1e-6)


def test_gae_has_no_grad_and_keeps_inputs() -> None:
    rewards, values, mask = _random_batch(4)
    values = values.requires_grad_()
    before = values.detach().clone()
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.equal(values.detach(), before)


# ---------------------------------------------------------------- aggregation


def test_aggregate_spec_vector() -> None:
    # sequence 1 has token losses [1, 1], sequence 2 has [4]
    loss = torch.tensor([[1.0, 1.0], [4.0, 99.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    close(ppo.aggregate(loss, mask, mode="seq-mean-token-mean"), 2.5)  # mean(1, 4)
    close(ppo.aggregate(loss, mask, mode="token-mean"), 2.0)  # 6 / 3
    close(ppo.aggregate(loss, mask, mode="seq-mean-token-sum-norm"), 1.5)  # 6 / (2 seqs * T=2)
    close(ppo.aggregate(loss, mask, mode="seq-mean-token-sum-norm", max_len=6), 0.5)  # 6 / (2 * 6)
    with pytest.raises(ValueError):
        ppo.aggregate(loss, mask, mode="token-sum")


def test_aggregate_empty_mask_is_zero_and_finite() -> None:
    loss = torch.tensor([[float("nan"), 1.0]])
    for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"):
        close(ppo.aggregate(loss, torch.zeros(1, 2), mode=mode), 0.0)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_two_shards_average_to_global(mode: str) -> None:
    loss = torch.tensor([[1.0, 3.0, 9.0], [2.0, 4.0, 0.0], [8.0, 0.0, 0.0], [5.0, 6.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])  # uneven tokens per shard (5 vs 4)
    global_loss = ppo.aggregate(loss, mask, mode=mode, max_len=8)
    world = 2
    # each rank is normalised by global count / world: DDP's gradient average then equals the global loss
    kwargs = {"num_seqs": 4 / world, "num_tokens": mask.sum() / world, "max_len": 8}
    shards = [ppo.aggregate(loss[i : i + 2], mask[i : i + 2], mode=mode, **kwargs) for i in (0, 2)]
    close((shards[0] + shards[1]) / world, global_loss, atol=1e-6)
    if mode == "token-mean":  # local normalisation would not match when token counts differ
        local = [ppo.aggregate(loss[i : i + 2], mask[i : i + 2], mode=mode) for i in (0, 2)]
        assert not torch.allclose((local[0] + local[1]) / 2, global_loss)


# ---------------------------------------------------------------- policy loss


def test_policy_loss_spec_tokens() -> None:
    # token A: rho = 0.5 / 0.4 = 1.25, A = +1: max(-1.25, -1.2) = -1.2
    # token B: rho = 1, A = -1: loss 1.0; one sequence holding both: mean(-1.2, 1.0) = -0.1
    logprobs = torch.tensor([[math.log(0.5), math.log(0.3)]])
    old = torch.tensor([[math.log(0.4), math.log(0.3)]])
    adv = torch.tensor([[1.0, -1.0]])
    loss, m = ppo.policy_loss(logprobs, old, adv, torch.ones(1, 2), clip_eps=0.2)
    close(loss, -0.1, atol=1e-6)
    close(m["policy/clipfrac"], 0.5)  # token A is clipped
    close(m["policy/ratio_mean"], (1.25 + 1.0) / 2)
    close(m["policy/approx_kl"], (0.25 - math.log(1.25)) / 2, atol=1e-6)  # k3: (rho - 1) - log rho
    a_only, _ = ppo.policy_loss(logprobs[:, :1], old[:, :1], adv[:, :1], torch.ones(1, 1))
    close(a_only, -1.2, atol=1e-6)


def test_policy_loss_ratio_one() -> None:
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    loss, m = ppo.policy_loss(logprobs, logprobs.clone(), adv, mask, agg="token-mean")
    close(loss, -ppo.masked_mean(adv, mask), atol=1e-6)
    close(m["policy/clipfrac"], 0.0)
    close(m["policy/ratio_mean"], 1.0)
    close(m["policy/approx_kl"], 0.0)
    loss_seq, _ = ppo.policy_loss(logprobs, logprobs.clone(), adv, mask)
    close(loss_seq, -ppo.masked_mean(adv, mask, dim=1).mean(), atol=1e-6)


@pytest.mark.parametrize(
    ("log_ratio_offset", "adv", "clipped"),
    [
        (+1e-9, 1.0, True),  # rho just above 1 + eps with A > 0: clipped
        (-1e-9, 1.0, False),  # rho just below 1 + eps: not clipped
        (+1e-9, -1.0, False),  # rho above 1 + eps with A < 0: the unclipped term is larger
    ],
)
def test_policy_loss_clip_engages_at_one_plus_eps(log_ratio_offset: float, adv: float, clipped: bool) -> None:
    old = torch.tensor([[-1.0]], dtype=torch.float64)  # float64 so that 1e-9 from the boundary is resolved
    logprobs = (old + math.log(1.2) + log_ratio_offset).requires_grad_()
    advantages = torch.tensor([[adv]], dtype=torch.float64)
    loss, m = ppo.policy_loss(logprobs, old, advantages, torch.ones(1, 1), clip_eps=0.2)
    loss.backward()
    rho = math.exp(math.log(1.2) + log_ratio_offset)
    close(m["policy/clipfrac"], 1.0 if clipped else 0.0)
    close(loss, -adv * (1.2 if clipped else rho), atol=1e-12)
    assert (logprobs.grad.abs().item() == 0.0) == clipped  # a clipped token passes no gradient


@pytest.mark.parametrize(("log_ratio_offset", "clipped"), [(-1e-9, True), (+1e-9, False)])
def test_policy_loss_clip_engages_at_one_minus_eps(log_ratio_offset: float, clipped: bool) -> None:
    # A < 0 and rho below 1 - eps: clipped term -A * 0.8 is larger
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    logprobs = old + math.log(0.8) + log_ratio_offset
    adv = torch.tensor([[-1.0]], dtype=torch.float64)
    loss, m = ppo.policy_loss(logprobs, old, adv, torch.ones(1, 1), clip_eps=0.2)
    close(m["policy/clipfrac"], 1.0 if clipped else 0.0)
    close(loss, 0.8 if clipped else math.exp(math.log(0.8) + log_ratio_offset), atol=1e-12)


def test_policy_loss_asymmetric_clip() -> None:
    # rho = 1.25, A = +1 with clip_eps_high = 0.28: inside the range, loss -1.25
    logprobs, old = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.4)]])
    loss, m = ppo.policy_loss(logprobs, old, torch.ones(1, 1), torch.ones(1, 1), clip_eps=0.2, clip_eps_high=0.28)
    close(loss, -1.25, atol=1e-6)
    close(m["policy/clipfrac"], 0.0)


def test_policy_loss_masked_garbage_and_gradients() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logprobs = torch.tensor([[-0.5, -1.0, 1e4], [-0.2, 1e4, -1e4]], requires_grad=True)
    old = torch.tensor([[-0.6, -0.9, -1e4], [-0.2, 0.0, float("nan")]])
    adv = torch.tensor([[1.0, -0.5, float("nan")], [0.3, 1e9, 0.0]])
    loss, m = ppo.policy_loss(logprobs, old, adv, mask)
    loss.backward()
    clean = torch.where(mask.bool(), logprobs.detach(), 0.0)
    clean_old, clean_adv = torch.where(mask.bool(), old, 0.0), torch.where(mask.bool(), adv, 0.0)
    clean_loss, _ = ppo.policy_loss(clean, clean_old, clean_adv, mask)
    close(loss, clean_loss.detach(), atol=1e-6)
    assert torch.isfinite(logprobs.grad).all() and torch.all(logprobs.grad[mask == 0] == 0)
    assert all(torch.isfinite(v) and not v.requires_grad for v in m.values())


# ---------------------------------------------------------------- value loss


def test_value_loss_spec_vector_clip_on() -> None:
    # V = [0.5, 0.9], V_old = [0.4, 0.4], R = [1, 1]; V_clip = [0.5, 0.6]
    # per token max((V-R)^2, (Vclip-R)^2) = [max(.25,.25), max(.01,.16)] = [0.25, 0.16]; 0.5 * 0.205 = 0.1025
    values = torch.tensor([[0.5, 0.9]], requires_grad=True)
    loss, m = ppo.value_loss(values, torch.tensor([[0.4, 0.4]]), torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    close(loss, 0.1025, atol=1e-6)
    close(m["value/clipfrac"], 0.5)  # token 2: 0.16 > 0.01
    close(m["value/mse"], (0.25 + 0.01) / 2, atol=1e-6)
    loss.backward()
    close(values.grad, [[0.5 * 0.5 * 2 * (0.5 - 1.0), 0.0]], atol=1e-6)  # token 2 clipped: no gradient


def test_value_loss_spec_vector_clip_off() -> None:
    # unclipped squares [0.25, 0.01] -> 0.5 * mean = 0.065
    values, old = torch.tensor([[0.5, 0.9]]), torch.tensor([[0.4, 0.4]])
    loss, m = ppo.value_loss(values, old, torch.ones(1, 2), torch.ones(1, 2), clip_eps=None)
    close(loss, 0.065, atol=1e-6)
    close(m["value/clipfrac"], 0.0)


def test_value_loss_masked_values_do_not_matter() -> None:
    mask = torch.tensor([[1, 1, 0]])
    values, old = torch.tensor([[0.5, 0.9, 1e6]]), torch.tensor([[0.4, 0.4, -1e6]])
    a, _ = ppo.value_loss(values, old, torch.tensor([[1.0, 1.0, float("nan")]]), mask)
    close(a, 0.1025, atol=1e-6)


# ---------------------------------------------------------------- per-token helpers


def test_entropy_from_logits() -> None:
    logits = torch.zeros(2, 3, 5)  # uniform over 5 -> ln 5
    close(ppo.entropy_from_logits(logits), torch.full((2, 3), math.log(5)).tolist(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 11, generator=g) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    close(ppo.entropy_from_logits(logits), expected, atol=1e-5)
    close(ppo.entropy_from_logits(logits, chunk_size=3), expected, atol=1e-5)


def test_logprobs_from_logits_matches_log_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 13, generator=g) * 4
    labels = torch.randint(0, 13, (5, 4), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    close(ppo.logprobs_from_logits(logits, labels), expected, atol=1e-5)
    close(ppo.logprobs_from_logits(logits, labels, chunk_size=2), expected, atol=1e-5)
    out = ppo.logprobs_from_logits(logits.bfloat16(), labels)
    assert out.dtype == torch.float32 and out.shape == (5, 4)


def test_logprobs_from_logits_gradient() -> None:
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    ppo.logprobs_from_logits(logits, torch.tensor([[2]]), chunk_size=1).sum().backward()
    # d/dz (z_2 - logsumexp z) = onehot(2) - softmax = [-.25, -.25, .75, -.25]
    close(logits.grad, [[[-0.25, -0.25, 0.75, -0.25]]], atol=1e-6)


def _reference_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)


@pytest.mark.parametrize("shape", [(6, 5, 17), (9, 17)])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_logprobs_from_logits_gradient_matches_autograd(shape, chunk_size) -> None:
    """The chunked function's values and gradient equal autograd through log_softmax, fp32 and bf16 logits,
    for (B, T, V) and (N, V) inputs and a non-contiguous view (SFT's shifted logits)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(*shape[:-1], shape[-1] + 3, generator=g) * 3
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    weights = torch.randn(shape[:-1], generator=g)  # a non-uniform upstream gradient
    for dtype in (torch.float32, torch.bfloat16):
        mine = base.to(dtype).clone().requires_grad_()
        ref = base.to(dtype).clone().requires_grad_()
        view = mine[..., : shape[-1]]  # non-contiguous
        out = ppo.logprobs_from_logits(view, labels, chunk_size=chunk_size)
        expected = _reference_logprobs(ref[..., : shape[-1]], labels)
        assert out.dtype == torch.float32 and out.shape == labels.shape
        close(out, expected, atol=1e-5)
        (out * weights).sum().backward()
        (expected * weights).sum().backward()
        assert mine.grad.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: both round the same float32 gradient once
        close(mine.grad.float(), ref.grad.float(), atol=tol)


def test_logprobs_from_logits_masked_vocabulary_and_inference_mode() -> None:
    """-inf logits (a masked vocabulary entry) get probability 0 and gradient 0; no autograd state is needed."""
    logits = torch.tensor([[0.0, float("-inf"), 0.0, 0.0]], requires_grad=True)
    out = ppo.logprobs_from_logits(logits, torch.tensor([0]))
    close(out, [-math.log(3)], atol=1e-6)
    out.sum().backward()
    close(logits.grad, [[2 / 3, 0.0, -1 / 3, -1 / 3]], atol=1e-6)
    with torch.inference_mode():
        close(ppo.logprobs_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)),
              torch.full((2, 3), -math.log(4)), atol=1e-6)


def test_entropy_from_logits_bf16_and_flat() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 11, generator=g) * 2
    expected = torch.distributions.Categorical(logits=logits.bfloat16().float()).entropy()
    close(ppo.entropy_from_logits(logits.bfloat16()), expected, atol=1e-5)


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(ppo.explained_variance(returns.clone(), returns, mask), 1.0)  # perfect values
    close(ppo.explained_variance(torch.full_like(returns, 2.0), returns, mask), 0.0)  # the mean: 0
    # values [0, 2, 3]: residual [1, 0, 0] has unbiased variance 1/3, Var[R] = 1 -> 1 - 1/3
    close(ppo.explained_variance(torch.tensor([[0.0, 2.0, 3.0, 0.0]]), returns, mask), 1 - (1 / 3) / 1.0)
    close(ppo.explained_variance(returns, torch.ones(1, 4), torch.ones(1, 4)), 0.0)  # Var[R] = 0 -> 0


def test_no_function_modifies_its_inputs() -> None:
    rewards, values, mask = _random_batch(5)
    logprobs, scores = -values.abs(), torch.rand(values.shape[0])
    inputs = [rewards, values, mask, logprobs, scores]
    before = [t.clone() for t in inputs]
    adv, ret = ppo.gae(ppo.shape_rewards(scores, mask, rewards, kl_coef=0.1), values, mask, gamma=1.0, lam=0.95)
    ppo.masked_whiten(adv, mask)
    ppo.policy_loss(logprobs, logprobs * 0.9, rewards, mask, agg="token-mean")
    _, metrics = ppo.value_loss(values, values * 0.5, ret, mask)
    ppo.explained_variance(values, ret, mask)
    assert all(torch.equal(a, b) for a, b in zip(inputs, before))
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
