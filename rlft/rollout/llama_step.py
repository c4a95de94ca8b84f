"""One decoding step of a Llama-family HF model without the HF module stack: the hot loop of CPU rollouts.

Why not the model's own forward for each new token: profiled on SmolLM2-135M decoding 8 rows, the HF
forward spends ~25 % of a step outside the weight GEMMs (module calls, mask building, cache bookkeeping,
attention-interface dispatch: ~800 ops per step), and its 8-row `F.linear` GEMMs stream the weights at
~45 % of the measured memory read bandwidth. This step
- calls the same weights and the model's own rotary embedding, with one op per math step (~15 per layer), or,
  where rlft's decoding kernel loads (`stream_gemm`), the whole step in one call of its `Decoder`
  (csrc/stream_gemm.cpp: the same math in plain loops around the step's packed GEMMs, the streaming kernel's in
  fp32, oneDNN's under bf16 autocast, rounding to bf16 where autocast does; SmolLM2-135M's fp32 step at 8 rows
  spent ~10 of its ~29 ms in the ~900 torch ops, SDPA ~2.5 ms of it);
- on CPU, float32, for batches of at most `PACK_MAX_ROWS` rows (`should_pack`), multiplies by packed weights:
  with rlft's streaming kernel where it runs (`stream_gemm`: AVX-512; q|k|v and gate|up as one GEMM each),
  1.6x MKL's packed GEMM over SmolLM2-135M's step GEMMs at 8 rows; else, for weights larger than the
  last-level cache, with weights that MKL has packed for that row count (`torch.ops.mkl._mkl_linear`, what
  inductor's freezing pass uses): 1.3x the GEMM speed of `F.linear` at 8 rows, 2.3x for a 49k-token LM head.
  Packing costs one pass over the weights (SmolLM2-135M on 2 cores: 38 ms for the streaming kernel, 91 ms for
  oneDNN's bf16 layout) and one extra copy of them while a rollout runs; the HF engine packs them again for
  every `generate` call, so weights updated by training are always the ones sampled from.
Logits agree with the HF forward to float32 rounding (tested per architecture against
`model(...)` on the same cache). Models it does not cover (other architectures, sliding windows, LoRA or
other wrapped linears, forward hooks) keep the HF forward: `unsupported_reason` says why.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from rlft.models.loading import LLAMA_FAMILY as ARCHITECTURES
from rlft.models.loading import uses_sliding_window
from rlft.rollout import stream_gemm
from rlft.utils import memory

PACK_MAX_ROWS = 32  # measured: packing pays at 8-32 rows; at 64 rows (compute-bound) F.linear is as fast


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """None if `LlamaStep` computes what `model`'s forward computes, else why not."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in ARCHITECTURES:
        return f"architecture {getattr(config, 'model_type', type(model).__name__)!r} is not one of {ARCHITECTURES}"
    if uses_sliding_window(config):
        return "sliding-window attention"
    from transformers.activations import ACT2FN

    if config.hidden_act not in ACT2FN:
        return f"activation {config.hidden_act!r}"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return f"{type(model).__name__} has no Llama-style decoder at .model"
    if any(not _read_only(hook) for m in model.modules()
           for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())):
        return "forward hooks (an adapter edits activations)"
    linears = [model.lm_head]
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if any(type(m) is not torch.nn.Linear for m in linears):  # e.g. peft LoRA layers wrap the base Linear
        return "wrapped linear layers (e.g. LoRA)"
    return None


