"""rlft's streaming fp32 decoding GEMM (rlft/rollout/stream_gemm.py, csrc/stream_gemm.cpp) against F.linear."""

import os

import pytest
import torch
import torch.nn.functional as F

from rlft.rollout import stream_gemm


@pytest.fixture
def module():
    """The built kernel; a skip where it cannot run or build here (the reason printed by `load`)."""
    loaded = stream_gemm.load()
    if loaded is None:
        pytest.skip(f"streaming kernel unavailable: {stream_gemm.unavailable_reason() or 'its build failed'}")
    return loaded


@pytest.mark.parametrize("threads", [1, 2])  # one thread: blocks in order, so a store spilling into the next
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 33])  # block's columns is not overwritten later
@pytest.mark.parametrize("out_features,in_features",
                         [(16, 8), (32, 64), (48, 64), (200, 576), (17, 40), (3, 5), (120, 64), (56, 24)])
def test_linear_equals_f_linear(module, rows, out_features, in_features, threads):
    """Pairs of blocks, an odd last block, a partial last block alone (17, 200) or second in its pair (120, 56),
    with and without a bias: within float32 summation's error bound of the exact (float64) result,
    (K + 1) u sum |x_k w_k| + |b| (each output is a sequential sum over K; a wrong index, row or mask would be off
    by O(1))."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_linear(module, rows, out_features, in_features)
    finally:
        torch.set_num_threads(previous)


def _check_linear(module, rows, out_features, in_features):
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


def test_linear_takes_a_non_contiguous_input_and_refuses_bad_ones(module):
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
    with pytest.raises(RuntimeError, match="bias"):  # a bias of another dtype (a bf16 model's) is refused
        module.linear(torch.randn(6, 24), packed, 40, torch.randn(40, dtype=torch.bfloat16))


def test_the_environment_switch_turns_it_off_bad_values_are_refused_and_other_cpus_named(monkeypatch):
    monkeypatch.setenv(stream_gemm.ENV, "0")
    assert stream_gemm.unavailable_reason() == "RLFT_STREAM_GEMM=0"
    monkeypatch.setenv(stream_gemm.ENV, "maybe")
    with pytest.raises(ValueError, match="RLFT_STREAM_GEMM='maybe'"):
        stream_gemm.unavailable_reason()
    monkeypatch.setenv(stream_gemm.ENV, "1")
    monkeypatch.setattr(stream_gemm, "_has_avx512", lambda: False)
    assert stream_gemm.unavailable_reason() == "the CPU has no AVX-512F"  # decided before any build
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
        raise RuntimeError("Error building extension 'rlft_stream_gemm': [1/2] c++ -MMD ...\n"
                           "stream_gemm.cpp:3:10: fatal error: torch/extension.h: No such file or directory\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken)
    monkeypatch.setattr(stream_gemm, "unavailable_reason", lambda: None)
    stream_gemm.load.cache_clear()
    try:
        assert stream_gemm.load() is None
        assert stream_gemm.load() is None
        err = capsys.readouterr().err
        assert err.count("unavailable (its build failed: RuntimeError: Error building extension") == 1
        assert "fatal error: torch/extension.h" not in err  # the first telling line, not the whole log
        assert "ninja: build stopped" not in err
    finally:
        stream_gemm.load.cache_clear()  # the next test loads the real build again


def test_a_stale_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(monkeypatch, tmp_path, capsys):
    """torch waits on its build lock file forever: one older than any build is removed before loading."""
    import time

    import torch.utils.cpp_extension

    monkeypatch.setattr(stream_gemm, "build_directory", lambda: tmp_path / "build")
    loaded = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: loaded.append(k) or "module")
    lock = tmp_path / "build" / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert stream_gemm._build() == "module" and lock.exists()  # another process may be building right now
    old = time.time() - stream_gemm.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    assert stream_gemm._build() == "module" and not lock.exists()
    assert "removing a stale build lock" in capsys.readouterr().err
    assert loaded[-1]["build_directory"] == str(tmp_path / "build")


def test_the_ninja_package_is_put_on_path_when_path_has_none(monkeypatch, tmp_path):
    """torch runs `ninja` from PATH; a venv used without activating it has the package's binary elsewhere."""
    import ninja
    import torch.utils.cpp_extension

    monkeypatch.setenv("PATH", str(tmp_path))  # no ninja here
    monkeypatch.setattr(stream_gemm, "build_directory", lambda: tmp_path / "build")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: "module")
    stream_gemm._build()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR


