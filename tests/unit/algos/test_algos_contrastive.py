"""CARFT pooling, contrastive loss, LCS and partial reward (specs/carft.md §11 test vectors)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import contrastive


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- pooling


def test_pool_spec_vector() -> None:
    # V = [0, ln 3, 5], M = [1, 1, 0]: w = [1, 3] / 4 = [0.25, 0.75, 0]; z = 0.25*[1,0] + 0.75*[0,1]
    values = torch.tensor([[0.0, math.log(3.0), 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    close(contrastive.pool_weights(values, mask), [[0.25, 0.75, 0.0]], atol=1e-6)
    close(contrastive.pool(values, emb, mask), [[0.25, 0.75]], atol=1e-6)


def test_pool_weights_properties() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=g) * 10
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 1, 0, 1, 0]])
    w = contrastive.pool_weights(values, mask)
    assert (w >= 0).all()
    close(w.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.all(w[mask == 0] == 0)


def test_pool_padding_invariance() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1, 4, generator=g)
    emb = torch.randn(1, 4, 3, generator=g)
    mask = torch.ones(1, 4)
    z = contrastive.pool(values, emb, mask)
    # 2 left pads and 3 right pads with arbitrary (even non-finite) values and embeddings
    pad_v_left, pad_v_right = torch.tensor([[1e4, float("nan")]]), torch.tensor([[-1e4, float("inf"), 7.0]])
    pad_e_left = torch.full((1, 2, 3), float("nan"))
    pad_e_right = torch.full((1, 3, 3), 1e30)
    padded_v = torch.cat([pad_v_left, values, pad_v_right], dim=1)
    padded_e = torch.cat([pad_e_left, emb, pad_e_right], dim=1)
    padded_m = torch.cat([torch.zeros(1, 2), mask, torch.zeros(1, 3)], dim=1)
    close(contrastive.pool(padded_v, padded_e, padded_m), z, atol=1e-6)


def test_pool_empty_mask_uses_last_position() -> None:
    values = torch.tensor([[0.3, float("nan"), 2.0]])
    emb = torch.tensor([[[1.0, 1.0], [float("nan"), 0.0], [4.0, 5.0]]])
    w = contrastive.pool_weights(values, torch.zeros(1, 3))
    close(w, [[0.0, 0.0, 1.0]])
    close(contrastive.pool(values, emb, torch.zeros(1, 3)), [[4.0, 5.0]])


def test_pool_gradient_flows_through_values_and_embeddings() -> None:
    values = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], requires_grad=True)
    contrastive.pool(values, emb, torch.tensor([[1, 1, 0]]))[:, 0].sum().backward()
    assert values.grad[0, :2].abs().sum() > 0 and values.grad[0, 2] == 0
    assert emb.grad[0, :2].abs().sum() > 0 and torch.all(emb.grad[0, 2] == 0)


def test_pool_entropy() -> None:
    close(contrastive.pool_entropy(contrastive.pool_weights(torch.zeros(2, 4), torch.ones(2, 4))), math.log(4))
    close(contrastive.pool_entropy(torch.tensor([[0.0, 1.0, 0.0]])), 0.0)


# ---------------------------------------------------------------- contrastive loss


def test_loss_two_sample_spec_vector() -> None:
    # sample 0 correct: cos(a0, g0) = 1 clamped to 0.9 -> numerator e^{0.9/0.2} = e^4.5
    # denominator e^{1/0.2} (self, unclamped) + e^{cos(a0, g1)/0.2} = e^5 + e^0
    # L = -4.5 + ln(e^5 + 1) = 0.506715
    eye = torch.eye(2)
    loss, m = contrastive.loss(eye, eye.clone(), torch.tensor([True, False]))
    close(loss, -4.5 + math.log(math.exp(5) + 1), atol=1e-5)
    close(loss, 0.506715, atol=1e-5)
    close(m["carft/n_positive"], 1.0)
    close(m["carft/pos_cos_mean"], 1.0)
    close(m["carft/frac_at_clamp"], 1.0)
    close(m["carft/neg_cos_mean"], 0.0)


Z_ANN3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Z_GEN3 = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, -1.0]])


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        # sample 0: pos cos 0.6 -> -3 + ln(e^3 + e^0 + e^{0.7071/0.2}) = 1.0146
        ([True, False, False], 1.0146),
        # sample 1: cos 1 -> 0.9: -4.5 + ln(e^{0.8/0.2} + e^5 + e^{-0.7071/0.2}) = 0.8134
        ([False, True, False], 0.8134),
        # sample 2 (if it were correct): cos 0: ln(e^{0.98995/0.2} + e^{0.7071/0.2} + e^0) = 5.1731
        ([False, False, True], 5.1731),
        # the spec's case: mean over the two correct samples (1.0146 + 0.8134) / 2 = 0.9140
        ([True, True, False], 0.9140),
    ],
)
def test_loss_three_sample_spec_vector(correct: list[bool], expected: float) -> None:
    loss, _ = contrastive.loss(Z_ANN3, Z_GEN3, torch.tensor(correct))
    close(loss, expected, atol=1e-4)


def test_loss_zero_value_but_faithful_gradient() -> None:
    # one sample, cos([1,0],[1,1]) = 0.7071 < 0.9: pos = den so the loss is 0,
    # but the (detached) denominator leaves the gradient -(1/tau) * d cos / d z_gen
    # d cos / d g = a/(|a||g|) - cos * g/|g|^2 = [0.7071, 0] - 0.7071 * [0.5, 0.5] = [0.3536, -0.3536]
    z_gen = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss, _ = contrastive.loss(torch.tensor([[1.0, 0.0]]), z_gen, torch.tensor([True]))
    close(loss, 0.0, atol=1e-6)
    loss.backward()
    close(z_gen.grad, [[-1.7678, 1.7678]])


def test_loss_no_correct_sample_is_zero() -> None:
    z_gen = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, m = contrastive.loss(torch.randn(3, 4), z_gen, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z_gen.grad, torch.zeros(3, 4))
    assert all(torch.isfinite(v) for v in m.values())


def test_loss_anchor_gets_no_gradient_and_clamp_gives_zero_gradient() -> None:
    z_ann = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    z_gen = torch.tensor([[2.0, 0.0], [1.0, 1.0]], requires_grad=True)  # cos 1 >= 0.9 and cos 0.7071
    loss, _ = contrastive.loss(z_ann, z_gen, torch.tensor([True, True]))
    loss.backward()
    assert z_ann.grad is None
    assert torch.equal(z_gen.grad[0], torch.zeros(2))  # at the clamp: exactly 0
    assert z_gen.grad[1].abs().sum() > 0 and torch.isfinite(z_gen.grad).all()


def test_loss_finite_gradient_for_degenerate_embeddings() -> None:
    z_gen = torch.tensor([[0.0, 0.0], [1e-12, 0.0]], requires_grad=True)
    loss, _ = contrastive.loss(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), z_gen, torch.tensor([True, True]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_gen.grad).all()


def test_loss_negatives_do_not_change_the_gradient_in_faithful_mode() -> None:
    z_ann = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    base = torch.tensor([[1.0, 1.0], [0.5, -1.0]])
    grads, losses = [], []
    for other in ([0.5, -1.0], [-3.0, 2.0]):  # perturb sample 1's z_gen (not correct)
        z_gen = torch.tensor([base[0].tolist(), other], requires_grad=True)
        loss, _ = contrastive.loss(z_ann, z_gen, torch.tensor([True, False]))
        loss.backward()
        grads.append(z_gen.grad[0].clone())
        losses.append(loss.item())
    assert losses[0] != pytest.approx(losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    # negatives_grad=True lets gradient reach the local negative
    z_gen = base.clone().requires_grad_()
    loss, _ = contrastive.loss(z_ann, z_gen, torch.tensor([True, False]), negatives_grad=True)
    loss.backward()
    assert z_gen.grad[1].abs().sum() > 0


def test_loss_two_ranks_match_one_rank() -> None:
    # 2 ranks x 2 samples with one correct sample per rank == 1 rank x 4 samples (2 correct)
    g = torch.Generator().manual_seed(0)
    z_ann = torch.randn(4, 5, generator=g)
    z_gen = torch.randn(4, 5, generator=g)
    correct = torch.tensor([True, False, False, True])
    one = z_gen.clone().requires_grad_()
    loss_one, _ = contrastive.loss(z_ann, one, correct)
    loss_one.backward()
    shards = [z_gen[:2].clone().requires_grad_(), z_gen[2:].clone().requires_grad_()]
    rank_losses = []
    for r in (0, 1):
        others = shards[1 - r].detach()
        loss_r, _ = contrastive.loss(z_ann[2 * r : 2 * r + 2], shards[r], correct[2 * r : 2 * r + 2], others)
        (loss_r / 2).backward()  # DDP averages gradients over the 2 ranks
        rank_losses.append(loss_r)
    close((rank_losses[0] + rank_losses[1]) / 2, loss_one.detach(), atol=1e-6)
    close(torch.cat([shards[0].grad, shards[1].grad]), one.grad, atol=1e-6)


# ---------------------------------------------------------------- negative (LCS) signal


def test_lcs_spec_vector() -> None:
    # X = A G T A B, Y = G X T X A Y: LCS G T A at X (2, 3, 4) and Y (1, 3, 5), 1-based
    xs, ys = contrastive.lcs(list("AGTAB"), list("GXTXAY"))
    assert [i + 1 for i in xs] == [2, 3, 4] and [j + 1 for j in ys] == [1, 3, 5]
    assert contrastive.lcs([1], [2]) == ([], [])
    assert contrastive.lcs([], [1, 2]) == ([], [])


def test_lcs_masks_skip_excluded_positions() -> None:
    # same tokens as the spec vector, with ids A=1 G=2 T=3 B=4 X=5 Y=6 and pads (0) around them
    anchor = torch.tensor([[0, 0, 1, 2, 3, 1, 4]])
    anchor_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    gen = torch.tensor([[2, 5, 3, 5, 1, 6, 0]])
    gen_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    a_in, g_in = contrastive.lcs_masks(anchor, anchor_mask, gen, gen_mask)
    assert a_in.tolist() == [[False, False, False, True, True, True, False]]
    assert g_in.tolist() == [[True, False, True, False, True, False, False]]


def test_negative_loss_value_and_gradients() -> None:
    # z1 = z2 = [1, 0]: cos 1 -> 0.9; keys [z2 (self, cos 1), z3 = [0, 1] (cos 0)]
    # L = -4.5 + ln(e^5 + e^0) = 0.506715, like the positive spec vector
    z2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z3 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    z1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, m = contrastive.negative_loss(z1, z2, z3, torch.tensor([True]))
    close(loss, 0.506715, atol=1e-5)
    close(m["carft/n_negative"], 1.0)
    loss.backward()
    assert z1.grad is None and z3.grad is None  # anchor side and gathered z3 are detached
    assert torch.isfinite(z2.grad).all() and z2.grad.abs().sum() > 0  # local z2 carries gradient via den
    empty, _ = contrastive.negative_loss(z1, z2, z3, torch.tensor([False]))
    assert empty.item() == 0.0


# ---------------------------------------------------------------- embedding partial reward


def test_partial_reward_spec_vector() -> None:
    # cos = -1, 0, 0.5, 1 -> S = 0.2 + 0.1 cos = 0.1, 0.2, 0.25, 0.3; correct stays 1, unextractable stays 0
    z_ann = torch.tensor([[1.0, 0.0]] * 6)
    z_gen = torch.tensor([[-1.0, 0.0], [0.0, 2.0], [0.5, math.sqrt(0.75)], [3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    scores = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0, 0.0])
    is_partial = torch.tensor([True, True, True, True, False, False])
    out = contrastive.partial_reward(scores, is_partial, z_ann, z_gen.requires_grad_())
    close(out, [0.1, 0.2, 0.25, 0.3, 1.0, 0.0], atol=1e-6)
    assert not out.requires_grad
