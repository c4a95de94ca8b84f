"""Conversational datasets (TRL's `messages` and `prompt`/`completion` forms) from JSONL and through `datasets`."""

import json

import pytest

from rlft.tasks import load_records
from rlft.tasks.conversational import load_conversational_jsonl
from rlft.tasks.errors import DataError
from rlft.tasks.hf import load_hf_dataset
from rlft.tasks.prompts import prompt_text, target_text

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Tom has 2 apples and buys 3. How many?"}
REPLY = {"role": "assistant", "content": "2 + 3 = 5. The answer is \\boxed{5}."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_the_three_forms_give_the_same_record(tmp_path):
    rows = [
        {"messages": [SYSTEM, USER, REPLY], "answer": "5"},  # TRL conversational
        {"prompt": [SYSTEM, USER], "completion": [REPLY], "solution": "5"},  # prompt-completion, TRL's gold name
        {"prompt": USER["content"], "completion": REPLY["content"], "answer": 5},  # standard strings, numeric gold
    ]
    records = load_records(write_jsonl(tmp_path / "chat.jsonl", rows), "train")
    assert [r.id for r in records] == ["gsm8k_train_0", "gsm8k_train_1", "gsm8k_train_2"]
    for r in records:
        assert (r.question, r.answer, r.cot) == (USER["content"], "5", REPLY["content"])
    assert records[0].prompt_messages == (("system", "Be brief."), ("user", USER["content"]))
    assert records[1].prompt_messages == records[0].prompt_messages
    assert records[2].prompt_messages == (("user", USER["content"]),)


def test_reply_is_the_whole_target_and_reft_prompt_uses_the_question(tmp_path):
    record = load_records(write_jsonl(tmp_path / "c.jsonl", [{"messages": [SYSTEM, USER, REPLY], "answer": "5"}]), "train")[0]
    assert target_text(record) == REPLY["content"]  # verbatim: no "Therefore, the answer is:" appended
    assert prompt_text(record) == f"Question:\n{USER['content']}\nAnswer reasoning:\n"


def test_prompt_only_rows_and_gsm8k_gold(tmp_path):
    rows = [
        {"messages": [USER], "answer": "#### 1,234"},  # no reply; a GSM8K solution line gives its value
        {"prompt": [USER], "answer": "7"},
    ]
    records = load_conversational_jsonl(write_jsonl(tmp_path / "p.jsonl", rows), "test")
    assert [(r.id, r.answer, r.cot) for r in records] == [("gsm8k_test_0", "1234", None), ("gsm8k_test_1", "7", None)]
    with pytest.raises(DataError, match="no N-CoT annotation"):
        target_text(records[0])


def test_content_blocks_and_a_text_prompt_beside_messages(tmp_path):
    row = {"prompt": "ignored", "messages": [{"role": "user", "content": [{"type": "text", "text": "Q?"}]}], "answer": "1"}
    record = load_conversational_jsonl(write_jsonl(tmp_path / "b.jsonl", [row]))[0]
    assert record.question == "Q?" and record.prompt_messages == (("user", "Q?"),)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"messages": [USER, REPLY]}, "c.jsonl:2: no 'answer' or 'solution' field"),
        ({"messages": [USER, REPLY], "answer": ""}, "c.jsonl:2: field 'answer' is empty"),
        ({"messages": "hi", "answer": "1"}, "c.jsonl:2: field 'messages' must be a non-empty list"),
        ({"messages": [], "answer": "1"}, "c.jsonl:2: field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}], "answer": "1"}, "c.jsonl:2: field 'messages': message 0 has role 'bot'"),
        ({"messages": [USER, {"role": "assistant"}], "answer": "1"}, "c.jsonl:2: field 'messages': message 1 (assistant) has no text 'content'"),
        ({"messages": [USER, "x"], "answer": "1"}, "c.jsonl:2: field 'messages': message 1 must be an object"),
        ({"messages": [SYSTEM, REPLY], "answer": "1"}, "c.jsonl:2: the prompt must end with a user turn, not 'system'"),
        ({"prompt": [USER, REPLY], "answer": "1"}, "c.jsonl:2: the prompt must end with a user turn, not 'assistant'"),
        ({"prompt": [USER], "completion": [REPLY, REPLY], "answer": "1"}, "c.jsonl:2: field 'completion': expected one assistant message"),
        ({"prompt": [USER], "completion": [USER], "answer": "1"}, "c.jsonl:2: field 'completion': expected one assistant message"),
        ({"question": "q", "answer": "1"}, "c.jsonl:2: not a conversational row"),
        ({"messages": [{"role": "user", "content": "  "}], "answer": "1"}, "c.jsonl:2: the last user turn is empty"),
        ({"messages": [USER], "answer": "#### "}, "c.jsonl:2: field 'answer': no final"),
    ],
)
def test_bad_rows_name_file_line_and_key(tmp_path, row, fragment):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [USER, REPLY], "answer": "5"}, row])
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_records(path, "train")


def test_gsm8k_jsonl_still_loads_as_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "1 + 1 = 2\n#### 2"}])
    record = load_records(path, "train")[0]
    assert record.prompt_messages is None and target_text(record) == "1 + 1 = 2\nTherefore, the answer is: 2"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def test_hf_conversational_equals_jsonl(offline):
    rows = [{"messages": [SYSTEM, USER, REPLY], "answer": "5"}, {"messages": [SYSTEM, USER, REPLY], "answer": "6"}]
    path = write_jsonl(offline / "train.jsonl", rows)
    assert load_hf_dataset("json", "train", data_files=path) == load_conversational_jsonl(path, "train")
    assert load_records("hf:json", "train", hf_kwargs={"data_files": path})[1].answer == "6"


def test_hf_prompt_completion_and_row_errors(offline):
    rows = [{"prompt": [USER], "completion": [REPLY], "solution": "5"}]
    records = load_hf_dataset("json", "train", data_files=write_jsonl(offline / "pc.jsonl", rows))
    assert records[0].cot == REPLY["content"] and records[0].answer == "5"
    bad = write_jsonl(offline / "bad.jsonl", [{"messages": [USER, REPLY], "answer": "5"}, {"messages": [USER, REPLY], "answer": None}])
    with pytest.raises(DataError, match=r"hf:json\[train\]: row 1: no 'answer' or 'solution' field"):
        load_hf_dataset("json", "train", data_files=bad)
