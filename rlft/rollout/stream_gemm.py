"""Float32 decoding GEMMs that stream the weights at the memory's read rate (a small C++ kernel, built on first use).

Why hand-written: a decoding step at a few rows reads every weight once, so its GEMMs cost the time to read the
weights. On SmolLM2-135M's step (8 rows, 2 cores, AVX-512) MKL's packed fp32 GEMM, the fastest library kernel
measured for these shapes (`torch.ops.mkl._mkl_linear`; `F.linear` and oneDNN's fp32 ones are slower), reads them
at 0.55-0.65 of a plain `torch.sum`'s rate; `csrc/stream_gemm.cpp` reads each block of 16 output features as one
sequential stream, two per thread with software prefetch, and reaches the sum's rate (docs/benchmarks.md,
thirteenth session). It computes the same dot products in another order: results equal `F.linear`'s to float32
rounding.

Built with torch's C++ extension loader the first time a process needs it (~30-60 s, once per machine: the build
is cached under `TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions; concurrent builds wait on a lock).
Where it cannot be used (a CPU without AVX-512, no C++ compiler, a failed build, `RLFT_STREAM_GEMM=0`) `load`
returns None and says why once; callers keep MKL's packed GEMM. (An AVX2 + FMA variant, 16 registers, was
measured on this AVX-512 machine: faster than MKL's packed GEMM only up to 6 rows, slower from 8: not shipped.)
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

import torch

ENV = "RLFT_STREAM_GEMM"
SOURCE = Path(__file__).parent / "csrc" / "stream_gemm.cpp"


def unavailable_reason() -> str | None:
    """None if the kernel may be built and run here, else why not (the build and the CPU's AVX-512 are
    checked by `load`)."""
    setting = os.environ.get(ENV, "1").strip().lower()
    if setting not in ("0", "1", "false", "true", ""):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 1 or 0")
    if setting in ("0", "false"):
        return f"{ENV}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU is {platform.machine()}, the kernel is x86-64 (AVX-512)"
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return "torch's CPU thread pool is not OpenMP (the kernel's parallel loop is built for it)"
    return None


@functools.cache
def load():
    """The compiled module (`pack`, `linear`, `supported`), or None where it cannot be used (why printed once)."""
    reason = unavailable_reason()
    if reason is None:
        try:
            from torch.utils.cpp_extension import load as load_extension

            print("rlft: loading the fp32 decoding GEMM kernel (built once per machine, ~20 s the first time)",
                  file=sys.stderr, flush=True)
            # no ISA flags: the kernels carry their own target attributes (see the source)
            module = load_extension("rlft_stream_gemm", [str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                                    extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as error:  # no compiler, headers or a failed build: the library GEMMs still work
            reason = f"its build failed ({type(error).__name__}: {str(error).strip().splitlines()[-1:]})"
        else:
            if module.supported():
                return module
            reason = "the CPU has no AVX-512F"
    print(f"rlft: fp32 decoding uses MKL's packed GEMM: the streaming kernel is unavailable ({reason})",
          file=sys.stderr, flush=True)
    return None
