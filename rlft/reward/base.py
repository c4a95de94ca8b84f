"""The reward role's protocol."""

from __future__ import annotations

from typing import Protocol

import torch

from rlft.tasks.base import Record


class Reward(Protocol):
    def score(self, texts: list[str], records: list[Record], truncated: torch.Tensor,
              completion_ids: list[list[int]] | None = None) -> tuple[torch.Tensor, dict]:
        """Scores (B,) of decoded responses to `records` (one record per response) and metrics
        (`reward/failed`: responses whose reward call failed and were scored 0). `completion_ids`: each
        response's tokens through EOS (TRL's reward argument), when the caller has them."""
        ...
