"""Sequence packing (padding-free forwards): the learner computes on the real tokens of a batch only.

A padded batch (B, S) with its attention mask runs as ONE row of its N real tokens (1, N), row-major, with
position ids restarting at every sequence (TRL's `padding_free`, OpenRLHF's `--packing_samples`, verl's
`use_remove_padding`). Embeddings, projections, MLPs and norms then see N tokens instead of B x S; `PolicyModel`
scatters the last hidden states back to (B, S) (zeros at padding) and runs the heads there, so the losses are
unchanged. The LM head runs where the padded forward runs it (SFT: the labelled positions, all real tokens; RL:
the (B, T + 1) response-scoring window, padding included): scattering packed (N, V) logits instead costs a
copy of the largest activation each way and a second buffer of its size.

Attention must stay within each sequence. transformers' own answer for a packed row (no attention mask,
restarting position ids) is a block-diagonal (N, N) mask under sdpa / eager: attention over all N x N pairs,
measured 1.6x slower than the padded forward on the demo's SFT micro-batches. So under `sdpa` rlft registers
its own attention (`packed_sdpa`, under the name `rlft_packed_sdpa`, which the model's config then names): it
places each sequence's queries, keys and values left-aligned in a (B, L) layout (L = the longest sequence,
<= S), runs torch's SDPA with `is_causal` there, and gathers the N outputs back; everything but the attention
kernel is padding-free, and the kernel does no more work than in the padded forward. Forwards that do not pass
a plan (`AttentionPlan`, the `rlft_packing` keyword), such as the HF engine's, run plain `sdpa`. Under
`flash_attention_2` transformers' varlen kernels read the sequence boundaries from the position ids (no
registration needed). `eager` does not pack (its block-diagonal mask is quadratic in N).

Shared prompts (`ppo.prefix_sharing`) compose with packing: the distinct prompts run as one packed row whose
attention keeps each layer's keys and values (`AttentionPlan.capture`); the responses then run as another
packed row whose queries attend to their own prompt's kept keys and values, then causally to their own tokens
(`AttentionPlan.prefix`, with an explicit (B, 1, L_q, L_k) mask). That is what the KV-cache copy of the
padded shared-prompt forward computes, without its padding.

On CPU, a forward that trains under bf16 runs this attention in fp32 (`_fp32_island`: torch's bf16 CPU
flash-attention backward is the slow one); that covers every forward through rlft's attention, packed or not.

Covered: the Llama family (`LLAMA_FAMILY`) without sliding-window attention, under sdpa or flash_attention_2
(`unsupported_reason`); other models run their padded forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlft.models.loading import LLAMA_FAMILY, uses_sliding_window
from rlft.utils.device import autocast_dtype

ATTENTION_NAME = "rlft_packed_sdpa"
PLAN_KEYWORD = "rlft_packing"  # the forward keyword that carries an `AttentionPlan` to the attention function


@dataclass(frozen=True)
class PackedRows:
    """Where the N real tokens of a (B, S) batch go, row-major.

    Attributes:
        real: (B, S) bool, the attention mask.
        index: (N,) flat index b * S + s of each real token in the (B, S) batch.
        rank: (N,) the token's place among its row's real tokens (0, 1, ...).
        slot: (N,) b * width + rank: its place in the left-aligned (B, width) layout of the attention kernel.
        width: the longest row's real token count.
    """

    real: torch.Tensor
    index: torch.Tensor
    rank: torch.Tensor
    slot: torch.Tensor
    width: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> PackedRows:
        real = attention_mask.bool()
        B, S = real.shape
        index = real.reshape(-1).nonzero().squeeze(1)  # (N,)
        rank = (real.long().cumsum(1) - 1).reshape(-1)[index]  # (N,)
        width = max(1, int(real.sum(1).max())) if B else 1
        return cls(real, index, rank, index // S * width + rank, width)

    @property
    def rows(self) -> int:
        return self.real.shape[0]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (1, N, ...): the real tokens' entries as one row."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, S, ...), zeros at padding (differentiable: the gradient flows to x)."""
        B, S = self.real.shape
        out = x.new_zeros(B * S, *x.shape[2:]).index_copy(0, self.index, x[0])
        return out.view(B, S, *x.shape[2:])


