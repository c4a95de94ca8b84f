"""CARFT contrastive math (Zhu et al., EMNLP 2025, arXiv 2508.15868; `specs/carft.md`).

Pieces, in the order the loop uses them:
- `pool`: value-softmax pooling of the head's 64-d token embeddings into one CoT embedding (§2);
- `loss`: the v4 InfoNCE with a clamped-cosine positive between each correct on-policy CoT and the
  annotated-CoT anchor of its question, with in-batch (and gathered) negatives (§4);
- `lcs` / `lcs_masks` and `negative_loss`: the optional LCS-based negative signal of v8/v9 (§5);
- `partial_reward`: the embedding-enhanced partial reward of v11 (§6).

Faithful to the reference code (`WNQzhu/CARFT`, `my_cl_trainer_v4.py`):
- the anchor is detached; the denominator of `loss` carries no gradient (it comes from a
  non-differentiable all_gather there), so the only gradient is −(1/τ)·∇min(cos(anchor, z_gen), κ),
  averaged over correct samples, and it is exactly 0 once the cosine reaches κ;
- the normaliser Σ c_i + 1e-8 is per call (per rank), so no correct sample gives loss 0, gradient 0.
Deviations (rlft options): `negatives_grad=True` lets gradient flow through the local in-batch
negatives; pooling takes explicit masks (never "token != pad"), so it is padding-invariant; cosines are
computed elementwise (no matmul, so TF32 cannot perturb them).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn.functional as F


def _effective_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool mask; an empty row selects its last position instead (the reference's rule)."""
    valid = mask != 0
    last = torch.arange(valid.shape[-1], device=valid.device) == valid.shape[-1] - 1  # (T,)
    return valid | (~valid.any(dim=-1, keepdim=True) & last)


