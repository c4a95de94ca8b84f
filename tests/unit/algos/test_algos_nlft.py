"""NLFT saliency, neighbourhood, weights and loss: the `docs/nlft.md` §5 test vectors (hand-computed from the
reference code's formulas), and equality with a line-by-line transcription of the reference functions."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algos import nlft


def close(actual: torch.Tensor, expected: object, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def angles(*degrees: float) -> torch.Tensor:
    """(1, T, 2) unit hidden states at these angles: cosine distance 1 - cos(difference)."""
    return torch.tensor([[[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees]], dtype=torch.float64)


def logs(*p: float) -> torch.Tensor:
    return torch.tensor([p], dtype=torch.float64).log()


# ---------------------------------------------------------------- docs/nlft.md §5 vectors

# N1: a negative response of 6 tokens, two salient, so the salient fraction 1/3 > 0.06 zeroes the others
N1 = dict(base=logs(0.30, 0.20, 0.50, 0.05, 0.60, 0.40), judge=logs(0.60, 0.25, 0.90, 0.009, 0.50, 0.80),
          correct=logs(0.20, 0.30, 0.40, 0.002, 0.70, 0.90), hidden=angles(0, 10, 90, 170, 150, 0))


def test_n1_salient_tokens_and_neighbourhood() -> None:
    mask = torch.ones(1, 6)
    salient = nlft.salient_tokens(N1["base"], N1["judge"], N1["correct"], mask)
    # ratios p_j/p_b = 2, 1.25, 1.8, 0.18, 0.83, 2 and p_j/p_c = 3, 0.83, 2.25, 4.5, 0.71, 0.89
    assert salient.tolist() == [[True, False, True, False, False, False]]
    # from t2 (90 deg): t1 (10 deg, distance 1 - cos 80 = 0.83) joins, centre -> 50 deg; t0 (distance 0.36) stops
    # the left walk; right: t3 (170 deg, 120 deg away) joins, centre -> 122.9 deg; t4 (27 deg away) stops it.
    # From t0: t1 is 10 deg away (distance 0.015): nothing joins.
    assert nlft.neighbourhood(N1["hidden"], salient, mask).tolist() == [[True, True, True, True, False, False]]


def test_n1_weights_and_loss() -> None:
    mask = torch.ones(1, 6)
    negative = torch.tensor([True])
    salient = nlft.salient_tokens(N1["base"], N1["judge"], N1["correct"], mask)
    neighbours = nlft.neighbourhood(N1["hidden"], salient, mask)
    w = nlft.negative_weights(N1["base"], N1["judge"], N1["correct"], salient, neighbours, mask)
    # 2 sigmoid(2.0 - 1.5) = 1.244919, 2 sigmoid(1.8 - 1.5) = 1.148885; the rest 0 (salient fraction 1/3 > 0.06)
    close(w, [[1.244919, 0, 1.148885, 0, 0, 0]])
    losses, metrics = nlft.sequence_losses(N1["base"], N1["judge"], N1["correct"], N1["hidden"], mask, negative)
    # term = -(1.244919 ln 0.7 + 1.148885 ln 0.5) / 6 = 0.206730
    close(metrics["nlft/term"], 0.206730)
    # NLL of the judge sequence = -mean ln(0.6, 0.25, 0.9, 0.009, 0.5, 0.8) = 1.271551
    close(metrics["nlft/nll"], 1.271551)
    close(losses, [10 * (1.271551 + 0.206730)], atol=1e-4)
    close(metrics["nlft/salient_frac"], 2 / 6)
    close(metrics["nlft/zeroed_frac"], 1.0)


def _n2(pad: float = 0.5):
    """N2: 20 tokens (+ 2 masked pads holding `pad`), one salient (fraction 0.05 <= 0.06)."""
    base = torch.full((1, 22), 0.5, dtype=torch.float64)
    judge = torch.full((1, 22), 0.5, dtype=torch.float64)
    correct = torch.full((1, 22), 0.64, dtype=torch.float64)
    base[0, 10], judge[0, 10], correct[0, 10] = 0.2, 0.6, 0.1
    base[0, 20:], judge[0, 20:], correct[0, 20:] = pad, 0.99, 0.001
    degrees = [0.0] * 22
    degrees[9], degrees[10], degrees[20] = 180.0, 90.0, 45.0
    mask = torch.ones(1, 22)
    mask[0, 20:] = 0
    return base.log(), judge.log(), correct.log(), angles(*degrees), mask


def test_n2_cascading_neighbourhood_and_sqrt_weights() -> None:
    base, judge, correct, hidden, mask = _n2()
    salient = nlft.salient_tokens(base, judge, correct, mask)
    assert salient.nonzero().tolist() == [[0, 10]]
    # left of t10 (90 deg): t9 (180 deg) joins, centre 135 deg; t8 (0 deg, 135 deg away) joins, centre 45 deg;
    # t7 (45 deg away, distance 0.29) stops. Right: t11 is 45 deg from the centre: stops.
    neighbours = nlft.neighbourhood(hidden, salient, mask)
    assert neighbours.nonzero()[:, 1].tolist() == [8, 9, 10]
    w = nlft.negative_weights(base, judge, correct, salient, neighbours, mask)
    expected = [0.8] * 20 + [0.0, 0.0]
    expected[8] = expected[9] = 0.0
    expected[10] = 1.635149  # 2 sigmoid(3 - 1.5)
    close(w, [expected])
    losses, metrics = nlft.sequence_losses(base, judge, correct, hidden, mask, torch.tensor([True]))
    # term = -(1.635149 ln 0.8 + 17 * 0.8 ln 0.5) / 20 = 0.489584
    close(metrics["nlft/term"], 0.489584)
    close(metrics["nlft/zeroed_frac"], 0.0)


def test_masked_positions_do_not_matter() -> None:
    a = nlft.sequence_losses(*_n2(pad=0.5)[:4], _n2()[4], torch.tensor([True]))[0]
    b = nlft.sequence_losses(*_n2(pad=1e-9)[:4], _n2()[4], torch.tensor([True]))[0]
    close(a, b, atol=1e-9)


P1 = dict(base=logs(0.5, 0.9, 0.2, 0.7, 0.99, 0.6), correct=logs(0.97, 0.5, 0.96, 0.3, 0.999, 0.8),
          hidden=angles(0, 100, 0, 30, 30, 30))


def test_p1_positive_weights_and_loss() -> None:
    mask = torch.ones(1, 6)
    confident = nlft.confident_tokens(P1["correct"], mask)
    assert confident.tolist() == [[True, False, True, False, True, False]]
    # t1 (100 deg) joins the walks from t0 and t2; t3-t5 sit at the same angle as each other (distance 0)
    neighbours = nlft.neighbourhood(P1["hidden"], confident, mask)
    assert neighbours.tolist() == [[True, True, True, False, True, False]]
    w = nlft.positive_weights(P1["correct"], confident, neighbours, mask)
    # 1 + 0.4^5, (0.5/0.95)^0.3, 1 + 0.2^5, (0.3/0.95)^0.6, 1 + 0.98^5, (0.8/0.95)^0.6
    close(w, [[1.01024, 0.824848, 1.00032, 0.500770, 1.903921, 0.902028]])
    losses, metrics = nlft.sequence_losses(P1["base"], P1["base"], P1["correct"], P1["hidden"], mask,
                                           torch.tensor([False]))
    close(metrics["nlft/term"], 0.509272)  # -sum w ln p_b / 6
    close(metrics["nlft/nll"], 0.547583)  # -mean ln p_b
    close(losses, [10 * (0.547583 + 0.509272)], atol=1e-4)


def test_without_the_neighbourhood_rule_only_seeds_count() -> None:
    mask = torch.ones(1, 6)
    _, metrics = nlft.sequence_losses(P1["base"], P1["base"], P1["correct"], None, mask, torch.tensor([False]),
                                      neighbour_distance=None)
    w = nlft.positive_weights(P1["correct"], nlft.confident_tokens(P1["correct"], mask),
                              nlft.confident_tokens(P1["correct"], mask), mask)
    close(w[0, 1], (0.5 / 0.95) ** 0.6)  # t1 is no longer a neighbour: the 0.6 power
    close(metrics["nlft/neighbour_frac"], 0.0)


def test_no_seeds_no_neighbours() -> None:
    hidden = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    seeds = torch.zeros(2, 5, dtype=torch.bool)
    assert not nlft.neighbourhood(hidden, seeds, torch.ones(2, 5)).any()


# ---------------------------------------------------------------- gradients


def test_gradient_pushes_salient_tokens_down_and_the_rest_up() -> None:
    base = N1["base"].clone().requires_grad_(True)
    judge = N1["judge"].clone().requires_grad_(True)
    correct = N1["correct"].clone().requires_grad_(True)
    loss = nlft.sequence_losses(base, judge, correct, N1["hidden"], torch.ones(1, 6), torch.tensor([True]))[0].sum()
    loss.backward()
    # d loss / d log p_b > 0 on salient tokens (descent lowers them), 0 on zero-weight tokens
    assert (base.grad[0, [0, 2]] > 0).all() and (base.grad[0, [1, 3, 4, 5]] == 0).all()
    assert (judge.grad < 0).all()  # the NLL raises the judge-conditioned likelihood
    assert correct.grad is None or (correct.grad == 0).all()  # p_c only weighs

    base = P1["base"].clone().requires_grad_(True)
    nlft.sequence_losses(base, base, P1["correct"], P1["hidden"], torch.ones(1, 6), torch.tensor([False]))[0].sum().backward()
    assert (base.grad < 0).all()  # a positive response: every token's likelihood goes up


# ---------------------------------------------------------------- the reference code, transcribed


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1 - torch.nn.functional.cosine_similarity(a.flatten().unsqueeze(0), b.flatten().unsqueeze(0)).item()


def _ref_token_cluster(h: torch.Tensor, indices: torch.Tensor, x: float = 0.4) -> torch.Tensor:
    """`token_cluster` (reference lines 313-359) on one sequence's response tokens."""
    out = set()
    for idx in indices.nonzero().flatten().tolist():
        centre = h[idx]
        left = idx - 1
        while left >= 0 and _distance(centre, h[left]) > x:
            out.add(left)
            centre = (centre + h[left]) / 2
            left -= 1
        right = idx + 1
        while right < h.shape[0] and _distance(centre, h[right]) > x:
            out.add(right)
            centre = (centre + h[right]) / 2
            right += 1
        out.add(idx)
    result = torch.zeros(indices.shape[0], dtype=torch.bool)
    result[list(out)] = True
    return result


