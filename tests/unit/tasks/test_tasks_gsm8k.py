"""GSM8K official JSONL loader: annotations stripped, `####` answers, located errors."""

import json

import pytest

from rlft.tasks.errors import DataError
from rlft.tasks.gsm8k import load_gsm8k_jsonl, parse_gsm8k_answer

ROWS = [
    {
        "question": "Natalia sold clips to 48 friends in April, and half as many in May. How many clips in all?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    },
    {
        "question": "A farm has 617 cows and buys 617 more. How many cows does it have?  ",
        "answer": "It has 617 + 617 = <<617+617=1234>>1,234 cows.\n#### 1,234",
    },
]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def gsm8k_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [json.dumps(r) for r in ROWS])


def test_load_strips_annotations_and_commas(gsm8k_file):
    records = load_gsm8k_jsonl(gsm8k_file, split_name="train")
    assert [r.id for r in records] == ["gsm8k_train_0", "gsm8k_train_1"]
    assert records[0].cot == "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips."
    assert records[0].answer == "72"
    assert records[1].cot == "It has 617 + 617 = 1,234 cows."
    assert records[1].answer == "1234"
    assert records[1].question == ROWS[1]["question"].strip()
    assert all(r.dataset == "gsm8k" and r.program is None and r.options is None for r in records)


def test_split_name_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ["", json.dumps(ROWS[0]), "   ", json.dumps(ROWS[1])])
    assert [r.id for r in load_gsm8k_jsonl(path, split_name="test")] == ["gsm8k_test_0", "gsm8k_test_1"]


@pytest.mark.parametrize(
    "text, cot, answer",
    [
        ("a = <<1+1=2>>2\n#### 2", "a = 2", "2"),  # annotation removed
        ("#### 5", None, "5"),  # no reasoning at all
        ("x\n####72", "x", "72"),  # no space after ####
        ("x\n#### 1,000,000  ", "x", "1000000"),  # commas and trailing spaces dropped
        ("x\n#### -3", "x", "-3"),  # negative gold kept
    ],
)
def test_parse_gsm8k_answer(text, cot, answer):
    assert parse_gsm8k_answer(text) == (cot, answer)


@pytest.mark.parametrize("text", ["no marker", "x\n#### ", "x #### 5"])
def test_parse_gsm8k_answer_rejects(text):
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer(text)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"question": "x", "answer": ', r"train\.jsonl:3:\d+: invalid JSON"),
        ('{"question": "What is 2 + 2?"}', r"train\.jsonl:3: missing field 'answer'"),
        ('{"answer": "#### 4"}', r"train\.jsonl:3: missing field 'question'"),
        ('{"question": "q", "answer": 4}', r"train\.jsonl:3: field 'answer' must be a string"),
        ('{"question": "q", "answer": "four"}', r"train\.jsonl:3: field 'answer': no final '#### <value>' line"),
        ('["question", "answer"]', r"train\.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), bad_line])
    with pytest.raises(DataError, match=message):
        load_gsm8k_jsonl(path)


def test_empty_and_missing_files(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        load_gsm8k_jsonl(empty)
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_gsm8k_jsonl(tmp_path / "nope.jsonl")
    assert issubclass(DataError, ValueError)
