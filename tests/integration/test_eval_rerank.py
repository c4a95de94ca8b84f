"""`rlft eval --rerank value`: the value head of a ReFT (or CARFT) checkpoint picks one of k samples.

The cross-check recomputes every sample's value without the code under test: the same samples are
regenerated with the same seed, and each sequence is run alone (no padding, no shared prompts, all
positions) through a `PolicyModel` loaded from the checkpoint.
"""

import json

import pytest
import torch

from rlft.cli import main
from rlft.config import load_config
from rlft.evaluate import encode_prompts
from rlft.models.loading import load_policy
from rlft.models.policy import PolicyModel, value_head_kind
from rlft.rollout.base import SamplingParams
from rlft.rollout.hf_engine import HFRolloutEngine
from rlft.trainers.ppo import run_ppo
from rlft.workspace import load_split

# the tiny ReFT setting of tests/integration/test_ppo.py
MICRO = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4",
    "ppo.eval_every=2", "ppo.save_every=2", "log.progress=false", "log.tensorboard=false",
]
# eval.batch_size=2 prompts per generation chunk and 2 sequences per value forward: several micro-batches
EVAL = ["data.difficulty=0", "data.n_test=4", "eval.max_new_tokens=12", "eval.batch_size=2", "eval.temperature=1.0"]


@pytest.fixture(scope="module")
def reft_ckpt(tmp_path_factory, warm_model):
    run_dir = tmp_path_factory.mktemp("reft")
    run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *MICRO, "ppo.iterations=2"]))
    return run_dir / "checkpoints" / "ckpt-2"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _independent_values(model_dir, samples: int, value_dir=None) -> tuple[list[list[float]], list[list[str]]]:
    """Per question, the value of each of its `samples` samples at sequence position P + L - 2 (the state in
    which the last response token was emitted), each sequence forwarded alone and unpadded; and their texts.
    The samples come from `model_dir`'s model, the values from `value_dir`'s (default: the same folder)."""
    cfg = load_config(None, [*EVAL, f"eval.samples={samples}"])
    lm, tokenizer = load_policy(model_dir)
    value_dir = model_dir if value_dir is None else value_dir
    policy = PolicyModel(lm if value_dir == model_dir else load_policy(value_dir)[0],
                         value_head=value_head_kind(value_dir)).eval()
    policy.load_weights(value_dir)
    records = load_split(cfg, "test")
    engine = HFRolloutEngine(lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, batch_size=cfg.eval.batch_size,
                             lean_step=cfg.rollout.hf_lean_step)
    torch.manual_seed(cfg.run.seed)  # what `evaluate` does before generating
    batch = engine.generate(encode_prompts(tokenizer, records, cfg.data.style),
                            SamplingParams(n=samples, temperature=cfg.eval.temperature, max_new_tokens=cfg.eval.max_new_tokens))
    values = []
    with torch.no_grad():
        for b in range(len(batch)):
            prompt = batch.prompt_ids[b][batch.prompt_mask[b] == 1]
            response = batch.response_ids[b][batch.response_mask[b] == 1]
            ids = torch.cat([prompt, response])[None]  # (1, P + L)
            v = policy(ids, torch.ones_like(ids)).values[0]  # (P + L,)
            values.append(float(v[len(prompt) + len(response) - 2]))
    texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
    return [values[i:i + samples] for i in range(0, len(values), samples)], [texts[i:i + samples] for i in range(0, len(texts), samples)]


