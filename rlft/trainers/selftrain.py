"""Self-training baselines of the ReFT paper (spec §12).

- Online self-training (`algo=online_st`, driven by `rlft/trainers/ppo.py`): each iteration samples like
  ReFT, keeps the responses that score 1, and minimises 1/2 CE(correct samples) + 1/2 CE(gold CoTs of the
  batch) (`train_rl_sl.py` in the reference). No negatives, no KL, no value model.
- Offline self-training (`algo=offline_st`, `run_offline_st`): expert iteration, one round.

      rlft train configs/demo.yaml algo=offline_st model.path=runs/demo-sft/checkpoints/ckpt-126

  1. sample `offline_st.samples_per_question` responses per training question from the warm-up at
     `model.path` (HF engine, `rollout.temperature` / `top_p` / `top_k` / `max_new_tokens`, seeded by
     `run.seed`), score them with `reward.fn`; with `cluster.backend=ray` on `cluster.rollout_workers`
     engines and `cluster.reward_workers` reward actors (each engine seeded from `run.seed`, as in RL);
  2. keep those scoring >= 1, drop duplicate texts, subsample at most `offline_st.max_unique_per_question`
     per question; written to `run.dir/offline_st_samples.jsonl` (id, question, response) and
     `run.dir/offline_st_summary.json` (counts and the sampling settings);
  3. SFT (`run_sft`, all `sft.*` keys) from the warm-up on the gold examples + the kept samples.
  Started again in the same `run.dir`, it reuses the samples file (never resamples) and resumes SFT exactly.

  Departures from the paper: 16 samples per question by default instead of 100 (CPU budget); samples are
  re-tokenised from their decoded text, as the reference's `train_sl_model.py` reads text; a correct
  response cut at `rollout.max_new_tokens` is kept with EOS appended unless `reward.truncated_score`
  scores it below 1.
"""

from __future__ import annotations

import functools
import json
import random
import time

import torch

from rlft.algos import sft as sft_algo
from rlft.config import Config
from rlft.dist.local import Sampler, build_sampler
from rlft.reward.role import completion_ids
from rlft.rollout.base import SamplingParams
from rlft.tasks.base import Record
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import IGNORE, collate, encode_examples, encode_prompts
from rlft.trainers.sft import run_sft
from rlft.types import RolloutBatch, TrainBatch
from rlft.utils import checkpoint
from rlft.utils.logging import print0, progress
from rlft.workspace import load_split, open_run_dir, prepare_model

SAMPLES_FILE = "offline_st_samples.jsonl"
SUMMARY_FILE = "offline_st_summary.json"
# Every key the kept samples depend on: a resumed run must not reuse samples drawn under other values.
SAMPLING_KEYS = (
    "model.path", "model.dtype", "model.precision", "run.device", "run.seed", "data.train", "data.style",
    "data.n_train", "data.difficulty",
    "data.seed", "data.limit_train", "data.hf_config", "data.hf_train_split", "data.prompt_format",
    "data.system_prompt", "rollout.temperature", "rollout.top_p", "rollout.top_k", "rollout.max_new_tokens",
    "rollout.batch_size", "reward.fn", "reward.partial_reward", "reward.truncated_score", "reward.completion_format",
    "offline_st.samples_per_question", "offline_st.max_unique_per_question",
)


def _sample_examples(batch: TrainBatch | RolloutBatch, keep: torch.Tensor) -> list[dict]:
    """Prompt + response of the kept samples as SFT examples (labels on the response incl. EOS)."""
    examples = []
    for b in keep.nonzero().flatten().tolist():
        prompt = batch.prompt_ids[b][batch.prompt_mask[b].bool()].tolist()
        response = batch.response_ids[b][batch.response_mask[b].bool()].tolist()
        examples.append({"input_ids": prompt + response, "labels": [IGNORE] * len(prompt) + response})
    return examples


def online_st_micro_batches(batch: TrainBatch, records: list[Record], tokenizer, cfg: Config):
    """Micro-batches and loss for one online-ST step: 1/2 CE(correct samples) + 1/2 CE(gold CoTs)."""
    gold, _ = encode_examples(tokenizer, records, cfg.data.style, cfg.sft.max_seq_tokens, fmt=PromptFormat.of(cfg.data))
    correct = _sample_examples(batch, batch.scores >= 1.0)
    groups = [("gold", gold)] + ([("correct", correct)] if correct else [])
    weight = 0.5 if correct else 1.0  # both halves as in the reference; gold alone when nothing was right
    micro, counts = [], {}
    size = cfg.ppo.micro_batch_size_per_device
    for name, examples in groups:
        for k in range(0, len(examples), size):
            mb = collate(examples[k:k + size], tokenizer.pad_token_id)
            mb["group"] = name
            micro.append(mb)
        counts[name] = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)

    def loss_fn(output, mb):
        loss, metrics = sft_algo.sft_loss(output.logits, mb["labels"], num_tokens=counts[mb["group"]])
        return weight * loss, {f"online_st/{mb['group']}_loss": loss.detach(),
                               "online_st/n_correct": torch.tensor(float(len(correct)) / max(1, len(micro)))}

    return micro, loss_fn


