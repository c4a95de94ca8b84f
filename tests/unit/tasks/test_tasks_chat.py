"""`data.prompt_format=chat` on a tiny trained tokenizer with templates attached here: which tokens SFT labels,
the prompt boundary shared with sampling, and the errors. The real SmolLM2 template: tests/integration/test_chat_format.py."""

import copy

import pytest

from rlft.config import ConfigError, load_config
from rlft.models.tiny import train_tokenizer
from rlft.tasks import load_records
from rlft.tasks.base import Record
from rlft.tasks.chat import REFT, ChatTemplateError, PromptFormat, chat_messages
from rlft.tasks.encoding import IGNORE, encode_examples, encode_prompts
from rlft.tasks.prompts import program_prefix, prompt_text, target_text

# Role markers are plain text here (the tiny tokenizer splits them into BPE pieces); each turn ends with EOS.
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CHAT = PromptFormat("chat")


@pytest.fixture(scope="module")
def records():
    return load_records("arithmetic", "train", n_train=6, difficulty=0)


@pytest.fixture(scope="module")
def base_tokenizer(records):
    texts = [prompt_text(r, s) + target_text(r, s) for r in records for s in ("nl", "program")]
    return train_tokenizer(texts * 4 + [TEMPLATE], vocab_size=300)


def with_template(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def labelled(example):
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]


@pytest.mark.parametrize("style", ["nl", "program"])
def test_labels_are_the_reply_and_eos_and_the_prompt_is_what_sampling_sees(base_tokenizer, records, style):
    tok = with_template(base_tokenizer, TEMPLATE)
    examples, _ = encode_examples(tok, records, style, 512, fmt=CHAT)
    prompts = encode_prompts(tok, records, style, fmt=CHAT)
    for r, e, p in zip(records, examples, prompts):
        target = tok(target_text(r, style), add_special_tokens=False)["input_ids"]
        assert labelled(e) == target + [tok.eos_token_id]  # role markers, user turn and "\n" after EOS: masked
        assert e["input_ids"][:len(p)] == p and e["labels"][:len(p)] == [IGNORE] * len(p)  # the sampling boundary
        reply = (program_prefix(r.question) if style == "program" else "") + target_text(r, style)
        rendered = tok.apply_chat_template(chat_messages(r) + [{"role": "assistant", "content": reply}], tokenize=False)
        assert tok.decode(e["input_ids"]) == rendered[:-1]  # the template's text, minus the "\n" after EOS


def test_reft_format_is_unchanged(base_tokenizer, records):
    examples, _ = encode_examples(base_tokenizer, records, "nl", 512)
    assert examples == encode_examples(base_tokenizer, records, "nl", 512, fmt=REFT)[0]
    r, e = records[0], examples[0]
    ids = base_tokenizer(prompt_text(r), add_special_tokens=False)["input_ids"]
    assert e["input_ids"][:len(ids)] == ids and labelled(e) == base_tokenizer(target_text(r), add_special_tokens=False)["input_ids"] + [base_tokenizer.eos_token_id]


@pytest.mark.parametrize("end, extra", [("\n\n", ""), ("<end>\n", "<end>")])
def test_end_of_turn_without_eos_gets_eos(base_tokenizer, records, end, extra):
    tok = with_template(base_tokenizer, TEMPLATE.replace("{{ eos_token }}\n", end))
    example = encode_examples(tok, records[:1], "nl", 512, fmt=CHAT)[0][0]
    expected = tok(target_text(records[0]), add_special_tokens=False)["input_ids"]
    expected += (tok(extra, add_special_tokens=False)["input_ids"] if extra else []) + [tok.eos_token_id]
    assert labelled(example) == expected


def test_targets_override_is_framed_the_same_way(base_tokenizer, records):
    tok = with_template(base_tokenizer, TEMPLATE)
    example = encode_examples(tok, records[:1], "nl", 512, targets=["a sampled reply"], fmt=CHAT)[0][0]
    assert labelled(example) == tok("a sampled reply", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_no_chat_template_is_a_one_line_error(base_tokenizer, records):
    with pytest.raises(ChatTemplateError) as info:
        encode_prompts(base_tokenizer, records, "nl", fmt=CHAT)
    message = str(info.value)
    assert "\n" not in message and "needs a tokenizer with a chat template" in message
    assert message.endswith("(use data.prompt_format=reft)")


def test_a_template_that_rewrites_the_reply_is_an_error(base_tokenizer, records):
    rewriting = TEMPLATE.replace("{{ m['content'] }}", "{{ '[reply] ' if m['role'] == 'assistant' else '' }}{{ m['content'] }}")
    tok = with_template(base_tokenizer, rewriting)
    with pytest.raises(ChatTemplateError, match=f"record {records[0].id}: the chat template"):
        encode_examples(tok, records, "nl", 512, fmt=CHAT)


def test_conversation_and_system_prompt():
    plain = Record(id="a", question="Q?", answer="1")
    own = Record(id="b", question="Q?", answer="1", prompt_messages=(("system", "Mine."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Q?")))
    assert chat_messages(plain) == [{"role": "user", "content": "Q?"}]
    assert chat_messages(plain, "Be brief.") == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    assert chat_messages(own, "Be brief.")[0] == {"role": "system", "content": "Mine."}  # the record's own system turn wins
    assert [m["role"] for m in chat_messages(own)] == ["system", "user", "assistant", "user"]


def test_config_keys():
    cfg = load_config(None, ["data.prompt_format=chat", "data.system_prompt=Solve it."])
    assert PromptFormat.of(cfg.data) == PromptFormat("chat", "Solve it.")
    assert PromptFormat.of(load_config().data) == REFT
    with pytest.raises(ConfigError, match="data.system_prompt cannot take effect with data.prompt_format=reft"):
        load_config(None, ["data.system_prompt=Solve it."])
    with pytest.raises(ConfigError, match="data.prompt_format"):
        load_config(None, ["data.prompt_format=chatml"])
