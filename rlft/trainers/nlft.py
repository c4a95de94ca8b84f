"""Natural Language Fine-Tuning (`algo=nlft`; Liu et al. 2024, arXiv 2412.20382; spec `docs/nlft.md`).

    rlft train configs/demo.yaml algo=nlft model.path=runs/warm/checkpoints/ckpt-96 run.dir=runs/nlft

1. sample  `nlft.samples_per_question` responses per training question from the starting model (`model.path`,
           HF engine, `rollout.temperature` / `top_p` / `top_k` / `max_new_tokens`, seeded by `run.seed`);
2. judge   each response (`nlft.judge`: the checker's verdict and the first wrong step, or a plug-in; see
           `rlft/reward/judgment.py`): positive, or negative with a natural-language judgment. Samples and
           judgments go to `run.dir/nlft_samples.jsonl`, the counts and settings to `run.dir/nlft_summary.json`
           (written last); a resumed run reuses them (and only re-judges when just the judge settings changed);
3. train   `sft.epochs` passes over the judged responses, `sft.sequences_per_step` responses per optimizer step
           (`sft.*` also sets lr, schedule, clipping, micro-batches, the wall-time budget and checkpoints, as for
           offline self-training). Each step, the learner scores the responses under the reference prompt
           (`nlft.correct_prompt`, no gradient), then trains on the base prompt's and (negatives) the judge
           prompt's sequences with `rlft.algos.nlft.sequence_losses`, averaged over the step's responses.
           Held-out evaluation and a resumable checkpoint end every epoch, as in SFT.

The policy is a LoRA by default (`adapter.kind=auto`: the paper's reference code trains a LoRA); `adapter.kind=full`
finetunes every weight. The learner is the `TorchLearner` the SFT warm-up uses, fed the RL-shaped micro-batches
(prompt + response) that a `DeepSpeedLearner.train_step` also takes; the row is local-only for now (its sampling
phase runs on the driver's module, like offline self-training).

Departures from the reference code (the complete list, with its line numbers: `docs/nlft.md` §4): rlft's
checker and a step comparison write the judgments instead of GPT-4o; responses come from the starting model;
p_correct comes from a no-gradient pass just before each step (the reference computes it in the training
forward); a positive response is not forwarded a second time as its own judge sequence; EOS is part of the
response; AdamW with `sft.schedule` in float32 instead of HF Trainer's cosine schedule on an 8-bit base.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import torch

from rlft.algos import nlft as nlft_algo
from rlft.algos import ppo
from rlft.config import Config, derive_sft_geometry
from rlft.dist.local import policy_model_options, sft_learner_options
from rlft.evaluate import evaluate_held_out
from rlft.learner.torch_learner import TorchLearner
from rlft.models.policy import PolicyModel, response_slice
from rlft.reward.judgment import Judgment, checker_judgments, plugin_judgments
from rlft.rollout.base import SamplingParams
from rlft.rollout.factory import hf_engine
from rlft.tasks.base import Record
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import encode_prompts, epoch_order
from rlft.tasks.prompts import target_text
from rlft.trainers.sft import resume_epochs, save_epoch_checkpoint
from rlft.utils import checkpoint
from rlft.utils.device import resolve_compute
from rlft.utils.logging import print0, progress, write_jsonl
from rlft.utils.seeding import seed_everything
from rlft.workspace import load_split, open_run_dir, prepare_model

SAMPLES_FILE = "nlft_samples.jsonl"
SUMMARY_FILE = "nlft_summary.json"
# Every key the samples depend on: a resumed run must not reuse samples drawn under other values.
SAMPLING_KEYS = (
    "model.path", "model.dtype", "run.seed", "data.train", "data.style", "data.n_train", "data.difficulty",
    "data.seed", "data.limit_train", "data.hf_config", "data.hf_train_split", "data.prompt_format",
    "data.system_prompt", "rollout.temperature", "rollout.top_p", "rollout.top_k", "rollout.max_new_tokens",
    "rollout.batch_size", "nlft.samples_per_question",
)
# ... and the judgments (re-judged, not resampled, when only these change)
JUDGE_KEYS = ("nlft.judge", "nlft.judgment_template", "nlft.step_template", "nlft.correct_score", "nlft.wrong_score")


def _settings(cfg: Config, keys: tuple[str, ...]) -> dict:
    return {key: functools.reduce(getattr, key.split("."), cfg) for key in keys}


def sample_responses(cfg: Config, model, tokenizer, records: list[Record], adapter) -> list[dict]:
    """Step 1: `{"id", "response_ids" (through EOS), "response", "truncated"}` per sample, in record order."""
    engine = hf_engine(cfg, model, tokenizer, adapter)  # on the model's device (prepare_model put it there)
    prompts = encode_prompts(tokenizer, records, cfg.data.style, cfg.data.max_prompt_tokens, fmt=PromptFormat.of(cfg.data))
    r = cfg.rollout
    params = SamplingParams(n=cfg.nlft.samples_per_question, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens)
    rows = []
    bar = progress(len(records), desc="nlft sampling", enabled=cfg.log.progress, every_seconds=cfg.log.progress_every_seconds)
    with torch.random.fork_rng():  # the samples are a pure function of run.seed; training seeds itself afterwards
        torch.manual_seed(cfg.run.seed)
        for lo in range(0, len(records), r.batch_size):
            batch = engine.generate(prompts[lo:lo + r.batch_size], params)
            for b, i in enumerate(batch.prompt_index.tolist()):
                ids = batch.response_ids[b][batch.response_mask[b].bool()].tolist()
                rows.append({"id": records[lo + i].id, "response_ids": ids, "truncated": bool(batch.truncated[b]),
                             "response": tokenizer.decode(ids, skip_special_tokens=True)})
            bar.update(min(r.batch_size, len(records) - lo))
    bar.close()
    return rows


def judge_rows(cfg: Config, rows: list[dict], by_id: dict[str, Record]) -> list[dict]:
    """Step 2: each row plus its judgment (`judgment`, `score`, `status`, `extracted`)."""
    texts, records = [row["response"] for row in rows], [by_id[row["id"]] for row in rows]
    n = cfg.nlft
    if n.judge == "checker":
        judgments = checker_judgments(texts, records, style=cfg.data.style, judgment_template=n.judgment_template,
                                      step_template=n.step_template, correct_score=n.correct_score,
                                      wrong_score=n.wrong_score)
    else:
        judgments = plugin_judgments(n.judge, texts, records, style=cfg.data.style)
    return [{**row, "judgment": j.text, "score": j.score, "status": j.status, "extracted": j.extracted}
            for row, j in zip(rows, judgments)]


def sampled_and_judged(cfg: Config, run_dir: Path, model, tokenizer, adapter, train: list[Record]) -> tuple[list[dict], dict]:
    """Steps 1-2, or their cached result in `run_dir` (see the module docstring). Returns rows and counts."""
    samples_path, summary_path = run_dir / SAMPLES_FILE, run_dir / SUMMARY_FILE
    sampling, judging = _settings(cfg, SAMPLING_KEYS), _settings(cfg, JUDGE_KEYS)
    by_id = {record.id: record for record in train}
    saved = json.loads(summary_path.read_text()) if cfg.run.resume and summary_path.exists() else None
    if saved is not None and saved["sampling"] != sampling:
        changed = [k for k in sampling if saved["sampling"].get(k) != sampling[k]]
        raise ValueError(f"{samples_path} was sampled with different settings ({', '.join(changed)}); use a new "
                         "run.dir or run.resume=false to sample again")
    if saved is not None and saved["judging"] == judging:
        print0(f"rlft nlft: reusing the judged samples in {samples_path}")
        return [json.loads(line) for line in samples_path.read_text().splitlines()], saved["counts"]
    start = time.perf_counter()
    if saved is not None:  # same samples, other judge settings: judge them again
        changed = [k for k in judging if saved["judging"].get(k) != judging[k]]
        print0(f"rlft nlft: judging the cached samples in {samples_path} again ({', '.join(changed)} changed)")
        rows, counts = [json.loads(line) for line in samples_path.read_text().splitlines()], saved["counts"]
    else:
        print0(f"rlft nlft: sampling {cfg.nlft.samples_per_question} response(s) x {len(train)} questions")
        rows = sample_responses(cfg, model, tokenizer, train, adapter)
        counts = {"questions": len(train), "sampled": len(rows), "truncated": sum(row["truncated"] for row in rows),
                  "sampling_seconds": time.perf_counter() - start}
        start = time.perf_counter()
    rows = judge_rows(cfg, rows, by_id)
    counts["judging_seconds"] = time.perf_counter() - start
    counts["correct"] = sum(row["status"] == "correct" for row in rows)
    checkpoint.write_atomic(samples_path, "".join(json.dumps(row) + "\n" for row in rows))
    checkpoint.write_atomic(summary_path, json.dumps({"counts": counts, "sampling": sampling, "judging": judging}, indent=2))
    return rows, counts


def _with_question(record: Record, question: str) -> Record:
    """`record` asking `question` instead (a conversational record's last user turn too)."""
    turns = record.prompt_messages
    if turns:
        turns = (*turns[:-1], (turns[-1][0], question))
    return dataclasses.replace(record, question=question, prompt_messages=turns)


def build_items(cfg: Config, tokenizer, rows: list[dict], by_id: dict[str, Record], context: int | None) -> list[dict]:
    """Token ids of each judged response under its three prompts: `base`, `correct`, `judge` (None for a
    positive), `response`, and `negative`."""
    n, style, fmt = cfg.nlft, cfg.data.style, PromptFormat.of(cfg.data)
    records = [by_id[row["id"]] for row in rows]
    negative = [not Judgment(row["judgment"], row["score"], row["status"]).positive(n.positive_score) for row in rows]
    base = encode_prompts(tokenizer, records, style, cfg.data.max_prompt_tokens, fmt=fmt)
    correct = encode_prompts(tokenizer, [_with_question(r, n.correct_prompt.format(
        question=r.question, reference=target_text(r, style))) for r in records], style, fmt=fmt)
    judged = [(r, row["judgment"] or "") for r, row, neg in zip(records, rows, negative) if neg]
    judge = iter(encode_prompts(tokenizer, [_with_question(r, n.judge_prompt.format(question=r.question, judgment=j))
                                            for r, j in judged], style, fmt=fmt))
    items = []
    for row, record, b, c, neg in zip(rows, records, base, correct, negative):
        item = {"base": b, "correct": c, "judge": next(judge) if neg else None, "response": row["response_ids"],
                "negative": neg}
        longest = max(len(p) for p in (b, c, item["judge"] or [])) + len(row["response_ids"])
        if context is not None and longest > context:
            raise ValueError(f"record {record.id}: a prompt of nlft.correct_prompt / nlft.judge_prompt plus the response "
                             f"is {longest} tokens, more than the model's context ({context}); shorten the templates or "
                             "rollout.max_new_tokens")
        items.append(item)
    return items


def _left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


def _sequences(prompts: list[list[int]], responses: list[list[int]], width: int, pad_id: int) -> dict:
    """A learner batch of left-padded prompts and responses right-padded to `width` (the step's response width)."""
    prompt_ids, prompt_mask = _left_padded(prompts, pad_id)
    response_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in responses], dtype=torch.long)
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses], dtype=torch.long)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "response_mask": response_mask, "input_ids": torch.cat([prompt_ids, response_ids], 1),
            "attention_mask": torch.cat([prompt_mask, response_mask], 1)}


