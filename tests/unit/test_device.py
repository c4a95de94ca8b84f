"""run.device and model.precision: resolution, the errors that name the key, DeepSpeed's bf16 mapping, and a
check that hot-path modules hard-code no device."""

import json
import re
from pathlib import Path

import pytest
import torch

from rlft.cli import main
from rlft.config import ConfigError, load_config
from rlft.utils import device as dev
from rlft.utils.device import Compute, resolve_compute, resolve_device, resolve_precision, weights_dtype

REPO = Path(__file__).resolve().parents[2]
RAY = ["cluster.backend=ray", "cluster.learner=torch"]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(no_cuda, monkeypatch):
    assert resolve_device(load_config(None, [])) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(load_config(None, [])) == torch.device("cuda")
    assert resolve_device(load_config(None, ["run.device=cpu"])) == torch.device("cpu")


@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error_naming_run_device(no_cuda, value):
    with pytest.raises(ConfigError, match=rf"run.device={value}, but CUDA is not available"):
        resolve_device(load_config(None, [f"run.device={value}"]))


def test_a_missing_cuda_index_is_an_error(one_gpu):
    assert resolve_device(load_config(None, ["run.device=cuda:0"])) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"run.device=cuda:1, but this machine has 1 CUDA device"):
        resolve_device(load_config(None, ["run.device=cuda:1"]))


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "CPU", "mps"])
def test_unknown_device_forms_fail_at_load(value):
    with pytest.raises(ConfigError, match=r"run.device=.* is not one of auto, cpu, cuda, cuda:N"):
        load_config(None, [f"run.device={value}"])


