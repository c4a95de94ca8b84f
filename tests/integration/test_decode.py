"""rlft's sampling loop (rlft/rollout/decode.py) against HF `generate`: same tokens, same distribution."""

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlft.models.loading import load_policy
from rlft.rollout.decode import (
    cache_keyword,
    draw,
    preallocated_cache,
    process_logits,
    sample,
)
from rlft.rollout.hf_engine import left_pad, response_mask_from_ids


@pytest.fixture(scope="module")
def lm_and_batch(warm_model):
    lm, tok = load_policy(warm_model)
    lm.eval()
    texts = ("Question: 2 + 3", "7", "Question: what is 12 - 5 + 1?")
    ids, mask = left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return lm, tok, ids, mask


def _hf(lm, tok, ids, mask, **kw):
    out = lm.generate(input_ids=ids, attention_mask=mask, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                      return_dict_in_generate=True, output_scores=True, **kw)
    response = out.sequences[:, ids.shape[1]:]
    logprobs = torch.stack(out.scores, 1).float().log_softmax(-1).gather(2, response[..., None]).squeeze(-1)
    return response, logprobs


def test_greedy_matches_generate_tokens_and_logprobs(lm_and_batch):
    lm, tok, ids, mask = lm_and_batch
    ref, ref_lp = _hf(lm, tok, ids, mask, do_sample=False, max_new_tokens=24)
    got, got_lp = sample(lm, ids, mask, max_new_tokens=24, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                         temperature=0.0)
    resp_mask, _ = response_mask_from_ids(ref, [tok.eos_token_id])
    assert got.shape == ref.shape
    assert torch.equal(got.masked_fill(resp_mask == 0, -1), ref.masked_fill(resp_mask == 0, -1))
    assert torch.allclose(got_lp * resp_mask, ref_lp * resp_mask, atol=1e-5)


def test_draw_follows_the_distribution_and_never_picks_excluded_tokens():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.1, 0.0, 0.9, 0.0]])
    draws = torch.stack([draw(probs) for _ in range(20000)])  # (n, rows)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=5).float() / len(draws)
        assert torch.allclose(freq, probs[row], atol=0.015), (row, freq)
        assert bool((freq[probs[row] == 0] == 0).all())  # zero-probability tokens are never drawn
    # the largest uniform draw cannot run past the last token even when the cdf ends below 1
    top = torch.tensor([[0.2, 0.3, 0.0]]) * (1 - 1e-7)
    assert int(draw(top)) in (0, 1)


