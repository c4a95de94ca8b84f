"""Every algorithm learns in the right direction, and the null control does not learn.

A stub reward pays one property of the response (the share of its characters that are ASCII letters: about
a third for the tiny random model's byte-level samples). A few iterations of each algorithm must raise it:
a sign error anywhere between the score and the update (advantages, losses, the KL in the reward) fails
these tests, where the mechanics tests (finite metrics, parameters changed) would pass. The same runs with
`reward.constant` (the null control: no information) must not raise it, and must drift less from the
warm-up than the real run. Fixed seeds: the numbers are reproducible on one machine; the margins are
several standard deviations of the per-iteration noise (32 samples of 8 tokens per iteration).
"""

import json

import pytest

from rlft.config import load_config
from rlft.trainers.ppo import run_ppo

STUB = '''
def letters(completions, **columns):
    """Pays the share of a response's characters that are ASCII letters."""
    return [sum(c.isascii() and c.isalpha() for c in t) / max(1, len(t)) for t in completions]
'''
ITERATIONS = 12
SETTINGS = ["data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=8",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8", "eval.max_new_tokens=4", "ppo.lr=1e-3",
            f"ppo.iterations={ITERATIONS}", f"ppo.eval_every={ITERATIONS}", f"ppo.save_every={ITERATIONS}",
            "ppo.micro_batch_size_per_device=32", "log.progress=false", "log.tensorboard=false"]
# every algorithm whose update follows an advantage (the self-training baselines have no sign to get wrong);
# DAPO without its length penalty, so that its training reward is the stub's payment alone
ALGOS = {"reft": [], "carft": [], "grpo": [], "dr_grpo": [], "rloo": [], "reinforce_pp": [],
         "reinforce_pp_baseline": [], "dapo": ["dapo.overlong_penalty=0", "dapo.overlong_cache_tokens=4"]}


def _run(tmp_path, warm_model, algo, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "stub.py").write_text(STUB)
    run_dir = tmp_path / "run"
    run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", f"algo={algo}", *SETTINGS, *ALGOS[algo],
                               f"reward.fn={tmp_path / 'stub.py'}:letters", *extra]))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _paid(row):
    """What the stub paid this iteration (the null control trains on a constant: its true payment)."""
    return row.get("reward/true_mean", row["reward/mean"])


def _rise(rows):
    """Mean payment of the last three iterations minus that of the first three."""
    return sum(map(_paid, rows[-3:])) / 3 - sum(map(_paid, rows[:3])) / 3


@pytest.mark.parametrize("algo", list(ALGOS))
def test_training_raises_the_reward_it_is_paid(tmp_path, warm_model, algo):
    rows = _run(tmp_path, warm_model, algo)
    assert _rise(rows) > 0.08, [round(_paid(r), 3) for r in rows]
    if "kl/k1_mean" in rows[-1]:
        # k1 = log pi - log pi_ref on samples from pi estimates KL(pi || ref) >= 0: swapped arguments in the
        # glue turn it (and the reward's KL penalty) negative
        assert rows[-1]["kl/k1_mean"] > 0.05 and all(r["kl/k1_mean"] > -0.02 for r in rows)


@pytest.mark.parametrize("algo", ["reft", "grpo", "reinforce_pp"])
def test_the_null_control_does_not_learn(tmp_path, warm_model, algo):
    real = _run(tmp_path / "real", warm_model, algo)
    null = _run(tmp_path / "null", warm_model, algo, "reward.constant=0.4")
    assert all(r["reward/mean"] == pytest.approx(0.4) for r in null)  # training saw only the constant
    assert abs(_rise(null)) < 0.06 < _rise(real), ([round(_paid(r), 3) for r in null], [round(_paid(r), 3) for r in real])
    # with no information the policy drifts less from the warm-up than when it learns (group estimators give
    # a constant-score group exactly zero advantage, so only the KL term acts)
    assert null[-1].get("kl/mean", 0.0) < 0.5 * real[-1]["kl/mean"]
