"""`model.compile`: each decoder layer's cache-free forwards run compiled graphs; SFT and GRPO follow the eager
runs to float rounding, packed batches of changing lengths reuse their graph, every learner and the reference are
routed, decoding keeps the eager layers (a cache by keyword or by position), and RL with shared prompts is refused."""

import json

import pytest
import torch
import torch._dynamo

from rlft.config import ConfigError, load_config
from rlft.dist.local import build_local_roles
from rlft.experiments.compare import run_compare
from rlft.models import compiling
from rlft.models.loading import load_policy
from rlft.rollout import decode
from rlft.tasks import load_records
from rlft.trainers.ppo import run_ppo
from rlft.trainers.sft import run_sft
from rlft.workspace import prepare_model

SFT = ["data.n_train=64", "data.n_test=4", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
       "model.tiny.intermediate_size=128", "model.tiny.vocab_size=320", "sft.sequences_per_step=16",
       "sft.micro_batch_size_per_device=8", "sft.lr=3e-3", "sft.epochs=1", "eval.every_epoch=false",
       "eval.max_new_tokens=8", "log.progress=false", "log.every_steps=1", "log.tensorboard=false",
       "model.precision=fp32"]
RL = ["algo=grpo", "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4",
      "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12", "eval.max_new_tokens=12",
      "ppo.micro_batch_size_per_device=8", "ppo.lr=1e-3", "ppo.iterations=3", "ppo.eval_every=100",
      "ppo.save_every=100", "kl.coef=0.01", "log.progress=false", "log.tensorboard=false", "model.precision=fp32",
      "ppo.prefix_sharing=false"]


def _metric(run_dir, key):
    return [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in r]


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    """Each test counts its own graphs, under dynamo's recompile limit whatever ran before it."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_sft_follows_the_eager_loss_curve(tmp_path, fresh_dynamo):
    """4 optimizer steps of packed micro-batches (a different token count each): per-step losses within 1e-4 of
    the eager run's, and one graph for all of them (dynamic shapes: no recompilation per length)."""
    losses = {}
    for compiled in (False, True):
        run_dir = tmp_path / str(compiled)
        run_sft(load_config(None, [f"run.dir={run_dir}", *SFT, f"model.compile={str(compiled).lower()}"]))
        losses[compiled] = _metric(run_dir, "sft/loss")
        if not compiled:
            assert _graphs() == 0
    assert len(losses[True]) == len(losses[False]) == 4
    assert max(abs(a - b) for a, b in zip(losses[False], losses[True])) < 1e-4, losses
    assert _graphs() == 1  # the training forward; the end-of-run evaluation decodes with the eager layers


@pytest.mark.slow
def test_compiled_grpo_follows_the_eager_run(tmp_path, warm_model, fresh_dynamo):
    """3 GRPO iterations (fp32): the first rollout is the same, and the policy's loss, KL and entropy stay within
    float rounding of the eager run's; the learner's forwards ran compiled (with and without autograd)."""
    runs = {}
    for compiled in (False, True):
        run_dir = tmp_path / str(compiled)
        run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *RL,
                                   f"model.compile={str(compiled).lower()}"]))
        runs[compiled] = {k: _metric(run_dir, k) for k in ("reward/mean", "policy/loss", "kl/mean", "policy/entropy")}
    eager, compiled = runs[False], runs[True]
    assert compiled["reward/mean"][0] == eager["reward/mean"][0]
    for key in ("policy/loss", "kl/mean", "policy/entropy"):
        assert len(compiled[key]) == 3
        assert max(abs(a - b) for a, b in zip(eager[key], compiled[key])) < 1e-3, (key, eager[key], compiled[key])
    assert _graphs() == 3  # the train forward; no-grad forwards of the policy and of the frozen reference


def test_rl_with_shared_prompts_refuses_compile(tmp_path, warm_model):
    """Shared-prompt forwards keep their layers eager: asking for both is an error before anything runs, in
    `rlft train` (when its learner is built) and in `rlft compare` (before the warm-up)."""
    with pytest.raises(ConfigError, match="ppo.prefix_sharing=true"):
        run_ppo(load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *RL[:-1], "model.compile=true"]))
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="compare.methods entry 'grpo': model.compile=true, but with ppo.prefix"):
        run_compare(None, [f"run.dir={tmp_path / 'compare'}", "model.compile=true", "compare.methods=[sft,grpo]",
                           "rollout.samples_per_prompt=2"])
    assert not (tmp_path / "compare" / "warmup").exists()


def test_every_learner_and_the_reference_compile(tmp_path, warm_model):
    """ReFT with a separate critic: the policy's, the critic's and the frozen reference's layers are routed (each
    role loads its own model); the HF engine samples from the policy's."""
    cfg = load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *RL[1:], "algo=reft",
                             "rollout.samples_per_prompt=1", "ppo.critic=separate", "model.compile=true"])
    lm, tokenizer, path, adapter = prepare_model(cfg, load_records("arithmetic", "train", n_train=4))
    roles = build_local_roles(cfg, lm, tokenizer, path, adapter, total_steps=1)
    models = [roles.policy.model.lm, roles.critic.model.lm, roles.reference.model.lm]
    assert len({id(m) for m in models}) == 3 and all(compiling.is_compiled(m) for m in models)
    # one dynamo cache serves every layer class's forward: room for all these roles' kinds of forward
    assert torch._dynamo.config.recompile_limit >= compiling.RECOMPILE_LIMIT


def test_decoding_keeps_the_eager_layers_and_forwards_compile(warm_model, fresh_dynamo):
    """Sampling (prefill and steps with a KV cache) compiles nothing and gives the eager model's tokens; a
    cache-free forward compiles once and gives the eager logits to float rounding."""
    model, tok = load_policy(warm_model, dtype="float32")
    prompts = tok(["Question:\n1 + 2\nAnswer reasoning:\n", "Question:\n3 * 4 - 5\nAnswer reasoning:\n"],
                  return_tensors="pt", padding=True, padding_side="left")
    ids, mask = prompts["input_ids"], prompts["attention_mask"]

    def greedy():
        for lean_step in (True, False):  # rlft's lean step and the HF forward with a cache
            yield decode.sample(model, ids, mask, max_new_tokens=8, stop_ids=[tok.eos_token_id],
                                pad_id=tok.pad_token_id, temperature=0.0, lean_step=lean_step)[0]

    with torch.no_grad():
        eager_tokens, eager_logits = list(greedy()), model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert compiling.compile_decoder_layers(model) == 2 and compiling.is_compiled(model)
    with torch.no_grad():
        for before, after in zip(eager_tokens, greedy()):
            assert torch.equal(before, after)
        assert _graphs() == 0
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert _graphs() == 1
    torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-4)


def test_a_cache_passed_by_position_keeps_the_eager_layer(fresh_dynamo):
    """GPT-2 hands its blocks the KV cache as a positional argument: sampling with it compiles nothing."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).eval()
    ids, mask = torch.randint(1, 64, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    eager = decode.sample(model, ids, mask, max_new_tokens=6, stop_ids=[0], pad_id=0, temperature=0.0)[0]
    assert compiling.compile_decoder_layers(model) == 2
    assert torch.equal(decode.sample(model, ids, mask, max_new_tokens=6, stop_ids=[0], pad_id=0, temperature=0.0)[0],
                       eager)
    assert _graphs() == 0


def test_a_model_without_decoder_layers_is_refused():
    with pytest.raises(ValueError, match="model.compile=true, but Linear has no transformers decoder layers"):
        compiling.compile_decoder_layers(torch.nn.Linear(2, 2))