def _read_only(hook) -> bool:
    """HF's output-capturing hooks: installed by the first forward that asks for hidden states (the value head
    does) and kept; they only record outputs while a caller collects them, and change nothing."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


class _Linear:
    """`F.linear`; or MKL's packed fp32 GEMM for a fixed row count (smaller batches are padded up to it); or,
    `stream`, rlft's streaming fp32 kernel on its own packed copy (`stream_gemm`, any row count); or, `bf16`,
    oneDNN's GEMM on a bf16 copy of the weight reordered once into its blocked layout (the row count a hint
    only), which computes what `F.linear` under bf16 autocast computes: bf16 in, bf16 out."""

    def __init__(self, module: torch.nn.Linear | None, pack_rows: int | None, bf16: bool = False, *,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, stream=None,
                 stream_packed: torch.Tensor | None = None, out_features: int | None = None):
        """`module`'s weight and bias, or (`module` None) `weight` and `bias` given; `stream`: the loaded
        `stream_gemm` module, to pack for it instead of MKL (fp32, `pack_rows` set); `stream_packed` (with
        `out_features`, no `weight`): a weight already in its packed layout."""
        if module is not None:
            weight, bias = module.weight, module.bias
        self.weight, self.bias, self.rows, self.bf16 = weight, bias, pack_rows, bf16
        self.out_features = weight.shape[0] if out_features is None else out_features
        self.stream = stream if pack_rows is not None and not bf16 else None
        if self.stream is not None:
            with torch.no_grad():
                self.packed = self.stream.pack(weight.detach()) if stream_packed is None else stream_packed
                self.bias = None if bias is None else bias.detach().contiguous()
            self.weight = None  # only the packed copy is multiplied by (the module keeps its own weight)
        elif bf16:
            with torch.no_grad():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), pack_rows)
                self.bias = None if bias is None else bias.to(torch.bfloat16)
            self.weight = None  # the packed copy is all it multiplies by (and no second copy is kept)
        else:
            self.packed = None if pack_rows is None else torch.ops.mkl._mkl_reorder_linear_weight(self.weight,
                                                                                                  pack_rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if self.bf16:
            return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")
        if self.stream is not None:
            return self.stream.linear(x, self.packed, self.out_features, self.bias)
        if self.packed is None or rows > self.rows:
            return F.linear(x, self.weight, self.bias)
        if rows < self.rows:  # rows left the batch: the packed layout is for `self.rows` rows
            return torch.ops.mkl._mkl_linear(F.pad(x, (0, 0, 0, self.rows - rows)), self.packed, self.weight,
                                             self.bias, self.rows)[:rows]
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)


def _merged(modules: tuple[torch.nn.Linear, ...], rows: int, bf16: bool, stream=None) -> _Linear:
    """One packed GEMM (oneDNN bf16, or the fp32 `stream` kernel) for linears that read the same input (q|k|v,
    gate|up), outputs side by side. Why: at decoding sizes a packed bf16 GEMM costs mostly its call (the tiny
    model's 32 x 256 x 256 takes ~30 us for 4 MFLOP), so 5 calls per layer become 2; the fp32 stream kernel saves
    1-2 % of its GEMM time. Each output column is the same dot product as in its own GEMM.
    A missing bias is 0 where another module of the group has one (Qwen2: q/k/v biases). For the stream kernel
    the weights are packed side by side without concatenating them first (`stream_gemm.pack_concatenated`)."""
    with torch.no_grad():
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat([
            (torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device) if b is None else b)
            for m, b in zip(modules, biases)])
        if stream is not None and not bf16:
            return _Linear(None, rows, bias=bias, stream=stream, out_features=sum(m.out_features for m in modules),
                           stream_packed=stream_gemm.pack_concatenated(stream, [m.weight for m in modules]))
        first = modules[0].weight  # bf16: each weight cast straight into its rows (no cast copy, then a cat)
        weight = torch.empty((sum(m.out_features for m in modules), first.shape[1]),
                             dtype=torch.bfloat16 if bf16 else first.dtype, device=first.device)
        row = 0
        for m in modules:
            weight[row:row + m.out_features].copy_(m.weight)
            row += m.out_features
    return _Linear(None, rows, bf16=bf16, weight=weight, bias=bias, stream=stream)


def packs_bf16(weight: torch.Tensor) -> bool:
    """Decode with oneDNN-packed bf16 weights: on a CPU whose oneDNN runs bf16 GEMMs, when the step computes in
    bf16 (under bf16 autocast over fp32 weights, or with bf16 weights). Why: under autocast every `F.linear`
    casts its fp32 weight to bf16 again (autocast caches casts only for autograd), and an unpacked bf16 weight is
    reordered by oneDNN on every call: measured at 8 rows on an AMX CPU, SmolLM2-135M's LM head took 24.5 ms per
    step under autocast, 2.0 ms with a bf16 weight and 1.3 ms packed (4.5 ms for MKL's packed fp32 GEMM)."""
    if weight.device.type != "cpu" or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    in_bf16 = weight.dtype == torch.bfloat16 or (
        weight.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return in_bf16 and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _can_pack(weight: torch.Tensor, rows: int) -> bool:
    # Not under bf16 autocast: MKL's packed GEMM is fp32 only (the bf16 step packs with oneDNN: `packs_bf16`).
    return (rows <= PACK_MAX_ROWS and weight.device.type == "cpu" and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))


@functools.cache
def last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs), 32 MiB where it cannot be read."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        if text[:-1].isdigit() and text[-1] in "KMG":
            sizes.append(int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]])
    return max(sizes, default=32 << 20)


