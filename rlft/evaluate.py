"""Held-out evaluation: greedy accuracy, or majority vote@k, pass@k and optionally rerank@k over k samples.

Voting follows ReFT §13: count the *valid* extracted answers of the k samples and take the most frequent
(ties: first seen); the question counts as correct if the winning answer is correct. Answers are grouped
by the checker's canonical extracted string.

Reranking (ReFT §4, `rlft eval --rerank value`): a per-sample scorer ranks the k samples of a question
and the top one is its answer (`rlft.algos.rerank.select`). `value_scores` is the scorer built from a
ReFT/CARFT checkpoint's value head. The paper reranks with a separately trained correctness classifier
(`specs/reft.md` §12); the value head is the estimate of the same quantity (the expected score) that
a ReFT run already has.

Writes nothing itself: `run_eval` in the CLI writes `predictions.jsonl` and `eval_summary.json`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import torch

import rewards
from rlft.algos import rerank
from rlft.config import Config
from rlft.learner.torch_learner import response_forward
from rlft.rollout.base import SamplingParams
from rlft.tasks.base import Record
from rlft.tasks.chat import REFT, PromptFormat
from rlft.tasks.encoding import encode_prompts
from rlft.tasks.prompts import program_text, prompt_text
from rlft.types import RolloutBatch
from rlft.utils.device import module_device, to_device


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
    rank_fn: Callable[[RolloutBatch], torch.Tensor] | None = None,
    fmt: PromptFormat = REFT,
) -> tuple[dict, list[dict]]:
    """Generate for every record and check the answers.

    Args:
        fmt: the prompt format (`data.prompt_format`): the raw ReFT prompt or the chat template, as in training.
        rank_fn: optional per-sample scorer for reranking, `rank_fn(batch) -> (B,)` scores of the
            generated batch (higher is better; e.g. `functools.partial(value_scores, policy, ...)`).
            Needs samples >= 2.
    Returns:
        summary: `eval/accuracy` (greedy, or majority vote when samples > 1; reranking does not change
            it), `eval/rerank_accuracy` (only with `rank_fn`: accuracy of each question's top-ranked
            sample), `eval/pass_at_k`, `eval/sample_accuracy` (mean over all samples), `eval/mean_score`
            (ReFT reward), `eval/response_len_mean`, `eval/truncated_frac`, `eval/n`, `eval/seconds`.
        predictions: one dict per record with its samples, extracted answers and verdicts; with `rank_fn`
            also `rank_scores` (per sample), `rerank_choice` (index of the top-ranked sample among the
            record's samples), `rerank_prediction` and `rerank_correct`.
    """
    if rank_fn is not None and samples < 2:
        raise ValueError(f"reranking needs samples >= 2 per question (got samples={samples}): nothing to rank")
    start = time.perf_counter()
    prompt_ids = encode_prompts(tokenizer, records, style, max_prompt_tokens, fmt=fmt)
    params = SamplingParams(n=samples, temperature=0.0 if samples == 1 else temperature, max_new_tokens=max_new_tokens)
    with torch.random.fork_rng():  # evaluation must not shift the training run's random stream
        torch.manual_seed(seed)
        batch = engine.generate(prompt_ids, params)
    chosen = rank_scores = None
    if rank_fn is not None:
        # `select` reads groups as contiguous rows; every engine returns them so, in prompt order
        expected = torch.arange(len(records)).repeat_interleave(samples)
        if not torch.equal(batch.prompt_index.cpu(), expected):
            raise ValueError("reranking needs each question's samples in adjacent rows, in question order")
        rank_scores = rank_fn(batch).float().cpu()  # (B,)
        chosen = rerank.select(rank_scores, samples).tolist()  # (n_records,) batch rows
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
    predictions, n_correct, n_pass, n_rerank_correct = [], 0, 0, 0
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
        if chosen is not None:
            top = verdicts[chosen[i]]
            n_rerank_correct += top.correct
            predictions[-1].update({
                "rank_scores": [float(rank_scores[j]) for j in group], "rerank_choice": group.index(chosen[i]),
                "rerank_prediction": top.extracted, "rerank_correct": bool(top.correct),
            })
    n = max(1, len(records))
    lengths = batch.response_mask.sum(dim=1).float()
    summary = {
        "eval/accuracy": n_correct / n,
        **({"eval/rerank_accuracy": n_rerank_correct / n} if chosen is not None else {}),
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
                    seed=cfg.run.seed, fmt=PromptFormat.of(cfg.data))


@torch.inference_mode()
def value_scores(policy, batch: RolloutBatch, *, micro_batch_size: int) -> torch.Tensor:
    """Value-head score of each sample: V(s_last), the value of the state in which its last response token
    (EOS, or the last token of a truncated response) was emitted, from a teacher-forced forward of
    prompt + response in eval mode.

    Why that position: ReFT's critic is trained on response coordinates V(s_t) = value at sequence
    position P - 1 + t (`response_slice`), and the last one, t = L - 1, has the score itself as its
    return. The state after EOS (position P + L - 1) never gets a value target (GAE treats it as terminal),
    so its value is untrained.

    Args:
        policy: a `PolicyModel` with a value head ("linear" or "carft").
        batch: the generated samples; left-padded prompts (B, P), right-padded responses (B, T).
        micro_batch_size: sequences per forward.
    Returns:
        (B,) float32 scores, on the CPU (computed on the policy's device).
    """
    policy.eval()
    device = module_device(policy)
    scores = []
    for lo in range(0, len(batch), micro_batch_size):
        mb = to_device({k: getattr(batch, k)[lo:lo + micro_batch_size]
                        for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}, device)
        _, values = response_forward(policy, mb)  # (b, T) V(s_t), the learner's own forward and positions
        last = (mb["response_mask"].sum(dim=1) - 1).clamp(min=0)  # (b,) index of the last response token
        scores.append(values.gather(1, last[:, None]).squeeze(1).float())  # (b,)
    return torch.cat(scores).cpu()  # to host


def _majority(verdicts: list) -> object | None:
    """The verdict of the most frequent valid extracted answer (ties: first seen), or None."""
    valid = [v for v in verdicts if v.extracted is not None]
    if not valid:
        return None
    counts = Counter(v.extracted for v in valid)
    best = max(counts.values())
    return next(v for v in valid if counts[v.extracted] == best)
