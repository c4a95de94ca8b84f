"""NLFT (`algo=nlft`) on a tiny random model: the learning direction of its loss through the real learner, and the
trainer's plumbing (sampling cache, re-judging, exact resume, `rlft train` and `rlft compare`).

A random model answers nothing right, so the direction test builds its two items by hand: an annotated CoT
judged wrong (a negative) and another judged right (a positive). The checker judge and a stub plug-in judge
cover the judgments; `tests/unit/algos/test_algos_nlft.py` covers the math.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft.algos import nlft as nlft_algo
from rlft.cli import main
from rlft.config import load_config
from rlft.learner.torch_learner import TorchLearner
from rlft.models.policy import PolicyModel
from rlft.tasks.encoding import collate
from rlft.tasks.prompts import target_text
from rlft.trainers import nlft
from rlft.trainers.sft import make_loss_fn as sft_loss_fn
from rlft.workspace import load_split, prepare_model

MICRO = ["algo=nlft", "data.difficulty=0", "data.n_train=8", "data.n_test=2", "rollout.max_new_tokens=12",
         "eval.max_new_tokens=4", "sft.sequences_per_step=4", "sft.micro_batch_size_per_device=2",
         "log.progress=false", "log.tensorboard=false"]


def _cfg(tmp_path, warm_model, *extra):
    return load_config(None, [f"run.dir={tmp_path}", f"model.path={warm_model}", *MICRO, *extra])


def test_salient_tokens_go_down_and_the_positive_response_goes_up(tmp_path, warm_model):
    cfg = _cfg(tmp_path, warm_model, "adapter.kind=full", "sft.lr=3e-3")
    train = load_split(cfg, "train")
    model, tokenizer, _, adapter = prepare_model(cfg, train)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
    gold = target_text(train[0])  # "... Each friend pays 15 + 13 = 28 dollars in all.\nTherefore, the answer is: 28"
    wrong = gold.replace("= 28", "= 38").replace(": 28", ": 38")
    assert wrong != gold
    rows = [{"id": train[0].id, "response_ids": ids(wrong), "judgment": "The response is wrong. Its answer is 38, but "
             "the correct answer is 28.", "score": 0.0, "status": "wrong"},
            {"id": train[1].id, "response_ids": ids(target_text(train[1])), "judgment": None, "score": 10.0,
             "status": "correct"}]
    items = nlft.build_items(cfg, tokenizer, rows, {r.id: r for r in train}, 512)
    assert [item["negative"] for item in items] == [True, False] and items[1]["judge"] is None
    assert items[0]["judge"] != items[0]["base"] != items[0]["correct"]
    neg, pos = items
    learner = TorchLearner(PolicyModel(model, adapter=adapter, keep_hidden=True), lr=cfg.sft.lr, schedule="constant")
    # The state NLFT assumes, made by a short SFT: the model samples the wrong response for the plain question
    # now and then (1 in 3), and writes it surely when told to write a bad one (the judge prompt); the good
    # response is its usual answer to the other question. (A random model scores every token ~1/vocab under
    # every prompt: nothing would be salient at the reference's thresholds.)
    example = lambda prompt, response: {"input_ids": prompt + response, "labels": [-100] * len(prompt) + response}  # noqa: E731
    sft = collate([example(neg["judge"], neg["response"])] * 3 + [example(neg["base"], neg["response"])]
                  + [example(neg["base"], ids(gold))] * 2 + [example(pos["base"], pos["response"])] * 2,
                  tokenizer.pad_token_id)
    n_labels = int((sft["labels"][:, 1:] != -100).sum())
    for _ in range(40):
        learner.train_step([sft], sft_loss_fn(n_labels))
    pad, width = tokenizer.pad_token_id, max(len(item["response"]) for item in items)
    responses = [item["response"] for item in items]

    def logprobs(prompts):  # (2, T) log-probs of both responses under these prompts
        return learner.logprobs_and_values(nlft._sequences(prompts, responses, width, pad), 2)[0]

    base, correct, judge = logprobs([neg["base"], pos["base"]]), logprobs([neg["correct"], pos["correct"]]), \
        logprobs([neg["judge"], pos["base"]])
    mask = nlft._sequences([neg["base"], pos["base"]], responses, width, pad)["response_mask"].bool()
    salient = nlft_algo.salient_tokens(base, judge, correct, mask)[0]  # at the reference's thresholds
    # the salient tokens are digits of the wrong 38, where the two responses part
    assert 0 < int(salient.sum()) <= 2
    assert set(tokenizer.decode(t) for t in torch.tensor(neg["response"])[salient[:len(neg["response"])]]) <= {"3", "8"}
    for _ in range(4):
        logp_correct = logprobs([item["correct"] for item in items])
        metrics = learner.train_step(nlft.micro_batches(items, logp_correct, 1, pad), nlft.make_loss_fn(cfg, 2))
        assert metrics["nlft/salient_frac"] > 0 and torch.isfinite(torch.tensor(metrics["nlft/loss"]))
    after = logprobs([neg["base"], pos["base"]])
    change = after - base  # (2, T) log-prob change under the plain question
    # the negative's salient tokens became much less likely; its other tokens stayed put (weight 0 or small)
    assert float(change[0][salient].mean()) < -1.0, change[0][salient]
    assert abs(float(change[0][mask[0] & ~salient].mean())) < 0.1
    # the positive response became more likely
    assert float(change[1][mask[1]].mean()) > 0.05


STUB = '''
def half(completions, id, **columns):
    """Judges every other question's response wrong, with a fixed text."""
    return [("Too short." if int(i.rsplit("_", 1)[1]) % 2 else None, 1.0) for i in id]
