"""Tiny model and tokenizer: digits are single tokens, text round-trips, the model builds and loads."""

from rlft.models.loading import load_policy
from rlft.models.tiny import build_tiny_model, train_tokenizer

CORPUS = [
    "Question:\nTom has 12 apples and buys 345 more.\nAnswer reasoning:\n12 + 345 = 357.\nTherefore, the answer is: 357",
    "Question:\nA box holds 48 pens. How many pens are in 7 boxes?\nAnswer reasoning:\n48 * 7 = 336.",
] * 20


def test_digits_are_split_one_per_token():
    tok = train_tokenizer(CORPUS, vocab_size=300)
    for number in ["357", "1234567890", "48"]:
        pieces = tok.convert_ids_to_tokens(tok(number, add_special_tokens=False)["input_ids"])
        assert pieces == list(number)
    # digits inside text stay single tokens too
    ids = tok("buys 345 more", add_special_tokens=False)["input_ids"]
    digit_tokens = [p for p in tok.convert_ids_to_tokens(ids) if any(c.isdigit() for c in p)]
    assert digit_tokens == ["3", "4", "5"]


def test_round_trip_and_specials():
    tok = train_tokenizer(CORPUS, vocab_size=300)
    text = "Question:\n  Tom had 12 apples.\nTherefore, the answer is: 357"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_build_and_load(tmp_path):
    out = build_tiny_model(tmp_path / "m", CORPUS, seed=0, vocab_size=300, hidden_size=128, num_layers=2,
                           intermediate_size=256)
    model, tok = load_policy(out)
    assert model.config.head_dim == 64 and model.config.num_attention_heads == 2
    assert model.config.vocab_size == len(tok)
    # same seed, same weights
    out2 = build_tiny_model(tmp_path / "m2", CORPUS, seed=0, vocab_size=300, hidden_size=128, num_layers=2,
                            intermediate_size=256)
    model2, _ = load_policy(out2)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert n1 == n2 and (p1 == p2).all()
