"""Build the rollout engine a config asks for: the one place an engine is constructed (training, SFT's and
self-training's evaluation, `rlft eval`, Ray rollout workers)."""

from __future__ import annotations

from rlft.config import Config
from rlft.rollout.base import RolloutEngine
from rlft.rollout.hf_engine import HFRolloutEngine


def make_engine(cfg: Config, lm, tokenizer, model_path=None, adapter=None, *, batch_size: int | None = None) -> RolloutEngine:
    """`rollout.engine`: hf (shares `lm`, so syncing is free) or vllm (its own copy of the weights at
    `model_path`, refreshed by the loop's `load_weights`). `batch_size`: prompts per generate call of the
    HF engine (default `rollout.batch_size`; evaluation passes `eval.batch_size`)."""
    if cfg.rollout.engine == "vllm":
        from rlft.rollout.vllm_engine import VLLMRolloutEngine  # lazy: vllm is an optional extra

        max_position = getattr(getattr(lm, "config", None), "max_position_embeddings", None) or 10**9
        return VLLMRolloutEngine(
            model_path, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, dtype=cfg.model.dtype,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, enable_sleep=cfg.rollout.vllm_enable_sleep,
            max_model_len=min(cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens),
                              max_position),  # bounds vLLM's KV cache
            seed=cfg.run.seed,
        )
    return hf_engine(cfg, lm, tokenizer, adapter, batch_size=batch_size)


def hf_engine(cfg: Config, lm, tokenizer, adapter=None, *, batch_size: int | None = None) -> HFRolloutEngine:
    """rlft's HF sampling loop on `lm` (and its adapter), whatever `rollout.engine` says: SFT and
    self-training evaluate on the module they train."""
    return HFRolloutEngine(lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                           batch_size=cfg.rollout.batch_size if batch_size is None else batch_size, adapter=adapter,
                           lean_step=cfg.rollout.hf_lean_step)
