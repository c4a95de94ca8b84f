"""Build a tiny Llama and its tokenizer offline, from the task text alone.

Why: tests, the demo and CI must run on a 2-core laptop with nothing downloaded. A BPE tokenizer is
trained on the task's own questions and CoTs, with every digit its own token (so arithmetic is
learnable and numbers tokenise the same way everywhere), and a small Llama is built from a config with
random weights. Both are saved with `save_pretrained`, so everything downstream loads them exactly like a
hub model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, EOS, BOS, UNK = "<pad>", "</s>", "<s>", "<unk>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE with digits split one per token; pad/eos/bos/unk are special tokens."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Digits first, so no merge ever spans two digits; then GPT-2 style byte-level splitting, which
    # round-trips newlines, spaces and any unicode in questions.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(
    vocab_size: int, *, hidden_size: int = 256, head_dim: int = 64, num_layers: int = 4,
    intermediate_size: int = 688, max_position_embeddings: int = 512, pad_token_id: int = 0,
    eos_token_id: int = 1, bos_token_id: int = 2,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=hidden_size // head_dim,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
    )


def build_tiny_model(
    out_dir: str | Path, texts: Iterable[str], *, seed: int, vocab_size: int = 512, hidden_size: int = 256,
    head_dim: int = 64, num_layers: int = 4, intermediate_size: int = 688, max_position_embeddings: int = 512,
) -> Path:
    """Train the tokenizer on `texts`, build a random-init tiny Llama, save both to `out_dir`.

    Returns the folder, loadable with `rlft.models.loading.load_policy` / `AutoModelForCausalLM`.
    """
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = tiny_llama_config(
        len(tokenizer), hidden_size=hidden_size, head_dim=head_dim, num_layers=num_layers,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # Write to a temporary folder and rename, so an interrupted build never leaves a half model behind.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
