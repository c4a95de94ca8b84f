"""Hugging Face loader, run offline through the generic `json` builder on a local file."""

import json

import pytest

from rlft.tasks.errors import DataError
from rlft.tasks.gsm8k import load_gsm8k_jsonl
from rlft.tasks.hf import load_hf_dataset

ROWS = [
    {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5", "why": "#### 5"},
    {"question": "A farm has 617 cows and buys 617 more?", "answer": "617 + 617 = 1,234\n#### 1,234", "why": "x"},
]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no writes outside tmp_path, whenever `datasets` was first imported."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_gsm8k_format_matches_the_jsonl_loader(offline):
    path = write_jsonl(offline / "train.jsonl", ROWS)
    records = load_hf_dataset("json", "train", data_files=path)
    assert records == load_gsm8k_jsonl(path, split_name="train")  # same ids, CoT and answers either way
    assert [r.answer for r in records] == ["5", "1234"]
    assert records[0].cot == "2 + 3 = 5"


def test_plain_answers_with_cot_field_and_slice(offline):
    rows = [{"problem": f"{i} + {i}?", "solution": 2 * i, "steps": f"{i} + {i} = {2 * i}"} for i in (1, 2)]
    path = write_jsonl(offline / "plain.jsonl", rows)
    records = load_hf_dataset(
        "json", "train[:1]", question_field="problem", answer_field="solution", cot_field="steps",
        answer_format="plain", dataset="svamp", data_files=path,
    )  # fmt: skip
    assert len(records) == 1
    assert records[0].id == "svamp_train_0" and records[0].answer == "2" and records[0].cot == "1 + 1 = 2"
    assert records[0].dataset == "svamp"


def test_errors(offline):
    path = write_jsonl(offline / "train.jsonl", ROWS)
    missing = r"hf:json\[train\]: missing field 'solution' \(columns: question, answer, why\)"
    with pytest.raises(DataError, match=missing):
        load_hf_dataset("json", "train", answer_field="solution", data_files=path)
    with pytest.raises(DataError, match=r"hf:json\[train\]: row 1: field 'why': no final '#### <value>' line"):
        load_hf_dataset("json", "train", answer_field="why", data_files=path)
    with pytest.raises(DataError, match=r"hf:json\[train\]: cannot load: .*nope\.jsonl"):
        load_hf_dataset("json", "train", data_files=str(offline / "nope.jsonl"))
    with pytest.raises(ValueError, match="answer_format"):
        load_hf_dataset("json", "train", answer_format="latex", data_files=path)