@dataclass
class AttentionPlan:
    """What `packed_sdpa` needs for one packed forward (passed as the `rlft_packing` keyword).

    Queries (and keys, without a prefix) of the packed row go to slots `q_slot` of a (rows, q_width) layout (None:
    every row is full, so the packed row already is that layout). With `prefix`, each row's keys and values are
    first the kept ones of its prefix (`prefix_index` into the prefix pass's packed tokens, row-major, to slots
    `prefix_slot`), then its own (to `own_slot`), in a (rows, k_width) layout; `mask` (rows, 1, q_width, k_width)
    says which keys each query sees. `capture`, when set, receives every layer's (key, value) of this pass:
    {layer index: ((1, H_kv, N, d), (1, H_kv, N, d))}.
    """

    rows: int
    q_slot: torch.Tensor | None
    q_width: int
    capture: dict | None = None
    prefix: dict | None = None
    prefix_index: torch.Tensor | None = None
    prefix_slot: torch.Tensor | None = None
    own_slot: torch.Tensor | None = None
    k_width: int = 0
    mask: torch.Tensor | None = None
    tokens: int | None = None  # the packed row's real tokens; any after them are `pad_for_kernels`'s tail

    @classmethod
    def causal(cls, packed: PackedRows, capture: dict | None = None) -> AttentionPlan:
        """Each row attends causally to itself."""
        full = packed.index.numel() == packed.rows * packed.width
        return cls(packed.rows, None if full else packed.slot, packed.width, capture=capture,
                   tokens=packed.index.numel())

    @classmethod
    def after_prefix(cls, packed: PackedRows, prefix: dict, prefix_rows: PackedRows,
                     row_prefix: torch.Tensor) -> AttentionPlan:
        """Row b's tokens (`packed`) continue row `row_prefix[b]` of the prefix pass (`prefix_rows`, whose keys
        and values `prefix` holds): query q of row b (q = its rank) sees that prefix's p_b keys and its own
        first q + 1."""
        device = packed.index.device
        prefix_lengths = prefix_rows.real.sum(1)  # (U,)
        lengths = prefix_lengths[row_prefix]  # (B,) p_b
        starts = torch.cumsum(prefix_lengths, 0) - prefix_lengths  # (U,) each prefix's first packed token
        rows = torch.arange(packed.rows, device=device)
        prefix_row = torch.repeat_interleave(rows, lengths)  # (sum p_b,) the row each kept key goes to
        prefix_rank = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)  # (sum p_b,) 0..p_b-1 within its row
        k_width = int(lengths.max()) + packed.width if packed.rows else 1
        own_row = packed.index // packed.real.shape[1]  # (N,)
        key_col = torch.arange(k_width, device=device)  # (k_width,)
        query = torch.arange(packed.width, device=device)  # (q_width,)
        mask = key_col.view(1, 1, -1) <= (lengths.view(-1, 1, 1) + query.view(1, -1, 1))  # (B, q_width, k_width)
        full = packed.index.numel() == packed.rows * packed.width
        return cls(packed.rows, None if full else packed.slot, packed.width, prefix=prefix,
                   prefix_index=starts[row_prefix][prefix_row] + prefix_rank,
                   prefix_slot=prefix_row * k_width + prefix_rank,
                   own_slot=own_row * k_width + lengths[own_row] + packed.rank, k_width=k_width,
                   mask=mask.unsqueeze(1), tokens=packed.index.numel())


def _to_rows(x: torch.Tensor, slot: torch.Tensor | None, rows: int, width: int) -> torch.Tensor:
    """(1, H, N, d) packed -> (rows, H, width, d), each token at its slot, zeros elsewhere (slot None: N = rows x
    width tokens already in that order)."""
    _, H, _, d = x.shape
    if slot is None:
        return x[0].reshape(H, rows, width, d).transpose(0, 1)
    out = x.new_zeros(rows * width, H, d)  # zeros: padded keys must not be NaN even where no query reads them
    out.index_copy_(0, slot, x[0].transpose(0, 1))
    return out.view(rows, width, H, d).transpose(1, 2)


