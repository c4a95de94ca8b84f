"""Records to token ids: prompts for sampling and evaluation, prompt + target examples with labels for SFT
(and for CARFT's anchor pass and offline self-training), their padded batches, and the epoch order.

One module, so that the trainers and evaluation encode a record the same way (`specs/reft.md` §2: no BOS,
no chat template; the tokenizer's EOS id ends every SFT target). `fmt` (`data.prompt_format`) switches to the
tokenizer's chat template (`rlft.tasks.chat`): the target is then the assistant turn and its end of turn.
"""

from __future__ import annotations

import random

import torch

from rlft.tasks.base import Record
from rlft.tasks.chat import REFT, PromptFormat, end_of_turn, end_of_turn_ids, prompt_string
from rlft.tasks.prompts import target_text

IGNORE = -100


def encode_examples(tokenizer, records: list[Record], style: str, max_tokens: int,
                    targets: list[str] | None = None, *, fmt: PromptFormat = REFT) -> tuple[list[dict], int]:
    """Token ids and labels per record: labels are -100 on the prompt, the target ids (+ EOS) after it.

    `targets` replaces the annotated targets (offline self-training trains on sampled responses).
    With `fmt.kind == "chat"` the prompt is the chat template's and the target ends with the template's
    end of turn through EOS (`rlft.tasks.chat`), labelled like the target.
    Returns the examples and how many were truncated to `max_tokens`.
    """
    prompts = tokenizer([prompt_string(tokenizer, r, style, fmt) for r in records], add_special_tokens=False)["input_ids"]
    texts = targets if targets is not None else [target_text(r, style) for r in records]
    targets = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ends = _ends(tokenizer, records, style, texts, fmt)
    examples, n_truncated = [], 0
    for p, t, end in zip(prompts, targets, ends):
        ids = p + t + end
        labels = [IGNORE] * len(p) + t + end
        if len(ids) > max_tokens:
            ids, labels, n_truncated = ids[:max_tokens], labels[:max_tokens], n_truncated + 1
        examples.append({"input_ids": ids, "labels": labels})
    return examples, n_truncated


def _ends(tokenizer, records: list[Record], style: str, targets: list[str], fmt: PromptFormat) -> list[list[int]]:
    """The labelled ids after each target: EOS, or the chat template's end of turn through EOS."""
    if fmt.kind != "chat":
        return [[tokenizer.eos_token_id]] * len(records)
    cache: dict[str, list[int]] = {}  # one template gives a handful of distinct ends: tokenise each once
    out = []
    for r, t in zip(records, targets):
        end = end_of_turn(tokenizer, r, style, t, fmt.system_prompt)
        if end not in cache:
            cache[end] = end_of_turn_ids(tokenizer, end)
        out.append(cache[end])
    return out


def _target_start(labels: list[int]) -> int:
    """Index of the first labelled token: the prompt length of an SFT example."""
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def truncate_targets(examples: list[dict], *, prefix_tokens: int, full_frac: float, seed: int) -> list[dict]:
    """BREP's truncated-prefix SFT data (`LiangThree/BREP`, `Prefix/prefix_train.py`): a random share
    `1 - full_frac` of the examples keep only their first `prefix_tokens` target tokens, the rest their whole
    target. BREP keeps the ids and drops the labels; cutting the ids after the last label gives the same
    causal loss for less compute."""
    rng = random.Random(seed)
    full = set(rng.sample(range(len(examples)), round(full_frac * len(examples))))
    out = []
    for i, e in enumerate(examples):
        end = _target_start(e["labels"]) + prefix_tokens
        out.append(e if i in full else {"input_ids": e["input_ids"][:end], "labels": e["labels"][:end]})
    return out


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into (B, S) input_ids / attention_mask / labels, plus (B,) prompt_len
    (where the labels start: hook-based adapters place their edits by it)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    prompt_len = torch.tensor([_target_start(e["labels"]) for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_len": prompt_len}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Shuffled example order of `epoch`; a pure function of (seed, epoch), so resume needs no state."""
    return random.Random(seed * 100_003 + epoch).sample(range(n), n)


def encode_prompts(tokenizer, records: list[Record], style: str, max_prompt_tokens: int | None = None, *,
                   fmt: PromptFormat = REFT) -> list[list[int]]:
    """Prompt token ids per record (no special tokens added; a chat template's own BOS text stays)."""
    texts = [prompt_string(tokenizer, r, style, fmt) for r in records]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None:
        for r, seq in zip(records, ids):
            if len(seq) > max_prompt_tokens:
                raise ValueError(
                    f"record {r.id}: prompt has {len(seq)} tokens > data.max_prompt_tokens={max_prompt_tokens}; "
                    "raise the limit or drop the record"
                )
    return ids
