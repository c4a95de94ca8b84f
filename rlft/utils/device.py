"""Where and in what precision rlft computes: `run.device` and `model.precision`, resolved in one place.

Every command resolves `Compute` once at start (and prints it); a Ray actor resolves its own, on the GPU its
placement-group bundle holds. Everything that runs a model reads it from there:

- device: `run.device` = auto (CUDA when `torch.cuda.is_available()`), cpu, cuda or cuda:N. Models are loaded
  on the CPU, adapters attached there (so initialisation does not depend on the device), then moved. Each role
  moves its batches to its model's device at its entry (`to_device`) and hands results back on the CPU: the
  loop's bookkeeping (rewards, advantages, log-probs it keeps) lives on the CPU.
- precision: `model.precision` = fp32, bf16-mixed, or auto: bf16-mixed where bf16 matmuls are faster than fp32
  (a CUDA GPU with bf16 support; a CPU with AMX-BF16 or AVX512-BF16, where oneDNN multiplies bf16 natively; 4x
  fp32's FLOP/s measured on an AMX Xeon, 5x *slower* than fp32 where bf16 is emulated: docs/benchmarks.md),
  fp32 elsewhere. bf16-mixed is torch.autocast(bfloat16) around every forward, over fp32 master weights, with
  fp32 optimizer state; value heads and hook-adapter edits stay fp32 inside it.
- weights: `model.dtype` = auto: float32 for what trains (policy, value heads, critic: the master weights),
  bfloat16 for frozen copies (the reference, a rollout engine's own copy, `rlft eval`'s model) under
  bf16-mixed, float32 otherwise; `float32` everywhere; `bfloat16` everywhere, inference only
  (`check_trainable_dtype`).

`RLFT_CPU_FAST_BF16=0|1` overrides the CPU flag probe (a VM hiding its flags; runs that must give the same
numbers on every CPU; the test suite sets 0).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

DEVICE_FORM = re.compile(r"auto|cpu|cuda(:\d+)?")
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 dot products (oneDNN uses them for bf16 GEMMs)


def _config_error(message: str) -> Exception:
    from rlft.config import ConfigError  # lazy: config.py imports this module for its checks

    return ConfigError(message)


@dataclass(frozen=True)
class Compute:
    """A resolved device and precision: what one process's models run on."""

    device: torch.device
    precision: str  # "fp32" | "bf16-mixed"
    reason: str = ""  # why, when `auto` decided

    @property
    def mixed(self) -> bool:
        return self.precision == "bf16-mixed"

    def autocast(self):
        """bf16 autocast on this device type under bf16-mixed; a context that changes nothing under fp32."""
        return bf16_autocast(self.device, self.mixed)

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda" and torch.cuda.is_available():
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"device {name}, precision {self.precision}" + (f" ({self.reason})" if self.reason else "")


