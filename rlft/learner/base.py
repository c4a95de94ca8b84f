"""The learner role (after verl's `workers/engine/base.py`).

The learner owns *how* to train (micro-batching, gradient accumulation, clipping, the optimizer and
schedule, sharding); the loop owns *what* the loss is and passes it in as `loss_fn`. So a DeepSpeed
learner can drop in without knowing any algorithm.

Loss contract: `train_step` sums the gradients of `loss_fn` over the micro-batches of one minibatch and
takes one optimizer step. `loss_fn` must therefore already be normalised by minibatch-global counts
(tokens or sequences of the whole minibatch, passed in the micro-batch), which makes the result
independent of how the minibatch is split into micro-batches or ranks.

Metrics, one rule everywhere: every metric a `loss_fn` returns is its micro-batch's additive share of the
minibatch value (a minibatch mean times the micro-batch's share of it), so learners sum them over
micro-batches (`add_shares`) and a data-parallel group sums them over ranks (`combine_ranks`). A
learner's own step metrics (`STEP_METRICS`: gradient norm, lr, skipped step) are the same on every rank
and taken once.

Collectives belong to the learner: a loss that needs rows of the other data-parallel ranks (CARFT's
in-batch negatives, `specs/carft.md` §4) calls the all-gather the learner hands it with the RL output
(`ResponseOutput.gather_ranks`; None on one rank), so the loss itself stays free of torch.distributed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch


class DivergedError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient (`ppo.max_consecutive_skipped_steps`).
    The message says how many; the loop adds the last checkpoint and how to resume."""


MicroBatch = dict[str, torch.Tensor]
# loss_fn(model_output, micro_batch) -> (scalar loss, {metric name: detached scalar tensor})
LossFn = Callable[[object, MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
# pool_fn(model_output, micro_batch) -> {name: (b, ...) tensor}, reduced on the learner (CARFT's pooled embeddings)
PoolFn = Callable[[object, MicroBatch], dict[str, torch.Tensor]]


# Metrics of a learner's optimizer step: equal on every rank, never summed.
STEP_METRICS = ("train/grad_norm", "train/lr", "train/skipped_step")


def add_shares(totals: dict[str, float], metrics: dict) -> None:
    """Sum one micro-batch's metric shares into `totals` (in place)."""
    for k, v in metrics.items():
        totals[k] = totals.get(k, 0.0) + float(v)


def combine_ranks(results: list[dict[str, float]]) -> dict[str, float]:
    """One minibatch's metrics from the results of its ranks: shares summed, step metrics from rank 0."""
    out = {k: v for k, v in results[0].items() if k in STEP_METRICS}
    for result in results:
        add_shares(out, {k: v for k, v in result.items() if k not in STEP_METRICS})
    return out


class Learner(Protocol):
    def train_step(self, micro_batches: list[MicroBatch], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over a minibatch given as micro-batches. Returns metrics incl. grad norm."""
        ...

    def logprobs_and_values(self, batch: MicroBatch, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced response log-probs (B, T) and values (B, T) or None, in eval mode, no grad."""
        ...

    def pooled_embeddings(self, batch: MicroBatch, pool_fn: PoolFn, micro_batch_size: int) -> dict[str, torch.Tensor]:
        """No-grad, eval-mode forwards of `batch` (`input_ids`, `attention_mask`, plus `prompt_mask` or `prompt_len`)
        in micro-batches, each output reduced at once by `pool_fn` (whole `PolicyOutput`: logits, values,
        embeddings); the rows (B, ...) of each name, concatenated in batch order. CARFT's anchor pass."""
        ...

    def set_value_only(self, flag: bool) -> None:
        """While set, only the value head receives gradients (value warm-up)."""
        ...

    def num_trainable(self) -> int:
        """Parameters the optimizer updates (an adapter's, or the whole model's, plus heads)."""
        ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (gathered) parameters, for weight sync and HF export."""
        ...

    def save(self, path: str | Path) -> None:
        """Write model (HF format), optimizer and scheduler state under `path`."""
        ...

    def load(self, path: str | Path) -> None:
        """Restore what `save` wrote (exact resume)."""
        ...


class Reference(Protocol):
    """The frozen warm-up policy (a learner used only for log-probs)."""

    def logprobs(self, batch: MicroBatch, micro_batch_size: int) -> torch.Tensor:
        """Teacher-forced response log-probs (B, T), no grad."""
        ...
