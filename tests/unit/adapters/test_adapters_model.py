"""Adapters on a tiny Llama: identity at attach (T1), sampling == teacher-forced recomputation (T6) with a
per-chunk rule as the failing control (T7), gradient isolation (T9), gradient checkpointing (T10), batch
invariance (T11), save/load (T12), reference toggles (T13), HEFT's stack (T14).

Batch: 3 prompts of lengths 8, 3 and 5, left-padded, 2 samples each, 12 sampled tokens.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from rlft.adapters import attach_adapter
from rlft.adapters.positions import PositionMeta
from rlft.learner.torch_learner import TorchLearner, response_logprobs_and_values
from rlft.models.policy import PolicyModel
from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import HFRolloutEngine, left_pad, response_mask_from_ids

PAD, EOS = 0, 1  # the ids of conftest.tiny_config

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [3, 4, 5, 6, 7]]
HOOK_KINDS = ["loreft", "direft", "brep", "baft", "gated", "heft"]
ALL_KINDS = HOOK_KINDS + ["lora"]
RULES = {
    "prefix_suffix(1,1)": ["adapter.repft.positions=prefix_suffix", "adapter.repft.first=1", "adapter.repft.last=1"],
    "prefix_suffix(2,2),untied": ["adapter.repft.positions=prefix_suffix", "adapter.repft.first=2",
                                  "adapter.repft.last=2", "adapter.repft.tied=false"],
    "last_prompt": ["adapter.repft.positions=last_prompt"],
    "prompt_plus_first_n(3)": ["adapter.repft.positions=prompt_plus_first_n", "adapter.repft.generated=3"],
    "response_first_n(3)": ["adapter.repft.positions=response_first_n", "adapter.repft.generated=3"],
    "all": ["adapter.repft.positions=all"],
}


@pytest.fixture
def attached(make_lm, adapter_cfg, perturb):
    """A tiny Llama with an adapter of `kind`, moved off its identity init."""

    def make(kind, *overrides, scale=0.3):
        lm, adapter = attach_adapter(make_lm(), adapter_cfg(f"adapter.kind={kind}", *overrides), seed=0)
        perturb(adapter, scale)
        return lm, adapter

    return make


def sample_and_recompute(lm, adapter, prompts=PROMPTS, n=2, use_cache=True, seed=1):
    """Sampled responses' log-probs from generate's raw logits (T = 1, no top-k/p), and the same responses'
    teacher-forced log-probs from the learner's path. Returns sampled (B, T), recomputed (B, T), mask (B, T)."""
    ids, mask = left_pad(prompts, PAD)
    torch.manual_seed(seed)
    with torch.inference_mode(), adapter.plan(PositionMeta.from_prompt_mask(mask.repeat_interleave(n, 0))):
        out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                          max_new_tokens=12, num_return_sequences=n, output_logits=True, return_dict_in_generate=True,
                          use_cache=use_cache, pad_token_id=PAD, eos_token_id=EOS)
    response = out.sequences[:, ids.shape[1]:]  # (B, T)
    response_mask, _ = response_mask_from_ids(response, EOS)
    logits = torch.stack(out.logits, dim=1).float()  # (B, T, V)
    sampled = torch.gather(F.log_softmax(logits, -1), 2, response.unsqueeze(-1)).squeeze(-1) * response_mask
    data = {"prompt_ids": ids.repeat_interleave(n, 0), "prompt_mask": mask.repeat_interleave(n, 0),
            "response_ids": response.masked_fill(response_mask == 0, PAD), "response_mask": response_mask}
    recomputed, _ = response_logprobs_and_values(PolicyModel(lm, adapter=adapter).eval(), data, micro_batch_size=4)
    return sampled, recomputed, response_mask


