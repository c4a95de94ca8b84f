"""Packed forwards (`sft.packing`, `ppo.packing`; `rlft/models/packing.py`) against the padded ones, fp32: logits,
log-probs, values, CARFT embeddings, the SFT loss, the PPO loss step and gradients; that a packed forward runs
the real tokens only; and where packing does not apply."""

import contextlib
import json
import warnings

import pytest
import torch
from test_llama_step import ARCHITECTURES, build
from test_policy_shortcuts import grouped_batch

from rlft.adapters.positions import PositionMeta
from rlft.algos import sft
from rlft.config import ConfigError, check_command_line, load_config
from rlft.learner.reference import FrozenReference
from rlft.learner.torch_learner import TorchLearner
from rlft.models import packing as packed
from rlft.models.policy import PolicyModel, response_slice
from rlft.trainers.algorithms import plan
from rlft.trainers.ppo import make_loss_fn
from rlft.types import TrainBatch

TOL = {"atol": 2e-5, "rtol": 1e-4}
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-3}


def policy(name: str, packing: bool, **options) -> PolicyModel:
    """The same weights (seeded) as a padded or a packed policy."""
    model = PolicyModel(build(name), init_seed=0, packing=packing, **options)
    assert model.packing is packing
    return model


def sequences(batch: dict) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    ids = torch.cat([batch["prompt_ids"], batch["response_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["response_mask"]], 1)
    return ids, mask, batch["prompt_ids"].shape[1], batch["response_ids"].shape[1]


@contextlib.contextmanager
def decoder_inputs(model: PolicyModel):
    """Records the shape of every decoder call's input_ids."""
    shapes = []
    handle = model.lm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def grads_of(model: torch.nn.Module) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, n_params: int) -> None:
    assert a.keys() == b.keys() and len(a) == n_params
    for key, grad in a.items():
        torch.testing.assert_close(b[key], grad, **GRAD_TOL, msg=key)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("head", [None, "linear", "carft"])
@pytest.mark.parametrize("shared", [False, True])
def test_packed_rl_forward_equals_the_padded_one(name, head, shared):
    """The RL forward (T + 1 scoring positions, prompts shared where the model can): logits, values and CARFT's
    embeddings at real positions, and every parameter's gradient, padded == packed."""
    batch = grouped_batch(97)
    ids, mask, P, T = sequences(batch)
    meta = PositionMeta.from_prompt_mask(batch["prompt_mask"])
    response_mask = batch["response_mask"]
    results = []
    for packing in (False, True):
        model = policy(name, packing, value_head=head, prefix_sharing=shared)
        out = model(ids, mask, meta, T + 1, P)
        logits = response_slice(out.logits, P, T)
        loss = (logits.log_softmax(-1) * response_mask[..., None]).sum()
        values = embeddings = None
        if head:
            values = response_slice(out.values, P, T) * response_mask
            loss = loss + values.pow(2).sum()
        if head == "carft":  # every sequence position, prompt included
            embeddings = out.embeddings * mask[..., None]
            loss = loss + embeddings.sum()
        loss.backward()
        results.append((logits * response_mask[..., None], values, embeddings, grads_of(model)))
        n_params = len(list(model.parameters()))
    (lg_a, v_a, e_a, g_a), (lg_b, v_b, e_b, g_b) = results
    torch.testing.assert_close(lg_b, lg_a, **TOL)
    if head:
        torch.testing.assert_close(v_b, v_a, **TOL)
    if head == "carft":
        torch.testing.assert_close(e_b, e_a, **TOL)
    assert_same_grads(g_a, g_b, n_params)


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_packed_sft_loss_and_gradients_equal_the_padded_ones(name):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 97, (4, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding (SFT rows)
    mask[3, 9:] = 0
    prompt_len = torch.tensor([3, 4, 2, 5])
    labels = sft.build_labels(ids, prompt_len, mask)
    results = []
    for packing in (False, True):
        model = policy(name, packing).train()
        out = model(ids, mask, PositionMeta.unpadded_prompt(prompt_len), logits_mask=sft.labelled_positions(labels))
        loss, metrics = sft.sft_loss(out.logits, labels)
        loss.backward()
        results.append((loss.detach(), metrics["sft/token_acc"], out.logits.detach(), grads_of(model)))
    (loss_a, acc_a, logits_a, g_a), (loss_b, acc_b, logits_b, g_b) = results
    torch.testing.assert_close(logits_b, logits_a, **TOL)
    torch.testing.assert_close(loss_b, loss_a, **TOL)
    assert acc_a == acc_b
    assert_same_grads(g_a, g_b, len(list(model.parameters())))


def test_a_packed_forward_runs_the_real_tokens_only():
    """The decoder sees one row of the batch's real tokens (the packed row's length is the sum of the real
    lengths); with shared prompts, the distinct prompts' real tokens, then the responses' real tokens."""
    batch = grouped_batch(97)  # 3 prompts (7, 5, 3 real tokens) x 3 samples, 5 response positions, 6 pads
    ids, mask, P, T = sequences(batch)
    for shared, want in ((False, [(1, int(mask.sum()))]),
                         (True, [(1, 7 + 5 + 3), (1, int(batch["response_mask"].sum()))])):
        model = policy("llama", True, prefix_sharing=shared)
        with decoder_inputs(model) as shapes, torch.no_grad():
            model(ids, mask, None, T + 1, P)
        assert shapes == want
    assert int(mask.sum()) < mask.numel()  # so there was padding to remove
    model = policy("llama", True)
    with decoder_inputs(model) as shapes, torch.no_grad():  # SFT
        model(ids, mask, None, logits_mask=mask.bool() & (torch.arange(P + T) < P + T - 1))
    assert shapes == [(1, int(mask.sum()))]


def ppo_batch(vocab: int) -> TrainBatch:
    """A ReFT training batch of the grouped rows, with hand-made old log-probs, values, returns and advantages."""
    rows = grouped_batch(vocab, prompts=2, n=4)
    B, T = rows["response_ids"].shape
    gen = torch.Generator().manual_seed(5)
    mask = rows["response_mask"].float()
    return TrainBatch(rows["prompt_ids"], rows["prompt_mask"], rows["response_ids"], rows["response_mask"],
                      scores=torch.rand(B, generator=gen),
                      old_logprobs=-torch.rand(B, T, generator=gen) * 5 * mask,
                      old_values=torch.randn(B, T, generator=gen) * mask,
                      ref_logprobs=-torch.rand(B, T, generator=gen) * 5 * mask,
                      advantages=torch.randn(B, T, generator=gen) * mask,
                      returns=torch.randn(B, T, generator=gen) * mask)


@pytest.mark.parametrize("shared", [False, True])
def test_packed_learner_passes_and_ppo_step_equal_the_padded_ones(shared):
    """`logprobs_and_values` (the log-prob and value pass), the reference's log-probs, and one PPO optimizer step
    over two micro-batches with ReFT's loss (policy + value): same log-probs, values, metrics and weights after."""
    cfg = load_config(None, ["algo=reft", "ppo.micro_batch_size_per_device=4"])
    batch = ppo_batch(97)
    results = []
    for packing in (False, True):
        model = policy("qwen2", packing, value_head="linear", prefix_sharing=shared)
        learner = TorchLearner(model, lr=1e-2, train_mode=False)
        logprobs, values = learner.logprobs_and_values(batch.sequences(), micro_batch_size=4)
        reference = FrozenReference(build("qwen2", seed=1), prefix_sharing=shared, packing=packing)
        ref_logprobs = reference.logprobs(batch.sequences(), micro_batch_size=4)
        loss_fn = make_loss_fn(cfg, plan(cfg), num_seqs=len(batch), kl_coef=0.05, part="both",
                               num_tokens=float(batch.response_mask.sum()), has_old_logprobs=True)
        metrics = learner.train_step(batch.micro_batches(torch.arange(len(batch)), 4), loss_fn)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        results.append((logprobs, values, ref_logprobs, metrics, weights))
    (lp_a, v_a, ref_a, m_a, w_a), (lp_b, v_b, ref_b, m_b, w_b) = results
    for a, b in ((lp_a, lp_b), (v_a, v_b), (ref_a, ref_b)):
        torch.testing.assert_close(b, a, **TOL)
    assert m_a.keys() == m_b.keys()
    for key in m_a:
        assert m_b[key] == pytest.approx(m_a[key], rel=1e-4, abs=1e-5), key
    for key in w_a:
        torch.testing.assert_close(w_b[key], w_a[key], atol=1e-6, rtol=1e-5, msg=key)
    assert any(not torch.equal(w_a[k], policy("qwen2", False, value_head="linear").state_dict()[k]) for k in w_a)


def test_packing_under_gradient_checkpointing_gives_the_padded_gradients():
    """Checkpointed layers recompute during backward; they must run the same (packed) attention again."""
    batch = grouped_batch(97)
    ids, mask, P, T = sequences(batch)
    results = []
    for packing in (False, True):
        model = policy("llama", packing, value_head="linear", gradient_checkpointing=True)
        model.set_learning_mode(False)  # RL: eval mode, checkpointing on
        out = model(ids, mask, None, T + 1, P)
        (response_slice(out.logits, P, T).log_softmax(-1) * batch["response_mask"][..., None]).sum().backward()
        results.append(grads_of(model))
    assert_same_grads(results[0], results[1], len(list(model.parameters())) - 2)  # the value head gets no gradient


def test_packing_under_bf16_autocast_stays_close_to_the_padded_forward():
    batch = grouped_batch(97)
    ids, mask, P, T = sequences(batch)
    out = [response_slice(policy("llama", p, mixed_precision=True)(ids, mask, None, T + 1, P).logits, P, T).float()
           for p in (False, True)]
    m = batch["response_mask"][..., None]
    torch.testing.assert_close(out[1] * m, out[0] * m, atol=3e-2, rtol=3e-2)


BF16_CPU = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.skipif(not BF16_CPU, reason="this CPU's oneDNN has no bf16 GEMM")
@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("shared", [False, True])
def test_bf16_packed_rows_get_a_kernel_tail_that_changes_no_output_or_gradient(name, shared, monkeypatch):
    """Under bf16 on a CPU every packed decoder call runs `kernel_rows(N)` tokens (a dummy tail after the N real
    ones, so that oneDNN reuses its bf16 GEMM kernels across batches); logits, values and gradients are those of
    the same forward without the tail to bf16 rounding (oneDNN picks its GEMM kernel by shape: 1 bf16 ulp on ~7 %
    of these logits)."""
    batch = grouped_batch(97, prompts=3, n=3, P=13, T=11)
    ids, mask, P, T = sequences(batch)
    meta = PositionMeta.from_prompt_mask(batch["prompt_mask"])
    results = []
    for tail in (False, True):
        if not tail:
            monkeypatch.setattr(packed, "pad_for_kernels", lambda lm, ids, positions: (ids, positions))
        model = policy(name, True, value_head="linear", prefix_sharing=shared, mixed_precision=True)
        with decoder_inputs(model) as shapes:
            out = model(ids, mask, meta, T + 1, P)
        logits = response_slice(out.logits, P, T).float() * batch["response_mask"][..., None]
        values = response_slice(out.values, P, T).float() * batch["response_mask"]
        (logits.log_softmax(-1).sum() + values.pow(2).sum()).backward()
        results.append((logits, values, grads_of(model), [s[1] for s in shapes]))
        monkeypatch.undo()
    (lg_a, v_a, g_a, n_a), (lg_b, v_b, g_b, n_b) = results
    assert all(packed.kernel_rows(n + 1) == m for n, m in zip(n_a, n_b))  # a tail on every call
    torch.testing.assert_close(lg_b, lg_a, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(v_b, v_a, atol=2e-2, rtol=2e-2)
    for key, grad in g_a.items():  # bf16 weight gradients: to one bf16 ulp (2^-7) of each tensor's largest entry
        torch.testing.assert_close(g_b[key], grad, atol=float(grad.abs().max()) / 128, rtol=2e-2,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_kernel_rows_and_where_the_tail_applies():
    assert [packed.kernel_rows(n) for n in (1, 32, 33, 40, 87, 1901, 2000, 2048)] == [1, 32, 34, 40, 88, 1920, 2048, 2048]
    for n in range(1, 5000):
        rows = packed.kernel_rows(n)
        assert n <= rows <= n * 1.0625 and packed.kernel_rows(rows) == rows
    assert len({packed.kernel_rows(n) for n in range(1024, 2049)}) == 17  # 16 sizes per octave (and 2048)
    lm = build("llama")
    ids, positions = torch.arange(3, 90).unsqueeze(0), torch.arange(87).unsqueeze(0)
    same = packed.pad_for_kernels(lm, ids, positions)  # fp32: MKL's GEMMs have no per-shape cost
    assert same[0] is ids and same[1] is positions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded_ids, padded_positions = packed.pad_for_kernels(lm, ids, positions)
        assert packed.pad_for_kernels(lm, ids[:, :40], positions[:, :40])[0].shape == (1, 42)  # 40 is a size
    assert padded_ids.shape == padded_positions.shape == (1, 88)
    assert torch.equal(padded_ids[:, :87], ids) and torch.equal(padded_positions[0, 87:], torch.tensor([0]))
    assert packed.pad_for_kernels(lm.to(torch.bfloat16), ids, positions)[0].shape == (1, 88)  # bf16 weights


def test_enabling_packing_leaves_the_models_padded_and_cached_forwards_as_they_were():
    """The HF engine and every unpacked forward share the module with a packing policy: its attention name then
    routes to rlft's function, which must run them exactly as sdpa does (left-padded prefill, cached decoding)."""
    from rlft.models import packing

    batch = grouped_batch(97)
    ids, mask, P, _ = sequences(batch)
    outputs = []
    for enabled in (False, True):
        lm = build("llama")
        if enabled:
            packing.enable(lm)
            assert lm.config._attn_implementation == packing.ATTENTION_NAME
        with torch.no_grad():
            prefill = lm(input_ids=ids[:, :P], attention_mask=mask[:, :P], use_cache=True)
            step = lm(input_ids=ids[:, P:P + 1], attention_mask=mask[:, :P + 1], cache=prefill.cache, use_cache=True)
            whole = lm(input_ids=ids[:1, :P]).logits  # one unpadded row, no mask
        outputs.append((prefill.logits, step.logits, whole))
    for a, b in zip(*outputs):
        assert torch.equal(a, b)


def test_models_that_cannot_pack_run_padded_under_auto_and_are_refused_when_packing_is_asked_for():
    from transformers import GPT2Config, GPT2LMHeadModel

    def cases():
        sliding = build("mistral")
        sliding.config.sliding_window = 4
        eager = build("llama")
        eager.config._attn_implementation = "eager"
        return [(GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)), "gpt2"),
                (sliding, "sliding"), (eager, "eager")]

    for lm, why in cases():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto: the documented fallback, silent
            model = PolicyModel(lm, packing="auto")
        assert not model.packing and why in model.packing_unsupported_reason()
    for lm, why in cases():  # true: a setting that cannot take effect is an error naming its key
        with pytest.raises(ValueError, match=rf"sft\.packing = true, but .*{why}.*sft\.packing=auto"):
            PolicyModel(lm, packing=True, packing_key="sft.packing")
    with pytest.raises(ValueError, match="ppo.packing = 'yes'"):
        PolicyModel(build("llama"), packing="yes", packing_key="ppo.packing")
    assert PolicyModel(build("llama"), packing=True).packing
    assert PolicyModel(build("llama"), packing="auto").packing
    assert not PolicyModel(build("llama"), packing=False).packing


def test_packing_true_with_a_model_that_cannot_pack_stops_rlft_train_before_training(tmp_path, warm_model, capsys):
    """`rlft train ppo.packing=true` with eager attention exits 2 naming the key, before any iteration; the default
    (auto) trains the same model padded."""
    from rlft.cli import main

    common = [f"model.path={warm_model}", "model.attn_implementation=eager", "algo=grpo", "data.difficulty=0",
              "data.n_train=8", "data.n_test=2", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
              "rollout.max_new_tokens=6", "eval.max_new_tokens=6", "ppo.iterations=1", "log.progress=false",
              "log.tensorboard=false"]
    refused = tmp_path / "refused"
    assert main(["train", f"run.dir={refused}", "ppo.packing=true", *common]) == 2
    err = capsys.readouterr().err
    assert "ppo.packing = true, but this model cannot run packed forwards: attention 'eager'" in err
    assert not (refused / "checkpoints").exists()
    assert main(["train", f"run.dir={tmp_path / 'auto'}", *common]) == 0
    assert (tmp_path / "auto" / "checkpoints" / "ckpt-1").exists()


def test_packing_keys_default_on_and_are_checked_per_command():
    cfg = load_config(None, [])
    assert cfg.sft.packing == cfg.ppo.packing == "auto"
    with pytest.raises(ConfigError, match="ppo.packing cannot take effect with `rlft sft`"):
        check_command_line(cfg, "sft", ["ppo.packing"])
    with pytest.raises(ConfigError, match="sft.packing cannot take effect with `rlft train`"):
        check_command_line(load_config(None, ["algo=grpo", "rollout.samples_per_prompt=2"]), "train", ["sft.packing"])


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["sft/loss"] for r in rows if "sft/loss" in r]


def test_sft_runs_the_same_packed_and_padded(tmp_path, warm_model):
    from rlft.trainers.sft import run_sft

    args = [f"model.path={warm_model}", "data.difficulty=0", "data.n_train=24", "data.n_test=2",
            "sft.sequences_per_step=8", "sft.micro_batch_size_per_device=4", "sft.epochs=1", "sft.lr=1e-2",
            "eval.max_new_tokens=4", "eval.every_epoch=false", "log.every_steps=1", "log.progress=false",
            "log.tensorboard=false", "sft.save_every_epoch=false", "model.precision=fp32"]
    losses = []
    for packing in ("false", "true"):
        run_sft(load_config(None, [f"run.dir={tmp_path / packing}", f"sft.packing={packing}", *args]))
        losses.append(_losses(tmp_path / packing))
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_grpo_runs_the_same_packed_and_padded(tmp_path, warm_model):
    """Two GRPO iterations (prompts shared, KL to the reference, 2 PPO epochs): the same sampled tokens, rewards
    and losses, so the packed train steps left the same weights for the second iteration's sampling."""
    from rlft.trainers.ppo import run_ppo

    args = [f"model.path={warm_model}", "algo=grpo", "data.difficulty=0", "data.n_train=16", "data.n_test=2",
            "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=10",
            "eval.max_new_tokens=4", "ppo.micro_batch_size_per_device=3", "ppo.lr=1e-3", "ppo.iterations=2",
            "ppo.eval_every=2", "ppo.save_every=2", "log.progress=false", "log.tensorboard=false",
            "model.precision=fp32"]
    runs = []
    for packing in ("false", "true"):
        run_ppo(load_config(None, [f"run.dir={tmp_path / packing}", f"ppo.packing={packing}", *args]))
        runs.append([json.loads(line) for line in (tmp_path / packing / "metrics.jsonl").read_text().splitlines()])
    for a, b in zip(*runs):
        for key in ("reward/mean", "rollout/response_len_mean", "policy/loss", "kl/mean", "policy/entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def _rl_outputs(model: PolicyModel, batch: dict, device: str):
    """Masked response logits and every parameter's gradient of one RL forward + backward on `device`."""
    ids, mask, P, T = (x.to(device) if torch.is_tensor(x) else x for x in sequences(batch))
    response_mask = batch["response_mask"].to(device)
    out = model(ids, mask, None, T + 1, P)
    logits = response_slice(out.logits, P, T).float() * response_mask[..., None]
    (logits.log_softmax(-1) * response_mask[..., None]).sum().backward()
    return logits.detach().cpu(), {k: v.float().cpu() for k, v in grads_of(model).items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_packed_forward_on_gpu_equals_the_padded_one(mixed, shared):
    """On CUDA (SDPA's CUDA kernels in the per-sequence layout), fp32 and bf16 autocast."""
    batch = grouped_batch(97)
    tol = {"atol": 5e-2, "rtol": 5e-2} if mixed else {"atol": 1e-4, "rtol": 1e-3}
    outs = [_rl_outputs(PolicyModel(build("qwen2").cuda(), packing=p, prefix_sharing=shared, mixed_precision=mixed),
                        batch, "cuda") for p in (False, True)]
    torch.testing.assert_close(outs[1][0], outs[0][0], **tol)
    for key in outs[0][1]:
        torch.testing.assert_close(outs[1][1][key], outs[0][1][key], **tol, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_packed_forward_under_flash_attention_2_equals_the_padded_sdpa_one():
    """flash_attention_2: transformers' varlen kernels find the packed sequences from the position ids."""
    pytest.importorskip("flash_attn")
    batch = grouped_batch(97)
    outs = []
    for packing, attention in ((False, "sdpa"), (True, "flash_attention_2")):
        lm = build("llama").to("cuda", torch.bfloat16)
        lm.config._attn_implementation = attention
        model = PolicyModel(lm, packing=packing, prefix_sharing=False)
        assert model.packing is packing
        outs.append(_rl_outputs(model, batch, "cuda"))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=5e-2, rtol=5e-2)


def test_a_micro_batch_whose_responses_are_all_masked_still_runs():
    """DAPO's overlong filter can mask every response of a micro-batch: the packed shared-prompt forward still runs
    its response pass and scores the first response token from the prompt as the padded forward does."""
    batch = grouped_batch(97)
    batch["response_mask"] = torch.zeros_like(batch["response_mask"])
    ids, mask, P, T = sequences(batch)
    first = [response_slice(policy("llama", p, prefix_sharing=True)(ids, mask, None, T + 1, P).logits, P, T)[:, 0]
             for p in (False, True)]
    torch.testing.assert_close(first[1], first[0], **TOL)
