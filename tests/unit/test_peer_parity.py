"""The pure parts of `benchmarks/peer_parity.py`: level crossing (the first evaluation at or above a level, no
interpolation), time to accuracy over seeds and its rlft/TRL ratio, the difference interval, and the tables.
No training runs here."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def pp():
    sys.path.insert(0, str(BENCH))  # peer_parity imports its siblings (peers, ceilings) by name
    try:
        spec = importlib.util.spec_from_file_location("peer_parity", BENCH / "peer_parity.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def run(*points):
    """A run's evaluations from (iteration, accuracy, training seconds) triples."""
    return {"evals": [{"iteration": i, "accuracy": a, "train_seconds": t} for i, a, t in points]}


CURVE = run((0, 0.40, 0.0), (10, 0.41, 30.0), (20, 0.45, 61.0), (30, 0.43, 90.0), (40, 0.47, 121.0))


def test_first_crossing_is_the_first_evaluation_at_or_above_the_level(pp):
    assert pp.first_crossing(CURVE["evals"], 0.44)["iteration"] == 20  # the later dip to 0.43 does not matter
    assert pp.first_crossing(CURVE["evals"], 0.45)["train_seconds"] == 61.0  # "at or above": equal counts
    assert pp.first_crossing(CURVE["evals"], 0.46)["iteration"] == 40  # no interpolation between 20 and 40
    assert pp.first_crossing(CURVE["evals"], 0.40)["iteration"] == 0  # the warm-up itself
    assert pp.first_crossing(CURVE["evals"], 0.48) is None
    shuffled = list(reversed(CURVE["evals"]))
    assert pp.first_crossing(shuffled, 0.44)["iteration"] == 20  # iteration order, not list order


def test_mean_curve_crossing_averages_the_seeds_then_interpolates(pp):
    # two seeds: mean accuracy 0.40, 0.43, 0.45 at iterations 0, 10, 20; mean clock 0, 30, 60 s
    seeds = [run((0, 0.40, 0.0), (10, 0.46, 29.0), (20, 0.44, 59.0)),
             run((0, 0.40, 0.0), (10, 0.40, 31.0), (20, 0.46, 61.0))]
    hit = pp.mean_curve_crossing(seeds, 0.44)  # between 0.43 (10) and 0.45 (20): halfway
    assert hit["iteration"] == pytest.approx(15.0) and hit["seconds"] == pytest.approx(45.0)
    assert pp.mean_curve_crossing(seeds, 0.43)["seconds"] == pytest.approx(30.0)  # exactly at an evaluation
    assert pp.mean_curve_crossing(seeds, 0.40)["seconds"] == 0.0  # the warm-up itself
    assert pp.mean_curve_crossing(seeds, 0.46) is None  # one seed got there, the mean did not
    # only iterations evaluated on every seed count: seed 2 missing iteration 10 leaves 0 -> 20
    gappy = [seeds[0], run((0, 0.40, 0.0), (20, 0.46, 61.0))]
    assert pp.mean_curve_crossing(gappy, 0.425)["iteration"] == pytest.approx(10.0)


def test_time_to_accuracy_and_ratio(pp):
    rlft = [CURVE, run((0, 0.40, 0.0), (10, 0.46, 29.0), (20, 0.44, 59.0))]
    trl = [run((0, 0.40, 0.0), (10, 0.42, 60.0), (20, 0.45, 120.0)),
           run((0, 0.40, 0.0), (10, 0.44, 62.0), (20, 0.42, 124.0))]
    a, b = pp.time_to_accuracy(rlft, 0.44), pp.time_to_accuracy(trl, 0.44)
    assert a == {"level": 0.44, "n": 2, "reached": 2, "seconds": [61.0, 29.0], "iterations": [20, 10]}
    assert b["seconds"] == [120.0, 62.0]
    assert pp.time_ratio(a, b) == pytest.approx(45.0 / 91.0)
    # a seed that never gets there: no ratio (means over different subsets of seeds would mislead)
    c = pp.time_to_accuracy(trl, 0.45)
    assert (c["reached"], c["seconds"]) == (1, [120.0])
    assert pp.time_ratio(pp.time_to_accuracy(rlft, 0.45), c) is None
    assert pp.seconds_cell(c) == "1/2: 120 ± 0 s (it. 20)"
    assert pp.seconds_cell(pp.time_to_accuracy(trl, 0.9)) == "not reached (0/2)"
    assert pp.seconds_cell(a) == "45 ± 23 s (it. 15)"  # std of (61, 29) = 22.6


