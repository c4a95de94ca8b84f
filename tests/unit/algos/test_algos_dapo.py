"""DAPO (Yu et al. 2025, arXiv 2503.14476): hand-computed values and invariances for rlft.algos.dapo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlft.algos import advantages, dapo, ppo


def close(actual: torch.Tensor, expected: object, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- soft overlong punishment (eq. 13)


def test_overlong_penalty_hand_values() -> None:
    # L_max 20, L_cache 4: free up to 16, then -1/4 per token, floor -1 from 20 on
    lengths = torch.tensor([0, 16, 17, 18, 19, 20, 21, 100])
    expected = [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    close(dapo.overlong_penalty(lengths, max_len=20, cache_len=4), expected)
    close(dapo.overlong_penalty(lengths, max_len=20, cache_len=4, penalty=0.5), [0.5 * e for e in expected])


def test_overlong_penalty_paper_defaults() -> None:
    # L_max 20480 = 16384 expected + 4096 cache
    lengths = torch.tensor([16384, 16385, 18432, 20480])
    close(dapo.overlong_penalty(lengths, max_len=20480, cache_len=4096), [0.0, -1 / 4096, -0.5, -1.0])


def _paper_eq13(length: int, max_len: int, cache_len: int) -> float:
    """Eq. 13 written case by case, as printed."""
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return ((max_len - cache_len) - length) / cache_len
    return -1.0


@pytest.mark.parametrize("max_len, cache_len", [(20, 4), (7, 7), (10, 1), (9, 3)])
def test_overlong_penalty_equals_case_by_case_definition(max_len: int, cache_len: int) -> None:
    lengths = torch.arange(0, max_len + 5)
    expected = [_paper_eq13(int(n), max_len, cache_len) for n in lengths]
    out = dapo.overlong_penalty(lengths, max_len=max_len, cache_len=cache_len)
    close(out, expected)
    assert out.dtype == torch.float32 and (out.diff() <= 0).all()  # non-increasing in L


def test_overlong_penalty_keeps_input_and_checks_geometry() -> None:
    lengths = torch.tensor([3.0, 9.0])
    before = lengths.clone()
    close(dapo.overlong_penalty(lengths, max_len=10, cache_len=2), [0.0, -0.5])
    assert torch.equal(lengths, before)
    for cache_len in (0, 11):
        with pytest.raises(ValueError):
            dapo.overlong_penalty(lengths, max_len=10, cache_len=cache_len)


# ---------------------------------------------------------------- overlong filtering


def test_overlong_filter_zeroes_truncated_rows_and_keeps_dtype() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    expected = [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    for truncated in (torch.tensor([False, True, False]), torch.tensor([0, 1, 0])):
        for m in (mask, mask.bool(), mask.float()):
            out = dapo.overlong_filter(m, truncated)
            assert out.dtype == m.dtype and torch.equal(out, torch.as_tensor(expected).to(m.dtype))
    before = mask.clone()
    dapo.overlong_filter(mask, torch.tensor([True, True, True]))
    assert torch.equal(mask, before)


def test_overlong_filter_drops_truncated_tokens_from_token_mean() -> None:
    # per-token loss rows [1, 2, x], [10, 10, 10] (truncated), [3, x, x]: (1 + 2 + 3) / 3 valid tokens = 2
    loss = torch.tensor([[1.0, 2.0, float("nan")], [10.0, 10.0, 10.0], [3.0, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    kept = dapo.overlong_filter(mask, torch.tensor([False, True, False]))
    close(ppo.aggregate(loss, kept, mode="token-mean"), 2.0)
    close(ppo.aggregate(loss, mask, mode="token-mean"), 36.0 / 6)


# ---------------------------------------------------------------- dynamic sampling (eq. 11)


def test_groups_with_signal_hand_values() -> None:
    scores = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, -1, 1, 1, 1])
    keep = dapo.groups_with_signal(scores, group_size=4)
    assert keep.dtype == torch.bool and keep.tolist() == [False, False, True, False, True]


def test_groups_with_signal_is_the_paper_constraint_for_binary_scores() -> None:
    # 0 < |{correct}| < G over every pattern of G = 4 correctness bits, for 0/1 and ±1 scores
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))  # (16, 4)
    n_correct = patterns.sum(-1)
    expected = (n_correct > 0) & (n_correct < 4)
    assert torch.equal(dapo.groups_with_signal(patterns.reshape(-1), group_size=4), expected)
    assert torch.equal(dapo.groups_with_signal(2 * patterns.reshape(-1) - 1, group_size=4), expected)


def test_groups_with_signal_exact_equality() -> None:
    # any difference is signal, only exact ties are dropped; int scores work
    scores = torch.tensor([1.0, 1.0 + 2**-20, 0.3, 0.3])
    assert dapo.groups_with_signal(scores, group_size=2).tolist() == [True, False]
    assert dapo.groups_with_signal(torch.tensor([2, 2, 0, 1]), group_size=2).tolist() == [False, True]


def test_dropped_groups_are_exactly_the_zero_advantage_groups() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 2, (64,), generator=g).float()  # 16 groups of 4 binary scores
    keep = dapo.groups_with_signal(scores, group_size=4)
    assert keep.any() and not keep.all()
    for adv in (advantages.grpo(scores, group_size=4), advantages.grpo(scores, group_size=4, scale=False)):
        flat = adv.reshape(16, 4)
        assert torch.equal(flat[~keep], torch.zeros_like(flat[~keep]))
        assert (flat[keep] != 0).any(dim=-1).all()
    close(1 - keep.float().mean(), advantages.group_metrics(scores, group_size=4)["reward/zero_std_frac"])


def test_groups_with_signal_permutation_invariances() -> None:
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.2, 0.5])
    keep = dapo.groups_with_signal(scores, group_size=3)
    within = scores.reshape(3, 3).flip(-1).reshape(-1)  # reorder samples inside each group
    assert torch.equal(dapo.groups_with_signal(within, group_size=3), keep)
    order = torch.tensor([2, 0, 1])  # reorder groups
    across = scores.reshape(3, 3)[order].reshape(-1)
    assert torch.equal(dapo.groups_with_signal(across, group_size=3), keep[order])


def test_groups_with_signal_checks_geometry() -> None:
    with pytest.raises(ValueError):
        dapo.groups_with_signal(torch.tensor([1.0, 0.0]), group_size=1)
    with pytest.raises(ValueError):
        dapo.groups_with_signal(torch.tensor([1.0, 0.0, 1.0]), group_size=2)


def test_keep_rows_hand_values() -> None:
    rows = dapo.keep_rows(torch.tensor([True, False, True]), group_size=2)
    assert rows.tolist() == [True, True, False, False, True, True]


def test_filtering_leaves_kept_groups_advantages_unchanged() -> None:
    # selecting whole groups then computing GRPO = computing GRPO then selecting the rows
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    rows = dapo.keep_rows(dapo.groups_with_signal(scores, group_size=3), group_size=3)
    assert rows.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    close(advantages.grpo(scores[rows], group_size=3), advantages.grpo(scores, group_size=3)[rows])


# ---------------------------------------------------------------- the ingredients composed


def test_dapo_step_hand_values() -> None:
    # G = 2, L_max 4, L_cache 2, ±1 correctness:
    # group 0: row 0 correct, 2 tokens -> S = 1;  row 1 wrong, 4 tokens, truncated -> S = -1 - 1 = -2
    # group 1: rows 2, 3 both correct -> dropped by dynamic sampling (its penalty -0.5 on row 2 is ignored)
    correct = torch.tensor([1.0, -1.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    truncated = torch.tensor([False, True, False, False])
    scores = correct + dapo.overlong_penalty(mask.sum(-1), max_len=4, cache_len=2)
    close(scores, [1.0, -2.0, 0.5, 1.0])
    rows = dapo.keep_rows(dapo.groups_with_signal(correct, group_size=2), group_size=2)
    assert rows.tolist() == [True, True, False, False]
    # GRPO on [1, -2]: deviations ±1.5, unbiased std sqrt(4.5) -> Â = ±1/sqrt(2)
    adv = advantages.grpo(scores[rows], group_size=2)
    close(adv, [1 / math.sqrt(2), -1 / math.sqrt(2)], atol=1e-5)
    # ratio 1, token-mean over row 0's 2 tokens only (row 1 truncated): -Â_0 = -1/sqrt(2)
    loss_mask = dapo.overlong_filter(mask[rows], truncated[rows])
    logprobs = torch.full((2, 4), -1.0)
    loss, m = ppo.policy_loss(
        logprobs, logprobs, advantages.broadcast_to_tokens(adv, loss_mask), loss_mask,
        clip_eps=0.2, clip_eps_high=0.28, agg="token-mean",
    )
    close(loss, -1 / math.sqrt(2), atol=1e-5)
    close(m["policy/clipfrac"], 0.0)
