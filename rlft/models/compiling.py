"""`model.compile`: each decoder layer's forward compiled with `torch.compile` (regional compilation), for the
forward passes that run without a KV cache: SFT, the RL learner's train and log-prob passes, a separate critic,
the frozen reference.

Why the layers and not the whole model: every decoder layer runs the same code on parameters of the same shapes,
so one compiled graph serves them all (compiled on the first forward, a second one for forwards without
autograd) and compile time does not grow with depth. Inductor fuses the elementwise work between the GEMMs
(norms, rotary, casts under bf16 autocast, SwiGLU, residual adds, the packed attention's gathers), which is what
a bf16 step on a CPU spends most of its time on. Measured (2 cores with AMX, torch 2.13; `docs/benchmarks.md`):
bf16-mixed SFT steps of the tiny model 252 -> 162 ms, of SmolLM2-135M at batch 8 1.29 -> 1.08 s; LoRA on the
tiny model 267 -> 175 ms; fp32 SmolLM2 1.89 -> 1.76 s (fp32 steps are bound by their GEMMs).
`dynamic=True` from the first compile: packed batches change their token count at every step, and a
shape-specialised graph recompiled at each new count (the tiny model's step took 1.08 s instead of 0.25).

Forwards that stay eager: those with a KV cache (the rollout engine's prefill, the HF forward's decoding,
evaluation), whose cache object changes its Python state at every call, and those of shared prompts, whose
packed attention hands each layer's keys and values between passes through dicts keyed by layer index (a graph
would specialise on every layer). RL with several samples per prompt therefore needs `ppo.prefix_sharing=false`
(`rlft.config.compile_conflict`). Gradient checkpointing breaks the graph inside the checkpointed layer: refused
too.
"""

from __future__ import annotations

import functools

import torch

from rlft.models import packing as packed


def decoder_layers(lm: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: HF's `GradientCheckpointingLayer` subclasses (every decoder-only architecture of
    transformers 5 derives its layers from it)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]


def _stays_eager(args: tuple, kwargs: dict) -> bool:
    """A forward with a KV cache (a transformers `Cache` passed by keyword or, as GPT-2 does, by position; a legacy
    `layer_past`), or one whose packed attention hands keys and values across passes (shared prompts:
    `AttentionPlan.capture` / `.prefix`, dicts keyed by layer index, which would specialise the graph on each
    layer)."""
    from transformers.cache_utils import Cache

    if any(kwargs.get(name) is not None for name in ("cache", "past_key_values", "past_key_value", "layer_past")):
        return True
    if any(isinstance(value, Cache) for value in (*args, *kwargs.values())):
        return True
    plan = kwargs.get(packed.PLAN_KEYWORD)
    return plan is not None and (plan.capture is not None or plan.prefix is not None)


def _forward(layer: torch.nn.Module, eager, compiled, *args, **kwargs):
    if _stays_eager(args, kwargs) or torch.compiler.is_compiling():
        return eager(layer, *args, **kwargs)
    return compiled(layer, *args, **kwargs)


# Every HF decoder layer class shares one `forward` code object (transformers' checkpointing wrapper), so dynamo keeps
# one cache of graphs for all of them: policy and reference, with and without autograd, train and eval mode, LoRA on
# and off. Its default limit (8) would silently leave later variants eager.
RECOMPILE_LIMIT = 64


def compile_decoder_layers(lm: torch.nn.Module) -> int:
    """Route each decoder layer's cache-free forwards through one compiled graph per layer class; the number of
    layers. Compilation happens on the first such forward (seconds to a minute, once per process). A model
    without HF decoder layers is a ValueError naming `model.compile`."""
    layers = decoder_layers(lm)
    if not layers:
        raise ValueError(f"model.compile=true, but {type(lm).__name__} has no transformers decoder layers "
                         "(GradientCheckpointingLayer) to compile; set model.compile=false")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    compiled: dict[type, object] = {}
    for layer in layers:
        cls = type(layer)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward, dynamic=True)
        # An instance attribute: `nn.Module.__call__` calls it in place of the class's forward (which is what gets
        # compiled, HF's checkpointing wrapper included), so hooks on the layer itself run eagerly around it.
        layer.forward = functools.partial(_forward, layer, cls.forward, compiled[cls])
    return len(layers)


def is_compiled(lm: torch.nn.Module) -> bool:
    """Whether `compile_decoder_layers` routed this model's layers."""
    return any(isinstance(layer.__dict__.get("forward"), functools.partial)
               and layer.__dict__["forward"].func is _forward for layer in decoder_layers(lm))
