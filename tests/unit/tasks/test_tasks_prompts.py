"""Prompt and target strings, exactly as specs/reft.md §2 builds them."""

import pytest

from rlft.tasks.base import Record
from rlft.tasks.errors import DataError
from rlft.tasks.prompts import program_prefix, program_text, prompt_text, target_text

Q = "Tom has 3 boxes of 12 pencils. How many pencils?"
BODY = "    boxes = 3\n    per_box = 12\n    total = boxes * per_box\n    return total"
NL = Record(id="r0", question=Q, answer="36", cot="  Tom has 3 * 12 = 36 pencils.\n", dataset="arithmetic")
PROGRAM = Record(id="r1", question=Q, answer="36", program=f'def solution():\n    """{Q}"""\n{BODY}\n')


def test_nl_prompt_and_target():
    assert prompt_text(NL) == "Question:\nTom has 3 boxes of 12 pencils. How many pencils?\nAnswer reasoning:\n"
    assert target_text(NL) == "Tom has 3 * 12 = 36 pencils.\nTherefore, the answer is: 36"


def test_mcq_target_ends_with_the_letter():
    options = "a ) 1 , b ) 2"
    record = Record(id="m", question=f"q ?\n{options}", answer="b", cot="1 + 1 = 2", options=options, dataset="mathqa")
    assert target_text(record, "nl") == "1 + 1 = 2\nTherefore, the answer is: b"


def test_program_prompt_and_target():
    assert prompt_text(PROGRAM, "program") == f'Question:\n{Q}\nAnswer reasoning:\ndef solution():\n    """{Q}"""\n'
    assert target_text(PROGRAM, "program") == BODY


@pytest.mark.parametrize(
    "program",
    [
        'def solution():\n    """Tom ’ s 3 boxes , 12 pencils ?"""\n' + BODY,  # docstring differs from question
        "def solution():\n    '''single quotes'''\n" + BODY,
        "def solution():\n" + BODY,  # no docstring
        'def solution():  \n    """multi\n    line"""\n\n' + BODY + "\n\n",  # blank lines around the body
    ],
)
def test_program_target_drops_the_annotated_header(program):
    record = Record(id="r", question=Q, answer="36", program=program)
    target = target_text(record, "program")
    assert target == BODY
    namespace = {}
    exec(prompt_text(record, "program").split("Answer reasoning:\n")[1] + target, namespace)
    assert namespace["solution"]() == 36 and namespace["solution"].__doc__ == Q


def test_program_text_rebuilds_the_program():
    prompt = prompt_text(PROGRAM, "program")
    assert program_text(prompt, BODY) == program_prefix(Q) + BODY
    assert program_text(program_prefix(Q), BODY) == program_prefix(Q) + BODY
    namespace = {}
    exec(program_text(prompt, BODY), namespace)
    assert namespace["solution"]() == 36


def test_missing_annotation_is_a_clear_error():
    bare = Record(id="gsm8k_test_3", question=Q, answer="36")
    assert prompt_text(bare, "nl") and prompt_text(bare, "program")  # prompts need only the question
    with pytest.raises(DataError, match=r"record gsm8k_test_3: no N-CoT annotation"):
        target_text(bare, "nl")
    with pytest.raises(DataError, match=r"record gsm8k_test_3: no P-CoT annotation"):
        target_text(bare, "program")
    with pytest.raises(DataError, match="does not start with 'def solution\\(\\):'"):
        target_text(Record(id="x", question=Q, answer="1", program="x = 1\nprint(x)"), "program")
    with pytest.raises(DataError, match="no body"):
        target_text(Record(id="x", question=Q, answer="1", program='def solution():\n    """q"""\n'), "program")
    with pytest.raises(ValueError, match="style"):
        prompt_text(NL, "python")
