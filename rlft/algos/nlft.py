"""Natural Language Fine-Tuning (NLFT; Liu et al. 2024, arXiv 2412.20382): saliency tokens and the token-weighted
loss, as tensors in and out. The equations, every constant and the test vectors: `docs/nlft.md`.

Each training item is a response of the model to a question and a verdict on it. Its response tokens y_t are
scored under three prompts (the caller runs the forwards, response tokens aligned across them):

    p_b(t) = p(y_t | question, y_<t)                 the base prompt (carries the gradient)
    p_j(t) = p(y_t | question + judgment, y_<t)       negatives only (the judge-conditioned sequence)
    p_c(t) = p(y_t | question + reference, y_<t)      no gradient

A negative response's *salient* tokens are those the model finds likelier when told the response is bad and
than with the reference in view: p_j/p_b > r and p_j/p_c > r and p_j > p_min (`salient_tokens`). They get an
unlikelihood term -w log(1 - p_b), weighted by 2 sigmoid(p_j/p_b - c); the other tokens keep a likelihood
term -sqrt(p_c) log p_b, or weight 0 when more than `max_salient_frac` of the response is salient or when the
token lies in a salient token's hidden-state neighbourhood (`neighbourhood`). A positive response's tokens get
-w log p_b with w = 1 + ((p_c - 0.95)/0.05)^5 where p_c > 0.95, (p_c/0.95)^0.3 in those tokens'
neighbourhoods and (p_c/0.95)^0.6 elsewhere. Every item adds the NLL of its judge-conditioned sequence
(the base sequence for a positive). Per sequence: loss_scale * (NLL + term), both token means.

Departures from the reference code (`Julia-LiuJ/NLFT`, `modeling_llama_unlikelihood_dynamic_correct.py`):
- the NLL of a negative is taken on the judge-conditioned sequence's own response tokens; the reference
  scores the base sequence's label positions against the judge sequence's probabilities (lines 177-184), which
  misaligns them by the prompts' length difference;
- per sequence throughout: the reference's saliency fraction, neighbourhood walk and branch between the
  positive and the negative loss run over the flattened micro-batch (lines 186-206, 313-359), which is per
  sequence only at its `micro_batch_size 1`;
- log-probabilities come from log-softmax, and log(1 - p_b) is floored at log(1e-5) (the reference adds 1e-5
  to probabilities that are exactly 0, lines 291, 416).
The neighbourhood rule is implemented as the code has it: a neighbour joins while its cosine *distance* to the
running centre exceeds the threshold (the variable is called `similarity` there, lines 333-334).
"""

from __future__ import annotations

import math

import torch

# Exponents of the weights (reference lines 300-302, 411): fixed in the code, no options there either.
POSITIVE_CONFIDENT_POWER = 5.0
POSITIVE_NEIGHBOUR_POWER = 0.3
POSITIVE_OTHER_POWER = 0.6
NEGATIVE_OTHER_POWER = 0.5
LOG_FLOOR = math.log(1e-5)  # log(1 - p_b) of a salient token with p_b ~ 1


def salient_tokens(logp_base: torch.Tensor, logp_judge: torch.Tensor, logp_correct: torch.Tensor,
                   response_mask: torch.Tensor, *, ratio_threshold: float = 1.5,
                   min_judge_prob: float = 0.01) -> torch.Tensor:
    """Tokens of a negative response that the judgment makes likelier than both the base and the reference
    prompts do (reference line 400): p_j / p_b > r and p_j / p_c > r and p_j > p_min.

    Args:
        logp_base, logp_judge, logp_correct: (B, T) log-probs of the response tokens under the three prompts.
        response_mask: (B, T) 1 on response tokens.
    Returns:
        (B, T) bool, False on masked positions.
    """
    log_r = math.log(ratio_threshold)
    salient = (logp_judge - logp_base > log_r) & (logp_judge - logp_correct > log_r) \
        & (logp_judge > math.log(min_judge_prob))
    return salient & response_mask.bool()


def confident_tokens(logp_correct: torch.Tensor, response_mask: torch.Tensor, *,
                     correct_threshold: float = 0.95) -> torch.Tensor:
    """Tokens of a positive response that the reference prompt predicts with p_c > threshold (line 294).

    Returns:
        (B, T) bool, False on masked positions.
    """
    return (logp_correct > math.log(correct_threshold)) & response_mask.bool()


