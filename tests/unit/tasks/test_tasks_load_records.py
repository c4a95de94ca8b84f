"""The `load_records` dispatcher over every source."""

import json

import pytest

from rlft.tasks import DataError, Record, arithmetic, load_records


def test_arithmetic_splits():
    train = load_records("arithmetic", "train", n_train=30, n_test=10, seed=2)
    test = load_records("arithmetic", "test", n_train=30, n_test=10, seed=2)
    assert (train, test) == arithmetic.make_splits(30, 10, seed=2)
    assert load_records("arithmetic", "test", n=5, n_test=10, seed=2) == test[:5] != test[:6]
    assert load_records("arithmetic", "train", limit=3, n_train=30, seed=2) == train[:3]
    assert load_records("arithmetic", "train", n=4, seed=0, difficulty=2)[0].id == "arithmetic_train_0"
    assert isinstance(train[0], Record)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_records("arithmetic", "validation")


def test_files(tmp_path):
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text(json.dumps({"question": "q?", "answer": "1 + 1 = 2\n#### 2"}) + "\n", encoding="utf-8")
    (record,) = load_records(str(jsonl), "test")
    assert record.id == "gsm8k_test_0" and record.answer == "2"
    program = 'def solution():\n    """q?"""\n    return 2'
    reft = tmp_path / "svamp_python_sdp.json"
    item = {"item_id": "svamp_0", "question": "q?", "answer_cot": program, "answer_value": "2.0"}
    reft.write_text(json.dumps([item]), encoding="utf-8")
    (record,) = load_records(str(reft), "train", style="program")
    assert record.program == program and record.dataset == "svamp"
    with pytest.raises(DataError, match=r"missing\.json: no such file"):
        load_records(str(tmp_path / "missing.json"), "train")


def test_hf_source(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"#### {i}"}) + "\n" for i in range(3)))
    records = load_records("hf:json", "train", hf_kwargs={"data_files": str(path)}, limit=2)
    assert [(r.id, r.answer) for r in records] == [("gsm8k_train_0", "0"), ("gsm8k_train_1", "1")]


def test_bad_source_and_style():
    with pytest.raises(DataError, match="unknown data source"):
        load_records("data.csv", "train")
    with pytest.raises(ValueError, match="style"):
        load_records("arithmetic", "train", style="pot")