def test_the_build_directory_is_per_torch_version_under_torch_extensions_dir(monkeypatch, tmp_path):
    assert torch.__version__.replace("+", "_") in stream_gemm.build_directory().name
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert stream_gemm.build_directory().parent == tmp_path


def test_building_is_announced_only_when_no_build_is_there(monkeypatch, tmp_path, capsys):
    import torch.utils.cpp_extension

    monkeypatch.setattr(stream_gemm, "build_directory", lambda: tmp_path)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: "module")
    stream_gemm._build()
    assert "building the fp32 decoding GEMM kernel" in capsys.readouterr().err
    (tmp_path / "rlft_stream_gemm.so").touch()
    stream_gemm._build()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("rows", [[576, 192, 192], [32, 17], [16], [17, 16], [48, 16, 5]])
def test_pack_concatenated_equals_packing_the_concatenation(module, rows):
    """q|k|v and gate|up are packed side by side without concatenating them first: the same bytes as `pack` of the
    concatenation, a partial last block zero-padded (also for a single weight); a weight before the last that would
    make a block straddle two weights ([17, 16]) goes through the concatenation."""
    torch.manual_seed(sum(rows))
    weights = [torch.randn(n, 40) for n in rows]
    got = stream_gemm.pack_concatenated(module, weights)
    assert torch.equal(got, module.pack(torch.cat(weights)))
    x = torch.randn(8, 40)
    assert torch.allclose(module.linear(x, got, sum(rows)), F.linear(x, torch.cat(weights)), atol=1e-4)


def test_pack_concatenated_refuses_weights_it_cannot_pack_together(module):
    with pytest.raises(ValueError, match="40 input features"):
        stream_gemm.pack_concatenated(module, [torch.randn(16, 40), torch.randn(16, 41)])
    with pytest.raises(ValueError, match="float32"):
        stream_gemm.pack_concatenated(module, [torch.randn(16, 40), torch.randn(16, 40, dtype=torch.float64)])


def _reference_pack(weight: torch.Tensor) -> torch.Tensor:
    """The packed layout by definition: rows zero-padded to whole blocks of 16, block b (K, 16) k-major."""
    n, k = weight.shape
    blocks = (n + 15) // 16
    padded = torch.zeros(blocks * 16, k)
    padded[:n] = weight
    return padded.view(blocks, 16, k).transpose(1, 2).contiguous()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_features,in_features", [(16, 16), (32, 40), (17, 40), (3, 5), (1, 1), (33, 17),
                                                      (200, 576), (960, 64)])
