"""Batch records passed between roles, with the shape of every field.

Vocabulary (used everywhere in rlft):
    prompt    the input tokens          response  the generated tokens
    sequence  prompt + response         sample    one response
    group     the samples of one prompt score     the scalar from the reward function
    rewards   the per-token tensor after `ppo.shape_rewards`

Shapes: B = samples in the batch, P = padded prompt length (left-padded), T = padded response length
(right-padded), S = P + T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """What a rollout engine returns.

    Attributes:
        prompt_ids: (B, P) left-padded prompt tokens, repeated once per sample.
        prompt_mask: (B, P) 1 on real prompt tokens.
        response_ids: (B, T) generated tokens, right-padded with the pad id.
        response_mask: (B, T) 1 up to and including the EOS token (or to the end if truncated).
        rollout_logprobs: (B, T) log-prob of each sampled token under the sampler's (processed)
            distribution; 0 on masked positions. None if not requested.
        prompt_index: (B,) index of the prompt each sample answers (samples of a group are adjacent).
        truncated: (B,) bool, True if no EOS was produced within the budget.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    rollout_logprobs: torch.Tensor | None
    prompt_index: torch.Tensor
    truncated: torch.Tensor

    def __len__(self) -> int:
        return self.response_ids.shape[0]


    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The samples `rows` ((k,) indices or a (B,) bool mask), with `prompt_index` kept as it is."""
        return RolloutBatch(self.prompt_ids[rows], self.prompt_mask[rows], self.response_ids[rows],
                            self.response_mask[rows],
                            None if self.rollout_logprobs is None else self.rollout_logprobs[rows],
                            self.prompt_index[rows], self.truncated[rows])


def _pad_to(x: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra == 0:
        return x
    return torch.nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)


def concat_batches(chunks: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several, re-padding prompts (left) and responses (right) to common widths."""
    P = max(c.prompt_ids.shape[1] for c in chunks)
    T = max(c.response_ids.shape[1] for c in chunks)
    cat = torch.cat
    return RolloutBatch(
        prompt_ids=cat([_pad_to(c.prompt_ids, P, pad_id, True) for c in chunks]),
        prompt_mask=cat([_pad_to(c.prompt_mask, P, 0, True) for c in chunks]),
        response_ids=cat([_pad_to(c.response_ids, T, pad_id, False) for c in chunks]),
        response_mask=cat([_pad_to(c.response_mask, T, 0, False) for c in chunks]),
        rollout_logprobs=None if chunks[0].rollout_logprobs is None
        else cat([_pad_to(c.rollout_logprobs, T, 0.0, False) for c in chunks]),
        prompt_index=cat([c.prompt_index for c in chunks]),
        truncated=cat([c.truncated for c in chunks]),
    )


# Fields of a `TrainBatch` that travel to the learners in micro-batches, in this order.
_LEARNER_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "advantages", "old_logprobs",
                   "old_values", "returns", "ref_logprobs", "scores", "z_anchor", "z_anchor_diff", "lcs_gen_in")


@dataclass
class TrainBatch:
    """One iteration's training data, filled phase by phase by the loop (`rlft/trainers/ppo.py`).

    Always present (step 1-2): the rollout's `prompt_ids` (B, P), `prompt_mask` (B, P), `response_ids` (B, T),
    `response_mask` (B, T) and the `scores` (B,).

    Optional, each None unless the plan needs it:
        old_logprobs: (B, T) the policy's teacher-forced log-probs before the update (step 3). None only
            when one on-policy step makes them equal the current ones (`needs_old_logprobs`): the loss then
            uses its own detached log-probs.
        old_values: (B, T) the value model's values before the update (step 3): algorithms with a value head
            or a separate critic.
        ref_logprobs: (B, T) the frozen reference's log-probs (step 3), when the KL coefficient is > 0.
        advantages: (B, T) from step 4; 0 at masked positions.
        returns: (B, T) GAE returns (step 4), the value loss's target: algorithms with a value head.
        z_anchor: (B, D) CARFT: the pooled embedding of each sample's annotated CoT (the anchor phase).
        z_anchor_diff: (B, D) CARFT with `carft.negative=lcs`: the anchor pooled outside the LCS.
        lcs_gen_in: (B, P + T) CARFT with `carft.negative=lcs`: 1 on sequence positions inside the LCS.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    scores: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    z_anchor: torch.Tensor | None = None
    z_anchor_diff: torch.Tensor | None = None
    lcs_gen_in: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def sequences(self) -> dict[str, torch.Tensor]:
        """The four rollout tensors, as the learners' teacher-forced passes take them."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "response_ids": self.response_ids,
                "response_mask": self.response_mask}

    def micro_batches(self, rows: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
        """The present fields of `rows` in micro-batches of `size`, with the sequence's `input_ids` (b, P + T)
        and `attention_mask` (b, P + T) the learner forwards."""
        present = {k: getattr(self, k) for k in _LEARNER_FIELDS if getattr(self, k) is not None}
        out = []
        for start in range(0, len(rows), size):
            mb = {k: v[rows[start:start + size]] for k, v in present.items()}
            mb["input_ids"] = torch.cat([mb["prompt_ids"], mb["response_ids"]], dim=1)
            mb["attention_mask"] = torch.cat([mb["prompt_mask"], mb["response_mask"]], dim=1)
            out.append(mb)
        return out
