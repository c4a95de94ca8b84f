"""SFT warm-up: next-token cross-entropy on the CoT tokens (and EOS) of (question, CoT) pairs.

Run it with `rlft sft configs/demo.yaml` (or `make demo`). One epoch = one pass over a fixed, shuffled
training set; each epoch ends with a held-out greedy evaluation and a resumable checkpoint
(`run.dir/checkpoints/ckpt-<step>`: HF model + tokenizer, optimizer, scheduler, RNG and data position).
An interrupted run started again with the same config continues from the last checkpoint and ends with
the same weights as an uninterrupted one (tested).

As in ReFT (spec §1/§2): prompt tokens are masked out of the loss, the target is the CoT followed by
`\\nTherefore, the answer is: X` and EOS; no BOS, no chat template. With `data.prompt_format=chat` the prompt
is the tokenizer's chat template and the target the assistant turn, labelled through the template's end of
turn (`rlft/tasks/chat.py`). The loss is a token mean over the
whole minibatch (normalised by the minibatch's label-token count, so micro-batching does not change it).
The early-epoch checkpoints of this run are ReFT's warm-up models.

With `adapter.kind` other than `full` the base model stays frozen and only the adapter trains
(`rlft/adapters/`); checkpoints then hold the adapter's files and name the base model. `brep` also
switches to BREP's truncated-prefix data (`truncate_targets`), and `heft` moves from its LoRA stage to
its LoReFT stage after `adapter.heft.lora_fraction` of the epochs.

The loop talks to a `Learner` (`rlft/learner/base.py`) built by `rlft/dist/local.py` `build_sft_learner`:
in-process a `TorchLearner` over the model it evaluates; with `cluster.backend=ray` the Ray learner group
that RL uses, `cluster.learner_ranks` DeepSpeed ZeRO ranks (or one torch rank), with the same optimizer and
schedule (`sft.*`). Each step's micro-batches are then split across the ranks; the driver keeps a copy of
the model for the held-out evaluation and gives it rank 0's weights before each; checkpoints add
DeepSpeed's sharded state (`ckpt-N/deepspeed`, exact resume) beside the same HF `model/` folder. Full
finetuning only on Ray (`config.validate` refuses adapters there).

Device and precision (`run.device`, `model.precision`: `rlft/utils/device.py`): in-process the model, its
learner and the evaluation engine share the run's `Compute`; on Ray each rank resolves its own on its bundle
(DeepSpeed's bf16 mode under bf16-mixed) and the driver's evaluation copy stays on the CPU (`driver_compute`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import torch

from rlft.algos import sft as sft_algo
from rlft.config import Config, SFTGeometry, derive_sft_geometry, to_dict
from rlft.dist.errors import WorkerLostError
from rlft.dist.local import build_sft_learner
from rlft.evaluate import evaluate_held_out
from rlft.learner.base import Learner
from rlft.models.card import write_model_card
from rlft.rollout.factory import hf_engine
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import (
    IGNORE,
    collate,
    encode_examples,
    epoch_order,
    truncate_targets,
)
from rlft.utils import checkpoint
from rlft.utils.device import driver_compute, resolve_compute
from rlft.utils.logging import MetricLogger, print0, progress, write_jsonl
from rlft.utils.seeding import rng_state, seed_everything, set_rng_state
from rlft.utils.trackers import open_trackers
from rlft.workspace import load_split, open_run_dir, prepare_model


def make_loss_fn(num_label_tokens: int):
    """Minibatch token-mean CE: each micro-batch contributes its CE sum / the minibatch's label count."""

    def loss_fn(output, mb):
        loss, metrics = sft_algo.sft_loss(output.logits, mb["labels"], num_tokens=num_label_tokens)
        # The learner sums metrics over micro-batches: weight this micro-batch's accuracy by its share.
        share = metrics["sft/n_tokens"] / num_label_tokens
        return loss, {"sft/loss": loss.detach(), "sft/token_acc": metrics["sft/token_acc"] * share}

    return loss_fn


