"""SFT loss and label masking (specs/reft.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlft.algos import sft


def close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_build_labels_left_padded_prompt_with_pad_equal_eos() -> None:
    # pad = eos = 2; rows: [pad, p, p, t, t, eos] and [p, p, p, t, eos, pad]
    # left-padded prompts share the padded prompt width 3; the final EOS keeps its label, padding does not
    ids = torch.tensor([[2, 5, 6, 7, 8, 2], [4, 5, 6, 9, 2, 2]])
    attn = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    labels = sft.build_labels(ids, 3, attn)
    assert labels.tolist() == [[-100, -100, -100, 7, 8, 2], [-100, -100, -100, 9, 2, -100]]
    assert torch.equal(ids, torch.tensor([[2, 5, 6, 7, 8, 2], [4, 5, 6, 9, 2, 2]]))  # not modified


def test_build_labels_per_row_prompt_lengths() -> None:
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    labels = sft.build_labels(ids, torch.tensor([1, 3]), ignore_index=-1)
    assert labels.tolist() == [[-1, 2, 3, 4], [-1, -1, -1, 4]]


def test_sft_loss_uniform_logits_is_log_vocab() -> None:
    logits = torch.zeros(2, 4, 7)
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 1, 2, -100]])
    loss, m = sft.sft_loss(logits, labels)
    close(loss, math.log(7))  # every labelled token has probability 1/7
    close(m["sft/n_tokens"], 4.0)  # shifted labels [-100, 3, 4] and [1, 2, -100]


def test_sft_loss_matches_torch_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 9, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (3, 6), generator=g)
    labels[:, :2] = -100  # prompt
    labels[2, 4:] = -100  # padding
    loss, m = sft.sft_loss(logits, labels, chunk_size=2)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1), ignore_index=-100)
    close(loss, expected.detach())
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    valid = labels[:, 1:] != -100
    acc = (logits[:, :-1].argmax(-1) == labels[:, 1:])[valid].float().mean()
    close(m["sft/token_acc"], acc)


def test_token_accuracy_counts_ties_as_argmax_does() -> None:
    # argmax's rule on ties is the first maximal index: a label tied for the max at a later index is wrong
    # (bf16 logits tie often); both logits layouts
    logits = torch.tensor([[[0.0, 2.0, 2.0, 1.0], [3.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])  # (1, 3, 4)
    labels = torch.tensor([[-100, 2, 0]])  # position 0 scores label 2 (tied with 1: wrong); 1 scores 0 (right)
    for dtype in (torch.float32, torch.bfloat16):
        _, m = sft.sft_loss(logits.to(dtype), labels)
        close(m["sft/token_acc"], 0.5)
        _, m = sft.sft_loss(logits[0, :2].to(dtype), labels)  # the (N, V) labelled-positions layout
        close(m["sft/token_acc"], 0.5)
    big = torch.randn(5, 40_000).to(torch.bfloat16)  # many exact ties in bf16
    assert torch.equal(sft._first_argmax(big), big.argmax(dim=-1))


def test_sft_loss_nothing_labelled_is_zero() -> None:
    loss, m = sft.sft_loss(torch.randn(2, 3, 5), torch.full((2, 3), -100))
    close(loss, 0.0)
    close(m["sft/n_tokens"], 0.0)


def test_sft_loss_shards_average_to_global() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 6, generator=g)
    labels = torch.randint(0, 6, (4, 5), generator=g)
    labels[0, :4] = -100  # uneven token counts across shards
    full, _ = sft.sft_loss(logits, labels)
    n = (labels[:, 1:] != -100).sum()
    shards = [sft.sft_loss(logits[i : i + 2], labels[i : i + 2], num_tokens=n / 2)[0] for i in (0, 2)]
    close((shards[0] + shards[1]) / 2, full)


def test_labelled_positions_are_the_positions_before_each_label() -> None:
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 1, 2, -100]])
    # position p scores labels[p + 1]; the last position scores nothing
    assert sft.labelled_positions(labels).tolist() == [[False, True, True, False], [True, True, False, False]]


def test_sft_loss_on_the_labelled_positions_only_equals_the_full_logits() -> None:
    """(N, V) logits of the N labelled positions (what `PolicyModel(..., logits_mask=...)` returns) give the
    same loss, accuracy and gradient as the (B, S, V) logits; a row count that does not match is an error."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, 9, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (3, 6), generator=g)
    labels[:, :2] = -100
    labels[1, 3:] = -100
    full_loss, full_m = sft.sft_loss(logits, labels)
    (full_grad,) = torch.autograd.grad(full_loss, logits)
    selected = logits[sft.labelled_positions(labels)]  # (N, V), row-major
    assert selected.shape == (int((labels[:, 1:] != -100).sum()), 9)
    loss, m = sft.sft_loss(selected, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    close(loss.detach(), full_loss.detach())
    close(m["sft/token_acc"], full_m["sft/token_acc"])
    torch.testing.assert_close(grad, full_grad)
    with pytest.raises(ValueError, match="logit rows"):
        sft.sft_loss(selected[1:], labels)