def neighbourhood(hidden: torch.Tensor, seeds: torch.Tensor, response_mask: torch.Tensor, *,
                  min_distance: float = 0.4) -> torch.Tensor:
    """The seeds plus the response tokens that the reference's `token_cluster` (lines 313-359) adds around them.

    From each seed the walk goes left, then right, within its sequence's response tokens. A neighbour joins
    while its cosine distance to the running centre exceeds `min_distance`; each joiner moves the centre to
    (centre + h) / 2, and the right walk starts from the centre the left walk left. The first neighbour that
    does not join ends the walk in that direction. Seeds walk independently; the result is the union.

    Args:
        hidden: (B, T, D) the last hidden state at the positions that predict each response token (the base
            sequence's), detached.
        seeds: (B, T) bool, the salient (negatives) or confident (positives) tokens.
        response_mask: (B, T) 1 on response tokens (a right-padded response: a prefix of each row).
    Returns:
        (B, T) bool.
    """
    B, T, _ = hidden.shape
    h = hidden.float()
    rows, cols = seeds.nonzero(as_tuple=True)  # (S,) one walk per seed
    out = seeds.clone()
    centre = h[rows, cols]  # (S, D)
    mask = response_mask.bool()
    for direction in (-1, 1):
        active = torch.ones_like(rows, dtype=torch.bool)  # (S,)
        for k in range(1, T):
            pos = cols + direction * k  # (S,)
            inside = (pos >= 0) & (pos < T)
            pos = pos.clamp(0, T - 1)
            neighbour = h[rows, pos]  # (S, D)
            distance = 1.0 - torch.nn.functional.cosine_similarity(centre, neighbour, dim=-1)  # (S,)
            join = active & inside & mask[rows, pos] & (distance > min_distance)
            centre = torch.where(join[:, None], (centre + neighbour) / 2, centre)
            out[rows[join], pos[join]] = True
            active = join
            if not bool(active.any()):  # every walk in this direction has stopped (saves up to 2T steps)
                break
    return out