def micro_batches(items: list[dict], logp_correct: torch.Tensor, size: int, pad_id: int) -> list[dict]:
    """Micro-batches of `size` responses. Rows: the b base sequences, then the judge sequences of the b's
    negatives; `judge_row` (b,) points each response at its judge sequence (a positive: its base row)."""
    width = logp_correct.shape[1]
    out = []
    for lo in range(0, len(items), size):
        chunk = items[lo:lo + size]
        negatives = [k for k, item in enumerate(chunk) if item["negative"]]
        rows = [item["base"] for item in chunk] + [chunk[k]["judge"] for k in negatives]
        mb = _sequences(rows, [item["response"] for item in chunk] + [chunk[k]["response"] for k in negatives], width, pad_id)
        judge_row = list(range(len(chunk)))
        for j, k in enumerate(negatives):
            judge_row[k] = len(chunk) + j
        mb.update(negative=torch.tensor([item["negative"] for item in chunk]), judge_row=torch.tensor(judge_row),
                  logp_correct=logp_correct[lo:lo + size])
        out.append(mb)
    return out


def make_loss_fn(cfg: Config, num_seqs: int):
    """NLFT's loss on one micro-batch: its responses' `sequence_losses` summed over the step's `num_seqs`
    responses (the reference's mean over its micro-batches of one). Metrics are this micro-batch's shares."""
    n = cfg.nlft
    consts = dict(ratio_threshold=n.ratio_threshold, min_judge_prob=n.min_judge_prob, sigmoid_center=n.sigmoid_center,
                  max_salient_frac=n.max_salient_frac, correct_threshold=n.correct_threshold,
                  neighbour_distance=n.neighbour_distance, loss_scale=n.loss_scale)

    def loss_fn(output, mb):
        b, P, T = mb["negative"].shape[0], mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
        logprobs = ppo.logprobs_from_logits(output.logits, mb["response_ids"])  # (rows, T)
        hidden = output.sequence.hidden
        hidden = None if hidden is None else response_slice(hidden, P, T)[:b]  # (b, T, H) base sequences
        losses, metrics = nlft_algo.sequence_losses(logprobs[:b], logprobs[mb["judge_row"]], mb["logp_correct"], hidden,
                                                    mb["response_mask"][:b], mb["negative"], **consts)
        loss = losses.sum() / num_seqs
        share = b / num_seqs
        return loss, {"nlft/loss": loss.detach(), **{k: v * share for k, v in metrics.items()}}

    return loss_fn


