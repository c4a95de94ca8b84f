"""Float32 decoding GEMMs that stream the weights at the memory's read rate (a small C++ kernel, built on first use).

Why hand-written: a decoding step at a few rows reads every weight once, so its GEMMs cost the time to read the
weights. On SmolLM2-135M's step (8 rows, 2 cores, AVX-512) MKL's packed fp32 GEMM, the fastest library kernel
measured for these shapes (`torch.ops.mkl._mkl_linear`; `F.linear` and oneDNN's fp32 ones are slower), reads them
at 0.55-0.65 of a plain `torch.sum`'s rate; `csrc/stream_gemm.cpp` reads each block of 16 output features as one
sequential stream, two per thread with software prefetch, and reaches the sum's rate (docs/benchmarks.md,
thirteenth session). It computes the same dot products in another order: results equal `F.linear`'s to float32
rounding. Its `Decoder` runs a whole Llama-family decoding step (RMSNorm, rotary embedding, the cache write,
attention over the cache, SiLU, residuals, the LM head) around these GEMMs in one call (`llama_step.LlamaStep`).

Built with torch's C++ extension loader (ninja and the machine's C++ compiler) the first time a process needs it
(~20 s, once per machine and torch version: cached in `build_directory()`, under `TORCH_EXTENSIONS_DIR`, default
~/.cache/torch_extensions; concurrent builds wait on torch's lock file, and a lock left by a killed build is
removed after `STALE_LOCK_SECONDS`). Where it cannot be used (a CPU without AVX-512, no compiler, a failed build,
`RLFT_STREAM_GEMM=0`) `load` returns None and says why once; callers keep MKL's packed GEMM. (An AVX2 + FMA
variant, 16 registers, was measured on this AVX-512 machine: faster than MKL's packed GEMM only up to 6 rows,
slower from 8: not shipped.)
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ENV = "RLFT_STREAM_GEMM"
BLOCK = 16  # output features per block of the packed layout (`kBlock` in csrc/stream_gemm.cpp)
SOURCE = Path(__file__).parent / "csrc" / "stream_gemm.cpp"
STALE_LOCK_SECONDS = 600  # a build takes ~20 s; torch waits on a lock file forever, even one a killed build left


def unavailable_reason() -> str | None:
    """None if the kernel can run here (the build itself is tried by `load`), else why not."""
    setting = os.environ.get(ENV, "1").strip().lower()
    if setting not in ("0", "1", "false", "true", ""):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 1 or 0")
    if setting in ("0", "false"):
        return f"{ENV}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU is {platform.machine()}, the kernel is x86-64 (AVX-512)"
    if not _has_avx512():
        return "the CPU has no AVX-512F"
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return "torch's CPU thread pool is not OpenMP (the kernel's parallel loop is built for it)"
    return None


def _has_avx512() -> bool:
    """From the CPU's flags where Linux lists them, else from torch's own dispatch."""
    from rlft.utils.device import cpu_flags

    flags = cpu_flags()
    return "avx512f" in flags if flags else torch.backends.cpu.get_cpu_capability() == "AVX512"


def build_directory() -> Path:
    """Per torch version (a build against another torch's headers must not be loaded) and Python version, under
    `TORCH_EXTENSIONS_DIR` where it is set, as torch's own loader does (its default root ignores it)."""
    from torch.utils.cpp_extension import get_default_build_root

    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / f"rlft_stream_gemm_{tag}"


@functools.cache
def load():
    """The compiled module (`pack`, `pack_into`, `linear`, `Decoder`, `exp`, `supported`), or None where it cannot
    be used (why printed once)."""
    reason = unavailable_reason()
    if reason is None:
        try:
            module = _build()
        except Exception as error:  # no compiler, headers or a failed build: the library GEMMs still work
            reason = f"its build failed: {_first_error_line(error)}"
        else:
            if module.supported():
                return module
            reason = "the CPU has no AVX-512F"
    print(f"rlft: the decoding kernel is unavailable ({reason}): fp32 decoding uses MKL's packed GEMM and "
          "decoding steps run as torch ops", file=sys.stderr, flush=True)
    return None


def _build():
    from torch.utils.cpp_extension import load as load_extension

    if shutil.which("ninja") is None:  # torch runs `ninja` from PATH; the `ninja` package's may not be on it
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            print(f"rlft: removing a stale build lock left by a killed build: {lock}", file=sys.stderr, flush=True)
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    if not (directory / "rlft_stream_gemm.so").exists():  # said only when it will likely build (~20 s)
        print("rlft: building the fp32 decoding GEMM kernel (once per machine and torch version, ~20 s)",
              file=sys.stderr, flush=True)
    # no ISA flags: the kernel carries its own target attribute (see the source)
    return load_extension("rlft_stream_gemm", [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                          extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=False)


def _first_error_line(error: Exception) -> str:
    """The compiler's or ninja's telling line (torch's message ends with ninja's 'build stopped'), not a dump."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "error" in line.lower() or "not found" in line.lower()
               or "required" in line.lower()]
    return f"{type(error).__name__}: {(telling or lines or [''])[0][:300]}"


def pack_concatenated(module, weights: list[torch.Tensor]) -> torch.Tensor:
    """What `module.pack(torch.cat(weights))` returns (`module`: the loaded kernel), without the concatenated copy:
    each weight's blocks of `BLOCK` output features are written straight into their place in the packed layout
    (`module.pack_into`). Why: the decoding step packs q|k|v and gate|up as one GEMM each (`llama_step._merged`)
    for every `generate` call, so their concatenation was a second pass over two thirds of the weights
    (docs/benchmarks.md, fifteenth session). Weights whose row counts would make a block straddle two of them (a
    row count not a multiple of `BLOCK` before the last weight) are concatenated first, as before."""
    if any(w.shape[0] % BLOCK for w in weights[:-1]):
        return module.pack(torch.cat([w.detach() for w in weights]))
    features = weights[0].shape[1]
    for w in weights:
        if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu" or w.shape[1] != features:
            raise ValueError(f"stream_gemm.pack_concatenated: 2-D float32 CPU weights of {features} input features, "
                             f"got {tuple(w.shape)} {w.dtype} on {w.device}")
    rows = sum(w.shape[0] for w in weights)
    packed = torch.empty(((rows + BLOCK - 1) // BLOCK, features, BLOCK), dtype=torch.float32)
    block = 0
    with torch.no_grad():
        for w in weights:
            module.pack_into(w.detach(), packed, block)
            block += (w.shape[0] + BLOCK - 1) // BLOCK
    return packed