def test_value_rerank_picks_the_highest_value_sample(tmp_path, capsys, reft_ckpt):
    assert value_head_kind(reft_ckpt / "model") == "linear"
    code, out, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "--model", str(reft_ckpt), "--samples", "3",
                          "--rerank", "value", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["rerank"] == "value" and summary["eval/samples"] == 3 and summary["eval/n"] == 4
    assert 0.0 <= summary["eval/rerank_accuracy"] <= summary["eval/pass_at_k"] <= 1.0
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]

    values, texts = _independent_values(reft_ckpt / "model", samples=3)
    assert [p["completions"] for p in preds] == texts  # the cross-check scores the very samples that were ranked
    distinct = 0
    for p, vs in zip(preds, values):
        torch.testing.assert_close(torch.tensor(p["rank_scores"]), torch.tensor(vs), atol=1e-4, rtol=1e-4)
        best = max(range(3), key=lambda j: (vs[j], -j))  # argmax, ties to the first
        assert p["rerank_choice"] == best
        assert p["rerank_prediction"] == p["extracted"][best]
        assert p["rerank_correct"] == (p["scores"][best] >= 1.0)
        distinct += len(set(round(v, 6) for v in vs)) > 1
    assert distinct >= 1, "every group had equal values: the argmax check would prove nothing"
    n_correct = sum(p["rerank_correct"] for p in preds)
    assert summary["eval/rerank_accuracy"] == n_correct / len(preds)


def test_value_rerank_with_a_carft_head(tmp_path, capsys, warm_model):
    # a CARFT-shaped checkpoint folder (random 64-d bottleneck head) is detected and ranks like the linear one
    lm, tokenizer = load_policy(warm_model)
    torch.manual_seed(0)
    PolicyModel(lm, value_head="carft").save_pretrained(tmp_path / "ckpt" / "model")
    tokenizer.save_pretrained(tmp_path / "ckpt" / "model")
    assert value_head_kind(tmp_path / "ckpt" / "model") == "carft"
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "data.n_test=2", "eval.max_new_tokens=6",
                        "--model", str(tmp_path / "ckpt"), "--samples", "2", "--rerank", "value", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for p in preds:
        assert p["rerank_choice"] == max(range(2), key=lambda j: (p["rank_scores"][j], -j))


def test_value_rerank_needs_a_value_head(tmp_path, capsys, warm_model):
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "--model", str(warm_model), "--samples", "2",
                        "--rerank", "value")
    assert code == 2 and err.count("\n") == 1
    assert str(warm_model) in err and "ReFT/CARFT checkpoint with a value head" in err


@pytest.mark.parametrize("samples", [["--samples", "1"], []])  # explicit, or eval.samples' default of 1
def test_value_rerank_needs_two_samples(tmp_path, capsys, warm_model, samples):
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "--model", str(warm_model), *samples,
                        "--rerank", "value")
    assert code == 2 and err.count("\n") == 1 and "--rerank value needs --samples k >= 2" in err


def test_value_rerank_on_an_adapter_checkpoint(tmp_path, capsys, warm_model):
    # a LoReFT ReFT checkpoint is adapter-only files + value head: the head scores through the adapter's hooks
    run_ppo(load_config(None, [f"run.dir={tmp_path / 'run'}", f"model.path={warm_model}", *MICRO, "ppo.iterations=2",
                               "adapter.kind=loreft", "adapter.repft.rank=2"]))
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-2"
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "--model", str(ckpt), "--samples", "2",
                        "--rerank", "value", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["adapter"] == "loreft" and "eval/rerank_accuracy" in summary
    for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        assert p["rerank_choice"] == max(range(2), key=lambda j: (p["rank_scores"][j], -j))


def test_value_rerank_with_a_separate_critic(tmp_path, capsys, warm_model):
    """A ReFT run with `ppo.critic=separate` keeps the value head in ckpt-N/critic/model: reranking uses it."""
    run_dir = tmp_path / "run"
    run_ppo(load_config(None, [f"run.dir={run_dir}", f"model.path={warm_model}", *MICRO, "ppo.iterations=2",
                               "ppo.critic=separate"]))
    ckpt = run_dir / "checkpoints" / "ckpt-2"
    assert value_head_kind(ckpt / "model") is None and value_head_kind(ckpt / "critic" / "model") == "linear"
    code, _, err = _run(capsys, "eval", f"run.dir={tmp_path}", *EVAL, "--model", str(ckpt), "--samples", "3",
                        "--rerank", "value", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    values, _ = _independent_values(ckpt / "model", 3, value_dir=ckpt / "critic" / "model")
    preds = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for p, vs in zip(preds, values):
        torch.testing.assert_close(torch.tensor(p["rank_scores"]), torch.tensor(vs), atol=1e-4, rtol=1e-4)
