"""benchmarks/decode_gemm.py: the GEMM sequence it times is one decoding step's, merged as the kernel's path."""

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_step_shapes_are_a_step_merged_or_not(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    decode_gemm = importlib.import_module("decode_gemm")
    config = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                             head_dim=64, num_hidden_layers=30, vocab_size=49152)  # SmolLM2-135M
    plain, merged = decode_gemm.step_shapes(config, False), decode_gemm.step_shapes(config, True)
    assert plain[:7] == [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    assert merged[:4] == [(960, 576), (576, 576), (3072, 576), (576, 1536)]
    assert len(plain) == 30 * 7 + 1 and len(merged) == 30 * 4 + 1 and plain[-1] == merged[-1] == (49152, 576)
    weights = sum(o * i for o, i in plain)
    assert weights == sum(o * i for o, i in merged)
    assert 134_000_000 < weights < 135_000_000  # SmolLM2's 134.5 M parameters (embedding tied to the head)
    sys.modules.pop("decode_gemm", None)