def bf16_autocast(device: torch.device, enabled: bool):
    """torch.autocast to bfloat16 on `device`'s type when `enabled`; else no autocast context at all (fp32 runs
    stay bit-for-bit what they were, on any device type)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype an enclosing autocast computes in on `device`'s type; None when none is on there."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_off(device: torch.device):
    """Step out of an enclosing autocast (fp32 islands: value heads, hook-adapter edits); nothing when none is on."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def check_device_form(value: str) -> None:
    if not DEVICE_FORM.fullmatch(value):
        raise _config_error(f"run.device={value!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(cfg) -> torch.device:
    """`run.device` as a torch device. Asking for CUDA where there is none is a ConfigError naming run.device.

    With `cluster.backend=ray` every actor runs on what its bundle holds: cuda (the GPU Ray made visible to
    it) when `cluster.gpus_per_worker > 0`, else cpu (config validation keeps run.device consistent with that).
    """
    value = cfg.run.device
    check_device_form(value)
    if cfg.cluster.backend == "ray":
        return torch.device("cuda" if cfg.cluster.gpus_per_worker > 0 else "cpu")
    if value == "cpu" or (value == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if value == "auto":
        value = "cuda"
    if not torch.cuda.is_available():
        raise _config_error(f"run.device={value}, but CUDA is not available here (torch {torch.__version__}"
                            f"{'' if torch.version.cuda else ', a CPU-only build'}); use run.device=cpu or auto")
    device = torch.device(value)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise _config_error(f"run.device={value}, but this machine has {torch.cuda.device_count()} CUDA device(s) "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))


def cpu_fast_bf16() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 faster than fp32, and how that was decided."""
    forced = os.environ.get("RLFT_CPU_FAST_BF16")
    if forced in ("0", "1"):
        return forced == "1", f"RLFT_CPU_FAST_BF16={forced}"
    found = [f for f in FAST_BF16_CPU_FLAGS if f in cpu_flags()]
    return bool(found), f"CPU flags: {', '.join(found)}" if found else "this CPU has no AMX-BF16 / AVX512-BF16"


def resolve_precision(cfg, device: torch.device) -> tuple[str, str]:
    """(precision, reason): `model.precision`, with auto decided for `device`."""
    requested = cfg.model.precision
    if requested != "auto":
        return requested, ""
    if cfg.model.dtype == "bfloat16":  # bf16 weights compute in bf16 whatever the hardware
        return "bf16-mixed", "auto: model.dtype=bfloat16"
    if device.type == "cuda":
        if not torch.cuda.is_available():  # a Ray driver without a GPU: the actors decide on theirs
            return "bf16-mixed", "auto: decided on each GPU actor"
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "auto: this GPU has bf16"
        return "fp32", "auto: this GPU has no bf16"
    if device.type == "cpu":
        fast, why = cpu_fast_bf16()
        return ("bf16-mixed" if fast else "fp32"), f"auto: {why}"
    return "fp32", f"auto: {device.type}"


def resolve_compute(cfg, device: torch.device | None = None) -> Compute:
    """The run's `Compute` (on `device` instead of `run.device` when given: a reference kept on the CPU)."""
    device = resolve_device(cfg) if device is None else device
    if cfg.model.attn_implementation == "flash_attention_2" and device.type != "cuda":
        raise _config_error(f"model.attn_implementation=flash_attention_2 runs on CUDA only (the device is {device}); "
                            "use model.attn_implementation=sdpa")
    precision, reason = resolve_precision(cfg, device)
    return Compute(device, precision, reason)


def driver_compute(cfg) -> Compute:
    """Where a model the driver holds itself runs: the run's `Compute` in-process. With `cluster.backend=ray`
    the driver's only model is the SFT warm-up's evaluation copy (rank 0's weights are loaded into it before
    each held-out evaluation); it stays on the CPU, since the GPUs belong to the actors' bundles (a driver
    on a GPU node would compete with a learner rank for its memory) and the driver may have none."""
    if cfg.cluster.backend != "ray":
        return resolve_compute(cfg)
    return resolve_compute(cfg, torch.device("cpu"))


def reference_compute(cfg, compute: Compute) -> Compute:
    """Where the frozen reference runs: with the policy, or on the CPU (`kl.reference_device=cpu`)."""
    if cfg.kl.reference_device == "cpu" and compute.device.type != "cpu":
        return resolve_compute(cfg, torch.device("cpu"))
    return compute


def weights_dtype(cfg, compute: Compute, *, trains: bool) -> str:
    """The dtype to load a model in (`model.dtype`): see the module docstring."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if compute.mixed and not trains else "float32"


def check_trainable_dtype(cfg) -> None:
    """Pure bf16 weights are refused for training: bf16 cannot hold small updates (a 1e-5 step vanishes next to
    weights of size 1), so AdamW's steps would be lost to rounding."""
    if cfg.model.dtype == "bfloat16":
        raise _config_error("model.dtype=bfloat16 trains pure bf16 weights, whose rounding swallows small updates; "
                            "use model.precision=bf16-mixed (bf16 compute, fp32 master weights and optimizer state) "
                            "and model.dtype=auto. Pure bf16 weights are for inference only (rlft eval)")


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch dict with its tensors on `device` (other values, e.g. a micro-batch's group name, as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's (first) parameter lives: the device its role moves batches to."""
    return next(module.parameters()).device


def deepspeed_bf16(ds_config: dict, precision: str, source: str) -> bool:
    """Whether the DeepSpeed engine runs bf16 (DeepSpeed's own mixed precision: bf16 module, fp32 master weights
    in the optimizer), from `model.precision`. A JSON that says otherwise is an error naming both settings, so the
    two cannot disagree silently; rlft does not use fp16 (loss scaling)."""
    want = precision == "bf16-mixed"
    if (ds_config.get("fp16") or {}).get("enabled"):
        raise _config_error(f"{source} enables fp16; rlft computes in fp32 or bf16-mixed (model.precision): remove "
                            "the fp16 section")
    said = (ds_config.get("bf16") or {}).get("enabled")
    if said is not None and bool(said) != want:
        raise _config_error(f"{source} sets bf16.enabled={str(bool(said)).lower()}, but model.precision resolves to "
                            f"{precision}; remove the bf16 section (rlft sets it from model.precision) or set "
                            f"model.precision={'bf16-mixed' if said else 'fp32'}")
    return want
