"""The one record type every task loader produces.

A record is a math word problem with its annotated reasoning. Loaders for GSM8K, the ReFT release
(SVAMP / MathQA / GSM8K, N-CoT and P-CoT), Hugging Face datasets and the built-in arithmetic task all
return lists of `Record`, so the trainers never know where data came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Record:
    """One problem.

    Attributes:
        id: stable identifier, unique within a split (e.g. ``gsm8k_train_17``).
        question: the problem text (MathQA multiple choice keeps its options inline).
        answer: the gold final answer as a string (``"18"``, ``"203.0"``, or a letter for MathQA-MCQ).
        cot: the annotated natural-language chain of thought (N-CoT), without the final answer line;
            None for test files that have no annotation. A conversational record's assistant turn,
            verbatim: it is then the whole SFT target (see `prompt_messages`).
        program: the annotated Python program (P-CoT), a ``def solution():`` function; None if absent.
        options: MathQA's inline options string (``a ) 12 , b ) 15 , ...``); None otherwise.
        dataset: which checker rules apply: ``gsm8k``, ``svamp``, ``mathqa``, ``mathqa-numeric``,
            ``arithmetic`` or ``math``.
        prompt_messages: conversational datasets only (`rlft.tasks.conversational`): the turns before the
            assistant's answer as ``(role, content)`` pairs, ending with the user turn whose content is
            ``question``. ``data.prompt_format=chat`` renders these turns; the ``reft`` prompt uses only
            ``question``. None for every other source.
    """

    id: str
    question: str
    answer: str
    cot: str | None = None
    program: str | None = None
    options: str | None = None
    dataset: str = "gsm8k"
    prompt_messages: tuple[tuple[str, str], ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)