def should_pack(model: torch.nn.Module, rows: int) -> bool:
    """Pack where it pays: float32 on an MKL CPU, at most `PACK_MAX_ROWS` rows; for rlft's streaming kernel
    (`stream_gemm`) at any model size, for MKL's GEMM only weights larger than the last-level cache, so that every
    step streams them from memory. Measured: SmolLM2-135M (538 MB, 8 rows) 1.3x per step with MKL, 1.3x more with
    the kernel; the 13 MB tiny model (cache-resident, 32 rows) 0.95x with MKL, and the page faults of packing and
    freeing a copy every rollout cost it another ~15 % of a GRPO iteration; with the kernel its step GEMMs run 1.5x
    `F.linear`'s and its fp32 GRPO iteration 1.05x (rollout 1.12x)."""
    if not _can_pack(model.lm_head.weight, rows):
        return False
    if stream_gemm.load() is not None:
        return True
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return weight_bytes > last_level_cache_bytes()


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """HF's Llama RMSNorm: normalise in float32, scale in the input dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _head_geometry(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of a Llama-family config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def fusable_reason(model: torch.nn.Module) -> str | None:
    """None if the decoding kernel's `Decoder` (`stream_gemm`) computes `LlamaStep`'s math for `model` (a supported
    model, see `unsupported_reason`), else why not."""
    config = model.config
    if config.hidden_act not in ("silu", "swish"):
        return f"activation {config.hidden_act!r} (the fused step has SiLU)"
    norms = [model.model.norm] + [n for layer in model.model.layers
                                  for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    qk_norms = [n for layer in model.model.layers
                for n in (getattr(layer.self_attn, "q_norm", None), getattr(layer.self_attn, "k_norm", None))
                if n is not None]
    for group in (norms, qk_norms):
        if len({float(n.variance_epsilon) for n in group}) > 1:
            return "RMSNorms with different epsilons"
    if any(n.weight.dtype != torch.float32 for n in norms + qk_norms):
        return "norm weights not float32"
    heads, kv_heads, head_dim = _head_geometry(config)
    if head_dim % 2 or head_dim > 512 or heads % kv_heads:
        return f"head_dim {head_dim} with {heads} query / {kv_heads} key-value heads"
    return None


def _decoder(model: torch.nn.Module, step: "LlamaStep", stream, bf16: bool):
    """The decoding kernel's `Decoder` over `step`'s packed weights (no copy: the streaming kernel's fp32 ones or
    oneDNN's bf16 ones), or None (`fusable_reason`)."""
    if fusable_reason(model) is not None:
        return None
    config, inner = model.config, model.model
    qk_eps = [float(layer.self_attn.q_norm.variance_epsilon) for layer in inner.layers
              if getattr(layer.self_attn, "q_norm", None) is not None]
    decoder = stream.Decoder(config.hidden_size, step.heads, step.kv_heads, step.head_dim, config.intermediate_size,
                             float(inner.norm.variance_epsilon), qk_eps[0] if qk_eps else 0.0, bf16)
    weight = (lambda norm: None if norm is None else norm.weight.detach().contiguous())
    for layer, (norm1, qkv, q_norm, k_norm, o_proj, norm2, gate_up, down) in zip(inner.layers, step.layers):
        decoder.add_layer(weight(norm1), qkv.packed, qkv.bias, weight(q_norm), weight(k_norm), o_proj.packed,
                          o_proj.bias, weight(norm2), gate_up.packed, gate_up.bias, down.packed, down.bias)
    decoder.set_head(weight(inner.norm), step.lm_head.packed, step.lm_head.out_features, step.lm_head.bias)
    return decoder


def _fusable_cache(cache, dtype: torch.dtype) -> bool:
    """The cache the fused step writes into: `decode.preallocated_cache`'s layers, filled, `dtype` buffers."""
    layers = getattr(cache, "layers", None)
    first = layers[0] if layers else None
    buffer = getattr(first, "key_buffer", None)
    return buffer is not None and buffer.dtype == dtype and hasattr(first, "advance") and buffer.is_contiguous()


class LlamaStep:
    """`step(tokens, positions, cache, mask_bias)` -> next-token logits (rows, vocab) for one new token per row.

    `cache` is the `decode.preallocated_cache` the prefill filled (each layer's `update` appends in place);
    `mask_bias` (rows, 1, 1, cache length + 1) is 0 where a row may attend and -inf at its left padding.
    Packed weights are a snapshot of the weights at construction: build one per batch of calls with the same
    weights (`HFRolloutEngine.generate` builds one per call and shares it across its chunks), then `release`.
    """

    def __init__(self, model: torch.nn.Module, rows: int, pack: bool | None = None, fuse: bool | None = None):
        """`pack`: multiply by packed fp32 weights, for rlft's streaming kernel where it runs, else for MKL's GEMM
        (None: where `should_pack` says it pays; True: wherever MKL can). bf16 steps always pack (oneDNN).
        `fuse`: run the whole step in the decoding kernel's `Decoder` (`stream_gemm`: with its streaming GEMMs in
        fp32, with oneDNN's on the bf16 packed weights under autocast over fp32 weights; None: where the kernel
        loads and `fusable_reason` finds nothing against it; False: the torch ops below, the same math)."""
        from transformers.activations import ACT2FN

        config = model.config
        self.inner = model.model
        self.heads, self.kv_heads, self.head_dim = _head_geometry(config)
        self.act = ACT2FN[config.hidden_act]
        bf16 = pack is not False and packs_bf16(model.lm_head.weight)  # always pays: see `packs_bf16`
        if pack is None:
            pack = should_pack(model, rows)
        pack = rows if bf16 or (pack and _can_pack(model.lm_head.weight, rows)) else None
        # fp32: rlft's streaming kernel where it builds and runs (`stream_gemm`), else MKL's packed GEMM
        stream = stream_gemm.load() if pack is not None and not bf16 else None
        if pack is not None:
            memory.trim()  # the packed copies go where a train step's freed activations were, not on top
        self.packed = pack is not None
        self.packed_bf16 = bf16
        self.packed_stream = stream is not None
        merge = bf16 or stream is not None
        self.layers = []
        for layer in self.inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            if merge:  # one GEMM for q|k|v and one for gate|up: see `_merged`
                qkv, gate_up = _merged((attn.q_proj, attn.k_proj, attn.v_proj), pack, bf16, stream), \
                    _merged((mlp.gate_proj, mlp.up_proj), pack, bf16, stream)
            else:
                qkv = (_Linear(attn.q_proj, pack), _Linear(attn.k_proj, pack), _Linear(attn.v_proj, pack))
                gate_up = (_Linear(mlp.gate_proj, pack), _Linear(mlp.up_proj, pack))
            self.layers.append((layer.input_layernorm, qkv, q_norm, k_norm, _Linear(attn.o_proj, pack, bf16,
                                                                                    stream=stream),
                                layer.post_attention_layernorm, gate_up, _Linear(mlp.down_proj, pack, bf16,
                                                                                 stream=stream)))
        self.lm_head = _Linear(model.lm_head, pack, bf16, stream=stream)
        # The whole step in one call of the kernel's `Decoder`: fp32 on the streaming kernel's packed weights; bf16
        # on oneDNN's, under autocast over fp32 weights only (bf16 weights keep the torch ops)
        if fuse is not False and stream is None and bf16 and model.lm_head.weight.dtype == torch.float32:
            stream = stream_gemm.load()
        self.decoder = _decoder(model, self, stream, bf16) if stream is not None and fuse is not False else None

    def release(self) -> None:
        """Free the packed weights and hand the freed pages back to the OS. Why the second part (and the trim
        before packing): measured on SmolLM2-135M (GRPO, 8 rows), glibc kept freed memory mapped, so the packed
        copies landed on top of the train step's freed activations and the next train step on top of the freed
        packed copies: peak RSS +5 %, above TRL's. A process that keeps freed memory (`RLFT_KEEP_FREED_MEMORY`)
        skips both trims (`memory.trim`): its freed pages stay mapped for the next allocations that fit them."""
        packed, self.layers, self.lm_head, self.decoder = self.packed, [], None, None
        self.packed = self.packed_bf16 = self.packed_stream = False
        if packed:
            memory.trim()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, mask_bias: torch.Tensor) -> torch.Tensor:
        rows, heads, kv_heads, dim = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        h = self.inner.embed_tokens(tokens)  # (rows, hidden)
        cos, sin = self.inner.rotary_emb(h, positions[:, None])  # (rows, 1, head_dim)
        if self.decoder is not None and _fusable_cache(cache, torch.bfloat16 if self.packed_bf16 else torch.float32):
            layers = cache.layers
            length = layers[0].length
            logits = self.decoder.step(h, [layer.key_buffer for layer in layers],
                                       [layer.value_buffer for layer in layers], length, cos[:, 0], sin[:, 0],
                                       mask_bias)
            for layer in layers:  # the kernel wrote each layer's key and value at position `length`
                layer.advance(length + 1)
            return logits
        # bf16 weights take bf16 inputs: cast each normed activation once for the projections that share it
        narrow = (lambda x: x.to(torch.bfloat16)) if self.packed_bf16 else (lambda x: x)
        for index, (norm1, qkv, q_norm, k_norm, o_proj, norm2, gate_up, down) in enumerate(self.layers):
            x = narrow(_rms_norm(h, norm1))
            if isinstance(qkv, tuple):
                q, k, v = (proj(x).view(rows, -1, dim) for proj in qkv)
                qk = None
            else:  # one GEMM: q|k|v side by side in each row
                qkv_heads = qkv(x).view(rows, heads + 2 * kv_heads, dim)
                q, k, v = qkv_heads.split((heads, kv_heads, kv_heads), dim=1)
                qk = qkv_heads.narrow(1, 0, heads + kv_heads)
            if q_norm is not None:  # Qwen3: per-head norm before the rotation
                q, k = _rms_norm(q, q_norm), _rms_norm(k, k_norm)
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            elif qk is None:
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            else:  # q and k are adjacent heads of one tensor: rotated together (elementwise: the same values)
                q, k = _rotate(qk, cos, sin).split((heads, kv_heads), dim=1)
            keys, values = cache.layers[index].update(k[:, :, None], v[:, :, None])
            # Grouped-query attention without repeating the cache: query heads grouped under their KV head.
            # SDPA, not matmul-softmax-matmul: as fast here, and bit-reproducible across processes (MKL's batched
            # GEMM gave a resumed run other float rounding than an uninterrupted one: tests/faults/test_resume_kill)
            att = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask_bias, enable_gqa=True)
            h = h + o_proj(att.reshape(rows, heads * dim))
            x = narrow(_rms_norm(h, norm2))
            if isinstance(gate_up, tuple):
                gate, up = (proj(x) for proj in gate_up)
            else:
                gate, up = gate_up(x).chunk(2, dim=-1)
            h = h + down(self.act(gate) * up)
        return self.lm_head(_rms_norm(h, self.inner.norm))
