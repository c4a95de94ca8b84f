"""Fault-injection tests: a small reward worker pool, stopped at the end so no process outlives the run."""

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RLFT_REWARD_WORKERS", "2")


@pytest.fixture(scope="session", autouse=True)
def reward_pool() -> Iterator[None]:
    import rewards

    yield
    rewards.shutdown()
