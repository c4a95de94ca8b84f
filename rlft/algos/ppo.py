"""PPO math for ReFT (Luong et al. 2024, arXiv 2401.08967): masked statistics, reward shaping, GAE,
the clipped policy and value losses, loss aggregation and the per-token helpers the loop needs.

Everything is a pure function over `(B, T)` tensors in response coordinates (`specs/reft.md` §3):
entry t is response token y_t, `response_mask[b, t]` is 1 for t <= t_last (the EOS-emitting token, or
the last token when truncated). Values at masked positions never matter (they may be garbage), inputs
are never modified, and metrics come back as detached scalar tensors for the caller to reduce.

Deviations from the reference code (`lqtrung1998/mwp_ReFT`):
- `masked_whiten(shift_mean=True)` removes the mean (trl's meaning); the reference's flag adds it back.
  Global whitening is done by passing gathered `mean`/`var`, never by a collective in here.
- `gae` treats every masked position as terminal (V := 0 there), i.e. it assumes a prefix mask.
- `aggregate` accepts external counts so that data-parallel shards average to the global loss.
- `masked_var` with a single valid entry returns 0 instead of dividing by zero.
"""

from __future__ import annotations

import torch

Scalar = float | torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor, *, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is non-zero; an empty mask gives 0.

    Args:
        x: any shape, e.g. (B, T). Masked entries may hold any value, NaN included.
        mask: same shape as `x`, 0/1 (bool, int or float).
        dim: reduce over this dimension only; None reduces over everything.
    Returns:
        the masked mean, a scalar or `x` reduced over `dim`.
    """
    valid = mask != 0
    masked = torch.where(valid, x, 0.0)
    if dim is None:
        return masked.sum() / valid.sum().clamp(min=1)
    return masked.sum(dim) / valid.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of `x` (trl `masked_var`).

    Equation: σ² = Σ m (x − μ)² / n, times n / (n − 1) when `unbiased` (Bessel; `specs/reft.md` §7).

    Args:
        x: (B, T) or any shape; mask: same shape, 0/1; unbiased: apply Bessel's correction.
    Returns:
        scalar variance. Deviation: with n <= 1 valid entries it is 0 (trl divides by zero).
    """
    valid = mask != 0
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    if unbiased:
        n = valid.sum().to(var.dtype)
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8,
    mean: torch.Tensor | None = None, var: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whiten the valid entries of `x`: (x − μ) / sqrt(σ² + eps) (`specs/reft.md` §7).

    For global whitening across data-parallel ranks, gather the statistics outside (e.g. all-gather
    `x` and `mask` and call `masked_mean` / `masked_var`) and pass them as `mean` and `var`.

    Args:
        x: (B, T) values, typically raw GAE advantages; mask: (B, T) response_mask.
        shift_mean: True returns zero-mean values (trl's meaning); False adds μ back.
        eps: added to the variance.
        mean, var: precomputed scalar statistics; default the masked mean and unbiased variance of `x`.
    Returns:
        (B, T) whitened values; masked positions are 0 (deviation: trl leaves them unmasked).
    """
    if mean is None:
        mean = masked_mean(x, mask)
    if var is None:
        var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask != 0, whitened, 0.0)


def shape_rewards(
    scores: torch.Tensor, response_mask: torch.Tensor, kl: torch.Tensor | None, *, kl_coef: Scalar
) -> torch.Tensor:
    """Per-token rewards with the KL penalty inside the reward (Ziegler et al. 2019; `specs/reft.md` §4.2).

    Equation: r_t = −β · kl_t · m_t + S · 1[t = t_last], with t_last the last valid position of the row
    (the EOS-emitting token, or the last token of a truncated response).

    Args:
        scores: (B,) terminal scores S.
        response_mask: (B, T) 0/1 prefix mask.
        kl: (B, T) per-token KL estimate, e.g. `kl.kl_penalty(old_logprobs, ref_logprobs, kind="k1")`;
            None for no penalty.
        kl_coef: β (float or scalar tensor from a KL controller).
    Returns:
        (B, T) rewards, 0 at masked positions. A row with an empty mask gets no score.
    """
    valid = response_mask != 0  # (B, T)
    positions = torch.arange(valid.shape[-1], device=valid.device)  # (T,)
    t_last = torch.where(valid, positions, -1).amax(dim=-1)  # (B,), -1 for an empty row
    is_last = positions == t_last[:, None]  # (B, T)
    score = torch.where(is_last, scores[:, None].to(torch.promote_types(scores.dtype, torch.float32)), 0.0)
    return score if kl is None else torch.where(valid, -kl_coef * kl, 0.0) + score  # (B, T)


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16; `specs/reft.md` §6).

    Equation: δ_t = r_t + γ·V(s_{t+1}) − V(s_t) with V(s_{t_last+1}) := 0, Â_t = Σ_l (γλ)^l δ_{t+l},
    R̂_t = Â_t + V(s_t). Standard letters: γ discounts rewards, λ mixes (the ReFT paper swaps them).
    Does not whiten; returns come from the raw advantages. Runs under no_grad.

    Args:
        rewards: (B, T) from `shape_rewards`.
        values: (B, T) V(s_t) at rollout time; masked entries are ignored.
        response_mask: (B, T) 0/1 prefix mask; every masked position is treated as terminal.
        gamma, lam: discount and GAE mixing factor.
    Returns:
        advantages (B, T) and returns (B, T), both 0 at masked positions.
    """
    valid = response_mask != 0  # (B, T)
    r = torch.where(valid, rewards, 0.0)
    v = torch.where(valid, values, 0.0).to(r.dtype)  # V after t_last is 0: nothing is bootstrapped
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # (B, T) V(s_{t+1})
    deltas = r + gamma * next_v - v  # (B, T)
    last = torch.zeros_like(deltas[:, 0])  # (B,)
    reversed_adv = []
    for t in reversed(range(deltas.shape[1])):  # a loop over T, vectorised over B: exact, no matmul/TF32
        last = torch.where(valid[:, t], deltas[:, t] + gamma * lam * last, 0.0)
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)  # (B, T)
    returns = torch.where(valid, advantages + v, 0.0)
    return advantages, returns