def test_ratio_intervals_resample_each_sides_seeds(pp):
    rlft = [CURVE, run((0, 0.40, 0.0), (10, 0.46, 29.0), (20, 0.44, 59.0))]  # first at 0.44: 61 s, 29 s
    trl = [run((0, 0.40, 0.0), (10, 0.42, 60.0), (20, 0.45, 120.0)),        # 120 s
           run((0, 0.40, 0.0), (10, 0.44, 62.0), (20, 0.42, 124.0))]        # 62 s
    got = pp.ratio_intervals(rlft, trl, 0.44)
    # two seeds a side: a resample's mean is one seed's time (1/4), or both's (1/2); the extremes, min(rlft) /
    # max(trl) and max(rlft) / min(trl), each come up in 1/16 of the resamples, so they are the 2.5 / 97.5 %
    assert got["per_seed"] == (pytest.approx(29 / 120), pytest.approx(61 / 62))
    # TRL's mean curve misses 0.44 when a resample holds its two seeds once each (0.435 at best): ratio 0 there;
    # the largest ratio is CURVE twice (3/4 of the way from 30 to 61 s: 53.25 s) over TRL's second seed twice (62 s)
    assert got["mean_curve"] == (0.0, pytest.approx(53.25 / 62))
    # mean curves at 0.43: rlft's resamples cross at 45.5 s (CURVE twice: halfway from 0.41 at 30 s to 0.45 at
    # 61 s), 14.5 s (the other seed twice: half of 0 -> 29 s) or 25.3 s (both); TRL's at 80 s (a third of 60 ->
    # 120 s), 46.5 s (three quarters of 0 -> 62 s) or 61 s (both): extremes 14.5 / 80 and 45.5 / 46.5
    extremes = (pytest.approx(14.5 / 80), pytest.approx(45.5 / 46.5))
    assert pp.ratio_intervals(rlft, trl, 0.43)["mean_curve"] == extremes
    assert pp.ratio_intervals(rlft, trl, 0.44) == got  # seeded: the same report on a rerun
    assert pp.ratio_intervals(rlft[:1], trl, 0.44) == {"per_seed": None, "mean_curve": None}
    # a TRL seed that never reaches 0.45 makes some resamples' ratio 0, an rlft seed that never does +inf
    assert pp.ratio_intervals(rlft, trl, 0.45)["per_seed"][0] == 0.0
    assert pp.ratio_intervals(trl, rlft, 0.45)["per_seed"][1] == float("inf")
    assert pp.interval_cell((0.0, float("inf"))) == " [0.000, ∞]" and pp.interval_cell(None) == ""
    assert pp.interval_cell((0.1, 0.6706)) == " [0.100, 0.671]"  # not "0.67", the target
    # a level at the warm-up: both sides there at 0 s, the same time (ratio 1), not an infinite ratio
    assert pp.ratio_intervals(rlft, trl, 0.40) == {"per_seed": (1.0, 1.0), "mean_curve": (1.0, 1.0)}


