"""Policy adapters: what the policy trains (`adapter.kind`), behind one interface (`base.PolicyAdapter`).

    rlft sft   configs/demo.yaml adapter.kind=loreft                    # LoReFT SFT on a frozen model
    rlft train configs/demo.yaml adapter.kind=lora model.path=WARMUP    # ReFT PPO with a LoRA policy

| kind    | trains                                   | module          | reference in RL         |
|---------|------------------------------------------|-----------------|-------------------------|
| full    | every weight                             | `base.py`       | a frozen copy           |
| lora    | peft LoRA on `adapter.lora.target_modules` | `lora.py`     | the same model, LoRA off |
| loreft, direft, baft, gated | hidden-state interventions (`adapter.repft.*`) | `repft.py` | hooks off |
| brep    | scale + bounded bias on mlp.up_proj      | `repft.py`      | hooks off               |
| heft    | LoRA, then LoReFT                         | `heft.py`       | both off                |

"repft" is representation finetuning (Wu et al. 2024, "ReFT: Representation Finetuning"); `reft` in rlft
is only the RL method ("ReFT: Reasoning with Reinforced Fine-Tuning"). Design and sources:
`specs/adapters.md`. Every adapter starts as the identity, so the adapter-off model is exactly the
warm-up the run started from; a run that continues an adapter checkpoint uses a snapshot of its starting
weights as the reference instead (`PolicyAdapter.using`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlft.adapters.base import ADAPTER_FILE, FullFinetune, PolicyAdapter, read_adapter_json
from rlft.adapters.positions import PositionMeta, positions_for_batch, rules_for
from rlft.config import AdapterConfig, ConfigError, adapter_config_from_dict, default_positions

__all__ = ["ADAPTER_FILE", "PolicyAdapter", "PositionMeta", "attach_adapter", "build_adapter", "load_policy_and_adapter",
           "positions_for_batch", "read_adapter_json"]


def build_adapter(cfg: AdapterConfig, *, seed: int = 0, base_path: str | Path = "") -> PolicyAdapter:
    """A fresh, identity-initialised adapter of `cfg.kind` (not attached yet)."""
    if cfg.kind == "auto":
        raise ValueError("adapter.kind=auto must be resolved against the algorithm first (rlft.config.adapter_config)")
    config = dataclasses.asdict(cfg)
    if cfg.kind == "full":
        return FullFinetune(base_path)
    if cfg.kind == "lora":
        return _lora(cfg, seed, config, base_path)
    if cfg.kind == "heft":
        from rlft.adapters.heft import HEFT

        return HEFT(_lora(cfg, seed, config, base_path), _repft("loreft", cfg, seed, config, base_path),
                    lora_fraction=cfg.heft.lora_fraction, config=config, base_path=base_path)
    return _repft(cfg.kind, cfg, seed, config, base_path)


def attach_adapter(lm, cfg: AdapterConfig, *, seed: int = 0, base_path: str | Path = ""):
    """Build and attach; returns (the model to call, the adapter). For lora/heft the model is peft's wrapper."""
    adapter = build_adapter(cfg, seed=seed, base_path=base_path)
    return adapter.attach(lm), adapter


def load_policy_and_adapter(path: str | Path, *, dtype: str = "float32", adapter_cfg: AdapterConfig | None = None,
                            seed: int = 0, device=None, attn_implementation: str | None = None):
    """Load `model.path` with its adapter; returns (model to call, tokenizer, adapter).

    A plain HF folder gets a fresh `adapter_cfg` adapter (None: full finetuning). An adapter checkpoint
    folder (`adapter.json`) is rebuilt on the base model it names, from its saved settings, and its weights
    are loaded; `adapter_cfg.kind`, when given, must match, so a run never drops an adapter silently.
    Everything is built on the CPU (so an adapter's initialisation does not depend on the device), then the
    model and the adapter's own modules move to `device` (None: stay on the CPU).
    """
    from rlft.models.loading import load_policy

    info = read_adapter_json(path)
    if info is None:
        lm, tokenizer = load_policy(path, dtype=dtype, attn_implementation=attn_implementation)
        base_path = Path(path).resolve() if Path(path).exists() else path  # a local folder, or a hub name
        lm, adapter = attach_adapter(lm, adapter_cfg or AdapterConfig(kind="full"), seed=seed, base_path=base_path)
        return _moved(lm, adapter, device), tokenizer, adapter
    if adapter_cfg is not None and adapter_cfg.kind != info["kind"]:
        raise ConfigError(f"model.path {path} is a {info['kind']} adapter checkpoint but adapter.kind="
                          f"{adapter_cfg.kind}; set adapter.kind={info['kind']} (its other settings are read "
                          f"from {Path(path) / ADAPTER_FILE})")
    lm, tokenizer = load_policy(info["base_model"], dtype=dtype, attn_implementation=attn_implementation)
    lm, adapter = attach_adapter(lm, adapter_config_from_dict(info["config"]), seed=seed, base_path=info["base_model"])
    adapter.load(path)
    return _moved(lm, adapter, device), tokenizer, adapter


def _moved(lm, adapter: PolicyAdapter, device):
    """The model and the adapter's modules outside it (hook interventions) on `device`."""
    if device is not None:
        lm.to(device)
        if adapter.own_modules() is not None:
            adapter.own_modules().to(device)
    return lm


def _lora(cfg: AdapterConfig, seed: int, config: dict, base_path):
    from rlft.adapters.lora import PeftLoRA

    return PeftLoRA(rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules, seed=seed,
                    config=config, base_path=base_path)


def _repft(kind: str, cfg: AdapterConfig, seed: int, config: dict, base_path):
    from rlft.adapters.interventions import INTERVENTIONS
    from rlft.adapters.repft import RepFTAdapter, brep_module

    r = cfg.repft
    positions = r.positions or default_positions(cfg.kind)
    rules = rules_for(positions, first=r.first, last=r.last, generated=r.generated, tied=r.tied)
    if kind == "brep":
        make, component = brep_module(cfg.brep.bias_bound), "mlp.up_proj"
    else:
        module_cls = INTERVENTIONS[kind]
        make, component = (lambda dim, generator: module_cls(dim, r.rank, generator)), "block_output"
    return RepFTAdapter(kind, layers=r.layers, rules=rules, component=component, make_module=make, seed=seed,
                        config=config, base_path=base_path)
