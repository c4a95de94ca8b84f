"""Which tokens a hook-based adapter edits: one rule for sampling and for teacher-forced recomputation.

Every rule is a function of the *absolute, unpadded* token index j of a row and its real prompt length P
(`specs/adapters.md` §3.2). A forward chunk covers columns [T_f - T_c, T_f) of the full left-padded
layout, where T_c is the chunk length (the prompt at prefill, 1 token per cached decode step, the whole
sequence when teacher forcing) and T_f the width of the 2-D attention mask. So j = column - pad_left, and
the same token gets the same edit whichever way it is computed. Nothing here reads `cache_position`,
per-call counters or "is this the prefill?" guesses: those are what made pyvene's per-chunk rule edit every
decoded token in sampling but not in recomputation (§4).

Layout: a left-padded prompt followed by the response (rollout, PPO), or an unpadded prompt followed by a
right-padded target (SFT); both are described by `PositionMeta`. A packed forward (`rlft/models/packing.py`)
runs the real tokens of such a layout as one row: `PositionMeta.packed_index` says where each came from, and
the edits are those of the padded layout at those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

RuleName = Literal["prefix", "suffix", "prefix_suffix", "last_prompt", "prompt_plus_first_n", "response_first_n", "all"]


@dataclass(frozen=True)
class PositionMeta:
    """Per-row layout of a batch.

    Attributes:
        pad_left: (B,) pads before the first real token, counted from the prompt's *attention mask*, never
            from `token == pad_id` (pad is often EOS).
        prompt_len: (B,) real prompt tokens.
        packed_index: (N,) for a packed forward (one row of N tokens): each token's flat index b * packed_width
            + column in the padded (B, packed_width) layout above; None for a padded forward.
        packed_width: the padded layout's width when packed.
    """

    pad_left: torch.Tensor
    prompt_len: torch.Tensor
    packed_index: torch.Tensor | None = None
    packed_width: int = 0

    @classmethod
    def from_prompt_mask(cls, prompt_mask: torch.Tensor) -> PositionMeta:
        """Left-padded prompts (B, P), as the rollout engine and the PPO batches hold them."""
        pad_left = (prompt_mask.long().cumsum(dim=1) == 0).sum(dim=1)  # (B,) leading zeros
        return cls(pad_left=pad_left, prompt_len=prompt_mask.long().sum(dim=1))

    @classmethod
    def unpadded_prompt(cls, prompt_len: torch.Tensor) -> PositionMeta:
        """Prompts that start at column 0 (SFT's right-padded prompt + target rows)."""
        prompt_len = prompt_len.long()
        return cls(pad_left=torch.zeros_like(prompt_len), prompt_len=prompt_len)

    def real_index(self, columns: torch.Tensor) -> torch.Tensor:
        """(B, T_c) absolute unpadded index of each column; pads get negative values."""
        return columns.unsqueeze(0) - self.pad_left.to(columns.device).unsqueeze(1)


def positions_for_batch(batch: dict) -> PositionMeta | None:
    """The layout of a learner micro-batch: PPO batches carry `prompt_mask`, SFT batches `prompt_len`."""
    if "prompt_mask" in batch:
        return PositionMeta.from_prompt_mask(batch["prompt_mask"])
    if "prompt_len" in batch:
        return PositionMeta.unpadded_prompt(batch["prompt_len"])
    return None


@dataclass(frozen=True)
class PositionRule:
    """A set of edited positions. `first`/`last` serve prefix/suffix, `n` the generated-token rules.

    Rules (P = prompt length, j = unpadded index):
        prefix: j < min(first, P // 2)            suffix: P - min(last, P // 2) <= j < P
        prefix_suffix: their union (pyreft's f+l; the clamp keeps both sides apart on short prompts)
        last_prompt: j = P - 1                    prompt_plus_first_n: 0 <= j < P + n (BREP)
        response_first_n: P <= j < P + n          all: every j >= 0
    """

    name: RuleName
    first: int = 0
    last: int = 0
    n: int = 0

    def mask(self, real: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        """(B, T_c) bool: which of the chunk's tokens are edited. real: (B, T_c); prompt_len: (B,)."""
        P = prompt_len.to(real.device).unsqueeze(1)  # (B, 1)
        real_token = real >= 0
        if self.name in ("prefix", "suffix", "prefix_suffix"):
            f_hat = torch.clamp(P // 2, max=self.first) if self.name != "suffix" else torch.zeros_like(P)
            l_hat = torch.clamp(P // 2, max=self.last) if self.name != "prefix" else torch.zeros_like(P)
            return real_token & ((real < f_hat) | ((real >= P - l_hat) & (real < P)))
        if self.name == "last_prompt":
            return real == P - 1
        if self.name == "prompt_plus_first_n":
            return real_token & (real < P + self.n)
        if self.name == "response_first_n":
            return (real >= P) & (real < P + self.n)
        if self.name == "all":
            return real_token
        raise ValueError(f"unknown position rule {self.name!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "first": self.first, "last": self.last, "n": self.n}


def rules_for(positions: str, *, first: int, last: int, generated: int, tied: bool) -> list[PositionRule]:
    """The rules of one layer's interventions: one, or two for untied prefix_suffix (prefix, then suffix)."""
    if positions == "prefix_suffix":
        if tied:
            return [PositionRule("prefix_suffix", first=first, last=last)]
        return [PositionRule("prefix", first=first), PositionRule("suffix", last=last)]
    if positions in ("prompt_plus_first_n", "response_first_n"):
        return [PositionRule(positions, n=generated)]
    return [PositionRule(positions)]
