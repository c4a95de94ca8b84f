"""SFT warm-up end to end on a tiny model: it learns, it checkpoints, and resume is exact."""

import json

import torch
from safetensors.torch import load_file

from rlft.config import load_config
from rlft.trainers.sft import run_sft

MICRO = [
    "data.n_train=64", "data.n_test=8", "model.tiny.hidden_size=128", "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320", "sft.sequences_per_step=16",
    "sft.micro_batch_size_per_device=8", "sft.lr=3e-3", "eval.max_new_tokens=24", "log.progress=false",
    "log.every_steps=1", "log.tensorboard=false",
]


def _cfg(run_dir, *extra):
    return load_config(None, [f"run.dir={run_dir}", *MICRO, *extra])


def _weights(ckpt):
    return load_file(str(ckpt / "model" / "model.safetensors"))


def _train_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["sft/loss"]) for r in rows if "sft/loss" in r]


def test_sft_learns_and_writes_a_loadable_checkpoint(tmp_path):
    summary = run_sft(_cfg(tmp_path / "run", "sft.epochs=2"))
    losses = _train_losses(tmp_path / "run")
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(l)) for _, l in losses)
    assert losses[-1][1] < losses[0][1] - 0.5  # it learned something
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in summary["history"])
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-8"
    assert (ckpt / "model" / "config.json").exists() and (ckpt / "model" / "tokenizer.json").exists()
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "predictions_epoch2.jsonl").exists()

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt / "model")  # a plain HF folder


def test_resume_after_epoch_one_equals_uninterrupted(tmp_path):
    full = tmp_path / "full"
    run_sft(_cfg(full, "sft.epochs=2", "eval.every_epoch=false"))

    part = tmp_path / "part"
    run_sft(_cfg(part, "sft.epochs=2", "eval.every_epoch=false"), stop_after_epoch=1)
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["ckpt-4"]
    run_sft(_cfg(part, "sft.epochs=2", "eval.every_epoch=false"))  # same command again: resumes

    a, b = _weights(full / "checkpoints" / "ckpt-8"), _weights(part / "checkpoints" / "ckpt-8")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _train_losses(full) == _train_losses(part)


def test_resume_false_starts_over(tmp_path):
    run_sft(_cfg(tmp_path, "sft.epochs=1", "eval.every_epoch=false"))
    summary = run_sft(_cfg(tmp_path, "sft.epochs=1", "eval.every_epoch=false", "run.resume=false"))
    assert summary["epochs_done"] == 1 and len(_train_losses(tmp_path)) == 4


def test_progress_off_a_terminal_is_plain_lines(tmp_path, capsys):
    # capsys's stderr is not a TTY, like a job's log file; an interval of 0 writes a line at every step
    run_sft(_cfg(tmp_path, "sft.epochs=1", "log.progress=true", "log.progress_every_seconds=0"))
    err = capsys.readouterr().err
    lines = [ln for ln in err.split("\n") if "sft epoch 1/1:" in ln]
    assert [ln.split(",")[0] for ln in lines] == ["sft epoch 1/1: 1/4 (25%)", "sft epoch 1/1: 2/4 (50%)",
                                                  "sft epoch 1/1: 3/4 (75%)", "sft epoch 1/1: 4/4 (100%)",
                                                  "sft epoch 1/1: 4/4 (100%)"]  # every step, then close
    assert all("\r" not in ln and "loss=" in ln and "tok_s=" in ln for ln in lines)
