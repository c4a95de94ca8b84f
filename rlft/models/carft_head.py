"""CARFT's value head with a 64-d bottleneck whose pre-ReLU output is the token embedding (carft.md §1).

    e_t = W_p · dropout(h_t) + b_p   in R^64   (the token embedding, taken BEFORE the ReLU)
    V_t = w_v · ReLU(e_t) + b_v      in R      (the PPO value)

It replaces ReFT's `Linear(hidden, 1)` and shares the backbone. Both linears keep PyTorch's default
init, as in the reference. Dropout defaults to 0 (the reference inherits trl's 0.1, active during its
PPO forward; `carft.head_dropout` exists only for replication).
"""

from __future__ import annotations

import torch


class CARFTHead(torch.nn.Module):
    def __init__(self, hidden_size: int, proj_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.proj = torch.nn.Linear(hidden_size, proj_dim)
        self.value = torch.nn.Linear(proj_dim, 1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, S, H) -> values (B, S) float32, embeddings (B, S, proj_dim) pre-ReLU."""
        e = self.proj(self.dropout(hidden.to(self.proj.weight.dtype)))  # (B, S, D)
        v = self.value(torch.relu(e)).squeeze(-1)  # (B, S)
        return v.float(), e
