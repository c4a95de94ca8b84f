"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476):
the three ingredients that rlft did not already have, as pure tensor functions.

DAPO is GRPO with four changes and no KL. Map from the paper to calls (G = samples_per_prompt):
- advantage:      `advantages.grpo(scores, group_size=G)` (group mean and std, unchanged from GRPO);
- Clip-Higher (§3.1): `ppo.policy_loss(..., clip_eps=0.2, clip_eps_high=0.28)`;
- Dynamic Sampling (§3.2, eq. 11): `groups_with_signal` + `keep_rows` here; the loop over-samples prompts
  and refills the batch with kept groups (verl recipe `filter_groups`);
- Token-level loss (§3.3, eq. 12): `ppo.policy_loss(..., agg="token-mean", num_tokens=global count)`,
  i.e. `ppo.aggregate(mode="token-mean")`;
- Overlong filtering (§3.4): `overlong_filter` here, applied to the mask given to the loss only;
- Soft overlong punishment (§3.4, eq. 13): `overlong_penalty` here, added to the score before the advantage;
- no KL term: kl_coef = 0 and no KL loss (§2, "Removing KL Divergence").

Paper defaults: eps_low 0.2, eps_high 0.28, L_max 20480 with L_cache 4096 (expected length 16384),
penalty 1, token-mean, no KL, rule-based score +1 / −1 (§2, "Rule-based Reward Modeling").

Deviations and choices:
- The paper's score is ±1. With rlft's 0/1 scores the correctness gap is 1, not 2, so the same `penalty`
  weighs twice as much against correctness; pass `penalty=0.5` with 0/1 scores for the paper's balance
  (GRPO's std division makes the ±1 and 0/1 advantages otherwise identical).
- `groups_with_signal` generalises |{correct}| ∈ (0, G) to max(S) ≠ min(S), exact comparison (verl keeps
  groups with std > 0). Pass the correctness scores, not the length-shaped ones, to reproduce the paper:
  with the penalty added, an all-wrong group of different lengths would be kept.
- G = 1 raises (verl keeps single-sample groups); rlft rejects G = 1 for every group estimator.
"""

from __future__ import annotations

import torch

from rlft.algos import advantages


def overlong_penalty(
    response_lengths: torch.Tensor, *, max_len: int, cache_len: int, penalty: float = 1.0
) -> torch.Tensor:
    """Soft overlong punishment (DAPO eq. 13), a length reward added to the score.

    Equation, with L = |y|, L_max = `max_len`, L_cache = `cache_len`, p = `penalty`:
        R_len = 0                                  if L <= L_max − L_cache
        R_len = p · ((L_max − L_cache) − L) / L_cache   if L_max − L_cache < L <= L_max
        R_len = −p                                 if L > L_max
    The pieces meet at both knots (0 at L_max − L_cache, −p at L_max), so the choice of < or <= there
    changes no value. Same as OpenRLHF `apply_overlong_penalty`; verl's DAPO reward manager omits the
    −p floor, which differs only for L > L_max (its sampler never produces those).

    Args:
        response_lengths: (B,) response tokens per sample, EOS included (`response_mask.sum(-1)`).
        max_len: L_max, the generation budget. cache_len: L_cache, 0 < L_cache <= L_max.
        penalty: p >= 0, the penalty at and beyond L_max.
    Returns:
        (B,) float length rewards in [−p, 0].
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    lengths = response_lengths.to(torch.promote_types(response_lengths.dtype, torch.float32))  # (B,)
    over = ((max_len - cache_len) - lengths).clamp(min=-cache_len, max=0.0)  # (B,) in [−L_cache, 0]
    return penalty * over / cache_len


def overlong_filter(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering (DAPO §3.4): truncated samples get no loss weight.

    Equation: m'_{b,t} = m_{b,t} · 1[sample b not truncated].

    Use the result only as the mask of the loss (`ppo.policy_loss` / `ppo.aggregate`), after the
    advantages are computed with the full batch: truncated samples still count in their group's mean and
    std, and under "token-mean" their tokens leave the normaliser (as TRL `mask_truncated_completions`).

    Args:
        response_mask: (B, T) 0/1 (bool, int or float).
        truncated: (B,) bool or 0/1; true when the sampler hit the budget before EOS (finish reason
            "length"), which is not the same as L == max_len (EOS may land on the last slot).
    Returns:
        (B, T) mask of the same dtype as `response_mask`, rows of truncated samples all 0.
    """
    return response_mask * (truncated == 0)[:, None]  # (B, T)


def groups_with_signal(scores: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Dynamic sampling's filter (DAPO eq. 11): keep groups whose scores are not all equal.

    Equation: keep_g = 1[max_{i∈g} S_i ≠ min_{i∈g} S_i]; for 0/1 or ±1 correctness this is the paper's
    constraint 0 < |{o_i : is_equivalent(a, o_i)}| < G. A dropped group would get Â = 0 under GRPO, RLOO
    and Dr. GRPO. `advantages.group_metrics` logs the dropped share as `reward/zero_std_frac`.

    Args:
        scores: (B,) scores, groups of G contiguous (sample i is in group i // G); correctness scores
            before `overlong_penalty` to match the paper.
        group_size: G >= 2.
    Returns:
        (n_groups,) bool, True for groups to keep.
    """
    s = advantages._groups(scores, group_size)  # (n_groups, G)
    return s.amax(dim=-1) != s.amin(dim=-1)


def keep_rows(keep_groups: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Spread a per-group keep flag to its G samples, to index the batch: `batch[keep_rows(...)]`.

    Args:
        keep_groups: (n_groups,) bool, e.g. from `groups_with_signal`. group_size: G >= 1.
    Returns:
        (B,) bool with B = n_groups · G, groups contiguous.
    """
    return keep_groups.repeat_interleave(group_size)  # (B,)
