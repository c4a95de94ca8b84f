"""MathQA multiple choice: letters, value-to-option mapping and its traps (checker.md §4)."""

from __future__ import annotations

import pytest

from rewards import check
from rewards.mcq import parse_options

OPTS = "a ) 156 , b ) 167 , c ) 870 , d ) 352 , e ) 380"
DUP = "a ) 2000 , b ) 2778 , c ) 2299 , d ) 2778 , e ) 2240"  # b and d share a value
TEXT = "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"
PCT = "a ) 16 % , b ) 16.66 % , c ) 76.69 % , d ) 76.98 % , e ) 75 %"

# (category, completion, gold letter, options, expected status)
CASES = [
    # mcq_letter
    ("mcq_letter", "Therefore, the answer is: c", "c", OPTS, "correct"),  # ReFT target form
    ("mcq_letter", "Answer: (C)", "c", OPTS, "correct"),  # upper case in parentheses
    ("mcq_letter", "The answer is \\boxed{C}", "c", OPTS, "correct"),  # boxed letter
    ("mcq_letter", "Therefore, the answer is: c ) 870", "c", OPTS, "correct"),  # letter with its option
    ("mcq_letter", "The answer is D) 352", "c", OPTS, "wrong"),  # another letter
    ("mcq_letter", "The correct option is (a) 156", "a", OPTS, "correct"),  # "option (a)"
    ("mcq_letter", "Therefore, the answer is: e ) none of these", "e", TEXT, "correct"),  # text option
    ("mcq_letter", "Therefore, the answer is: 'c'", "c", OPTS, "correct"),  # quoted letter
    # mcq_value: no letter, a value that maps to exactly one option
    ("mcq_value", "Therefore, the answer is: 870", "c", OPTS, "correct"),  # unique value
    ("mcq_value", "The answer is 870 tickets.", "c", OPTS, "correct"),  # value with a unit
    ("mcq_value", "Therefore, the answer is: 352", "c", OPTS, "wrong"),  # value of another option
    ("mcq_value", "Therefore, the answer is: 16.666", "b", PCT, "correct"),  # option printed at 2 decimals
    ("mcq_value", "Therefore, the answer is: 999", "c", OPTS, "wrong"),  # value in no option
    ("mcq_value", "Therefore, the answer is: none of these", "e", TEXT, "correct"),  # text value
    ("mcq_value", "Therefore, the answer is: 0.15", "b", "a ) 0.1 , b ) 0.15 , c ) 0.2", "correct"),  # exact beats precision
    ("mcq_value", "Therefore, the answer is: − 120", "a", "a ) − 120 , b ) 120 , c ) 60", "correct"),  # spaced minus sign
    ("mcq_value", "Therefore, the answer is: 78 + ( 4 / 7 ) %", "e", "d ) 75 % , e ) 78 + ( 4 / 7 ) %", "correct"),  # expression option
    # mcq_hard
    ("mcq_hard", "Therefore, the answer is: a total of 870", "c", OPTS, "correct"),  # article "a" is no letter
    ("mcq_hard", "Therefore, the answer is: b or c", "c", OPTS, "no_answer"),  # hedge
    ("mcq_hard", "Therefore, the answer is: 2778", "d", DUP, "no_answer"),  # duplicate option values
    ("mcq_hard", "Therefore, the answer is: d = 352", "d", OPTS, "correct"),  # d is a variable here
    ("mcq_hard", "Therefore, the answer is: b ) 870", "c", OPTS, "wrong"),  # the letter wins over the value
    ("mcq_hard", "I think it is 870 or so", "c", OPTS, "no_answer"),  # no marker: no fallback on MCQ
]


@pytest.mark.parametrize("category,completion,gold,options,expected", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_mcq_case(category: str, completion: str, gold: str, options: str, expected: str) -> None:
    v = check(completion, gold, dataset="mathqa", options=options)
    assert v.status == expected, v


def test_options_parsing_quirks() -> None:
    assert parse_options(OPTS)["c"] == "870"
    assert parse_options("a ) 124 % , b ) b ) 120 % , c ) c ) 96 %")["b"] == "120 %"  # repeated mark
    assert parse_options("['a ) 137 / 216', 'b ) 137 / 218']")["b"] == "137 / 218"  # list string
    assert parse_options(["a ) 1", "b ) 2"])["b"] == "2"  # real list


def test_options_from_question() -> None:
    q = "how many tickets ?\n" + OPTS
    v = check("Therefore, the answer is: 870", "c", dataset="mathqa", question=q)
    assert v.correct
