"""Best-of-k selection (`rerank.select`) against hand-picked rows."""

from __future__ import annotations

import pytest
import torch

from rlft.algos import rerank


def test_argmax_per_group_as_batch_rows() -> None:
    # groups of 3: [0.1, 0.7, 0.2] -> within-group 1 (row 1); [0.9, -1, 0.5] -> 0 (row 3); [-3, -2, -0.5] -> 2 (row 8)
    scores = torch.tensor([0.1, 0.7, 0.2, 0.9, -1.0, 0.5, -3.0, -2.0, -0.5])
    assert rerank.select(scores, 3).tolist() == [1, 3, 8]


def test_ties_go_to_the_first_sample() -> None:
    # G=2: [0.4, 0.4] -> row 0; [0.2, 0.6] -> row 3.  G=4: [0, 5, 5, 5] -> row 1, the first of the three 5s
    assert rerank.select(torch.tensor([0.4, 0.4, 0.2, 0.6]), 2).tolist() == [0, 3]
    assert rerank.select(torch.tensor([0.0, 5.0, 5.0, 5.0]), 4).tolist() == [1]


def test_nan_never_wins_unless_the_whole_group_is_nan() -> None:
    nan = float("nan")
    # [nan, 0.1, -2] -> row 1 (NaN ranks last); [nan, nan, nan] -> its first row, 3
    assert rerank.select(torch.tensor([nan, 0.1, -2.0, nan, nan, nan]), 3).tolist() == [1, 3]


def test_group_of_one_picks_every_sample() -> None:
    assert rerank.select(torch.tensor([3.0, -1.0, 2.0]), 1).tolist() == [0, 1, 2]


def test_rows_map_back_to_within_group_index() -> None:
    scores = torch.tensor([0.0, 1.0, 0.5, 2.0, 0.0, 0.0])
    rows = rerank.select(scores, 2)  # [0, 1] -> 1; [0.5, 2] -> 3; [0, 0] -> 4
    assert rows.tolist() == [1, 3, 4] and (rows % 2).tolist() == [1, 1, 0]


def test_input_is_not_changed() -> None:
    scores = torch.tensor([float("nan"), 1.0])
    rerank.select(scores, 2)
    assert torch.isnan(scores[0])


@pytest.mark.parametrize("scores, group_size", [(torch.zeros(5), 2), (torch.zeros(2, 2), 2), (torch.zeros(4), 0)])
def test_bad_geometry_raises(scores: torch.Tensor, group_size: int) -> None:
    with pytest.raises(ValueError):
        rerank.select(scores, group_size)
