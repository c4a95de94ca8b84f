"""Numeric datasets (GSM8K, SVAMP, MathQA-numeric, arithmetic): formats and hard negatives,
plus the reward table of reft.md §18 under both checkers (checker.md §2, §3, §7, §8)."""

from __future__ import annotations

import pytest

from rewards import check, check_batch
from rewards.normalize import parse_number

# (category, completion, gold, dataset, expected status)
CASES = [
    # num_format
    ("num_format", "Therefore, the answer is: 1,000", "1000", "gsm8k", "correct"),  # thousands comma
    ("num_format", "The answer is 1 000.", "1000", "gsm8k", "correct"),  # thousands space
    ("num_format", "#### 1,234.5", "1234.5", "gsm8k", "correct"),  # grouped decimal
    ("num_format", "The answer is .75", "0.75", "gsm8k", "correct"),  # leading dot
    ("num_format", "The answer is 18.00", "18", "gsm8k", "correct"),  # trailing zeros
    ("num_format", "The answer is 012", "12", "gsm8k", "correct"),  # leading zero
    ("num_format", "The answer is −3", "-3", "gsm8k", "correct"),  # Unicode minus (Math-Verify misses it)
    ("num_format", "The answer is 7 3/4", "7.75", "gsm8k", "correct"),  # plain mixed number, not 21/4
    ("num_format", "The answer is 5/2", "2.5", "gsm8k", "correct"),  # fraction vs decimal, exact
    ("num_format", "The answer is 1,22", "1.22", "gsm8k", "no_answer"),  # never a decimal comma
    ("num_format", "The answer is 2,500", "25", "gsm8k", "wrong"),  # 2,500 is 2500
    # units and currency
    ("units", "The answer is $18.", "18", "gsm8k", "correct"),  # dollar sign
    ("units", "#### $36", "36", "gsm8k", "correct"),  # dollar after ####
    ("units", "Therefore, the answer is: 45 mph", "45", "gsm8k", "correct"),  # unit word
    ("units", "The answer is 18 dollars per week.", "18", "gsm8k", "correct"),  # unit phrase
    ("units", "The answer is \\$32,\\!348", "32348", "gsm8k", "correct"),  # LaTeX money
    ("units", "The answer is 30°", "30", "gsm8k", "correct"),  # degrees sign
    ("units", "The answer is 2 hours and 30 minutes.", "150", "gsm8k", "no_answer"),  # two numbers
    # percent: stripped on both sides, never rescaled
    ("percent", "The answer is 25%", "25", "gsm8k", "correct"),  # percent sign
    ("percent", "The answer is 12.5 percent", "12.5", "gsm8k", "correct"),  # word
    ("percent", "The answer is 0.25", "25", "gsm8k", "wrong"),  # x/100 is not accepted
    ("percent", "The answer is 2500%", "25", "gsm8k", "wrong"),  # nor x*100 (Math-Verify's false positive)
    # word_numbers
    ("word_numbers", "Therefore, the answer is: eighteen", "18", "gsm8k", "correct"),  # word
    ("word_numbers", "The answer is forty-three.", "43", "gsm8k", "correct"),  # hyphenated
    ("word_numbers", "The answer is 1 million", "1000000", "gsm8k", "correct"),  # scale word
    ("word_numbers", "The answer is three hundred and twenty", "320", "gsm8k", "correct"),  # and
    ("word_numbers", "The answer is seventeen", "18", "gsm8k", "wrong"),  # wrong word
    # neg_close_number: exact on GSM8K/SVAMP
    ("neg_close_number", "Therefore, the answer is: 17.995", "18", "gsm8k", "wrong"),  # within 0.01, still wrong
    ("neg_close_number", "The answer is 6.01", "6", "svamp", "wrong"),  # ReFT's tolerance false positive
    ("neg_close_number", "The answer is 10001", "10000", "gsm8k", "wrong"),  # relative-tolerance trap
    ("neg_close_number", "The answer is 2^{100}+1", "1267650600228229401496703205376", "gsm8k", "wrong"),  # huge ints exact
    # neg_not_final: the gold appears, but not as the committed answer
    ("neg_not_final", "She had 18 eggs and sold 2.\nTherefore, the answer is: 16", "18", "gsm8k", "wrong"),  # intermediate
    ("neg_not_final", "16 - 3 - 4 = 9 eggs. 9 * 2 = 18, then she", "18", "gsm8k", "no_answer"),  # truncated
    # svamp golds are float strings
    ("svamp", "Therefore, the answer is: 14", "14.0", "svamp", "correct"),  # 14 = 14.0
    ("svamp", "Therefore, the answer is <203>.\nTherefore, the answer is: 203.0", "203.0", "svamp", "correct"),  # ReFT CoT
    ("svamp", "Therefore, the answer is: 204", "203.0", "svamp", "wrong"),  # off by one
    ("svamp", "Therefore, the answer is: 0.41666666666666663", "0.4166666666666667", "svamp", "correct"),  # float reprs: 12 digits
    ("svamp", "Therefore, the answer is: 3.22", "3.2222222222", "svamp", "wrong"),  # a rounded answer is still inexact
    # mathqa-numeric: 0.01 absolute tolerance for rounded golds
    ("mathqa-numeric", "Therefore, the answer is: 0.333", "0.3333333333333333", "mathqa-numeric", "correct"),  # raw float gold
    ("mathqa-numeric", "Therefore, the answer is: 48.68", "48.68077", "mathqa-numeric", "correct"),  # rounded gold
    ("mathqa-numeric", "Therefore, the answer is: 48.7", "48.68077", "mathqa-numeric", "wrong"),  # 0.019 away
    # arithmetic: rlft's synthetic task behaves like gsm8k
    ("arithmetic", "3 + 4 = 7\nTherefore, the answer is: 7", "7", "arithmetic", "correct"),  # N-CoT
    ("arithmetic", "Therefore, the answer is: -7", "7", "arithmetic", "wrong"),  # sign
    # gold given as a full GSM8K solution
    ("gold_forms", "The answer is 72.", "48/2 = 24\n48+24 = 72\n#### 72", "gsm8k", "correct"),  # text after ####
    # no_answer
    ("no_answer", "I don't know.", "5", "gsm8k", "no_answer"),  # no number
    ("no_answer", "", "5", "gsm8k", "no_answer"),  # empty
    ("no_answer", "Therefore, the answer is: banana", "5", "gsm8k", "no_answer"),  # not a number
]


