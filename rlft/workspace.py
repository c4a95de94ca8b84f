"""What every command does first: open the run directory, load the splits, resolve and load the model.

Kept apart from the trainers so `rlft sft`, `rlft eval` and `rlft compare` prepare runs identically.
"""

from __future__ import annotations

from pathlib import Path

from rlft import tasks
from rlft.config import Config, ConfigError, adapter_config, save_config
from rlft.tasks.base import Record


def open_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def load_split(cfg: Config, split: str) -> list[Record]:
    """Records of `split` ('train' or 'test') as configured in `data.*`."""
    d = cfg.data
    is_train = split == "train"
    source = d.train if is_train else d.test
    if source.startswith("hf:"):  # the hub's split names may differ from train/test
        split = d.hf_train_split if is_train else d.hf_test_split
    return tasks.load_records(
        source, split, style=d.style, n_train=d.n_train, n_test=d.n_test, seed=d.seed,
        difficulty=d.difficulty, hf_kwargs={"config": d.hf_config} if d.hf_config else None,
        limit=d.limit_train if is_train else d.limit_test, cot_orders=d.cot_orders,
    )


def tokenizer_corpus(records: list[Record], style: str) -> list[str]:
    """Texts the tiny model's tokenizer is trained on: every prompt and target of the training split."""
    from rlft.tasks.prompts import prompt_text, target_text

    return [prompt_text(r, style) + target_text(r, style) for r in records]


def check_context(cfg: Config, model_path) -> None:
    """Prompt plus response must fit the model's context. Past it a RoPE model does not fail, it
    degrades silently, so this is a config error before any compute."""
    from transformers import AutoConfig

    try:
        context = getattr(AutoConfig.from_pretrained(str(model_path)), "max_position_embeddings", None)
    except (OSError, ValueError):  # an adapter-only folder: no config.json of its own
        return
    new_tokens = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens)
    if context and cfg.data.max_prompt_tokens + new_tokens > context:
        raise ConfigError(
            f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} + max_new_tokens={new_tokens} "
            f"(rollout/eval) exceeds the context of {model_path} ({context} tokens); lower data.max_prompt_tokens "
            "or rollout.max_new_tokens / eval.max_new_tokens"
        )


def prepare_model(cfg: Config, train_records: list[Record], with_model: bool = True, compute=None):
    """Return (model, tokenizer, model_path, adapter) for `model.path` (building the tiny model if asked).

    The model has `cfg.adapter` attached (identity-initialised; `kind: auto` resolved by the algorithm), or, when `model.path` is an adapter
    checkpoint, the saved adapter on its base model. Call the returned model (peft's wrapper for LoRA).
    It trains, so it holds float32 master weights (pure bf16 weights are refused) and lives on `compute`'s
    device (default: the run's resolved `Compute`).
    """
    from rlft.adapters import load_policy_and_adapter
    from rlft.models.loading import resolve_model_path
    from rlft.utils.device import check_trainable_dtype, resolve_compute, weights_dtype

    check_trainable_dtype(cfg)
    path = resolve_model_path(cfg.model, cfg.run.dir, cfg.run.seed, tokenizer_corpus(train_records, cfg.data.style))
    if not with_model:  # a Ray driver needs only the tokenizer; actors load the model
        from rlft.models.loading import load_policy

        return None, load_policy(path, with_model=False)[1], path, None
    compute = resolve_compute(cfg) if compute is None else compute
    model, tokenizer, adapter = load_policy_and_adapter(path, dtype=weights_dtype(cfg, compute, trains=True),
                                                        adapter_cfg=adapter_config(cfg), seed=cfg.run.seed, device=compute.device,
                                                        attn_implementation=cfg.model.attn_implementation)
    return model, tokenizer, path, adapter
