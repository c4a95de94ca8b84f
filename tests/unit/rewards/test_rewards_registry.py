"""Reward plug-ins: every loading form, combination, and failures that are counted, not lost
(checker.md §10)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

import rewards
from rewards import RewardError, combine, get_reward_fn, safe_call

PLUGIN_SRC = '''
import time

def score(completions, **columns):
    return [float(len(c)) for c in completions]

def with_answer(completions, answer, **_):
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

def boom(completions, **_):
    raise RuntimeError("plug-in bug")

def nan(completions, **_):
    return [float("nan")] + [1.0] * (len(completions) - 1)

def none_first(completions, **_):
    return [None] + [1.0] * (len(completions) - 1)

def short(completions, **_):
    return [1.0]

def hang(completions, **_):
    time.sleep(3600)
'''


@pytest.fixture()
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path with a plug-in module and a fake installed distribution that
    registers it under the `rlft.rewards` entry-point group."""
    (tmp_path / "rlft_test_plugin.py").write_text(PLUGIN_SRC)
    dist = tmp_path / "rlft_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlft-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[rlft.rewards]\nlength_score = rlft_test_plugin:score\nexploding = rlft_test_plugin:boom\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rlft_test_plugin", None)
    return tmp_path


COMPLETIONS = ["ab", "abcd", "The answer is 5."]
COLUMNS = {"answer": ["a", "z", "5"], "id": ["r0", "r1", "r2"]}


def test_builtin_name() -> None:
    fn = get_reward_fn("math")
    assert fn.builtin
    assert fn(["Therefore, the answer is: 18", "Therefore, the answer is: 17", "?"], answer=["18"] * 3) == [1.0, 0.1, 0.0]


def test_module_function(plugin_dir: Path) -> None:
    assert get_reward_fn("rlft_test_plugin:score")(COMPLETIONS) == [2.0, 4.0, 16.0]


def test_file_function(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plugin_dir)
    fn = get_reward_fn("rlft_test_plugin.py:with_answer")
    assert fn.spec.startswith(str(plugin_dir))  # made absolute, so a worker finds the same file
    assert fn(COMPLETIONS, **COLUMNS) == [1.0, 0.0, 1.0]


def test_entry_point(plugin_dir: Path) -> None:
    assert get_reward_fn("length_score")(COMPLETIONS) == [2.0, 4.0, 16.0]


def test_unknown_spec_lists_known_names(plugin_dir: Path) -> None:
    with pytest.raises(ValueError, match="length_score"):
        get_reward_fn("no_such_reward")
    with pytest.raises(ValueError, match="no function"):
        get_reward_fn("rlft_test_plugin:missing")


def test_combine_weights_and_none(plugin_dir: Path) -> None:
    fn = combine([("rlft_test_plugin:with_answer", 2.0), ("rlft_test_plugin:none_first", 0.5)])
    # sample 0: with_answer=1, none_first=None -> 2.0; others add 0.5
    assert fn(COMPLETIONS, **COLUMNS) == [2.0, 0.5, 2.5]


def test_safe_call_in_a_worker_process(plugin_dir: Path) -> None:
    scores, failed = safe_call("length_score", COMPLETIONS, COLUMNS, timeout=60)  # entry point, isolated
    assert (scores, failed) == ([2.0, 4.0, 16.0], 0)
    scores, failed = safe_call(get_reward_fn("rlft_test_plugin:with_answer"), COMPLETIONS, COLUMNS, timeout=60)
    assert (scores, failed) == ([1.0, 0.0, 1.0], 0)


@pytest.mark.parametrize("isolate", [True, False])
def test_raising_plugin_is_counted_not_lost(plugin_dir: Path, isolate: bool) -> None:
    scores, failed = safe_call("exploding", COMPLETIONS, COLUMNS, timeout=60, isolate=isolate)
    assert scores == [0.0, 0.0, 0.0] and failed == 3  # every sample still has a score
    with pytest.raises(RewardError, match=r"r0.*r1.*r2"):
        safe_call("exploding", COMPLETIONS, COLUMNS, timeout=60, isolate=isolate, on_error="raise")


def test_nan_none_and_wrong_length(plugin_dir: Path) -> None:
    assert safe_call("rlft_test_plugin:nan", COMPLETIONS, COLUMNS) == ([0.0, 1.0, 1.0], 1)
    with pytest.raises(RewardError, match="r0"):
        safe_call("rlft_test_plugin:nan", COMPLETIONS, COLUMNS, on_error="raise")
    assert safe_call("rlft_test_plugin:none_first", COMPLETIONS, COLUMNS) == ([0.0, 1.0, 1.0], 1)
    assert safe_call("rlft_test_plugin:short", COMPLETIONS, COLUMNS) == ([0.0, 0.0, 0.0], 3)


def test_combined_failure_is_counted(plugin_dir: Path) -> None:
    fn = combine([("rlft_test_plugin:with_answer", 1.0), ("exploding", 1.0)])
    scores, failed = safe_call(fn, COMPLETIONS, COLUMNS, timeout=60)
    assert failed == 3 and scores == [0.0, 0.0, 0.0]


def test_hanging_plugin_is_killed_at_its_timeout(plugin_dir: Path) -> None:
    t0 = time.monotonic()
    scores, failed = safe_call("rlft_test_plugin:hang", COMPLETIONS, COLUMNS, timeout=1.0)
    assert (scores, failed) == ([0.0, 0.0, 0.0], 3)
    assert time.monotonic() - t0 < 10
    # the pool recovered: the next call works
    assert safe_call("rlft_test_plugin:score", COMPLETIONS, COLUMNS, timeout=60) == ([2.0, 4.0, 16.0], 0)


def test_hanging_callable_in_thread_is_abandoned() -> None:
    def slow(completions: list[str], **_: object) -> list[float]:
        time.sleep(5)
        return [1.0] * len(completions)

    t0 = time.monotonic()
    assert safe_call(slow, ["a"], {}, timeout=0.2) == ([0.0], 1)
    assert time.monotonic() - t0 < 2


def test_math_reward_columns_and_metrics() -> None:
    comps = ["Therefore, the answer is: c", "def solution():\n    return 3\n", "no idea"]
    vs = rewards.math_verdicts(comps, answer=["c", "3", "7"], item_id=["mathqa_1", "gsm8k_2", "svamp_3"],
                               format=["nl", "python", "nl"])
    assert [v.status for v in vs] == ["correct", "correct", "no_answer"]
    metrics = rewards.summarize(vs)
    assert metrics["reward/correct_frac"] == pytest.approx(2 / 3)
    assert metrics["reward/no_answer_frac"] == pytest.approx(1 / 3)
    assert math.isclose(sum(v for k, v in metrics.items() if k.endswith("_frac")), 1.0)
