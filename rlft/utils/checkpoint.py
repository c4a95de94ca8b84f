"""Atomic checkpoint folders with keep-last-k.

A checkpoint is a folder `ckpt-<step>` written as `ckpt-<step>.tmp` and renamed when complete, so a kill
during a save never leaves a corrupt checkpoint; `latest_checkpoint` ignores `.tmp` folders.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"^ckpt-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def begin(root: str | Path, step: int) -> Path:
    """Return an empty temporary folder to write checkpoint `step` into."""
    tmp = Path(root) / f"ckpt-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, *, keep_last: int, protect: tuple[Path, ...] = ()) -> Path:
    """Rename the finished temporary folder into place and prune old checkpoints."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    old = checkpoint_dirs(final.parent)[:-keep_last] if keep_last > 0 else []
    keep = {p.resolve() for p in protect}
    for path in old:
        if path.resolve() not in keep:
            shutil.rmtree(path)
    return final


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
