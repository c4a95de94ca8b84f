"""The lean decoding step (rlft/rollout/llama_step.py) against the HF forward it replaces."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlft.rollout import llama_step, stream_gemm
from rlft.rollout.decode import cache_keyword, preallocated_cache, sample

SMALL = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128, "tie_word_embeddings": True}
ARCHITECTURES = {
    "llama": {"attention_bias": False},
    "llama-rope-scaled": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False, "tie_word_embeddings": False},  # q/k/v biases
    "qwen3": {"use_sliding_window": False},  # per-head q/k norms
}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(name.split("-")[0], **{**SMALL, **ARCHITECTURES[name]})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and norm weights away from their 0 / 1 init, so that using them is tested
        for param_name, param in model.named_parameters():
            if "bias" in param_name or "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def prompts(rows: int, vocab: int):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (rows, 7), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(rows):
        mask[row, : row % 4] = 0  # left padding of 0-3 positions
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("rows,leave", [(5, 0), (6, 2), (12, 3), (40, 0)])  # packed (rows gone); unpacked
@pytest.mark.parametrize("kernel", ["fused", "stream", "mkl"])
def test_step_logits_match_the_hf_forward(name, rows, leave, kernel, monkeypatch):
    """Several decode steps on a left-padded batch: the lean step's logits equal `model(...)`'s on the same
    cache; `leave` rows leave the batch after the first step (MKL's packed GEMMs then pad to their row count).
    fp32 packs for rlft's streaming kernel where it runs, whole steps in its `Decoder` (`fused`) or its GEMMs
    between torch ops (`stream`), else for MKL's GEMM: all compared."""
    if kernel != "mkl" and stream_gemm.load() is None:
        pytest.skip(f"streaming kernel unavailable: {stream_gemm.unavailable_reason() or 'its build failed'}")
    if kernel != "mkl" and rows > llama_step.PACK_MAX_ROWS:
        pytest.skip("unpacked: the same F.linear run as kernel=mkl")
    if kernel == "mkl":
        monkeypatch.setattr(stream_gemm, "load", lambda: None)
    fuse = kernel == "fused"
    used = compare_steps(build(name), rows, leave, atol=2e-5, rtol=1e-4, fuse=fuse)
    if rows <= llama_step.PACK_MAX_ROWS and torch.backends.mkl.is_available():
        assert used.packed and used.packed_stream == (kernel != "mkl")  # so that path was compared
        assert (used.decoder is not None) == fuse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_step_logits_match_the_hf_forward_on_gpu(name, dtype):
    """The HF engine on a GPU (no vLLM): F.linear, SDPA and the mask bias in the model's dtype."""
    model = build(name).to("cuda", dtype)
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 5e-2}
    compare_steps(model, 6, 2, **tol)


BF16_CPU = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not BF16_CPU, reason="this CPU's oneDNN has no bf16 GEMM")
@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("rows,leave", [(6, 2), (40, 0)])
@pytest.mark.parametrize("fuse", [None, False])
def test_step_under_bf16_autocast_multiplies_packed_bf16_weights_like_the_autocast_forward(name, rows, leave, fuse):
    """`model.precision=bf16-mixed` on a CPU: the step packs bf16 copies of the fp32 weights (any row count) and its
    logits equal the autocast HF forward's to bf16 rounding, whole steps in the decoding kernel's `Decoder` where it
    loads (`fuse=None`) and as torch ops (`False`); outside autocast it keeps fp32."""
    model = build(name)
    assert not llama_step.LlamaStep(model, rows).packed_bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = llama_step.LlamaStep(model, rows)
        assert step.packed and step.packed_bf16 and not llama_step.LlamaStep(model, rows, pack=False).packed
        used = compare_steps(model, rows, leave, atol=1e-2, rtol=1e-2, fuse=fuse)  # ops: bit-equal on this AMX CPU
        assert (used.decoder is not None) == (fuse is None and stream_gemm.load() is not None)
    assert model.lm_head.weight.dtype == torch.float32  # the master weights are untouched
    pure = build(name).to(torch.bfloat16)  # bf16 weights (model.dtype=bfloat16, inference) pack alike
    assert llama_step.LlamaStep(pure, rows).packed_bf16
    compare_steps(pure, rows, leave, atol=1e-2, rtol=1e-2)


