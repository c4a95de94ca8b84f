"""Position rules (spec T5): absolute unpadded indices, pyreft's clamp, tying, BREP's P + n, pads never edited."""

import pytest
import torch

from rlft.adapters.positions import PositionMeta, PositionRule, positions_for_batch, rules_for


def edited(rule: PositionRule, prompt_len: int, total: int) -> list[int]:
    """Unpadded indices 0..total-1 of one row that `rule` edits."""
    real = torch.arange(total).unsqueeze(0)
    return real[rule.mask(real, torch.tensor([prompt_len]))].tolist()


@pytest.mark.parametrize("rule, P, expected", [
    (PositionRule("prefix_suffix", first=2, last=2), 8, [0, 1, 6, 7]),
    (PositionRule("prefix_suffix", first=7, last=7), 5, [0, 1, 3, 4]),  # clamped to P // 2 = 2 per side
    (PositionRule("prefix_suffix", first=7, last=7), 3, [0, 2]),  # P // 2 = 1 per side
    (PositionRule("prefix_suffix", first=7, last=7), 1, []),  # P // 2 = 0: a 1-token prompt is not edited
    (PositionRule("prefix_suffix", first=0, last=3), 8, [5, 6, 7]),
    (PositionRule("prefix", first=3), 8, [0, 1, 2]),
    (PositionRule("suffix", last=3), 8, [5, 6, 7]),
    (PositionRule("last_prompt"), 5, [4]),
    (PositionRule("prompt_plus_first_n", n=3), 4, [0, 1, 2, 3, 4, 5, 6]),  # BREP: the prompt + 3 generated
    (PositionRule("prompt_plus_first_n", n=0), 4, [0, 1, 2, 3]),  # rlft's n = 0 is the prompt only
    (PositionRule("response_first_n", n=2), 4, [4, 5]),
    (PositionRule("all"), 3, list(range(10))),
])
def test_rule_table(rule, P, expected):
    assert edited(rule, P, total=10) == expected


def test_untied_rules_split_the_tied_set():
    tied = rules_for("prefix_suffix", first=3, last=2, generated=0, tied=True)
    prefix, suffix = rules_for("prefix_suffix", first=3, last=2, generated=0, tied=False)
    assert [r.name for r in tied] == ["prefix_suffix"] and (prefix.name, suffix.name) == ("prefix", "suffix")
    for P in (1, 3, 5, 9):
        a, b, union = edited(prefix, P, 12), edited(suffix, P, 12), edited(tied[0], P, 12)
        assert not set(a) & set(b) and sorted(a + b) == union  # disjoint, and together the tied rule


def test_pads_are_negative_and_never_selected():
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])  # left-padded prompts
    meta = PositionMeta.from_prompt_mask(mask)
    assert meta.pad_left.tolist() == [3, 0, 1] and meta.prompt_len.tolist() == [2, 5, 4]
    real = meta.real_index(torch.arange(5 + 4))  # the prompt columns plus 4 response columns
    pads = torch.cat([mask == 0, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    assert (real[pads] < 0).all()
    for rule in (PositionRule("all"), PositionRule("prompt_plus_first_n", n=9), PositionRule("prefix", first=9)):
        assert not rule.mask(real, meta.prompt_len)[pads].any(), rule


def test_pad_left_comes_from_the_mask_even_when_pad_is_eos():
    eos = pad = 1
    ids = torch.tensor([[pad, pad, 5, eos, 7]])  # an EOS inside the prompt looks like padding by id
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    meta = PositionMeta.from_prompt_mask(mask)
    assert meta.pad_left.item() == 2 and meta.prompt_len.item() == 3
    assert int((ids == pad).sum()) == 3  # counting pad ids would have said 3


def test_a_decode_chunk_gets_the_same_edits_as_the_full_sequence():
    """Columns [T_f - T_c, T_f) of a chunk map to the same absolute indices as in one full forward."""
    meta = PositionMeta.from_prompt_mask(torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))
    rule = PositionRule("prompt_plus_first_n", n=2)
    full = rule.mask(meta.real_index(torch.arange(10)), meta.prompt_len)  # prompt (6) + 4 response tokens
    prefill = rule.mask(meta.real_index(torch.arange(0, 6)), meta.prompt_len)
    steps = [rule.mask(meta.real_index(torch.arange(t - 1, t)), meta.prompt_len) for t in range(7, 11)]
    assert torch.equal(torch.cat([prefill, *steps], dim=1), full)
    assert full[0].tolist() == [False, False, True, True, True, True, True, True, False, False]


def test_positions_for_batch_reads_both_layouts():
    ppo = positions_for_batch({"prompt_mask": torch.tensor([[0, 1, 1]])})
    sft = positions_for_batch({"prompt_len": torch.tensor([4])})
    assert (ppo.pad_left.item(), ppo.prompt_len.item()) == (1, 2)
    assert (sft.pad_left.item(), sft.prompt_len.item()) == (0, 4)
    assert positions_for_batch({"input_ids": torch.zeros(1, 3)}) is None
