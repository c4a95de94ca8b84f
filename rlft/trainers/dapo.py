"""DAPO's dynamic sampling in the loop's sample phase (Yu et al. 2025, §3.2; verl recipe `filter_groups`).

`refill_groups` keeps the groups whose scores are not all equal (`rlft.algos.dapo.groups_with_signal`) and
asks for further rounds of other questions until `prompts_per_step` groups carry signal, at most
`dapo.max_sample_rounds` rounds in all. If the rounds run out, groups without signal fill the batch (their
advantages are 0, so they change no gradient) and the batch keeps its geometry, which the Ray learners'
even split needs; verl stops with an error there instead. The overlong shaping and filtering are two lines
of the loop, keyed on the row (`rlft/trainers/ppo.py`).
"""

from __future__ import annotations

from typing import Callable

import torch

from rlft.algos import dapo
from rlft.tasks.base import Record
from rlft.types import RolloutBatch, concat_batches

Round = tuple[RolloutBatch, list[Record], torch.Tensor]  # rollout, the record of each sample, scores (B,)


def refill_groups(first: Round, another_round: Callable[[int], Round], *, group_size: int, groups: int,
                  max_rounds: int, pad_id: int, metrics: dict) -> Round:
    """`groups` groups of `group_size` samples, those with signal first (in round order), then the fill-up.

    Args:
        first: the iteration's first round.
        another_round: samples and scores round r (1, 2, ...) of other questions.
        group_size: G. groups: groups wanted (`rollout.prompts_per_step`). max_rounds: rounds at most.
        pad_id: the tokenizer's pad id (rounds are re-padded to common widths).
        metrics: gets `rollout/groups_with_signal_frac` (of the first round) and `rollout/sample_rounds`.
    Returns:
        the rollout (its `prompt_index` renumbered 0..groups-1, a group's samples adjacent), the record of
        each sample and the scores.
    """
    rounds = [first]
    kept = int(dapo.groups_with_signal(first[2], group_size=group_size).sum())
    metrics["rollout/groups_with_signal_frac"] = kept / groups
    while kept < groups and len(rounds) < max_rounds:
        rounds.append(another_round(len(rounds)))
        kept += int(dapo.groups_with_signal(rounds[-1][2], group_size=group_size).sum())
    metrics["rollout/sample_rounds"] = float(len(rounds))
    signal = [dapo.keep_rows(dapo.groups_with_signal(s, group_size=group_size), group_size=group_size)
              for _, _, s in rounds]  # (B,) bool per round
    chunks = [(r, keep) for r, keep in zip(rounds, signal)] + [(r, ~keep) for r, keep in zip(rounds, signal)]
    parts, owners, scores, rows_left = [], [], [], groups * group_size
    for (rollout, round_owners, round_scores), keep in chunks:
        rows = keep.nonzero().flatten()[:rows_left]  # whole groups: rows_left stays a multiple of G
        if len(rows):
            parts.append(rollout.select(rows))
            owners += [round_owners[i] for i in rows.tolist()]
            scores.append(round_scores[rows])
            rows_left -= len(rows)
    batch = concat_batches(parts, pad_id)
    batch.prompt_index = torch.arange(groups).repeat_interleave(group_size)
    return batch, owners, torch.cat(scores)