def test_seeded_sampling_matches_generates_distribution(lm_and_batch):
    """Same processed distribution as `generate` at every step (top-k / top-p / temperature), and a seed
    reproduces the same samples."""
    lm, tok, ids, mask = lm_and_batch
    for kw in ({}, {"top_k": 20}, {"top_p": 0.8, "temperature": 0.7}):
        torch.manual_seed(3)
        got, got_lp = sample(lm, ids, mask, max_new_tokens=12, min_new_tokens=12, stop_ids=[tok.eos_token_id],
                             pad_id=tok.pad_token_id, **{"temperature": 1.0, **kw})
        torch.manual_seed(3)
        again, _ = sample(lm, ids, mask, max_new_tokens=12, min_new_tokens=12, stop_ids=[tok.eos_token_id],
                          pad_id=tok.pad_token_id, **{"temperature": 1.0, **kw})
        assert torch.equal(got, again), kw
        # teacher-force our samples through generate's own processors: same log-probs, all tokens allowed
        full, full_mask = torch.cat([ids, got], 1), torch.cat([mask, torch.ones_like(got)], 1)
        with torch.no_grad():
            logits = lm(input_ids=full, attention_mask=full_mask,
                        position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
        p = ids.shape[1]
        for t in range(got.shape[1]):
            ref = logits[:, p - 1 + t].index_fill(1, torch.tensor([tok.eos_token_id]), float("-inf"))
            ref = TemperatureLogitsWarper(kw.get("temperature", 1.0))(None, ref)
            if "top_k" in kw:
                ref = TopKLogitsWarper(top_k=kw["top_k"])(None, ref)
            if "top_p" in kw:
                ref = TopPLogitsWarper(top_p=kw["top_p"])(None, ref)
            ref_lp = ref.log_softmax(-1).gather(1, got[:, t:t + 1]).squeeze(1)
            assert bool(torch.isfinite(ref_lp).all()), (kw, t)  # never a token generate would exclude
            assert torch.allclose(got_lp[:, t], ref_lp, atol=1e-5), (kw, t)


def test_finished_rows_leave_the_batch_and_logprobs_match_teacher_forcing(lm_and_batch):
    lm, tok, ids, mask = lm_and_batch
    stop = [tok.eos_token_id, *range(5, 40)]  # many stop tokens: rows end at different steps
    torch.manual_seed(0)
    got, got_lp = sample(lm, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), max_new_tokens=16,
                         stop_ids=stop, pad_id=tok.pad_token_id)
    resp_mask, _ = response_mask_from_ids(got, stop)
    lengths = resp_mask.sum(1)
    assert lengths.min() < lengths.max()  # the test exercises early stops
    assert got.shape[1] == int(lengths.max())
    assert bool((got.masked_select(resp_mask == 0) == tok.pad_token_id).all())
    assert bool((got_lp.masked_select(resp_mask == 0) == 0).all())
    # teacher-forced log-probs of the whole sequences
    full = torch.cat([ids.repeat_interleave(4, 0), got], 1)
    full_mask = torch.cat([mask.repeat_interleave(4, 0), resp_mask], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = lm(input_ids=full, attention_mask=full_mask, position_ids=pos).logits.float()
    p = ids.shape[1]
    tf = logits[:, p - 1:-1].log_softmax(-1).gather(2, got[..., None]).squeeze(-1)
    assert torch.allclose(got_lp, tf * resp_mask, atol=1e-5)


def test_processing_matches_hf_warpers():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    for t, k, p in ((0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (1.3, 10, 0.75)):
        ref = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            ref = TopKLogitsWarper(top_k=k)(None, ref)
        if p < 1:
            ref = TopPLogitsWarper(top_p=p)(None, ref)
        got = process_logits(logits, temperature=t, top_k=k, top_p=p, eos_blocked=None)
        assert torch.equal(torch.isinf(got), torch.isinf(ref)), (t, k, p)
        assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)]), (t, k, p)
    blocked = process_logits(logits, temperature=1.0, top_k=0, top_p=1.0, eos_blocked=torch.tensor([3, 7]))
    assert bool(torch.isinf(blocked[:, [3, 7]]).all()) and not bool(torch.isinf(blocked[:, :3]).any())


def test_preallocated_cache_fills_in_place_and_matches_the_dynamic_cache(lm_and_batch):
    """The loop's KV cache writes positions into fixed buffers (no per-step copy of the whole cache) and
    gives the model the same keys/values as HF's DynamicCache."""
    from transformers import DynamicCache

    lm, _, ids, mask = lm_and_batch
    cache = preallocated_cache(ids.shape[1] + 4)
    assert cache is not None  # this transformers has the layered cache API: the fast path is taken
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_keyword(lm): cache})
        ref = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                 **{cache_keyword(lm): DynamicCache()})
    ref_cache = getattr(ref, "cache", None) or ref.past_key_values
    layer = cache.layers[0]
    buffer = layer.key_buffer.data_ptr()
    assert layer.key_buffer.shape[2] == ids.shape[1] + 4 and layer.keys.shape[2] == ids.shape[1]
    assert torch.equal(layer.keys, ref_cache.layers[0].keys)
    layer.update(torch.ones_like(layer.keys[:, :, :1]), torch.ones_like(layer.values[:, :, :1]))
    assert layer.key_buffer.data_ptr() == buffer and layer.keys.shape[2] == ids.shape[1] + 1  # written in place
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys[:, :, :-1], ref_cache.layers[0].keys[[2, 0]])


def test_engine_gives_the_same_greedy_batch_with_its_loop_and_with_generate(warm_model):
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.hf_engine import HFRolloutEngine

    lm, tok = load_policy(warm_model)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("Question: 2 + 3", "7", "Question: 9 - 4")]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True)
    ours = HFRolloutEngine(lm, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id).generate(prompts, params)
    hf = HFRolloutEngine(lm, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, use_generate=True).generate(prompts, params)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "truncated", "prompt_index"):
        assert torch.equal(getattr(ours, name), getattr(hf, name)), name
    assert torch.allclose(ours.rollout_logprobs, hf.rollout_logprobs, atol=1e-5)


