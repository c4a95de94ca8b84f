"""DeepSpeed ZeRO learner: one data-parallel rank of a `Learner` (the only module importing deepspeed).

Each rank owns a shard of every minibatch: RL batches (prompt + response) and SFT batches (`labels`), the
same forwards as `TorchLearner` (`batch_forward`). The loss contract of `rlft/learner/base.py` (losses already
normalised by minibatch-global counts) means the right gradient is the *sum* over micro-batches and
ranks. DeepSpeed averages gradients over the data-parallel world, so each micro-batch's loss is scaled
by the world size, and gradient accumulation is left to us (`managed_gradient_accumulation: false`):
`train_step` may see any number of micro-batches and every `engine.step()` is one optimizer step.

ZeRO stage and offload come from the JSON file named by `cluster.deepspeed_config`; rlft fills in what it
owns (batch sizes, AdamW + its hyperparameters, clipping, the lr schedule, and precision: `bf16.enabled` from
`model.precision`, DeepSpeed's own mixed precision with a bf16 module and fp32 master weights in the
optimizer), so one file works for every run. Batches move to the rank's device at `train_step` /
`logprobs_and_values`; results come back on the CPU. `"torch_adam": true` uses torch's AdamW (no compiled op,
the same maths as `TorchLearner`).

Losses that contrast rows across ranks (CARFT's in-batch negatives) get `gather_other_ranks` with the RL
output (`ResponseOutput.gather_ranks`). SFT micro-batches (the warm-up, online self-training) come to each
rank as a block of whole micro-batches; a rank whose block is short runs `padding` zero-loss copies.

Non-finite losses: ZeRO-1/2 skip a step whose gradients overflow, ZeRO-3 in fp32 does not. So the ranks
agree (one all-reduce per micro-batch) whether any loss was non-finite; if so the remaining micro-batches
back-propagate zero, and the optimizer step runs with lr 0: weights unchanged, logged as
`train/skipped_step` like the torch learner (AdamW's moment estimates still decay by one step).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Iterator

import deepspeed
import torch
import torch.distributed as dist

from rlft.learner.base import LossFn, MicroBatch, PoolFn, add_shares
from rlft.learner.torch_learner import batch_forward, lr_lambda, pooled_forward, response_logprobs_and_values
from rlft.utils.device import module_device, to_device


def load_deepspeed_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"cluster.deepspeed_config: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def build_engine_config(base: dict, *, lr: float, weight_decay: float, max_grad_norm: float, world_size: int,
                        bf16: bool = False) -> dict:
    """The user's ZeRO settings plus what rlft owns (`bf16`: the precision `deepspeed_bf16` resolved)."""
    cfg = copy.deepcopy(base)
    cfg.update({
        "train_micro_batch_size_per_gpu": 1,  # nominal: rlft feeds micro-batches itself
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "managed_gradient_accumulation": False,  # every engine.step() is one optimizer step
        "gradient_clipping": max_grad_norm if max_grad_norm > 0 else 0.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999],
                                                   "eps": 1e-8, "torch_adam": True}},
        "steps_per_print": 10**9,
        "bf16": {**(cfg.get("bf16") or {}), "enabled": bf16},
    })
    cfg.pop("scheduler", None)
    return cfg


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (a collective: every rank must call it)."""
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _zero_loss(output) -> torch.Tensor:
    """0, with a (zero) gradient path through every output the backward of a real loss would reach."""
    values = getattr(output, "values", None)
    return output.logits.float().sum() * 0.0 + (0.0 if values is None else values.sum() * 0.0)


def collective_device() -> torch.device:
    """Where a small tensor for a collective must live: NCCL takes CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_other_ranks(rows: torch.Tensor) -> torch.Tensor:
    """The other ranks' `rows`: (n, ...) on every rank -> ((world - 1) * n, ...) in rank order, detached.

    A collective (every rank calls it, with the same shape: the Ray learner group gives every rank micro-batches
    of the same sizes). `torch.distributed.all_gather` carries no gradient, as in the CARFT reference, whose
    in-batch negatives from other GPUs come from it (`specs/carft.md` §4)."""
    local = rows.detach().to(collective_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    rank = dist.get_rank()
    return torch.cat(parts[:rank] + parts[rank + 1:]).to(rows.device)


class DeepSpeedLearner:
    """One rank; `torch.distributed` must already be initialised (the Ray learner group does it)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        ds_config: dict,
        lr: float,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        total_steps: int = 1,
        warmup_steps: int = 0,
        schedule: str = "linear",
        train_mode: bool = True,
        bf16: bool = False,
    ):
        """`bf16`: DeepSpeed's bf16 mode (`rlft.utils.device.deepspeed_bf16` of `model.precision`)."""
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.train_mode = train_mode
        self.model = model  # the PolicyModel (DeepSpeed wraps it; its parameters may be partitioned)
        if self.world_size > 1:  # shared prompts: the same module calls on every rank
            model.agree_across_ranks = any_rank
        config = build_engine_config(ds_config, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                                     world_size=self.world_size, bf16=bf16)
        self.zero_stage = config.get("zero_optimization", {}).get("stage", 0)
        schedule_fn = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
            optimizer, lambda s: lr_lambda(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config,
            lr_scheduler=schedule_fn, dist_init_required=False,
        )
        self.device = module_device(model)  # where DeepSpeed put the module: micro-batches go there

    # -- compute -----------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: ZeRO-3 would keep gathered (persistent) params as inference tensors
    def logprobs_and_values(self, batch: MicroBatch, micro_batch_size: int):
        self.engine.eval()
        return response_logprobs_and_values(self.engine, batch, micro_batch_size)  # on self.device, back on the CPU

    @torch.no_grad()
    def pooled_embeddings(self, batch: MicroBatch, pool_fn: PoolFn, micro_batch_size: int) -> dict[str, torch.Tensor]:
        """This rank's rows (on the CPU); every rank must run as many micro-batches (ZeRO-3 gathers per module
        call)."""
        self.engine.eval()
        return pooled_forward(self.engine, batch, pool_fn, micro_batch_size)

    def train_step(self, micro_batches: list[MicroBatch], loss_fn: LossFn, *, padding: int = 0) -> dict[str, float]:
        """This rank's share of one minibatch; every rank must pass the same number of micro-batches. The last
        `padding` of them only keep this rank in step with the others (a group whose micro-batches do not
        split evenly across ranks): forward and backward with zero loss, no metrics."""
        self.engine.train(self.train_mode)
        self.model.set_learning_mode(self.train_mode)  # gradient checkpointing in eval mode
        totals: dict[str, float] = {}
        bad = False
        for i, mb in enumerate(micro_batches):
            mb = to_device(mb, self.device)  # batches come from the driver on the CPU
            output = batch_forward(self.engine, mb, None)
            if self.world_size > 1 and "labels" not in mb and "response_ids" in mb:  # losses that contrast
                output = output._replace(gather_ranks=gather_other_ranks)  # rows across ranks (CARFT)
            pad = i >= len(micro_batches) - padding
            loss, metrics = (_zero_loss(output), {}) if pad else loss_fn(output, mb)
            bad = any_rank(bad or not bool(torch.isfinite(loss.detach())))  # all ranks agree before backward
            if bad:  # keep the collectives of ZeRO's backward in step across ranks, with zero gradient
                loss = _zero_loss(output)
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            add_shares(totals, metrics)
        lr = self.scheduler.get_last_lr()[0]
        if bad:
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0  # the scheduler's step below restores the scheduled value
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float("nan") if grad_norm is None else float(grad_norm)
        skipped = bad or not math.isfinite(grad_norm) or getattr(self.engine, "skipped_steps", 0) > getattr(self, "_skipped_seen", 0)
        self._skipped_seen = getattr(self.engine, "skipped_steps", 0)
        totals.update({"train/grad_norm": grad_norm, "train/lr": lr, "train/skipped_step": float(skipped)})
        return totals

    def set_value_only(self, flag: bool) -> None:
        self.model.value_only = flag

    def num_trainable(self) -> int:
        """Trainable parameters of the whole model (ZeRO-3 partitions tensors; `ds_numel` is the full size)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.model.parameters() if p.requires_grad)

    # -- weights and checkpoints ---------------------------------------------------------------------

    def _gathered(self, params: list[torch.nn.Parameter]):
        """Full parameters on every rank (ZeRO-3 partitions them; other stages hold them whole)."""
        if self.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        from contextlib import nullcontext

        return nullcontext()

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The language model's full parameters (a collective under ZeRO-3: call on every rank)."""
        named = list(self.model.lm.named_parameters())
        with self._gathered([p for _, p in named]):
            gathered = [(n, p.detach().clone()) for n, p in named]
        yield from gathered

    def save(self, path: str | Path) -> None:
        """Collective. DeepSpeed's sharded state under `path/deepspeed` (exact resume) and, from rank 0,
        the HF-format model under `path/model`."""
        path = Path(path)
        self.engine.save_checkpoint(str(path / "deepspeed"), tag="state")
        with self._gathered(list(self.model.parameters())):
            if self.rank == 0:
                self.model.save_pretrained(path / "model")
        dist.barrier()

    def load(self, path: str | Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(Path(path) / "deepspeed"), tag="state",
                                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise FileNotFoundError(f"{path}/deepspeed: no DeepSpeed checkpoint to resume from")
