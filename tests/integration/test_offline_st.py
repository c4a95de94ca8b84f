"""Offline self-training (`algo=offline_st`) on a tiny random model: selection, union size, cache, resume.

A random model is almost never right, so a stub reward (`reward.fn=stub.py:fn`) decides what is "correct":
the tests check the selection logic and the SFT plumbing, not that self-training helps.
"""

import json
import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from rlft.cli import main
from rlft.config import load_config
from rlft.trainers import selftrain
from rlft.trainers.selftrain import run_offline_st

STUB = '''
def digits(completions, **columns):
    return [1.0 if any(ch.isdigit() for ch in text) else 0.0 for text in completions]

def always(completions, **columns):
    return [1.0] * len(completions)
'''

MICRO = [
    "algo=offline_st", "data.difficulty=0", "data.n_train=8", "data.n_test=2", "offline_st.samples_per_question=4",
    "offline_st.max_unique_per_question=2", "rollout.max_new_tokens=12", "eval.max_new_tokens=8", "sft.epochs=1",
    "sft.sequences_per_step=8", "sft.micro_batch_size_per_device=8", "log.progress=false", "log.tensorboard=false",
]




@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "stub.py"
    path.write_text(STUB)
    return path


def _cfg(run_dir, model, stub, fn, *extra):
    return load_config(None, [f"run.dir={run_dir}", f"model.path={model}", f"reward.fn={stub}:{fn}", *MICRO, *extra])


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "offline_st_samples.jsonl").read_text().splitlines()]


def test_keeps_correct_unique_capped_and_trains_on_the_union(tmp_path, warm_model, stub):
    summary = run_offline_st(_cfg(tmp_path, warm_model, stub, "digits", "offline_st.max_unique_per_question=1"))
    c = summary["offline_st"]
    rows = _rows(tmp_path)
    assert c["questions"] == 8 and c["sampled"] == 8 * 4
    assert c["kept"] == len(rows) and c["kept"] <= c["unique_correct"] <= c["correct"] <= c["sampled"]
    assert c["kept"] > 0, "the stub marks any response with a digit correct; a random model writes digits"
    assert all(any(ch.isdigit() for ch in row["response"]) for row in rows)  # only what the reward accepted
    assert max(Counter(row["id"] for row in rows).values()) == 1  # max_unique_per_question
    assert c["unique_correct"] > c["kept"], "some question had 2+ correct samples, so the cap was exercised"
    assert len({(row["id"], row["response"]) for row in rows}) == len(rows)  # no duplicates
    assert set(rows[0]) == {"id", "question", "response"}
    # SFT ran on gold + kept: the step count follows the union size
    assert c["original"] == 8 and c["union"] == 8 + c["kept"]
    assert summary["history"][-1]["step"] == math.ceil(c["union"] / 8)
    assert summary["algo"] == "offline_st" and summary["epochs_done"] == 1


def test_duplicates_are_dropped(tmp_path, warm_model, stub):
    # top_k=1 makes all 4 samples of a question the same greedy text: one unique sample per question
    c = run_offline_st(_cfg(tmp_path, warm_model, stub, "always", "rollout.top_k=1"))["offline_st"]
    assert c["correct"] == 32 and c["unique_correct"] == c["kept"] == c["questions_with_kept"] == 8
    assert c["union"] == 16


def test_resume_reuses_samples_and_equals_uninterrupted(tmp_path, warm_model, stub, monkeypatch, capsys):
    full = run_offline_st(_cfg(tmp_path / "full", warm_model, stub, "digits", "sft.epochs=2"))
    run_offline_st(_cfg(tmp_path / "part", warm_model, stub, "digits", "sft.epochs=2"), stop_after_epoch=1)
    assert _rows(tmp_path / "part") == _rows(tmp_path / "full")  # fixed seed: identical kept samples

    def no_sampling(*args, **kwargs):
        raise AssertionError("resampled on resume")

    monkeypatch.setattr(selftrain, "sample_correct", no_sampling)
    part = run_offline_st(_cfg(tmp_path / "part", warm_model, stub, "digits", "sft.epochs=2"))
    assert part["epochs_done"] == 2 and part["offline_st"]["union"] == full["offline_st"]["union"]
    a = load_file(f"{full['final_checkpoint']}/model/model.safetensors")
    b = load_file(f"{part['final_checkpoint']}/model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the CLI dispatches algo=offline_st; the finished run only reloads its samples
    overrides = [f"run.dir={tmp_path / 'part'}", f"model.path={warm_model}", f"reward.fn={stub}:digits", *MICRO,
                 "sft.epochs=2"]
    capsys.readouterr()
    assert main(["train", *overrides]) == 0
    out = capsys.readouterr().out
    assert '"algo": "offline_st"' in out and "reusing" in out

    # samples drawn under other settings are never reused silently
    with pytest.raises(ValueError, match="offline_st.samples_per_question"):
        run_offline_st(_cfg(tmp_path / "part", warm_model, stub, "digits", "sft.epochs=2",
                            "offline_st.samples_per_question=3"))