def pool_weights(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked softmax over the predicted values: w_t = exp(V_t) / Σ_{s∈M} exp(V_s) (`specs/carft.md` §2).

    Args:
        values: (B, T) value predictions V_t; entries outside M are ignored.
        mask: (B, T) 0/1 token set M (response_mask, or the annotated CoT's cot_mask). An empty row
            puts all weight on its last position, as the reference does; never NaN.
    Returns:
        (B, T) float32 weights, >= 0, summing to 1 over M and exactly 0 outside it.
    """
    valid = _effective_mask(mask)
    filled = torch.where(valid, values.float(), torch.finfo(torch.float32).min)  # exp(min - max) is 0
    return torch.softmax(filled, dim=-1)


def pool(values: torch.Tensor, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Value-softmax pooled CoT embedding: z = Σ_{t∈M} w_t · e_t (`specs/carft.md` §2).

    Gradient flows through both the embeddings and the weights (i.e. the values).

    Args:
        values: (B, T) value predictions. embeddings: (B, T, D) head embeddings e_t (pre-ReLU).
        mask: (B, T) 0/1 token set M.
    Returns:
        (B, D) pooled embeddings, unchanged by any amount of padding outside M.
    """
    weights = pool_weights(values, mask).to(embeddings.dtype)  # (B, T)
    emb = torch.where(_effective_mask(mask)[..., None], embeddings, 0.0)  # garbage outside M never leaks
    return (weights[..., None] * emb).sum(dim=1)


def pool_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy −Σ_t w_t log w_t of pooling weights (metric `carft/pool_entropy`).

    Args:
        weights: (B, T) from `pool_weights`.
    Returns:
        detached scalar.
    """
    return -torch.special.xlogy(weights, weights).sum(dim=-1).mean().detach()


def _unit(z: torch.Tensor) -> torch.Tensor:
    """Row-normalise in float32; a zero vector stays zero with finite gradient."""
    return F.normalize(z.float(), dim=-1, eps=1e-8)


def _clamped(cos: torch.Tensor, clamp: float) -> torch.Tensor:
    """min(cos, κ) whose gradient is exactly 0 for cos >= κ (torch.clamp passes it at equality)."""
    return torch.where(cos >= clamp, torch.full_like(cos, clamp), cos)


def loss(
    z_anchor: torch.Tensor,
    z_gen: torch.Tensor,
    correct: torch.Tensor,
    z_others: torch.Tensor | None = None,
    *,
    tau: float = 0.2,
    clamp: float = 0.9,
    negatives_grad: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CARFT v4 contrastive loss: InfoNCE with a clamped-cosine positive (`specs/carft.md` §4).

    Equation, with c_i = 1[S_i > 0.5] and keys k_j = [z_gen ; z_others]:
        pos_i = exp(min(cos(a_i, g_i), κ) / τ),   den_i = Σ_j exp(cos(a_i, k_j) / τ)  (j = i included)
        L = Σ_i c_i · (−log(pos_i / den_i)) / (Σ_i c_i + 1e-8)

    Args:
        z_anchor: (B, D) pooled annotated-CoT embeddings a_i (detached here).
        z_gen: (B, D) pooled on-policy CoT embeddings g_i, with gradient.
        correct: (B,) bool, c_i: samples with reward 1. Only these are positives.
        z_others: (M, D) z_gen of the other data-parallel ranks (already gathered), or None on one rank.
            Always detached.
        tau: temperature τ. clamp: κ, applied to the positive only.
        negatives_grad: False (reference) detaches every key in den_i; True lets gradient flow through
            the local keys (deviation).
    Returns:
        loss and metrics `carft/loss`, `carft/n_positive`, `carft/pos_cos_mean` (unclamped, correct
        samples), `carft/neg_cos_mean` (anchor vs every other key), `carft/frac_at_clamp`.
    """
    a = _unit(z_anchor.detach())  # (B, D)
    g = _unit(z_gen)  # (B, D)
    keys = g if negatives_grad else g.detach()
    if z_others is not None:
        keys = torch.cat([keys, _unit(z_others.detach())], dim=0)  # (N, D), local rows first
    sim = (a[:, None, :] * keys[None, :, :]).sum(-1)  # (B, N) cosines, elementwise (no TF32)
    pos_cos = (a * g).sum(-1)  # (B,)
    per_sample = -_clamped(pos_cos, clamp) / tau + torch.logsumexp(sim / tau, dim=-1)  # (B,)
    c = correct.bool()
    n_pos = c.sum().float()
    total = torch.where(c, per_sample, 0.0).sum() / (n_pos + 1e-8)
    with torch.no_grad():
        B, N = sim.shape
        is_self = torch.arange(N, device=sim.device)[None, :] == torch.arange(B, device=sim.device)[:, None]
        neg = c[:, None] & ~is_self  # (B, N)
        metrics = {
            "carft/loss": total.detach(),
            "carft/n_positive": n_pos,
            "carft/pos_cos_mean": torch.where(c, pos_cos, 0.0).sum() / n_pos.clamp(min=1),
            "carft/neg_cos_mean": torch.where(neg, sim, 0.0).sum() / neg.sum().clamp(min=1),
            "carft/frac_at_clamp": (c & (pos_cos >= clamp)).sum() / n_pos.clamp(min=1),
        }
    return total, metrics


def negative_loss(
    z_anchor_diff: torch.Tensor,
    z_gen_common: torch.Tensor,
    z_gen_diff_all: torch.Tensor,
    valid: torch.Tensor,
    *,
    tau: float = 0.2,
    clamp: float = 0.9,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CARFT v8/v9 LCS-based negative signal for incorrect samples (`specs/carft.md` §5).

    Equation, with z_1 = anchor tokens outside the LCS, z_2 = generated tokens in the LCS and
    z_3 = generated response tokens outside the LCS, keys k = [local z_2 ; gathered z_3]:
        L_i = −log( exp(min(cos(z_1_i, z_2_i), κ)/τ) / Σ_k exp(cos(z_2_i, k)/τ) )
        L_neg = Σ_i v_i L_i / (Σ_i v_i + 1e-8),  v_i = incorrect with a non-empty LCS.
    v9 combines it as L_cl = 0.5 · (L_pos + L_neg); the loop does that.

    Args:
        z_anchor_diff: (B, D) z_1 from the anchor forward (detached here, it runs under no_grad).
        z_gen_common: (B, D) z_2, with gradient; its local rows carry gradient in the denominator too.
        z_gen_diff_all: (N, D) z_3 of all ranks (gathered, detached here).
        valid: (B,) bool v_i.
        tau, clamp: as in `loss`.
    Returns:
        loss and metrics `carft/neg_loss`, `carft/n_negative`.
    """
    z1 = _unit(z_anchor_diff.detach())  # (B, D)
    z2 = _unit(z_gen_common)  # (B, D)
    keys = torch.cat([z2, _unit(z_gen_diff_all.detach())], dim=0)  # (B + N, D)
    sim = (z2[:, None, :] * keys[None, :, :]).sum(-1)  # (B, B + N)
    per_sample = -_clamped((z1 * z2).sum(-1), clamp) / tau + torch.logsumexp(sim / tau, dim=-1)  # (B,)
    v = valid.bool()
    n = v.sum().float()
    total = torch.where(v, per_sample, 0.0).sum() / (n + 1e-8)
    return total, {"carft/neg_loss": total.detach(), "carft/n_negative": n}


def lcs(x: Sequence[Hashable], y: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """Longest common subsequence of two token sequences, O(len(x)·len(y)) dynamic programme.

    Ties are broken as the reference `cl.py::longest_common_subsequence` does (move in y unless moving
    in x keeps a strictly longer prefix solution).

    Args:
        x, y: sequences of hashable tokens (ids or strings).
    Returns:
        0-based positions of the LCS in x and in y, increasing.
    """
    m, n = len(x), len(y)
    table = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        row, prev, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, n + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    xs: list[int] = []
    ys: list[int] = []
    i, j = m, n
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            xs.append(i - 1)
            ys.append(j - 1)
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return xs[::-1], ys[::-1]


def lcs_masks(
    anchor_ids: torch.Tensor, anchor_mask: torch.Tensor, gen_ids: torch.Tensor, gen_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row LCS membership masks between annotated and generated sequences (`specs/carft.md` §5).

    A CPU helper, not training-path math: it copies ids to Python lists (a device sync) and runs `lcs`
    per row. Call it in the rollout/CPU phase. The reference runs it over full sequences, prompt
    included; choose that by what `anchor_mask` / `gen_mask` select.

    Args:
        anchor_ids: (B, Ta) annotated-sequence ids; anchor_mask: (B, Ta) 0/1 positions that take part.
        gen_ids: (B, Tg) generated-sequence ids; gen_mask: (B, Tg) 0/1 positions that take part.
    Returns:
        (B, Ta) and (B, Tg) bool masks of the positions in the LCS (on the inputs' devices).
    """
    anchor_in = torch.zeros(anchor_ids.shape, dtype=torch.bool)
    gen_in = torch.zeros(gen_ids.shape, dtype=torch.bool)
    for b, (a_row, a_m, g_row, g_m) in enumerate(
        zip(anchor_ids.tolist(), anchor_mask.tolist(), gen_ids.tolist(), gen_mask.tolist())
    ):
        a_pos = [t for t, keep in enumerate(a_m) if keep]
        g_pos = [t for t, keep in enumerate(g_m) if keep]
        xs, ys = lcs([a_row[t] for t in a_pos], [g_row[t] for t in g_pos])
        anchor_in[b, [a_pos[k] for k in xs]] = True
        gen_in[b, [g_pos[k] for k in ys]] = True
    return anchor_in.to(anchor_ids.device), gen_in.to(gen_ids.device)


@torch.no_grad()
def partial_reward(
    scores: torch.Tensor,
    is_partial: torch.Tensor,
    z_anchor: torch.Tensor,
    z_gen: torch.Tensor,
    *,
    base: float = 0.2,
    scale: float = 0.1,
) -> torch.Tensor:
    """Embedding-enhanced partial reward, CARFT v11 (`specs/carft.md` §6).

    Equation: S_i = base + scale · cos(z_ann_i, z_gen_i) ∈ [0.1, 0.3] for extractable-but-wrong answers;
    other scores are unchanged (1 stays 1, 0 stays 0). Computed without gradient at rollout time.

    Args:
        scores: (B,) flat scores (1 / partial / 0).
        is_partial: (B,) bool, the answer was extracted but is wrong.
        z_anchor, z_gen: (B, D) pooled embeddings from the rollout-time forward.
        base, scale: the affine map of the cosine.
    Returns:
        (B,) new scores in the dtype of `scores` (promoted to float).
    """
    cos = (_unit(z_anchor) * _unit(z_gen)).sum(-1)  # (B,)
    out_dtype = torch.promote_types(scores.dtype, torch.float32)
    return torch.where(is_partial.bool(), (base + scale * cos).to(out_dtype), scores.to(out_dtype))
