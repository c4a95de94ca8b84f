"""Best-of-k selection at inference: keep the highest-scoring sample of each question's group.

ReFT §4 (arXiv 2401.08967, "Reranking") samples k solutions per question and keeps the one a reranker
scores highest. The paper's reranker is a separately trained correctness classifier (`specs/reft.md`
§12); `rlft eval --rerank value` scores with the ReFT/CARFT value head instead (no extra model to train).
This module holds only the selection rule; the scores come from the caller.

Scores are (B,) with B = n_groups · G and the G samples of a question stored contiguously (sample i
belongs to group i // G), as in `advantages`.
"""

from __future__ import annotations

import torch


def select(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Row of the highest-scoring sample in each group (ties: the first of them).

    A NaN score ranks below every number, so one diverged value cannot win a group; a group of NaNs
    picks its first sample.

    Args:
        scores: (B,) one score per sample, groups contiguous.
        group_size: G >= 1 samples per group; B must be a multiple of G.
    Returns:
        (n_groups,) int64 row indices into the batch (B coordinates; `rows % G` is the index within the group).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"scores must be (B,) with B a multiple of {group_size}, got {tuple(scores.shape)}")
    s = scores.reshape(-1, group_size)  # (n_groups, G)
    s = torch.where(torch.isnan(s), torch.full_like(s, -torch.inf), s)
    # torch.argmax returns the first maximal index, which is the tie rule we document
    best = s.argmax(dim=1)  # (n_groups,)
    return best + torch.arange(s.shape[0], device=s.device) * group_size
