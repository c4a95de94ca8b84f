"""The precision handling of the throughput benchmarks (issue 23): `--precision` and its default, each side's
setting for a precision (rlft overrides, TRL configs), the ceiling a precision is measured against, the rlft / TRL
ratios within a precision and with each side in its best one, and the GEMM dtype probe. No benchmark runs here."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, which import their siblings (peers, ceilings) by name."""
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in ("peers", "ceilings", "ppo_throughput", "sft_throughput")}
    finally:
        sys.path.remove(str(BENCH))


# ----------------------------------------------------------------------------------------------------
# --precision


def test_default_precisions_follow_rlfts_cpu_probe(bench, monkeypatch):
    peers = bench["peers"]
    monkeypatch.setenv("RLFT_CPU_FAST_BF16", "1")
    assert peers.precisions_of(None) == ("fp32", "bf16-mixed")
    monkeypatch.setenv("RLFT_CPU_FAST_BF16", "0")
    assert peers.precisions_of(None) == ("fp32",)
    assert peers.precisions_of("both") == ("fp32", "bf16-mixed")  # asked for: both, whatever the CPU
    assert peers.precisions_of("bf16-mixed") == ("bf16-mixed",)
    with pytest.raises(ValueError, match="--precision 'bf16'"):
        peers.precisions_of("bf16")


def test_precision_argument(bench):
    parser = argparse.ArgumentParser()
    bench["peers"].add_precision_argument(parser)
    assert parser.parse_args([]).precision is None
    assert parser.parse_args(["--precision", "both"]).precision == "both"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])


@pytest.mark.parametrize("module", ["ppo_throughput", "sft_throughput"])
@pytest.mark.parametrize("precision", [[], ["--precision", "both"]])
def test_a_child_runs_exactly_one_precision(bench, module, precision, monkeypatch, capsys):
    only = "rlft-grpo" if module == "ppo_throughput" else "rlft"
    monkeypatch.setattr(sys, "argv", [f"{module}.py", "--only", only, *precision])
    with pytest.raises(SystemExit):
        bench[module].main()
    assert "runs one precision" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Each side's setting for a precision


@pytest.mark.parametrize("precision, dtype", [("fp32", "float32"), ("bf16-mixed", "auto")])
def test_rlft_overrides_of_a_precision(bench, precision, dtype, tmp_path):
    from rlft.config import load_config

    peers = bench["peers"]
    s = peers.Setup(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5, seed=1,
                    precision=precision)
    for name in ("rlft-grpo", "rlft-reft"):
        overrides = peers.rlft_overrides(name, s, tmp_path / "model", tmp_path / "run")
        assert f"model.precision={precision}" in overrides and f"model.dtype={dtype}" in overrides
        cfg = load_config(None, overrides)
        assert (cfg.model.precision, cfg.model.dtype) == (precision, dtype)
    # peer_parity builds its Setup without a precision: fp32, as before
    default = peers.Setup(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5, seed=1)
    assert "model.precision=fp32" in peers.rlft_overrides("rlft-grpo", default, tmp_path, tmp_path)


def test_trl_precision_kwargs(bench):
    peers = bench["peers"]
    assert peers.trl_precision_kwargs("fp32") == {"bf16": False, "fp16": False}
    assert peers.trl_precision_kwargs("bf16-mixed") == {"bf16": True, "fp16": False}
    assert (peers.accelerate_mixed_precision("fp32"), peers.accelerate_mixed_precision("bf16-mixed")) == ("no", "bf16")
    with pytest.raises(ValueError):
        peers.trl_precision_kwargs("auto")  # the benchmarks resolve auto before they build a side


@pytest.mark.parametrize("precision, bf16", [("fp32", False), ("bf16-mixed", True)])
def test_trl_grpo_and_sft_configs_carry_the_precision(bench, precision, bf16, tmp_path):
    pytest.importorskip("trl")
    peers = bench["peers"]
    s = peers.Setup(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5, seed=1,
                    precision=precision)
    grpo = peers.trl_grpo_config(s, tmp_path / "grpo")
    args = argparse.Namespace(seed=1, micro_batch=4, batch=4, lr=1e-5, steps=3, precision=precision)
    sft = bench["sft_throughput"].sft_config(args, tmp_path / "sft")
    for config in (grpo, sft):
        assert (config.bf16, config.fp16, config.use_cpu) == (bf16, False, True)
        assert config.mixed_precision == ("bf16" if bf16 else "no")
        assert config.model_init_kwargs == {"dtype": "float32"}  # fp32 master weights either way


