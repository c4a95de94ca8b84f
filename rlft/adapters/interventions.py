"""Intervention modules: Φ maps a hidden state to its edited value, row-vector form (h: (..., d)).

| module      | Φ                                             | parameters                    | count        |
|-------------|-----------------------------------------------|-------------------------------|--------------|
| LoReFT      | h + (hWᵀ + b − hRᵀ) R                         | R, W ∈ ℝ^{r×d}, b ∈ ℝ^r       | 2rd + r      |
| DiReFT      | h + (hW₁ᵀ + b) W₂                             | W₁, W₂ ∈ ℝ^{r×d}, b ∈ ℝ^r     | 2rd + r      |
| ScaleBias   | s ⊙ u + β  (RED / BREP, on a component u)     | s, β ∈ ℝ^{d_c}                | 2 d_c        |
| BaFT        | h + ((hWᵀ + b − hRᵀ) ⊙ σ(hAᵀ + c)) R          | LoReFT + A ∈ ℝ^{r×d}, c ∈ ℝ^r | 3rd + 2r     |
| GatedLoReFT | h + σ(g(h)) · (hWᵀ + b − hRᵀ) R  (GRUN)       | LoReFT + g = Linear(d, 1)     | 2rd + r + d + 1 |

Sources: LoReFT and DiReFT are Eq. 2 and 3 of Wu et al., "ReFT: Representation Finetuning for Language
Models" (NeurIPS 2024); pyreft calls the paper's DiReFT `NodireftIntervention`. BREP's released code
(`LiangThree/BREP`, `model.py`) scales and shifts `mlp.up_proj`'s output. GRUN (Ren et al., ACL Findings
2025) gates LoReFT with one sigmoid per token. BaFT (Liu et al., ICLR 2025) is **reconstructed** from its
abstract: the paper's exact scorer and its locality / load-balancing losses are not implemented.

Every module starts as the identity (LoReFT-based: W = R, b = 0; DiReFT: W₂ = 0; ScaleBias: s = 1, β = 0),
so a fresh adapter leaves the policy unchanged and PPO's KL to the adapter-off reference starts at 0.
Master weights stay fp32 and Φ is computed in fp32 (the hook casts back), as pyreft's bf16 default cost
4e-4 in the logits. There is no dropout: it would break PPO's first ratio (spec §10.7).

R's rows stay orthonormal by a QR retraction after every optimizer step and R never gets weight decay:
torch's orthogonal parametrisation multiplies by the integer-cast diagonal of the stored matrix, so any
weight decay turns R into exactly 0 after one step (spec §10.1, tested).
"""

from __future__ import annotations

import torch
from torch import nn