@pytest.mark.parametrize("category,completion,gold,dataset,expected", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_numeric_case(category: str, completion: str, gold: str, dataset: str, expected: str) -> None:
    v = check(completion, gold, dataset=dataset)
    assert v.status == expected, v
    assert v.correct == (expected == "correct")


def test_numeric_fast_path_needs_no_worker() -> None:
    # GSM8K-style checks are decided in-process: microseconds, no sympy import needed
    import sys
    v = check("so she earns 9 * 2 = 18 dollars.\nTherefore, the answer is: 18", "18")
    assert v.correct and v.seconds < 0.01
    assert "rewards.symbolic" not in sys.modules


@pytest.mark.parametrize("text,value", [
    ("1,250", 1250), ("-1,250.5", -1250.5), ("1 000 000", 1000000), ("7 3/4", 7.75),
    ("1 1 / 5", 1.2), ("0.\\overline{3}", 1 / 3), ("2\\frac{1}{2}", 2.5), ("1.2\\times10^{3}", 1200),
    ("1e3", 1000), ("1,22", None), ("12a", None), ("1" * 1001, None),
])
def test_parse_number(text: str, value: float | None) -> None:
    # exact Fractions; a 1,001-digit string is refused (answers are capped at 1,000 characters)
    got = parse_number(text)
    if value is None:
        assert got is None
    else:
        assert got is not None and abs(float(got) - value) < 1e-12


def test_long_integers_are_exact() -> None:
    assert parse_number("1" * 500) == int("1" * 500)


# reft.md §18: (completion tail, gold, reference score, rlft score)
REFT_TABLE = [
    ("Therefore, the answer is: 18", "18", 1.0, 1.0),  # exact
    ("Therefore, the answer is: 17.995", "18", 1.0, 0.1),  # within ReFT's 0.01, not exact
    ("Therefore, the answer is: 20", "18", 0.1, 0.1),  # wrong number
    ("Therefore, the answer is: eighteen", "18", 0.0, 1.0),  # float() fails in ReFT
    ("Therefore, the answer is: 1,000", "1000", 0.0, 1.0),  # prediction keeps its comma in ReFT
    ("I am not sure.", "18", 0.0, 0.0),  # no trigger, no number
]


@pytest.mark.parametrize("tail,gold,reference,rlft", REFT_TABLE)
def test_reft_reward_table(tail: str, gold: str, reference: float, rlft: float) -> None:
    text = "Some reasoning.\n" + tail
    assert check(text, gold, dataset="gsm8k", reft_compat=True).score == reference
    assert check(text, gold, dataset="gsm8k").score == rlft


def test_reft_compat_mathqa_gives_partial_to_any_string() -> None:
    # ReFT lower-cases the text after the trigger and compares strings: "c ) 870" is wrong (0.1)
    text = "reasoning\nTherefore, the answer is: c ) 870"
    assert check(text, "c", dataset="mathqa", reft_compat=True).score == pytest.approx(0.1)
    assert check(text, "c", dataset="mathqa").score == 1.0
    assert check("reasoning\nTherefore, the answer is: C", "c", dataset="mathqa", reft_compat=True).score == 1.0


def test_partial_reward_is_configurable_and_batch_matches_single() -> None:
    texts = ["The answer is 5.", "The answer is 6.", "nothing"]
    vs = check_batch(texts, ["5", "5", "5"], partial_reward=0.25)
    assert [v.score for v in vs] == [1.0, 0.25, 0.0]
    assert [v.status for v in vs] == ["correct", "wrong", "no_answer"]


def test_tolerance_override() -> None:
    assert check("The answer is 6.01", "6", tolerance=0.01).correct
    assert not check("The answer is 6.02", "6", tolerance=0.01).correct
