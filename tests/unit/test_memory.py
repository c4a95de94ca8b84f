"""The host-memory policy (rlft/utils/memory.py): `import rlft` makes glibc keep freed memory, so a freed buffer's
pages serve the next allocation without page faults; RLFT_KEEP_FREED_MEMORY turns it off or insists."""

import os
import subprocess
import sys

import pytest

from rlft.utils import memory

# Allocate and touch 64 MiB, free it, then allocate and touch 32 + 28 MiB: the page faults of the later two.
# (Smaller than the freed block on purpose: torch asks for 64-byte-aligned memory, and glibc's aligned allocation
# needs a free block somewhat larger than the request, so an exact-size reuse is not what a heap can promise.)
REUSE = """
import rlft, resource, torch
from rlft.utils import memory
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20); del x
before = faults(); y = torch.ones(8 * 2**20); z = torch.ones(7 * 2**20)
print(memory.keeping(), faults() - before)
"""


def run_reuse(value: str | None) -> tuple[bool, int]:
    # without the huge pages this (pytest) process asked for: on 2 MiB pages glibc's fresh mmaps fault 512x less
    env = {k: v for k, v in os.environ.items() if k not in (memory.ENV, memory.HUGE_PAGES_ENV)}
    if value is not None:
        env[memory.ENV] = value
    out = subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True, check=True)
    keeping, faults = out.stdout.split()
    return keeping == "True", int(faults)


@pytest.mark.skipif(not memory.supported() or not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    keeping, faults = run_reuse(None)  # the default: auto, on under glibc
    assert keeping and faults < 1_000, faults  # 60 MiB is 15,360 pages: served by the freed block, none faulted
    keeping, faults = run_reuse("0")
    assert not keeping and faults > 10_000, faults  # glibc's default: fresh mmaps, every page faulted in
    assert run_reuse("1")[0]


def test_setting_from_environment(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("False", False), ("auto", "auto")):
        monkeypatch.setenv(memory.ENV, value)
        assert memory.setting_from_environment() == expected
    monkeypatch.delenv(memory.ENV)
    assert memory.setting_from_environment() == "auto"
    monkeypatch.setenv(memory.ENV, "yes please")
    with pytest.raises(ValueError, match="RLFT_KEEP_FREED_MEMORY='yes please': expected 1, 0 or auto"):
        memory.setting_from_environment()


def test_insisting_without_glibc_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    monkeypatch.setitem(memory._state, "keeping", False)
    assert memory.apply("auto") is False and memory.apply(False) is False
    with pytest.raises(ValueError, match="needs glibc"):
        memory.apply(True)


def test_trim_is_skipped_while_keeping(monkeypatch):
    calls = []
    fake = type("Libc", (), {"malloc_trim": staticmethod(lambda pad: calls.append(pad))})()
    monkeypatch.setattr(memory, "_glibc", lambda: fake)
    monkeypatch.setitem(memory._state, "keeping", True)
    memory.trim()
    assert calls == []
    monkeypatch.setitem(memory._state, "keeping", False)
    memory.trim()
    assert calls == [0]


# Where torch put a 64 MiB tensor: whether the mapping that holds it is advised for huge pages ("hg" in VmFlags).
HUGE = """
import rlft, torch
x = torch.ones(16 * 2**20)
address = x.data_ptr()
flags = None
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and ":" not in head:
        start, end = (int(v, 16) for v in head.split("-"))
        inside = start <= address < end
    elif head == "VmFlags:" and inside:
        flags = line.split()[1:]
import os
print(int("hg" in flags), os.environ.get("THP_MEM_ALLOC_ENABLE", "-"))
"""


def run_huge(**env_values: str) -> tuple[bool, str]:
    env = {k: v for k, v in os.environ.items() if k not in (memory.ENV, memory.HUGE_PAGES_ENV)}
    env.update(env_values)
    out = subprocess.run([sys.executable, "-c", HUGE], env=env, capture_output=True, text=True, check=True)
    advised, value = out.stdout.split()
    return advised == "1", value


@pytest.mark.skipif(memory.transparent_huge_pages_mode() != "madvise", reason="needs the kernel's THP mode madvise")
def test_large_allocations_are_advised_for_huge_pages():
    assert run_huge() == (True, "1")  # the default: `import rlft` asks torch for huge pages
    assert run_huge(**{memory.HUGE_PAGES_ENV: "0"}) == (False, "0")  # the user's own value is kept
    assert run_huge(**{memory.ENV: "0"}) == (False, "-")  # the policy off: torch's defaults, nothing set


def test_huge_pages_only_where_the_kernel_asks_for_advice(monkeypatch, tmp_path):
    mode_file = tmp_path / "enabled"
    monkeypatch.setattr(memory, "THP_MODE_FILE", mode_file)
    monkeypatch.setitem(memory._state, "set_huge_pages", False)
    monkeypatch.delenv(memory.HUGE_PAGES_ENV, raising=False)
    assert memory.transparent_huge_pages_mode() is None and memory.advise_huge_pages() is False  # no THP
    for mode in ("always", "never"):
        mode_file.write_text("always madvise never\n".replace(mode, f"[{mode}]"))
        assert memory.transparent_huge_pages_mode() == mode
        assert memory.advise_huge_pages() is False and memory.HUGE_PAGES_ENV not in os.environ
    mode_file.write_text("always [madvise] never\n")
    assert memory.advise_huge_pages() is True and os.environ[memory.HUGE_PAGES_ENV] == "1" and memory.set_huge_pages()
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "0")
    monkeypatch.setitem(memory._state, "set_huge_pages", False)
    assert memory.advise_huge_pages() is False and not memory.set_huge_pages()