def test_rlft_sft_on_cuda_without_cuda_prints_one_line(no_cuda, tmp_path, capsys):
    assert main(["sft", f"run.dir={tmp_path}", "run.device=cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlft: error: run.device=cuda, but CUDA is not available")


def test_auto_precision_follows_the_hardware(monkeypatch, one_gpu):
    cfg = load_config(None, [])
    assert resolve_precision(cfg, torch.device("cuda"))[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(cfg, torch.device("cuda")) == ("fp32", "auto: this GPU has no bf16")
    monkeypatch.delenv("RLFT_CPU_FAST_BF16", raising=False)
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert resolve_precision(cfg, torch.device("cpu")) == ("bf16-mixed", "auto: CPU flags: amx_bf16")
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert resolve_precision(cfg, torch.device("cpu"))[0] == "fp32"
    monkeypatch.setenv("RLFT_CPU_FAST_BF16", "1")  # the override wins over the flags
    assert resolve_precision(cfg, torch.device("cpu")) == ("bf16-mixed", "auto: RLFT_CPU_FAST_BF16=1")
    assert resolve_precision(load_config(None, ["model.precision=fp32"]), torch.device("cpu")) == ("fp32", "")


def test_the_test_suite_pins_auto_to_fp32_on_this_cpu():
    """tests/conftest.py sets RLFT_CPU_FAST_BF16=0: exact-number tests must not change on an AMX CPU."""
    assert resolve_compute(load_config(None, ["run.device=cpu"])).precision == "fp32"


def test_weights_dtype_auto_keeps_fp32_masters_and_bf16_frozen_copies():
    cfg = load_config(None, [])
    mixed, fp32 = Compute(torch.device("cpu"), "bf16-mixed"), Compute(torch.device("cpu"), "fp32")
    assert [weights_dtype(cfg, mixed, trains=t) for t in (True, False)] == ["float32", "bfloat16"]
    assert [weights_dtype(cfg, fp32, trains=t) for t in (True, False)] == ["float32", "float32"]
    cfg = load_config(None, ["model.dtype=float32", "model.precision=bf16-mixed"])
    assert weights_dtype(cfg, mixed, trains=False) == "float32"


def test_pure_bf16_weights_are_refused_for_training(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.precision=fp32 cannot take effect"):
        load_config(None, ["model.dtype=bfloat16", "model.precision=fp32"])
    for command in (["sft"], ["train", "algo=grpo", "rollout.samples_per_prompt=2"]):
        assert main([*command, f"run.dir={tmp_path / command[0]}", "model.dtype=bfloat16", "data.n_train=8",
                     "data.n_test=2"]) == 2
        err = capsys.readouterr().err
        assert "rlft: error: model.dtype=bfloat16 trains pure bf16 weights" in err and "bf16-mixed" in err


def test_flash_attention_needs_cuda():
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA only"):
        load_config(None, ["model.attn_implementation=flash_attention_2", "run.device=cpu"])
    cfg = load_config(None, ["model.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA only"):
        resolve_compute(cfg, torch.device("cpu"))


def test_flash_attention_not_installed_is_a_one_line_load_error(tmp_path, warm_model, monkeypatch):
    import importlib.util

    from rlft.models.loading import ModelLoadError, load_policy

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ModelLoadError, match="model.attn_implementation=flash_attention_2 needs the flash-attn package"):
        load_policy(warm_model, attn_implementation="flash_attention_2")


def test_reference_device_needs_a_frozen_reference():
    assert load_config(None, ["kl.reference_device=cpu"]).kl.reference_device == "cpu"
    with pytest.raises(ConfigError, match="adapter.kind=lora's reference is the policy itself"):
        load_config(None, ["kl.reference_device=cpu", "adapter.kind=lora"])
    with pytest.raises(ConfigError, match="algo=dapo with kl.coef=0.0 has no reference"):
        load_config(None, ["kl.reference_device=cpu", "algo=dapo", "rollout.samples_per_prompt=2"])


def test_ray_devices_follow_the_bundles():
    with pytest.raises(ConfigError, match="run.device=cuda with cluster.backend=ray needs GPUs"):
        load_config(None, [*RAY, "run.device=cuda"])
    with pytest.raises(ConfigError, match="cluster.gpus_per_worker=1 reserves GPUs, but run.device=cpu"):
        load_config(None, [*RAY, "run.device=cpu", "cluster.gpus_per_worker=1"])
    with pytest.raises(ConfigError, match="run.device=cuda:1: with cluster.backend=ray"):
        load_config(None, [*RAY, "run.device=cuda:1", "cluster.gpus_per_worker=1"])
    # An actor resolves to what its bundle holds, whether or not the driver has a GPU.
    assert resolve_device(load_config(None, [*RAY, "cluster.gpus_per_worker=1"])) == torch.device("cuda")
    assert resolve_device(load_config(None, RAY)) == torch.device("cpu")


def test_a_cpu_reference_takes_no_gpu_share():
    pytest.importorskip("ray")
    from rlft.dist.ray_roles import plan_bundles

    cfg = load_config(None, [*RAY, "cluster.placement=colocated", "cluster.gpus_per_worker=1", "kl.reference_device=cpu"])
    bundles, where = plan_bundles(cfg)
    assert bundles == [{"CPU": 3.0, "GPU": 1.0}]
    assert where["learner"] == [(0, 0.5)] and where["rollout"] == [(0, 0.5)] and where["reference"] == [(0, 0.0)]


def test_deepspeed_bf16_follows_model_precision(tmp_path):
    source = "cluster.deepspeed_config x.json"
    assert dev.deepspeed_bf16({}, "bf16-mixed", source) is True
    assert dev.deepspeed_bf16({"bf16": {"enabled": False}}, "fp32", source) is False
    with pytest.raises(ConfigError, match=r"x.json sets bf16.enabled=true, but model.precision resolves to fp32"):
        dev.deepspeed_bf16({"bf16": {"enabled": True}}, "fp32", source)
    with pytest.raises(ConfigError, match="enables fp16"):
        dev.deepspeed_bf16({"fp16": {"enabled": True}}, "bf16-mixed", source)
    # an explicit precision is checked against the file when the config loads
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="bf16.enabled=true, but model.precision resolves to fp32"):
        load_config(None, [*RAY, "cluster.learner=deepspeed", f"cluster.deepspeed_config={ds}", "model.precision=fp32"])
    load_config(None, [*RAY, "cluster.learner=deepspeed", f"cluster.deepspeed_config={ds}", "model.precision=bf16-mixed"])
    for shipped in sorted((REPO / "configs" / "deepspeed").glob("*.json")):  # rlft sets their precision
        assert "bf16" not in json.loads(shipped.read_text()) and "fp16" not in json.loads(shipped.read_text()), shipped


def test_deepspeed_engine_config_gets_bf16():
    pytest.importorskip("deepspeed")
    from rlft.learner.deepspeed_learner import build_engine_config

    base = {"zero_optimization": {"stage": 2}, "bf16": {"immediate_grad_update": True}}
    out = build_engine_config(base, lr=1e-5, weight_decay=0.0, max_grad_norm=1.0, world_size=2, bf16=True)
    assert out["bf16"] == {"immediate_grad_update": True, "enabled": True}
    assert build_engine_config({}, lr=1e-5, weight_decay=0.0, max_grad_norm=1.0, world_size=1)["bf16"] == {"enabled": False}


# Modules that run every batch. A device written into them would pin that role to it whatever run.device says.
HOT_PATHS = ["rlft/learner", "rlft/rollout/hf_engine.py", "rlft/rollout/decode.py", "rlft/rollout/llama_step.py",
             "rlft/models/policy.py", "rlft/trainers", "rlft/evaluate.py", "rlft/dist/local.py", "rlft/adapters",
             "rlft/algos", "rlft/reward/role.py", "rlft/types.py"]
HARD_CODED = re.compile(r"""\.cpu\(\)|\.cuda\(|["'](cpu|cuda)(:\d+)?["']|torch\.device\(""")
ALLOWED = {  # (file, text on the line): why this place may name a device
    ("rlft/learner/torch_learner.py", '# to host'): "results to the CPU: the loop's bookkeeping",
    ("rlft/learner/torch_learner.py", 'map_location="cpu"'): "a checkpoint is read to the CPU, then moved",
    ("rlft/learner/torch_learner.py", 'p.device.type in ("cpu", "cuda")'): "where torch's fused AdamW runs",
    ("rlft/rollout/hf_engine.py", 'v.to("cpu", copy=True)'): "the rollout batch to the CPU: the loop's bookkeeping",
    ("rlft/rollout/llama_step.py", '"cpu"'): "MKL's packed GEMMs are a CPU-only fast path",
    ("rlft/learner/deepspeed_learner.py", "torch.device("): "NCCL takes CUDA tensors, gloo CPU ones",
    ("rlft/evaluate.py", "# to host"): "value scores to the CPU, for the checker",
    ("rlft/evaluate.py", "batch.prompt_index.cpu()"): "compared with a CPU range",
    ("rlft/evaluate.py", "rank_fn(batch).float().cpu()"): "scores to the CPU, for the checker",
}


def test_hot_paths_hard_code_no_device():
    """Breaks when a module that runs every batch names a device (or moves to the host) anywhere but the
    documented places: the bug class this issue fixed (models and batches silently kept on the CPU)."""
    files = [p for entry in HOT_PATHS for p in ((REPO / entry).rglob("*.py") if (REPO / entry).is_dir() else [REPO / entry])]
    assert len(files) > 30
    found = []
    for path in files:
        rel = str(path.relative_to(REPO))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith(('"', "'")) else ""
            if HARD_CODED.search(code) and not any(rel == f and text in line for f, text in ALLOWED):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "hard-coded devices:\n" + "\n".join(found)


def test_the_allowlist_is_used():
    """Every allowed place still exists (a stale entry would hide a new one on the same text)."""
    for (rel, text), why in ALLOWED.items():
        assert text in (REPO / rel).read_text(), (rel, text, why)


def test_compare_reuses_runs_saved_before_device_and_precision_existed(tmp_path):
    """A finished compare run whose config.yaml predates run.device / model.precision (and said dtype float32)
    ran on the CPU in fp32: the same run as `model.precision=fp32` now; a bf16-mixed run is not."""
    import yaml

    from rlft.config import to_dict
    from rlft.experiments.compare import StaleRunError, check_same_run

    old = to_dict(load_config(None, []))
    del old["run"]["device"], old["model"]["precision"], old["model"]["gradient_checkpointing"], \
        old["model"]["attn_implementation"], old["kl"]["reference_device"]
    old["model"]["dtype"] = "float32"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_same_run(tmp_path, load_config(None, ["model.precision=fp32"]))
    check_same_run(tmp_path, load_config(None, ["model.precision=fp32", "model.dtype=float32", "run.device=cpu"]))
    with pytest.raises(StaleRunError, match="model.precision: 'fp32' -> 'bf16-mixed'"):
        check_same_run(tmp_path, load_config(None, ["model.precision=bf16-mixed"]))


def test_compare_reuses_runs_saved_when_packing_was_true(tmp_path):
    """Runs saved while `sft.packing` / `ppo.packing` were booleans defaulting to true packed: the same run as the
    `auto` default now; a padded run (false) is not."""
    import yaml

    from rlft.config import to_dict
    from rlft.experiments.compare import StaleRunError, check_same_run

    old = to_dict(load_config(None, ["sft.packing=true", "ppo.packing=true"]))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_same_run(tmp_path, load_config(None, []))
    with pytest.raises(StaleRunError, match="ppo.packing: 'auto' -> False"):
        check_same_run(tmp_path, load_config(None, ["ppo.packing=false"]))
