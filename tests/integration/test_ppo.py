"""The RL loop on a tiny random model: it updates, is reproducible, resumes exactly, and every algo runs.

These are mechanics tests (a random model scores ~0); whether ReFT beats SFT is measured in
`benchmarks/reft_vs_sft.py`.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft.config import load_config
from rlft.models.loading import load_policy
from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import HFRolloutEngine
from rlft.learner.torch_learner import response_logprobs_and_values
from rlft.models.policy import PolicyModel
from rlft.tasks import load_records
from rlft.tasks.prompts import prompt_text
from rlft.trainers.algorithms import plan
from rlft.trainers.ppo import run_ppo

MICRO = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4",
    "ppo.eval_every=2", "ppo.save_every=2", "log.progress=false", "log.tensorboard=false",
]




def _cfg(run_dir, model, *extra):
    return load_config(None, [f"run.dir={run_dir}", f"model.path={model}", *MICRO, *extra])


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"ckpt-{step}" / "model" / "model.safetensors"))


def test_reft_two_iterations_update_and_reproduce(tmp_path, warm_model):
    before = load_file(str(warm_model / "model.safetensors"))
    run_ppo(_cfg(tmp_path / "a", warm_model, "ppo.iterations=2"))
    after = _weights(tmp_path / "a", 2)
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not change"
    rows = _metrics(tmp_path / "a")
    assert len(rows) == 2
    for key in ("reward/mean", "kl/mean", "policy/clipfrac", "policy/approx_kl", "policy/entropy",
                "value/explained_variance", "rollout/response_len_mean", "timing/rollout", "timing/train",
                "eval/accuracy", "value/loss", "policy/loss"):
        assert key in rows[-1], key
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert torch.isfinite(torch.tensor(v)), (k, v)
    assert (tmp_path / "a" / "checkpoints" / "ckpt-2" / "model" / "value_head.safetensors").exists()
    # same seed, same numbers
    run_ppo(_cfg(tmp_path / "b", warm_model, "ppo.iterations=2"))
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("timing/", "time/", "eval/seconds"))} for r in rs]  # noqa: E731
    assert strip(_metrics(tmp_path / "a")) == strip(_metrics(tmp_path / "b"))
    other = _weights(tmp_path / "b", 2)
    assert all(torch.equal(after[k], other[k]) for k in after)


def test_first_update_ratio_is_exactly_one(tmp_path, warm_model):
    # one PPO epoch over one minibatch: old log-probs were recomputed by the learner, so the ratio is 1
    run_ppo(_cfg(tmp_path, warm_model, "ppo.iterations=1", "ppo.ppo_epochs=1"))
    row = _metrics(tmp_path)[0]
    assert row["policy/ratio_mean"] == 1.0 and row["policy/clipfrac"] == 0.0 and row["policy/approx_kl"] == 0.0
    assert row["kl/mean"] == 0.0  # the policy still equals the reference when the first batch is sampled


def test_sampling_logprobs_match_teacher_forced(warm_model):
    model, tok = load_policy(warm_model)
    records = load_records("arithmetic", "test", n_test=6, difficulty=0)
    prompts = [tok(prompt_text(r), add_special_tokens=False)["input_ids"] for r in records]
    torch.manual_seed(0)
    batch = HFRolloutEngine(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=4).generate(
        prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=16, logprobs=True))
    data = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
            "response_ids": batch.response_ids, "response_mask": batch.response_mask}
    recomputed, _ = response_logprobs_and_values(PolicyModel(model).eval(), data, micro_batch_size=5)
    diff = ((batch.rollout_logprobs - recomputed).abs() * batch.response_mask).max()
    assert diff < 1e-5, diff
    assert batch.response_mask.sum() > 20  # the comparison covered real tokens


def test_resume_equals_uninterrupted(tmp_path, warm_model):
    run_ppo(_cfg(tmp_path / "full", warm_model, "ppo.iterations=4"))
    run_ppo(_cfg(tmp_path / "part", warm_model, "ppo.iterations=4"), stop_after_iterations=2)
    run_ppo(_cfg(tmp_path / "part", warm_model, "ppo.iterations=4"))
    a, b = _weights(tmp_path / "full", 4), _weights(tmp_path / "part", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("timing/", "time/", "eval/seconds"))} for r in rs]  # noqa: E731
    assert strip(_metrics(tmp_path / "full")) == strip(_metrics(tmp_path / "part"))


@pytest.mark.parametrize("algo, extra", [
    ("grpo", ["kl.placement=loss", "kl.estimator=k3"]),
    ("rloo", []),
    ("reinforce_pp", []),
    ("online_st", []),
    ("dr_grpo", []),
    ("reinforce_pp_baseline", []),
    ("dapo", ["dapo.max_sample_rounds=2", "dapo.overlong_cache_tokens=4"]),
])
def test_baseline_algorithms_run(tmp_path, warm_model, algo, extra):
    summary = run_ppo(_cfg(tmp_path, warm_model, f"algo={algo}", "ppo.iterations=2", *extra))
    assert summary["iterations_done"] == 2
    rows = _metrics(tmp_path)
    assert all(torch.isfinite(torch.tensor(r["train/grad_norm"])) for r in rows)
    if algo != "online_st":
        assert not (tmp_path / "checkpoints" / "ckpt-2" / "model" / "value_head.safetensors").exists()
    if algo == "reinforce_pp_baseline":  # the row puts a k2 KL in the loss
        assert all("kl/loss" in r and "kl/mean" in r for r in rows)
    if algo in ("dapo", "dr_grpo"):  # no KL term: no reference, nothing logged for it
        assert not any("kl/mean" in r for r in rows)
    if algo == "dapo":
        assert all(1 <= r["rollout/sample_rounds"] <= 2 for r in rows)
        # overlong shaping reaches the training reward: a random model runs into the budget, each such
        # response loses 0.5 while a wrong answer earns at most 0.1
        long_rows = [r for r in rows if r["rollout/truncated_frac"] > 0.5 and r["reward/accuracy"] == 0]
        assert long_rows and all(r["reward/mean"] < 0 for r in long_rows)


def test_value_warmup_freezes_the_policy(tmp_path, warm_model):
    before = load_file(str(warm_model / "model.safetensors"))
    run_ppo(_cfg(tmp_path, warm_model, "ppo.iterations=2", "ppo.value_warmup_iterations=2"))
    after = _weights(tmp_path, 2)
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = _metrics(tmp_path)
    assert rows[-1]["value/loss"] > 0


def test_group_algo_needs_two_samples(warm_model):
    from rlft.config import ConfigError

    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        load_config(None, ["algo=grpo", "rollout.samples_per_prompt=1"])


@pytest.mark.parametrize("extra", [[], ["carft.negative=lcs", "carft.partial_reward=embedding"]], ids=["v4", "lcs+embedding"])
def test_carft_runs_and_logs_contrastive_metrics(tmp_path, warm_model, extra):
    # a stub reward that marks half the samples correct, so the contrastive loss has positives
    reward = tmp_path / "stub_reward.py"
    reward.write_text("def fn(completions, **columns):\n    return [1.0 if i % 2 else 0.1 for i in range(len(completions))]\n")
    run_ppo(_cfg(tmp_path, warm_model, "algo=carft", "ppo.iterations=2", f"reward.fn={reward}:fn", *extra))
    row = _metrics(tmp_path)[-1]
    assert row["carft/n_positive"] > 0 and torch.isfinite(torch.tensor(row["carft/loss"]))
    assert (tmp_path / "checkpoints" / "ckpt-2" / "model" / "value_head.safetensors").exists()
    if extra:
        assert "carft/neg_loss" in row and 0.1 <= row["carft/partial_reward_mean"] <= 0.3


def test_carft_with_zero_cl_coef_equals_reft_with_the_same_head(tmp_path, warm_model, monkeypatch):
    """cl_coef = 0 and the flat partial reward: CARFT's updates are exactly ReFT's (same 64-d head)."""
    import rlft.dist.local as local

    # Neither run shares prompts (CARFT's head cannot; off for the reference's too), so both take the same paths
    run_ppo(_cfg(tmp_path / "carft", warm_model, "algo=carft", "carft.cl_coef=0", "ppo.iterations=2",
                 "ppo.prefix_sharing=false"))
    real = local.PolicyModel
    monkeypatch.setattr(local, "PolicyModel", lambda lm, value_head=None, **kw: real(lm, value_head=value_head and "carft", **kw))
    run_ppo(_cfg(tmp_path / "reft", warm_model, "algo=reft", "ppo.iterations=2", "ppo.prefix_sharing=false"))
    a, b = _weights(tmp_path / "carft", 2), _weights(tmp_path / "reft", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(tmp_path / "carft")[-1]["carft/n_positive"] >= 0  # the contrastive path did run


def _critic_weights(run_dir, step):
    folder = run_dir / "checkpoints" / f"ckpt-{step}" / "critic" / "model"
    return {**load_file(str(folder / "model.safetensors")), **load_file(str(folder / "value_head.safetensors"))}


def test_separate_critic_trains_both_learners(tmp_path, warm_model):
    before = load_file(str(warm_model / "model.safetensors"))
    run_ppo(_cfg(tmp_path, warm_model, "ppo.iterations=2", "ppo.critic=separate"))
    after, critic = _weights(tmp_path, 2), _critic_weights(tmp_path, 2)
    assert any(not torch.equal(before[k], after[k]) for k in before), "policy parameters did not change"
    assert any(not torch.equal(before[k], critic[k]) for k in before), "critic backbone did not change"
    ckpt = tmp_path / "checkpoints" / "ckpt-2"
    assert (ckpt / "critic" / "optim.pt").exists()
    assert not (ckpt / "model" / "value_head.safetensors").exists()  # the policy has no value head
    rows = _metrics(tmp_path)
    for key in ("value/explained_variance", "value/loss", "policy/loss", "policy/entropy", "critic/grad_norm",
                "train/grad_norm"):
        assert key in rows[-1], key
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float):
                assert torch.isfinite(torch.tensor(v)), (k, v)


def test_separate_critic_value_warmup_trains_only_the_critic(tmp_path, warm_model):
    before = load_file(str(warm_model / "model.safetensors"))
    run_ppo(_cfg(tmp_path, warm_model, "ppo.iterations=1", "ppo.critic=separate", "ppo.value_warmup_iterations=1"))
    after, critic = _weights(tmp_path, 1), _critic_weights(tmp_path, 1)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[k], critic[k]) for k in before)
    row = _metrics(tmp_path)[0]
    assert row["value/loss"] > 0 and "critic/grad_norm" in row and "policy/loss" not in row


def test_resume_equals_uninterrupted_with_separate_critic(tmp_path, warm_model):
    extra = ("ppo.iterations=2", "ppo.critic=separate", "ppo.eval_every=1", "ppo.save_every=1")
    run_ppo(_cfg(tmp_path / "full", warm_model, *extra))
    run_ppo(_cfg(tmp_path / "part", warm_model, *extra), stop_after_iterations=1)
    run_ppo(_cfg(tmp_path / "part", warm_model, *extra))
    for load in (_weights, _critic_weights):
        a, b = load(tmp_path / "full", 2), load(tmp_path / "part", 2)
        assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("timing/", "time/", "eval/seconds"))} for r in rs]  # noqa: E731
    assert strip(_metrics(tmp_path / "full")) == strip(_metrics(tmp_path / "part"))


def test_separate_critic_needs_reft():
    from rlft.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.critic=separate needs algo=reft"):
        load_config(None, ["algo=carft", "ppo.critic=separate"])


def test_single_on_policy_step_skips_the_old_logprob_pass(tmp_path, warm_model, monkeypatch):
    """GRPO with one PPO epoch and KL in the loss: old = current log-probs, so the extra no-grad forward is
    skipped (TRL's num_iterations=1 shortcut) and the update equals the one with the pass."""
    import rlft.trainers.ppo as ppo_trainer

    args = ["algo=grpo", "kl.placement=loss", "kl.estimator=k3", "ppo.ppo_epochs=1", "ppo.iterations=2"]
    cfg = _cfg(tmp_path, warm_model, *args)
    assert not ppo_trainer.needs_old_logprobs(cfg, plan(cfg), 8)
    run_ppo(_cfg(tmp_path / "skip", warm_model, *args))
    monkeypatch.setattr(ppo_trainer, "needs_old_logprobs", lambda cfg, run, n: True)
    run_ppo(_cfg(tmp_path / "full", warm_model, *args))
    a, b = _weights(tmp_path / "skip", 2), _weights(tmp_path / "full", 2)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    skip, full = _metrics(tmp_path / "skip")[-1], _metrics(tmp_path / "full")[-1]
    assert "rollout/logprob_diff" not in skip and abs(skip["kl/mean"] - full["kl/mean"]) < 1e-5


def test_prompt_indices_cover_every_question_once_per_epoch():
    from rlft.trainers.ppo import prompt_indices

    first_epoch = [i for it in range(5) for i in prompt_indices(10, 2, seed=3, iteration=it)]
    assert sorted(first_epoch) == list(range(10))
    wrap = prompt_indices(10, 4, seed=3, iteration=2)  # questions 8, 9 of epoch 0 and 0, 1 of epoch 1
    assert wrap[:2] == first_epoch[8:] and len(wrap) == 4


def test_response_logits_only_match_full_logits(warm_model):
    """RL forwards compute logits for the T + 1 response-scoring positions only; the log-probs and values
    must equal those from full-sequence logits (a wrong offset in response_slice shifts every token)."""
    from rlft.models.policy import response_slice

    lm, tok = load_policy(warm_model)
    model = PolicyModel(lm, value_head="linear").eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, lm.config.vocab_size, (3, 7), generator=g)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[0, :3] = 0
    response = torch.randint(3, lm.config.vocab_size, (3, 5), generator=g)
    ids, mask = torch.cat([prompt, response], 1), torch.cat([prompt_mask, torch.ones_like(response)], 1)
    with torch.no_grad():
        full = model(ids, mask)
        kept = model(ids, mask, logits_to_keep=6)
    assert kept.logits.shape[1] == 6 and full.logits.shape[1] == 12
    torch.testing.assert_close(response_slice(kept.logits, 7, 5), response_slice(full.logits, 7, 5), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(response_slice(full.logits, 7, 5), full.logits[:, 5:10])  # the offset matters
    torch.testing.assert_close(kept.values, full.values)


def test_learner_uses_fused_adamw_with_the_same_updates_as_the_default(warm_model):
    """The learner's fused AdamW (one kernel; 5x faster than foreach on CPU) takes the steps the default
    implementation takes, to float rounding."""
    import copy

    from rlft.learner.torch_learner import TorchLearner

    lm, _ = load_policy(warm_model)
    models = [PolicyModel(lm), PolicyModel(copy.deepcopy(lm))]
    learners = [TorchLearner(m, lr=1e-2, weight_decay=0.1, total_steps=10, schedule="constant") for m in models]
    assert learners[0].optimizer.param_groups[0]["fused"]
    for group in learners[1].optimizer.param_groups:
        group["fused"] = False  # the default: foreach
    ids = torch.randint(3, lm.config.vocab_size, (2, 12))
    mb = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def loss_fn(out, batch):
        from rlft.algos.sft import sft_loss

        return sft_loss(out.logits, batch["labels"])[0], {}

    initial = {name: p.detach().clone() for name, p in models[0].named_parameters()}
    for _ in range(3):
        for learner in learners:
            learner.train_step([mb], loss_fn)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
        assert not torch.equal(a, initial[name]), name  # every weight moved (lr 1e-2)


def test_every_rollout_of_a_run_decodes_with_the_lean_step(tmp_path, warm_model, monkeypatch):
    """After the first update the policy carries HF's output-capturing hooks (the value head asks for hidden
    states); the rollouts must still take the lean decoding step, not silently fall back to the HF forward."""
    from rlft.rollout import llama_step

    per_rollout, calls = [], []
    original_call = llama_step.LlamaStep.__call__
    monkeypatch.setattr(llama_step.LlamaStep, "__call__", lambda self, *a: calls.append(1) or original_call(self, *a))
    original_generate = HFRolloutEngine.generate

    def generate(self, prompts, params):
        calls.clear()
        batch = original_generate(self, prompts, params)
        per_rollout.append(len(calls))
        return batch

    monkeypatch.setattr(HFRolloutEngine, "generate", generate)
    run_ppo(_cfg(tmp_path / "run", warm_model, "ppo.iterations=3"))
    assert len(per_rollout) >= 3 and all(n > 0 for n in per_rollout), per_rollout


def test_hf_lean_step_false_decodes_with_the_hf_forward(warm_model):
    """`rollout.hf_lean_step=false` reaches the engine: the escape hatch if a model variant misbehaves."""
    from rlft.rollout.factory import make_engine

    lm, tok = load_policy(warm_model)
    for flag in (True, False):
        cfg = load_config(None, [f"model.path={warm_model}", f"rollout.hf_lean_step={str(flag).lower()}"])
        assert make_engine(cfg, lm, tok, warm_model).lean_step is flag


def test_grpo_shares_each_prompt_pass_among_its_samples(tmp_path, warm_model, monkeypatch):
    """GRPO with 2 samples per prompt: every learner and reference forward runs each prompt once
    (micro-batches follow rollout order within the shuffled minibatch), and the first iteration's metrics
    equal those of a run with `ppo.prefix_sharing=false`."""
    calls = []
    original_forward = PolicyModel.forward

    def forward(self, *args, **kwargs):
        calls.append("full")
        return original_forward(self, *args, **kwargs)

    def spy(original):  # the padded and the packed (`ppo.packing`) shared-prompt forwards
        def shared(self, *args):
            calls[-1] = "shared"
            return original(self, *args)
        return shared

    monkeypatch.setattr(PolicyModel, "forward", forward)
    for name in ("_forward_shared_prompts", "_forward_shared_packed"):
        monkeypatch.setattr(PolicyModel, name, spy(getattr(PolicyModel, name)))
    first_rows = []
    for flag in ("true", "false"):
        calls.clear()
        run_dir = tmp_path / flag
        run_ppo(_cfg(run_dir, warm_model, "algo=grpo", "kl.placement=loss", "kl.estimator=k3", "ppo.ppo_epochs=2", "ppo.iterations=1",
                     f"ppo.prefix_sharing={flag}"))
        # per iteration: old + reference log-prob passes (2 chunks each) and 2 epochs x 2 train micro-batches
        assert calls == (["shared"] if flag == "true" else ["full"]) * 8
        first_rows.append(_metrics(run_dir)[0])
    shared_row, full_row = first_rows
    # (metrics that are means over each micro-batch's tokens depend on which rows share a micro-batch: the
    # unshared run's micro-batches are in shuffled order, so only minibatch-level ones are compared)
    for key in ("train/grad_norm", "policy/loss", "kl/loss", "kl/mean", "kl/k1_mean"):
        assert shared_row[key] == pytest.approx(full_row[key], rel=1e-4, abs=1e-6), key


def test_token_mean_loss_does_not_depend_on_micro_batching(warm_model):
    """`ppo.loss_agg=token-mean` normalises by the minibatch's response tokens, so splitting it into
    micro-batches of uneven token counts (or regrouping rows, as shared prompts do) gives the same loss."""
    from rlft.models.policy import response_output
    from rlft.trainers.ppo import make_loss_fn

    cfg = load_config(None, [f"model.path={warm_model}", "algo=grpo", "rollout.samples_per_prompt=2", "ppo.loss_agg=token-mean",
                             "kl.placement=loss", "kl.estimator=k3"])
    lm, _ = load_policy(warm_model)
    model = PolicyModel(lm).eval()
    gen = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 6
    batch = {"prompt_ids": torch.randint(3, lm.config.vocab_size, (B, P), generator=gen),
             "prompt_mask": torch.ones(B, P, dtype=torch.long),
             "response_ids": torch.randint(3, lm.config.vocab_size, (B, T), generator=gen),
             "response_mask": torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] + [0] * 5]),
             "advantages": torch.randn(B, T, generator=gen), "ref_logprobs": -torch.rand(B, T, generator=gen) * 3}
    batch["old_logprobs"] = batch["ref_logprobs"] + 0.1

    def total_loss(splits, num_tokens):
        loss_fn = make_loss_fn(cfg, plan(cfg), num_seqs=B, kl_coef=0.1, part="policy", num_tokens=num_tokens,
                               has_old_logprobs=True)
        total = 0.0
        for rows in splits:
            mb = {k: v[rows] for k, v in batch.items()}
            ids, mask = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1), torch.cat([mb["prompt_mask"], mb["response_mask"]], 1)
            with torch.no_grad():
                total += float(loss_fn(response_output(model(ids, mask, None, T + 1, P), P, T), mb)[0])
        return total

    n_tokens = float(batch["response_mask"].sum())
    whole = total_loss([[0, 1, 2, 3]], n_tokens)
    assert total_loss([[0], [1, 2, 3]], n_tokens) == pytest.approx(whole, rel=1e-5)
    assert total_loss([[0, 3], [2, 1]], n_tokens) == pytest.approx(whole, rel=1e-5)
    # the failing control: each micro-batch's own token count (what the loss used before) gives another loss
    assert total_loss([[0], [1, 2, 3]], None) != pytest.approx(whole, rel=1e-3)


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_values_are_read_at_the_state_before_each_response_token(warm_model, prefix_sharing):
    """V(s_t) for response token t is the value head at sequence position P - 1 + t (prompt and the first t
    response tokens seen), in the no-grad pass and in what the learner hands the loss. A value read one
    position off (the state after the token) would train and use the critic on the wrong states."""
    from rlft.learner.torch_learner import TorchLearner

    lm, _ = load_policy(warm_model)
    model = PolicyModel(lm, value_head="linear", prefix_sharing=prefix_sharing).eval()
    gen = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 6
    prompt = torch.randint(3, lm.config.vocab_size, (2, P), generator=gen).repeat_interleave(2, 0)  # shared prompts
    batch = {"prompt_ids": prompt, "prompt_mask": torch.ones(B, P, dtype=torch.long),
             "response_ids": torch.randint(3, lm.config.vocab_size, (B, T), generator=gen),
             "response_mask": torch.ones(B, T, dtype=torch.long)}
    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
    with torch.no_grad():
        full = model(ids, torch.ones_like(ids)).values  # (B, P + T), every position
    expected = full[:, P - 1:P - 1 + T]  # (B, T)
    learner = TorchLearner(model, lr=0.0, train_mode=False)
    _, values = learner.logprobs_and_values(batch, micro_batch_size=B)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)
    seen = []

    def loss_fn(output, mb):
        seen.append(output.values.detach())
        return output.values.sum() * 0.0, {}

    learner.train_step([{**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}], loss_fn)
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[:, P:P + T], expected, atol=1e-3)  # the off-by-one is distinguishable
