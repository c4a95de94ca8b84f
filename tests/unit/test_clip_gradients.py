"""`torch_learner.clip_gradients`: torch's `clip_grad_norm_`, without the scaling pass when it would multiply by 1."""

import math

import pytest
import torch

from rlft.learner.torch_learner import clip_gradients


def _params(scale: float, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((3, 4), (5,), (2, 2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


@pytest.mark.parametrize("scale,max_norm", [(10.0, 1.0), (0.01, 1.0), (1.0, 0.0), (1.0, 2.5)])
def test_clip_gradients_equals_clip_grad_norm(scale, max_norm):
    ours, theirs = _params(scale), _params(scale)
    norm = clip_gradients(ours, max_norm)
    want = float(torch.nn.utils.clip_grad_norm_(theirs, max_norm if max_norm > 0 else float("inf")))
    assert norm == pytest.approx(want, rel=1e-6)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


def test_gradients_below_the_bound_keep_their_values_and_larger_ones_are_scaled_to_it():
    params = _params(0.01)
    before = [p.grad.clone() for p in params]
    norm = clip_gradients(params, 1.0)
    assert norm == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in before)))
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    clipped = _params(10.0)
    assert clip_gradients(clipped, 1.0) > 1.0
    assert float(torch.nn.utils.get_total_norm([p.grad for p in clipped])) == pytest.approx(1.0, rel=1e-5)


def test_a_non_finite_norm_is_returned_as_it_is():
    params = _params(1.0)
    params[0].grad[0, 0] = float("nan")
    assert math.isnan(clip_gradients(params, 1.0))
