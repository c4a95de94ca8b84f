"""DAPO's dynamic sampling in the loop's sample phase (`ppo.sample_and_score`), on fake roles: groups whose
scores are all equal are dropped, more questions are sampled until the batch is full, and when the rounds
run out, dropped groups fill it."""

import torch

from rlft.config import load_config
from rlft.tasks.base import Record
from rlft.trainers.algorithms import plan
from rlft.trainers.ppo import Loop, sample_and_score
from rlft.types import RolloutBatch

G = 2


class FakeEngine:
    """Each sample's response is (prompt token, sample index); question q's prompt is [q]."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompt_ids, params):
        self.calls += 1
        B = len(prompt_ids) * params.n
        prompts = torch.tensor([p for p in prompt_ids for _ in range(params.n)])  # (B, 1)
        return RolloutBatch(prompts, torch.ones(B, 1, dtype=torch.long),
                            torch.stack([prompts[:, 0], torch.arange(B) % params.n], 1), torch.ones(B, 2, dtype=torch.long),
                            torch.zeros(B, 2), torch.arange(len(prompt_ids)).repeat_interleave(params.n),
                            torch.zeros(B, dtype=torch.bool))


class FakeReward:
    """Questions with an even id get scores (1, 0) in their group (signal); odd ids (0, 0) (none)."""

    def score(self, texts, records, truncated, completion_ids=None):
        scores = [float(int(r.id) % 2 == 0 and i % 2 == 0) for i, r in enumerate(records)]
        return torch.tensor(scores), {"reward/failed": 0.0}


class FakeTokenizer:
    pad_token_id = 0

    def batch_decode(self, ids, skip_special_tokens=True):
        return [str(row.tolist()) for row in ids]


class FakeRoles:
    def __init__(self):
        self.rollout, self.reward = FakeEngine(), FakeReward()


def _loop(*overrides):
    cfg = load_config(None, ["algo=dapo", f"rollout.samples_per_prompt={G}", "rollout.prompts_per_step=4", *overrides])
    train = [Record(id=str(i), question=f"q{i}", answer="1") for i in range(10)]
    from rlft.rollout.base import SamplingParams

    return Loop(cfg, plan(cfg), FakeRoles(), None, None, train, [], FakeTokenizer(), [[i] for i in range(10)],
                SamplingParams(n=G), None, {})


def test_groups_without_signal_are_replaced_by_new_questions():
    loop = _loop("dapo.max_sample_rounds=10")
    m = {}
    rollout, owners, scores = sample_and_score(loop, 0, m)
    assert len(rollout) == 4 * G and len(owners) == 4 * G
    ids = [int(o.id) for o in owners]
    assert all(i % 2 == 0 for i in ids), ids  # only groups with signal were kept
    assert ids[0::G] == ids[1::G]  # a group's samples stay adjacent
    assert scores.tolist() == [1.0, 0.0] * 4
    assert rollout.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rollout.prompt_ids[:, 0].tolist() == ids  # rows, owners and scores stay aligned
    assert m["rollout/sample_rounds"] == loop.roles.rollout.calls > 1


def test_when_rounds_run_out_groups_without_signal_fill_the_batch():
    loop = _loop("dapo.max_sample_rounds=1")
    m = {}
    rollout, owners, scores = sample_and_score(loop, 0, m)
    assert loop.roles.rollout.calls == 1 and m["rollout/sample_rounds"] == 1.0
    ids = [int(o.id) for o in owners]
    with_signal = [i for i in ids[0::G] if i % 2 == 0]
    assert ids[0::G] == with_signal + [i for i in ids[0::G] if i % 2]  # signal first, then the fill-up
    assert len(rollout) == 4 * G and m["rollout/groups_with_signal_frac"] == len(with_signal) / 4


def test_other_algorithms_sample_once():
    cfg = load_config(None, ["algo=grpo", f"rollout.samples_per_prompt={G}", "rollout.prompts_per_step=4"])
    loop = _loop()
    loop.cfg, loop.plan = cfg, plan(cfg)
    m = {}
    _, owners, _ = sample_and_score(loop, 0, m)
    assert loop.roles.rollout.calls == 1 and "rollout/sample_rounds" not in m and len(owners) == 4 * G
