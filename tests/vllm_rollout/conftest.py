"""Fixtures for the vLLM engine tests (`make test-vllm`, in the `.venv-vllm` environment).

The folder is not called `tests/vllm`: `tests/` is on sys.path during the suite (its conftest), so a
`tests/vllm` folder would be imported as a namespace package named `vllm` wherever the real one is missing,
and `pytest.importorskip("vllm")` (or any library probing for vllm) would find it.

vllm is imported only inside the test modules (each starts with `pytest.importorskip("vllm")`), so the
default suite, whose environment has no vllm, collects this folder and skips it cleanly.
"""

import pytest

from rlft.models.tiny import build_tiny_model
from rlft.tasks import load_records
from rlft.tasks.prompts import prompt_text, target_text


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama (head_dim 64, which vLLM's attention kernels need) and a task tokenizer."""
    records = load_records("arithmetic", "train", n_train=16, difficulty=0)
    texts = [prompt_text(r) + target_text(r) for r in records] * 4
    return build_tiny_model(tmp_path_factory.mktemp("vllm") / "model", texts, seed=0, vocab_size=300,
                            hidden_size=128, head_dim=64, num_layers=2, intermediate_size=256)


@pytest.fixture(scope="session")
def prompts(tiny_model):
    """Token ids of four task prompts of different lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    records = load_records("arithmetic", "test", n_test=4, difficulty=0)
    return [tok(prompt_text(r), add_special_tokens=False)["input_ids"] for r in records]
