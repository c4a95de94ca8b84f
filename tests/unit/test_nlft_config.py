"""`algo=nlft`'s configuration: its keys take effect only with it, what it cannot use is refused, LoRA by default."""

from __future__ import annotations

import pytest

from rlft.config import ConfigError, adapter_config, load_config
from rlft.trainers.algorithms import plan


def test_adapter_auto_is_lora_for_nlft_and_full_otherwise() -> None:
    cfg = load_config(None, ["algo=nlft"])
    assert cfg.adapter.kind == "auto" and plan(cfg).adapter_kind == "lora" and adapter_config(cfg).kind == "lora"
    assert adapter_config(load_config(None, [])).kind == "full"
    assert adapter_config(load_config(None, ["algo=nlft", "adapter.kind=full"])).kind == "full"  # what you set wins
    assert adapter_config(load_config(None, ["adapter.kind=lora"])).kind == "lora"


@pytest.mark.parametrize("overrides, message", [
    (["nlft.loss_scale=3"], "nlft.* settings cannot take effect with algo=reft"),
    (["algo=offline_st", "nlft.judge=checker", "nlft.samples_per_question=2"], "with algo=offline_st"),
    (["algo=nlft", "reward.fn=x.py:f"], "reward.fn cannot take effect with algo=nlft"),
    (["algo=nlft", "reward.partial_reward=0.2", "reward.timeout=3"], "reward.partial_reward, reward.timeout"),
    (["algo=nlft", "rollout.engine=vllm"], "rollout.engine=vllm cannot take effect with algo=nlft"),
    (["algo=nlft", "rollout.samples_per_prompt=4"], "set nlft.samples_per_question instead"),
    (["algo=nlft", "nlft.judge=judge.py:f", "nlft.wrong_score=1"], "nlft.wrong_score configure the checker judge"),
    (["algo=nlft", "nlft.judge_prompt='{q} and {judgment}'"], r"nlft.judge_prompt: unknown field \{q\}"),
    (["algo=nlft", "nlft.step_template='step {'"], "nlft.step_template: not a format string"),
    (["algo=nlft", "nlft.correct_threshold=1.0"], "nlft.correct_threshold must be > 0.0 and < 1.0"),
    (["algo=nlft", "nlft.max_salient_frac=1.5"], r"nlft.max_salient_frac must be in \[0, 1\]"),
    (["algo=nlft", "nlft.neighbour_distance=3"], r"cosine distance in \[0, 2\]"),
    (["algo=nlft", "nlft.samples_per_question=0"], "nlft.samples_per_question must be >= 1"),
    (["algo=nlft", "cluster.backend=ray"], "algo=nlft runs with cluster.backend=local only"),
])
def test_settings_that_cannot_take_effect_are_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_valid_nlft_settings_load() -> None:
    cfg = load_config(None, ["algo=nlft", "nlft.judge=judge.py:f", "nlft.positive_score=5", "nlft.neighbour_distance=null",
                             "nlft.judge_prompt='Bad: {judgment} {question}'", "adapter.kind=full"])
    assert cfg.nlft.neighbour_distance is None and cfg.nlft.judge_prompt == "Bad: {judgment} {question}"
