"""Critic-free advantage estimators used as baselines next to ReFT's GAE (`specs/reft.md` §19.1).

Scores are (B,) with B = n_groups · G and the G samples of a prompt stored contiguously (sample i
belongs to group i // G). Group estimators return a per-sequence advantage (B,); `broadcast_to_tokens`
spreads it over the response tokens for `ppo.policy_loss`. GAE itself lives in `ppo.gae`.

Map from the spec's table to calls:
- GRPO:                   grpo(scores, group_size=G)
- Dr. GRPO:               grpo(scores, group_size=G, scale=False), aggregated "seq-mean-token-sum-norm"
- RLOO:                   rloo(scores, group_size=G)
- REINFORCE++:            reinforce_pp(scores, response_mask, kl, kl_coef=β)
- REINFORCE++-baseline:   reinforce_pp_baseline(scores, response_mask, kl, group_size=G, kl_coef=β)
- DAPO:                   grpo(scores, group_size=G) plus `dapo.*` (filters and the overlong penalty)

Deviations: GRPO's std is the unbiased group std (as OpenRLHF `group_norm`) with eps = 1e-6 by default
(OpenRLHF uses 1e-9). G = 1 raises instead of silently giving zero (or NaN) advantages.
"""

from __future__ import annotations

import torch

from rlft.algos import ppo


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape (B,) scores to (B / G, G) float, checking the geometry with Python ints only."""
    if group_size < 2:
        raise ValueError(f"group estimators need group_size >= 2, got {group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"scores must be (B,) with B a multiple of {group_size}, got {tuple(scores.shape)}")
    return scores.reshape(-1, group_size).to(torch.promote_types(scores.dtype, torch.float32))


def grpo(scores: torch.Tensor, *, group_size: int, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """Group-normalised outcome advantage (Shao et al. 2024, DeepSeekMath §4.1.2).

    Equation: Â_i = (S_i − mean_g(S)) / (std_g(S) + eps), std unbiased; with `scale=False`,
    Â_i = S_i − mean_g(S) (Dr. GRPO, Liu et al. 2025; also the REINFORCE++-baseline shift).

    Args:
        scores: (B,) scores, groups contiguous.
        group_size: G >= 2.
        eps: added to the std; a group with equal scores gets Â = 0.
        scale: divide by the group std.
    Returns:
        (B,) per-sequence advantages.
    """
    s = _groups(scores, group_size)  # (n_groups, G)
    adv = s - s.mean(dim=-1, keepdim=True)
    if scale:
        adv = adv / (s.std(dim=-1, keepdim=True, correction=1) + eps)
    return adv.reshape(-1)


def rloo(scores: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Ahmadian et al. 2024, eq. 8).

    Equation: Â_i = S_i − (1/(G−1)) Σ_{j≠i} S_j = G/(G−1) · (S_i − mean_g(S)).

    Args:
        scores: (B,) scores, groups contiguous. group_size: G >= 2.
    Returns:
        (B,) per-sequence advantages.
    """
    s = _groups(scores, group_size)  # (n_groups, G)
    return (group_size / (group_size - 1) * (s - s.mean(dim=-1, keepdim=True))).reshape(-1)


def reinforce_pp(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    *,
    kl_coef: float | torch.Tensor = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): token-level returns with the KL in the reward, then batch whitening.

    Equation: r_t = −β·kl_t·m_t + S·1[t = t_last] (`ppo.shape_rewards`), G_t = Σ_{s>=t} γ^{s−t} r_s,
    Â = (G − μ) / sqrt(σ² + eps) with masked mean μ and unbiased variance σ² over this batch.

    The whitening statistics are those of the batch passed in. When the batch is sharded, whiten the
    returned `returns` again with `ppo.masked_whiten(returns, mask, mean=..., var=...)` using gathered
    statistics. For REINFORCE++-baseline use `reinforce_pp_baseline`.

    Args:
        scores: (B,) terminal scores.
        response_mask: (B, T) 0/1 prefix mask.
        kl: (B, T) per-token KL (k1 of old vs ref, `specs/reft.md` §4.2), or None.
        kl_coef: β. gamma: discount (1 in the paper). eps: whitening epsilon.
    Returns:
        advantages (B, T) whitened, and returns (B, T) raw; both 0 at masked positions.
    """
    rewards = ppo.shape_rewards(scores, response_mask, kl, kl_coef=kl_coef)  # (B, T)
    # reward-to-go = GAE with V = 0 and λ = 1
    returns, _ = ppo.gae(rewards, torch.zeros_like(rewards), response_mask, gamma=gamma, lam=1.0)
    return ppo.masked_whiten(returns, response_mask, eps=eps), returns


def reinforce_pp_baseline(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    *,
    group_size: int,
    kl_coef: float | torch.Tensor = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (Hu 2025; OpenRLHF estimator `reinforce_baseline`): the group mean of the
    scores is subtracted first, then REINFORCE++ as in `reinforce_pp`.

    Equation: S'_i = S_i − mean_g(S) (`grpo(scale=False)`), r_t = −β·kl_t·m_t + S'·1[t = t_last],
    G_t = Σ_{s>=t} γ^{s−t} r_s, Â = (G − μ) / sqrt(σ² + eps) over the valid tokens of this batch.

    Same order as OpenRLHF `compute_advantages_and_returns`: the mean is of the scores alone (the KL
    enters the per-token reward after the shift, so it is not baselined), then token returns, then
    whitening over the batch. Deviations from OpenRLHF: σ² is unbiased (OpenRLHF divides by N) and eps
    is added (OpenRLHF clamps σ² at 1e-8); γ is honoured (OpenRLHF forces γ = 1 here); masked entries
    are 0. verl's `reinforce_plus_plus_baseline` differs more: it baselines score + Σ(−β·kl) and gives
    every token of a sample the same value. Sharded batches: see `reinforce_pp`.

    Args:
        scores: (B,) scores, groups of G contiguous; add `dapo.overlong_penalty` here if used.
        response_mask: (B, T) 0/1 prefix mask.
        kl: (B, T) per-token KL (k1 of old vs ref), or None.
        group_size: G >= 2. kl_coef: β. gamma: discount (1 in OpenRLHF). eps: whitening epsilon.
    Returns:
        advantages (B, T) whitened, and returns (B, T) raw; both 0 at masked positions.
    """
    shifted = grpo(scores, group_size=group_size, scale=False)  # (B,)
    return reinforce_pp(shifted, response_mask, kl, kl_coef=kl_coef, gamma=gamma, eps=eps)


def broadcast_to_tokens(seq_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Spread a per-sequence advantage over the response: Â_{b,t} = Â_b · m_{b,t}.

    Args:
        seq_advantages: (B,). response_mask: (B, T) 0/1.
    Returns:
        (B, T) advantages, 0 at masked positions.
    """
    return torch.where(response_mask != 0, seq_advantages[:, None], 0.0)


def group_metrics(scores: torch.Tensor, *, group_size: int) -> dict[str, torch.Tensor]:
    """Group diagnostics: `reward/zero_std_frac`, the share of groups whose scores are all equal
    (they carry no signal under GRPO/RLOO; `specs/reft.md` §19.1).

    Args:
        scores: (B,) scores, groups contiguous. group_size: G >= 2.
    Returns:
        dict of detached scalar tensors.
    """
    s = _groups(scores, group_size)  # (n_groups, G)
    flat = s.amax(dim=-1) == s.amin(dim=-1)  # (n_groups,)
    return {"reward/zero_std_frac": flat.float().mean().detach()}
