"""The table of algorithms (`rlft/trainers/algorithms.py`) is what the config, validation and roles read."""

import pytest
import torch

from rlft.config import ConfigError, load_config
from rlft.trainers import algorithms
from rlft.trainers.algorithms import ALGORITHMS, plan
from rlft.types import TrainBatch


def test_unknown_algo_names_the_closest_row():
    with pytest.raises(ConfigError, match="did you mean dapo"):
        load_config(None, ["algo=dapp"])
    with pytest.raises(ConfigError, match="choose one of reft, carft"):
        load_config(None, ["algo=ppo2"])


def test_existing_rows_resolve_to_the_former_defaults():
    # the refactor changed no behaviour: every algorithm that existed before resolves as it did
    for name in ("reft", "carft", "grpo", "rloo", "reinforce_pp"):
        run = plan(load_config(None, [f"algo={name}", "rollout.samples_per_prompt=2"]))
        assert (run.kl_coef, run.kl_placement, run.kl_estimator, run.loss_agg, run.clip_eps_high) == \
               (0.05, "reward", "k1", "seq-mean-token-mean", None), name
        assert run.uses_reference and run.kl_in_reward
    assert plan(load_config(None, ["algo=reft"])).value_head == "linear"
    assert plan(load_config(None, ["algo=carft"])).value_head == "carft"
    assert plan(load_config(None, ["algo=reft", "ppo.critic=separate"])).value_head is None  # the critic holds it
    assert plan(load_config(None, ["algo=online_st"])).uses_reference is False


def test_new_rows_carry_their_papers_settings():
    dapo = plan(load_config(None, ["algo=dapo", "rollout.samples_per_prompt=4"]))
    assert (dapo.loss_agg, dapo.clip_eps_high, dapo.kl_coef, dapo.uses_reference) == ("token-mean", 0.28, 0.0, False)
    assert dapo.algorithm.dynamic_sampling and dapo.algorithm.overlong_shaping
    dr = plan(load_config(None, ["algo=dr_grpo", "rollout.samples_per_prompt=4"]))
    assert (dr.loss_agg, dr.kl_coef, dr.uses_reference) == ("seq-mean-token-sum-norm", 0.0, False)
    rpp = plan(load_config(None, ["algo=reinforce_pp_baseline", "rollout.samples_per_prompt=4"]))
    assert (rpp.kl_coef, rpp.kl_placement, rpp.kl_estimator, rpp.kl_in_loss) == (0.001, "loss", "k2", True)


def test_user_settings_win_over_the_row():
    run = plan(load_config(None, ["algo=dapo", "rollout.samples_per_prompt=4", "kl.coef=0.02", "ppo.clip_eps_high=0.3",
                                  "ppo.loss_agg=seq-mean-token-mean", "kl.placement=loss", "kl.estimator=k3"]))
    assert (run.kl_coef, run.clip_eps_high, run.loss_agg, run.kl_placement, run.kl_estimator) == \
           (0.02, 0.3, "seq-mean-token-mean", "loss", "k3")
    assert run.uses_reference


@pytest.mark.parametrize("name", [n for n, a in ALGORITHMS.items() if a.group])
def test_every_group_row_needs_two_samples(name):
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        load_config(None, [f"algo={name}", "rollout.samples_per_prompt=1"])


def test_a_kl_coefficient_without_a_kl_term_is_an_error():
    with pytest.raises(ConfigError, match="kl.coef=0.1 cannot take effect"):
        load_config(None, ["algo=online_st", "kl.coef=0.1"])
    with pytest.raises(ConfigError, match="zero expected gradient"):
        load_config(None, ["algo=grpo", "rollout.samples_per_prompt=2", "kl.placement=loss"])  # row's k1 in the loss


def test_every_row_but_nlft_runs_on_ray_and_a_local_only_row_is_refused(monkeypatch):
    import dataclasses

    # NLFT trains a LoRA by default, and adapters do not run on the Ray learners yet
    assert [name for name, row in ALGORITHMS.items() if not row.ray] == ["nlft"]
    with pytest.raises(ConfigError, match="algo=nlft runs with cluster.backend=local only"):
        load_config(None, ["algo=nlft", "cluster.backend=ray"])
    for name, row in ALGORITHMS.items():  # CARFT and self-training included (their phases run on the learners)
        if row.ray:
            load_config(None, [f"algo={name}", "cluster.backend=ray",
                               *(["rollout.samples_per_prompt=2"] if row.group else [])])
    monkeypatch.setitem(ALGORITHMS, "carft", dataclasses.replace(ALGORITHMS["carft"], ray=False))
    with pytest.raises(ConfigError, match="algo=carft runs with cluster.backend=local only"):
        load_config(None, ["algo=carft", "cluster.backend=ray"])


