"""Single-process torch learner: AdamW, warm-up + linear/constant schedule, accumulation, clipping.

A step whose gradient norm is not finite is skipped (weights and optimizer state untouched) and counted
in `train/skipped_step`, so one bad batch cannot poison a long run.

Device and precision: the model sits on its device already (`rlft/utils/device.py`); every micro-batch is moved
there at the learner's entry (`train_step`, `logprobs_and_values`) and log-probs / values come back on the CPU.
Under `model.precision=bf16-mixed` the `PolicyModel` autocasts its forwards while the parameters, their gradients
and AdamW's moments stay fp32 (master weights).

The optimizer covers what the policy's adapter trains (`PolicyModel.param_groups`: the whole model for
full finetuning, adapter parameters otherwise, with per-adapter groups such as LoReFT's R without weight
decay) plus the heads; after every step the adapter restores its constraints (`after_optimizer_step`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from rlft.adapters.positions import PositionMeta, positions_for_batch
from rlft.algos import ppo
from rlft.algos.sft import labelled_positions
from rlft.learner.base import LossFn, MicroBatch, PoolFn, add_shares
from rlft.models.policy import ResponseOutput, response_output
from rlft.utils.device import module_device, to_device


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
        self.device = module_device(model)  # where micro-batches go
        self.max_grad_norm = max_grad_norm
        self.train_mode = train_mode  # ReFT trains in eval mode (dropout off); SFT in train mode
        groups = model.param_groups(weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8,
                                           fused=fused_adamw_supported(groups))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule),
        )

    def forward(self, micro_batch: MicroBatch):
        """`batch_forward` of the `PolicyModel`, under the batch's adapter positions."""
        return batch_forward(self.model, micro_batch, positions_for_batch(micro_batch))

    @torch.inference_mode()
    def logprobs_and_values(self, batch: MicroBatch, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced log-probs (B, T) of the response tokens and values (B, T), in eval mode."""
        self.model.eval()
        return response_logprobs_and_values(self.model, batch, micro_batch_size)

    @torch.no_grad()
    def pooled_embeddings(self, batch: MicroBatch, pool_fn: PoolFn, micro_batch_size: int) -> dict[str, torch.Tensor]:
        """Eval-mode forwards of `batch` in micro-batches, each reduced by `pool_fn` (`pooled_forward`)."""
        self.model.eval()
        return pooled_forward(self.model, batch, pool_fn, micro_batch_size)

    def train_step(self, micro_batches: list[MicroBatch], loss_fn: LossFn) -> dict[str, float]:
        self.model.set_learning_mode(self.train_mode)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for mb in micro_batches:
            mb = to_device(mb, self.device)  # the loss reads the micro-batch's tensors beside the output
            loss, metrics = loss_fn(self.forward(mb), mb)
            loss.backward()
            add_shares(totals, metrics)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_gradients(params, self.max_grad_norm)
        totals["train/grad_norm"] = grad_norm
        totals["train/lr"] = self.scheduler.get_last_lr()[0]
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.model.adapter.after_optimizer_step()  # R retraction, bias bound
            totals["train/skipped_step"] = 0.0
        else:
            totals["train/skipped_step"] = 1.0
        self.scheduler.step()  # the schedule advances either way, so resumed runs stay aligned
        self.optimizer.zero_grad(set_to_none=True)
        totals.update(self.model.adapter.metrics())
        return totals

    def set_value_only(self, flag: bool) -> None:
        """Value warm-up: train the value head only (the backbone runs without autograd)."""
        self.model.value_only = flag

    def num_trainable(self) -> int:
        """Parameters the optimizer can update (adapter, or the whole model, plus heads)."""
        return sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The language model's parameters under their HF names (what a rollout engine loads)."""
        yield from self.model.lm.named_parameters()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path / "model")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, path / "optim.pt")

    def load(self, path: str | Path) -> None:
        path = Path(path)
        self.model.load_weights(path / "model")
        opt = torch.load(path / "optim.pt", weights_only=False, map_location="cpu")  # moved to the params' device
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])


def batch_forward(model, micro_batch: MicroBatch, positions: PositionMeta | None):
    """A training forward of `model` (a `PolicyModel`, or a DeepSpeed engine around one): for an RL batch
    (prompt + response) a `ResponseOutput` (logits and values aligned to the response tokens); for an SFT
    batch (`labels`) logits (N, V) of the N positions that score a label (`sft_loss` takes either shape);
    for any other batch the whole `PolicyOutput`."""
    if "labels" in micro_batch:
        return model(micro_batch["input_ids"], micro_batch["attention_mask"], positions,
                     logits_mask=labelled_positions(micro_batch["labels"]))
    if "response_ids" in micro_batch:
        return rl_forward(model, micro_batch, positions)
    return model(micro_batch["input_ids"], micro_batch["attention_mask"], positions)