@pytest.mark.parametrize("precision, bf16", [("fp32", False), ("bf16-mixed", True)])
def test_trl_ppo_config_carries_the_precision(bench, precision, bf16, tmp_path, monkeypatch):
    pytest.importorskip("trl.experimental.ppo", reason="TRL 1.12's PPOTrainer lives in .venv-bench")
    import os

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # restored after the test
    peers = bench["peers"]
    s = peers.Setup(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5, seed=1,
                    precision=precision)
    config = peers.trl_ppo_config(s, tmp_path)
    assert (config.bf16, config.fp16) == (bf16, False)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == ("bf16" if bf16 else "no")


def test_matmul_ceiling_of_a_precision(bench):
    c = {"matmul_fp32_flops": 300e9, "matmul_bf16_flops": 1400e9}
    assert bench["ceilings"].matmul_ceiling(c, "fp32") == 300e9
    assert bench["ceilings"].matmul_ceiling(c, "bf16-mixed") == 1400e9
    with pytest.raises(ValueError):
        bench["ceilings"].matmul_ceiling(c, "bf16")


# ----------------------------------------------------------------------------------------------------
# Ratios: within a precision, and each side in its best


def summary(samples_per_s, rss, train=0.5):
    return {"samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * 60, "peak_rss_mib": rss,
            "rollout": 0.4, "logprobs": 0.1, "reward": 0.0, "train": train, "other": 0.01}


SUMMARIES = {
    "fp32": {"rlft-grpo": summary(30.0, 800), "trl-grpo": summary(20.0, 1000), "rlft-reft": summary(25.0, 900)},
    "bf16-mixed": {"rlft-grpo": summary(36.0, 820, train=0.25), "trl-grpo": summary(18.0, 1100),
                   "rlft-reft": summary(24.0, 950)},
}


def test_best_precision_is_the_faster_one_per_side(bench):
    pt = bench["ppo_throughput"]
    assert pt.best_precision(SUMMARIES, "rlft-grpo") == "bf16-mixed"
    assert pt.best_precision(SUMMARIES, "trl-grpo") == "fp32"  # TRL slower under bf16 here
    assert pt.best_precision(SUMMARIES, "trl-ppo") is None


def test_comparisons_within_a_precision_and_each_in_its_best(bench):
    pt = bench["ppo_throughput"]
    cs = pt.comparisons(SUMMARIES)
    assert [(c["rlft"], c["trl"], c["best"]) for c in cs] == [
        (("rlft-grpo", "fp32"), ("trl-grpo", "fp32"), False),
        (("rlft-grpo", "bf16-mixed"), ("trl-grpo", "bf16-mixed"), False),
        (("rlft-grpo", "bf16-mixed"), ("trl-grpo", "fp32"), True),
    ]  # no rlft-reft / trl-ppo pair: trl-ppo did not run
    fp32, bf16, best = cs
    assert fp32["samples_per_s"] == pytest.approx(1.5) and fp32["peak_rss"] == pytest.approx(0.8)
    assert bf16["samples_per_s"] == pytest.approx(2.0) and bf16["phases"]["train"] == pytest.approx(0.5)
    assert best["samples_per_s"] == pytest.approx(36 / 20) and best["peak_rss"] == pytest.approx(0.82)
    assert not pt.meets_target(best)  # 1.8x < 2x
    assert pt.meets_target({"samples_per_s": 2.0, "peak_rss": 1.0})
    assert not pt.meets_target({"samples_per_s": 2.5, "peak_rss": 1.01})  # more memory than TRL
    assert pt.precision_speedups(SUMMARIES) == pytest.approx({"rlft-grpo": 1.2, "trl-grpo": 0.9, "rlft-reft": 0.96})
    # one precision only: the "best" entry is that precision's
    only = pt.comparisons({"fp32": SUMMARIES["fp32"]})
    assert [(c["rlft"][1], c["trl"][1], c["best"]) for c in only] == [("fp32", "fp32", False), ("fp32", "fp32", True)]
    assert pt.precision_speedups({"fp32": SUMMARIES["fp32"]}) == {}


def fake_run(name, samples_per_s, rss, precision):
    """A child's result as `summarize` reads it: a warm-up step and two timed ones."""
    samples = 4
    step = {"seconds": samples / samples_per_s, "samples": samples, "tokens": samples * 8.0, "rollout": 0.05,
            "logprobs": 0.02, "reward": 0.001, "train": 0.05, "other": 0.01}
    dtypes = {"policy_dtype": "torch.float32",
              "reference_dtype": "bfloat16" if precision == "bf16-mixed" and name.startswith("rlft") else "float32"}
    return {"steps": [step, step, step], "peak_rss_mib": rss, "torch_threads": 2, "setup": dtypes}


