"""`rlft check` (rewards.cli.main): single answers and JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards.cli import main


def test_single_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gold", "1/2", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "verdict:   correct" in out and "extracted: '0.5'" in out and "gold:      '1/2'" in out


def test_single_latex_answer_uses_math_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gold", "\\frac{1}{2}", "The answer is $\\boxed{0.5}$"]) == 0
    assert "dataset:   math" in capsys.readouterr().out


def test_file_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "a", "completion": "Therefore, the answer is: 18", "gold": "18", "dataset": "gsm8k"},
        {"id": "b", "completion": "Therefore, the answer is: c ) 870", "gold": "c", "dataset": "mathqa",
         "options": "a ) 156 , b ) 167 , c ) 870 , d ) 352 , e ) 380"},
        {"completion": "def solution():\n    return 3\n", "gold": "4", "dataset": "svamp", "format": "program"},
        {"id": "d", "completion": "The answer is $\\boxed{x^2-1}$", "gold": "(x-1)(x+1)", "dataset": "math"},
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(src), "--out", str(dst)]) == 0
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g.get("id") for g in got] == ["a", "b", None, "d"]
    assert [g["correct"] for g in got] == [True, True, False, True]
    assert [g["score"] for g in got] == [1.0, 1.0, 0.1, 1.0]
    assert all({"extracted", "seconds"} <= set(g) for g in got)
    out = capsys.readouterr().out
    assert "accuracy 0.7500 (3/4)" in out and "checks/s" in out


def test_bad_dataset_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "1", "gold": "1", "dataset": "nope"}) + "\n")
    assert main([str(src)]) == 2
