"""The rollout role: turn prompts into sampled responses.

Every engine (HF on CPU, vLLM on GPU, a Ray group of either) implements `RolloutEngine`; the loop never
knows which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch

from rlft.types import RolloutBatch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        n: samples per prompt (a group).
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        max_new_tokens: response budget in tokens.
        logprobs: also return the sampler's log-prob of each generated token.
        stop_token_ids: tokens that end a response besides the engine's EOS; like EOS, the stop token is
            kept in the response and its mask.
        min_new_tokens: EOS and stop tokens are masked out of the sampler's distribution until a response
            is this long (benchmarks use it to make every response exactly max_new_tokens long).
        seed: seed of this call's sampling; None draws from torch's global RNG, so `torch.manual_seed`
            makes every engine reproducible.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0
    seed: int | None = None


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        """Sample `params.n` responses for each prompt (unpadded token id lists)."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with the learner's."""
        ...

    def close(self) -> None:
        """Release what the engine holds (memory, processes); a no-op for an engine on a shared module."""
        ...

    def state_dict(self) -> dict:
        """Sampling state kept outside this process (remote engines' RNGs), for exact resume; {} in-process,
        where the loop's checkpoint already holds torch's RNG."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        ...
