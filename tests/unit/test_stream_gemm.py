"""rlft's streaming fp32 decoding GEMM (rlft/rollout/stream_gemm.py, csrc/stream_gemm.cpp) against F.linear."""

import pytest
import torch
import torch.nn.functional as F

from rlft.rollout import stream_gemm

needs_kernel = pytest.mark.skipif(stream_gemm.unavailable_reason() is not None,
                                  reason=f"streaming kernel unavailable: {stream_gemm.unavailable_reason()}")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 16, 33])  # each row count kernel; several 8-row passes
@pytest.mark.parametrize("out_features,in_features", [(16, 8), (32, 64), (48, 64), (200, 576), (17, 40), (3, 5)])
def test_linear_equals_f_linear(rows, out_features, in_features):
    """Two blocks, an odd last block and a partial one (padding never reaches the output), with and without a
    bias: within float32 summation's error bound of the exact (float64) result, (K + 1) u sum |x_k w_k| + |b|
    (each output is a sequential sum over K; a wrong index or row would be off by O(1))."""
    module = stream_gemm.load()
    torch.manual_seed(rows * 1000 + out_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    x = torch.randn(rows, in_features)
    packed = module.pack(weight)
    assert packed.shape == ((out_features + 15) // 16, in_features, 16)
    for b in (None, bias):
        got = module.linear(x, packed, out_features, b)
        assert got.shape == (rows, out_features)
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        magnitude = x.double().abs() @ weight.double().abs().T + (0 if b is None else b.double().abs())
        bound = (in_features + 1) * 2.0 ** -24 * magnitude
        assert ((got.double() - exact).abs() <= bound).all()


@needs_kernel
def test_linear_takes_a_non_contiguous_input_and_refuses_bad_ones():
    module = stream_gemm.load()
    weight = torch.randn(40, 24)
    packed = module.pack(weight)
    wide = torch.randn(6, 48)
    assert torch.allclose(module.linear(wide[:, ::2], packed, 40), F.linear(wide[:, ::2], weight), atol=1e-5)
    with pytest.raises(RuntimeError, match="24"):  # features of x and weight differ
        module.linear(torch.randn(6, 25), packed, 40)
    with pytest.raises(RuntimeError, match="float32"):
        module.linear(torch.randn(6, 24, dtype=torch.bfloat16), packed, 40)
    with pytest.raises(RuntimeError, match="n=60"):
        module.linear(torch.randn(6, 24), packed, 60)
    with pytest.raises(RuntimeError, match="bias"):
        module.linear(torch.randn(6, 24), packed, 40, torch.randn(41))
    with pytest.raises(RuntimeError, match="float32"):
        module.pack(weight.double())


def test_the_environment_switch_turns_it_off_bad_values_are_refused_and_other_cpus_named(monkeypatch):
    monkeypatch.setenv(stream_gemm.ENV, "0")
    assert stream_gemm.unavailable_reason() == "RLFT_STREAM_GEMM=0"
    monkeypatch.setenv(stream_gemm.ENV, "maybe")
    with pytest.raises(ValueError, match="RLFT_STREAM_GEMM='maybe'"):
        stream_gemm.unavailable_reason()
    monkeypatch.setenv(stream_gemm.ENV, "1")
    monkeypatch.setattr(stream_gemm.platform, "machine", lambda: "arm64")
    assert "the CPU is arm64" in stream_gemm.unavailable_reason()


def test_a_cpu_without_avx512_falls_back_with_its_reason(monkeypatch, capsys):
    import types

    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: types.SimpleNamespace(supported=lambda: False))
    monkeypatch.setattr(stream_gemm, "unavailable_reason", lambda: None)
    stream_gemm.load.cache_clear()
    try:
        assert stream_gemm.load() is None
        assert "unavailable (the CPU has no AVX-512F)" in capsys.readouterr().err
    finally:
        stream_gemm.load.cache_clear()


def test_a_failed_build_falls_back_with_its_reason(monkeypatch, capsys):
    """No compiler or a broken toolchain: `load` returns None (callers keep MKL's GEMM) and says why, once."""
    import torch.utils.cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'rlft_stream_gemm'\ng++: not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
    monkeypatch.setattr(stream_gemm, "unavailable_reason", lambda: None)
    stream_gemm.load.cache_clear()
    try:
        assert stream_gemm.load() is None
        assert stream_gemm.load() is None
        err = capsys.readouterr().err
        assert err.count("unavailable (its build failed (RuntimeError: ['g++: not found']))") == 1
    finally:
        stream_gemm.load.cache_clear()  # the next test loads the real build again
