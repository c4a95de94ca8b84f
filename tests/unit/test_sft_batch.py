"""SFT batches: labels mask the prompt and padding, keep the target and EOS; order is reproducible."""

import torch

from rlft.tasks.base import Record
from rlft.tasks.prompts import prompt_text, target_text
from rlft.tasks.encoding import IGNORE, collate, encode_examples, epoch_order, truncate_targets
from rlft.models.tiny import train_tokenizer

RECORDS = [
    Record(id="a", question="Tom has 3 apples and buys 4 more. How many?", answer="7", cot="3 + 4 = 7.", dataset="arithmetic"),
    Record(id="b", question="A box has 12 pens. How many pens in 2 boxes?", answer="24", cot="12 * 2 = 24.", dataset="arithmetic"),
]


def _tok():
    return train_tokenizer([prompt_text(r) + target_text(r) for r in RECORDS] * 10, vocab_size=280)


def test_labels_mask_prompt_keep_target_and_eos():
    tok = _tok()
    examples, n_trunc = encode_examples(tok, RECORDS, "nl", max_tokens=512)
    assert n_trunc == 0
    for r, e in zip(RECORDS, examples):
        n_prompt = len(tok(prompt_text(r), add_special_tokens=False)["input_ids"])
        assert e["labels"][:n_prompt] == [IGNORE] * n_prompt
        assert e["labels"][n_prompt:] == e["input_ids"][n_prompt:]
        assert e["input_ids"][-1] == tok.eos_token_id and e["labels"][-1] == tok.eos_token_id
        # the labelled part decodes to exactly the target text
        assert tok.decode(e["labels"][n_prompt:-1]) == target_text(r)


def test_collate_pads_right_with_ignored_labels():
    tok = _tok()
    examples, _ = encode_examples(tok, RECORDS, "nl", max_tokens=512)
    batch = collate(examples, tok.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == IGNORE).all()
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()


def test_collate_reports_where_each_target_starts():
    tok = _tok()
    examples, _ = encode_examples(tok, RECORDS, "nl", max_tokens=512)
    batch = collate(examples, tok.pad_token_id)
    for i, r in enumerate(RECORDS):
        assert batch["prompt_len"][i] == len(tok(prompt_text(r), add_special_tokens=False)["input_ids"])


def test_truncated_prefix_data_keeps_k_target_tokens_on_most_examples():
    """BREP: 1 - full_frac of the examples train on their first k target tokens only."""
    examples = [{"input_ids": list(range(10 + i % 3)), "labels": [IGNORE] * 4 + list(range(4, 10 + i % 3))}
                for i in range(20)]
    out = truncate_targets(examples, prefix_tokens=3, full_frac=0.1, seed=0)
    full = [e for e, o in zip(examples, out) if o is e]
    assert len(full) == 2  # round(0.1 * 20) keep everything
    for e, o in zip(examples, out):
        if o is not e:
            assert o["input_ids"] == e["input_ids"][:7] and o["labels"] == [IGNORE] * 4 + [4, 5, 6]
    assert out == truncate_targets(examples, prefix_tokens=3, full_frac=0.1, seed=0)  # reproducible


def test_truncation_is_counted():
    tok = _tok()
    examples, n_trunc = encode_examples(tok, RECORDS, "nl", max_tokens=10)
    assert n_trunc == 2 and all(len(e["input_ids"]) == 10 for e in examples)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)
    assert sorted(epoch_order(50, 1, 3)) == list(range(50))


def test_sft_loss_is_independent_of_micro_batching():
    """The learner sums micro-batch losses: normalising by the minibatch label count makes them equal."""
    from rlft.trainers.sft import make_loss_fn

    tok = _tok()
    examples, _ = encode_examples(tok, RECORDS, "nl", max_tokens=512)
    torch.manual_seed(0)
    V = len(tok)
    whole = collate(examples, tok.pad_token_id)
    parts = [collate([e], tok.pad_token_id) for e in examples]
    n_label = int((whole["labels"][:, 1:] != IGNORE).sum())
    logits_whole = torch.randn(*whole["input_ids"].shape, V)
    out = lambda logits: type("O", (), {"logits": logits})  # noqa: E731
    loss_fn = make_loss_fn(n_label)
    full, _ = loss_fn(out(logits_whole), whole)
    split = sum(loss_fn(out(logits_whole[i:i + 1, : p["input_ids"].shape[1]]), p)[0] for i, p in enumerate(parts))
    torch.testing.assert_close(full, split)