def sequence_batch(batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P+T) ids and attention mask of left-padded prompts followed by right-padded responses."""
    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["response_mask"]], dim=1)
    return ids, mask


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """`clip_grad_norm_` (max_norm <= 0: no clipping): the gradients' total norm, the gradients scaled to
    `max_norm` when it is larger. The scaling pass is skipped when it would multiply by 1 (torch's function
    always runs it, to spare a GPU a host sync that this loop makes anyway to log the norm): one read and
    write of every gradient less on a step that is not clipped (for SmolLM2-135M's 540 MB of fp32 gradients
    about 40 ms on a 2-core CPU, from its measured bandwidth; the benchmark runs clipped every step)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    norm = float(total)  # one host sync
    if max_norm > 0 and norm + 1e-6 > max_norm:  # torch's scale max_norm / (norm + 1e-6), capped at 1
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return norm


def fused_adamw_supported(groups: list[dict]) -> bool:
    """torch's fused AdamW (one kernel over all tensors) applies: floating-point parameters on CPU or CUDA.

    Why: measured on SmolLM2-135M with 2 CPU threads, the default (foreach) AdamW step takes 0.40 s and the
    fused one 0.08 s, ~6 % of a GRPO iteration; results agree to float rounding (tested).
    """
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def pooled_forward(model, batch: MicroBatch, pool_fn: PoolFn, micro_batch_size: int) -> dict[str, torch.Tensor]:
    """Forward `batch` (`input_ids`, `attention_mask` and the layout `positions_for_batch` reads) in chunks of
    `micro_batch_size` on the model's device, reduce each whole output with `pool_fn(output, chunk)` at once
    (only the pooled rows are kept: (b, D) instead of (b, S, D)) and concatenate each name's rows, returned on
    the CPU (what the loop keeps; a Ray actor returns them as they are)."""
    device = module_device(model)
    pooled: dict[str, list[torch.Tensor]] = {}
    for start in range(0, batch["input_ids"].shape[0], micro_batch_size):
        mb = to_device({k: v[start:start + micro_batch_size] for k, v in batch.items()}, device)
        output = model(mb["input_ids"], mb["attention_mask"], positions_for_batch(mb))
        for name, rows in pool_fn(output, mb).items():
            pooled.setdefault(name, []).append(rows)
    return {name: torch.cat(rows).cpu() for name, rows in pooled.items()}  # to host


def rl_forward_sizes(batch: MicroBatch) -> tuple[int, int]:
    """(logits_to_keep, prompt_len) for `PolicyModel`: (T + 1, P) for an RL batch (prompt + response, no SFT
    labels), else (0, 0): all positions, no shared prompts."""
    if "response_ids" in batch and "labels" not in batch:
        return batch["response_ids"].shape[1] + 1, batch["prompt_ids"].shape[1]
    return 0, 0


def rl_forward(model, batch: MicroBatch, positions: PositionMeta | None) -> ResponseOutput:
    """Forward a prompt + response batch (`input_ids` = prompt then response) on the T + 1 positions that
    score the response (sharing prompts where the model can), aligned to the response tokens."""
    keep, prompt_len = rl_forward_sizes(batch)
    output = model(batch["input_ids"], batch["attention_mask"], positions, logits_to_keep=keep, prompt_len=prompt_len)
    return response_output(output, prompt_len, batch["response_ids"].shape[1])


def response_forward(model: torch.nn.Module, batch: MicroBatch):
    """Forward a prompt+response batch; returns logits (B, T, V) and values (B, T) or None, response-aligned."""
    ids, mask = sequence_batch(batch)
    out = rl_forward(model, {**batch, "input_ids": ids, "attention_mask": mask},
                     PositionMeta.from_prompt_mask(batch["prompt_mask"]))
    return out.logits, out.values


def response_logprobs_and_values(model, batch: MicroBatch, micro_batch_size: int):
    """`response_forward` in chunks of `micro_batch_size` on the model's device, keeping only log-probs and
    values: (B, T) each, returned on the CPU (what the loop keeps; a Ray actor returns them as they are)."""
    device = module_device(model)
    logprobs, values = [], []
    n = batch["response_ids"].shape[0]
    for start in range(0, n, micro_batch_size):
        mb = to_device({k: v[start:start + micro_batch_size] for k, v in batch.items()}, device)
        logits, vals = response_forward(model, mb)
        logprobs.append(ppo.logprobs_from_logits(logits, mb["response_ids"]))
        values.append(vals)
    mask = batch["response_mask"].to(device)
    lp = torch.cat(logprobs) * mask
    vs = None if values[0] is None else torch.cat(values) * mask
    return lp.cpu(), None if vs is None else vs.cpu()  # to host: the loop's bookkeeping is on the CPU