def _prefixed_rows(kept: torch.Tensor, own: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """Keys (or values) (rows, H_kv, k_width, d): each row's kept prefix ones, then its own (`AttentionPlan`)."""
    _, H_kv, _, d = own.shape
    out = own.new_zeros(plan.rows * plan.k_width, H_kv, d)
    out.index_copy_(0, plan.prefix_slot, kept[0].index_select(1, plan.prefix_index).transpose(0, 1))
    out.index_copy_(0, plan.own_slot, own[0].transpose(0, 1))
    return out.view(plan.rows, plan.k_width, H_kv, d).transpose(1, 2)


def _fp32_island(query: torch.Tensor) -> torch.dtype | None:
    """bfloat16 when a CPU forward that trains would run this attention in bf16 (bf16 autocast, or bf16 inputs),
    else None. Why run it in fp32 there: torch's CPU flash-attention backward is 1.4-3.3x slower in bf16 than in
    fp32 (measured with AMX, torch 2.13: (8, 9, 75, 75, 64) causal fwd+bwd 9.5 vs 2.9 ms; forward alone equal),
    which made bf16-mixed training no faster than fp32 (`docs/benchmarks.md`). The attention's FLOPs are a
    small share of a step; its inputs are upcast, and the output goes back to bf16 as bf16 compute would give
    it. No-grad forwards (sampling, log-probs) keep bf16 (forward speed is equal); GPUs keep bf16."""
    if query.device.type != "cpu" or not (torch.is_grad_enabled() and query.requires_grad):
        return None
    if query.dtype == torch.bfloat16 or autocast_dtype(query.device) == torch.bfloat16:
        return torch.bfloat16
    return None


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                rlft_packing: AttentionPlan | None = None, **kwargs):
    """transformers' attention-function signature: query (B, H, q, d), key / value (B, H_kv, k, d) ->
    ((B, q, H, d), None). With a plan: the packed row (B = 1) per sequence (module docstring); without: `sdpa`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out_dtype = _fp32_island(query)
    if out_dtype is not None:  # the same attention in fp32, its output back in the dtype bf16 compute gives
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):
            out, weights = packed_sdpa(module, query.float(), key.float(), value.float(), attention_mask,
                                       dropout=dropout, scaling=scaling, rlft_packing=rlft_packing, **kwargs)
        return out.to(out_dtype), weights
    plan = rlft_packing
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    tail = 0 if plan.tokens is None else query.shape[2] - plan.tokens
    if tail:  # `pad_for_kernels`'s tail tokens attend to nothing and nothing attends to them: output 0
        query, key, value = (x.narrow(2, 0, plan.tokens) for x in (query, key, value))
        out, weights = packed_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                   rlft_packing=plan, **kwargs)
        return torch.nn.functional.pad(out, (0, 0, 0, 0, 0, tail)), weights
    if plan.capture is not None:
        plan.capture[module.layer_idx] = (key, value)
    H, H_kv, d = query.shape[1], key.shape[1], query.shape[3]
    q = _to_rows(query, plan.q_slot, plan.rows, plan.q_width)  # (B, H, L_q, d)
    if plan.prefix is None:
        k, v = (_to_rows(x, plan.q_slot, plan.rows, plan.q_width) for x in (key, value))  # (B, H_kv, L, d)
        gqa = {"enable_gqa": H != H_kv}  # no mask: torch's kernels take grouped heads as they are
    else:
        kept_key, kept_value = plan.prefix[module.layer_idx]
        k, v = _prefixed_rows(kept_key, key, plan), _prefixed_rows(kept_value, value, plan)  # (B, H_kv, L_k, d)
        if H != H_kv:  # with a mask torch's fused kernels take no grouped heads (transformers repeats them too)
            k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)
        gqa = {}
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, is_causal=plan.mask is None,
                                                           dropout_p=dropout, scale=scaling, **gqa)  # (B, H, L_q, d)
    out = out.transpose(1, 2).reshape(plan.rows * plan.q_width, H, d)
    # index_select, not out[q_slot]: its backward (index_add) measured 2-5x faster than advanced indexing's
    return (out if plan.q_slot is None else out.index_select(0, plan.q_slot)).unsqueeze(0), None  # (1, N, H, d)


def kernel_rows(n: int) -> int:
    """`n` rounded up to one of 16 sizes per octave (at most 6.25 % more; n itself up to 32)."""
    if n <= 32:
        return n
    step = 1 << (n.bit_length() - 5)
    return -(-n // step) * step


def pad_for_kernels(lm: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    """A packed row (1, N) of token and position ids, with a tail of dummy tokens up to `kernel_rows(N + 1)` where the
    forward multiplies in bf16 on a CPU (bf16 autocast, or bf16 weights); else as it is. The attention leaves the
    tail out (`packed_sdpa`, the plan's `tokens`); callers keep the first N outputs, so outputs and gradients are
    those of the N tokens.

    Why: oneDNN builds a bf16 GEMM kernel for every new row count (measured 2.6-4.6 ms against 0.2-0.5 ms for a
    shape it has built before, (1,978, 256) x (256, 688)), and a packed row's token count changes with every batch,
    so without the tail every GEMM of every train step and log-prob pass paid the build: the tiny model's GRPO
    iteration measured 0.470 s with changing counts against 0.431 s with a constant one. fp32 GEMMs (MKL) and GPUs
    have no per-shape cost, and get no tail."""
    n = input_ids.shape[1]
    if input_ids.device.type != "cpu" or not (
            autocast_dtype(input_ids.device) == torch.bfloat16
            or lm.get_input_embeddings().weight.dtype == torch.bfloat16):
        return input_ids, position_ids
    # At least one dummy token, even where N is a kernel size already: the autograd graph must not depend on the
    # batch (measured: DeepSpeed ZeRO-3 ranks deadlocked when one rank's row had a tail and the other's had none,
    # their backward hooks then gathering parameters in different orders)
    tail = torch.arange(kernel_rows(n + 1) - n, device=input_ids.device).unsqueeze(0)  # one sequence, token id 0
    return torch.cat([input_ids, torch.zeros_like(tail)], dim=1), torch.cat([position_ids, tail], dim=1)


def _packed_sdpa_mask(*args, attention_mask: torch.Tensor | None = None, q_length: int | None = None,
                      kv_length: int | None = None, **kwargs):
    """sdpa's mask, except for a forward without an attention mask over as many keys as queries (a packed row,
    or one unpadded row): no mask, as sdpa's own would be for one row; `packed_sdpa` keeps packed sequences
    apart (transformers would build the (N, N) block-diagonal mask here)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, packed_sdpa)
    AttentionMaskInterface.register(ATTENTION_NAME, _packed_sdpa_mask)


