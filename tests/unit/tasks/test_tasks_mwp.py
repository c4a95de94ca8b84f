"""ReFT-release JSON loader: N-CoT, P-CoT, test files, MathQA options, located errors."""

import json

import pytest

from rlft.tasks.errors import DataError
from rlft.tasks.mwp import load_reft_json

SVAMP_Q = "Iesha has 344 books. 136 are about school and the rest are about sports. How many are about sports?"
SVAMP_NL = [
    {
        "item_id": "svamp_1",
        "question": SVAMP_Q,
        "answer_cot": "344 books - 136 school books = 208 books about sports\n\nTherefore, the answer is <208>.",
        "answer_value": "208.0",
    },
    {
        "item_id": "svamp_2",
        "question": "Paige had 11 songs. She deleted 9. How many are left?",
        "answer_cot": "11 - 9 = 2\nTherefore, the answer is <2>.",
        "answer_value": "2.0",
    },
]
SVAMP_PROGRAM = (
    'def solution():\n    """' + SVAMP_Q + '"""\n'
    "    num_books_total = 344\n    num_books_school = 136\n"
    "    num_books_sports = num_books_total - num_books_school\n    result = num_books_sports\n    return result"
)
MATHQA_Q = (
    "a shopkeeper sold an article offering a discount of 5 % and earned a profit of 31.1 % . what would have "
    "been the percentage of profit earned if no discount had been offered ?\n"
    "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"
)
MATHQA_LIST_Q = "what is 6 + 6 ?\n['a ) 12', 'b ) 15', 'c ) 10', 'd ) 8', 'e ) 14']"


def write_json(path, items):
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path


def test_nl_file(tmp_path):
    records = load_reft_json(write_json(tmp_path / "svamp_nl.json", SVAMP_NL))
    assert [r.id for r in records] == ["svamp_1", "svamp_2"]
    assert records[0].cot == SVAMP_NL[0]["answer_cot"]  # kept as annotated (prompts.py strips)
    assert records[0].answer == "208.0" and records[0].question == SVAMP_Q
    assert all(r.dataset == "svamp" and r.program is None and r.options is None for r in records)


def test_program_file(tmp_path):
    items = [{"item_id": "svamp_1", "question": SVAMP_Q, "answer_cot": SVAMP_PROGRAM, "answer_value": "208.0"}]
    (record,) = load_reft_json(write_json(tmp_path / "svamp_python_sdp.json", items), style="program")
    assert record.program == SVAMP_PROGRAM and record.cot is None and record.dataset == "svamp"


def test_style_must_match_the_file(tmp_path):
    nl = write_json(tmp_path / "nl.json", SVAMP_NL)
    with pytest.raises(DataError, match=r"nl\.json:\d+: item 0 \(svamp_1\): style='program' but answer_cot is not"):
        load_reft_json(nl, style="program")
    items = [{"item_id": "svamp_1", "question": SVAMP_Q, "answer_cot": SVAMP_PROGRAM, "answer_value": "208.0"}]
    with pytest.raises(DataError, match="pass style='program'"):
        load_reft_json(write_json(tmp_path / "p.json", items), style="nl")
    with pytest.raises(ValueError, match="style"):
        load_reft_json(nl, style="python")


def test_test_files_without_cot_and_dataset_inference(tmp_path):
    items = [
        {"item_id": "gsm8k_0", "question": "Janet's ducks lay 16 eggs ...", "answer_value": "18"},
        {"item_id": "mathqa-numeric_2", "question": "there are 28 stations ... ?", "answer_value": "870.0"},
        {"item_id": "svamp_3735", "question": "how many sacks per day ?", "answer_value": 14.0},  # a number is accepted
    ]
    for style in ("nl", "program"):
        records = load_reft_json(write_json(tmp_path / "test_set.json", items), style=style)
        assert [r.dataset for r in records] == ["gsm8k", "mathqa-numeric", "svamp"]
        assert [r.answer for r in records] == ["18", "870.0", "14.0"]
        assert all(r.cot is None and r.program is None for r in records)
    forced = load_reft_json(tmp_path / "test_set.json", dataset="svamp")
    assert {r.dataset for r in forced} == {"svamp"}