def random_orthonormal_rows(rank: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rank, dim) with orthonormal rows: the Q factor of a Gaussian matrix."""
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=generator))  # (dim, rank)
    return q.T.contiguous()


@torch.no_grad()
def retract_rows(R: torch.Tensor) -> None:
    """Replace R (r, d) in place by the nearest matrix with orthonormal rows (QR, signs fixed by diag)."""
    q, upper = torch.linalg.qr(R.T.float())  # (d, r), (r, r)
    signs = torch.sign(torch.diagonal(upper))
    signs[signs == 0] = 1.0
    R.copy_((q * signs).T.to(R.dtype))


def orthonormality_error(R: torch.Tensor) -> torch.Tensor:
    """‖R Rᵀ − I‖_∞ (max abs entry)."""
    eye = torch.eye(R.shape[0], device=R.device, dtype=R.dtype)
    return (R @ R.T - eye).abs().max()


class LoReFT(nn.Module):
    """Φ(h) = h + (hWᵀ + b − hRᵀ) R: move the r coordinates R h to W h + b, leave the complement alone."""

    def __init__(self, dim: int, rank: int, generator: torch.Generator):
        super().__init__()
        R = random_orthonormal_rows(rank, dim, generator)
        self.R = nn.Parameter(R)  # (r, d), orthonormal rows
        self.W = nn.Parameter(R.clone())  # (r, d); W = R, b = 0 is the identity
        self.b = nn.Parameter(torch.zeros(rank))  # (r,)

    def target_minus_current(self, h: torch.Tensor) -> torch.Tensor:
        """(..., r): W h + b − R h, the move in subspace coordinates."""
        return h @ self.W.T + self.b - h @ self.R.T

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.target_minus_current(h) @ self.R  # (..., d)

    def param_groups(self, weight_decay: float) -> list[dict]:
        # R never decays: it lives on the orthonormal manifold (retracted after each step)
        return [{"params": [self.R], "weight_decay": 0.0},
                {"params": [p for n, p in self.named_parameters() if n != "R"], "weight_decay": weight_decay}]

    def after_optimizer_step(self) -> None:
        if self.R.grad is not None:  # a frozen R (HEFT's LoRA stage) stays bit-identical
            retract_rows(self.R)

    def metrics(self) -> dict[str, float]:
        return {"orthonormality_error": float(orthonormality_error(self.R.detach()))}


class BaFT(LoReFT):
    """[reconstructed] Φ(h) = h + ((hWᵀ + b − hRᵀ) ⊙ σ(hAᵀ + c)) R: each basis row r_i of R gets an
    input-dependent weight s_i(h) = σ(a_iᵀh + c_i) ∈ [0, 1]; s ≡ 1 recovers LoReFT.

    A = 0, c = 0 at init (every basis weighted 0.5; still the identity since W = R, b = 0).
    """

    def __init__(self, dim: int, rank: int, generator: torch.Generator):
        super().__init__(dim, rank, generator)
        self.A = nn.Parameter(torch.zeros(rank, dim))  # (r, d)
        self.c = nn.Parameter(torch.zeros(rank))  # (r,)

    def basis_weights(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.A.T + self.c)  # (..., r)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + (self.target_minus_current(h) * self.basis_weights(h)) @ self.R


class GatedLoReFT(LoReFT):
    """GRUN's gated ReFT: Φ(h) = h + σ(g(h)) · (hWᵀ + b − hRᵀ) R, one scalar gate per token, g = Linear(d, 1).

    The gate starts at g = 0 (σ = 0.5). GRUN trains it with a BCE on forget/retain labels; rlft has no
    such labels in math RL, so here the gate learns from the task loss only.
    """

    def __init__(self, dim: int, rank: int, generator: torch.Generator):
        super().__init__(dim, rank, generator)
        self.gate = nn.Linear(dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.sigmoid(self.gate(h)) * (self.target_minus_current(h) @ self.R)


class DiReFT(nn.Module):
    """Φ(h) = h + (hW₁ᵀ + b) W₂: LoRA-like on hidden states, no orthogonality (faster to train than LoReFT)."""

    def __init__(self, dim: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.W1 = nn.Parameter(random_orthonormal_rows(rank, dim, generator))  # (r, d)
        self.W2 = nn.Parameter(torch.zeros(rank, dim))  # (r, d); 0 is the identity
        self.b = nn.Parameter(torch.zeros(rank))  # (r,)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + (h @ self.W1.T + self.b) @ self.W2

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(self.parameters()), "weight_decay": weight_decay}]

    def after_optimizer_step(self) -> None:
        pass  # no constraint

    def metrics(self) -> dict[str, float]:
        return {}


class ScaleBias(nn.Module):
    """RED / BREP: u' = s ⊙ u + β on a component's output u ∈ ℝ^{d_c} (BREP: mlp.up_proj).

    BREP bounds the bias, because a large β disturbs the numbers encoded in hidden states. After each
    optimizer step β ← β · min(1, τ / ‖β‖₂) (projection onto the L2 ball; `bias_bound` = τ, 0 = off). s
    never decays towards 0 (that would switch the MLP off); β takes the configured weight decay.
    """

    def __init__(self, dim: int, bias_bound: float = 0.0):
        super().__init__()
        self.s = nn.Parameter(torch.ones(dim))  # (d_c,)
        self.beta = nn.Parameter(torch.zeros(dim))  # (d_c,)
        self.bias_bound = bias_bound

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.s + self.beta

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": [self.s], "weight_decay": 0.0}, {"params": [self.beta], "weight_decay": weight_decay}]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.bias_bound > 0:
            norm = self.beta.norm()
            if norm > self.bias_bound:
                self.beta.mul_(self.bias_bound / norm)

    def metrics(self) -> dict[str, float]:
        return {"bias_norm": float(self.beta.detach().norm())}


INTERVENTIONS = {"loreft": LoReFT, "direft": DiReFT, "baft": BaFT, "gated": GatedLoReFT}