'''


def test_train_caches_samples_rejudges_and_resumes_exactly(tmp_path, warm_model, capsys):
    (tmp_path / "judge.py").write_text(STUB)
    full = nlft.run_nlft(_cfg(tmp_path / "full", warm_model, "sft.epochs=2"))
    c = full["nlft"]
    assert c["questions"] == c["sampled"] == 8 and c["positive"] + c["negative"] == 8 and full["n_train"] == 8
    assert full["adapter"] == "lora" and full["epochs_done"] == 2 and len(full["history"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "full" / nlft.SAMPLES_FILE).read_text().splitlines()]
    assert {"id", "response_ids", "response", "truncated", "judgment", "score", "status"} <= set(rows[0])
    # a random model is never right: every response is a negative whose judgment names the gold answer
    assert c["negative"] == 8 and all(row["judgment"].startswith("The response is wrong.") for row in rows)
    card = (tmp_path / "full" / "checkpoints" / "ckpt-4" / "model" / "README.md").read_text()
    assert "Natural Language Fine-Tuning" in card and "`rlft train`" in card

    # interrupted after one epoch, then resumed: the cached samples and the same final weights
    part = _cfg(tmp_path / "part", warm_model, "sft.epochs=2")
    nlft.run_nlft(part, stop_after_epoch=1)
    resumed = nlft.run_nlft(part)
    assert "reusing the judged samples" in capsys.readouterr().out
    assert resumed["history"][1]["accuracy"] == full["history"][1]["accuracy"]
    a, b = (load_file(str(d / "checkpoints" / "ckpt-4" / "model" / "lora" / "adapter_model.safetensors"))
            for d in (tmp_path / "full", tmp_path / "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # another judge on the same samples: judged again, not sampled again; its polarity decides the split
    again = nlft.run_nlft(_cfg(tmp_path / "part", warm_model, "sft.epochs=3", f"nlft.judge={tmp_path / 'judge.py'}:half"))
    out = capsys.readouterr().out
    assert "judging the cached samples" in out and "(nlft.judge changed)" in out
    rejudged = [json.loads(line) for line in (tmp_path / "part" / nlft.SAMPLES_FILE).read_text().splitlines()]
    assert [row["response_ids"] for row in rejudged] == [row["response_ids"] for row in rows]
    assert again["nlft"]["negative"] == 4 and again["nlft"]["positive"] == 4
    with pytest.raises(ValueError, match="sampled with different settings .rollout.temperature"):
        nlft.run_nlft(_cfg(tmp_path / "part", warm_model, "rollout.temperature=0.5"))


def test_cli_train_and_compare(tmp_path, warm_model, capsys):
    # the neighbourhood rule off: the policy then returns no hidden states
    assert main(["train", f"run.dir={tmp_path / 'train'}", f"model.path={warm_model}", *MICRO, "sft.epochs=1",
                 "nlft.neighbour_distance=null"]) == 0
    assert '"algo": "nlft"' in capsys.readouterr().out
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["adapter"] == "lora"
    assert main(["compare", f"run.dir={tmp_path / 'cmp'}", *MICRO[1:], "model.tiny.hidden_size=128",
                 "model.tiny.num_layers=2", "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320",
                 "sft.epochs=1", "compare.warmup_epochs=1", "compare.methods=[nlft, 'nlft+full']"]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    lora, full = results["methods"]["nlft"], results["methods"]["nlft+full"]
    assert lora["failed"] == full["failed"] == 0 and lora["final_accuracy"]["n"] == 1
    assert lora["trainable_params"] < full["trainable_params"]  # LoRA by default, every weight with +full
    assert lora["runs"]["1"]["samples"] == 8  # one epoch over the 8 judged responses