def max_gap(a, b, mask):
    return float(((a - b).abs() * mask).max().detach())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_fresh_adapter_leaves_the_model_unchanged(kind, make_lm, adapter_cfg):
    bare = make_lm()
    lm, adapter = attach_adapter(make_lm(), adapter_cfg(f"adapter.kind={kind}", "adapter.repft.positions=all"))
    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    with torch.no_grad():
        expected = PolicyModel(bare)(ids, mask).logits
        got = PolicyModel(lm, adapter=adapter)(ids, mask, meta).logits
    assert (got - expected).abs().max() < 1e-5
    engine_bare = HFRolloutEngine(bare, pad_id=PAD, eos_id=EOS)
    engine = HFRolloutEngine(lm, pad_id=PAD, eos_id=EOS, adapter=adapter)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert torch.equal(engine.generate(PROMPTS, greedy).response_ids, engine_bare.generate(PROMPTS, greedy).response_ids)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_sampling_logprobs_equal_teacher_forced_recomputation(kind, rule, attached):
    lm, adapter = attached(kind, *RULES[rule])
    sampled, recomputed, mask = sample_and_recompute(lm, adapter)
    assert max_gap(sampled, recomputed, mask) < 1e-5
    with adapter.disabled():  # the edits matter, so agreement is not trivial
        _, bare, _ = sample_and_recompute(lm, adapter)
    assert max_gap(recomputed, bare, mask) > 1e-3


def test_lora_sampling_equals_recomputation(attached):
    lm, adapter = attached("lora")
    sampled, recomputed, mask = sample_and_recompute(lm, adapter)
    assert max_gap(sampled, recomputed, mask) < 1e-5


def test_the_parity_batch_covers_padding_and_early_eos(attached):
    _, _, mask = sample_and_recompute(*attached("loreft"))
    lengths = mask.sum(-1)
    assert (lengths < 12).any() and (lengths == 12).any()  # some rows stopped early, some ran to the budget


@pytest.mark.parametrize("kind", ["loreft", "brep"])
@pytest.mark.parametrize("use_cache, prompts, n", [(False, PROMPTS, 2), (True, PROMPTS[1:2], 1)],
                         ids=["no-cache", "batch-of-1"])
def test_parity_without_cache_and_for_a_single_prompt(kind, use_cache, prompts, n, attached):
    lm, adapter = attached(kind, *RULES["prefix_suffix(2,2),untied" if kind == "loreft" else "prompt_plus_first_n(3)"])
    sampled, recomputed, mask = sample_and_recompute(lm, adapter, prompts=prompts, n=n, use_cache=use_cache)
    assert max_gap(sampled, recomputed, mask) < 1e-5


