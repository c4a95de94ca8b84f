"""The policy forward's two shortcuts must equal the full forward (logits, values, gradients):

- shared prompts (`PolicyModel.forward(..., prompt_len=P)`): rows with the same prompt run one prompt pass
  whose KV cache is copied to them (RL);
- selected logits (`logits_mask=`): the LM head runs on the positions that score a label only (SFT)."""

import contextlib

import pytest
import torch
from test_llama_step import ARCHITECTURES, build

from rlft.adapters.positions import PositionMeta
from rlft.algos.ppo import logprobs_from_logits
from rlft.learner.torch_learner import TorchLearner, response_logprobs_and_values
from rlft.models.policy import PolicyModel, prompt_groups, response_slice


def grouped_batch(vocab: int, prompts: int = 3, n: int = 3, P: int = 7, T: int = 5, seed: int = 0) -> dict:
    """`prompts` left-padded prompts (0, 2, 4, ... pads), each repeated n times with its own responses, the
    copies interleaved (rows of one prompt are not adjacent) and right padding in some responses."""
    gen = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(prompts, P, dtype=torch.long)
    for row in range(prompts):
        prompt_mask[row, : (2 * row) % P] = 0
    prompt_ids = torch.randint(3, vocab, (prompts, P), generator=gen).masked_fill(prompt_mask == 0, 0)
    order = torch.arange(prompts).repeat(n)  # 0, 1, 2, 0, 1, 2, ...
    response_ids = torch.randint(3, vocab, (prompts * n, T), generator=gen)
    response_mask = torch.ones_like(response_ids)
    response_mask[1, T - 2:] = 0
    response_mask[4, 1:] = 0
    return {"prompt_ids": prompt_ids[order], "prompt_mask": prompt_mask[order],
            "response_ids": response_ids.masked_fill(response_mask == 0, 0), "response_mask": response_mask}


def forward_pair(model: PolicyModel, batch: dict):
    """(full forward, shared-prompt forward) outputs sliced to response coordinates; checks which ran."""
    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["response_mask"]], 1)
    P, T = batch["prompt_ids"].shape[1], batch["response_ids"].shape[1]
    meta = PositionMeta.from_prompt_mask(batch["prompt_mask"])
    outs = []
    for shared in (False, True):
        model.prefix_sharing = shared
        with spy_shared(model) as calls:
            out = model(ids, mask, meta, T + 1, P)
        assert calls == [shared]
        outs.append((response_slice(out.logits, P, T), None if out.values is None else response_slice(out.values, P, T)))
    return outs


@contextlib.contextmanager
def spy_shared(model: PolicyModel):
    """Records, per forward, whether the shared-prompt path ran."""
    calls, original = [], model._forward_shared_prompts

    def forward_shared(*args):
        calls[-1] = True
        return original(*args)

    real_forward = model.forward

    def forward(*args, **kwargs):
        calls.append(False)
        return real_forward(*args, **kwargs)

    model._forward_shared_prompts, model.forward = forward_shared, forward
    try:
        yield calls
    finally:
        del model._forward_shared_prompts, model.forward


def test_prompt_groups_match_real_tokens_and_padding():
    ids = torch.tensor([[0, 5, 6], [9, 5, 6], [0, 5, 6], [7, 5, 6], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    first, inverse = prompt_groups(ids, mask)
    # rows 0, 1, 2 and 4 are the same prompt (row 1's pad id differs, which is ignored); row 3 is not padded
    assert first[inverse].tolist() == [0, 0, 0, 3, 0]
    assert prompt_groups(ids[[0, 3]], mask[[0, 3]]) is None


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("head", [None, "linear"])
def test_shared_prompts_equal_the_full_forward(name, head):
    model = PolicyModel(build(name), value_head=head, init_seed=0)
    assert model.prefix_sharing_unsupported_reason() is None
    batch = grouped_batch(model.config.vocab_size)
    mask = batch["response_mask"].unsqueeze(-1)
    grads = []
    (full_logits, full_values), (shared_logits, shared_values) = forward_pair(model, batch)
    torch.testing.assert_close(shared_logits * mask, full_logits * mask, atol=2e-5, rtol=1e-4)
    if head:
        torch.testing.assert_close(shared_values * mask[..., 0], full_values * mask[..., 0], atol=2e-5, rtol=1e-4)
    for shared in (False, True):  # gradients: the copies' gradients sum back into the one prompt pass
        model.zero_grad()
        model.prefix_sharing = shared
        ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
        attn = torch.cat([batch["prompt_mask"], batch["response_mask"]], 1)
        P, T = batch["prompt_ids"].shape[1], batch["response_ids"].shape[1]
        out = model(ids, attn, None, T + 1, P)
        loss = (response_slice(out.logits, P, T).log_softmax(-1) * mask).sum()
        if head:
            loss = loss + (response_slice(out.values, P, T) * mask[..., 0]).pow(2).sum()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-4, rtol=1e-3, msg=key)


def test_it_falls_back_to_the_full_forward_where_it_does_not_apply():
    batch = grouped_batch(97)
    lm = build("llama")
    carft = PolicyModel(lm, value_head="carft")
    assert "CARFT" in carft.prefix_sharing_unsupported_reason()
    sliding = build("mistral")
    sliding.config.sliding_window = 4
    assert "sliding" in PolicyModel(sliding).prefix_sharing_unsupported_reason()
    checkpointed = PolicyModel(build("llama")).train()
    enable = getattr(checkpointed.lm, "activation_checkpointing_enable", None)  # transformers >= 5.2x's name
    (enable or checkpointed.lm.gradient_checkpointing_enable)()
    assert "checkpointing" in checkpointed.prefix_sharing_unsupported_reason()
    assert checkpointed.eval().prefix_sharing_unsupported_reason() is None  # no-grad passes still share
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = PolicyModel(GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)))
    assert "gpt2" in gpt2.prefix_sharing_unsupported_reason()
    unique = {k: v[:3] for k, v in batch.items()}  # three distinct prompts: nothing to share
    for model, data in [(carft, batch), (gpt2, batch), (PolicyModel(build("llama")), unique)]:
        ids = torch.cat([data["prompt_ids"], data["response_ids"]], 1)
        mask = torch.cat([data["prompt_mask"], data["response_mask"]], 1)
        with spy_shared(model) as calls, torch.no_grad():
            model(ids, mask, None, data["response_ids"].shape[1] + 1, data["prompt_ids"].shape[1])
        assert calls == [False]


