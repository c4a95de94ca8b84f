"""Rollout with a Hugging Face model (the CPU backend, and the reference for every other engine).

Sampling runs rlft's lean loop (`rlft/rollout/decode.py`: no (rows, T, vocab) score stack, finished rows
leave the batch); hook-based adapters run HF `generate` (below), whose fixed rows their position plan needs.

Prompts are left-padded and processed in chunks of `batch_size` prompts; responses come back
right-padded, with a response mask that includes the EOS token and the sampler's per-token log-probs
(from the processed scores, i.e. after temperature / top-k / top-p).

With a hook-based policy adapter, every `generate` call runs under `adapter.plan(meta)`, meta built from the prompt
attention mask (expanded to the `n` samples per prompt as `generate` expands the batch), so hook-based
adapters edit the same absolute token positions in the prefill and in every cached decode step as the
learner does when it recomputes the sequence. This engine is the one that can run hook-based adapters.

Device and precision: prompts are padded on the CPU and moved to the model's device once per chunk; the
returned batch is on the CPU (the loop's bookkeeping). Under bf16-mixed it samples under bf16 autocast on the
model's own fp32 weights (the policy's module: no copy to keep in sync, and the numerics of the learner's
forwards, which autocast alike); on a CPU the lean step then multiplies by oneDNN-packed bf16 copies of the
weights, made once per call (`llama_step.packs_bf16`).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from rlft.adapters.positions import PositionMeta
from rlft.rollout import decode, llama_step
from rlft.rollout.base import SamplingParams
from rlft.types import RolloutBatch, concat_batches
from rlft.utils.device import bf16_autocast, module_device


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and mask for a list of unpadded token lists, padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def response_mask_from_ids(
    response_ids: torch.Tensor, eos_id: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (B, T) that is 1 up to and including the first EOS (or stop token); and (B,) truncated flags."""
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_id, dtype=response_ids.dtype, device=response_ids.device))
    seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly earlier
    mask = (~seen_before).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


class HFRolloutEngine:
    """Batched sampling with a (shared or own) HF causal LM; `adapter`: the policy adapter attached to it."""

    def __init__(self, model: torch.nn.Module, *, pad_id: int, eos_id: int, batch_size: int = 64, adapter=None,
                 use_generate: bool = False, lean_step: bool = True, mixed_precision: bool = False):
        """`use_generate`: sample with HF `generate` even where rlft's loop applies; `lean_step=False`: rlft's loop
        with the HF forward for every token instead of `llama_step.LlamaStep` (benchmarks compare the paths).
        `mixed_precision`: sample under bf16 autocast (`model.precision=bf16-mixed`)."""
        self.model = model
        self.mixed_precision = mixed_precision
        self.use_generate = use_generate
        self.lean_step = lean_step
        self._step = None  # during `generate`: the lean decoding step its chunks share (packed weights built once)
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.batch_size = batch_size
        self.adapter = adapter

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        was_training = self.model.training
        self.model.eval()
        chunks = []
        self._step = None
        try:
            # A seeded call must not shift the caller's random stream (like `evaluate`'s fork_rng).
            device = module_device(self.model)
            with torch.random.fork_rng(enabled=params.seed is not None), torch.inference_mode(), \
                    bf16_autocast(device, self.mixed_precision):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for start in range(0, len(prompt_ids), self.batch_size):
                    chunks.append(self._generate_chunk(prompt_ids[start:start + self.batch_size], params, start, device))
        finally:
            if self._step is not None:  # weights may change before the next call: free the packed copy
                self._step.release()
            self._step = None
            self.model.train(was_training)
        # Copy to the host, out of inference mode: the loop later indexes these tensors inside autograd-tracked ops.
        batch = concat_batches(chunks, self.pad_id)
        return RolloutBatch(**{k: None if v is None else v.to("cpu", copy=True) for k, v in vars(batch).items()})

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, offset: int,
                        device: torch.device) -> RolloutBatch:
        ids, mask = (x.to(device) for x in left_pad(prompts, self.pad_id))  # (b, P) on the model's device
        plan = contextlib.nullcontext() if self.adapter is None else self.adapter.plan(
            PositionMeta.from_prompt_mask(mask.repeat_interleave(params.n, dim=0)))  # generate expands rows alike
        stop = [self.eos_id, *params.stop_token_ids]
        hooks = self.adapter is not None and self.adapter.own_modules() is not None  # position-planned hooks
        if hooks or self.use_generate:
            response_ids, logprobs = self._hf_generate(ids, mask, params, stop, plan)
        else:
            response_ids, logprobs = self._sample(ids, mask, params, stop)
        response_mask, truncated = response_mask_from_ids(response_ids, stop)
        response_ids = response_ids.masked_fill(response_mask == 0, self.pad_id)
        if logprobs is not None:
            logprobs = logprobs.masked_fill(response_mask == 0, 0.0)
        index = torch.arange(len(prompts), device=device).repeat_interleave(params.n) + offset
        return RolloutBatch(
            prompt_ids=ids.repeat_interleave(params.n, dim=0),
            prompt_mask=mask.repeat_interleave(params.n, dim=0),
            response_ids=response_ids,
            response_mask=response_mask,
            rollout_logprobs=logprobs,
            prompt_index=index,
            truncated=truncated,
        )

    def _sample(self, ids, mask, params: SamplingParams, stop: list[int]):
        """rlft's sampling loop (rlft/rollout/decode.py): same distribution as `generate`, less overhead."""
        lean = False
        if self.lean_step:
            if self._step is None and llama_step.unsupported_reason(self.model) is None:
                self._step = llama_step.LlamaStep(self.model, ids.shape[0] * params.n)  # the first chunk is largest
            lean = False if self._step is None else self._step
        return decode.sample(
            self.model, ids, mask, n=params.n,
            max_new_tokens=params.max_new_tokens, stop_ids=stop, pad_id=self.pad_id, temperature=params.temperature,
            top_k=params.top_k, top_p=params.top_p, min_new_tokens=params.min_new_tokens, logprobs=params.logprobs,
            lean_step=lean)

    def _hf_generate(self, ids, mask, params: SamplingParams, stop: list[int], plan):
        """`model.generate`, for hook-based adapters: their position plan assumes generate's fixed rows."""
        greedy = params.temperature == 0
        with plan:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None if greedy else params.top_k,
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=params.min_new_tokens,
                num_return_sequences=params.n,
                eos_token_id=stop,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
                output_scores=params.logprobs,
            )
        response_ids = out.sequences[:, ids.shape[1]:]  # (b*n, T)
        if not params.logprobs:
            return response_ids, None
        scores = torch.stack(out.scores, dim=1).float()  # (b*n, T, V), processed logits
        return response_ids, torch.gather(F.log_softmax(scores, dim=-1), 2, response_ids.unsqueeze(-1)).squeeze(-1)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if params[name].data_ptr() != tensor.data_ptr():  # shared module: nothing to copy
                    params[name].copy_(tensor)

    def state_dict(self) -> dict:
        """Nothing beyond torch's RNG, which the loop's checkpoint holds."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see `state_dict`)."""

    def close(self) -> None:
        """Nothing to release: the module belongs to the caller."""