def test_report_names_each_sides_precision_and_the_best_ratio(bench):
    pt = bench["ppo_throughput"]
    results = {p: {"rlft-grpo": fake_run("rlft-grpo", 40.0 if p == "bf16-mixed" else 30.0, 700, p),
                   "trl-grpo": fake_run("trl-grpo", 20.0 if p == "bf16-mixed" else 15.0, 900, p)}
               for p in ("fp32", "bf16-mixed")}
    args = argparse.Namespace(prompts=2, group=2, max_new_tokens=8, steps=3, lr=1e-5, seed=1, rlft_set=[],
                              model_size="tiny", peer_allocator="default")
    text = pt.report(args, results, "cmd", "same prompt token ids on both sides")
    assert "| rlft-grpo | bf16-mixed | policy fp32, ref bf16 | GRPO" in text
    assert "| trl-grpo | bf16-mixed | policy fp32, ref fp32 | GRPO" in text
    assert "fp32: rlft-grpo / trl-grpo: 2.00x samples/s" in text
    assert "bf16-mixed: rlft-grpo / trl-grpo: 2.00x samples/s" in text
    assert ("**Each in its best precision, rlft-grpo (bf16-mixed) / trl-grpo (bf16-mixed): 2.00x samples/s, "
            "2.00x completion tokens/s, 0.78x peak RSS** (meets issue 23's target") in text
    assert "bf16-mixed / fp32, samples/s of the same run: rlft-grpo 1.33x, trl-grpo 1.33x." in text


def test_sft_comparisons(bench):
    sft = bench["sft_throughput"]
    by_precision = {"fp32": {"rlft": {"tokens_per_s": 3000.0, "peak_rss_mib": 500},
                             "trl": {"tokens_per_s": 2000.0, "peak_rss_mib": 700}},
                    "bf16-mixed": {"rlft": {"tokens_per_s": 4500.0, "peak_rss_mib": 520},
                                   "trl": {"tokens_per_s": 1800.0, "peak_rss_mib": 720}}}
    cs = sft.comparisons(by_precision)
    assert [(c["rlft"], c["trl"], c["best"]) for c in cs] == [
        ("fp32", "fp32", False), ("bf16-mixed", "bf16-mixed", False), ("bf16-mixed", "fp32", True)]
    assert cs[2]["tokens_per_s"] == pytest.approx(2.25) and cs[2]["peak_rss"] == pytest.approx(520 / 700)
    result = {"steps": [{"seconds": 1.0, "tokens": 1000, "sequences": 8}] * 3, "peak_rss_mib": 500,
              "setup": {"trainable_params": 1_000_000}}
    ceilings = {"matmul_fp32_flops": 100e9, "matmul_bf16_flops": 400e9}
    # MFU against the ceiling of the precision the run ran in: 6 x 1e6 x 1000 tokens/s = 6 GFLOP/s
    assert sft.summarize(result, 1, ceilings, "fp32")["mfu"] == pytest.approx(0.06)
    assert sft.summarize(result, 1, ceilings, "bf16-mixed")["mfu"] == pytest.approx(0.015)
    assert "gemm_only_mfu" not in sft.summarize(result, 1, ceilings, "fp32")
    # the step's shape bound: 6 x 1e6 x 1000 tokens per step in 0.5 s of matrix products = 12 GFLOP/s
    bounded = sft.summarize({**result, "gemm_only_step_seconds": 0.5}, 1, ceilings, "fp32")
    assert bounded["gemm_only_mfu"] == pytest.approx(0.12) and sft.bound_cell(bounded) == "12.0%"


def test_gemm_only_seconds_covers_the_decoders_linear_layers(bench, monkeypatch):
    """Every linear layer's three products per layer at the model's own (GQA) widths, the LM head at its rows."""
    ceilings = bench["ceilings"]
    from types import SimpleNamespace

    config = SimpleNamespace(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=None, num_hidden_layers=3, vocab_size=300)
    assert ceilings.decoder_linear_shapes(config) == [(64, 64), (32, 64), (32, 64), (64, 64), (160, 64), (160, 64),
                                                      (64, 160)]
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(ceilings.torch, "mm", lambda a, b: calls.append((tuple(a.shape), tuple(b.shape), a.dtype))
                        or real_mm(a, b))
    seconds = ceilings.gemm_only_seconds(config, tokens=10, head_rows=4, dtype=torch.bfloat16, repeats=1)
    assert seconds > 0
    per_call = 3 * (7 * 3 + 1)  # forward, input gradient, weight gradient; 7 linears x 3 layers + the LM head
    assert len(calls) == 2 * per_call  # warm-up + one timed repeat
    assert calls[:3] == [((10, 64), (64, 64), torch.bfloat16), ((10, 64), (64, 64), torch.bfloat16),
                         ((64, 10), (10, 64), torch.bfloat16)]
    assert calls[per_call - 3:per_call] == [((4, 64), (64, 300), torch.bfloat16), ((4, 300), (300, 64), torch.bfloat16),
                                            ((300, 4), (4, 64), torch.bfloat16)]


