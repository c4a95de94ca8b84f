"""The process's host-memory policy: keep what it frees, on huge pages (`RLFT_KEEP_FREED_MEMORY`, default on).

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

Huge pages: where the kernel backs memory with transparent huge pages only when asked (THP mode `madvise`, the
common default), the policy also sets torch's own switch THP_MEM_ALLOC_ENABLE=1 (c10's CPU allocator then calls
`madvise(MADV_HUGEPAGE)` on every allocation of 2 MiB or more: weights, optimizer state, activations, packed
decoding weights), unless the environment already sets it (THP_MEM_ALLOC_ENABLE=0 keeps 4 KiB pages). torch reads
it once, at its first CPU allocation: one more reason this runs before torch is imported. Child processes inherit
it. Measured on the 2-core VM (docs/benchmarks.md, fourteenth session): SmolLM2 bf16-mixed SFT steps 5 % faster at
-18 % RSS after 40 steps (page faults per step 8,400 -> 300), SmolLM2's fp32 generate calls 8 % faster.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4

_state = {"keeping": False, "set_huge_pages": False}

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"  # torch's switch (c10/core/impl/alloc_cpu.cpp)
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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
    import os

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
    advise_huge_pages()
    libc = _glibc()
    if libc is None:
        if setting is True:
            raise ValueError(f"{ENV}=1 needs glibc's malloc (Linux); this C library is not glibc: "
                             f"set {ENV}=auto or 0")
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim (man mallopt)
    _state["keeping"] = ok
    return ok


def transparent_huge_pages_mode() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"); None where there is none."""
    try:
        found = re.search(r"\[(\w+)\]", THP_MODE_FILE.read_text())
    except OSError:  # not Linux, or a kernel without THP
        return None
    return found.group(1) if found else None


def advise_huge_pages() -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 (torch's CPU allocations of >= 2 MiB on huge pages) where the kernel's THP mode
    is "madvise" and the environment does not set it already; returns whether this process asks for huge pages.
    ("always": every allocation already gets them; "never" or none: asking cannot take effect.)"""
    if transparent_huge_pages_mode() != "madvise":
        return False
    if HUGE_PAGES_ENV not in os.environ:
        os.environ[HUGE_PAGES_ENV] = "1"
        _state["set_huge_pages"] = True
    return os.environ[HUGE_PAGES_ENV].strip().lower() in ("1", "true")


def set_huge_pages() -> bool:
    """Whether this process set THP_MEM_ALLOC_ENABLE itself (rather than finding it in its environment)."""
    return _state["set_huge_pages"]


def keeping() -> bool:
    """Whether this process keeps the memory it frees (`apply` succeeded)."""
    return _state["keeping"]


def trim() -> None:
    """glibc's `malloc_trim(0)`: hand free heap memory back to the OS, unless the process keeps freed memory
    (then trimming would only buy the next allocation its page faults back). No-op without glibc."""
    libc = _glibc()
    if libc is not None and not _state["keeping"]:
        libc.malloc_trim(0)
