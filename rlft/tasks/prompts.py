"""Prompt and target strings, exactly as the ReFT reference builds them (``specs/reft.md`` §2).

- N-CoT: prompt ``Question:\\n{question}\\nAnswer reasoning:\\n``; target = the CoT, stripped, then
  ``\\nTherefore, the answer is: {answer}``.
- P-CoT: the prompt also carries the generation prefix ``def solution():\\n    \"\"\"{question}\"\"\"\\n``,
  so the model writes only the body; the target is the annotated program minus its own header and
  docstring (which may differ from the question, as in 37 SVAMP programs), so prompt + target is a
  program.

No BOS, no chat template, no EOS here: the caller tokenizes with ``add_special_tokens=False`` and
appends the tokenizer's EOS id to SFT targets. ``data.prompt_format=chat`` wraps the same question and
target in the tokenizer's chat template instead (`rlft.tasks.chat`).

A conversational record (`Record.prompt_messages` set) keeps its assistant turn verbatim as its N-CoT
target: the dataset's own answer format is what SFT trains, with no ``Therefore, the answer is:`` line added.
"""

from __future__ import annotations

import re

from rlft.tasks.base import Record
from rlft.tasks.errors import DataError

ANSWER_MARKER = "\nAnswer reasoning:\n"
ANSWER_TRIGGER = "\nTherefore, the answer is: "
STYLES = ("nl", "program")
# The header an annotated program starts with: `def solution():` and an optional docstring.
_HEADER = re.compile(r'\A\s*def solution\(\):[ \t]*\n(?:[ \t]*(?P<q>"""|\'\'\').*?(?P=q)[ \t]*\n)?', re.S)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def program_prefix(question: str) -> str:
    """The P-CoT generation prefix: the function header with the question as its docstring."""
    return f'def solution():\n    """{question}"""\n'


def prompt_text(record: Record, style: str = "nl") -> str:
    """The prompt the model is conditioned on (SFT, rollout and evaluation alike).

    Args:
        record: the problem.
        style: ``"nl"`` (N-CoT) or ``"program"`` (P-CoT, which adds the generation prefix).
    """
    _check_style(style)
    prompt = f"Question:\n{record.question}{ANSWER_MARKER}"
    return prompt + program_prefix(record.question) if style == "program" else prompt


def target_text(record: Record, style: str = "nl") -> str:
    """The SFT target that follows `prompt_text` (without EOS).

    Args:
        record: the problem; needs ``cot`` for ``"nl"`` and ``program`` for ``"program"``.
        style: ``"nl"`` or ``"program"``.

    Raises:
        DataError: the record has no annotation of that style, or its program does not start with
            ``def solution():`` or has no body.
    """
    _check_style(style)
    if style == "nl":
        if not record.cot or not record.cot.strip():
            raise DataError(f"record {record.id}: no N-CoT annotation (cot) for style='nl'")
        if record.prompt_messages is not None:  # a conversational record: its assistant turn as written
            return record.cot
        return f"{record.cot.strip()}{ANSWER_TRIGGER}{record.answer}"
    if not record.program:
        raise DataError(f"record {record.id}: no P-CoT annotation (program) for style='program'")
    header = _HEADER.match(record.program)
    if header is None:
        raise DataError(f"record {record.id}: program does not start with 'def solution():'")
    # Drop blank lines after the header: the reference executor stops at the first blank line.
    body = re.sub(r"\A(?:[ \t]*\n)+", "", record.program[header.end() :]).rstrip()
    if not body:
        raise DataError(f"record {record.id}: program has no body after its header")
    return body


def program_text(prompt: str, completion: str) -> str:
    """The full program from a P-CoT prompt (or just its generation prefix) and the model's completion.

    Args:
        prompt: `prompt_text(record, "program")`, or the decoded prompt, or `program_prefix(q)`.
        completion: the generated body.

    Returns:
        The prompt's part after its last ``\\nAnswer reasoning:\\n`` (the ``def solution():``
        header and docstring), then the completion: the program, ready for the checker.
    """
    return prompt.rsplit(ANSWER_MARKER, 1)[-1] + completion
