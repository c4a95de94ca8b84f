"""The policy as the learner sees it: an HF causal LM plus an optional value head on the same backbone.

ReFT's critic (spec §5) is `Linear(hidden, 1)` on the policy's last hidden state, sharing the whole
backbone (trl's `AutoModelForCausalLMWithValueHead`), randomly initialised. The head's dropout is off in
the reference (every forward runs in eval mode), so there is none here.

`PolicyModel.forward` returns logits (B, S, V) and values (B, S) over the whole sequence; the loop
slices response coordinates with `response_slice`.

The policy trains through an adapter (`rlft/adapters/`, `adapter.kind`): `full` (every weight, the
default), LoRA, or hook-based hidden-state interventions. The value head always trains beside it.
`forward(..., positions=PositionMeta)` runs under the adapter's position plan, so hook-based adapters
edit the same tokens here as in sampling.

Checkpoints: `save_pretrained(dir)` writes the adapter's files (full: a plain HF folder loadable by any HF
tool; otherwise adapter-only files plus `adapter.json` naming the base) and `value_head.safetensors`
beside them; `load_weights(dir)` restores both exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from rlft.adapters.base import FullFinetune, PolicyAdapter
from rlft.adapters.positions import PositionMeta

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyOutput(NamedTuple):
    """A named tuple, not a dataclass: ZeRO-3 must see the output tensors to hook their backward."""

    logits: torch.Tensor  # (B, S, V)
    values: torch.Tensor | None  # (B, S), or None without a value head
    embeddings: torch.Tensor | None = None  # (B, S, D) CARFT token embeddings, or None


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as HF `generate` computes them, so teacher-forced recomputation
    sees the same positions as sampling did."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyModel(torch.nn.Module):
    """`value_head`: None (SFT, critic-free RL), "linear" (ReFT) or "carft" (64-d bottleneck head).
    `adapter`: attached to `lm` already (`rlft.adapters.attach_adapter`); None means full finetuning."""

    def __init__(self, lm: torch.nn.Module, *, value_head: str | None = None, head_dropout: float = 0.0,
                 init_seed: int = 0, adapter: PolicyAdapter | None = None):
        super().__init__()
        self.lm = lm
        if adapter is None:
            adapter = FullFinetune()
            adapter.attach(lm)
        self.adapter = adapter
        self.adapter_modules = self.adapter.own_modules()  # registered, so they move, train and count with us
        self.head_kind = value_head
        # Value warm-up: the backbone runs without autograd, so only the head learns (and no backbone
        # activations are kept). A flag on the module, not requires_grad, so sharded learners can use it.
        self.value_only = False
        if value_head == "carft":
            from rlft.models.carft_head import CARFTHead

            self.value_head = CARFTHead(lm.config.hidden_size, dropout=head_dropout)
        elif value_head == "linear":
            self.value_head = torch.nn.Linear(lm.config.hidden_size, 1)
        elif value_head is None:
            self.value_head = None
        else:
            raise ValueError(f"unknown value head {value_head!r}")
        if value_head == "linear":
            # Small init so the first value estimates are near 0 rather than dominating the first update.
            # Seeded on its own so every process (local loop, Ray learner ranks) builds the same head.
            generator = torch.Generator().manual_seed(init_seed)
            torch.nn.init.normal_(self.value_head.weight, std=1.0 / (lm.config.hidden_size + 1), generator=generator)
            torch.nn.init.zeros_(self.value_head.bias)
            self.value_head.to(next(lm.parameters()).dtype)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: PositionMeta | None = None, logits_to_keep: int = 0) -> PolicyOutput:
        """`positions`: the batch's layout (`PositionMeta`), needed by hook-based adapters.
        `logits_to_keep`: compute logits for the last k positions only (0: all). RL passes T + 1, the
        positions that score response tokens: the LM head and its (B, S, V) output are the largest
        activation, and prompt positions need none (`response_slice` accounts for the dropped ones)."""
        kwargs = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        with self.adapter.plan(positions), torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                output_hidden_states=self.value_head is not None, use_cache=False, **kwargs,
            )
        values = embeddings = None
        if self.head_kind == "carft":
            values, embeddings = self.value_head(out.hidden_states[-1])  # (B, S), (B, S, D)
        elif self.value_head is not None:
            values = self.value_head(out.hidden_states[-1]).squeeze(-1).float()  # (B, S)
        return PolicyOutput(logits=out.logits, values=values, embeddings=embeddings)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: every trainable parameter the adapter does not group itself (the whole LM for full
        finetuning, the heads) in one default group first, then the adapter's own groups."""
        special = self.adapter.param_groups(weight_decay)
        claimed = {id(p) for group in special for p in group["params"]}
        default = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        return ([{"params": default, "weight_decay": weight_decay}] if default else []) + special

    def policy_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that define the policy (the adapter's, or every LM weight), not the heads."""
        return [p for _, p in self.adapter.trainable_parameters()]

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.adapter.save(path)
        if self.value_head is not None:
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, str(path / VALUE_HEAD_FILE))

    def load_weights(self, path: str | Path) -> None:
        path = Path(path)
        self.adapter.load(path)
        if self.value_head is not None:
            head = path / VALUE_HEAD_FILE
            if head.exists():
                self.value_head.load_state_dict(load_file(str(head)))


def response_slice(x: torch.Tensor, prompt_len: int, response_len: int) -> torch.Tensor:
    """Entries of a sequence tensor that act on response tokens: position P-1+t predicts token t.

    `x` covers all S = P + T positions, or only the last ones (logits computed with `logits_to_keep`);
    the dropped leading positions are counted from its width."""
    dropped = prompt_len + response_len - x.shape[1]
    start = prompt_len - 1 - dropped
    if start < 0:
        raise ValueError(f"response_slice: {x.shape[1]} positions do not cover the {response_len} response tokens")
    return x[:, start: start + response_len]