def sample_correct(cfg: Config, sampler: Sampler, tokenizer, records: list[Record]) -> tuple[list[dict], dict]:
    """Offline-ST steps 1-2: sample every question, keep distinct correct responses, cap per question.
    `sampler`: the engine(s) and reward, in this process or on Ray (`rlft.dist.local.build_sampler`).

    Returns:
        rows: `{"id", "question", "response"}` per kept sample, grouped by question in `records` order.
        counts: `questions`, `sampled`, `correct` (score >= 1), `unique_correct`, `kept`,
            `questions_with_kept`, `reward_failed`, `seconds`.
    """
    start = time.perf_counter()
    o, r = cfg.offline_st, cfg.rollout
    engine, reward = sampler.rollout, sampler.reward
    prompts = encode_prompts(tokenizer, records, cfg.data.style, cfg.data.max_prompt_tokens, fmt=PromptFormat.of(cfg.data))
    params = SamplingParams(n=o.samples_per_question, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens)
    unique: list[dict[str, None]] = [{} for _ in records]  # per question: correct texts, first-seen order
    n_sampled = n_correct = n_failed = 0
    with torch.random.fork_rng():  # the samples are a pure function of run.seed; SFT seeds itself afterwards
        torch.manual_seed(cfg.run.seed)
        # Chunks of rollout.batch_size questions: 7.5k GSM8K questions x 100 samples never sit in memory at once.
        bar = progress(len(records), desc="offline-st sampling", enabled=cfg.log.progress,
                       every_seconds=cfg.log.progress_every_seconds)
        for lo in range(0, len(records), r.batch_size):
            batch = engine.generate(prompts[lo:lo + r.batch_size], params)
            owners = [lo + i for i in batch.prompt_index.tolist()]
            texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
            scores, metrics = reward.score(texts, [records[i] for i in owners], batch.truncated, completion_ids(batch))
            n_sampled += len(texts)
            n_failed += int(metrics["reward/failed"])
            for i, text, score in zip(owners, texts, scores.tolist()):
                if score >= 1.0:
                    n_correct += 1
                    unique[i].setdefault(text)
            bar.update(min(r.batch_size, len(records) - lo))  # in questions
        bar.close()
    rng = random.Random(cfg.run.seed)
    rows = []
    for record, texts in zip(records, unique):
        texts = list(texts)
        if len(texts) > o.max_unique_per_question:  # subsample (spec §12), kept in first-seen order
            texts = [texts[j] for j in sorted(rng.sample(range(len(texts)), o.max_unique_per_question))]
        rows += [{"id": record.id, "question": record.question, "response": t} for t in texts]
    counts = {"questions": len(records), "sampled": n_sampled, "correct": n_correct,
              "unique_correct": sum(len(u) for u in unique), "kept": len(rows),
              "questions_with_kept": len({row["id"] for row in rows}), "reward_failed": n_failed,
              "seconds": time.perf_counter() - start}
    return rows, counts


def run_offline_st(cfg: Config, *, stop_after_epoch: int | None = None) -> dict:
    """Offline self-training (spec §12): sample the warm-up once, then SFT on gold + kept samples.

    Returns `run_sft`'s summary plus `algo` and `offline_st` (the counts of `sample_correct` and
    `original` / `union`, the SFT set sizes); also written to `run.dir/summary.json`.
    `stop_after_epoch` is passed to `run_sft` (resume tests).
    """
    run_dir = open_run_dir(cfg)
    train = load_split(cfg, "train")
    samples_path, summary_path = run_dir / SAMPLES_FILE, run_dir / SUMMARY_FILE
    settings = {key: functools.reduce(getattr, key.split("."), cfg) for key in SAMPLING_KEYS}
    # On Ray the engines load the warm-up themselves: the driver needs only the tokenizer.
    model, tokenizer, model_path, adapter = prepare_model(cfg, train, with_model=cfg.cluster.backend == "local")
    # The summary file is written last, so its presence means the samples file is complete.
    if cfg.run.resume and summary_path.exists():
        saved = json.loads(summary_path.read_text())
        if saved["settings"] != settings:
            changed = [k for k in settings if saved["settings"].get(k) != settings[k]]
            raise ValueError(f"{samples_path} was sampled with different settings ({', '.join(changed)}); "
                             "use a new run.dir or run.resume=false to sample again")
        counts = saved["counts"]
        rows = [json.loads(line) for line in samples_path.read_text().splitlines()]
        print0(f"rlft offline-st: reusing {len(rows)} samples from {samples_path}")
    else:
        print0(f"rlft offline-st: sampling {cfg.offline_st.samples_per_question} responses x {len(train)} "
               f"questions from {model_path}")
        sampler = build_sampler(cfg, model, tokenizer, model_path, adapter)
        try:
            rows, counts = sample_correct(cfg, sampler, tokenizer, train)
        finally:
            sampler.close()  # Ray: the engines' GPUs are free before SFT starts
        checkpoint.write_atomic(samples_path, "".join(json.dumps(row) + "\n" for row in rows))
        checkpoint.write_atomic(summary_path, json.dumps({"counts": counts, "settings": settings}, indent=2))
    del model, adapter  # run_sft loads the warm-up afresh as its initial policy
    by_id = {record.id: record for record in train}
    extra, n_truncated = [], 0
    if rows:
        extra, n_truncated = encode_examples(tokenizer, [by_id[row["id"]] for row in rows], cfg.data.style,
                                             cfg.sft.max_seq_tokens, targets=[row["response"] for row in rows],
                                             fmt=PromptFormat.of(cfg.data))
    counts = {**counts, "original": len(train), "union": len(train) + len(extra), "kept_truncated": n_truncated}
    print0(f"rlft offline-st: {counts['correct']}/{counts['sampled']} samples correct, {counts['unique_correct']} "
           f"unique, {counts['kept']} kept for {counts['questions_with_kept']}/{counts['questions']} questions; "
           f"SFT on {counts['original']} gold + {counts['kept']} = {counts['union']} examples")
    summary = run_sft(cfg, stop_after_epoch=stop_after_epoch, extra_examples=extra)
    summary.update(algo="offline_st", offline_st=counts)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

