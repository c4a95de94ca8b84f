"""(The folder is not called `tests/dist`: pytest never recurses into a folder named `dist`.)

Distributed tests start Ray and torch.distributed, which bind every network interface. They run only
inside a loopback-only network namespace (`tests/loopback.sh`, which `make test` and `.ci/run` use) and
skip themselves anywhere else, so a plain `pytest` never sends traffic off this machine."""

import os
from pathlib import Path

import pytest


def only_loopback() -> bool:
    # /proc/net/dev lists this network namespace's interfaces (/sys/class/net shows the host's).
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    interfaces = {line.split(":", 1)[0].strip() for line in lines}
    return interfaces <= {"lo"} and not os.environ.get("RLFT_NO_NETNS")


def pytest_collection_modifyitems(config, items):
    if only_loopback():
        return
    skip = pytest.mark.skip(reason="needs a loopback-only network namespace: run through tests/loopback.sh")
    for item in items:
        if "tests/distributed" in str(item.fspath):
            item.add_marker(skip)
