"""The policy-adapter interface: what SFT, RL, evaluation and checkpoints need from "what trains".

One protocol for every kind (`specs/adapters.md` §11.1). The trainers never branch on the kind: they
attach an adapter, build the optimizer from `param_groups`, run forwards under `plan(meta)`, call
`after_optimizer_step` after each step, use `disabled()` (or `using(snapshot)`) as the KL reference and
`save`/`load` as the checkpoint.

Implementations: `FullFinetune` (here: no-op attach, every weight trains), `PeftLoRA` (`lora.py`),
`RepFTAdapter` (`repft.py`: forward hooks plus intervention modules on a frozen model) and `HEFT`
(`heft.py`: a LoRA stage, then a LoReFT stage).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import ContextManager, Iterator, Protocol

import torch
from safetensors.torch import load_file
from torch import nn

from rlft.adapters.positions import PositionMeta

ADAPTER_FILE = "adapter.json"
FORMAT_VERSION = 1


class PolicyAdapter(Protocol):
    kind: str
    base_path: str
    """The base model folder the adapter was attached to (what a checkpoint reloads first)."""

    def attach(self, model: nn.Module) -> nn.Module:
        """Attach to a causal LM, freezing the base unless kind == full; returns the model to call."""
        ...

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The adapter's parameters (frozen stages included), by name."""
        ...

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups for parameters that need their own settings (LoReFT's R: no weight decay) or
        must be in the optimizer while frozen (HEFT's later stage). Every other trainable parameter goes
        to the learner's default group."""
        ...

    def plan(self, meta: PositionMeta | None) -> ContextManager:
        """Run the forwards inside with these per-row positions (§3.2); a no-op for weight adapters."""
        ...

    def disabled(self) -> ContextManager:
        """Run the bare base model inside (the RL reference when the adapter started from identity)."""
        ...

    def using(self, state: dict[str, torch.Tensor]) -> ContextManager:
        """Temporarily swap in other adapter weights (e.g. the snapshot the RL run started from)."""
        ...

    def after_optimizer_step(self) -> None:
        """Constraints after each step: R retraction (LoReFT family), bias projection (BREP)."""
        ...

    def set_progress(self, done: int, total: int) -> None:
        """Schedules (HEFT): `done` of `total` SFT epochs or RL iterations have finished."""
        ...

    def metrics(self) -> dict[str, float]:
        """`adapter/...` diagnostics: ‖R Rᵀ − I‖_∞, ‖β‖ (max over interventions)."""
        ...

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached fp32 copies of `trainable_parameters()`, by name."""
        ...

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ...

    def save(self, path: str | Path) -> None:
        """Write the adapter-only files (plus `adapter.json`) into the folder `path`."""
        ...

    def load(self, path: str | Path) -> None:
        """Load what `save` wrote into this (attached) adapter."""
        ...

    def mergeable(self) -> bool:
        """True when the adapter can be folded into the weights (LoRA; hooks cannot)."""
        ...

    def own_modules(self) -> nn.Module | None:
        """Modules outside the LM (hook interventions) that the policy registers, so they move and save with it."""
        ...


class AdapterBase:
    """Shared implementation: state dicts over `trainable_parameters`, `using`, and `adapter.json`."""

    kind = "?"

    def __init__(self, base_path: str | Path = ""):
        self.base_path = str(base_path)
        self.model: nn.Module | None = None

    # Subclasses define `attach`, `trainable_parameters`, `disabled`, `save`, `load` and `spec` (what
    # `adapter.json` records besides kind and base: enough to rebuild the adapter).

    def param_groups(self, weight_decay: float) -> list[dict]:
        return []

    def plan(self, meta: PositionMeta | None) -> ContextManager:
        return contextlib.nullcontext()

    def after_optimizer_step(self) -> None:
        pass

    def set_progress(self, done: int, total: int) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def mergeable(self) -> bool:
        return False

    def own_modules(self) -> nn.Module | None:
        """Modules the adapter owns outside the LM (hook interventions), for the policy to register."""
        return None

    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.trainable_parameters())

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().clone() for name, p in self.trainable_parameters()}

    @torch.no_grad()
    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.trainable_parameters())
        if set(state) != set(params):
            missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ValueError(f"{self.kind} adapter state does not match (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        for name, p in params.items():
            if state[name].shape != p.shape:
                raise ValueError(f"{self.kind} adapter: {name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(p.shape)}")
            p.copy_(state[name].to(p.dtype))

    @contextlib.contextmanager
    def using(self, state: dict[str, torch.Tensor]) -> Iterator[None]:
        current = self.adapter_state_dict()
        self.load_adapter_state_dict(state)
        try:
            yield
        finally:
            self.load_adapter_state_dict(current)

    def read_checkpoint_info(self, path: Path) -> dict:
        """`adapter.json` of an adapter-only checkpoint of this kind, checked against the attached base."""
        info = read_adapter_json(path)
        if info is None or info["kind"] != self.kind:
            raise ValueError(f"{path}: not a {self.kind} adapter checkpoint")
        check_base(self.model, info, path)
        return info

    def write_json(self, path: Path, base_config: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        info = {"format": FORMAT_VERSION, "kind": self.kind, "base_model": self.base_path,
                "base_config": base_config, "dtype": "float32", **self.spec()}
        (path / ADAPTER_FILE).write_text(json.dumps(info, indent=2))


def read_adapter_json(path: str | Path) -> dict | None:
    """The `adapter.json` of an adapter checkpoint folder, or None for a plain model folder."""
    file = Path(path) / ADAPTER_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def base_model_of(model: nn.Module) -> nn.Module:
    """The HF causal LM under wrappers (peft's PeftModel)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_config_fingerprint(model: nn.Module) -> dict:
    """The base model's shape, checked on load so an adapter is never applied to another model."""
    c = base_model_of(model).config
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    return {k: getattr(c, k, None) for k in keys}


def check_base(model: nn.Module, info: dict, path: Path) -> None:
    found = base_config_fingerprint(model)
    if info.get("base_config") != found:
        raise ValueError(f"{path}: the adapter was trained on a base with {info.get('base_config')}, "
                         f"but the model has {found}")


class FullFinetune(AdapterBase):
    """Every weight trains; the checkpoint is the whole HF model. `disabled()` is impossible: the RL
    reference is a frozen copy of the warm-up instead."""

    kind = "full"

    def attach(self, model: nn.Module) -> nn.Module:
        self.model = model
        return model

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.model.named_parameters())

    def spec(self) -> dict:
        return {}

    def mergeable(self) -> bool:
        return True  # nothing to merge: the weights are the model

    def disabled(self) -> ContextManager:
        raise RuntimeError("adapter.kind=full has no adapter to switch off; "
                           "the reference is a frozen copy of the warm-up")

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(path, safe_serialization=True)

    def load(self, path: str | Path) -> None:
        path = Path(path)
        state = {}
        for f in sorted(path.glob("model*.safetensors")):  # HF's single or sharded files, not the value head
            state.update(load_file(str(f)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        missing = [m for m in missing if m not in tied]
        if missing or unexpected:
            raise RuntimeError(f"{path}: weights do not match the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
