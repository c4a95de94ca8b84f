"""Extraction: which answer does a completion commit to? (checker.md §1; pure, no workers)."""

from __future__ import annotations

import pytest

from rewards.extract import extract_answer

# (completion, expected answer or None, last_number_fallback)
CASES = [
    # ext_answer_is
    ("Natalia sold 24 clips in May.\nTherefore, the answer is: 72", "72", True),  # ReFT trigger
    ("... so she has 5 left. The answer is 5.", "5", True),  # plain phrase, trailing period dropped
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18", False),  # Minerva
    ("**Answer:** 73", "73", True),  # markdown bold label
    ("**Answer: 73**", "73", True),  # bold around label and value (Math-Verify #76 reads 73**)
    ("Answer:\n73", "73", True),  # value on the next line
    ("The answer is <203>.\nTherefore, the answer is: 203.0", "203.0", True),  # ReFT SVAMP target: last wins
    ("the answer is rs . 300", "rs 300", True),  # "rs ." is money, not a sentence end
    ("The answer is 18 (9 eggs at $2 each).", "18", True),  # parenthetical explanation cut
    # ext_hash
    ("16 - 3 - 4 = 9\n#### 18", "18", True),  # GSM8K marker
    ("####72", "72", True),  # no space
    ("#### $36", "$36", True),  # currency after the marker (normalised later)
    ("#### 1,250", "1,250", True),  # thousands separator kept for the number parser
    # ext_boxed
    ("We get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", False),  # nested braces
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", False),  # text inside a box
    ("So it is \\boxed 5 in total", "5", False),  # \boxed without braces
    ("\\fbox{7}", "7", False),  # \fbox
    ("The answer is $\\boxed{12}$.", "12", False),  # phrase whose value is a box
    ("x = \\boxed{2} and y = \\boxed{3}", "2, 3", False),  # adjacent boxes joined by "and" form a list
    # self_correction: the last explicit statement wins
    ("\\boxed{5}. Wait, I made an error; recomputing gives \\boxed{7}.", "7", False),  # later box
    ("The answer is 5. Actually, the answer is 7.", "7", True),  # later phrase
    ("\\boxed{5} ... so the answer is 6", "6", False),  # phrase after a box overrides it
    # ext_tags
    ("<think>the answer is 3</think> The answer is 4", "4", True),  # text after </think>
    ("<think>the answer is 3, let me think", None, True),  # unfinished think: nothing committed
    ("reasoning <answer>42</answer> trailing 7.", "42", True),  # <answer> scopes the search
    ("Question:\nWhat?\nAnswer reasoning:\nThe answer is 9", "9", True),  # prompt echo cut
    # ext_last_number
    ("She makes 9 * 2 = 18 dollars.", "18", True),  # fallback on a finished sentence
    ("So the total is 16 - 3 - 4 = 9 eggs, and then she sells them for", None, True),  # truncated
    ("9 * 2 =", None, True),  # ends with an operator: intermediate, truncated
    ("She makes 9 * 2 = 18 dollars.", None, False),  # fallback off (math, mathqa)
    ("So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric", "3", True),  # GSM8K line, no period
    ("$1500/month * 12 months/year = $<<1500*12=18000>>18,000/year", "18,000", True),  # "/year" is a unit
    ("9 * 2 = 18, then she", None, True),  # sentence continues: truncated
    ("So she has 2 + 3 = 5kg", "5", True),  # ends on a glued unit, no final punctuation (crashed: no words after)
    ("He came 3rd", "3", True),  # an ordinal's suffix is glued the same way
    ("No numbers here at all.", None, True),  # nothing to take
    # hedged
    ("The answer is 5 or 6.", None, True),  # two candidates
    ("The answer is between 5 and 6.", None, True),  # interval hedge
    ("\\boxed{2 \\text{ or } 3}", None, False),  # hedge inside a box
    ("\\boxed{2} or \\boxed{3}", None, False),  # adjacent boxes joined by "or"
    ("The answer is x = 2 or x = 3", "x = 2, x = 3", False),  # solutions of one variable: a list
    # code-like / injection
    ("The answer is __import__('os').system('touch /tmp/x')", None, True),  # dunder call
    ("The answer is lambda: 5", None, True),  # code
    ("\\boxed{open('/etc/passwd').read()}", None, False),  # file access
]


@pytest.mark.parametrize("completion,expected,fallback", CASES)
def test_extraction(completion: str, expected: str | None, fallback: bool) -> None:
    got = extract_answer(completion, last_number_fallback=fallback)
    assert got.answer == expected, got


def test_long_completion_is_linear_and_keeps_last_box() -> None:
    text = "Let me think. " * 20_000 + "So \\boxed{\\frac{3}{4}}."  # ~280k characters
    assert extract_answer(text, last_number_fallback=False).answer == "\\frac{3}{4}"


def test_unbalanced_box_is_no_answer_not_a_hang() -> None:
    text = "\\boxed{" + "{" * 50_000
    assert extract_answer(text, last_number_fallback=False).answer is None


def test_many_unbalanced_boxes_stay_fast() -> None:
    import time
    text = "\\boxed{" * 30_000
    t0 = time.monotonic()
    assert extract_answer(text, last_number_fallback=False).answer is None
    assert time.monotonic() - t0 < 1.0


def test_random_texts_never_raise() -> None:
    """Extraction is total: any completion gets an answer or a reason, never an exception (a completion ending on
    a glued unit, "... = 5kg", once raised IndexError inside a benchmark's reward). Seeded random texts built from
    the pieces the rules look at."""
    import random

    pieces = ["5", "12", "3.5", "1,000", "$", "%", "kg", "th", "rd", " ", "\n", ".", "=", "+", "*", "/", "the",
              "answer", "is", "\\boxed{", "}", "\\(", "\\)", "<<", ">>", "or", "and", "x", "-", ",", ":", "(", ")",
              "so", "for", "<think>", "</think>", "<answer>", "</answer>", "Answer:", "####", "\\frac{1}{2}", "s"]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for fallback in (True, False):
            got = extract_answer(text, last_number_fallback=fallback)
            assert got.answer is not None or got.reason or got.source == "none", (text, got)
