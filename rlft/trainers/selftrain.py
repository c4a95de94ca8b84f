"""Self-training baselines of the ReFT paper (spec §12).

- Online self-training (`algo=online_st`, driven by `rlft/trainers/ppo.py`): each iteration samples like
  ReFT, keeps the responses that score 1, and minimises 1/2 CE(correct samples) + 1/2 CE(gold CoTs of the
  batch) (`train_rl_sl.py` in the reference). No negatives, no KL, no value model.
"""

from __future__ import annotations

import torch

from rlft.algos import sft as sft_algo
from rlft.config import Config
from rlft.tasks.base import Record
from rlft.trainers.sft import IGNORE, collate, encode_examples


def _sample_examples(data: dict, keep: torch.Tensor) -> list[dict]:
    """Prompt + response of the kept samples as SFT examples (labels on the response incl. EOS)."""
    examples = []
    for b in keep.nonzero().flatten().tolist():
        prompt = data["prompt_ids"][b][data["prompt_mask"][b].bool()].tolist()
        response = data["response_ids"][b][data["response_mask"][b].bool()].tolist()
        examples.append({"input_ids": prompt + response, "labels": [IGNORE] * len(prompt) + response})
    return examples


def online_st_micro_batches(data: dict, records: list[Record], tokenizer, cfg: Config):
    """Micro-batches and loss for one online-ST step: 1/2 CE(correct samples) + 1/2 CE(gold CoTs)."""
    gold, _ = encode_examples(tokenizer, records, cfg.data.style, cfg.sft.max_seq_tokens)
    correct = _sample_examples(data, data["scores"] >= 1.0)
    groups = [("gold", gold)] + ([("correct", correct)] if correct else [])
    weight = 0.5 if correct else 1.0  # both halves as in the reference; gold alone when nothing was right
    micro, counts = [], {}
    size = cfg.ppo.micro_batch_size_per_device
    for name, examples in groups:
        for k in range(0, len(examples), size):
            mb = collate(examples[k:k + size], tokenizer.pad_token_id)
            mb["group"] = name
            micro.append(mb)
        counts[name] = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)

    def loss_fn(output, mb):
        loss, metrics = sft_algo.sft_loss(output.logits, mb["labels"], num_tokens=counts[mb["group"]])
        return weight * loss, {f"online_st/{mb['group']}_loss": loss.detach(),
                               "online_st/n_correct": torch.tensor(float(len(correct)) / max(1, len(micro)))}

    return micro, loss_fn
