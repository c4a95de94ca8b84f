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
