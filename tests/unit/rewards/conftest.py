"""Fixtures for the rewards tests: a small worker pool, started once and stopped at the end."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("RLFT_REWARD_WORKERS", "2")


@pytest.fixture(scope="session", autouse=True)
def reward_pool() -> Iterator[None]:
    import rewards

    yield
    rewards.shutdown()


@pytest.fixture()
def children_of() -> Callable[[int], list[int]]:
    """The `_children_of` helper, as a fixture (test modules here are not a package)."""
    return _children_of


def _children_of(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (Linux)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out
