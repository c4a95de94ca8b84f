"""Build the rollout engine a config asks for: the one place an engine is constructed (training, SFT's and
self-training's evaluation, `rlft eval`, Ray rollout workers)."""

from __future__ import annotations

from rlft.config import Config
from rlft.rollout.base import RolloutEngine
from rlft.rollout.hf_engine import HFRolloutEngine
from rlft.utils.device import Compute, resolve_compute, weights_dtype


def make_engine(cfg: Config, lm, tokenizer, model_path=None, adapter=None, *, batch_size: int | None = None,
                compute: Compute | None = None) -> RolloutEngine:
    """`rollout.engine`: hf (shares `lm`, so syncing is free) or vllm (its own copy of the weights at
    `model_path`, refreshed by the loop's `load_weights`; bfloat16 under bf16-mixed, as `model.dtype=auto` loads
    frozen copies). `batch_size`: prompts per generate call of the HF engine (default `rollout.batch_size`;
    evaluation passes `eval.batch_size`). `compute`: the run's resolved device and precision (default: resolved
    from `cfg`)."""
    compute = resolve_compute(cfg) if compute is None else compute
    if cfg.rollout.engine == "vllm":
        from rlft.rollout.vllm_engine import VLLMRolloutEngine  # lazy: vllm is an optional extra

        max_position = getattr(getattr(lm, "config", None), "max_position_embeddings", None) or 10**9
        return VLLMRolloutEngine(
            model_path, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
            dtype=weights_dtype(cfg, compute, trains=False),
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, enable_sleep=cfg.rollout.vllm_enable_sleep,
            max_model_len=min(cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens),
                              max_position),  # bounds vLLM's KV cache
            seed=cfg.run.seed,
        )
    return hf_engine(cfg, lm, tokenizer, adapter, batch_size=batch_size, compute=compute)


def hf_engine(cfg: Config, lm, tokenizer, adapter=None, *, batch_size: int | None = None,
              compute: Compute | None = None) -> HFRolloutEngine:
    """rlft's HF sampling loop on `lm` (and its adapter), whatever `rollout.engine` says: SFT and
    self-training evaluate on the module they train. It samples on `lm`'s device, under bf16 autocast when
    `compute` (default: resolved from `cfg`) is bf16-mixed."""
    compute = resolve_compute(cfg) if compute is None else compute
    return HFRolloutEngine(lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                           batch_size=cfg.rollout.batch_size if batch_size is None else batch_size, adapter=adapter,
                           lean_step=cfg.rollout.hf_lean_step, mixed_precision=compute.mixed)