def test_difference_interval(pp):
    d, half = pp.difference_interval([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert d == pytest.approx(0.1)
    assert half == pytest.approx(2.776 * (0.01 / 3 + 0.01 / 3) ** 0.5)  # t(0.975, 4 df) x Welch's standard error
    assert pp.difference_interval([0.5], [0.4]) == (pytest.approx(0.1), None)  # one seed: no interval


def test_levels_table_iterations_and_moving_average(pp):
    assert pp.levels_of(0.44, [2.0, 4.0], None) == [("warm-up +2 = 46.0 %", pytest.approx(0.46)),
                                                    ("warm-up +4 = 48.0 %", pytest.approx(0.48))]
    assert pp.levels_of(0.44, [2.0], [0.5]) == [("50.0 %", 0.5)]  # absolute levels win
    evals = [{"iteration": i} for i in range(0, 201, 10)]
    assert pp.table_iterations(evals) == [0, 40, 80, 120, 160, 200]
    assert pp.table_iterations(evals[:4]) == [0, 10, 20, 30]
    assert pp.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_pair_markdown(pp):
    def side(points, per_iteration):
        r = run(*points)
        r["iterations"] = [{"iteration": 20, "train_seconds": 20 * per_iteration}]
        return r

    runs = {"rlft-grpo": [side([(0, 0.40, 0.0), (10, 0.44, 30.0), (20, 0.46, 60.0)], 3.0)] * 2,
            "trl-grpo": [side([(0, 0.40, 0.0), (10, 0.42, 60.0), (20, 0.44, 120.0)], 6.0)] * 2}
    text, summary = pp.pair_markdown(("rlft-grpo", "trl-grpo"), runs, [("44 %", 0.44), ("46 %", 0.46)], 0.67)
    lines = text.splitlines()
    assert "| 10 | 44.0 ± 0.0 | 42.0 ± 0.0 | +2.0 ± 0.0 |" in lines
    # identical seeds: every bootstrap resample is the same, so the intervals are the point
    assert ("| 44 % | 30 ± 0 s (it. 10) | 120 ± 0 s (it. 20) | 0.25x [0.250, 0.250] (meets) "
            "| 30.0 (10) / 120.0 (20) = 0.250x [0.250, 0.250] (meets) |") in lines
    assert "| 46 % | 60 ± 0 s (it. 20) | not reached (0/2) | — | — |" in lines
    assert summary["seconds_per_iteration"]["trl-grpo"] == (6.0, 0.0)
    assert [row["ratio"] for row in summary["time_to_accuracy"]] == [0.25, None]
    assert [row["mean_curve"]["ratio"] for row in summary["time_to_accuracy"]] == [0.25, None]


def test_trl_callback_keeps_evaluation_out_of_the_clock(pp, monkeypatch):
    pytest.importorskip("transformers")
    now = [0.0]
    monkeypatch.setattr(pp.time, "perf_counter", lambda: now[0])

    def evaluate_now():  # each evaluation takes 100 s of wall time
        now[0] += 100.0
        return {"accuracy": 0.5}

    callback = pp.held_out_callback(evaluate_now, every=2, total=3)
    state = type("State", (), {"global_step": 0})()
    callback.on_train_begin(None, state, None)
    for step in (1, 2, 3):
        now[0] += 10.0  # a training step
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"reward": step / 10})
    assert callback.clock == {1: 10.0, 2: 20.0, 3: 30.0}
    assert [(e["iteration"], e["train_seconds"]) for e in callback.evals] == [(2, 20.0), (3, 30.0)]  # and the last
    assert callback.logs[3] == {"reward": 0.3}


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_precision_reaches_both_sides_and_the_evaluation(pp, precision, monkeypatch, tmp_path):
    """`--precision` sets both sides' Setup (rlft's model.precision, TRL's bf16), is part of the key that decides
    whether a saved run is reused, and makes the held-out evaluation sample under the same precision."""
    import argparse

    import torch

    args = argparse.Namespace(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5,
                              ppo_epochs=2, precision=precision, warmup=str(tmp_path), eval_every=1, threads=0)
    (tmp_path / "config.json").write_text("{}")
    for name in ("rlft-grpo", "trl-grpo", "rlft-reft", "trl-ppo"):
        assert pp.setup_of(args, name, 1).precision == precision
    other = argparse.Namespace(**{**vars(args), "precision": "fp32" if precision != "fp32" else "bf16-mixed"})
    assert pp.run_key(args, "rlft-grpo", 1) != pp.run_key(other, "rlft-grpo", 1)
    # --rlft-set: a variant of rlft's side against the same TRL runs (reused), keys without it unchanged
    variant = argparse.Namespace(**{**vars(args), "rlft_set": ["model.dtype=float32"]})
    assert pp.run_key(variant, "rlft-grpo", 1) == {**pp.run_key(args, "rlft-grpo", 1), "rlft_set": ["model.dtype=float32"]}
    assert pp.run_key(variant, "trl-grpo", 1) == pp.run_key(args, "trl-grpo", 1)
    assert pp.rlft_set(args) == [] and pp.rlft_set(variant) == ["model.dtype=float32"]
    # ... in its own folders beside the plain rlft runs, which it must not replace; TRL's folders are shared
    args.run_dir = variant.run_dir = str(tmp_path / "R")
    assert pp.run_dir_of(args, "rlft-grpo", 1) == tmp_path / "R" / "rlft-grpo" / "seed1"
    tag = pp.variant_tag(variant)
    assert pp.run_dir_of(variant, "rlft-grpo", 1) == tmp_path / "R" / f"rlft-grpo+{tag}" / "seed1"
    assert tag.startswith("model.dtype=float32-") and len(tag) == len("model.dtype=float32-") + 8
    assert pp.run_dir_of(variant, "trl-grpo", 1) == pp.run_dir_of(args, "trl-grpo", 1)
    paths = argparse.Namespace(**{**vars(variant), "rlft_set": ["run.dir=/a b/c", "x=1"]})
    assert "/" not in pp.variant_tag(paths) and " " not in pp.variant_tag(paths)
    assert pp.variant_tag(paths) != pp.variant_tag(argparse.Namespace(**{**vars(paths), "rlft_set": ["x=1"]}))
    # a rerun of the variant reuses its own rlft runs and the plain TRL runs, and never reads the plain rlft runs
    for run_args, name in ((args, "rlft-grpo"), (variant, "rlft-grpo"), (args, "trl-grpo")):
        folder = pp.run_dir_of(run_args, name, 1)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"key": pp.run_key(run_args, name, 1), "which": str(folder)}))
    monkeypatch.setattr(pp, "side_python", lambda name, bench_python: ("python", None))
    monkeypatch.setattr(pp.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a} instead of reusing"))
    variant.seeds, variant.bench_python = [1], None
    runs, skipped = pp.collect(variant, ["rlft-grpo", "trl-grpo"])
    assert not skipped and runs["rlft-grpo"][0]["which"] == str(pp.run_dir_of(variant, "rlft-grpo", 1))
    assert runs["trl-grpo"][0]["which"] == str(pp.run_dir_of(args, "trl-grpo", 1))
    assert f"model.precision={precision}" in pp.rlft_overrides("rlft-grpo", pp.setup_of(args, "rlft-grpo", 1),
                                                               tmp_path, tmp_path)
    seen = {}

    def fake_evaluate(engine, *a, **k):
        seen["mixed"] = engine.mixed_precision
        return {"eval/accuracy": 0.5, "eval/mean_score": 0.5, "eval/response_len_mean": 3.0, "eval/seconds": 0.1}, []

    import rlft.evaluate

    monkeypatch.setattr(rlft.evaluate, "evaluate", fake_evaluate)
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    pp.held_out(torch.nn.Linear(1, 1), tokenizer, [], pp.setup_of(args, "trl-grpo", 1), "trl-grpo")
    assert seen["mixed"] is (precision == "bf16-mixed")