def aggregate(
    loss_mat: torch.Tensor, response_mask: torch.Tensor, *, mode: str = "seq-mean-token-mean",
    num_seqs: Scalar | None = None, num_tokens: Scalar | None = None, max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar (`specs/reft.md` §8; verl `agg_loss`).

    Modes:
        "seq-mean-token-mean": (1/B) Σ_b Σ_t ℓ·m / max(1, Σ_t m)   (ReFT, GRPO)
        "token-mean":          Σ ℓ·m / Σ m                          (all valid tokens)
        "seq-mean-token-sum-norm": Σ ℓ·m / (B · max_len)           (Dr. GRPO, Liu et al. 2025)

    Args:
        loss_mat: (B, T) per-token loss; masked entries are ignored.
        response_mask: (B, T) 0/1.
        num_seqs, num_tokens: the normaliser B or Σ m; default this shard's count. Under data
            parallelism pass the global count divided by the number of loss values the engine averages
            (ranks × accumulation steps), so that the mean of the shard losses equals the global loss.
        max_len: the constant of Dr. GRPO; default T (which then depends on padding: pass the budget).
    Returns:
        scalar loss.
    """
    valid = response_mask != 0
    masked = torch.where(valid, loss_mat, 0.0)  # (B, T)
    n_seqs = loss_mat.shape[0] if num_seqs is None else num_seqs
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / valid.sum(-1).clamp(min=1).to(masked.dtype)  # (B,)
        return per_seq.sum() / n_seqs
    if mode == "token-mean":
        n_tokens = valid.sum().clamp(min=1).to(masked.dtype) if num_tokens is None else num_tokens
        return masked.sum() / n_tokens
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (n_seqs * (loss_mat.shape[-1] if max_len is None else max_len))
    raise ValueError(f"unknown aggregation mode {mode!r}")


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
    *, clip_eps: float = 0.2, clip_eps_high: float | None = None, agg: str = "seq-mean-token-mean",
    num_seqs: Scalar | None = None, num_tokens: Scalar | None = None, max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7; `specs/reft.md` §8). No KL, no entropy.

    Equation: ρ_t = exp(log π_θ − log π_old), ℓ_t = max(−Â_t ρ_t, −Â_t clip(ρ_t, 1 − ε, 1 + ε_high)),
    loss = aggregate(ℓ). `clip_eps_high` > `clip_eps` gives DAPO's asymmetric clip (Yu et al. 2025).

    Args:
        logprobs: (B, T) log π_θ(y_t | s_t), with gradient.
        old_logprobs: (B, T) log π_old at rollout time.
        advantages: (B, T) (whitened) advantages; use `advantages.broadcast_to_tokens` for (B,) ones.
        response_mask: (B, T) 0/1.
        clip_eps, clip_eps_high: clip range; `clip_eps_high=None` means symmetric.
        agg, num_seqs, num_tokens, max_len: passed to `aggregate`.
    Returns:
        loss and metrics `policy/clipfrac` (share of valid tokens where the clipped term is selected),
        `policy/approx_kl` (k3 estimate of KL(π_old ‖ π_θ)), `policy/ratio_mean`.
    """
    valid = response_mask != 0
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)  # (B, T); garbage never reaches exp
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages, 0.0)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    counts = {"num_seqs": num_seqs, "num_tokens": num_tokens, "max_len": max_len}
    loss = aggregate(torch.max(unclipped, clipped), response_mask, mode=agg, **counts)
    with torch.no_grad():
        metrics = {
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
            # Schulman's k3 with samples from π_old: (ρ − 1) − log ρ >= 0
            "policy/approx_kl": masked_mean(ratio - 1.0 - log_ratio, response_mask),
            "policy/ratio_mean": masked_mean(ratio, response_mask),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor,
    *, clip_eps: float | None = 0.2, agg: str = "seq-mean-token-mean",
    num_seqs: Scalar | None = None, num_tokens: Scalar | None = None, max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, PPO2 form (`specs/reft.md` §8; the paper's printed formula is garbled).

    Equation: V^clip = clip(V_θ, V_old − ε, V_old + ε), ℓ_t = max((V_θ − R̂)², (V^clip − R̂)²),
    loss = 0.5 · aggregate(ℓ). `clip_eps=None` uses the unclipped square only.

    Args:
        values: (B, T) V_θ(s_t), with gradient; old_values: (B, T) values at rollout time.
        returns: (B, T) R̂ from `gae`; response_mask: (B, T) 0/1.
        clip_eps: value clip range, or None. agg, num_seqs, num_tokens, max_len: see `aggregate`.
    Returns:
        loss and metrics `value/clipfrac` (share of valid tokens where the clipped square is larger),
        `value/mse` (masked mean of the unclipped square).
    """
    valid = response_mask != 0
    target = torch.where(valid, returns, 0.0)
    unclipped = (torch.where(valid, values, 0.0) - target) ** 2  # (B, T)
    if clip_eps is None:
        loss_mat = unclipped
        clipfrac = torch.zeros((), device=values.device)
    else:
        old = torch.where(valid, old_values, 0.0)
        v_clip = old + torch.clamp(values - old, -clip_eps, clip_eps)
        clipped = (torch.where(valid, v_clip, 0.0) - target) ** 2
        loss_mat = torch.max(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), response_mask)
    counts = {"num_seqs": num_seqs, "num_tokens": num_tokens, "max_len": max_len}
    loss = 0.5 * aggregate(loss_mat, response_mask, mode=agg, **counts)
    metrics = {"value/clipfrac": clipfrac.detach(), "value/mse": masked_mean(unclipped, response_mask).detach()}
    return loss, metrics


# Rows of logits one chunk of the per-token helpers below covers: ~16 MB of float32 whatever the vocabulary, so
# their float32 working copies stay small (SmolLM2's (32, 64, 49152) response logits are 400 MB in float32).
LOGIT_CHUNK_ELEMENTS = 1 << 22


def _chunks(logits: torch.Tensor, chunk_size: int | None) -> list[tuple[int, int]]:
    """[start, end) rows of dim 0 per chunk: `chunk_size` rows, or as many as fit `LOGIT_CHUNK_ELEMENTS`."""
    rows = logits.shape[0]
    per_row = max(1, logits[:1].numel())
    size = chunk_size or max(1, LOGIT_CHUNK_ELEMENTS // per_row)
    return [(s, min(rows, s + size)) for s in range(0, rows, size)]


def entropy_from_logits(logits: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of the softmax at each position: H = logsumexp(z) − Σ_v softmax(z)_v z_v.

    Args:
        logits: (B, T, V) or (N, V), any float dtype. chunk_size: rows of dim 0 per chunk (default: ~16 MB of
            float32 each), which bounds the float32 working copy.
    Returns:
        (B, T) or (N,) entropy in float32.
    """
    out = []
    for start, end in _chunks(logits, chunk_size):
        z = logits[start:end].float()
        out.append(torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1))
    return torch.cat(out, dim=0)


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, *, chunk_size: int | None = None
) -> torch.Tensor:
    """log softmax(z)[y] = z_y − logsumexp(z) in float32, for logits of any float dtype, with no (B, T, V) tensor
    besides the logits and, in the backward pass, their gradient.

    Why not `z.float().gather(...) - z.float().logsumexp(-1)`: autograd then keeps the float32 copy of the logits
    for the backward pass and builds four more logits-sized tensors there (softmax, its product with the
    gradient, the gather's zero-filled scatter, their sum) plus the cast back: for SmolLM2's 49k vocabulary, 68 MB
    each at 350 SFT positions and 400 MB each for a GRPO micro-batch of 32 x 64 responses (on a CPU, freshly
    allocated pages also fault in one by one). `_TokenLogProbs` computes the same numbers chunk by chunk
    (`LOGIT_CHUNK_ELEMENTS`) and writes the gradient once, in the logits' dtype. Measured (SmolLM2, bf16-mixed, GRPO
    8 x 4 x 64, 2 CPU threads): train phase 5.89 -> 4.76 s per iteration, peak RSS 9.2 -> 7.0 GB.

    Args:
        logits: (B, T, V) or (N, V), already aligned with `labels` (logits of position p score token p + 1).
        labels: (B, T) or (N,) token ids; every entry must be a valid id (mask afterwards, not before).
        chunk_size: rows of dim 0 per chunk (default: ~16 MB of float32 each).
    Returns:
        log-probs shaped like `labels`, in float32.
    """
    return _TokenLogProbs.apply(logits, labels, chunk_size)


