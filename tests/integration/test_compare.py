"""`rlft compare` end to end on a micro config: every output file, one entry per method and seed, resume."""

import json

import pytest

from rlft.cli import main
from rlft.config import ConfigError
from rlft.experiments.compare import is_sft, mean_std_ci, parse_method

MICRO = [
    "data.difficulty=0", "data.n_train=24", "data.n_test=4", "model.tiny.hidden_size=128", "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=256", "model.tiny.vocab_size=320", "sft.sequences_per_step=8",
    "sft.micro_batch_size_per_device=8", "sft.epochs=1", "eval.max_new_tokens=8", "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=8", "ppo.iterations=2", "ppo.eval_every=1", "ppo.save_every=2", "log.progress=false",
    "compare.warmup_epochs=1", "compare.seeds=[1,2]",
    "compare.methods=[sft, reft, carft, 'grpo2: algo=grpo rollout.samples_per_prompt=2', null, "
    "'null-grpo: rollout.samples_per_prompt=2', 'broken: algo=reft reward.fn=nope:fn']",
]


def test_compare_writes_results_for_every_method_and_seed(tmp_path, capsys):
    code = main(["compare", f"run.dir={tmp_path}", *MICRO])
    assert code == 1  # the deliberately broken method is reported, not hidden
    out = capsys.readouterr().out
    assert "| reft |" in out and "| carft |" in out
    for name in ("results.json", "results.md", "accuracy.png", "training.png", "config.yaml"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["methods"]) == ["sft", "reft", "carft", "grpo2", "null", "null-grpo", "broken"]
    for label in ("sft", "reft", "carft", "grpo2", "null", "null-grpo"):
        runs = results["methods"][label]["runs"]
        assert sorted(runs) == ["1", "2"] and all("error" not in r for r in runs.values())
        assert results["methods"][label]["final_accuracy"]["n"] == 2
        assert (tmp_path / "runs" / label / "seed1" / "tb").is_dir()
    assert results["methods"]["broken"]["failed"] == 2
    assert "nope" in results["methods"]["broken"]["runs"]["1"]["error"]
    assert (tmp_path / "runs" / "reft" / "seed2" / "predictions_iter2.jsonl").exists()

    # the null controls: the same algorithm trained on one constant, the warm-up's mean training reward
    warm = results["warmup"]
    assert 0 <= warm["train_reward"] <= 1 and warm["train_reward_samples"] == 24 and warm["accuracy"] is not None
    for label, algo in (("null", "reft"), ("null-grpo", "grpo")):
        saved = (tmp_path / "runs" / label / "seed1" / "config.yaml").read_text()
        assert f"algo: {algo}" in saved and f"constant: {warm['train_reward']}" in saved
        rows = [json.loads(x) for x in (tmp_path / "runs" / label / "seed1" / "metrics.jsonl").read_text().splitlines()]
        assert all(r["reward/mean"] == pytest.approx(warm["train_reward"]) and "reward/true_mean" in r for r in rows)
    # gains: every method from the warm-up; RL methods against the null control of their own algorithm
    methods = results["methods"]
    assert methods["reft"]["gain_vs_null"]["control"] == "null" and methods["carft"]["gain_vs_null"]["control"] == "null"
    assert methods["grpo2"]["gain_vs_null"]["control"] == "null-grpo"
    assert "gain_vs_null" not in methods["sft"] and "gain_vs_null" not in methods["null"]
    pairs = [methods["reft"]["runs"][s]["final_accuracy"] - methods["null"]["runs"][s]["final_accuracy"] for s in "12"]
    assert methods["reft"]["gain_vs_null"]["mean"] == pytest.approx(sum(pairs) / 2)
    assert methods["null"]["gain_vs_warmup"]["mean"] == pytest.approx(
        sum(methods["null"]["runs"][s]["final_accuracy"] for s in "12") / 2 - warm["accuracy"])
    assert "gain vs null control" in (tmp_path / "results.md").read_text()

    # re-running skips the finished runs
    main(["compare", f"run.dir={tmp_path}", *MICRO])
    assert "reft seed 1 already finished, skipped" in capsys.readouterr().out
    # ... but never one made with another configuration (here: another learning rate): a clear error
    # naming the run and the key, and the finished result is kept
    before = (tmp_path / "runs" / "reft" / "seed1" / "compare_result.json").read_text()
    assert main(["compare", f"run.dir={tmp_path}", *MICRO, "ppo.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "runs/sft/seed1" in err and "different configuration" in err
    main(["compare", f"run.dir={tmp_path}", *MICRO[:-1], "compare.methods=[reft]", "ppo.lr=0.5"])
    err = capsys.readouterr().err
    assert "runs/reft/seed1" in err and "ppo.lr" in err
    assert (tmp_path / "runs" / "reft" / "seed1" / "compare_result.json").read_text() == before


def test_parse_method_and_stats():
    assert parse_method("reft") == ("reft", ["algo=reft"])
    assert parse_method("sft") == ("sft", [])
    assert parse_method("g4: algo=grpo ppo.lr=1e-5") == ("g4", ["algo=grpo", "ppo.lr=1e-5"])
    assert parse_method("reft+loreft") == ("reft+loreft", ["algo=reft", "adapter.kind=loreft"])
    assert parse_method("sft+lora") == ("sft+lora", ["adapter.kind=lora"]) and is_sft(["adapter.kind=lora"])
    assert parse_method("reft+lora: adapter.lora.rank=4") == ("reft+lora", ["algo=reft", "adapter.kind=lora",
                                                                             "adapter.lora.rank=4"])
    assert not is_sft(parse_method("reft+brep")[1])
    assert parse_method("null") == ("null", ["algo=reft"]) and parse_method("null", "grpo") == ("null", ["algo=grpo"])
    assert parse_method("null-carft") == ("null-carft", ["algo=carft"])
    with pytest.raises(ConfigError, match="not an algo"):
        parse_method("null-ppo")
    with pytest.raises(ConfigError, match="not an adapter kind"):
        parse_method("reft+pyreft")
    stats = mean_std_ci([0.5, 0.7])
    assert abs(stats["mean"] - 0.6) < 1e-12 and abs(stats["std"] - 0.1414213562) < 1e-9
    assert abs(stats["ci95"][1] - (0.6 + 12.706 * 0.1)) < 1e-9  # t(1) * std / sqrt(2)


def test_each_rl_method_is_paired_with_the_null_control_of_its_settings():
    from rlft.experiments.compare import null_control_for

    nulls = [("null", ["algo=reft", "reward.constant=0.3"]),
             ("null-lr1e-5", ["algo=reft", "ppo.lr=1e-5", "reward.constant=0.3"]),
             ("null-grpo", ["algo=grpo", "rollout.samples_per_prompt=2", "reward.constant=0.3"])]
    assert null_control_for(["algo=reft"], nulls) == "null"
    assert null_control_for(["algo=reft", "ppo.lr=1e-5"], nulls) == "null-lr1e-5"
    assert null_control_for(["algo=grpo", "rollout.samples_per_prompt=4"], nulls) == "null-grpo"  # same algorithm
    assert null_control_for(["algo=carft"], nulls) == "null"
    assert parse_method("null-lr1e-5: algo=reft ppo.lr=1e-5") == ("null-lr1e-5", ["algo=reft", "ppo.lr=1e-5"])


def test_null_reward_questions_without_a_null_control_is_an_error(tmp_path, capsys):
    assert main(["compare", f"run.dir={tmp_path}", "compare.methods=[reft]", "compare.null_reward_questions=5"]) == 2
    assert "has no null control" in capsys.readouterr().err


def test_warmup_can_stop_early_in_a_longer_schedule(tmp_path, capsys):
    """compare.warmup_schedule_epochs: the warm-up is epoch 1 of a 3-epoch schedule (lr not yet decayed), and a
    re-run resumes it without training another epoch."""
    micro = [*MICRO[:-1], "compare.methods=[reft]", "compare.seeds=[1]", "compare.warmup_schedule_epochs=3",
             "ppo.iterations=1"]
    assert main(["compare", f"run.dir={tmp_path}", *micro]) == 0
    assert "warm-up SFT (1 epochs of a 3-epoch schedule)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "warmup" / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and [h["epoch"] for h in summary["history"]] == [1]
    lr = [json.loads(x).get("train/lr") for x in (tmp_path / "warmup" / "metrics.jsonl").read_text().splitlines()]
    assert [x for x in lr if x is not None][-1] > 0  # stopped mid-schedule: the decay had not reached 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["warmup"]["checkpoint"].endswith(summary["history"][0]["checkpoint"].rsplit("/", 1)[-1])
    main(["compare", f"run.dir={tmp_path}", *micro])
    assert json.loads((tmp_path / "warmup" / "summary.json").read_text())["epochs_done"] == 1
    with pytest.raises(ConfigError, match="warmup_schedule_epochs"):
        from rlft.config import load_config
        load_config(None, ["compare.warmup_epochs=2", "compare.warmup_schedule_epochs=1"])


def test_offline_self_training_runs_as_a_compare_method(tmp_path, capsys):
    """`offline_st` is an algo without an RL loop: compare runs it as sampling + SFT (`run_offline_st`)."""
    code = main(["compare", f"run.dir={tmp_path}", *MICRO[:-2], "compare.seeds=[1]", "compare.methods=[offline_st]",
                 "offline_st.samples_per_question=2"])
    assert code == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "results.json").read_text())["methods"]["offline_st"]["runs"]["1"]
    assert "error" not in run and run["history"] and run["final_accuracy"] is not None
    assert (tmp_path / "runs" / "offline_st" / "seed1" / "offline_st_samples.jsonl").exists()
