"""The rollout engine keys (issue 7): choices and ranges are checked when the config loads."""

import pytest

from rlft.config import ConfigError, load_config


def test_engine_keys_load():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.tensor_parallel_size=2",
                             "rollout.vllm_gpu_memory_utilization=0.3", "rollout.vllm_enable_sleep=true"])
    assert (cfg.rollout.engine, cfg.rollout.tensor_parallel_size) == ("vllm", 2)
    assert cfg.rollout.vllm_gpu_memory_utilization == 0.3 and cfg.rollout.vllm_enable_sleep is True
    assert load_config().rollout.engine == "hf"  # the default needs no vllm


@pytest.mark.parametrize("override, fragment", [
    ("rollout.engine=sglang", "is not one of"),
    ("rollout.tensor_parallel_size=0", "tensor_parallel_size"),
    ("rollout.vllm_gpu_memory_utilization=1.5", "vllm_gpu_memory_utilization"),
    ("rollout.vllm_gpu_memory_utilization=0", "vllm_gpu_memory_utilization"),
])
def test_bad_engine_values_are_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])