class _TokenLogProbs(torch.autograd.Function):
    """z_y − logsumexp(z) with the gradient g·(onehot(y) − softmax(z)), both computed in float32 per chunk."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        chunks = _chunks(logits, chunk_size)
        lse = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
        for start, end in chunks:
            lse[start:end] = torch.logsumexp(logits[start:end].float(), dim=-1)  # a chunk-sized float32 copy
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunks = chunks
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = grad.float()
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for start, end in ctx.chunks:
            g = grad[start:end].unsqueeze(-1)
            softmax = (logits[start:end] - lse[start:end].unsqueeze(-1)).exp_()  # float32 (lse is)
            softmax.mul_(-g).scatter_add_(-1, labels[start:end].unsqueeze(-1), g)  # g·(onehot − softmax)
            out[start:end] = softmax
        return out, None, None


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var[R̂ − V] / Var[R̂] over valid tokens (cleanrl's debug metric); perfect values give 1.

    Args:
        values, returns, mask: (B, T).
    Returns:
        detached scalar. Deviation: 0 when Var[R̂] = 0 (cleanrl returns NaN), so logs stay finite.
    """
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    ratio = var_residual / torch.where(var_returns > 0, var_returns, 1.0)
    return torch.where(var_returns > 0, 1.0 - ratio, 0.0).detach()
