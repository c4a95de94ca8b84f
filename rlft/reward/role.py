"""`RewardRole`: the configured reward function (`reward.fn`) in this process, behind a timeout that counts
failures. Ray's reward workers each hold one."""

from __future__ import annotations

import functools

import torch

import rewards
from rlft.config import Config
from rlft.tasks.base import Record
from rlft.tasks.prompts import program_text, prompt_text


class RewardRole:
    """Scores decoded responses with the configured reward function (`reward.fn`).

    Columns passed to the function are the record's fields (`answer`, `question`, `dataset`, `options`,
    `id`) plus `format` (`text` or `program`). P-CoT completions are passed as whole programs (the
    generation prefix + the generated body), so plug-ins see runnable code.
    """

    def __init__(self, cfg: Config):
        self.fn = rewards.get_reward_fn(cfg.reward.fn)
        if self.fn.builtin and cfg.reward.fn == "math":
            self.fn = functools.partial(rewards.math_reward, partial_reward=cfg.reward.partial_reward,
                                        reft_compat=cfg.reward.reft_compat)
        self.style = cfg.data.style
        self.timeout = cfg.reward.timeout
        self.on_error = cfg.reward.on_error
        self.truncated_score = cfg.reward.truncated_score
        self.constant = cfg.reward.constant

    def score(self, texts: list[str], records: list[Record], truncated: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Returns scores (B,) and metrics that are counts over the samples (so workers and calls add up):
        `reward/failed` (samples whose reward call failed); with `reward.constant` (the null control, whose
        scores are all that constant), `reward/true_score_sum` and `reward/true_correct`: what the reward
        function would have paid, which the loop logs as `reward/true_mean` and `reward/true_accuracy`."""
        completions = texts if self.style != "program" else [
            program_text(prompt_text(r, "program"), t) for r, t in zip(records, texts)
        ]
        columns = {
            "answer": [r.answer for r in records], "question": [r.question for r in records],
            "dataset": [r.dataset for r in records], "options": [r.options for r in records],
            "id": [r.id for r in records], "format": ["program" if self.style == "program" else "text"] * len(records),
        }
        # Failures (raise, hang, NaN, wrong length) are scored 0 and counted, or raise naming the record ids.
        scores, n_failed = rewards.safe_call(self.fn, completions, columns, timeout=self.timeout, on_error=self.on_error)
        out = torch.tensor(scores, dtype=torch.float32)
        if self.truncated_score is not None:
            out = torch.where(truncated, torch.tensor(self.truncated_score), out)
        metrics = {"reward/failed": float(n_failed)}
        if self.constant is not None:
            # the null control: training sees no information, the logs still see what the reward would pay
            metrics.update({"reward/true_score_sum": float(out.sum()), "reward/true_correct": float((out >= 1.0).sum())})
            out = torch.full_like(out, self.constant)
        return out, metrics


