"""Held-out evaluation: greedy accuracy, or majority vote@k and pass@k over k samples.

Voting follows ReFT §13: count the *valid* extracted answers of the k samples and take the most frequent
(ties: first seen); the question counts as correct if the winning answer is correct. Answers are grouped
by the checker's canonical extracted string.

Writes nothing itself: `run_eval` in the CLI writes `predictions.jsonl` and `eval_summary.json`.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

import rewards
from rlft.config import Config
from rlft.rollout.base import SamplingParams
from rlft.tasks.base import Record
from rlft.tasks.encoding import encode_prompts
from rlft.tasks.prompts import program_text, prompt_text


def completions_for_checker(records: list[Record], texts: list[str], style: str) -> list[str]:
    """P-CoT completions are only the function body: rebuild the whole program for the checker."""
    if style != "program":
        return texts
    return [program_text(prompt_text(r, style), t) for r, t in zip(records, texts)]


def evaluate(
    engine,
    tokenizer,
    records: list[Record],
    *,
    style: str,
    max_new_tokens: int,
    samples: int = 1,
    temperature: float = 1.0,
    partial_reward: float = 0.1,
    max_prompt_tokens: int | None = None,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Generate for every record and check the answers.

    Returns:
        summary: `eval/accuracy` (greedy, or majority vote when samples > 1), `eval/pass_at_k`,
            `eval/sample_accuracy` (mean over all samples), `eval/mean_score` (ReFT reward),
            `eval/response_len_mean`, `eval/truncated_frac`, `eval/n`, `eval/seconds`.
        predictions: one dict per record with its samples, extracted answers and verdicts.
    """
    start = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, records, style, max_prompt_tokens)
    params = SamplingParams(n=samples, temperature=0.0 if samples == 1 else temperature, max_new_tokens=max_new_tokens)
    with torch.random.fork_rng():  # evaluation must not shift the training run's random stream
        torch.manual_seed(seed)
        batch = engine.generate(prompt_ids, params)
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    owners = [records[i] for i in batch.prompt_index.tolist()]
    verdicts = rewards.check_batch(
        completions_for_checker(owners, texts, style),
        [r.answer for r in owners],
        datasets=[r.dataset for r in owners],
        fmts=["program" if style == "program" else "text"] * len(owners),
        options=[r.options for r in owners],
        partial_reward=partial_reward,
    )
    predictions, n_correct, n_pass = [], 0, 0
    for i, record in enumerate(records):
        group = [j for j in range(len(owners)) if batch.prompt_index[j] == i]
        vs = [verdicts[j] for j in group]
        winner = _majority(vs)
        correct = winner is not None and winner.correct
        n_correct += correct
        n_pass += any(v.correct for v in vs)
        predictions.append({
            "id": record.id, "question": record.question, "gold": record.answer,
            "completions": [texts[j] for j in group], "extracted": [v.extracted for v in vs],
            "scores": [v.score for v in vs], "prediction": None if winner is None else winner.extracted,
            "correct": bool(correct),
        })
    n = max(1, len(records))
    lengths = batch.response_mask.sum(dim=1).float()
    summary = {
        "eval/accuracy": n_correct / n,
        "eval/pass_at_k": n_pass / n,
        "eval/sample_accuracy": sum(v.correct for v in verdicts) / max(1, len(verdicts)),
        "eval/mean_score": sum(v.score for v in verdicts) / max(1, len(verdicts)),
        "eval/response_len_mean": lengths.mean().item() if len(lengths) else 0.0,
        "eval/truncated_frac": batch.truncated.float().mean().item() if len(lengths) else 0.0,
        "eval/samples": samples,
        "eval/n": len(records),
        "eval/seconds": time.perf_counter() - start,
    }
    return summary, predictions


def evaluate_held_out(cfg: Config, engine, tokenizer, records: list[Record]) -> tuple[dict, list[dict]]:
    """`evaluate` with the settings of `eval.*` and the run's seed: what SFT, the RL loop and self-training
    report as held-out accuracy."""
    return evaluate(engine, tokenizer, records, style=cfg.data.style, max_new_tokens=cfg.eval.max_new_tokens,
                    samples=cfg.eval.samples, temperature=cfg.eval.temperature, partial_reward=cfg.eval.partial_reward,
                    seed=cfg.run.seed)


def _majority(verdicts: list) -> object | None:
    """The verdict of the most frequent valid extracted answer (ties: first seen), or None."""
    valid = [v for v in verdicts if v.extracted is not None]
    if not valid:
        return None
    counts = Counter(v.extracted for v in valid)
    best = max(counts.values())
    return next(v for v in valid if counts[v.extracted] == best)
