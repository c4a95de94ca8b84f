"""Packing's layouts (`rlft/models/packing.py`) on hand-sized masks, and its attention on random tensors against
plain per-sequence attention."""

import torch
import torch.nn.functional as F

from rlft.models.packing import AttentionPlan, PackedRows, packed_sdpa


def test_packed_rows_of_a_left_and_right_padded_batch():
    mask = torch.tensor([[0, 1, 1, 1, 0],   # left pad, 3 tokens, right pad
                         [1, 1, 0, 0, 0],   # 2 tokens
                         [1, 1, 1, 1, 1]])  # 5 tokens
    rows = PackedRows.of(mask)
    assert rows.index.tolist() == [1, 2, 3, 5, 6, 10, 11, 12, 13, 14]  # b * 5 + column, row-major
    assert rows.index.numel() == int(mask.sum()) == 3 + 2 + 5  # the packed row holds the real tokens only
    assert rows.rank.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]  # = the padded forward's position ids
    assert rows.width == 5
    assert rows.slot.tolist() == [0, 1, 2, 5, 6, 10, 11, 12, 13, 14]  # left-aligned in (3, 5)
    assert AttentionPlan.causal(rows).q_slot.tolist() == rows.slot.tolist()
    assert AttentionPlan.causal(PackedRows.of(torch.ones(2, 3))).q_slot is None  # no padding: no scatter
    x = torch.arange(15.0).view(3, 5, 1)
    packed = rows.pack(x)
    assert packed.shape == (1, 10, 1) and packed.flatten().tolist() == [1, 2, 3, 5, 6, 10, 11, 12, 13, 14]
    assert torch.equal(rows.unpack(packed), x * mask.unsqueeze(-1))  # zeros at padding


