"""Single-process torch learner: AdamW, warm-up + linear/constant schedule, accumulation, clipping.

A step whose gradient norm is not finite is skipped (weights and optimizer state untouched) and counted
in `train/skipped_step`, so one bad batch cannot poison a long run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from rlft.learner.base import LossFn, MicroBatch


def lr_lambda(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    remaining = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - (step - warmup_steps) / remaining)


class TorchLearner:
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        total_steps: int = 1,
        warmup_steps: int = 0,
        schedule: str = "linear",
        train_mode: bool = True,
    ):
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.train_mode = train_mode  # ReFT trains in eval mode (dropout off); SFT in train mode
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule),
        )

    def forward(self, micro_batch: MicroBatch):
        return self.model(input_ids=micro_batch["input_ids"], attention_mask=micro_batch["attention_mask"], use_cache=False)

    def train_step(self, micro_batches: list[MicroBatch], loss_fn: LossFn) -> dict[str, float]:
        self.model.train(self.train_mode)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for mb in micro_batches:
            loss, metrics = loss_fn(self.forward(mb), mb)
            loss.backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        totals["train/grad_norm"] = grad_norm
        totals["train/lr"] = self.scheduler.get_last_lr()[0]
        if math.isfinite(grad_norm):
            self.optimizer.step()
            totals["train/skipped_step"] = 0.0
        else:
            totals["train/skipped_step"] = 1.0
        self.scheduler.step()  # the schedule advances either way, so resumed runs stay aligned
        self.optimizer.zero_grad(set_to_none=True)
        return totals

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.model.named_parameters()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path / "model", safe_serialization=True)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, path / "optim.pt")

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = {}
        for f in sorted((path / "model").glob("*.safetensors")):
            state.update(load_file(str(f)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        # Tied embeddings are stored once; anything else missing means the checkpoint does not match.
        missing = [m for m in missing if "lm_head" not in m]
        if missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        opt = torch.load(path / "optim.pt", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