def _ref_term(pb: torch.Tensor, pw: torch.Tensor, pc: torch.Tensor, h: torch.Tensor, negative: bool) -> float:
    """`unlikelihood` (lines 361-424) or `correct_loss` (lines 264-311) of one sequence, thresholds of the script."""
    if not negative:
        correct = pc / 0.95 > 1
        clus = _ref_token_cluster(h, correct)
        scale = (pc / 0.95) ** 0.6
        scale[clus] = ((pc / 0.95) ** 0.3)[clus]
        scale[correct] = (1 + ((pc - 0.95) / 0.05) ** 5)[correct]
        return float(-(scale * pb.log()).sum() / pb.shape[0])
    r1, r2 = pw / pb, pw / pc
    unlike = (r1 > 1.5) & (r2 > 1.5) & (pw > 0.01)
    clus = _ref_token_cluster(h, unlike)
    scale = 2 / (1 + torch.exp(-(r1 - 1.5)))
    scale2 = pc ** 0.5
    if unlike.sum().item() / pb.shape[0] > 0.06:
        scale2[:] = 0
    q = pb.clone()
    q[unlike] = 1 - q[unlike]
    scale2[clus] = 0
    scale2[unlike] = scale[unlike]
    return float(-(scale2 * q.log()).sum() / pb.shape[0])


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_reference_transcription_per_sequence(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, T, D = 6, 40, 4
    lengths = [40, 33, 12, 40, 25, 30]
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()
    # probabilities spread over (0, 1) so that every branch occurs (checked for these seeds): negatives 0 and 4
    # have a salient fraction <= 0.06, negative 1 one above it (a p_c spread lower), negative 5 none at all;
    # the positives have confident tokens and walks that join neighbours
    logp = lambda scale: torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) ** scale).clamp(min=-12)  # noqa: E731
    base, judge, correct = logp(2.0), logp(0.7), logp(0.15)
    correct[1, :] = logp(1.0)[1]
    judge[5] = base[5] + 0.01
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    negative = torch.tensor([True, True, False, False, True, True])
    judge_used = torch.where(negative[:, None], judge, base)
    losses, metrics = nlft.sequence_losses(base, judge_used, correct, hidden, mask, negative)
    for b in range(B):
        n = lengths[b]
        p = lambda x: x[b, :n].exp()  # noqa: E731
        expected_term = _ref_term(p(base), p(judge), p(correct), hidden[b, :n], bool(negative[b]))
        expected_nll = float(-(judge_used[b, :n]).mean())
        assert float(losses[b]) == pytest.approx(10 * (expected_nll + expected_term), rel=1e-9, abs=1e-9), b
    assert 0 < float(metrics["nlft/salient_frac"]) < 1 and 0 < float(metrics["nlft/confident_frac"]) < 1