def test_after_prefix_places_each_rows_prefix_then_its_own_tokens():
    prompts = PackedRows.of(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # prefixes of 2 and 3 tokens (packed: 0-1, 2-4)
    responses = PackedRows.of(torch.tensor([[1, 1], [1, 0], [1, 1]]))  # rows 0, 1, 2 continue prefixes 1, 0, 1
    plan = AttentionPlan.after_prefix(responses, {}, prompts, torch.tensor([1, 0, 1]))
    assert plan.prefix_index.tolist() == [2, 3, 4, 0, 1, 2, 3, 4]  # row 0: prefix 1; row 1: prefix 0; row 2: prefix 1
    assert plan.k_width == 3 + 2
    # the 8 kept prefix keys, then the 5 response tokens' own, each in its row after its prefix
    assert plan.prefix_slot.tolist() == [0, 1, 2, 5, 6, 10, 11, 12]
    assert plan.own_slot.tolist() == [3, 4, 7, 13, 14]
    assert plan.q_slot.tolist() == [0, 1, 2, 4, 5]  # row 1's second query slot is padding
    # response token q of row b sees columns < p_b + q + 1
    assert plan.mask[0, 0].int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert plan.mask[1, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


class _Attention(torch.nn.Module):
    layer_idx = 0


def test_packed_attention_equals_attention_per_sequence():
    """Grouped-query attention over a packed row of 3 sequences (lengths 4, 1, 3), with and without a prefix,
    against causal SDPA on each sequence alone."""
    gen = torch.Generator().manual_seed(0)
    lengths, H, H_kv, d = [4, 1, 3], 4, 2, 8
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    rows = PackedRows.of(mask)
    q, k, v = (torch.randn(1, h, 8, d, generator=gen) for h in (H, H_kv, H_kv))
    out, _ = packed_sdpa(_Attention(), q, k, v, None, scaling=0.3, rlft_packing=AttentionPlan.causal(rows))
    starts = [0, 4, 5]
    for start, n in zip(starts, lengths):
        seq = slice(start, start + n)
        want = F.scaled_dot_product_attention(q[:, :, seq], k[:, :, seq].repeat_interleave(2, 1),
                                              v[:, :, seq].repeat_interleave(2, 1), is_causal=True, scale=0.3)
        torch.testing.assert_close(out[0, seq], want[0].transpose(0, 1))
    # the same sequences after prefixes of 2 and 3 tokens (rows 0 and 2 after prefix 1, row 1 after prefix 0)
    prompts = PackedRows.of(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    pk, pv = (torch.randn(1, H_kv, 5, d, generator=gen) for _ in range(2))
    owner = torch.tensor([1, 0, 1])
    out, _ = packed_sdpa(_Attention(), q, k, v, None, scaling=0.3,
                         rlft_packing=AttentionPlan.after_prefix(rows, {0: (pk, pv)}, prompts, owner))
    prefix = {0: slice(0, 2), 1: slice(2, 5)}
    for start, n, p in zip(starts, lengths, owner.tolist()):
        seq = slice(start, start + n)
        keys = torch.cat([pk[:, :, prefix[p]], k[:, :, seq]], 2).repeat_interleave(2, 1)
        values = torch.cat([pv[:, :, prefix[p]], v[:, :, seq]], 2).repeat_interleave(2, 1)
        p_len = prefix[p].stop - prefix[p].start
        allowed = torch.arange(p_len + n).view(1, -1) <= p_len + torch.arange(n).view(-1, 1)
        want = F.scaled_dot_product_attention(q[:, :, seq], keys, values, attn_mask=allowed, scale=0.3)
        torch.testing.assert_close(out[0, seq], want[0].transpose(0, 1))


def test_packed_attention_of_rows_without_padding_needs_no_scatter():
    gen = torch.Generator().manual_seed(1)
    rows = PackedRows.of(torch.ones(2, 4, dtype=torch.long))
    q, k, v = (torch.randn(1, 8, 4, 2, generator=gen).transpose(1, 2) for _ in range(3))  # transformers' layout
    out, _ = packed_sdpa(_Attention(), q, k, v, None, rlft_packing=AttentionPlan.causal(rows))
    for start in (0, 4):
        seq = slice(start, start + 4)
        want = F.scaled_dot_product_attention(q[:, :, seq], k[:, :, seq], v[:, :, seq], is_causal=True)
        torch.testing.assert_close(out[0, seq], want[0].transpose(0, 1))


def test_cpu_training_attention_runs_in_fp32_under_bf16_autocast():
    """A CPU forward that trains under bf16 autocast runs the attention in fp32 (torch's bf16 CPU backward is the
    slower one) and returns bf16, as bf16 compute would; a no-grad forward keeps the bf16 kernel."""
    gen = torch.Generator().manual_seed(2)
    rows = PackedRows.of(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    q, k, v = (torch.randn(1, 2, 7, 16, generator=gen) for _ in range(3))
    plan = AttentionPlan.causal(rows)

    def per_sequence(q, k, v):  # what packed attention must compute, in the inputs' dtype
        return torch.cat([F.scaled_dot_product_attention(q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True)[0]
                          .transpose(0, 1) for s in (slice(0, 3), slice(3, 7))])

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = packed_sdpa(_Attention(), *leaves, None, rlft_packing=plan)
    assert out.dtype == torch.bfloat16
    want = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = per_sequence(*want)
    assert torch.equal(out[0], expected.to(torch.bfloat16))  # fp32 attention, rounded once at the end
    assert not torch.equal(out[0], per_sequence(q.bfloat16(), k.bfloat16(), v.bfloat16()))  # not the bf16 kernel
    out.float().sum().backward()
    expected.to(torch.bfloat16).float().sum().backward()
    for got, ref in zip(leaves, want):
        torch.testing.assert_close(got.grad, ref.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # sampling / log-prob passes: bf16 kernel
        out, _ = packed_sdpa(_Attention(), q, k, v, None, rlft_packing=plan)
    assert torch.equal(out[0], per_sequence(q.bfloat16(), k.bfloat16(), v.bfloat16()))
