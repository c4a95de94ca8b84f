"""`RewardRole`: the configured reward function (`reward.fn`) in this process, behind a timeout that counts
failures. Ray's reward workers each hold one.

Plug-ins get TRL's arguments too, so a function written for TRL's `GRPOTrainer` works unchanged (README,
"Rewards"): `prompts`, `completions` (strings, or TRL's conversational message lists, per
`reward.completion_format`), `completion_ids`, the gold answer as `solution`, and `trainer_state` (None: rlft
has no transformers `TrainerState`). `rewards.call_reward` passes each function only what its signature takes.
"""

from __future__ import annotations

import functools

import torch

import rewards
from rewards.registry import declares_messages
from rlft.config import Config
from rlft.tasks.base import Record
from rlft.tasks.chat import PromptFormat, reward_prompt
from rlft.tasks.prompts import program_text, prompt_text
from rlft.types import RolloutBatch


def completion_ids(batch: RolloutBatch) -> list[list[int]]:
    """TRL's `completion_ids`: each sample's response tokens up to and including EOS, without padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.response_ids, batch.response_mask)]


class RewardRole:
    """Scores decoded responses with the configured reward function (`reward.fn`).

    Columns passed to the function are the record's fields (`answer`, `question`, `dataset`, `options`,
    `id`) plus `format` (`text` or `program`), and TRL's names: `prompts` (the raw prompt text, or the
    conversation for `data.prompt_format=chat`), `solution` (= `answer`), `trainer_state` (None) and, when
    the caller has them, `completion_ids`. P-CoT completions are passed as whole programs (the generation
    prefix + the generated body), so plug-ins see runnable code.
    """

    def __init__(self, cfg: Config):
        self.fn = rewards.get_reward_fn(cfg.reward.fn)
        builtin = self.fn.builtin
        if builtin and cfg.reward.fn == "math":
            self.fn = functools.partial(rewards.math_reward, partial_reward=cfg.reward.partial_reward,
                                        reft_compat=cfg.reward.reft_compat)
        self.style = cfg.data.style
        self.prompt_format = PromptFormat.of(cfg.data)
        # TRL passes message lists exactly when the prompts are conversational; TRL's own rewards (annotated
        # list[list[dict]]) read only those, whatever the prompts; the built-ins read text.
        fmt = cfg.reward.completion_format
        auto = self.prompt_format.kind == "chat" or declares_messages(self.fn)
        self.messages = not builtin and (fmt == "messages" or (fmt == "auto" and auto))
        self.timeout = cfg.reward.timeout
        self.on_error = cfg.reward.on_error
        self.truncated_score = cfg.reward.truncated_score
        self.constant = cfg.reward.constant

    def columns(self, records: list[Record], completion_ids: list[list[int]] | None = None) -> dict:
        """The keyword arguments of a reward call on `records`, one entry per sample (see the class docstring)."""
        answers = [r.answer for r in records]
        columns = {
            "answer": answers, "question": [r.question for r in records],
            "dataset": [r.dataset for r in records], "options": [r.options for r in records],
            "id": [r.id for r in records], "format": ["program" if self.style == "program" else "text"] * len(records),
            "prompts": [reward_prompt(r, self.style, self.prompt_format) for r in records],
            "solution": answers, "trainer_state": None,
        }
        if completion_ids is not None:
            columns["completion_ids"] = completion_ids
        return columns

    def score(self, texts: list[str], records: list[Record], truncated: torch.Tensor,
              completion_ids: list[list[int]] | None = None) -> tuple[torch.Tensor, dict]:
        """Returns scores (B,) and metrics that are counts over the samples (so workers and calls add up):
        `reward/failed` (samples whose reward call failed, or that every function declined with None); with
        `reward.constant` (the null control, whose scores are all that constant), `reward/true_score_sum` and
        `reward/true_correct`: what the reward function would have paid, which the loop logs as
        `reward/true_mean` and `reward/true_accuracy`. `completion_ids` (TRL's argument: each response's
        tokens, see `completion_ids`) is passed on when given."""
        completions = texts if self.style != "program" else [
            program_text(prompt_text(r, "program"), t) for r, t in zip(records, texts)
        ]
        if self.messages:
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        columns = self.columns(records, completion_ids)
        # Failures (raise, hang, NaN, wrong length, all-None) are scored 0 and counted, or raise naming the record ids.
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