def unsupported_reason(lm: torch.nn.Module) -> str | None:
    """Why `lm`'s forwards cannot pack, or None when they can."""
    config = lm.config
    if getattr(config, "model_type", None) not in LLAMA_FAMILY:
        return f"architecture {getattr(config, 'model_type', None)!r} (packing covers {', '.join(LLAMA_FAMILY)})"
    if uses_sliding_window(config):
        return "sliding-window attention"
    if config._attn_implementation not in ("sdpa", "flash_attention_2", ATTENTION_NAME):
        return f"attention {config._attn_implementation!r} (packing runs with sdpa or flash_attention_2)"
    return None


def enable(lm: torch.nn.Module) -> None:
    """Let `lm` run packed forwards (`unsupported_reason` must be None): under sdpa, its config names rlft's
    attention from now on (unpacked forwards still run plain sdpa through it). For good, not for a block:
    gradient checkpointing recomputes the layers during backward, which must dispatch the same way."""
    if lm.config._attn_implementation == "sdpa":
        _register()
        lm.config._attn_implementation = ATTENTION_NAME


def plan_keyword(lm: torch.nn.Module, plan: AttentionPlan) -> dict:
    """The forward keywords of a packed forward: the plan for rlft's attention; nothing for flash_attention_2,
    whose varlen kernels find the sequences from the restarting position ids."""
    return {PLAN_KEYWORD: plan} if lm.config._attn_implementation == ATTENTION_NAME else {}


def shares_prefixes(lm: torch.nn.Module) -> bool:
    """Packed forwards can continue a packed prefix pass (`AttentionPlan.after_prefix`): rlft's attention only."""
    return lm.config._attn_implementation == ATTENTION_NAME
