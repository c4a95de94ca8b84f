"""The HF engine honours the sampling controls that the vLLM engine maps too: seed, stop tokens, min length."""

import torch

from rlft.models.loading import load_policy
from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import HFRolloutEngine, response_mask_from_ids


def _engine_and_prompts(warm_model):
    lm, tok = load_policy(warm_model)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("Question: 2 + 3", "7")]
    return HFRolloutEngine(lm, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id), prompts, tok


def test_mask_ends_at_the_first_of_several_stop_ids():
    ids = torch.tensor([[5, 7, 1, 0], [5, 6, 8, 9]])
    mask, truncated = response_mask_from_ids(ids, [1, 7])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_seed_reproduces_and_leaves_the_global_stream_alone(warm_model):
    engine, prompts, _ = _engine_and_prompts(warm_model)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    torch.manual_seed(0)
    a = engine.generate(prompts, params)
    after_a = torch.rand(1)
    torch.manual_seed(0)
    b = engine.generate(prompts, params)
    assert torch.equal(a.response_ids, b.response_ids)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_a)  # the seeded call consumed nothing from the caller's stream
    c = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=12))
    assert not torch.equal(a.response_ids, c.response_ids)


def test_stop_tokens_and_min_new_tokens(warm_model):
    engine, prompts, tok = _engine_and_prompts(warm_model)
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8))
    stop = int(greedy.response_ids[0, 1])  # prompt 0's second greedy token
    batch = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=(stop,)))
    n = int(batch.response_mask[0].sum())
    assert n <= 2 and int(batch.response_ids[0, n - 1]) == stop and not bool(batch.truncated[0])
    # with min_new_tokens the stop token (and EOS) cannot end a response earlier
    long = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, stop_token_ids=(stop,),
                                                   min_new_tokens=5, seed=0))
    assert bool((long.response_mask.sum(1) >= 5).all())
    assert not bool(torch.isin(long.response_ids[:, :5], torch.tensor([stop, tok.eos_token_id])).any())