def test_learner_passes_share_prompts_and_match_unshared(monkeypatch):
    """The no-grad log-prob pass and a train step over micro-batches: shared == unshared (both paths used)."""
    batch = grouped_batch(97, prompts=2, n=4)
    results = []
    for shared in (False, True):
        model = PolicyModel(build("qwen2"), value_head="linear", prefix_sharing=shared)
        learner = TorchLearner(model, lr=1e-2)
        with spy_shared(model) as calls:
            logprobs, values = learner.logprobs_and_values(batch, micro_batch_size=4)
            mbs = [{**{k: v[i:i + 4] for k, v in batch.items()}} for i in (0, 4)]
            for mb in mbs:
                mb["input_ids"] = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1)
                mb["attention_mask"] = torch.cat([mb["prompt_mask"], mb["response_mask"]], 1)

            def loss_fn(output, mb):
                # the learner hands the loss response-aligned logits and values
                # (a smooth loss: with amax, a near-tie flipped by rounding would change the gradient)
                lp = logprobs_from_logits(output.logits, mb["response_ids"])
                return -(lp * mb["response_mask"]).sum() + output.values.pow(2).sum(), {}

            learner.train_step(mbs, loss_fn)
        assert calls == [shared] * 4  # 2 log-prob chunks + 2 train micro-batches
        after, _ = response_logprobs_and_values(model.eval(), batch, micro_batch_size=8)
        results.append((logprobs, values, after))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gpt2"])
def test_selected_logits_equal_the_full_logits_at_those_positions(name):
    """SFT's `logits_mask`: the LM head on the labelled positions only (gpt2: full logits, then indexed)
    gives the full forward's logits there, and the same gradients through `sft_loss`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlft.algos import sft

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)).eval() if name == "gpt2" else build(name)
    model = PolicyModel(lm)
    assert model._is_decoder_plus_head() is (name != "gpt2")
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding (SFT rows)
    labels = sft.build_labels(ids, torch.tensor([3, 4, 2]), mask)
    positions = PositionMeta.unpadded_prompt(torch.tensor([3, 4, 2]))
    grads = []
    for selected in (False, True):
        model.zero_grad()
        out = model(ids, mask, positions, logits_mask=sft.labelled_positions(labels) if selected else None)
        loss, _ = sft.sft_loss(out.logits, labels)
        loss.backward()
        grads.append((out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (full, full_grads), (sel, sel_grads) = grads
    torch.testing.assert_close(sel, full[sft.labelled_positions(labels)], atol=2e-5, rtol=1e-4)
    assert full_grads.keys() == sel_grads.keys()
    for key in full_grads:
        torch.testing.assert_close(sel_grads[key], full_grads[key], atol=1e-5, rtol=1e-4, msg=key)


def test_sft_batches_compute_logits_at_labelled_positions_only():
    from rlft.algos import sft

    model = PolicyModel(build("llama"))
    learner = TorchLearner(model, lr=1e-3)
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(4))
    mb = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_len": torch.tensor([3, 5])}
    mb["labels"] = sft.build_labels(ids, mb["prompt_len"])
    shapes = []
    learner.train_step([mb], lambda out, batch: (shapes.append(out.logits.shape) or sft.sft_loss(out.logits, batch["labels"])[0], {}))
    assert shapes == [(5 + 3, 97)]  # labels at positions 3-7 and 5-7, scored from the positions before them


def test_a_rank_without_repeated_prompts_follows_the_ranks_that_share():
    """Sharded learners agree on the path (`agree_across_ranks`): when another rank shares, a micro-batch of
    distinct prompts runs the two-pass forward too (each row its own prompt), with the full forward's result."""
    batch = {k: v[:3] for k, v in grouped_batch(97).items()}  # three distinct prompts
    model = PolicyModel(build("llama"), value_head="linear")
    asked = []
    model.agree_across_ranks = lambda flag: asked.append(flag) or True  # "another rank shares"
    (full_logits, full_values), (shared_logits, shared_values) = forward_pair(model, batch)
    assert asked == [False]  # this rank had nothing to share, and asked
    mask = batch["response_mask"]
    torch.testing.assert_close(shared_logits * mask[..., None], full_logits * mask[..., None], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(shared_values * mask, full_values * mask, atol=2e-5, rtol=1e-4)
