"""`import rlft.algos` must stay light: torch only, no backends, no rest of rlft (STYLE.md §5)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ALGOS = ROOT / "rlft" / "algos"
FORBIDDEN = ("transformers", "ray", "deepspeed", "vllm", "rlft.config", "rlft.trainers")


def test_import_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, rlft.algos\n"
        "from rlft.algos import ppo, kl, advantages, contrastive, dapo, nlft, rerank, sft\n"
        f"bad = [m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r})]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_modules_import_only_torch_math_and_typing() -> None:
    allowed = {"torch", "math", "typing", "__future__", "rlft"}
    for path in sorted(ALGOS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("rlft"):
                    assert name == "rlft.algos" or name.startswith("rlft.algos."), f"{path.name} imports {name}"
