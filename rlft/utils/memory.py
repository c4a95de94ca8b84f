"""The process's host-memory policy: keep what it frees (`RLFT_KEEP_FREED_MEMORY`, default on).

Why: glibc's malloc serves every allocation above 32 MiB (and, by its dynamic threshold, many smaller ones)
with its own `mmap` and returns it to the OS on `free`, so every training step's logits, activations and
gradients are fresh pages again, faulted in and zeroed by the kernel one page at a time. Measured on the
2-core development VM (Firecracker, free-page reporting on): SmolLM2-135M SFT, 8 sequences per step, spent
more time in the kernel than in user code (2.25 M page faults, 30-36 s system time in a 45 s run) and its
step time swung between 2.7 and 5.5 s from run to run; keeping freed memory halved the faults and gave
2.0-2.9 s steps, at +5-20 % peak RSS (+25 % for GRPO on SmolLM2 in fp32: freed blocks in the middle of the heap
serve only requests that fit, so the heap grows where mmap would have handed out a fresh block). The usual answer on CPU is an allocator that retains memory (the PyTorch
CPU performance guide preloads jemalloc or tcmalloc with long decay times); glibc can do the same through
`mallopt`: no `mmap` for allocations (M_MMAP_MAX = 0) and no trimming of the heap (M_TRIM_THRESHOLD), so freed
memory stays mapped and is reused by the next step.

It must be set before the process's big imports: applied after torch was imported, the same two calls measured
no faster than the defaults and +20 % peak RSS (49 s for the same run, 36 s system time). So `import rlft`
applies it (`rlft/__init__.py` imports nothing heavy first). The `rlft` command imports it first; other processes
(Ray actors, DeepSpeed ranks, benchmark children) apply it when their first rlft module is imported, which is
before torch unless the process imported torch itself. It is an environment variable rather than a config key
because it has to act before any config is read. RLFT_KEEP_FREED_MEMORY=0 leaves the allocator alone; =1 insists (an error where the
C library is not glibc); unset or `auto`: on where it is glibc (Linux).

Huge pages are not part of the default: torch's own switch THP_MEM_ALLOC_ENABLE=1 (c10's CPU allocator then
takes every allocation of 2 MiB or more 2 MiB-aligned and calls `madvise(MADV_HUGEPAGE)` on it) is yours to set,
and child processes inherit it. The fourteenth session made it part of the policy (SmolLM2 bf16-mixed SFT at 8
sequences per step: 5 % faster, -7 to -18 % RSS; fp32 generate calls 8-15 % faster); the seventeenth measured the
other side on the same 2-core VM (docs/benchmarks.md): at 32 sequences per step the kept heap grew twice as fast
on huge pages, 12.1 GB of peak RSS after 30 steps against 7.1 GB without (and 3 % faster), and on a VM whose
host takes freed 2 MiB blocks back, a fresh huge page cost 8-9x a 4 KiB page's fault per byte. A default that can
nearly double a training run's memory is worse than one that gives up a few per cent of speed, so it is opt-in:
set THP_MEM_ALLOC_ENABLE=1 for rollout-heavy runs on a host with memory to spare.
"""

from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4

_state = {"keeping": False}

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"  # torch's switch (c10/core/impl/alloc_cpu.cpp); the user's to set


@functools.cache
def _glibc():
    """glibc's handle, or None where the C library is not glibc (macOS, musl). The process's own symbols
    (`CDLL(None)`): no library search (`ctypes.util.find_library` runs a subprocess) at every `import rlft`."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def supported() -> bool:
    return _glibc() is not None


ENV = "RLFT_KEEP_FREED_MEMORY"


def setting_from_environment() -> bool | str:
    """RLFT_KEEP_FREED_MEMORY as True, False or "auto" (unset: "auto")."""
    value = os.environ.get(ENV, "auto").strip().lower()
    choices = {"1": True, "true": True, "0": False, "false": False, "auto": "auto", "": "auto"}
    if value not in choices:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected 1, 0 or auto")
    return choices[value]


def apply(setting: bool | str) -> bool:
    """Apply the policy (True, False or "auto") to this process; returns whether it now keeps freed memory.
    "auto" keeps it where the C library is glibc; True where it is not is an error (it cannot take effect).
    False leaves the allocator as it is (a process that kept memory keeps doing so: mallopt's settings are not
    undone)."""
    if setting is False or _state["keeping"]:
        return _state["keeping"]
    libc = _glibc()
    if libc is None:
        if setting is True:
            raise ValueError(f"{ENV}=1 needs glibc's malloc (Linux); this C library is not glibc: "
                             f"set {ENV}=auto or 0")
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim (man mallopt)
    _state["keeping"] = ok
    return ok


def keeping() -> bool:
    """Whether this process keeps the memory it frees (`apply` succeeded)."""
    return _state["keeping"]


def trim() -> None:
    """glibc's `malloc_trim(0)`: hand free heap memory back to the OS, unless the process keeps freed memory
    (then trimming would only buy the next allocation its page faults back). No-op without glibc."""
    libc = _glibc()
    if libc is not None and not _state["keeping"]:
        libc.malloc_trim(0)
