"""`value_head_kind` reads which head a checkpoint folder holds from the tensor names the heads save."""

import pytest
import torch
from safetensors.torch import save_file

from rlft.models.carft_head import CARFTHead
from rlft.models.policy import VALUE_HEAD_FILE, value_head_kind


def _save(folder, module: torch.nn.Module):
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / VALUE_HEAD_FILE))
    return folder


def test_linear_and_carft_heads_are_told_apart(tmp_path):
    # the same modules `PolicyModel` builds for value_head="linear" and "carft"
    assert value_head_kind(_save(tmp_path / "reft", torch.nn.Linear(8, 1))) == "linear"
    assert value_head_kind(_save(tmp_path / "carft", CARFTHead(8))) == "carft"


def test_no_head_file_is_none(tmp_path):
    assert value_head_kind(tmp_path) is None


def test_unknown_tensors_raise(tmp_path):
    with pytest.raises(ValueError, match="match no value head kind"):
        value_head_kind(_save(tmp_path / "other", torch.nn.Sequential(torch.nn.Linear(8, 1))))