def _batch(scores, T=3):
    B = len(scores)
    return TrainBatch(torch.zeros(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.long),
                      torch.zeros(B, T, dtype=torch.long), torch.tensor([[1, 1, 0]] * B), torch.tensor(scores))


def test_group_estimators_by_hand():
    cfg = load_config(None, ["algo=dr_grpo", "rollout.samples_per_prompt=2"])
    adv, returns, metrics = plan(cfg).algorithm.advantage(_batch([1.0, 0.0, 0.5, 0.5]), None, 0.0, cfg)
    # Dr. GRPO: score minus the group mean, no std division, on every response token
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert returns is None and float(metrics["reward/zero_std_frac"]) == 0.5
    cfg = load_config(None, ["algo=grpo", "rollout.samples_per_prompt=2"])
    adv, _, _ = plan(cfg).algorithm.advantage(_batch([1.0, 0.0, 0.5, 0.5]), None, 0.0, cfg)
    std = torch.tensor([1.0, 0.0]).std()  # unbiased group std of (1, 0)
    assert float(adv[0, 0]) == pytest.approx(0.5 / (float(std) + 1e-6))


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    cfg = load_config(None, ["algo=reinforce_pp_baseline", "rollout.samples_per_prompt=2"])
    adv, _, _ = plan(cfg).algorithm.advantage(_batch([2.0, 0.0, 5.0, 5.0]), None, 0.0, cfg)
    # shifted scores (1, -1, 0, 0) on the last token; returns (1,1), (-1,-1), 0, 0; then whitened over 8 tokens
    returns = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    expected = (returns - returns.mean()) / (returns.var() + 1e-8).sqrt()
    torch.testing.assert_close(adv[adv != 0].flatten(), expected[expected != 0])


def test_the_loop_never_tests_an_algorithm_name():
    """Algorithm choices live in the table: the loop and the roles read the plan, never `cfg.algo == ...`."""
    from pathlib import Path

    root = Path(algorithms.__file__).resolve().parents[1]
    for rel in ("trainers/ppo.py", "dist/local.py", "dist/ray_roles.py", "config.py", "cli.py"):
        text = (root / rel).read_text()
        assert "cfg.algo ==" not in text and \
               "cfg.algo in (" not in text and "cfg.algo !=" not in text, rel


def test_dapo_settings_are_refused_for_other_algorithms():
    with pytest.raises(ConfigError, match="dapo.* settings cannot take effect with algo=grpo"):
        load_config(None, ["algo=grpo", "rollout.samples_per_prompt=2", "dapo.max_sample_rounds=5"])
    with pytest.raises(ConfigError, match="overlong_cache_tokens"):
        load_config(None, ["algo=dapo", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
                           "dapo.overlong_cache_tokens=16"])


def test_reft_compatible_reward_is_reachable_from_the_config():
    from rlft.reward.role import RewardRole
    from rlft.tasks.base import Record

    record = Record(id="1", question="q", answer="7", dataset="gsm8k")
    no_answer_line = ["so 3 + 4 = 7"]  # right last number, no "Therefore, the answer is:" line
    for compat, expected in ((False, 1.0), (True, 0.0)):
        role = RewardRole(load_config(None, [f"reward.reft_compat={str(compat).lower()}"]))
        scores, _ = role.score(no_answer_line, [record], torch.zeros(1, dtype=torch.bool))
        assert float(scores[0]) == expected, compat
    with pytest.raises(ConfigError, match="reft_compat applies to the built-in `math` reward only"):
        load_config(None, ["reward.reft_compat=true", "reward.fn=rewards:math_reward"])


def test_value_head_init_reference_is_torch_linear_default_and_small_is_9x_smaller():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlft.models.policy import PolicyModel

    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=256, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4))
    small = PolicyModel(lm, value_head="linear", init_seed=1).value_head
    ref = PolicyModel(lm, value_head="linear", init_seed=1, value_head_init="reference").value_head
    bound = 1 / 256 ** 0.5
    assert float(ref.weight.abs().max()) <= bound and float(ref.weight.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.15)
    assert float(small.weight.std()) == pytest.approx(1 / 257, rel=0.15) and float(small.bias) == 0.0
    assert 7 < float(ref.weight.std() / small.weight.std()) < 11  # the "~9x smaller" of issue 18
    with pytest.raises(ValueError, match="unknown value_head_init"):
        PolicyModel(lm, value_head="linear", value_head_init="xavier")


def test_value_head_init_without_a_linear_head_is_an_error():
    for algo in ("carft", "grpo"):
        with pytest.raises(ConfigError, match="value_head_init=reference sets ReFT's linear value head"):
            load_config(None, [f"algo={algo}", "rollout.samples_per_prompt=2", "ppo.value_head_init=reference"])
    load_config(None, ["algo=reft", "ppo.critic=separate", "ppo.value_head_init=reference"])  # the critic's head