def negative_weights(logp_base: torch.Tensor, logp_judge: torch.Tensor, logp_correct: torch.Tensor,
                     salient: torch.Tensor, neighbours: torch.Tensor, response_mask: torch.Tensor, *,
                     sigmoid_center: float = 1.5, max_salient_frac: float = 0.06) -> torch.Tensor:
    """Token weights of a negative response (reference lines 408-419), detached.

    salient: 2 sigmoid(p_j / p_b - sigmoid_center); in a salient token's neighbourhood: 0; elsewhere sqrt(p_c),
    or 0 when the response's salient fraction exceeds `max_salient_frac`.

    Args:
        logp_base, logp_judge, logp_correct: (B, T) log-probs under the three prompts.
        salient: (B, T) bool from `salient_tokens`; neighbours: (B, T) bool from `neighbourhood` (incl. seeds).
        response_mask: (B, T).
    Returns:
        (B, T) weights, 0 on masked positions.
    """
    mask = response_mask.float()
    ratio = torch.exp(logp_judge - logp_base).detach()  # (B, T) p_j / p_b
    frac = (salient.float() * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    other = torch.exp(NEGATIVE_OTHER_POWER * logp_correct).detach()  # sqrt(p_c)
    other = torch.where((frac > max_salient_frac)[:, None] | neighbours, torch.zeros_like(other), other)
    weights = torch.where(salient, 2.0 * torch.sigmoid(ratio - sigmoid_center), other)
    return weights * mask


def positive_weights(logp_correct: torch.Tensor, confident: torch.Tensor, neighbours: torch.Tensor,
                     response_mask: torch.Tensor, *, correct_threshold: float = 0.95) -> torch.Tensor:
    """Token weights of a positive response (reference lines 300-307), detached.

    confident (p_c > threshold): 1 + ((p_c - threshold) / (1 - threshold))^5; in a confident token's
    neighbourhood: (p_c / threshold)^0.3; elsewhere (p_c / threshold)^0.6.

    Returns:
        (B, T) weights, 0 on masked positions.
    """
    p_c = torch.exp(logp_correct).detach()  # (B, T)
    log_rel = logp_correct.detach() - math.log(correct_threshold)  # log(p_c / threshold)
    weights = torch.where(neighbours, torch.exp(POSITIVE_NEIGHBOUR_POWER * log_rel),
                          torch.exp(POSITIVE_OTHER_POWER * log_rel))
    boost = 1.0 + ((p_c - correct_threshold).clamp(min=0) / (1.0 - correct_threshold)) ** POSITIVE_CONFIDENT_POWER
    return torch.where(confident, boost, weights) * response_mask.float()


def token_log_terms(logp_base: torch.Tensor, unlikely: torch.Tensor) -> torch.Tensor:
    """log p_b, or log(1 - p_b) (floored at log 1e-5) where `unlikely`; (B, T), differentiable."""
    log_not = torch.log1p(-torch.exp(logp_base).clamp(max=1.0 - 1e-5))  # (B, T)
    return torch.where(unlikely, log_not, logp_base)


def sequence_losses(logp_base: torch.Tensor, logp_judge: torch.Tensor, logp_correct: torch.Tensor,
                    hidden: torch.Tensor | None, response_mask: torch.Tensor, negative: torch.Tensor, *,
                    ratio_threshold: float = 1.5, min_judge_prob: float = 0.01, sigmoid_center: float = 1.5,
                    max_salient_frac: float = 0.06, correct_threshold: float = 0.95,
                    neighbour_distance: float | None = 0.4, loss_scale: float = 10.0
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NLFT's loss of each sequence: loss_scale * (NLL_judge + term), both means over its response tokens.

    term = -mean_t w_t log p_b(t) for a positive (`positive_weights`) and -mean_t w_t log q_t for a negative,
    q_t = 1 - p_b(t) on salient tokens and p_b(t) elsewhere (`negative_weights`). NLL_judge = -mean_t log p_j(t),
    the judge-conditioned sequence's NLL; a positive's judge sequence is its base sequence (reference lines
    520-526: the same prompt twice), so pass logp_judge = logp_base there.

    Args:
        logp_base: (B, T) log p_b of the response tokens, with gradient.
        logp_judge: (B, T) log p_j (negatives; = logp_base on positive rows), with gradient (the NLL term).
        logp_correct: (B, T) log p_c, no gradient needed.
        hidden: (B, T, D) the base sequence's last hidden states at the positions predicting each response
            token, or None when `neighbour_distance` is None (no neighbourhood rule).
        response_mask: (B, T).
        negative: (B,) bool, the response was judged wrong.
        neighbour_distance: `neighbourhood`'s min_distance; None turns the neighbourhood rule off.
    Returns:
        losses: (B,) per sequence, differentiable (aggregate them: the reference averages over sequences).
        metrics: means over the batch's tokens (detached): `nlft/salient_frac` (of negative tokens),
            `nlft/confident_frac` (of positive tokens), `nlft/neighbour_frac` (all tokens in a neighbourhood,
            seeds excluded), `nlft/zeroed_frac` (negatives whose salient fraction zeroed their other tokens),
            and per-sequence means `nlft/nll`, `nlft/term`.
    """
    mask = response_mask.float()
    n_tokens = mask.sum(-1).clamp(min=1)  # (B,)
    neg = negative.bool()[:, None] & response_mask.bool()  # (B, T)
    pos = ~negative.bool()[:, None] & response_mask.bool()
    salient = salient_tokens(logp_base.detach(), logp_judge.detach(), logp_correct, response_mask,
                             ratio_threshold=ratio_threshold, min_judge_prob=min_judge_prob) & neg
    confident = confident_tokens(logp_correct, response_mask, correct_threshold=correct_threshold) & pos
    seeds = salient | confident
    if neighbour_distance is None:
        neighbours = seeds
    else:
        neighbours = neighbourhood(hidden.detach(), seeds, response_mask, min_distance=neighbour_distance)
    w_neg = negative_weights(logp_base.detach(), logp_judge.detach(), logp_correct, salient, neighbours & neg,
                             response_mask, sigmoid_center=sigmoid_center, max_salient_frac=max_salient_frac)
    w_pos = positive_weights(logp_correct, confident, neighbours & pos, response_mask,
                             correct_threshold=correct_threshold)
    weights = torch.where(neg, w_neg, w_pos)  # (B, T)
    term = -(weights * token_log_terms(logp_base, salient) * mask).sum(-1) / n_tokens  # (B,)
    nll = -(logp_judge * mask).sum(-1) / n_tokens  # (B,)
    losses = loss_scale * (nll + term)
    frac = lambda x, of: (x & of).float().sum() / of.float().sum().clamp(min=1)  # noqa: E731
    seq_frac = (salient.float().sum(-1) / n_tokens)  # (B,)
    metrics = {
        "nlft/salient_frac": frac(salient, neg).detach(),
        "nlft/confident_frac": frac(confident, pos).detach(),
        "nlft/neighbour_frac": frac(neighbours & ~seeds, response_mask.bool()).detach(),
        "nlft/zeroed_frac": ((seq_frac > max_salient_frac) & negative.bool()).float().sum().detach()
        / negative.float().sum().clamp(min=1),
        "nlft/nll": nll.mean().detach(),
        "nlft/term": term.mean().detach(),
    }
    return losses, metrics
