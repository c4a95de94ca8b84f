"""A lean sampling loop for HF causal LMs: what `model.generate` does for RL rollouts, minus its overheads.

Why not `model.generate` (kept as the fallback for hook-based adapters): measured on the tiny model it spends
more time in its per-step machinery (logits-processor lists, stopping criteria over the whole sequence,
`output_scores` of shape (rows, T, vocab)) than in the model, and it keeps finished rows in the batch until
the longest response ends. This loop
- computes the sampled token's log-prob at each step, so the (rows, T, vocab) score stack never exists;
- drops finished rows from the batch and the KV cache (`DynamicCache.batch_select_indices`), so a batch
  with a few long responses costs what those responses cost, not rows x longest;
- applies the same processing as `generate` in the same order (min-new-tokens EOS mask, temperature,
  top-k, top-p; greedy takes the argmax of the raw logits), so greedy output is token-for-token
  `generate`'s; samples come from the same distribution by inverse-CDF sampling (`draw`: one uniform per
  row instead of `torch.multinomial`'s one exponential per vocabulary entry), so a seed gives other samples
  than `generate` with that seed;
- prefills each prompt once for its n samples (`n`), where `generate` prefills every repeated row;
- decodes Llama-family models with `llama_step.LlamaStep` instead of the HF forward (where it covers them;
  logits equal to float rounding, so greedy output can differ from `generate`'s only at exact near-ties).
Returned log-probs are those of the processed distribution the token was drawn from, as with
`generate(output_scores=True)`; at temperature 1 without top-k/top-p they are the policy's log-probs.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from rlft.rollout import llama_step
from rlft.utils.device import autocast_dtype


def cache_keyword(model: torch.nn.Module) -> str:
    """`cache` (transformers >= 5.2x) or the older `past_key_values`: the forward keyword of the KV cache."""
    while True:
        params = inspect.signature(model.forward).parameters
        if "cache" in params or "past_key_values" in params:
            return "cache" if "cache" in params else "past_key_values"
        inner = getattr(model, "base_model", None) or getattr(model, "model", None)  # peft wrappers: **kwargs
        if inner is None or inner is model:
            return "past_key_values"
        model = inner


try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # a transformers without layered caches: the model's default cache is used
    DynamicCache = DynamicLayer = None

if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):
        """One layer's keys and values in buffers of `capacity` positions, allocated at the first update (in
        `dtype`, None: the first keys' dtype); each update writes its positions in place and `keys` / `values`
        are views of the filled part."""

        def __init__(self, capacity: int, dtype: torch.dtype | None = None):
            super().__init__()
            self.capacity = capacity
            self.storage_dtype = dtype
            self.length = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                dtype = self.storage_dtype or key_states.dtype
                self.key_buffer = key_states.new_empty((*key_states.shape[:2], self.capacity, key_states.shape[-1]),
                                                       dtype=dtype)
                self.value_buffer = value_states.new_empty((*value_states.shape[:2], self.capacity,
                                                            value_states.shape[-1]), dtype=dtype)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:
                raise ValueError(f"KV cache of {self.capacity} positions cannot hold {end}")
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def advance(self, end: int) -> None:
            """Positions up to `end` were written into the buffers directly (the fused decoding step)."""
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys = self.key_buffer[:, :, :self.length]
                self.values = self.value_buffer[:, :, :self.length]


def preallocated_cache(capacity: int, dtype: torch.dtype | None = None):
    """A KV cache whose layers are `PreallocatedLayer`s of `capacity` positions, keys and values stored in `dtype`
    (None: the dtype the model gives them).

    Why not HF's DynamicCache: it `torch.cat`s every layer's keys and values with the new token at every
    step, copying the whole cache each time (O(L^2) bytes over a response); profiled, that was the largest
    cost of the tiny model's decoding at 64 rows and 7 % of SmolLM2-135M's. None where this transformers
    has no layered cache API (the loop then uses the model's default cache).
    """
    if DynamicCache is None:
        return None
    cache = DynamicCache()
    if not hasattr(cache, "layer_class_to_replicate"):
        return None
    cache.layer_class_to_replicate = functools.partial(PreallocatedLayer, capacity, dtype)
    return cache


def cache_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 under bf16 autocast on `device`'s type, else None (the model's own dtype).

    Why: under autocast an fp32 model's keys and values come out of the rotary embedding in fp32 (its cos/sin
    follow the fp32 hidden states), and every attention call casts the layer's whole cache to bf16 again (a
    copy of the cache per layer per step, O(L^2) over a response). Stored in bf16, each token is cast once when
    written; attention sees the same bf16 values autocast would give it, and the cache takes half the memory."""
    return torch.bfloat16 if autocast_dtype(device) == torch.bfloat16 else None


def process_logits(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                   eos_blocked: torch.Tensor | None) -> torch.Tensor:
    """Sampling distribution's logits (rows, V), float32: EOS mask, temperature, top-k, top-p (HF's order)."""
    scores = logits.float()
    if eos_blocked is not None:
        scores = scores.index_fill(1, eos_blocked, float("-inf"))
    if temperature <= 0:  # greedy: HF scores greedy steps without warpers
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[:, -1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return scores


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` (rows, V) by inverse-CDF sampling: one uniform number per row.

    Why not `torch.multinomial` (what `generate` uses): on CPU it draws an exponential variate for every
    vocabulary entry, 9 ms per step for 8 rows x 49k tokens, 11 % of SmolLM2-135M's decoding time (profiled).
    Same distribution: token i is chosen when u falls in [cdf[i-1], cdf[i]); a zero-probability token has an
    empty interval, so top-k / top-p exclusions are never drawn. u is scaled by each row's total so the
    float32 rounding of the cumulative sum cannot push it past the last token (kept strictly below it).
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=probs.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the last token's cdf
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


@torch.inference_mode()
def sample(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
           stop_ids: list[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           min_new_tokens: int = 0, logprobs: bool = True, n: int = 1,
           lean_step: bool | llama_step.LlamaStep = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample one response per row of a left-padded prompt batch.

    Args:
        prompt_ids, prompt_mask: (B, P) left-padded prompts.
        stop_ids: tokens that end a response (EOS first); the stop token is part of the response.
        n: samples per prompt. Each prompt is prefilled once and its KV cache copied to its n rows (as with
            prompts repeated n times, minus (n-1)/n of the prefill).
        lean_step: decode with `llama_step.LlamaStep` where it covers the model (else the HF forward); a
            `LlamaStep` built for these weights is used as it is (several calls share its packed weights).
    Returns:
        response_ids (B * n, T') right-padded with `pad_id` after the stop token, T' <= max_new_tokens the
        longest response, the n samples of a prompt in consecutive rows; log-probs (B * n, T') of the sampled
        tokens (0 after the end) or None.
    """
    rows = prompt_ids.shape[0] * n
    device = prompt_ids.device
    out_ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device) if logprobs else None
    stop = torch.tensor(stop_ids, device=device)
    active = torch.arange(rows, device=device)  # original row of each row still in the batch
    width = prompt_ids.shape[1]
    cache_kw = cache_keyword(model)
    cache = preallocated_cache(width + max_new_tokens, cache_dtype(device))
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0),
                use_cache=True, logits_to_keep=1, **({} if cache is None else {cache_kw: cache}))
    if cache is None:
        cache = getattr(out, "cache", None)
        cache = out.past_key_values if cache is None else cache
    logits = out.logits[:, -1]
    if n > 1:  # each prompt's cache and next-token logits, copied to its n rows
        copies = torch.arange(prompt_ids.shape[0], device=device).repeat_interleave(n)
        cache.batch_select_indices(copies)
        logits, prompt_mask = logits[copies], prompt_mask[copies]
    full_mask = torch.ones((rows, width + max_new_tokens), dtype=torch.long, device=device)  # grown by slicing
    full_mask[:, :width] = prompt_mask
    position = (prompt_mask.sum(dim=1) - 1).clamp(min=0)  # position of each row's last prompt token
    step_fn = mask_bias = None
    own_step = False  # built here, so released here (the caller releases a step it passed in)
    preallocated = DynamicLayer is not None and all(
        isinstance(layer, PreallocatedLayer) for layer in getattr(cache, "layers", None) or [None])
    if preallocated and isinstance(lean_step, llama_step.LlamaStep):  # the caller checked the model
        step_fn = lean_step
    elif preallocated and lean_step is True and llama_step.unsupported_reason(model) is None:
        step_fn, own_step = llama_step.LlamaStep(model, rows), True
    if step_fn is not None:
        mask_bias = torch.zeros(full_mask.shape, dtype=logits.dtype, device=device).masked_fill(
            full_mask == 0, float("-inf"))[:, None, None, :]
    length = 0
    for step in range(max_new_tokens):
        scores = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                eos_blocked=stop if step < min_new_tokens else None)
        # greedy: max's indices are argmax's (first maximal index), 2.4x faster on CPU at 64 x 49k logits
        tokens = scores.max(dim=-1).indices if temperature <= 0 else draw(F.softmax(scores, dim=-1))
        out_ids[active, step] = tokens
        if logprobs:
            out_logprobs[active, step] = F.log_softmax(scores, dim=-1).gather(1, tokens[:, None]).squeeze(1)
        length = step + 1
        running = ~torch.isin(tokens, stop)
        if not bool(running.all()):
            if not bool(running.any()):
                break
            keep = running.nonzero().squeeze(1)
            active, tokens, position, full_mask = active[keep], tokens[keep], position[keep], full_mask[keep]
            mask_bias = None if mask_bias is None else mask_bias[keep]
            cache.batch_select_indices(keep)
        if step + 1 == max_new_tokens:
            break
        position = position + 1
        if step_fn is not None:
            logits = step_fn(tokens, position, cache, mask_bias[..., :width + step + 1])
            continue
        mask = full_mask[:, :width + step + 1]  # the new token's position is already 1
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                    use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1]
    if own_step:
        step_fn.release()
    return out_ids[:, :length], None if out_logprobs is None else out_logprobs[:, :length]
