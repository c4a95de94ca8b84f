"""TRL reward functions as `reward.fn`, unchanged: TRL's own (`trl.rewards`) and a custom one that checks every
argument TRL passes, on plain-text (`data.prompt_format=reft`) and conversational (`chat`) prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rewards import RewardError
from rlft.config import ConfigError, load_config
from rlft.reward.role import RewardRole, completion_ids
from rlft.tasks.base import Record
from rlft.tasks.chat import chat_messages
from rlft.tasks.prompts import program_text, prompt_text
from rlft.types import RolloutBatch

pytest.importorskip("trl")
pytest.importorskip("math_verify")  # trl.rewards.accuracy_reward needs it

GOLD = Record(id="r0", question="What is 2 + 3?", answer="5")
BAD_GOLD = Record(id="r1", question="?", answer="\\frac{")  # math_verify cannot parse it: accuracy_reward says None

ACCURACY = [  # (completion, record, score, counted as failed)
    ("So the answer is \\boxed{5}.", GOLD, 1.0, False),  # boxed and right
    ("\\boxed{6}", GOLD, 0.0, False),  # boxed and wrong
    ("The final answer is $5$", GOLD, 1.0, False),  # LaTeX with TRL's anchor
    ("Therefore, the answer is: 5", GOLD, 0.0, False),  # rlft's own format: no LaTeX, so TRL's reward pays nothing
    ("\\boxed{5}", BAD_GOLD, 0.0, True),  # None (not applicable): scored 0 and counted in reward/failed
]
THINK = [  # (completion, score)
    ("<think>\n2 + 3 = 5\n</think>\n5", 1.0),  # one think block, then the answer
    ("2 + 3 = 5", 0.0),  # no think block
    ("<think>a</think><think>b</think>5", 0.0),  # two think blocks
]


def role(*overrides: str) -> RewardRole:
    return RewardRole(load_config(None, list(overrides)))


def score(r: RewardRole, texts: list[str], records: list[Record], ids: list[list[int]] | None = None):
    scores, metrics = r.score(texts, records, torch.zeros(len(texts), dtype=torch.bool), ids)
    return scores.tolist(), metrics["reward/failed"]


@pytest.mark.parametrize("prompt_format", ["reft", "chat"])
def test_trl_accuracy_reward(prompt_format):
    r = role("reward.fn=trl.rewards:accuracy_reward", f"data.prompt_format={prompt_format}")
    assert r.messages  # TRL's rewards read completion[0]["content"]: message lists, whatever the prompts
    scores, failed = score(r, [c for c, *_ in ACCURACY], [rec for _, rec, *_ in ACCURACY])
    assert scores == [s for *_, s, _ in ACCURACY]
    assert failed == sum(f for *_, f in ACCURACY)


@pytest.mark.parametrize("prompt_format", ["reft", "chat"])
def test_trl_think_format_reward(prompt_format):
    r = role("reward.fn=trl.rewards:think_format_reward", f"data.prompt_format={prompt_format}")
    assert score(r, [c for c, _ in THINK], [GOLD] * len(THINK)) == ([s for _, s in THINK], 0)


def test_trl_none_stops_the_run_with_on_error_raise():
    r = role("reward.fn=trl.rewards:accuracy_reward", "reward.on_error=raise")
    with pytest.raises(RewardError, match=r"record ids: \['r1'\]"):
        score(r, ["\\boxed{5}", "\\boxed{5}"], [GOLD, BAD_GOLD])


def test_trl_cosine_scaled_reward_reads_completion_ids(tmp_path: Path):
    (tmp_path / "cosine.py").write_text("from trl.rewards import get_cosine_scaled_reward\n"
                                        "reward = get_cosine_scaled_reward(max_len=10)\n")
    r = role(f"reward.fn={tmp_path / 'cosine.py'}:reward", "data.prompt_format=chat")
    scores, failed = score(r, ["\\boxed{5}", "\\boxed{6}"], [GOLD, GOLD], [[1, 2], [1] * 10])
    assert failed == 0 and scores[0] == pytest.approx(0.9522542, abs=1e-6) and scores[1] == -0.5  # short right, long wrong


SPY = '''
import json, pathlib

def spy(prompts, completions, completion_ids, solution, trainer_state, question, answer, **kwargs):
    pathlib.Path(__file__).with_suffix(".json").write_text(json.dumps({
        "prompts": prompts, "completions": completions, "completion_ids": completion_ids, "solution": solution,
        "trainer_state": trainer_state, "question": question, "answer": answer, "kwargs": sorted(kwargs)}))
    return [1.0] * len(completions)

def texts(completions: list[str], answer, **kwargs):  # an rlft plug-in written for strings
    return [float(isinstance(c, str)) for c in completions]
'''


def spy_call(tmp_path: Path, *overrides: str, style: str = "nl"):
    (tmp_path / "spy.py").write_text(SPY)
    r = role(f"reward.fn={tmp_path / 'spy.py'}:spy", f"data.style={style}", *overrides)
    ids = [[7, 8, 2], [9, 2]]
    assert score(r, ["4", "5"], [GOLD, BAD_GOLD], ids) == ([1.0, 1.0], 0)
    seen = json.loads((tmp_path / "spy.json").read_text())
    assert seen["completion_ids"] == ids and seen["trainer_state"] is None
    assert seen["solution"] == seen["answer"] == ["5", "\\frac{"] and seen["question"] == [GOLD.question, BAD_GOLD.question]
    assert seen["kwargs"] == ["dataset", "format", "id", "options"]
    return seen


def test_trl_arguments_with_plain_text_prompts(tmp_path: Path):
    seen = spy_call(tmp_path)
    assert seen["prompts"] == [prompt_text(GOLD), prompt_text(BAD_GOLD)]
    assert seen["completions"] == ["4", "5"]  # standard (non-conversational) data: strings, as in TRL


def test_trl_arguments_with_chat_prompts(tmp_path: Path):
    seen = spy_call(tmp_path, "data.prompt_format=chat", "data.system_prompt=Be brief.")
    assert seen["prompts"] == [chat_messages(GOLD, "Be brief."), chat_messages(BAD_GOLD, "Be brief.")]
    assert seen["prompts"][0][0] == {"role": "system", "content": "Be brief."}
    assert seen["completions"] == [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]


def test_program_completions_are_whole_programs_in_messages(tmp_path: Path):
    seen = spy_call(tmp_path, "data.prompt_format=chat", style="program")
    assert seen["completions"][0] == [{"role": "assistant", "content": program_text(prompt_text(GOLD, "program"), "4")}]


def test_completion_format_override_and_builtins(tmp_path: Path):
    (tmp_path / "spy.py").write_text(SPY)
    plugin = f"reward.fn={tmp_path / 'spy.py'}:texts"
    assert role(plugin, "data.prompt_format=chat").messages  # auto: chat prompts -> TRL's conversational form
    assert not role(plugin, "data.prompt_format=chat", "reward.completion_format=text").messages
    assert score(role(plugin, "data.prompt_format=chat", "reward.completion_format=text"), ["4"], [GOLD]) == ([1.0], 0)
    assert role(plugin, "reward.completion_format=messages").messages
    builtin = role("data.prompt_format=chat")  # the built-in math reward reads text under chat prompts too
    assert not builtin.messages and score(builtin, ["Therefore, the answer is: 5"], [GOLD]) == ([1.0], 0)
    with pytest.raises(ConfigError, match="reward.completion_format=messages is for plug-ins"):
        load_config(None, ["reward.completion_format=messages"])


def test_completion_ids_are_the_response_tokens_through_eos():
    batch = RolloutBatch(prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                         response_ids=torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]]),
                         response_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), rollout_logprobs=None,
                         prompt_index=torch.tensor([0, 1]), truncated=torch.tensor([False, False]))
    assert completion_ids(batch) == [[5, 6, 2], [7, 2]]
