"""The built-in arithmetic task: determinism, disjoint splits, difficulty, and correct annotations."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.tasks import arithmetic
from rlft.tasks.prompts import program_prefix, target_text

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def by_difficulty():
    return {d: arithmetic.generate(300, seed=7, difficulty=d) for d in (0, 1, 2, 3)}


def numbers(text):
    return [int(x) for x in re.findall(r"\d+", text)]


def test_same_seed_same_records_and_prefix_stable():
    a = arithmetic.generate(50, seed=3)
    assert a == arithmetic.generate(50, seed=3)
    assert a[:20] == arithmetic.generate(20, seed=3)
    assert a != arithmetic.generate(50, seed=4)
    assert [r.id for r in a[:3]] == ["arithmetic_0", "arithmetic_1", "arithmetic_2"]


def test_same_records_in_another_process():
    code = (
        "import json; from rlft.tasks import arithmetic; "
        "tr, te = arithmetic.make_splits(30, 10, seed=5, difficulty=2); "
        "print(json.dumps([r.to_dict() for r in tr + te]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}  # a different str hash seed
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    train, test = arithmetic.make_splits(30, 10, seed=5, difficulty=2)
    assert json.loads(out.stdout) == [r.to_dict() for r in train + test]


def test_splits_are_disjoint_and_test_ignores_n_train():
    train, test = arithmetic.make_splits(400, 100, seed=0)
    assert len(train) == 400 and len(test) == 100
    assert [r.id for r in test[:2]] == ["arithmetic_test_0", "arithmetic_test_1"]
    assert [r.id for r in train[:2]] == ["arithmetic_train_0", "arithmetic_train_1"]
    train_q = {arithmetic.normalize_question(r.question) for r in train}
    test_q = {arithmetic.normalize_question(r.question) for r in test}
    assert len(train_q) == 400 and len(test_q) == 100 and not train_q & test_q
    assert arithmetic.make_splits(10, 100, seed=0)[1] == test
    assert arithmetic.make_splits(10, 100, seed=1)[1] != test


def test_normalize_question():
    same = arithmetic.normalize_question
    assert same("Tom has  $5. How many?") == same("tom has $5 how many")


def test_difficulty_raises_numbers_and_steps(by_difficulty):
    def stats(records):
        steps = [len(EQUATION.findall(r.cot)) for r in records]
        given = [max(numbers(r.question)) for r in records]
        answers = [int(r.answer) for r in records]
        return sum(steps) / len(steps), sorted(given)[len(given) // 2], max(answers)

    (s0, g0, a0), (s1, g1, a1), (s2, g2, a2), (s3, g3, a3) = (stats(by_difficulty[d]) for d in (0, 1, 2, 3))
    assert s0 <= s1 < s2 < s3 and g0 < g1 < g2 < g3 and a0 <= a1 < a2 < a3
    for r in by_difficulty[0]:  # difficulty 0: two steps, small factors
        steps = EQUATION.findall(r.cot)
        assert len(steps) == 2
        assert all(int(a) <= 5 or int(b) <= 5 for a, op, b, _ in steps if op == "*")
    for r in by_difficulty[1]:  # difficulty 1 stays small: operands under 1,000 (bills and page counts aside)
        steps = EQUATION.findall(r.cot)
        assert 2 <= len(steps) <= 3
        assert all(int(b) <= 999 for _, op, b, _ in steps if op in "*/")
        assert all(int(a) <= 9 or int(b) <= 9 for a, op, b, _ in steps if op == "*")  # n-digit x 1-digit
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic.generate(1, seed=0, difficulty=-1)


@pytest.mark.parametrize("difficulty", [0, 1, 2, 3])
def test_cot_arithmetic_is_correct(by_difficulty, difficulty):
    for r in by_difficulty[difficulty]:
        lines = r.cot.split("\n")
        assert 2 <= len(lines) <= 4, r
        for line in lines:
            ((a, op, b, c),) = EQUATION.findall(line)  # one operation per sentence
            assert OPS[op](int(a), int(b)) == int(c), line
        assert EQUATION.findall(lines[-1])[0][3] == r.answer
        assert int(r.answer) > 0 and r.dataset == "arithmetic" and r.options is None


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_program_returns_the_answer(by_difficulty, difficulty):
    for r in by_difficulty[difficulty]:
        namespace = {}
        exec(compile(r.program, r.id, "exec"), namespace)
        result = namespace["solution"]()
        assert type(result) is int and str(result) == r.answer, r
        assert namespace["solution"].__doc__ == r.question
        assert "\n\n" not in r.program  # the reference executor stops at the first blank line
        assert program_prefix(r.question) + target_text(r, "program") == r.program


def test_size_and_variety(by_difficulty):
    for d, records in by_difficulty.items():
        assert max(len(r.question.split()) for r in records) < 60
        # One token per digit and one per word or symbol: the N-CoT target stays short.
        target_tokens = [len(re.findall(r"\d|\w+|[^\w\s]|\n", target_text(r, "nl"))) for r in records]
        assert max(target_tokens) <= (80 if d == 1 else 120)
    questions = " ".join(r.question for r in by_difficulty[1])
    stories = ["buys", "shares", "per hour", "km per hour", "saves", "sells", "times as many", "pages", "friends share"]
    assert all(s in questions for s in stories)
    assert len({r.answer for r in by_difficulty[1]}) > 100


@pytest.mark.parametrize("difficulty", [0, 2])
def test_varied_reasoning_orders_keep_problems_and_answers(difficulty):
    """data.cot_orders=varied: the same questions and answers, each annotated in a valid order (every step's
    operands are known when it runs; the last step is the answer), and the orders really vary."""
    one, test_one = arithmetic.make_splits(200, 20, seed=3, difficulty=difficulty)
    varied, test_varied = arithmetic.make_splits(200, 20, seed=3, difficulty=difficulty, cot_orders="varied")
    assert test_varied == test_one
    assert [(r.id, r.question, r.answer) for r in varied] == [(r.id, r.question, r.answer) for r in one]
    changed = 0
    for r, r1 in zip(varied, one):
        known = {int(x) for x in re.findall(r"\d+", r.question)}
        lines = r.cot.split("\n")
        for line in lines:
            ((a, op, b, c),) = EQUATION.findall(line)
            assert OPS[op](int(a), int(b)) == int(c) and {int(a), int(b)} <= known | {2}, (line, r.question)
            known.add(int(c))
        assert EQUATION.findall(lines[-1])[0][3] == r.answer
        namespace = {}
        exec(compile(r.program, r.id, "exec"), namespace)
        assert str(namespace["solution"]()) == r.answer
        assert len(lines) == len(r1.cot.split("\n"))
        changed += r.cot != r1.cot
    assert 40 < changed < 200  # a draw per question, not a fixed permutation


def test_reasoning_orders_count_independent_steps():
    problem = arithmetic._Problem()
    problem.given("per_hour", 5), problem.given("hours", 2), problem.given("hours_tuesday", 3)
    problem.step("monday", "per_hour", "*", "hours", "#")
    problem.step("tuesday", "per_hour", "*", "hours_tuesday", "#")
    problem.step("made", "monday", "+", "tuesday", "#")
    orders = arithmetic.reasoning_orders(problem)
    assert sorted({tuple(o) for o, _ in orders}) == [(0, 1, 2), (1, 0, 2)]
    assert len(orders) == 2 * 8  # two orders x three commutative steps, each operand order
    with pytest.raises(ValueError, match="cot_orders"):
        arithmetic.make_splits(2, 2, cot_orders="shuffled")


def test_varied_orders_on_other_data_is_an_error(tmp_path):
    from rlft.config import ConfigError, load_config

    assert load_config(None, ["data.cot_orders=varied"]).data.cot_orders == "varied"
    with pytest.raises(ConfigError, match="data.cot_orders=varied"):
        load_config(None, ["data.cot_orders=varied", f"data.train={tmp_path / 'gsm8k.jsonl'}"])
