"""LoRA through peft: W x + (alpha / r) B A x on the configured Linear layers, B = 0 at init.

The checkpoint is peft's own folder (`lora/adapter_config.json`, `lora/adapter_model.safetensors`) beside
rlft's `adapter.json`, so peft, vLLM's LoRA serving or `merge_and_unload` can read it directly. LoRA is the
one adapter vLLM can serve, merged or not; the hook-based kinds cannot be.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ContextManager

import torch
from torch import nn

from rlft.adapters.base import AdapterBase, base_config_fingerprint

PEFT_DIR = "lora"


class PeftLoRA(AdapterBase):
    """`peft.get_peft_model` with a LoRA of `rank`/`alpha` on `target_modules`; `disabled()` is peft's
    `disable_adapter()`, so the RL reference needs no second copy of the model."""

    kind = "lora"

    def __init__(self, *, rank: int, alpha: float, target_modules: list[str], seed: int, config: dict,
                 base_path: str | Path = ""):
        super().__init__(base_path)
        self.rank, self.alpha, self.target_modules, self.seed, self.config = rank, alpha, target_modules, seed, config

    def attach(self, model: nn.Module) -> nn.Module:
        if self.model is not None:
            return self.model
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("adapter.kind=lora/heft needs peft: pip install -e '.[peft]'") from None

        lora = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")
        with torch.random.fork_rng(), warnings.catch_warnings():  # A's init from the adapter's own seed
            warnings.simplefilter("ignore", FutureWarning)  # peft probes deprecated transformers attributes
            torch.manual_seed(self.seed)
            self.model = get_peft_model(model, lora)  # freezes the base, B = 0: the identity
        return self.model

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.model.named_parameters() if ".lora_" in name]

    def disabled(self) -> ContextManager:
        return self.model.disable_adapter()

    def mergeable(self) -> bool:
        return True

    def merge(self) -> nn.Module:
        """Fold B A into the base weights and return the plain HF model (ends this adapter's life)."""
        return self.model.merge_and_unload()

    def spec(self) -> dict:
        return {"config": self.config, "peft_dir": PEFT_DIR, "num_parameters": self.num_parameters()}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.write_json(path, base_config_fingerprint(self.model))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model.save_pretrained(path / PEFT_DIR)

    def load(self, path: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(path)
        self.read_checkpoint_info(path)
        state = load_file(str(path / PEFT_DIR / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.model, state)
        missing = [k for k in result.missing_keys if ".lora_" in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"{path}: LoRA weights do not match this model (missing {missing[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]})")