@pytest.mark.parametrize("kind", ["loreft", "brep", "lora"])
def test_the_rollout_engine_logprobs_equal_recomputation(kind, attached):
    """The production path: HFRolloutEngine's processed scores vs the learner's teacher forcing."""
    lm, adapter = attached(kind)
    torch.manual_seed(2)
    batch = HFRolloutEngine(lm, pad_id=PAD, eos_id=EOS, batch_size=2, adapter=adapter).generate(
        PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, logprobs=True))
    data = {k: getattr(batch, k) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
    recomputed, _ = response_logprobs_and_values(PolicyModel(lm, adapter=adapter).eval(), data, micro_batch_size=3)
    assert max_gap(batch.rollout_logprobs, recomputed, batch.response_mask) < 1e-5


def test_a_per_chunk_rule_fails_the_parity_test(attached):
    """Negative control (spec §4, T7): "edit the last l tokens of each forward chunk" edits every cached decode
    step while sampling but only the sequence's tail when teacher forcing, so the two policies differ."""
    lm, adapter = attached("loreft", *RULES["prefix_suffix(2,2),untied"])

    def last_two_of_each_chunk(chunk_len, full_len, batch, device):
        mask = torch.zeros(batch, chunk_len, dtype=torch.bool, device=device)
        mask[:, -2:] = True
        return {rule: mask for rule in adapter.rules}

    adapter._edit_masks = last_two_of_each_chunk
    sampled, recomputed, mask = sample_and_recompute(lm, adapter)
    assert max_gap(sampled, recomputed, mask) > 0.05


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_only_adapter_parameters_get_gradients_and_change(kind, attached):
    lm, adapter = attached(kind)
    adapter.set_progress(1, 2)  # HEFT: the LoReFT stage; a no-op for the others
    model = PolicyModel(lm, value_head="linear", adapter=adapter)
    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    adapter_ids = {id(p) for _, p in adapter.trainable_parameters()}
    base = {name: p for name, p in lm.named_parameters() if id(p) not in adapter_ids}
    before = {name: p.detach().clone() for name, p in base.items()}

    out = model(ids, mask, meta)
    (out.logits.float().logsumexp(-1).mean() + out.values.mean()).backward()
    assert all(p.grad is None for p in base.values())
    for name, p in adapter.trainable_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
        else:  # HEFT's frozen LoRA stage
            assert p.grad is None, name
    model.zero_grad(set_to_none=True)

    learner = TorchLearner(model, lr=1e-2, weight_decay=0.1, schedule="constant")
    start = adapter.adapter_state_dict()
    mb = {"input_ids": ids, "attention_mask": mask, "prompt_mask": mask}
    for _ in range(3):
        learner.train_step([mb], lambda o, _: (-o.logits[..., 5].mean(), {}))
    assert all(torch.equal(before[name], p) for name, p in base.items())  # bit-identical base
    assert any(not torch.equal(start[name], v) for name, v in adapter.adapter_state_dict().items())


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing:FutureWarning")  # renamed in transformers 5
@pytest.mark.parametrize("kind", ["loreft", "brep"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, attached):
    """The edit masks travel as a layer kwarg, so a recomputed layer sees the masks of its first call, even
    when another plan is active during backward."""
    lm, adapter = attached(kind)
    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    other = PositionMeta(pad_left=meta.pad_left, prompt_len=meta.prompt_len - 1)  # would edit other tokens

    def grads(checkpointing: bool):
        if checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_disable()
        model = PolicyModel(lm, adapter=adapter).train()
        loss = model(ids, mask, meta).logits.float().logsumexp(-1).mean()
        with adapter.plan(other):
            loss.backward()
        out = {name: p.grad.clone() for name, p in adapter.trainable_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["loreft", "brep", "lora"])
def test_a_prompt_scores_the_same_alone_and_inside_a_padded_batch(kind, attached):
    lm, adapter = attached(kind)
    model = PolicyModel(lm, adapter=adapter).eval()
    responses = torch.randint(3, 24, (3, 6), generator=torch.Generator().manual_seed(0))

    def logprobs(prompts, rows):
        ids, mask = left_pad(prompts, PAD)
        data = {"prompt_ids": ids, "prompt_mask": mask, "response_ids": responses[rows],
                "response_mask": torch.ones(len(rows), 6, dtype=torch.long)}
        return response_logprobs_and_values(model, data, micro_batch_size=3)[0]

    batch = logprobs(PROMPTS, [0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(logprobs([PROMPTS[i]], [i])[0], batch[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, extra", [
    ("loreft", ["adapter.repft.tied=false", "adapter.repft.layers=[1]"]), ("direft", []), ("brep", []),
    ("baft", []), ("gated", []), ("lora", []), ("heft", []),
])
def test_save_then_load_gives_identical_outputs(kind, extra, attached, make_lm, adapter_cfg, tmp_path):
    lm, adapter = attached(kind, *extra)
    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    with torch.no_grad():
        expected = PolicyModel(lm, adapter=adapter)(ids, mask, meta).logits
    adapter.save(tmp_path)
    info = json.loads((tmp_path / "adapter.json").read_text())
    assert info["kind"] == kind and info["num_parameters"] == adapter.num_parameters()

    fresh_lm, fresh = attach_adapter(make_lm(), adapter_cfg(f"adapter.kind={kind}", *extra), seed=7)  # other init
    with torch.no_grad():
        assert (PolicyModel(fresh_lm, adapter=fresh)(ids, mask, meta).logits - expected).abs().max() > 1e-3
        fresh.load(tmp_path)
        got = PolicyModel(fresh_lm, adapter=fresh)(ids, mask, meta).logits
    assert (got - expected).abs().max() < 1e-5
    if kind not in ("lora", "heft"):  # adapter-only: about 4 bytes per parameter
        size = (tmp_path / "adapter.safetensors").stat().st_size
        assert adapter.num_parameters() * 4 <= size < adapter.num_parameters() * 4 + 4096


def test_loading_into_other_positions_or_layers_fails(attached, make_lm, adapter_cfg, tmp_path):
    lm, adapter = attached("loreft", "adapter.repft.tied=false", "adapter.repft.layers=[1]")
    adapter.save(tmp_path)
    info = json.loads((tmp_path / "adapter.json").read_text())
    assert [(p["layer"], p["rule"]["name"]) for p in info["points"]] == [(1, "prefix"), (1, "suffix")]
    for other in (["adapter.repft.layers=[1]"], ["adapter.repft.tied=false", "adapter.repft.layers=[0]"]):
        _, wrong = attach_adapter(make_lm(), adapter_cfg("adapter.kind=loreft", *other))
        with pytest.raises(ValueError, match="hook points differ"):
            wrong.load(tmp_path)
    _, other_rank = attach_adapter(make_lm(), adapter_cfg("adapter.kind=loreft", "adapter.repft.tied=false",
                                                          "adapter.repft.layers=[1]", "adapter.repft.rank=2"))
    with pytest.raises(ValueError, match="shape"):
        other_rank.load(tmp_path)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_disabled_gives_the_bare_model_and_using_swaps_weights(kind, attached, make_lm, perturb):
    bare = make_lm()
    lm, adapter = attached(kind)
    adapter.set_progress(1, 2)  # HEFT: both members on
    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    model = PolicyModel(lm, adapter=adapter).eval()
    logits = lambda: model(ids, mask, meta).logits  # noqa: E731
    with torch.no_grad():
        expected_bare = PolicyModel(bare)(ids, mask).logits
        with adapter.disabled():
            assert torch.equal(logits(), expected_bare)
        snapshot, snapshot_logits = adapter.adapter_state_dict(), logits()
        perturb(adapter, seed=1)  # training moves on
        moved = logits()
        assert (moved - snapshot_logits).abs().max() > 1e-3
        with adapter.using(snapshot):
            assert torch.equal(logits(), snapshot_logits)
        assert torch.equal(logits(), moved)


def test_merged_lora_equals_unmerged(attached):
    lm, adapter = attached("lora")
    ids, mask = left_pad(PROMPTS, PAD)
    with torch.no_grad():
        unmerged = PolicyModel(lm, adapter=adapter)(ids, mask).logits
        merged = PolicyModel(adapter.merge())(ids, mask).logits
    assert adapter.mergeable() and (merged - unmerged).abs().max() < 1e-5


def test_heft_trains_lora_then_loreft_and_its_frozen_lora_can_be_merged(attached):
    lm, adapter = attached("heft", "adapter.heft.lora_fraction=0.5")
    lora = [p for _, p in adapter.lora.trainable_parameters()]
    loreft = [p for _, p in adapter.loreft.trainable_parameters()]
    adapter.set_progress(0, 4)
    assert adapter.stage == 1 and all(p.requires_grad for p in lora) and not any(p.requires_grad for p in loreft)
    adapter.set_progress(2, 4)
    assert adapter.stage == 2 and not any(p.requires_grad for p in lora) and all(p.requires_grad for p in loreft)

    ids, mask = left_pad(PROMPTS, PAD)
    meta = PositionMeta.from_prompt_mask(mask)
    model = PolicyModel(lm, adapter=adapter)
    model(ids, mask, meta).logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in lora) and all(p.grad.abs().max() > 0 for p in loreft)
    with torch.no_grad():
        stacked = model(ids, mask, meta).logits
        merged_lm = adapter.lora.merge()  # LoRA folded into the base; the LoReFT hooks stay on its layers
        with adapter.loreft.plan(meta):
            merged = merged_lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert (merged - stacked).abs().max() < 1e-5


@pytest.mark.parametrize("kind,rule", [(k, "prefix_suffix(2,2),untied") for k in ALL_KINDS]
                         + [("loreft", r) for r in RULES if r != "prefix_suffix(2,2),untied"])
def test_shared_prompts_edit_the_same_tokens_as_the_full_forward(kind, rule, attached):
    """Rows with the same prompt share one prompt pass (`PolicyModel(..., prompt_len=P)`): the prompt chunk
    and the response chunk each place their columns from the 2-D mask, so every rule edits the same tokens
    and the logits and the adapter's gradients equal the unshared forward's."""
    lm, adapter = attached(kind, *RULES[rule])
    ids, mask = left_pad(PROMPTS, PAD)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)  # each prompt twice, copies not adjacent
    T = 6
    response = torch.randint(3, 24, (ids.shape[0], T), generator=torch.Generator().manual_seed(0))
    full_ids, full_mask = torch.cat([ids, response], 1), torch.cat([mask, torch.ones_like(response)], 1)
    meta = PositionMeta.from_prompt_mask(mask)
    results = []
    for shared in (False, True):
        model = PolicyModel(lm, adapter=adapter, prefix_sharing=shared).train()
        assert model.prefix_sharing_unsupported_reason() is None  # so the shared path runs (peft wrappers too)
        logits = model(full_ids, full_mask, meta, T + 1, ids.shape[1]).logits
        logits.float().logsumexp(-1).mean().backward()
        results.append((logits.detach(), {name: p.grad.clone() for name, p in adapter.trainable_parameters()
                                          if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (full_logits, full_grads), (shared_logits, shared_grads) = results
    torch.testing.assert_close(shared_logits, full_logits, atol=2e-5, rtol=1e-4)
    assert full_grads.keys() == shared_grads.keys() and full_grads
    for name in full_grads:
        torch.testing.assert_close(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_sft_logits_at_labelled_positions_equal_the_full_forward(kind, attached):
    """SFT computes logits at the labelled positions only (`logits_mask`); the adapter's edits and
    gradients are those of the full forward."""
    from rlft.algos import sft

    lm, adapter = attached(kind, *RULES["prefix_suffix(2,2),untied"])
    ids = torch.randint(3, 24, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    prompt_len = torch.tensor([4, 6, 3])
    labels = sft.build_labels(ids, prompt_len, mask)
    model = PolicyModel(lm, adapter=adapter).train()
    results = []
    for selected in (None, sft.labelled_positions(labels)):
        out = model(ids, mask, PositionMeta.unpadded_prompt(prompt_len), logits_mask=selected)
        sft.sft_loss(out.logits, labels)[0].backward()
        results.append((out.logits.detach(), {n: p.grad.clone() for n, p in adapter.trainable_parameters() if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    (full, full_grads), (sel, sel_grads) = results
    torch.testing.assert_close(sel, full[sft.labelled_positions(labels)], atol=2e-5, rtol=1e-4)
    assert full_grads.keys() == sel_grads.keys() and full_grads
    for name in full_grads:
        torch.testing.assert_close(sel_grads[name], full_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("kind,rule", [(k, "prefix_suffix(2,2),untied") for k in ALL_KINDS]
                         + [("loreft", r) for r in RULES if r != "prefix_suffix(2,2),untied"])
def test_packed_forwards_edit_the_same_tokens_as_padded_ones(kind, rule, attached):
    """A packed forward (`sft.packing`, `ppo.packing`) runs the real tokens as one row; the hooks place their
    edits by the padded layout (`PositionMeta.packed_index`), so the RL forward (prompts shared or not) and the
    SFT forward give the padded forward's logits and adapter gradients."""
    from rlft.algos import sft

    lm, adapter = attached(kind, *RULES[rule])
    ids, mask = left_pad(PROMPTS, PAD)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)  # each prompt twice, copies not adjacent
    T = 6
    response = torch.randint(3, 24, (ids.shape[0], T), generator=torch.Generator().manual_seed(0))
    response_mask = torch.ones_like(response)
    response_mask[1, 4:] = 0
    response_mask[3, 1:] = 0
    full_ids, full_mask = torch.cat([ids, response], 1), torch.cat([mask, response_mask], 1)
    sft_ids, sft_mask = torch.cat([ids[:3], response[:3]], 1), torch.ones(3, ids.shape[1] + T, dtype=torch.long)
    sft_mask[1, -3:] = 0
    prompt_len = torch.tensor([8, 3, 5])
    labels = sft.build_labels(sft_ids, prompt_len, sft_mask)

    def run(model, shared: bool | None):
        if shared is None:  # SFT: unpadded prompt, right-padded target
            out = model(sft_ids, sft_mask, PositionMeta.unpadded_prompt(prompt_len), logits_mask=sft.labelled_positions(labels))
            loss, logits = sft.sft_loss(out.logits, labels)[0], out.logits
        else:
            model.prefix_sharing = shared
            logits = model(full_ids, full_mask, PositionMeta.from_prompt_mask(mask), T + 1, ids.shape[1]).logits
            logits = logits * torch.cat([torch.ones_like(response_mask[:, :1]), response_mask], 1).unsqueeze(-1)
            loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in adapter.trainable_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return logits.detach(), grads

    for shared in (None, False, True):
        padded = run(PolicyModel(lm, adapter=adapter).train(), shared)
        model = PolicyModel(lm, adapter=adapter, packing=True).train()
        assert model.packing  # peft's wrapper too
        packed = run(model, shared)
        torch.testing.assert_close(packed[0], padded[0], atol=2e-5, rtol=1e-4)
        assert padded[1].keys() == packed[1].keys() and padded[1]
        for name in padded[1]:
            torch.testing.assert_close(packed[1][name], padded[1][name], atol=1e-5, rtol=1e-3, msg=name)
