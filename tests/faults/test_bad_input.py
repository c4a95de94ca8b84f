"""Bad input through the CLI (issue #9, promise 4): each case is one line `rlft: error: ...` naming the
file / line / key and the fix, exit code 2, before any training. A case breaks if the error turns into a
traceback, a multi-line message, a different exit code, or loses the name of what to fix."""

import json
import shutil

import pytest

from rlft.cli import main

BASE = ["log.progress=false", "log.tensorboard=false", "ppo.iterations=1", "data.n_test=2"]


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _cases(tmp_path, model):
    (tmp_path / "bad.jsonl").write_text('{"question": "q1", "answer": "x\\n#### 1"}\n{"question": "q2", "answer": \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nofield.jsonl").write_text('{"question": "q1", "answer": "x\\n#### 1"}\n{"question": "q2"}\n')
    run = [f"run.dir={tmp_path / 'run'}", *BASE]
    return {
        # case: (argv, fragments the one line must contain)
        "malformed data line": (["train", f"model.path={model}", f"data.train={tmp_path / 'bad.jsonl'}", *run],
                                [f"{tmp_path / 'bad.jsonl'}:2"]),
        "empty dataset": (["train", f"model.path={model}", f"data.train={tmp_path / 'empty.jsonl'}", *run],
                          [f"{tmp_path / 'empty.jsonl'}", "no records"]),
        "missing field": (["train", f"model.path={model}", f"data.train={tmp_path / 'nofield.jsonl'}", *run],
                          [f"{tmp_path / 'nofield.jsonl'}:2", "missing field 'answer'"]),
        "unknown key": (["train", "ppo.lrr=1e-5", *run], ["ppo.lrr", "did you mean 'ppo.lr'"]),
        "mistyped key": (["train", "ppo.iterations=ten", *run], ["ppo.iterations", "'ten'"]),
        "ranks do not divide": (["train", "cluster.backend=ray", "cluster.learner_ranks=3", *run],
                                ["cluster.learner_ranks=3", "ppo.sequences_per_minibatch", "multiple of 3"]),
        "model path missing": (["train", f"model.path={tmp_path / 'nope'}", *run], [str(tmp_path / "nope"), "does not exist"]),
        "prompt over max_prompt_tokens": (["train", f"model.path={model}", "data.max_prompt_tokens=3", *run],
                                          ["data.max_prompt_tokens=3", "raise the limit"]),
        "prompt + response over the context": (["train", f"model.path={model}", "data.max_prompt_tokens=500", *run],
                                               ["data.max_prompt_tokens=500", "context", "512 tokens", "lower"]),
    }


CASES = ["malformed data line", "empty dataset", "missing field", "unknown key", "mistyped key", "ranks do not divide",
         "model path missing", "prompt over max_prompt_tokens", "prompt + response over the context"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2(tmp_path, warm_model, capsys, case):
    argv, fragments = _cases(tmp_path, warm_model)[case]
    code, err = _run(capsys, argv)
    assert code == 2, err
    assert err.startswith("rlft: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def _strip_tokens(model_dir, out, *names):
    shutil.copytree(model_dir, out)
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = out / file
        if path.exists():
            data = json.loads(path.read_text())
            for name in names:
                data.pop(name, None)
            path.write_text(json.dumps(data))
    return out


def test_tokenizer_without_pad_token_falls_back_to_eos(tmp_path, warm_model, capsys):
    """rlft marks padding with masks, never pad ids, so a missing pad token is not an error: it becomes EOS.
    Breaks if such a tokenizer crashes generation/eval."""
    model = _strip_tokens(warm_model, tmp_path / "nopad", "pad_token")
    code, err = _run(capsys, ["eval", f"run.dir={tmp_path}", "data.n_test=2", "eval.max_new_tokens=4", "--model", str(model)])
    assert code == 0, err


def test_tokenizer_without_pad_or_eos_is_one_line(tmp_path, warm_model, capsys):
    """Without EOS, generation cannot stop and padding has no fallback: one line naming the file to fix."""
    model = _strip_tokens(warm_model, tmp_path / "noeos", "pad_token", "eos_token")
    code, err = _run(capsys, ["eval", f"run.dir={tmp_path}", "data.n_test=2", "--model", str(model)])
    assert code == 2 and "no EOS token" in err and "tokenizer_config.json" in err and err.count("\n") == 1, err
