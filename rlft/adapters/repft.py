"""Hook-based representation finetuning (`repft`): LoReFT, DiReFT, BaFT, gated LoReFT and BREP.

The base model is frozen; intervention modules (`interventions.py`) edit chosen hidden states through
plain forward hooks, written in-house (pyreft is unmaintained and pinned to transformers 4.45; peft has
no ReFT). How a forward learns which tokens to edit (`specs/adapters.md` §3.2):

1. A forward pre-hook on the decoder (`LlamaModel`, found under peft / value-head wrappers) reads the
   chunk length T_c from `input_ids` and the full length T_f from the 2-D attention mask (or, when
   `generate` drops an all-ones mask for unpadded rows, T_c + the cached length), maps the
   chunk's columns [T_f − T_c, T_f) to absolute unpadded indices with the `PositionMeta` installed by
   `plan(meta)`, and evaluates every position rule: one (B, T_c) bool mask per rule.
2. It passes the masks down as a forward kwarg. transformers >= 4.56 hands unknown kwargs from the decoder
   to every decoder layer, so a layer recomputed under gradient checkpointing sees the masks it was
   first called with, whatever the plan is by then.
3. A pre-hook on each intervened layer hands its masks to the hooks inside that layer; the edit hook
   (on the layer's output, or on `mlp.up_proj` for BREP) returns where(mask, Φ(h), h), with Φ in fp32.

So prefill, cached 1-token decode steps and one teacher-forced pass over prompt + response edit exactly
the same tokens (tested to 1e-5 against the sampler's log-probs, with a per-chunk rule as the failing
control). A forward without a plan raises instead of silently editing nothing.

vLLM cannot run these hooks (it serves LoRA, not hidden-state edits): hook-based kinds roll out with the
HF engine.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlft.adapters.base import AdapterBase, base_config_fingerprint, base_model_of
from rlft.adapters.interventions import ScaleBias
from rlft.adapters.positions import PositionMeta, PositionRule
from rlft.utils.device import autocast_off

EDIT_MASKS_KWARG = "rlft_edit_masks"
WEIGHTS_FILE = "adapter.safetensors"
COMPONENTS = ("block_output", "mlp.up_proj")


@dataclass(frozen=True)
class HookPoint:
    """One intervention: after `component` of decoder layer `layer`, on the tokens `rule` selects."""

    layer: int
    component: str
    rule: PositionRule

    def to_dict(self) -> dict:
        return {"layer": self.layer, "component": self.component, "rule": self.rule.to_dict()}


class RepFTAdapter(AdapterBase):
    """Interventions at `layers` x `rules` on `component`; `make_module(dim, generator)` builds each Φ.

    Args:
        kind: the config name (`loreft`, `direft`, `baft`, `gated`, `brep`).
        layers: decoder layer indices (negative counts from the end); None = every layer.
        rules: the position rules of each layer (two for untied prefix/suffix).
        component: `block_output` (the residual stream after the layer) or `mlp.up_proj` (BREP).
        make_module: builds one intervention for a component of width dim.
        seed: initialisation seed (independent of the global random stream).
        config: the adapter config as a dict, stored in `adapter.json` to rebuild the adapter.
    """

    def __init__(self, kind: str, *, layers: list[int] | None, rules: list[PositionRule], component: str,
                 make_module: Callable[[int, torch.Generator], nn.Module], seed: int, config: dict,
                 base_path: str | Path = ""):
        super().__init__(base_path)
        if component not in COMPONENTS:
            raise ValueError(f"unknown hook component {component!r}; one of {COMPONENTS}")
        self.kind, self.layers, self.rules, self.component = kind, layers, rules, component
        self.make_module, self.seed, self.config = make_module, seed, config
        self.points: list[HookPoint] = []
        self.interventions = nn.ModuleList()
        self._meta: PositionMeta | None = None
        self._enabled = True
        self._layer_masks: dict[int, dict | None] = {}  # the masks of each layer's current call

    # -- attaching ---------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> nn.Module:
        if self.model is not None:
            return self.model  # idempotent
        base = base_model_of(model)
        decoder = base.get_decoder()
        n_layers = len(decoder.layers)
        if self.layers is not None and any(not -n_layers <= l < n_layers for l in self.layers):
            raise ValueError(f"adapter.repft.layers={self.layers}: the model has {n_layers} layers")
        layer_ids = list(range(n_layers)) if self.layers is None else [l % n_layers for l in self.layers]
        if len(set(layer_ids)) != len(layer_ids):
            raise ValueError(f"adapter.repft.layers={self.layers} names a layer twice")
        base.requires_grad_(False)  # the base is frozen: only the interventions train
        device = next(base.parameters()).device
        generator = torch.Generator().manual_seed(self.seed)
        self.points = [HookPoint(l, self.component, rule) for l in sorted(layer_ids) for rule in self.rules]
        modules = []
        for point in self.points:
            if point.component == "block_output":
                dim = base.config.hidden_size
            else:  # a Linear inside the layer
                dim = decoder.layers[point.layer].get_submodule(point.component).out_features
            modules.append(self.make_module(dim, generator).to(device))  # fp32 master weights
        self.interventions = nn.ModuleList(modules)

        decoder.register_forward_pre_hook(self._decoder_pre_hook, with_kwargs=True)
        for layer_id in sorted(layer_ids):
            layer = decoder.layers[layer_id]
            here = [i for i, p in enumerate(self.points) if p.layer == layer_id]
            layer.register_forward_pre_hook(self._stash_hook(layer_id), with_kwargs=True)
            target = layer if self.component == "block_output" else layer.get_submodule(self.component)
            target.register_forward_hook(self._edit_hook(layer_id, here))
        self.model = model
        return model

    # -- hooks ---------------------------------------------------------------------------------------

    def _edit_masks(self, chunk_len: int, full_len: int, batch: int, device: torch.device) -> dict:
        """{rule: (B, T_c) bool} for a chunk covering columns [full_len − chunk_len, full_len)."""
        meta = self._meta
        if meta.pad_left.shape[0] != batch:
            raise RuntimeError(f"{self.kind} adapter: the plan describes {meta.pad_left.shape[0]} rows but the "
                               f"forward has {batch}; build PositionMeta from the same (expanded) batch")
        columns = torch.arange(full_len - chunk_len, full_len, device=device)  # (T_c,)
        real = meta.real_index(columns)  # (B, T_c), pads negative
        prompt_len = meta.prompt_len.to(device)
        return {rule: rule.mask(real, prompt_len) for rule in self.rules}

    def _decoder_pre_hook(self, module, args, kwargs):
        if not self._enabled:
            return None
        if self._meta is None:
            raise RuntimeError(f"{self.kind} adapter: a forward ran without positions; wrap it in "
                               "adapter.plan(PositionMeta...) (PolicyModel and the HF engine do this)")
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        meta = self._meta
        if meta.packed_index is not None:  # one packed row: the padded layout's edits, at the packed tokens
            width = meta.packed_width
            masks = self._edit_masks(width, width, meta.pad_left.shape[0], tokens.device)
            index = meta.packed_index.to(tokens.device)
            packed = {rule: mask.reshape(-1)[index].unsqueeze(0) for rule, mask in masks.items()}
            return args, {**kwargs, EDIT_MASKS_KWARG: packed}
        chunk_len = tokens.shape[1]
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise RuntimeError(f"{self.kind} adapter needs the 2-D attention mask to place the chunk's tokens")
            full_len = attention_mask.shape[1]
        else:  # generate drops an all-ones mask (unpadded rows): the chunk continues the cached tokens
            if bool((self._meta.pad_left > 0).any()):
                raise RuntimeError(f"{self.kind} adapter: padded rows but no attention mask")
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            full_len = chunk_len + (cache.get_seq_length() if cache is not None else 0)
        masks = self._edit_masks(chunk_len, full_len, tokens.shape[0], tokens.device)
        return args, {**kwargs, EDIT_MASKS_KWARG: masks}

    def _stash_hook(self, layer_id: int):
        def hook(module, args, kwargs):
            masks = kwargs.get(EDIT_MASKS_KWARG)
            if masks is None and self._enabled:
                raise RuntimeError("decoder layer did not receive the edit masks: this transformers version does not "
                                   "pass forward kwargs to decoder layers (rlft needs >= 4.56)")
            self._layer_masks[layer_id] = masks if self._enabled else None

        return hook

    def _edit_hook(self, layer_id: int, point_ids: list[int]):
        def hook(module, args, output):
            masks = self._layer_masks.get(layer_id)
            if masks is None:
                return None
            h = output[0] if isinstance(output, tuple) else output  # (B, T_c, d)
            with autocast_off(h.device):  # Φ in fp32 under bf16-mixed too
                for i in point_ids:
                    mask = masks[self.points[i].rule].unsqueeze(-1)  # (B, T_c, 1)
                    h = torch.where(mask, self.interventions[i](h.float()).to(h.dtype), h)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    # -- the interface -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def plan(self, meta: PositionMeta | None) -> Iterator[None]:
        previous, self._meta = self._meta, meta
        try:
            yield
        finally:
            self._meta = previous

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def own_modules(self) -> nn.Module:
        return self.interventions

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"points.{i}.{name}", p) for i, m in enumerate(self.interventions) for name, p in m.named_parameters()]

    def param_groups(self, weight_decay: float) -> list[dict]:
        # the modules' groups, merged by weight decay (LoReFT: R without decay, the rest with)
        by_decay: dict[float, list] = {}
        for module in self.interventions:
            for group in module.param_groups(weight_decay):
                by_decay.setdefault(group["weight_decay"], []).extend(group["params"])
        return [{"params": params, "weight_decay": wd} for wd, params in by_decay.items()]

    def after_optimizer_step(self) -> None:
        for module in self.interventions:
            module.after_optimizer_step()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for module in self.interventions:
            for key, value in module.metrics().items():
                out[f"adapter/{key}_max"] = max(out.get(f"adapter/{key}_max", value), value)
        return out

    def spec(self) -> dict:
        return {"config": self.config, "points": [p.to_dict() for p in self.points],
                "num_parameters": self.num_parameters()}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.write_json(path, base_config_fingerprint(self.model))
        save_file({k: v.contiguous() for k, v in self.adapter_state_dict().items()}, str(path / WEIGHTS_FILE))

    def load(self, path: str | Path) -> None:
        path = Path(path)
        info = self.read_checkpoint_info(path)
        if info["points"] != [p.to_dict() for p in self.points]:
            raise ValueError(f"{path}: the saved hook points differ from this adapter's (layers, positions or tying)")
        self.load_adapter_state_dict(load_file(str(path / WEIGHTS_FILE)))


def brep_module(bias_bound: float) -> Callable[[int, torch.Generator], nn.Module]:
    return lambda dim, generator: ScaleBias(dim, bias_bound)
