"""`call_reward`: every reward function is called as TRL's GRPOTrainer calls it, where its signature allows, in
the trainer's process and in a reward worker alike."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from rewards import RewardError, get_reward_fn, safe_call
from rewards.registry import call_reward, declares_messages

COMPLETIONS = ["x", "yy"]
COLUMNS = {"answer": ["1", "2"], "id": ["r0", "r1"], "prompts": ["p0", "p1"], "solution": ["1", "2"],
           "completion_ids": [[5], [6, 7]], "trainer_state": None}


def trl_order(prompts, completions, **kwargs):  # TRL's docs put prompts first
    return [float(len(c) + len(p)) for p, c in zip(prompts, completions)]


def fixed(completions, answer):  # a fixed signature: no **kwargs, so it never sees columns it does not name
    return [float(a) for a in answer]


def positional_only(texts, /, **columns):  # rlft's contract: completions first, by position
    return [float(len(t)) for t in texts]


def keyword_only(*, completions, completion_ids, **kwargs):  # only keywords, as TRL passes them
    return [float(len(i)) for i in completion_ids]


async def async_reward(completions, **kwargs):  # TRL accepts `async def` rewards
    return [1.0 for _ in completions]


class CallableClass:  # TRL's factories (get_cosine_scaled_reward, ...) return callable objects
    def __call__(self, completions, solution, **kwargs):
        return [float(s) for s in solution]


def scaled(completions, scale, **kwargs):
    return [scale] * len(completions)


@pytest.mark.parametrize("fn, expected", [
    (trl_order, [3.0, 4.0]),
    (fixed, [1.0, 2.0]),
    (positional_only, [1.0, 2.0]),
    (keyword_only, [1.0, 2.0]),
    (async_reward, [1.0, 1.0]),
    (CallableClass(), [1.0, 2.0]),
    (functools.partial(scaled, scale=0.5), [0.5, 0.5]),
    (len, None),  # no usable signature: called as before, fn(completions, **columns), and fails loudly
])
def test_call_reward_matches_each_signature(fn, expected):
    if expected is None:
        with pytest.raises(TypeError):
            call_reward(fn, COMPLETIONS, COLUMNS)
    else:
        assert call_reward(fn, COMPLETIONS, COLUMNS) == expected


def test_every_path_calls_the_same_way():
    assert get_reward_fn("test_rewards_call:trl_order")(COMPLETIONS, **COLUMNS) == [3.0, 4.0]
    assert safe_call(fixed, COMPLETIONS, COLUMNS, timeout=5.0) == ([1.0, 2.0], 0)  # daemon-thread path
    assert safe_call(keyword_only, COMPLETIONS, COLUMNS, timeout=None) == ([1.0, 2.0], 0)


PLUGIN = '''
def trl_style(prompts, completions, completion_ids, solution, trainer_state, **kwargs):
    assert trainer_state is None
    return [float(c[0]["content"] == s) for c, s in zip(completions, solution)]

def legacy(completions, answer):
    return [float(c[0]["content"] == a) for c, a in zip(completions, answer)]

def decline(completions, **kwargs):
    return [None for _ in completions]
'''


def test_a_reward_worker_calls_plugins_the_same_way(tmp_path: Path):
    (tmp_path / "plug.py").write_text(PLUGIN)
    messages = [[{"role": "assistant", "content": "1"}], [{"role": "assistant", "content": "3"}]]
    for name in ("trl_style", "legacy"):  # isolated: resolved and called in the worker process
        assert safe_call(f"{tmp_path / 'plug.py'}:{name}", messages, COLUMNS, timeout=30.0) == ([1.0, 0.0], 0)
    # None everywhere = unscorable: counted as failed and scored 0, or stops the run (reward.on_error)
    assert safe_call(f"{tmp_path / 'plug.py'}:decline", messages, COLUMNS, timeout=30.0) == ([0.0, 0.0], 2)
    with pytest.raises(RewardError, match=r"record ids: \['r0', 'r1'\]"):
        safe_call(f"{tmp_path / 'plug.py'}:decline", messages, COLUMNS, timeout=30.0, on_error="raise")


def untyped(completions, **kwargs):
    return []


def text_typed(completions: list[str], **kwargs):
    return []


def message_typed(completions: "list[list[dict[str, str]]]", **kwargs):
    return []


def test_declares_messages_reads_the_annotation():
    assert not declares_messages(untyped) and not declares_messages(text_typed)
    assert declares_messages(message_typed) and declares_messages(functools.partial(message_typed))
    assert declares_messages(get_reward_fn("test_rewards_call:message_typed"))
    trl_rewards = pytest.importorskip("trl.rewards")
    assert declares_messages(trl_rewards.accuracy_reward) and declares_messages(trl_rewards.think_format_reward)
