"""The reference role: the frozen warm-up policy, used only through `logprobs` (`Reference` in `base.py`).

- `FrozenReference`: a frozen copy of the warm-up model (`adapter.kind=full`).
- `AdapterReference`: the policy itself with its adapter switched off (any other adapter): no second copy.

Both run on their model's device (the frozen copy's is `run.device`, or the CPU with `kl.reference_device=cpu`)
and return log-probs on the CPU (`response_logprobs_and_values`).
"""

from __future__ import annotations

import torch

from rlft.learner.torch_learner import response_logprobs_and_values
from rlft.models.policy import PolicyModel


class FrozenReference:
    """The warm-up policy, frozen: teacher-forced log-probs only."""

    def __init__(self, lm: torch.nn.Module, prefix_sharing: bool = True, mixed_precision: bool = False,
                 packing: bool | str = False, compile: bool = False):
        """`lm` on its device, in its weight dtype (`model.dtype`: a bf16 copy under bf16-mixed by default);
        `mixed_precision`: its forwards autocast to bf16, as the policy's do; `packing`: `ppo.packing`;
        `compile`: `model.compile`."""
        self.model = PolicyModel(lm, prefix_sharing=prefix_sharing, mixed_precision=mixed_precision,
                                 packing=packing, packing_key="ppo.packing", compile=compile).eval()
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
        return response_logprobs_and_values(self.model, batch, micro_batch_size)[0]


class AdapterReference:
    """The policy with its adapter switched off, or, for a run that continues an adapter checkpoint, set
    back to the weights it started from (`specs/adapters.md` §11.4). Adapters start as the identity, so
    adapter-off is exactly the warm-up and the first KL is 0."""

    def __init__(self, model: PolicyModel, start_state: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.start_state = start_state

    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
        adapter = self.model.adapter
        switch = adapter.disabled() if self.start_state is None else adapter.using(self.start_state)
        was_training = self.model.training
        self.model.eval()
        try:
            with switch, torch.inference_mode():
                return response_logprobs_and_values(self.model, batch, micro_batch_size)[0]
        finally:
            self.model.train(was_training)


