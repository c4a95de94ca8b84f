"""Numerical faults (issue #9, promise 3): a non-finite loss or gradient skips the step and leaves the
weights and optimizer untouched; `ppo.max_consecutive_skipped_steps` bad steps in a row stop the run with
a message naming the last checkpoint (exit 3 from the CLI)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlft.cli import main
from rlft.config import load_config
from rlft.learner.base import DivergedError
from rlft.learner.torch_learner import TorchLearner
from rlft.models.loading import load_policy
from rlft.models.policy import PolicyModel
from rlft.trainers import ppo as ppo_trainer
from rlft.trainers.ppo import run_ppo

MICRO = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4",
    "ppo.eval_every=100", "ppo.save_every=1", "log.progress=false", "log.tensorboard=false",
]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_skips_the_step_and_touches_nothing(warm_model, bad):
    """Breaks if the learner steps on a NaN/inf gradient: weights or AdamW moments would change."""
    lm, _ = load_policy(warm_model)
    learner = TorchLearner(PolicyModel(lm), lr=1e-3)
    ids = torch.tensor([[5, 6, 7, 8]])
    mb = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_mask": torch.ones(1, 2, dtype=torch.long)}

    def loss_fn(output, _mb):
        return output.logits.float().mean() * bad, {}

    good_fn = lambda output, _mb: (output.logits.float().mean(), {})  # noqa: E731
    learner.train_step([mb], good_fn)  # one real step, so AdamW has state to protect
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in learner.optimizer.state.values()]
    out = learner.train_step([mb], loss_fn)
    assert out["train/skipped_step"] == 1.0 and not math.isfinite(out["train/grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, learner.optimizer.state.values()))
    assert learner.train_step([mb], good_fn)["train/skipped_step"] == 0.0  # and training goes on


def _poison_from(monkeypatch, first_bad_call: int, every: int = 1):
    """Make the policy loss NaN from the `first_bad_call`-th call on (every `every`-th call). With MICRO's
    geometry one optimizer step is 2 micro-batches, so 2 calls; an iteration is 2 steps."""
    real = ppo_trainer.ppo.policy_loss
    calls = {"n": 0}

    def policy_loss(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        bad = calls["n"] >= first_bad_call and (calls["n"] - first_bad_call) % every == 0
        return (loss * math.nan if bad else loss), metrics

    monkeypatch.setattr(ppo_trainer.ppo, "policy_loss", policy_loss)


def test_consecutive_bad_steps_stop_the_run_naming_the_last_checkpoint(tmp_path, warm_model, monkeypatch, capsys):
    """Iterations 1-2 are healthy (2 PPO epochs x 1 minibatch = 2 steps each, checkpoints 1 and 2), then
    every loss is NaN. With a limit of 3 the run must stop during iteration 4 (steps 5, 6, 7 bad) with exit
    3, name ckpt-3 (whose weights equal ckpt-2: skipped steps change nothing), and write no ckpt-4.
    Breaks if the run goes on, stops without naming a checkpoint, or a skipped step moved a weight."""
    _poison_from(monkeypatch, first_bad_call=9)  # step 5 on
    code = main(["train", f"run.dir={tmp_path}", f"model.path={warm_model}", "ppo.iterations=6",
                 "ppo.max_consecutive_skipped_steps=3", *MICRO])
    err = capsys.readouterr().err
    assert code == 3, err
    last = tmp_path / "checkpoints" / "ckpt-3"
    assert "3 optimizer steps in a row had a non-finite loss" in err and f"last checkpoint: {last}" in err
    assert err.strip().count("\n") == 0, err  # one line
    assert not (tmp_path / "checkpoints" / "ckpt-4").exists()
    a = load_file(str(tmp_path / "checkpoints" / "ckpt-2" / "model" / "model.safetensors"))
    b = load_file(str(last / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "a skipped step changed the weights"
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_step"] for r in rows] == [0.0, 0.0, 1.0]  # logged, per iteration (mean of 2 steps)


def test_isolated_bad_steps_are_skipped_and_the_run_finishes(tmp_path, warm_model, monkeypatch):
    """Every other step is NaN: each is skipped and logged, the streak resets, the run completes.
    Breaks if the streak is not reset by a good step (the run would stop) or skips are not logged."""
    _poison_from(monkeypatch, first_bad_call=1, every=4)  # steps 1, 3, 5
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", "ppo.iterations=3",
                             "ppo.max_consecutive_skipped_steps=2", *MICRO])
    assert run_ppo(cfg)["iterations_done"] == 3
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_step"] for r in rows] == [0.5, 0.5, 0.5]


def test_the_limit_is_validated():
    from rlft.config import ConfigError

    with pytest.raises(ConfigError, match="max_consecutive_skipped_steps"):
        load_config(None, ["ppo.max_consecutive_skipped_steps=-1"])
    with pytest.raises(DivergedError):
        ppo_trainer.count_skipped({"skipped_streak": 1}, {"train/skipped_step": 1.0}, 2)
