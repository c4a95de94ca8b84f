"""The ReFT reward as a batch plug-in (`reft.md` §4.1): 1 correct, `partial_reward` (0.1) when an
answer was extracted but is wrong, 0 when nothing was extracted, the program crashed or timed out.

Signature follows the plug-in contract (`fn(completions, **columns) -> list[float | None]`):
the dataset record's columns arrive as keyword lists. Column names understood:
- `answer` (or ReFT's `answer_value`): the gold answers;
- `dataset`: per-record dataset name; if absent it is read from ReFT's `item_id` prefix
  (`gsm8k_12`, `mathqa-numeric_3`), else gsm8k;
- `format`: text | program (ReFT's engine names nl | python are accepted);
- `options`, `question`: MathQA options (else parsed from the question), P-CoT prefix.
Use `math_verdicts` to get the full `Verdict`s and `summarize` for the per-status metrics
(`reward/no_answer_frac`, `reward/timeout_frac`, …), which the trainer logs separately because a
parse failure and a wrong answer are different problems.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

from rewards.check import DEFAULT_TIMEOUT, Verdict, check_batch
from rewards.judge import DATASETS, STATUSES

_FORMAT_ALIASES = {"nl": "text", "text": "text", "python": "program", "program": "program"}


def _dataset_of(item_id: Any) -> str | None:
    if isinstance(item_id, str) and "_" in item_id:
        prefix = item_id.rsplit("_", 1)[0]
        return prefix if prefix in DATASETS else None
    return None


def math_verdicts(completions: Sequence[str], *, answer: Sequence[str] | None = None,
                  dataset: Sequence[str] | None = None, format: Sequence[str] | None = None,
                  options: Sequence[Any] | None = None, question: Sequence[str] | None = None,
                  partial_reward: float = 0.1, timeout: float = DEFAULT_TIMEOUT,
                  reft_compat: bool = False, workers: int | None = None, **columns: Any) -> list[Verdict]:
    """Like `math_reward`, but return the Verdicts."""
    n = len(completions)
    golds = answer if answer is not None else columns.get("answer_value")
    if golds is None:
        raise ValueError("math_reward needs an `answer` (or `answer_value`) column")
    if dataset is None:
        ids = columns.get("item_id") or [None] * n
        dataset = [_dataset_of(i) or "gsm8k" for i in ids]
    fmts = [_FORMAT_ALIASES.get(str(f), str(f)) for f in format] if format is not None else "text"
    return check_batch(list(completions), [str(g) for g in golds], datasets=list(dataset), fmts=fmts,
                       options=list(options) if options is not None else None,
                       questions=list(question) if question is not None else None,
                       partial_reward=partial_reward, timeout=timeout, reft_compat=reft_compat,
                       workers=workers)


def math_reward(completions: Sequence[str], *, answer: Sequence[str] | None = None,
                dataset: Sequence[str] | None = None, format: Sequence[str] | None = None,
                options: Sequence[Any] | None = None, **columns: Any) -> list[float]:
    """The ReFT reward for a batch (registered as the built-in reward "math").

    Args:
        completions: generated texts (for P-CoT: full programs, or bodies plus a `question` column).
        answer: gold answers, one per completion.
        dataset, format, options: per-record columns (see the module docstring).
        **columns: other record columns; `partial_reward`, `timeout`, `reft_compat` and `workers`
            are accepted as keyword settings.

    Returns:
        One score per completion: 1.0, partial_reward or 0.0.
    """
    return [v.score for v in math_verdicts(completions, answer=answer, dataset=dataset, format=format,
                                           options=options, **columns)]


def summarize(verdicts: Sequence[Verdict], prefix: str = "reward/") -> dict[str, float]:
    """Per-status fractions and the mean score, e.g. {"reward/no_answer_frac": 0.25, …}."""
    n = max(1, len(verdicts))
    out = {f"{prefix}{s}_frac": sum(v.status == s for v in verdicts) / n for s in STATUSES}
    out[f"{prefix}mean"] = sum(v.score for v in verdicts) / n
    return out