def run_nlft(cfg: Config, *, stop_after_epoch: int | None = None) -> dict:
    """Sample, judge, train (module docstring). Returns the summary (also `run.dir/summary.json`); `history`
    and `n_train` as SFT's, plus `nlft` (the sampling and judging counts). `stop_after_epoch` (resume tests)
    ends the work early, as a kill would."""
    run_dir = open_run_dir(cfg)
    seed_everything(cfg.run.seed)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    compute = resolve_compute(cfg)  # run.device and model.precision (in-process: NLFT is local-only)
    print0(f"rlft nlft: {compute.describe()}")
    model, tokenizer, model_path, adapter = prepare_model(cfg, train, compute=compute)
    rows, counts = sampled_and_judged(cfg, run_dir, model, tokenizer, adapter, train)
    items = build_items(cfg, tokenizer, rows, {r.id: r for r in train},
                        getattr(model.config, "max_position_embeddings", None))
    counts = {**counts, "negative": sum(item["negative"] for item in items)}
    counts["positive"] = len(items) - counts["negative"]
    geo = derive_sft_geometry(cfg)
    steps_per_epoch = math.ceil(len(items) / geo.sequences_per_step)
    total_steps = steps_per_epoch * cfg.sft.epochs
    learner = TorchLearner(PolicyModel(model, adapter=adapter, keep_hidden=cfg.nlft.neighbour_distance is not None,
                                       **policy_model_options(cfg, compute, phase="sft")),
                           **sft_learner_options(cfg, total_steps))
    engine = hf_engine(cfg, model, tokenizer, adapter, batch_size=cfg.eval.batch_size, compute=compute)
    print0(f"rlft nlft: {counts['positive']} positive + {counts['negative']} negative responses to {len(train)} questions "
           f"from {model_path}; adapter {adapter.kind} ({learner.num_trainable():,} trainable); {steps_per_epoch} "
           f"steps/epoch of {geo.sequences_per_step} responses, {total_steps} steps")

    # the sampling and judging phase is part of the method's cost: its time opens the training clock
    state = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_checkpoint": None, "history": [],
             "train_seconds": counts.get("sampling_seconds", 0.0) + counts.get("judging_seconds", 0.0), "train_tokens": 0}
    ckpt_root = run_dir / "checkpoints"
    state, logger = resume_epochs(cfg, learner, run_dir, state)
    pad, micro = tokenizer.pad_token_id, geo.micro_batch_size_per_device
    for epoch in range(state["epoch"], cfg.sft.epochs):
        order = epoch_order(len(items), cfg.run.seed, epoch)
        bar = progress(steps_per_epoch, desc=f"nlft epoch {epoch + 1}/{cfg.sft.epochs}", enabled=cfg.log.progress,
                       every_seconds=cfg.log.progress_every_seconds)
        for i in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = [items[j] for j in order[i * geo.sequences_per_step:(i + 1) * geo.sequences_per_step]]
            width = max(len(item["response"]) for item in batch)
            # p_correct of the current weights, no gradient (the reference detaches it from its training forward)
            logp_correct, _ = learner.logprobs_and_values(
                _sequences([item["correct"] for item in batch], [item["response"] for item in batch], width, pad), micro)
            metrics = learner.train_step(micro_batches(batch, logp_correct, micro, pad), make_loss_fn(cfg, len(batch)))
            dt = time.perf_counter() - t0
            n_tokens = sum(len(item["response"]) for item in batch)
            state["step"] += 1
            state["train_seconds"] += dt
            state["train_tokens"] += n_tokens
            metrics.update({"train/tokens_per_s": n_tokens / dt, "train/epoch": epoch + (i + 1) / steps_per_epoch})
            bar.set_postfix(loss=f"{metrics['nlft/loss']:.3f}")
            bar.update(1)
            if state["step"] % cfg.log.every_steps == 0 or i == steps_per_epoch - 1:
                logger.log(state["step"], metrics)
        bar.close()
        state["epoch"] = epoch + 1
        record = {"epoch": epoch + 1, "step": state["step"], "train_seconds": state["train_seconds"]}
        over_budget = cfg.sft.max_seconds is not None and state["train_seconds"] >= cfg.sft.max_seconds
        last = epoch + 1 == cfg.sft.epochs or over_budget
        if cfg.eval.every_epoch or last:
            summary, predictions = evaluate_held_out(cfg, engine, tokenizer, test)
            logger.log(state["step"], summary)
            record["accuracy"] = summary["eval/accuracy"]
            write_jsonl(run_dir / f"predictions_epoch{epoch + 1}.jsonl", predictions)
            print0(f"epoch {epoch + 1}: held-out accuracy {summary['eval/accuracy']:.3f}, train {state['train_seconds']:.0f}s")
        state["history"].append(record)
        if cfg.sft.save_every_epoch or last:
            record["checkpoint"] = str(save_epoch_checkpoint(learner, tokenizer, state, ckpt_root, record, cfg,
                                                             method="nlft"))
        if (stop_after_epoch is not None and epoch + 1 >= stop_after_epoch) or over_budget:
            break
    logger.close()
    summary = {
        "algo": "nlft", "model": str(model_path), "epochs_done": state["epoch"], "n_train": len(items),
        "history": state["history"], "best_accuracy": state["best_accuracy"], "best_checkpoint": state["best_checkpoint"],
        "final_checkpoint": str(checkpoint.latest_checkpoint(ckpt_root) or ""), "train_seconds": state["train_seconds"],
        "train_tokens": state["train_tokens"], "adapter": adapter.kind, "trainable_params": learner.num_trainable(),
        "nlft": counts,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

