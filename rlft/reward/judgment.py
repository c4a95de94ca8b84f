"""Natural-language judgments of sampled responses, for NLFT (`docs/nlft.md` §3), without an external LLM.

The NLFT reference asked GPT-4o why a wrong response is wrong (`utils/gpt4_ans.py`, only when the extracted
number differs from the gold one) and trains with that text. rlft writes the judgment from what it has
(`nlft.judge=checker`):
- the checker's verdict and the answer it extracted (`rewards.check_batch`, as held-out evaluation uses it);
- a deterministic comparison of the response's reasoning steps with the annotated CoT: the first step whose
  numbers differ (as a multiset, so `3 + 4 = 7` and `4 + 3 = 7` agree), or the first missing or extra step.
The text comes from `nlft.judgment_template` (+ `nlft.step_template` when a step was located) and the score
from `nlft.correct_score` / `nlft.wrong_score`. A correct response has no judgment.

A model judge plugs in as `nlft.judge=module:function` (or `file.py:function`, or an `rlft.rewards` entry
point), called like a reward function (`fn(completions, **columns)`, TRL's convention) with the columns
`question`, `answer`, `reference` (the annotated solution, or None), `dataset`, `options`, `id`, `format`;
it returns one `(judgment, score)` pair or `{"judgment": ..., "score": ...}` per completion, the judgment
None or "" when there is nothing to criticise.

A response is positive when it has no judgment or its score reaches `nlft.positive_score` (the reference
drops judgments scored >= 7, `finetune_unlikelihood_dynamic_correct.py` lines 494-496).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import rewards
from rlft.tasks.base import Record
from rlft.tasks.prompts import ANSWER_TRIGGER, program_text, prompt_text, target_text

_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: not part of the reasoning text
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Judgment:
    """One response's judgment.

    Attributes:
        text: the natural-language judgment; None when there is nothing to criticise.
        score: the judge's score (checker: `nlft.correct_score` or `nlft.wrong_score`).
        status: the checker's verdict status (correct, wrong, no_answer, ...), or `plugin`.
        extracted: the answer the checker extracted, or None.
    """

    text: str | None
    score: float
    status: str
    extracted: str | None = None

    def positive(self, positive_score: float) -> bool:
        """Trained as a positive response: no judgment, or a score at or above `positive_score`."""
        return not self.text or self.score >= positive_score

    def to_dict(self) -> dict:
        return asdict(self)


def reasoning_steps(text: str) -> list[str]:
    """The non-empty lines of a N-CoT without the final answer line (`Therefore, the answer is: X`)."""
    lines = (line.strip() for line in text.split("\n"))
    return [line for line in lines if line and not line.startswith(ANSWER_TRIGGER.strip())]


def step_numbers(step: str) -> list[str]:
    """The numbers of one step, sorted (a multiset): operand order does not matter."""
    return sorted(_NUMBER.findall(_THOUSANDS.sub("", _CALC.sub("", step))))


def first_wrong_step(response: str, reference: str) -> tuple[int, str | None, str | None] | None:
    """The first step where `response` departs from the annotated `reference` CoT.

    Returns:
        (index, response step, reference step), 0-based: the first position whose numbers differ; or, when
        every shared step agrees, the first missing step (response step None) or extra step (reference step
        None); None when the steps agree throughout (the answer line alone is wrong).
    """
    ours, gold = reasoning_steps(response), reasoning_steps(_CALC.sub("", reference))
    for i, (a, b) in enumerate(zip(ours, gold)):
        if step_numbers(a) != step_numbers(b):
            return i, a, b
    if len(ours) < len(gold):
        return len(ours), None, gold[len(ours)]
    if len(ours) > len(gold):
        return len(gold), ours[len(gold)], None
    return None


def checker_judgments(texts: Sequence[str], records: Sequence[Record], *, style: str, judgment_template: str,
                      step_template: str, correct_score: float, wrong_score: float,
                      partial_reward: float = 0.1) -> list[Judgment]:
    """`nlft.judge=checker`: the checker's verdict on each response, and for a wrong one the judgment text.

    Args:
        texts: decoded responses (P-CoT: the function body; the checker runs the whole program).
        records: the record each response answers.
        style: `nl` or `program` (the step comparison needs N-CoT text: P-CoT judgments have no step note).
        judgment_template: fields {extracted} (the extracted answer, or "missing"), {gold}, {step_note}.
        step_template: fields {step} (1-based), {wrong_step}, {right_step}; fills {step_note}.
    """
    completions = [program_text(prompt_text(r, style), t) if style == "program" else t for r, t in zip(records, texts)]
    verdicts = rewards.check_batch(completions, [r.answer for r in records], datasets=[r.dataset for r in records],
                                   fmts="program" if style == "program" else "text",
                                   options=[r.options for r in records], partial_reward=partial_reward)
    out = []
    for text, record, verdict in zip(texts, records, verdicts):
        if verdict.correct:
            out.append(Judgment(None, correct_score, verdict.status, verdict.extracted))
            continue
        step = first_wrong_step(text, record.cot) if style == "nl" and record.cot else None
        note = "" if step is None else step_template.format(
            step=step[0] + 1, wrong_step=step[1] if step[1] is not None else "(missing)",
            right_step=step[2] if step[2] is not None else "(no such step)")
        judgment = judgment_template.format(extracted=verdict.extracted or "missing", gold=record.answer, step_note=note)
        out.append(Judgment(judgment, wrong_score, verdict.status, verdict.extracted))
    return out


def plugin_judgments(spec: str, texts: Sequence[str], records: Sequence[Record], *, style: str) -> list[Judgment]:
    """A judge plug-in (`nlft.judge=module:function`): see the module docstring for its contract."""
    fn = rewards.get_reward_fn(spec)
    columns = {
        "question": [r.question for r in records], "answer": [r.answer for r in records],
        "reference": [_reference(r, style) for r in records], "dataset": [r.dataset for r in records],
        "options": [r.options for r in records], "id": [r.id for r in records],
        "format": ["program" if style == "program" else "text"] * len(records),
    }
    out = fn(list(texts), **columns)
    if len(out) != len(texts):
        raise ValueError(f"nlft.judge={spec} returned {len(out)} judgments for {len(texts)} responses")
    judgments = []
    for i, item in enumerate(out):
        text, score = (item.get("judgment"), item.get("score")) if isinstance(item, dict) else \
            tuple(item) if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not (text is None or isinstance(text, str)):
            raise ValueError(f"nlft.judge={spec}: response {i} (record {records[i].id}) got {item!r}; expected a "
                             "(judgment text or None, score) pair or {'judgment': ..., 'score': ...}")
        judgments.append(Judgment(text or None, float(score), "plugin"))
    return judgments


def _reference(record: Record, style: str) -> str | None:
    has = record.cot if style == "nl" else record.program
    return target_text(record, style) if has else None