def test_n_samples_share_one_prefill_and_equal_repeated_prompts(lm_and_batch):
    """`n` samples per prompt: one prefill per prompt, its cache copied to n rows; the same as passing every
    prompt n times (greedy: identical rows; seeded sampling: the same draws, as the rows line up alike)."""
    lm, tok, ids, mask = lm_and_batch
    kw = dict(max_new_tokens=16, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    repeated = sample(lm, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), temperature=0.0, **kw)
    shared = sample(lm, ids, mask, n=3, temperature=0.0, **kw)
    assert torch.equal(shared[0], repeated[0]) and torch.allclose(shared[1], repeated[1], atol=1e-6)
    torch.manual_seed(5)
    repeated = sample(lm, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), **kw)
    torch.manual_seed(5)
    shared = sample(lm, ids, mask, n=3, **kw)
    assert torch.equal(shared[0], repeated[0]) and torch.allclose(shared[1], repeated[1], atol=1e-5)
    assert len({tuple(r.tolist()) for r in shared[0]}) > 3  # samples of one prompt differ


@pytest.mark.parametrize("lean_step", [True, False])
def test_bf16_autocast_keeps_the_cache_in_bf16_and_samples_what_an_fp32_cache_gives(lm_and_batch, monkeypatch,
                                                                                       lean_step):
    """Under bf16 autocast (`model.precision=bf16-mixed`) the cache stores keys and values in bf16, each token cast
    once when written, where autocast would cast the whole fp32 cache again at every attention call: the same
    values reach the attention, so the same tokens and log-probs come out, with either step function (the lean
    step as torch ops: its fused `Decoder` takes bf16 caches only, and is compared with the torch ops in
    tests/integration/test_llama_step.py; here it gives the same tokens and log-probs to bf16 rounding)."""
    from rlft.rollout import llama_step

    fused = _check_bf16_cache(*lm_and_batch, monkeypatch, lean_step, "cpu")
    monkeypatch.setattr(llama_step, "fusable_reason", lambda model: "compared as torch ops")
    ops = _check_bf16_cache(*lm_and_batch, monkeypatch, lean_step, "cpu", exact=True)
    assert torch.equal(fused[0], ops[0]) and torch.allclose(fused[1], ops[1], atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU (tests/gpu/run_gpu_checks.sh runs this where one is)")
def test_bf16_autocast_cache_on_cuda(lm_and_batch, monkeypatch):
    lm, tok, ids, mask = lm_and_batch
    _check_bf16_cache(lm.to("cuda"), tok, ids.to("cuda"), mask.to("cuda"), monkeypatch, True, "cuda")
    lm.to("cpu")


def _check_bf16_cache(lm, tok, ids, mask, monkeypatch, lean_step, device_type, exact=None):
    """Sampling with a bf16 cache against an fp32 one under autocast; `exact`: the same log-probs to the bit (None:
    where both take the same step function, i.e. without the fused one); returns the bf16 cache's run."""
    from rlft.rollout import decode, llama_step, stream_gemm

    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
        assert decode.cache_dtype(ids.device) == torch.bfloat16
        cache, fp32_cache = preallocated_cache(ids.shape[1] + 2, torch.bfloat16), preallocated_cache(ids.shape[1] + 2)
        for c in (cache, fp32_cache):
            lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_keyword(lm): c})
    assert decode.cache_dtype(ids.device) is None  # outside autocast: the model's dtype
    assert cache.layers[0].key_buffer.dtype == cache.layers[0].value_buffer.dtype == torch.bfloat16
    assert fp32_cache.layers[0].keys.dtype == torch.float32
    assert torch.equal(cache.layers[0].keys, fp32_cache.layers[0].keys.to(torch.bfloat16))
    kw = dict(max_new_tokens=12, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, n=2, lean_step=lean_step)
    runs = []
    runs_with = (decode.cache_dtype, lambda device: None)
    for dtype_fn in runs_with:
        monkeypatch.setattr(decode, "cache_dtype", dtype_fn)
        torch.manual_seed(3)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            runs.append(sample(lm, ids, mask, **kw))
    (got, got_lp), (ref, ref_lp) = runs
    monkeypatch.setattr(decode, "cache_dtype", runs_with[0])  # restored: the caller may check again
    if exact is None:  # the fused step runs on a bf16 cache only: then the two runs took different step functions
        exact = not (lean_step and device_type == "cpu" and stream_gemm.load() is not None
                     and llama_step.fusable_reason(lm) is None)
    assert torch.equal(got, ref)
    assert torch.equal(got_lp, ref_lp) if exact else torch.allclose(got_lp, ref_lp, atol=1e-2)
    return got, got_lp
