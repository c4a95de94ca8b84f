"""A tiny random Llama built from a config (no tokenizer, no files): seconds per test."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlft.config import load_config

PAD, EOS = 0, 1


def tiny_config(vocab_size: int = 24, hidden_size: int = 64, num_layers: int = 2) -> LlamaConfig:
    # vocab 24: EOS is likely enough that some rows of a 12-token sample stop early
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=hidden_size // 2, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2,
                       tie_word_embeddings=True)


@pytest.fixture
def make_lm():
    def make(seed: int = 0, **shape) -> LlamaForCausalLM:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlamaForCausalLM(tiny_config(**shape)).eval()

    return make


@pytest.fixture
def adapter_cfg():
    """The `adapter` section from dotted overrides, validated like a real config (skips without peft for
    the kinds that need it)."""

    def make(*overrides):
        cfg = load_config(None, list(overrides)).adapter
        if cfg.kind in ("lora", "heft"):
            pytest.importorskip("peft")
        return cfg

    return make


@pytest.fixture
def perturb():
    """Move every adapter parameter off its identity init, so edits change the outputs."""

    @torch.no_grad()
    def apply(adapter, scale: float = 0.3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _, p in adapter.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))

    return apply
