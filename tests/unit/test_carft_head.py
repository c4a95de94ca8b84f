"""CARFT head (carft.md §1, §11): shapes, V = w_v·ReLU(e) + b_v with e taken before the ReLU, dropout 0."""

import torch

from rlft.models.carft_head import CARFTHead


def test_shapes_and_value_from_pre_relu_embedding():
    torch.manual_seed(0)
    head = CARFTHead(hidden_size=32, proj_dim=64)
    h = torch.randn(3, 7, 32)
    values, emb = head(h)
    assert values.shape == (3, 7) and emb.shape == (3, 7, 64)
    torch.testing.assert_close(emb, head.proj(h))  # the embedding is the pre-activation output
    assert (emb < 0).any()  # ... so it keeps negative entries a post-ReLU embedding could not have
    expected = (torch.relu(emb) @ head.value.weight.T).squeeze(-1) + head.value.bias
    torch.testing.assert_close(values, expected)
    assert values.dtype == torch.float32


def test_train_and_eval_agree_without_dropout():
    torch.manual_seed(0)
    head = CARFTHead(hidden_size=16)
    h = torch.randn(2, 5, 16)
    head.train()
    v_train, e_train = head(h)
    head.eval()
    v_eval, e_eval = head(h)
    assert torch.equal(v_train, v_eval) and torch.equal(e_train, e_eval)


def test_policy_model_exposes_carft_outputs():
    from rlft.models.tiny import tiny_llama_config
    from rlft.models.policy import PolicyModel
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_llama_config(50, hidden_size=64, num_layers=1, intermediate_size=128))
    model = PolicyModel(lm, value_head="carft").eval()
    ids = torch.randint(3, 50, (2, 6))
    out = model(ids, torch.ones_like(ids))
    assert out.logits.shape == (2, 6, 50) and out.values.shape == (2, 6) and out.embeddings.shape == (2, 6, 64)