def compare_steps(model, rows: int, leave: int, *, atol: float, rtol: float, fuse: bool | None = None):
    """The step's logits against the HF forward's over 4 new tokens; returns the step compared."""
    assert llama_step.unsupported_reason(model) is None
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    ids, mask = (t.to(device) for t in prompts(rows, model.config.vocab_size))
    new = 4
    kw = cache_keyword(model)
    caches = [preallocated_cache(ids.shape[1] + new) for _ in range(2)]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **{kw: cache})
        step = llama_step.LlamaStep(model, rows, pack=True, fuse=fuse)  # packed where MKL can (small weights)
        full = torch.cat([mask, torch.ones(rows, new, dtype=mask.dtype, device=device)], dim=1)
        bias = torch.zeros(full.shape, dtype=dtype, device=device).masked_fill(full == 0, float("-inf"))[:, None, None, :]
        positions = mask.sum(1) - 1
        tokens = torch.arange(rows, device=device) % model.config.vocab_size
        for t in range(new):
            if t == 1 and leave:
                keep = torch.arange(leave, rows, device=device)
                for cache in caches:
                    cache.batch_select_indices(keep)
                full, bias, positions, tokens = full[keep], bias[keep], positions[keep], tokens[keep]
            positions = positions + 1
            width = ids.shape[1] + t + 1
            ref = model(input_ids=tokens[:, None], attention_mask=full[:, :width], position_ids=positions[:, None],
                        use_cache=True, **{kw: caches[0]}).logits[:, -1]
            got = step(tokens, positions, caches[1], bias[..., :width])
            assert got.shape == ref.shape
            assert torch.allclose(got.float(), ref.float(), atol=atol, rtol=rtol), (t, (got - ref).abs().max())
            tokens = ref.argmax(-1)
        for ours, theirs in zip(caches[1].layers, caches[0].layers):  # the step wrote the keys and values too
            assert ours.keys.shape == theirs.keys.shape and ours.length == theirs.length
            assert torch.allclose(ours.keys, theirs.keys, atol=atol, rtol=rtol)
            assert torch.allclose(ours.values, theirs.values, atol=atol, rtol=rtol)
    return step


def test_models_the_fused_step_does_not_cover_keep_the_torch_ops(monkeypatch):
    """Another activation or RMSNorms of different epsilons: the streaming kernel's GEMMs between torch ops."""
    if stream_gemm.load() is None:
        pytest.skip(f"streaming kernel unavailable: {stream_gemm.unavailable_reason() or 'its build failed'}")
    assert llama_step.fusable_reason(build("llama")) is None
    assert llama_step.LlamaStep(build("qwen3"), 4, pack=True).decoder is not None
    gelu = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **{**SMALL, "hidden_act": "gelu"}))
    assert "activation 'gelu'" in llama_step.fusable_reason(gelu)
    assert llama_step.LlamaStep(gelu, 4, pack=True).decoder is None
    compare_steps(gelu.eval(), 4, 1, atol=2e-5, rtol=1e-4)
    odd = build("llama")
    odd.model.layers[1].post_attention_layernorm.variance_epsilon = 1e-3
    assert "epsilons" in llama_step.fusable_reason(odd)
    assert llama_step.LlamaStep(odd, 4, pack=True).decoder is None


def test_unsupported_models_keep_the_hf_forward():
    from peft import LoraConfig, get_peft_model

    assert "sliding-window" in llama_step.unsupported_reason(
        AutoModelForCausalLM.from_config(AutoConfig.for_model("mistral", **{**SMALL, "sliding_window": 16})))
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "architecture 'gpt2'" in llama_step.unsupported_reason(gpt2)
    hooked = build("llama")
    with torch.no_grad():  # HF installs its read-only output-capturing hooks here (the value head asks for these)
        hooked(input_ids=torch.tensor([[3, 4]]), output_hidden_states=True)
    assert llama_step.unsupported_reason(hooked) is None
    handle = hooked.model.layers[0].register_forward_hook(lambda module, args, out: out)
    assert "hooks" in llama_step.unsupported_reason(hooked)
    handle.remove()
    assert llama_step.unsupported_reason(hooked) is None
    lora = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "LoRA" in llama_step.unsupported_reason(lora.base_model.model)