def test_a_rerun_replaces_a_linked_seed_folder_not_its_target(pp, monkeypatch, tmp_path):
    """A run dir assembled from links to other run dirs' seed folders (to report more seeds together): a run
    whose key no longer matches is made again in a folder of its own, and the linked run stays as it was."""
    import argparse

    import rlft.models.loading

    warmup = tmp_path / "warmup"
    warmup.mkdir()
    (warmup / "config.json").write_text("{}")
    old = tmp_path / "old" / "rlft-grpo" / "seed1"
    old.mkdir(parents=True)
    (old / "result.json").write_text('{"key": "stale"}')
    args = argparse.Namespace(prompts=2, group=2, iterations=2, n_train=4, n_test=4, max_new_tokens=8, lr=1e-5,
                              ppo_epochs=2, precision="fp32", warmup=str(warmup), eval_every=1, threads=0,
                              run_dir=str(tmp_path / "all"), only="rlft-grpo", only_seed=1, rlft_set=[])
    (tmp_path / "all" / "rlft-grpo").mkdir(parents=True)
    (tmp_path / "all" / "rlft-grpo" / "seed1").symlink_to(old)
    monkeypatch.setattr(rlft.models.loading, "load_policy", lambda *a, **k: (None, None))
    monkeypatch.setattr(pp, "records", lambda *a: [])
    monkeypatch.setattr(pp, "run_rlft", lambda *a: {"evals": []})
    pp.child(args)
    made = tmp_path / "all" / "rlft-grpo" / "seed1"
    assert not made.is_symlink() and json.loads((made / "result.json").read_text())["key"] == pp.run_key(
        args, "rlft-grpo", 1)
    assert (old / "result.json").read_text() == '{"key": "stale"}'