# ----------------------------------------------------------------------------------------------------
# The GEMM dtype probe


def test_gemm_probe_sees_the_dtypes_autocast_gives_the_kernels(bench):
    peers = bench["peers"]
    probe = peers.GemmDtypes()
    x, w = torch.randn(4, 8), torch.randn(3, 8, requires_grad=True)
    with probe.mode():
        torch.nn.functional.linear(x, w)  # grad on: forward (grad), fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.linear(x, w)  # bf16 after autocast's cast
        with torch.no_grad():
            torch.nn.functional.linear(x, w)
        probe.depth["backward"] += 1
        y.sum().backward()
        probe.depth["backward"] -= 1
        probe.depth["generate"] += 1
        with torch.no_grad():
            x.relu()  # not a matrix product: not counted
        probe.depth["generate"] -= 1
    got = probe.summary()
    assert set(got) == {"forward (grad)", "forward (no grad)", "backward"}
    assert got["forward (grad)"] == {"float32": 1, "bfloat16": 1}
    assert got["forward (no grad)"] == {"float32": 1}
    assert set(got["backward"]) == {"bfloat16"}  # the backward of a bf16 product runs in bf16
    assert peers.gemm_dtypes_cell({"float32": 2, "bfloat16": 116}) == "bfloat16: 116, float32: 2"
    assert peers.gemm_dtypes_cell(None) == "-"


# ----------------------------------------------------------------------------------------------------
# host memory of each side (--peer-allocator)


def test_peer_allocator_sets_trl_sides_only(bench, monkeypatch):
    peers = bench["peers"]
    monkeypatch.delenv("RLFT_KEEP_FREED_MEMORY", raising=False)
    assert "RLFT_KEEP_FREED_MEMORY" not in peers.side_env("rlft-grpo")  # rlft: its own default (keep)
    assert peers.side_env("trl-grpo")["RLFT_KEEP_FREED_MEMORY"] == "0"  # TRL as its users run it
    assert peers.side_env("trl-ppo", "same")["RLFT_KEEP_FREED_MEMORY"] == "1"  # one allocator for both
    assert peers.side_env("trl", "same")["RLFT_KEEP_FREED_MEMORY"] == "1"  # sft_throughput's side name
    assert "RLFT_KEEP_FREED_MEMORY" not in peers.side_env("rlft", "same")
    with pytest.raises(ValueError, match="peer_allocator"):
        peers.side_env("trl-grpo", "jemalloc")
    parser = argparse.ArgumentParser()
    peers.add_peer_allocator_argument(parser)
    assert parser.parse_args([]).peer_allocator == "default"
    assert parser.parse_args(["--peer-allocator", "same"]).peer_allocator == "same"
    assert "RLFT_KEEP_FREED_MEMORY=1" in peers.peer_allocator_note("same")


def test_huge_pages_are_the_users_setting_and_reach_both_sides(bench, monkeypatch):
    from rlft.utils import memory

    peers = bench["peers"]
    monkeypatch.delenv(memory.HUGE_PAGES_ENV, raising=False)
    assert memory.HUGE_PAGES_ENV not in peers.side_env("rlft-grpo")  # rlft's policy does not set them
    assert memory.HUGE_PAGES_ENV not in peers.side_env("trl-grpo")
    assert "huge pages" not in peers.peer_allocator_note("default")
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "1")  # the user's own setting: one allocator switch for both
    for side in ("rlft-grpo", "trl-grpo"):
        assert peers.side_env(side)[memory.HUGE_PAGES_ENV] == "1"
    note = peers.peer_allocator_note("default")
    assert "on huge pages (THP_MEM_ALLOC_ENABLE=1, set in this environment: both sides)" in note
    assert "TRL: glibc's defaults (RLFT_KEEP_FREED_MEMORY=0)" in note