def test_sample_uses_the_lean_step_and_matches_the_hf_forward(monkeypatch):
    """`sample` decodes with the lean step where it applies: greedy tokens and log-probs as with the HF
    forward; it reads the weights of the call (a weight update between calls is sampled from)."""
    model = build("llama")
    ids, mask = prompts(6, model.config.vocab_size)
    calls = []
    original = llama_step.LlamaStep.__call__
    monkeypatch.setattr(llama_step.LlamaStep, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    for update in range(2):
        kw = {"max_new_tokens": 10, "stop_ids": [1], "pad_id": 0, "temperature": 0.0}
        lean_ids, lean_lp = sample(model, ids, mask, **kw)
        assert len(calls) == lean_ids.shape[1] - 1  # every token after the prefill's
        calls.clear()
        hf_ids, hf_lp = sample(model, ids, mask, lean_step=False, **kw)
        assert not calls
        assert torch.equal(lean_ids, hf_ids)
        assert torch.allclose(lean_lp, hf_lp, atol=1e-5)
        with torch.no_grad():  # an optimizer-like in-place update before the next call
            model.model.layers[0].mlp.up_proj.weight.mul_(-1.5)


def test_packing_is_chosen_for_the_stream_kernel_or_where_weights_outgrow_the_cache(monkeypatch):
    """The streaming kernel packs at any model size; MKL's GEMM only weights larger than the cache."""
    model = build("llama")
    assert llama_step.should_pack(model, 8) == (stream_gemm.load() is not None)
    assert not llama_step.should_pack(model, llama_step.PACK_MAX_ROWS + 1)  # compute-bound batches: F.linear
    monkeypatch.setattr(stream_gemm, "load", lambda: None)  # MKL's path
    assert llama_step.last_level_cache_bytes() > 1 << 20
    assert not llama_step.should_pack(model, 8)  # a few hundred KB of weights: cache-resident
    monkeypatch.setattr(llama_step, "last_level_cache_bytes", lambda: 1024)
    assert llama_step.should_pack(model, 8) == torch.backends.mkl.is_available()
    assert not llama_step.should_pack(model, llama_step.PACK_MAX_ROWS + 1)


def test_engine_builds_one_step_per_call_and_frees_its_packed_weights(monkeypatch):
    """The engine packs the weights once per `generate` call (shared by its chunks) and frees them at the end,
    so that no stale copy survives a weight update or stays resident through the train step."""
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.hf_engine import HFRolloutEngine

    monkeypatch.setattr(llama_step, "last_level_cache_bytes", lambda: 1024)  # pack these small weights
    built = []
    original_init = llama_step.LlamaStep.__init__
    monkeypatch.setattr(llama_step.LlamaStep, "__init__", lambda self, *a: built.append(self) or original_init(self, *a))
    released = []
    original_release = llama_step.LlamaStep.release
    monkeypatch.setattr(llama_step.LlamaStep, "release", lambda self: released.append(self.packed) or original_release(self))
    engine = HFRolloutEngine(build("llama"), pad_id=0, eos_id=1, batch_size=2)
    engine.generate([[3, 4, 5], [6, 7], [8], [9, 10]], SamplingParams(n=2, max_new_tokens=4, min_new_tokens=4))
    assert len(built) == 1  # two chunks of 2 prompts x 2 samples, one packing
    step = built[0]
    assert released == [torch.backends.mkl.is_available()]  # released once, packed where MKL is there
    assert not step.packed and step.lm_head is None and not step.layers


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_step_rounds_where_the_torch_ops_round(name, precision):
    """The decoding kernel's `Decoder` against `LlamaStep`'s torch ops from the same cache, 4 steps: fp32 within
    float32 rounding; under bf16 autocast the same bf16 roundings (projection inputs and outputs, the cache,
    attention's query and probabilities, SiLU), so nearly every logit is bit-equal (all of them on this AMX CPU;
    a rounding point left out or added moves most of them)."""
    if stream_gemm.load() is None:
        pytest.skip(f"decoding kernel unavailable: {stream_gemm.unavailable_reason() or 'its build failed'}")
    if precision == "bf16" and not BF16_CPU:
        pytest.skip("this CPU's oneDNN has no bf16 GEMM")
    model, autocast = build(name), precision == "bf16"
    fused, used = _four_steps(model, fuse=None, autocast=autocast)
    ops, _ = _four_steps(model, fuse=False, autocast=autocast)
    assert used
    if autocast:
        assert fused.dtype == ops.dtype == torch.bfloat16
        assert (fused == ops).float().mean() >= 0.95 and torch.allclose(fused.float(), ops.float(), atol=2e-2)
    else:
        assert torch.allclose(fused, ops, atol=1e-5, rtol=1e-5)


def _four_steps(model, *, fuse, autocast: bool, rows: int = 6):
    ids, mask = prompts(rows, model.config.vocab_size)
    dtype = torch.bfloat16 if autocast else torch.float32
    logits = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        cache = preallocated_cache(ids.shape[1] + 4, torch.bfloat16 if autocast else None)
        model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
              **{cache_keyword(model): cache})
        step = llama_step.LlamaStep(model, rows, pack=True, fuse=fuse)
        full = torch.cat([mask, torch.ones(rows, 4, dtype=mask.dtype)], 1)
        bias = torch.zeros(full.shape, dtype=dtype).masked_fill(full == 0, float("-inf"))[:, None, None, :]
        positions, tokens = mask.sum(1) - 1, torch.arange(rows) % model.config.vocab_size
        for t in range(4):
            positions = positions + 1
            logits.append(step(tokens, positions, cache, bias[..., :ids.shape[1] + t + 1]))
            tokens = logits[-1].argmax(-1)
    return torch.stack(logits), step.decoder is not None
