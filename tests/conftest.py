"""Shared fixtures. Nothing here reads ../shared or the network: fixtures are written by the tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests compare exact numbers: `model.precision=auto` must not switch to bf16 on CPUs with AMX / AVX512-BF16.
os.environ.setdefault("RLFT_CPU_FAST_BF16", "0")

import pytest  # noqa: E402  (after the environment above)

from rlft.models.tiny import build_tiny_model
from rlft.tasks import load_records
from rlft.tasks.prompts import prompt_text, target_text


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory):
    """A tiny random model whose tokenizer knows the task (stands in for a warm-up checkpoint)."""
    records = load_records("arithmetic", "train", n_train=16, difficulty=0)
    texts = [prompt_text(r) + target_text(r) for r in records] * 4
    return build_tiny_model(tmp_path_factory.mktemp("warm") / "model", texts, seed=0, vocab_size=300,
                            hidden_size=128, num_layers=2, intermediate_size=256)