def test_mathqa_options(tmp_path):
    items = [
        {"item_id": "mathqa_0", "question": MATHQA_Q, "answer_value": "a"},
        {"item_id": "mathqa_7", "question": MATHQA_LIST_Q, "answer_value": "A"},
    ]
    first, second = load_reft_json(write_json(tmp_path / "mathqa_test_set.json", items))
    assert first.question == MATHQA_Q  # question kept as is, options inline
    assert first.options == "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"
    assert first.answer == "a" and first.dataset == "mathqa"
    assert second.question == MATHQA_LIST_Q
    assert second.options == "a ) 12 , b ) 15 , c ) 10 , d ) 8 , e ) 14"  # list repr normalised
    assert second.answer == "a"


def test_mathqa_numeric_has_no_options(tmp_path):
    items = [{"item_id": "mathqa-numeric_0", "question": MATHQA_Q.split("\n")[0], "answer_value": "38.0"}]
    (record,) = load_reft_json(write_json(tmp_path / "mathqa-numeric_test_set.json", items))
    assert record.options is None and record.answer == "38.0" and record.dataset == "mathqa-numeric"


def test_mathqa_errors(tmp_path):
    no_options = [{"item_id": "mathqa_0", "question": "what is 6 + 6 ?", "answer_value": "a"}]
    with pytest.raises(DataError, match="no inline options"):
        load_reft_json(write_json(tmp_path / "m.json", no_options))
    bad_gold = [{"item_id": "mathqa_0", "question": MATHQA_Q, "answer_value": "38"}]
    with pytest.raises(DataError, match="gold '38' is not one of the option letters"):
        load_reft_json(write_json(tmp_path / "m.json", bad_gold))


def test_bad_item_names_index_and_line(tmp_path):
    items = SVAMP_NL + [{"item_id": "svamp_9", "question": "q?", "answer_cot": "c"}]
    path = write_json(tmp_path / "svamp_nl.json", items)
    # indent=1 puts each item's opening brace alone on a line
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == " {"]
    line = starts[2]
    with pytest.raises(DataError, match=rf"svamp_nl\.json:{line}: item 2: missing field 'answer_value'"):
        load_reft_json(path)


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"item_id": "svamp_1", "question": "q", "answer_value": "1"}, 5], r"item 1: expected a JSON object"),
        ([{"item_id": "svamp_1", "question": 3, "answer_value": "1"}], r"item 0: field 'question' must be a string"),
        ([{"item_id": "svamp_1", "question": " ", "answer_value": "1"}], r"item 0: field 'question' is empty"),
        ([{"item_id": "asdiv_1", "question": "q", "answer_value": "1"}], r"item 0 \(asdiv_1\): cannot infer"),
        ([{"item_id": "svamp_1", "question": "q", "answer_value": "1"}] * 2, r"item 1: duplicate item_id 'svamp_1'"),
        ({"item_id": "svamp_1"}, r"expected a JSON list of items, got dict"),
        ([], r"no records \(empty list\)"),
    ],
)
def test_bad_files(tmp_path, items, message):
    with pytest.raises(DataError, match=r"x\.json(:\d+)?: " + message):
        load_reft_json(write_json(tmp_path / "x.json", items))


def test_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"item_id": "svamp_1",\n  "question" "q"}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json:3:14: invalid JSON: Expecting ':' delimiter"):
        load_reft_json(path)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.json: no such file"):
        load_reft_json(tmp_path / "gone.json")
    (tmp_path / "empty.json").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.json:1:1: invalid JSON"):
        load_reft_json(tmp_path / "empty.json")