def step_micro_batches(batch: list[dict], geo: SFTGeometry, pad_id: int) -> list[dict]:
    """One optimizer step's examples as micro-batches of near-equal size, at most
    `geo.micro_batch_size_per_device` each, and `geo.world_size` x as many as one rank needs of them: a Ray
    learner group gives rank r the r-th contiguous block (`RayLearnerGroup.train_step`)."""
    per_rank = math.ceil(len(batch) / geo.world_size)
    n = geo.world_size * math.ceil(per_rank / geo.micro_batch_size_per_device)
    bounds = [len(batch) * i // n for i in range(n + 1)]
    return [collate(batch[lo:hi], pad_id) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def run_sft(cfg: Config, *, stop_after_epoch: int | None = None, extra_examples: list[dict] | None = None) -> dict:
    """Train, evaluating and checkpointing every epoch. Returns the run summary (also in summary.json).

    `stop_after_epoch` ends the process's work early (as a kill would), for resume tests.
    `extra_examples` (`{"input_ids", "labels"}` dicts, e.g. offline self-training's correct samples) are
    appended to the encoded training set; for exact resume they must be the same on every call.
    """
    run_dir = open_run_dir(cfg)
    compute, driver = resolve_compute(cfg), driver_compute(cfg)  # the same in-process
    print0(f"rlft sft: {compute.describe()}" + (f" in every Ray learner rank; the driver's evaluation copy: "
                                               f"{driver.describe()}" if cfg.cluster.backend == "ray" else ""))
    seed_everything(cfg.run.seed)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    # The driver's model: the in-process learner trains it; on Ray it only evaluates (weights from rank 0).
    model, tokenizer, model_path, adapter = prepare_model(cfg, train, compute=driver)
    examples, n_truncated = encode_examples(tokenizer, train, cfg.data.style, cfg.sft.max_seq_tokens,
                                             fmt=PromptFormat.of(cfg.data))
    examples += extra_examples or []  # offline self-training: SFT on the union (spec §12)
    brep = cfg.adapter.brep
    if cfg.adapter.kind == "brep" and brep.train_prefix_tokens is not None:
        examples = truncate_targets(examples, prefix_tokens=brep.train_prefix_tokens,
                                    full_frac=brep.full_response_frac, seed=cfg.run.seed)

    ranks = cfg.cluster.learner_ranks if cfg.cluster.backend == "ray" else 1
    geo = derive_sft_geometry(cfg, ranks)
    steps_per_epoch = math.ceil(len(examples) / geo.sequences_per_step)
    total_steps = steps_per_epoch * cfg.sft.epochs
    learner, close = build_sft_learner(cfg, model, model_path, adapter, total_steps=total_steps,
                                       compute=compute)
    try:
        engine = hf_engine(cfg, model, tokenizer, adapter, batch_size=cfg.eval.batch_size, compute=driver)
        n_params = sum(p.numel() for p in model.parameters())
        extra = f" + {len(extra_examples)} extra examples" if extra_examples else ""
        where = (f"{ranks} {cfg.cluster.learner} learner rank(s) on Ray" if cfg.cluster.backend == "ray"
                 else "in this process")
        print0(f"rlft sft: {len(train)} train{extra} / {len(test)} test records, model {model_path} "
               f"({n_params / 1e6:.2f}M params, adapter {adapter.kind}: {learner.num_trainable():,} trainable), {where}")
        print0(f"  batch geometry: {geo.sequences_per_step} sequences/step = {ranks} rank(s) x {geo.grad_accum_steps} "
               f"micro-batches of <= {geo.micro_batch_size_per_device}; {steps_per_epoch} steps/epoch, {total_steps} steps total"
               + (f"; {n_truncated} examples truncated to {cfg.sft.max_seq_tokens} tokens" if n_truncated else ""))
        return _train_epochs(cfg, learner, engine=engine, tokenizer=tokenizer, adapter=adapter, examples=examples,
                             test=test, geo=geo, run_dir=run_dir, model_path=model_path,
                             stop_after_epoch=stop_after_epoch)
    except WorkerLostError as e:
        last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        where = f"last checkpoint: {last}; continue from it with run.resume=true" if last else "no checkpoint yet"
        raise WorkerLostError(f"{e}; the run stopped ({where})") from None
    finally:
        close()


def resume_epochs(cfg: Config, learner, run_dir: Path, state: dict) -> tuple[dict, MetricLogger]:
    """An epoch-based trainer's start (SFT, NLFT): with `run.resume`, the learner, `state` and the RNG from the
    latest checkpoint under `run_dir/checkpoints`; and the metric logger, continuing the resumed run's steps."""
    latest = checkpoint.latest_checkpoint(run_dir / "checkpoints") if cfg.run.resume else None
    if latest is not None:
        learner.load(latest)
        saved = torch.load(latest / "trainer_state.pt", weights_only=False)
        state = saved["state"]
        set_rng_state(saved["rng"])
        print0(f"  resumed from {latest} (epoch {state['epoch']}, step {state['step']})")
    logger = MetricLogger(run_dir, tensorboard=cfg.log.tensorboard, resume_step=state["step"] if latest else None,
                          trackers=open_trackers(cfg, run_dir, resume=latest is not None))
    return state, logger


def _train_epochs(cfg: Config, learner: Learner, *, engine, tokenizer, adapter, examples: list[dict], test: list,
                  geo: SFTGeometry, run_dir: Path, model_path, stop_after_epoch: int | None) -> dict:
    """The epochs (after resuming from the latest checkpoint): training steps, then per epoch the held-out
    evaluation (on `engine`, given the learner's weights first) and a checkpoint."""
    steps_per_epoch = math.ceil(len(examples) / geo.sequences_per_step)
    state = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_checkpoint": None, "history": [],
             "train_seconds": 0.0, "train_tokens": 0}
    ckpt_root = run_dir / "checkpoints"
    state, logger = resume_epochs(cfg, learner, run_dir, state)

    last_epoch = cfg.sft.epochs if stop_after_epoch is None else min(cfg.sft.epochs, stop_after_epoch)
    for epoch in range(state["epoch"], last_epoch):  # a resumed stopped run has nothing left to do
        adapter.set_progress(epoch, cfg.sft.epochs)  # HEFT's stage
        order = epoch_order(len(examples), cfg.run.seed, epoch)
        bar = progress(steps_per_epoch, desc=f"sft epoch {epoch + 1}/{cfg.sft.epochs}", enabled=cfg.log.progress,
                       every_seconds=cfg.log.progress_every_seconds)
        for i in range(steps_per_epoch):
            t0 = time.perf_counter()
            idx = order[i * geo.sequences_per_step:(i + 1) * geo.sequences_per_step]
            micro = step_micro_batches([examples[j] for j in idx], geo, tokenizer.pad_token_id)
            n_label = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro)
            metrics = learner.train_step(micro, make_loss_fn(n_label))
            dt = time.perf_counter() - t0
            n_tokens = sum(int(mb["attention_mask"].sum()) for mb in micro)
            state["step"] += 1
            state["train_seconds"] += dt
            state["train_tokens"] += n_tokens
            metrics.update({"train/tokens_per_s": n_tokens / dt, "train/epoch": epoch + (i + 1) / steps_per_epoch})
            bar.set_postfix(loss=f"{metrics['sft/loss']:.3f}", tok_s=f"{n_tokens / dt:.0f}")
            bar.update(1)
            if state["step"] % cfg.log.every_steps == 0 or i == steps_per_epoch - 1:
                logger.log(state["step"], metrics)
        bar.close()
        state["epoch"] = epoch + 1
        record = {"epoch": epoch + 1, "step": state["step"], "train_seconds": state["train_seconds"]}
        over_budget = cfg.sft.max_seconds is not None and state["train_seconds"] >= cfg.sft.max_seconds
        last = epoch + 1 == cfg.sft.epochs or over_budget
        if cfg.eval.every_epoch or last:
            engine.load_weights(learner.named_weights())  # from rank 0 on Ray; in-process the engine's own module
            summary, predictions = evaluate_held_out(cfg, engine, tokenizer, test)
            logger.log(state["step"], summary)
            record["accuracy"] = summary["eval/accuracy"]
            write_jsonl(run_dir / f"predictions_epoch{epoch + 1}.jsonl", predictions)
            print0(f"epoch {epoch + 1}: held-out accuracy {summary['eval/accuracy']:.3f} "
                   f"(mean score {summary['eval/mean_score']:.3f}, {summary['eval/n']} problems, "
                   f"train {state['train_seconds']:.0f}s, {state['train_tokens'] / max(state['train_seconds'], 1e-9):.0f} tok/s)")
        state["history"].append(record)
        if cfg.sft.save_every_epoch or last:
            path = save_epoch_checkpoint(learner, tokenizer, state, ckpt_root, record, cfg,
                                         method="offline_st" if cfg.algo == "offline_st" else "sft")
            record["checkpoint"] = str(path)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
        if cfg.sft.max_seconds is not None and state["train_seconds"] >= cfg.sft.max_seconds:
            print0(f"rlft sft: wall-time budget {cfg.sft.max_seconds:.0f}s reached after epoch {epoch + 1}")
            break
    logger.close()

    summary = {
        "model": str(model_path),
        "epochs_done": state["epoch"],
        "n_train": len(examples),
        "history": state["history"],
        "best_accuracy": state["best_accuracy"],
        "best_checkpoint": state["best_checkpoint"],
        "final_checkpoint": str(checkpoint.latest_checkpoint(ckpt_root) or ""),
        "train_seconds": state["train_seconds"],
        "train_tokens_per_s": state["train_tokens"] / max(state["train_seconds"], 1e-9),
        "adapter": adapter.kind,
        "trainable_params": learner.num_trainable(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_epoch_checkpoint(learner: Learner, tokenizer, state: dict, root: Path, record: dict, cfg: Config,
                          method: str) -> Path:
    """An epoch trainer's checkpoint `root/ckpt-<step>` (SFT, offline self-training, NLFT): the learner, the
    tokenizer and a model card (`method`) in `model/`, the trainer state and RNG; the best one so far is kept."""
    final = root / f"ckpt-{state['step']}"
    accuracy = record.get("accuracy", -1.0)
    if accuracy > state["best_accuracy"]:
        state["best_accuracy"], state["best_checkpoint"] = accuracy, str(final)
    tmp = checkpoint.begin(root, state["step"])
    learner.save(tmp)  # model/ (HF format) and the optimizer state (on Ray: every rank's DeepSpeed shards)
    tokenizer.save_pretrained(tmp / "model")  # each checkpoint's model/ is a complete HF folder, with its card
    write_model_card(tmp / "model", cfg, method=method, step=state["step"], accuracy=record.get("accuracy"))
    torch.save({"state": state, "rng": rng_state(), "config": to_dict(cfg)}, tmp / "trainer_state.pt")
    best = (Path(state["best_checkpoint"]),) if state["best_checkpoint"] else ()
    return checkpoint.commit(tmp, keep_last=cfg.sft.keep_last_checkpoints, protect=best)
