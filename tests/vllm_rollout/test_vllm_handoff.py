"""A ReFT checkpoint's `model/` folder loads in vLLM as it is (the value head beside the weights is listed out
by `model.safetensors.index.json`; vLLM would otherwise read every `*.safetensors` of the folder) and decodes
greedily like transformers. The folder goes straight to `vllm.LLM` through rlft's engine, which also sets the
CPU backend's options and shuts the engine down. Runs in the vLLM venv (`make test-vllm`); skipped without vllm."""

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlft.config import load_config  # noqa: E402
from rlft.rollout.base import SamplingParams  # noqa: E402
from rlft.rollout.vllm_engine import VLLMRolloutEngine  # noqa: E402
from rlft.trainers.ppo import run_ppo  # noqa: E402

OVERRIDES = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.max_new_tokens=12",
    "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=8", "ppo.iterations=1", "ppo.eval_every=1",
    "ppo.save_every=1", "log.progress=false", "log.tensorboard=false",
]


def test_reft_checkpoint_model_folder_loads_in_vllm_as_is(tmp_path, tiny_model, prompts):
    summary = run_ppo(load_config(None, [f"run.dir={tmp_path}", f"model.path={tiny_model}", *OVERRIDES]))
    model_dir = tmp_path / "checkpoints" / "ckpt-1" / "model"
    assert summary["final_checkpoint"] == str(model_dir.parent) and (model_dir / "value_head.safetensors").exists()

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    engine = VLLMRolloutEngine(model_dir, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                               kv_cache_memory_bytes=256 << 20)
    try:
        batch = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    finally:
        engine.close()
    for prompt, ids, mask in zip(prompts, batch.response_ids, batch.response_mask):
        with torch.no_grad():
            expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, len(prompt):]
        assert ids[mask.bool()].tolist() == expected.tolist()
