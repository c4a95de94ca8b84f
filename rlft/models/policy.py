"""The policy as the learner sees it: an HF causal LM plus an optional value head on the same backbone.

ReFT's critic (spec §5) is `Linear(hidden, 1)` on the policy's last hidden state, sharing the whole
backbone (trl's `AutoModelForCausalLMWithValueHead`), randomly initialised. The head's dropout is off in
the reference (every forward runs in eval mode), so there is none here.

`PolicyModel.forward` returns logits (B, S, V) and values (B, S) over the whole sequence; with
`logits_to_keep` the logits cover the last positions only, and the shared-prompt path below returns the
T + 1 response-scoring positions of both. The loop slices response coordinates with `response_slice`,
which takes any of these widths.

Shared prompts: GRPO samples n responses per prompt, so a batch holds each prompt n times. Given the
prompt width, `forward` runs each distinct prompt once, copies its KV cache to the prompt's rows and runs
the responses on top (`prefix_sharing_unsupported_reason` lists when it falls back). That is the same
computation as the full forward (the cache holds exactly the keys and values the full forward computes;
gradients of the copies sum back into the one prompt pass), minus (n-1)/n of the prompt's FLOPs in the
no-grad passes and in the train step's forward and backward. Measured: tiny model, 8 prompts x 4
samples, prompt 55 + response 64 tokens: train forward+backward 0.41 -> 0.30 s. Under data parallelism
every rank must make the same module calls (ZeRO gathers parameters per call): a sharded learner sets
`agree_across_ranks`, and when any rank shares, all take the two-pass path. (With dropout on, a prompt's
copies share one dropout mask; rlft's RL forwards run in eval mode.)

Packing (`packing=True`: `sft.packing`, `ppo.packing`): every forward runs the batch's real tokens as one packed
row (`rlft/models/packing.py`) and returns the padded forward's outputs (hidden states scattered back, the heads
and the LM head run where the padded forward runs them); with shared prompts, the distinct prompts and then the
responses run as packed rows, the responses attending to their prompt's kept keys and values. The same
computation as the padded forward up to float rounding (tested: logits, values, CARFT embeddings, gradients).

The policy trains through an adapter (`rlft/adapters/`, `adapter.kind`): `full` (every weight, the
default), LoRA, or hook-based hidden-state interventions. The value head always trains beside it.
`forward(..., positions=PositionMeta)` runs under the adapter's position plan, so hook-based adapters
edit the same tokens here as in sampling.

Checkpoints: `save_pretrained(dir)` writes the adapter's files (full: a plain HF folder loadable by any HF
tool; otherwise adapter-only files plus `adapter.json` naming the base) and `value_head.safetensors`
beside them (and, beside a whole model, `model.safetensors.index.json`, so vLLM loads the folder as it is);
`load_weights(dir)` restores both exactly, and `value_head_kind(dir)` tells which head (if
any) a folder holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlft.adapters.base import FullFinetune, PolicyAdapter
from rlft.adapters.positions import PositionMeta
from rlft.models import packing as packed
from rlft.models import compiling
from rlft.models.loading import LLAMA_FAMILY, enable_gradient_checkpointing, uses_sliding_window
from rlft.models.packing import AttentionPlan, PackedRows
from rlft.rollout.decode import cache_keyword
from rlft.utils.device import autocast_off, bf16_autocast, module_device

VALUE_HEAD_FILE = "value_head.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Tensor names `save_pretrained` writes for each head kind (the head modules' state_dict keys).
HEAD_KEYS = {"linear": {"weight", "bias"}, "carft": {"proj.weight", "proj.bias", "value.weight", "value.bias"}}


class PolicyOutput(NamedTuple):
    """A named tuple, not a dataclass: ZeRO-3 must see the output tensors to hook their backward."""

    logits: torch.Tensor  # (B, S, V); (B, k, V) with logits_to_keep=k; (N, V) with logits_mask
    values: torch.Tensor | None  # (B, S); (B, T + 1) from the shared-prompt path; None without a value head
    embeddings: torch.Tensor | None = None  # (B, S, D) CARFT token embeddings, or None
    hidden: torch.Tensor | None = None  # (B, S, H) the last hidden state ((B, T + 1, H) shared-prompt); keep_hidden only


def value_head_kind(path: str | Path) -> str | None:
    """The `PolicyModel(value_head=...)` kind saved in model folder `path`: "linear" (ReFT) or "carft",
    read from the tensor names in its value head file; None when the folder has no value head.

    Args:
        path: a checkpoint's `model/` folder (where `save_pretrained` writes `VALUE_HEAD_FILE`).
    Returns:
        "linear", "carft" or None.
    """
    head = Path(path) / VALUE_HEAD_FILE
    if not head.exists():
        return None
    with safe_open(str(head), framework="pt") as f:  # reads the header only, no tensors
        keys = set(f.keys())
    for kind, expected in HEAD_KEYS.items():
        if keys == expected:
            return kind
    raise ValueError(f"{head}: tensors {sorted(keys)} match no value head kind ({', '.join(HEAD_KEYS)})")




def write_weights_index(path: str | Path) -> None:
    """HF's `model.safetensors.index.json` for the model's own weight files in folder `path`, unless one is there
    (a sharded save writes its own). Loaders that read every `*.safetensors` of a folder unless an index says
    otherwise (vLLM) would otherwise take the value head for model weights and fail; `from_pretrained` reads
    `model.safetensors` first either way.
    """
    path = Path(path)
    if (path / WEIGHTS_INDEX_FILE).exists():
        return
    weight_map, total = {}, 0
    for file in sorted(path.glob("model*.safetensors")):
        with file.open("rb") as f:  # the safetensors header: 8-byte length, then JSON with each tensor's byte range
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        header.pop("__metadata__", None)
        weight_map.update({name: file.name for name in header})
        total += max((t["data_offsets"][1] for t in header.values()), default=0)
    (path / WEIGHTS_INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                       "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as HF `generate` computes them, so teacher-forced recomputation
    sees the same positions as sampling did."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyModel(torch.nn.Module):
    """`value_head`: None (SFT, critic-free RL), "linear" (ReFT) or "carft" (64-d bottleneck head).
    `adapter`: attached to `lm` already (`rlft.adapters.attach_adapter`); None means full finetuning.
    `keep_hidden`: outputs carry the last hidden state (`PolicyOutput.hidden`)."""

    def __init__(self, lm: torch.nn.Module, *, value_head: str | None = None, head_dropout: float = 0.0,
                 init_seed: int = 0, adapter: PolicyAdapter | None = None, prefix_sharing: bool = True,
                 value_head_init: str = "small", mixed_precision: bool = False, gradient_checkpointing: bool = False,
                 keep_hidden: bool = False, packing: bool | str = False, packing_key: str = "packing",
                 compile: bool = False):
        """`mixed_precision`: every forward runs under bf16 autocast on the model's device (`model.precision=
        bf16-mixed`); the heads stay fp32. `gradient_checkpointing`: `model.gradient_checkpointing` (training
        forwards recompute each decoder layer in the backward pass). `packing` (`sft.packing`, `ppo.packing`):
        forwards run the batch's real tokens only (`rlft/models/packing.py`): "auto" where the model allows
        (`packing_unsupported_reason`), padded elsewhere; True: a model that cannot pack is a ValueError naming
        `packing_key` (the config key that asked for it). The heads are built on the CPU (their seeded initialisation is the
        same on every device) and moved to the LM's device. `compile` (`model.compile`): the decoder layers'
        cache-free forwards run compiled (`rlft.models.compiling`)."""
        super().__init__()
        self.lm = lm
        self.keep_hidden = keep_hidden  # NLFT's neighbourhood rule reads the last hidden states
        self.prefix_sharing = prefix_sharing  # config: ppo.prefix_sharing
        if packing not in (True, False, "auto"):
            raise ValueError(f"{packing_key} = {packing!r}: expected true, false or auto")
        reason = packed.unsupported_reason(lm) if packing else None
        if reason is not None and packing is True:  # asked for explicitly: a setting that cannot take effect
            raise ValueError(f"{packing_key} = true, but this model cannot run packed forwards: {reason}. "
                             f"Set {packing_key}=auto (pack where the model allows) or false.")
        self.packing = bool(packing) and reason is None
        if self.packing:
            packed.enable(lm)
        self.mixed_precision = mixed_precision
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            enable_gradient_checkpointing(lm)
        if compile and not compiling.is_compiled(lm):  # a model shared by two PolicyModels is routed once
            compiling.compile_decoder_layers(lm)
        # Set by sharded learners (DeepSpeed): (this rank shares?) -> (does any rank share?), a collective.
        self.agree_across_ranks: Callable[[bool], bool] | None = None
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
            # Seeded on its own so every process (local loop, Ray learner ranks) builds the same head.
            generator = torch.Generator().manual_seed(init_seed)
            if value_head_init == "small":  # first value estimates near 0 rather than dominating the first update
                torch.nn.init.normal_(self.value_head.weight, std=1.0 / (lm.config.hidden_size + 1), generator=generator)
                torch.nn.init.zeros_(self.value_head.bias)
            elif value_head_init == "reference":  # torch's Linear default, as trl's ValueHead in the ReFT code
                bound = 1.0 / math.sqrt(lm.config.hidden_size)  # U(-1/sqrt(h), 1/sqrt(h)): std ~9x "small" at h=256
                torch.nn.init.uniform_(self.value_head.weight, -bound, bound, generator=generator)
                torch.nn.init.uniform_(self.value_head.bias, -bound, bound, generator=generator)
            else:
                raise ValueError(f"unknown value_head_init {value_head_init!r}")
            self.value_head.to(next(lm.parameters()).dtype)
        if self.value_head is not None:
            self.value_head.to(module_device(lm))

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: PositionMeta | None = None, logits_to_keep: int = 0, prompt_len: int = 0,
                logits_mask: torch.Tensor | None = None) -> PolicyOutput:
        """`positions`: the batch's layout (`PositionMeta`), needed by hook-based adapters.
        `logits_to_keep`: compute logits for the last k positions only (0: all). RL passes T + 1, the
        positions that score response tokens: the LM head and its (B, S, V) output are the largest
        activation, and prompt positions need none (`response_slice` accounts for the dropped ones).
        `prompt_len`: the width P of the left-padded prompts in front of the responses (RL batches, with
        `logits_to_keep` = S - P + 1); rows with the same prompt then share one prompt pass.
        `logits_mask`: (B, S) bool; logits (N, V) for its N True positions only, in row-major order (SFT:
        the positions that score a label, `rlft.algos.sft.labelled_positions`), so the LM head and the
        loss skip prompt and padding positions. Values, if any, still cover all (B, S)."""
        with bf16_autocast(module_device(self.lm), self.mixed_precision):
            return self._forward(input_ids, attention_mask, positions, logits_to_keep, prompt_len, logits_mask)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: PositionMeta | None,
                 logits_to_keep: int, prompt_len: int, logits_mask: torch.Tensor | None) -> PolicyOutput:
        if logits_mask is not None:
            if self.packing:
                return self._forward_packed(input_ids, attention_mask, positions, 0, logits_mask)
            return self._forward_selected_logits(input_ids, attention_mask, positions, logits_mask)
        if prompt_len and logits_to_keep == input_ids.shape[1] - prompt_len + 1 and self.prefix_sharing \
                and self.prefix_sharing_unsupported_reason() is None:
            groups = prompt_groups(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
            if self.agree_across_ranks is not None and self.agree_across_ranks(groups is not None) and groups is None:
                rows = torch.arange(input_ids.shape[0], device=input_ids.device)
                groups = (rows, rows)  # another rank shares: the same module calls here, each row its own prompt
            if groups is not None:
                if self.packing and packed.shares_prefixes(self.lm):
                    return self._forward_shared_packed(input_ids, attention_mask, positions, prompt_len, *groups)
                return self._forward_shared_prompts(input_ids, attention_mask, positions, prompt_len, *groups)
        if self.packing:
            return self._forward_packed(input_ids, attention_mask, positions, logits_to_keep, None)
        kwargs = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        with self.adapter.plan(positions), torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                output_hidden_states=self.value_head is not None or self.keep_hidden, use_cache=False, **kwargs,
            )
        return self._with_heads(out.logits, out.hidden_states[-1] if out.hidden_states is not None else None)

    def _with_heads(self, logits: torch.Tensor, hidden: torch.Tensor | None) -> PolicyOutput:
        values = embeddings = None
        if self.value_head is None:
            return PolicyOutput(logits=logits, values=values, embeddings=embeddings,
                                hidden=hidden if self.keep_hidden else None)
        # The heads compute in their own dtype (fp32 master weights) even under bf16 autocast: they are small,
        # and the value loss and CARFT's cosines are sensitive to bf16's 3 significant digits.
        with autocast_off(hidden.device):
            hidden = hidden.to(next(self.value_head.parameters()).dtype)
            if self.head_kind == "carft":
                values, embeddings = self.value_head(hidden)  # (B, S), (B, S, D)
            else:
                values = self.value_head(hidden).squeeze(-1).float()  # (B, S)
        return PolicyOutput(logits=logits, values=values, embeddings=embeddings,
                            hidden=hidden if self.keep_hidden else None)

    def _forward_selected_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 positions: PositionMeta | None, logits_mask: torch.Tensor) -> PolicyOutput:
        """Logits (N, V) at the True positions of `logits_mask`: the LM head runs on those hidden states
        only where the model is `lm_head(decoder(...))` (else the full logits are computed and indexed)."""
        if not self._is_decoder_plus_head():
            out = self._forward(input_ids, attention_mask, positions, 0, 0, None)
            return out._replace(logits=out.logits[logits_mask])
        with self.adapter.plan(positions), torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                           position_ids=position_ids_from_mask(attention_mask), use_cache=False)
            hidden = hidden.last_hidden_state
            logits = self.lm.get_output_embeddings()(hidden[logits_mask])
        return self._with_heads(logits, hidden)

    def _forward_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: PositionMeta | None,
                        logits_to_keep: int, logits_mask: torch.Tensor | None) -> PolicyOutput:
        """The padded forward's output, the decoder run on the real tokens only (`rlft/models/packing.py`): logits
        (N, V) at `logits_mask`, else (B, k, V) for the last k = `logits_to_keep` positions (0: all); values,
        embeddings and hidden states over all (B, S). Padding positions hold the heads' output for a zero hidden
        state. The LM head runs on the (B, k) window as in the padded forward: scattering (N, V) logits into it
        would cost a copy of the largest activation each way (measured slower on SmolLM2's 49k vocabulary)."""
        S = attention_mask.shape[1]
        rows = PackedRows.of(attention_mask)
        decoder, lm_head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        with self.adapter.plan(packed_positions(positions, rows.index, S)), \
                torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            packed_ids, packed_position_ids = self._kernel_rows(rows.pack(input_ids), rows.rank.unsqueeze(0))
            packed_hidden = decoder(input_ids=packed_ids, attention_mask=None, position_ids=packed_position_ids,
                                    use_cache=False, **packed.plan_keyword(self.lm, AttentionPlan.causal(rows)))
            packed_hidden = packed_hidden.last_hidden_state[:, :rows.index.numel()]  # (1, N, H)
            hidden = None
            if logits_mask is None or self.value_head is not None or self.keep_hidden:
                hidden = rows.unpack(packed_hidden)  # (B, S, H)
            if logits_mask is not None:  # the labelled positions are real tokens, in the same row-major order
                labelled = logits_mask.reshape(-1)[rows.index].nonzero().squeeze(1)  # their places in the packed row
                logits = lm_head(packed_hidden[0].index_select(0, labelled))  # (n, V)
            else:
                logits = lm_head(hidden[:, S - (logits_to_keep or S):])  # (B, k, V)
        return self._with_heads(logits, hidden)

    def _forward_shared_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               positions: PositionMeta | None, prompt_len: int, first: torch.Tensor,
                               inverse: torch.Tensor) -> PolicyOutput:
        """`_forward_shared_prompts` without padding: the U distinct prompts run as one packed row that keeps its
        keys and values, the B responses as another that attends to its prompt's kept ones first
        (`AttentionPlan.after_prefix`). Returns the T + 1 response-scoring positions (hidden states zero at padding)."""
        decoder, lm_head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        S = attention_mask.shape[1]
        P, T = prompt_len, S - prompt_len
        response_mask = attention_mask[:, P:]
        if not bool(response_mask.any()):  # every response masked out (DAPO's overlong filter): run one position per
            response_mask = torch.zeros_like(response_mask)  # row, so the response pass (a module call ZeRO-3 ranks
            response_mask[:, 0] = 1  # must all make) has tokens; the loss reads none of them
        prompts, responses = PackedRows.of(attention_mask[first, :P]), PackedRows.of(response_mask)
        lengths = prompts.real.sum(1)  # (U,) real prompt tokens
        row = responses.index // T  # (N_r,) each response token's row
        kept: dict = {}
        prompt_positions = response_positions = None
        if positions is not None:
            prompt_positions = packed_positions(PositionMeta(positions.pad_left[first], positions.prompt_len[first]),
                                                prompts.index, P)
            response_positions = packed_positions(positions, row * S + P + responses.index % T, S)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            with self.adapter.plan(prompt_positions):
                prompt_ids, prompt_position_ids = self._kernel_rows(prompts.pack(input_ids[first, :P]),
                                                                    prompts.rank.unsqueeze(0))
                prompt_hidden = decoder(input_ids=prompt_ids, attention_mask=None,
                                        position_ids=prompt_position_ids, use_cache=False,
                                        **packed.plan_keyword(self.lm, AttentionPlan.causal(prompts, capture=kept)))
            with self.adapter.plan(response_positions):
                response_ids, response_position_ids = self._kernel_rows(
                    responses.pack(input_ids[:, P:]), (lengths[inverse][row] + responses.rank).unsqueeze(0))
                response_hidden = decoder(
                    input_ids=response_ids, attention_mask=None, position_ids=response_position_ids, use_cache=False,
                    **packed.plan_keyword(self.lm, AttentionPlan.after_prefix(responses, kept, prompts, inverse)))
            last = prompt_hidden.last_hidden_state[0].index_select(0, (torch.cumsum(lengths, 0) - 1)[inverse])  # (B, H)
            # position 0 of row b: its last prompt token (scores response token 0); position 1 + t: response token t
            response_hidden = responses.unpack(
                response_hidden.last_hidden_state[:, :responses.index.numel()])  # (B, T, H)
            hidden = torch.cat([last.unsqueeze(1), response_hidden], dim=1)  # (B, T + 1, H)
            logits = lm_head(hidden)
        return self._with_heads(logits, hidden)  # the heads train even in value-only warm-up

    def _kernel_rows(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A packed row's ids with `packing.pad_for_kernels`'s tail where it applies; not under a position-planned
        adapter (hook interventions, `own_modules`), whose hooks expect exactly the packed tokens."""
        if self.adapter.own_modules() is not None:
            return input_ids, position_ids
        return packed.pad_for_kernels(self.lm, input_ids, position_ids)

    def packing_unsupported_reason(self) -> str | None:
        """Why this model's forwards cannot pack (`rlft.models.packing.unsupported_reason`), or None when they can."""
        return packed.unsupported_reason(self.lm)

    def _is_decoder_plus_head(self) -> bool:
        """The causal LM is `lm_head(decoder(...).last_hidden_state)`: no logit scaling or soft-capping."""
        return getattr(self.lm.config, "model_type", None) in LLAMA_FAMILY

    def prefix_sharing_unsupported_reason(self) -> str | None:
        """Why rows with the same prompt cannot share one prompt pass here, or None when they can."""
        config = self.lm.config
        if self.head_kind == "carft":
            return "the CARFT head embeds every position, prompt included"
        if not self._is_decoder_plus_head():
            return f"architecture {getattr(config, 'model_type', None)!r} (shared prompts cover {LLAMA_FAMILY})"
        if uses_sliding_window(config):
            return "sliding-window attention"
        if torch.is_grad_enabled() and (self.gradient_checkpointing or (self.training and self._checkpointing())):
            return "gradient checkpointing (HF turns the KV cache off under it)"
        return None

    def set_learning_mode(self, train: bool) -> None:
        """The mode of training forwards: train mode (SFT) or eval mode (RL: dropout off, spec §9). Under gradient
        checkpointing in eval mode the decoder layers' own training flag is set: HF checkpoints a layer only
        when that flag is on, and their submodules (dropout) stay in eval mode."""
        self.train(train)
        if self.gradient_checkpointing and not train:
            from transformers.modeling_layers import GradientCheckpointingLayer

            for module in self.lm.modules():
                if isinstance(module, GradientCheckpointingLayer):
                    module.training = True

    def _checkpointing(self) -> bool:
        """HF's activation (gradient) checkpointing flag; it walks every module, so only asked in training."""
        flag = getattr(self.lm, "is_activation_checkpointing", None)  # transformers >= 5.2x's name
        return bool(getattr(self.lm, "is_gradient_checkpointing", False) if flag is None else flag)

    def _forward_shared_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                positions: PositionMeta | None, prompt_len: int, first: torch.Tensor,
                                inverse: torch.Tensor) -> PolicyOutput:
        """The T + 1 response-scoring positions of a (B, P + T) batch whose rows take their prompts from the
        U rows `first` (row b's prompt is row first[inverse[b]]'s): the decoder runs the U prompts with a
        KV cache, the cache is copied to the B rows (autograd sums the copies' gradients back), and the B
        responses run on top. The logits of the last prompt position score the first response token."""
        decoder, lm_head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        P = prompt_len
        position_ids = position_ids_from_mask(attention_mask)
        prompt_positions = None if positions is None else PositionMeta(positions.pad_left[first], positions.prompt_len[first])
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.value_only):
            with self.adapter.plan(prompt_positions):
                prompt_out = decoder(input_ids=input_ids[first, :P], attention_mask=attention_mask[first, :P],
                                     position_ids=position_ids[first, :P], use_cache=True)
            cache = prompt_out.cache if hasattr(prompt_out, "cache") else prompt_out.past_key_values
            cache.batch_select_indices(inverse)
            with self.adapter.plan(positions):
                response_out = decoder(input_ids=input_ids[:, P:], attention_mask=attention_mask,
                                       position_ids=position_ids[:, P:], use_cache=True, **{cache_keyword(decoder): cache})
            hidden = torch.cat([prompt_out.last_hidden_state[inverse, -1:], response_out.last_hidden_state], dim=1)
            logits = lm_head(hidden)
        return self._with_heads(logits, hidden)  # the heads train even in value-only warm-up

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
            if self.adapter.kind == "full":
                write_weights_index(path)

    def load_weights(self, path: str | Path) -> None:
        path = Path(path)
        self.adapter.load(path)
        if self.value_head is not None:
            head = path / VALUE_HEAD_FILE
            if head.exists():
                self.value_head.load_state_dict(load_file(str(head)))


def packed_positions(positions: PositionMeta | None, index: torch.Tensor, width: int) -> PositionMeta | None:
    """`positions` of a padded (B, width) layout, for a packed forward of its tokens at flat `index`."""
    return None if positions is None else dataclasses.replace(positions, packed_index=index, packed_width=width)


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows with the same prompt (same real tokens, same padding): (first (U,), inverse (B,)) with U < B,
    where row b's prompt is first occurrence row first[inverse[b]]; None when every prompt differs."""
    key = torch.cat([prompt_ids.masked_fill(prompt_mask == 0, 0), prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if unique.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=key.device)
    first = torch.full((unique.shape[0],), key.shape[0], device=key.device).scatter_reduce(0, inverse, rows, "amin")
    return first, inverse


def response_slice(x: torch.Tensor, prompt_len: int, response_len: int) -> torch.Tensor:
    """Entries of a sequence tensor that act on response tokens: position P-1+t predicts token t.

    `x` covers all S = P + T positions, or only the last ones (logits computed with `logits_to_keep`);
    the dropped leading positions are counted from its width."""
    dropped = prompt_len + response_len - x.shape[1]
    start = prompt_len - 1 - dropped
    if start < 0:
        raise ValueError(f"response_slice: {x.shape[1]} positions do not cover the {response_len} response tokens")
    return x[:, start: start + response_len]


class ResponseOutput(NamedTuple):
    """What an RL loss receives from a learner: the model's output aligned to the response tokens."""

    logits: torch.Tensor  # (b, T, V): position t scores response token t
    values: torch.Tensor | None  # (b, T): the value of the state before response token t; None without a head
    sequence: PolicyOutput  # the whole output (CARFT pools embeddings over sequence positions)
    # The learner's all-gather over its data-parallel ranks: (n, ...) here -> ((world - 1) * n, ...), the
    # other ranks' rows in rank order, without gradient; None on one rank (CARFT's negatives from every rank).
    gather_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None


def response_output(output: PolicyOutput, prompt_len: int, response_len: int) -> ResponseOutput:
    """The one place that decides which positions score the response (`response_slice`)."""
    values = None if output.values is None else response_slice(output.values, prompt_len, response_len)
    return ResponseOutput(response_slice(output.logits, prompt_len, response_len), values, output)
