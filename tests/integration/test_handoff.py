"""Hand-off: every full-finetuning checkpoint's `model/` loads with plain transformers and decodes like rlft's
engine; it carries a hub model card; a LoRA checkpoint merges into a plain model with the same logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.adapters import load_policy_and_adapter
from rlft.cli import main
from rlft.config import load_config
from rlft.models.card import SMOLLM2_HUB_ID, base_model_id, read_front_matter
from rlft.rollout.base import SamplingParams
from rlft.rollout.factory import hf_engine
from rlft.tasks import load_records
from rlft.tasks.encoding import encode_prompts
from rlft.trainers.ppo import run_ppo
from rlft.trainers.sft import run_sft

MICRO = [
    "data.difficulty=0", "data.n_train=24", "data.n_test=4", "model.tiny.hidden_size=128", "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320", "sft.sequences_per_step=8",
    "sft.micro_batch_size_per_device=8", "sft.lr=3e-3", "sft.epochs=2", "eval.max_new_tokens=16",
    "rollout.prompts_per_step=4", "rollout.max_new_tokens=16", "ppo.iterations=2", "ppo.eval_every=2",
    "ppo.save_every=2", "log.progress=false", "log.tensorboard=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An SFT warm-up and a ReFT run from it (its checkpoint holds the value head beside the model)."""
    root = tmp_path_factory.mktemp("handoff")
    sft = run_sft(load_config(None, [f"run.dir={root / 'sft'}", *MICRO]))
    reft = run_ppo(load_config(None, [f"run.dir={root / 'reft'}", *MICRO, f"model.path={sft['final_checkpoint']}"]))
    return {"sft": sft, "reft": reft}


def rlft_greedy(model_dir, prompts: list[list[int]]) -> list[list[int]]:
    lm, tokenizer, adapter = load_policy_and_adapter(model_dir)
    engine = hf_engine(load_config(None, MICRO), lm, tokenizer, adapter)
    batch = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.response_ids, batch.response_mask)]


@pytest.mark.parametrize("method", ["sft", "reft"])
def test_checkpoint_model_folder_is_a_plain_transformers_model(runs, method):
    model_dir = runs[method]["final_checkpoint"] + "/model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = encode_prompts(tokenizer, load_records("arithmetic", "test", n_test=3, difficulty=0), "nl")
    ours = rlft_greedy(model_dir, prompts)
    for prompt, expected in zip(prompts, ours):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        assert out[0, len(prompt):].tolist() == expected
    assert any(len(e) > 2 for e in ours)  # the comparison covers real decoding, not only an immediate EOS


def test_value_head_beside_the_weights_is_left_out_by_the_weight_index(runs):
    from safetensors import safe_open

    model_dir = runs["reft"]["final_checkpoint"] + "/model"
    index = json.loads(open(f"{model_dir}/model.safetensors.index.json").read())
    with safe_open(f"{model_dir}/model.safetensors", framework="pt") as f:
        assert index["weight_map"] == {k: "model.safetensors" for k in f.keys()}
    assert set(index["weight_map"].values()) == {"model.safetensors"}  # not value_head.safetensors


def test_every_checkpoint_has_a_model_card(runs):
    sft_card = runs["sft"]["final_checkpoint"] + "/model/README.md"
    meta = read_front_matter(sft_card)
    assert meta["library_name"] == "transformers" and meta["tags"][:2] == ["rlft", "sft"]
    assert "base_model" not in meta  # a tiny local model has no hub id
    text = open(sft_card).read()
    accuracy = runs["sft"]["history"][-1]["accuracy"]
    assert f"| held-out accuracy | {100 * accuracy:.1f} % greedy on `arithmetic` |" in text
    assert f"| rlft version | {__import__('rlft').__version__} |" in text and "`sft.lr`: 0.003" in text
    reft_card = runs["reft"]["final_checkpoint"] + "/model/README.md"
    meta = read_front_matter(reft_card)
    assert meta["tags"][:3] == ["rlft", "reft", "reinforcement-learning"]
    assert "KL beta 0.05 (k1, in the reward)" in open(reft_card).read()


def test_base_model_is_a_hub_id_inherited_from_the_warmup(tmp_path):
    assert base_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert base_model_id("smollm2-135m") == SMOLLM2_HUB_ID
    assert base_model_id("tiny") is None and base_model_id(str(tmp_path)) is None
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("---\nlibrary_name: transformers\nbase_model: org/base\n---\n# x\n")
    assert base_model_id(str(tmp_path)) == "org/base"  # an RL run from this warm-up names the warm-up's base


def test_lora_checkpoint_merges_into_a_plain_model_with_the_same_logits(tmp_path, runs):
    run_dir = tmp_path / "lora"
    lora = run_sft(load_config(None, [f"run.dir={run_dir}", *MICRO, "sft.epochs=1", "adapter.kind=lora",
                                      f"model.path={runs['sft']['final_checkpoint']}"]))
    ckpt = lora["final_checkpoint"]
    assert main(["model", "merge", ckpt, "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not (tmp_path / "merged" / "adapter.json").exists()
    assert "library_name" not in read_front_matter(f"{ckpt}/model/README.md")  # adapter-only: rlft's own layout
    meta = read_front_matter(tmp_path / "merged" / "README.md")
    assert meta["library_name"] == "transformers" and "lora-merged" in meta["tags"] and "adapter-lora" not in meta["tags"]
    lm, tokenizer, _ = load_policy_and_adapter(f"{ckpt}/model")
    base = AutoModelForCausalLM.from_pretrained(runs["sft"]["final_checkpoint"] + "/model").eval()
    ids = torch.tensor(encode_prompts(tokenizer, load_records("arithmetic", "test", n_test=1, difficulty=0), "nl"))
    with torch.no_grad():
        expected, got, before = lm.eval()(ids).logits, merged(ids).logits, base(ids).logits
    assert (expected - before).abs().max() > 1e-3  # the LoRA moved the model, so equality below means something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").eos_token_id == tokenizer.eos_token_id


def test_merge_refuses_what_cannot_be_merged(tmp_path, runs, capsys):
    assert main(["model", "merge", runs["sft"]["final_checkpoint"], "--out", str(tmp_path / "x")]) == 2
    assert "plain transformers model already" in capsys.readouterr().err
    (tmp_path / "loreft" / "model").mkdir(parents=True)
    (tmp_path / "loreft" / "model" / "adapter.json").write_text(json.dumps({"kind": "loreft"}))
    assert main(["model", "merge", str(tmp_path / "loreft"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loreft adapter" in err[0] and "cannot be folded into the weights" in err[0]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
