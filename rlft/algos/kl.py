"""KL estimators and KL-coefficient controllers (`specs/reft.md` §4.2 and §19.2–19.3).

`kl_penalty` gives Schulman's k1/k2/k3 per token ("Approximating KL Divergence", 2020). Where it is used
decides what it means:
- in the reward (ReFT, PPO-RLHF, REINFORCE++): pass `old_logprobs` and `ref_logprobs`, kind "k1", and
  hand the result to `ppo.shape_rewards`; so kl_t = log π_old − log π_ref (`specs/reft.md` §4.2);
- in the loss (GRPO): pass the current `logprobs` with gradient, kind "k2" or "k3" (k1 as a loss has
  zero expected gradient; `validate()` rejects it), and aggregate with `ppo.aggregate`.

The controllers hold β. ReFT uses a fixed β; the adaptive rule is Ziegler et al. 2019 as in OpenRLHF's
`kl_controller.py`. Both expose `state_dict()` / `load_state_dict()` so that a resumed run continues
with the β it stopped at.

Deviations: no clamp by default (OpenRLHF clamps every estimate to [−10, 10]; pass `clamp=10.0` for
that). k3 is evaluated as expm1(−d) + d for accuracy near d = 0.
"""

from __future__ import annotations

import torch


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, kind: str = "k1", clamp: float | None = None
) -> torch.Tensor:
    """Per-token KL estimate from the log-probs of the sampled tokens (Schulman 2020).

    Equation, with d_t = logprobs_t − ref_logprobs_t (samples drawn from the first distribution):
        k1 = d                     unbiased for KL(π‖π_ref), can be negative
        k2 = ½ d²                  biased, >= 0
        k3 = exp(−d) − 1 + d       unbiased, >= 0

    Args:
        logprobs: (B, T) log π(y_t | s_t) of the sampling policy (π_old in the reward, π_θ in the loss).
        ref_logprobs: (B, T) log π_ref(y_t | s_t).
        kind: "k1", "k2" or "k3".
        clamp: if set, clamp the estimate to [−clamp, clamp] (OpenRLHF uses 10).
    Returns:
        (B, T) per-token estimate; masked positions are meaningless (the caller masks).
    """
    d = logprobs - ref_logprobs  # (B, T)
    if kind == "k1":
        kl = d
    elif kind == "k2":
        kl = 0.5 * d**2
    elif kind == "k3":
        kl = torch.expm1(-d) + d
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")
    if clamp is not None:
        kl = kl.clamp(min=-clamp, max=clamp)
    return kl


class FixedKLController:
    """A constant β (ReFT: 0.05 for N-CoT, 0.01 for P-CoT; `specs/reft.md` §4.2)."""

    def __init__(self, *, kl_coef: float) -> None:
        """Args: kl_coef: β."""
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; kept so the loop can call every controller the same way."""

    def state_dict(self) -> dict[str, float]:
        """Returns {"value": β}."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore β from `state_dict()` output."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional β controller (Ziegler et al. 2019, §2.2; OpenRLHF `AdaptiveKLController`).

    Equation: e = clip(KL_obs / KL_target − 1, −0.2, 0.2),  β ← β · (1 + e · n_steps / horizon).
    """

    def __init__(self, *, init_kl_coef: float, target: float, horizon: float) -> None:
        """Args: init_kl_coef: initial β; target: KL_target (nats per sequence, as observed);
        horizon: number of samples over which the error is corrected."""
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be positive")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β toward the target.

        Args:
            current_kl: the observed KL, already reduced to a Python float by the caller.
            n_steps: samples (sequences) seen since the last update.
        """
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Returns {"value": β}; target and horizon come from the config."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore β from `state_dict()` output."""
        self.value = float(state["value"])
