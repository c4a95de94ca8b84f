"""NLFT's judgments without an LLM (`rlft/reward/judgment.py`): the step comparison, the checker judge, plug-ins."""

from __future__ import annotations

import pytest

from rlft.reward.judgment import Judgment, checker_judgments, first_wrong_step, plugin_judgments, reasoning_steps
from rlft.tasks.base import Record

COT = "The baker bakes 4 * 19 = 76 cookies.\n76 - 22 = 54 cookies are left.\nThat fills 54 / 6 = 9 bags."
RECORD = Record(id="a1", question="A baker bakes 4 trays of 19 cookies. ...", answer="9", cot=COT, dataset="arithmetic")
JUDGMENT = "Wrong: it answers {extracted}, the answer is {gold}.{step_note}"
STEP = " Step {step}: {wrong_step} | {right_step}"


def test_reasoning_steps_drop_the_answer_line_and_blanks() -> None:
    assert reasoning_steps("a = 1\n\n b = 2 \nTherefore, the answer is: 2") == ["a = 1", "b = 2"]


@pytest.mark.parametrize("response, expected", [
    # the second step computes 76 - 22 wrongly: located there
    ("The baker bakes 4 * 19 = 76 cookies.\n76 - 22 = 56 cookies are left.\nThat fills 56 / 6 = 9 bags.",
     (1, "76 - 22 = 56 cookies are left.", "76 - 22 = 54 cookies are left.")),
    # operands in another order and other words: the same numbers, so the same step
    ("He makes 19 * 4 = 76.\n76 - 22 = 54 left.\n54 / 6 = 9 bags.\nTherefore, the answer is: 9", None),
    # stops after two steps: the third is missing
    ("The baker bakes 4 * 19 = 76 cookies.\n76 - 22 = 54 cookies are left.\nTherefore, the answer is: 54",
     (2, None, "That fills 54 / 6 = 9 bags.")),
    # an extra fourth step
    (COT + "\nThen 9 + 1 = 10.", (3, "Then 9 + 1 = 10.", None)),
    # thousands separators and GSM8K calculator annotations do not count as numbers of their own
    ("The baker bakes 4 * 19 = 76 cookies.\n76 - 22 = 54 cookies are left.\nThat fills 54 / 6 = 9 bags.", None),
])
def test_first_wrong_step(response: str, expected) -> None:
    assert first_wrong_step(response, COT) == expected


def test_gsm8k_annotations_and_commas() -> None:
    reference = "She earns 1,200 * 2 = <<1200*2=2400>>2,400 dollars.\nShe saves 2400 / 2 = <<2400/2=1200>>1200."
    assert first_wrong_step("She earns 2 * 1200 = 2400 dollars.\nShe saves 2400 / 2 = 1200.", reference) is None
    assert first_wrong_step("She earns 2 * 1200 = 2400 dollars.\nShe saves 2400 / 3 = 800.", reference)[0] == 1


def test_checker_judgments() -> None:
    texts = [COT + "\nTherefore, the answer is: 9",
             "The baker bakes 4 * 19 = 76 cookies.\n76 - 22 = 56 cookies are left.\nTherefore, the answer is: 56",
             "The baker bakes"]  # no answer at all (a truncated response)
    out = checker_judgments(texts, [RECORD] * 3, style="nl", judgment_template=JUDGMENT, step_template=STEP,
                            correct_score=10.0, wrong_score=2.0)
    assert out[0] == Judgment(None, 10.0, "correct", "9")
    assert out[1].text == ("Wrong: it answers 56, the answer is 9. Step 2: 76 - 22 = 56 cookies are left. | "
                           "76 - 22 = 54 cookies are left.") and out[1].score == 2.0 and out[1].status == "wrong"
    assert out[2].text == "Wrong: it answers missing, the answer is 9. Step 1: The baker bakes | " \
                          "The baker bakes 4 * 19 = 76 cookies."
    assert [j.positive(7.0) for j in out] == [True, False, False]
    assert out[1].positive(2.0)  # a wrong response scored at the threshold trains as a positive


STUB = '''
def pairs(completions, question, reference, **columns):
    return [(None, 9) if "ok" in c else ("bad: " + ref, 3.0) for c, ref in zip(completions, reference)]

def dicts(completions, **columns):
    return [{"judgment": "meh", "score": 8} for c in completions]

def broken(completions, **columns):
    return [0.5 for c in completions]
'''


def test_plugin_judges(tmp_path) -> None:
    path = tmp_path / "judge.py"
    path.write_text(STUB)
    out = plugin_judgments(f"{path}:pairs", ["ok fine", "wrong"], [RECORD] * 2, style="nl")
    assert out[0] == Judgment(None, 9.0, "plugin") and out[1].text.startswith("bad: The baker bakes 4 * 19")
    assert out[1].text.endswith("Therefore, the answer is: 9") and not out[1].positive(7.0)
    assert plugin_judgments(f"{path}:dicts", ["x"], [RECORD], style="nl")[0].positive(7.0)  # score 8 >= 7
    with pytest.raises(ValueError, match="expected a .judgment text or None, score. pair"):
        plugin_judgments(f"{path}:broken", ["x"], [RECORD], style="nl")
