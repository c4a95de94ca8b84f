"""The `rlft` command: bad input gives one clear line and exit code 2, never a traceback wall."""

import json
import subprocess
import sys

import pytest

from rlft.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_key_names_closest(capsys):
    code, _, err = _run(capsys, "config", "sft.lrr=1")
    assert code == 2 and "did you mean 'sft.lr'" in err and err.count("\n") == 1


def test_malformed_data_line_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q1", "answer": "x\\n#### 1"}\n{"question": "q2", "answer": \n')
    code, _, err = _run(capsys, "data", "preview", f"data.train={bad}")
    assert code == 2 and f"{bad}:2" in err and err.count("\n") == 1


def test_missing_model_path_is_one_line(tmp_path, capsys):
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", "data.n_test=2", "--model", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize("model", [[], ["model.path=tiny"]])  # the default, or the same value spelled out
def test_eval_without_a_model_is_one_line(tmp_path, capsys, model):
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", "data.n_test=2", *model)
    assert code == 2 and err.count("\n") == 1
    assert "--model RUN/checkpoints/ckpt-N" in err and "model.path=..." in err
    assert not (tmp_path / "tiny-model").exists()  # it stopped before building a random model


def test_eval_model_path_folder_still_works(tmp_path, capsys, warm_model):
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", f"model.path={warm_model}", "data.difficulty=0",
                        "data.n_test=2", "eval.max_new_tokens=4")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval" / "eval_summary.json").read_text())
    assert summary["model"] == str(warm_model) and summary["eval/n"] == 2 and summary["rerank"] == "vote"


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlft.cli", "config", "sft.epochs=two"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'sft.epochs' = 'two'" in proc.stderr


def test_config_keys_lists_every_key(capsys):
    code, out, _ = _run(capsys, "config", "--keys")
    assert code == 0 and "sft.lr" in out and "data.n_train" in out


def test_help_lists_config_keys():
    proc = subprocess.run([sys.executable, "-m", "rlft.cli", "sft", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sft.warmup_ratio" in proc.stdout


def test_data_export_and_preview(tmp_path, capsys):
    out_file = tmp_path / "train.jsonl"
    code, out, _ = _run(capsys, "data", "export", "data.n_train=5", "--out", str(out_file))
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 5 and {"id", "question", "answer", "cot"} <= rows[0].keys()
    code, out, _ = _run(capsys, "data", "preview", "data.n_train=5", "--n", "1")
    assert code == 0 and "Answer reasoning:" in out and "Therefore, the answer is:" in out