def test_pack_writes_the_blocked_layout_aligned_or_not(module, out_features, in_features, threads):
    """16 x 16 tiles transposed in registers, partial tiles in both directions, zero lanes past the last row; into a
    64-byte aligned buffer (streaming stores) and into one 4 bytes off (ordinary stores), at a block offset."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        weight = torch.randn(out_features, in_features)
        expected = _reference_pack(weight)
        assert torch.equal(module.pack(weight), expected)
        assert torch.equal(module.pack(weight.T.contiguous().T), expected)  # a non-contiguous weight
        blocks = expected.shape[0]
        for offset in (0, 1):  # floats from a 64-byte aligned allocation
            flat = torch.full((offset + (blocks + 2) * in_features * 16,), 7.0)
            packed = flat[offset:].view(blocks + 2, in_features, 16)
            module.pack_into(weight, packed, 1)
            assert torch.equal(packed[1:1 + blocks], expected)
            assert (packed[0] == 7).all() and (packed[1 + blocks:] == 7).all()  # nothing written outside
    finally:
        torch.set_num_threads(previous)


def test_pack_into_refuses_a_buffer_that_does_not_fit(module):
    weight = torch.randn(40, 24)
    with pytest.raises(RuntimeError, match="24"):
        module.pack_into(weight, torch.empty(3, 25, 16), 0)
    with pytest.raises(RuntimeError, match="do not fit"):
        module.pack_into(weight, torch.empty(3, 24, 16), 1)
    with pytest.raises(RuntimeError, match="float32"):
        module.pack_into(weight.double(), torch.empty(3, 24, 16), 0)


def test_exp_is_within_two_ulps_of_float64_and_exact_at_the_ends(module):
    """The fused step's e^x (softmax, SiLU) over float32's normal range; 0 for -inf (masked positions get exactly
    no weight) and below the normal range, inf above it, NaN kept."""
    x = torch.linspace(-87.3, 88.7, 200_001)
    exact = torch.exp(x.double())
    ulp = 2.0 ** (torch.floor(torch.log2(exact)) - 23)
    assert ((module.exp(x).double() - exact).abs() / ulp).max() <= 2.0
    ends = module.exp(torch.tensor([float("-inf"), -1e4, -88.0, float("inf"), 1e4, float("nan"), 0.0]))
    assert ends[:3].tolist() == [0.0, 0.0, 0.0] and ends[3:5].isinf().all() and ends[5].isnan() and ends[6] == 1.0


def _decoder(module, layers=1, hidden=32, heads=4, kv_heads=2, dim=8, intermediate=48, vocab=40):
    decoder = module.Decoder(hidden, heads, kv_heads, dim, intermediate, 1e-6, 0.0)
    packed = (lambda n, k: module.pack(torch.randn(n, k)))
    for _ in range(layers):
        decoder.add_layer(torch.ones(hidden), packed((heads + 2 * kv_heads) * dim, hidden), None, None, None,
                          packed(hidden, heads * dim), None, torch.ones(hidden), packed(2 * intermediate, hidden),
                          None, packed(hidden, intermediate), None)
    decoder.set_head(torch.ones(hidden), packed(vocab, hidden), vocab, None)
    return decoder


def test_decoder_refuses_weights_and_caches_that_do_not_fit(module):
    """Shapes are checked where the weights are handed over and at every step (the kernel writes into the cache)."""
    with pytest.raises(RuntimeError, match="do not group"):
        module.Decoder(32, 4, 3, 8, 48, 1e-6, 0.0)
    decoder = module.Decoder(32, 4, 2, 8, 48, 1e-6, 0.0)
    with pytest.raises(RuntimeError, match="qkv"):  # q|k|v packed for another width
        decoder.add_layer(torch.ones(32), module.pack(torch.randn(40, 32)), None, None, None,
                          module.pack(torch.randn(32, 32)), None, torch.ones(32), module.pack(torch.randn(96, 32)),
                          None, module.pack(torch.randn(32, 48)), None)
    with pytest.raises(RuntimeError, match="set_head"):
        decoder.step(torch.randn(2, 32), [], [], 0, torch.ones(2, 8), torch.zeros(2, 8), torch.zeros(2, 1, 1, 1))
    decoder = _decoder(module)
    h, cos, sin = torch.randn(2, 32), torch.ones(2, 8), torch.zeros(2, 8)
    cache = [torch.zeros(2, 2, 6, 8)]
    assert decoder.step(h, cache, [torch.zeros(2, 2, 6, 8)], 3, cos, sin, torch.zeros(2, 1, 1, 4)).shape == (2, 40)
    with pytest.raises(RuntimeError, match="cannot take position 6"):
        decoder.step(h, cache, [torch.zeros(2, 2, 6, 8)], 6, cos, sin, torch.zeros(2, 1, 1, 7))
    with pytest.raises(RuntimeError, match="float32"):
        decoder.step(h, [cache[0].bfloat16()], [torch.zeros(2, 2, 6, 8)], 3, cos, sin, torch.zeros(2, 1, 1, 4))
    with pytest.raises(RuntimeError, match="mask"):
        decoder.step(h, cache, [torch.zeros(2, 2, 6, 8)], 3, cos, sin, torch.zeros(2, 1, 1, 5))
    with pytest.raises(RuntimeError, match="1 layers"):
        decoder.step(h, cache * 2, [torch.zeros(2, 2, 6, 8)] * 2, 3, cos, sin, torch.zeros(2, 1, 1, 4))
    bf16 = module.Decoder(32, 4, 2, 8, 48, 1e-6, 0.0, bf16=True)  # oneDNN-packed bf16 weights only
    with pytest.raises(RuntimeError, match="packed by torch.ops.mkldnn"):
        bf16.set_head(torch.ones(32), module.pack(torch.randn(40, 32)), 40, None)
