"""Peer parity (issue 18) and time to accuracy (issue 23): from one SFT warm-up, rlft's GRPO against TRL's
GRPOTrainer and rlft's ReFT against TRL 1.12's PPOTrainer, learning curves and wall time to given accuracies.

    make parity   # = the three commands below
    # once: the warm-up, SFT of the tiny Llama on the same 1,000 questions: the 20-epoch schedule of the ReFT-vs-SFT
    # protocol, seed 42, whose epoch 11 (ckpt-352) held 36.0 % at 1 torch thread (44.0 % in an earlier 2-thread run
    # of docs/benchmarks.md); and TRL 1.12 for the PPO pair
    rlft sft configs/bench_reft_vs_sft.yaml run.dir=runs/parity_warmup sft.epochs=20 sft.keep_last_checkpoints=10
    make bench-venv
    # the benchmark: 2 pairs x 3 seeds x 200 iterations, held-out accuracy on 300 questions every 10 iterations
    python benchmarks/peer_parity.py --warmup runs/parity_warmup/checkpoints/ckpt-352 --threads 2 \\
        --out docs/benchmarks_parity.md --plot docs/img/peer_parity.png
    # a variant of rlft's side against the same TRL runs (reused): in the same run dir R, rlft's runs go to
    # R/rlft-grpo+<overrides>-<hash>/ and the report to R/peer_parity+<overrides>-<hash>.md (and .png)
    python benchmarks/peer_parity.py --warmup W --pairs grpo --rlft-set model.dtype=float32 --run-dir R
    # the levels nearest the warm-up, evaluated every 2 iterations (docs/benchmarks_parity_bf16_fine.md): one call
    # per seed (its rlft run, then its TRL run), then one call with every seed, which reuses them for the report
    for s in 1 2 3 4 5 6 7 8 9 10; do python benchmarks/peer_parity.py --warmup W --pairs grpo --threads 2 \\
        --precision bf16-mixed --iterations 80 --eval-every 2 --gains 2 4 6 --run-dir R --seeds $s; done
    # smoke (what has been run so far)
    python benchmarks/peer_parity.py --warmup W --iterations 4 --eval-every 2 --seeds 1 --n-test 16 --run-dir /tmp/pp

Wall time of the full command, measured (2026-12-05, 2 idle cores, 2 torch threads): 58 min (GRPO pair 18 min:
0.51 / 0.81 s per rlft / TRL iteration; PPO pair 40 min: 1.10 / 2.43 s), evaluations and start-up included.
Results: docs/benchmarks_parity.md. Under a load average of ~10 the smoke runs were 30-90x slower per
iteration: run it on an idle machine.

Pairs (`--pairs`), each side in its own subprocess of this script, one after the other (`--only NAME`):
- `grpo`: `rlft-grpo` (algo=grpo) vs `trl-grpo` (TRL's GRPOTrainer, main venv): P prompts x G samples per
  iteration, k3 KL in the loss with beta 0.04, group-normalised advantages, seq-mean-token-mean, one PPO epoch;
- `ppo`: `rlft-reft` (algo=reft: value head, k1 KL in the reward, GAE gamma 1, lambda 0.95, whitened advantages)
  vs `trl-ppo` (TRL 1.12's PPOTrainer, `.venv-bench`, made by `make bench-venv`; skipped with a note without it):
  P*G prompts x 1 sample, `--ppo-epochs` PPO epochs (2, rlft's ReFT default) of one minibatch each.
Both sides of a pair run the settings of `benchmarks/peers.py`, i.e. those of `benchmarks/ppo_throughput.py`,
whose docstring lists every matched setting and every one TRL offers no way to match (for trl-ppo: a separate
value model, a second backbone with a normal(0, 0.02) score head, where rlft has a linear head on the policy;
old log-probs from the sampler's scores; no gradient clipping where rlft clips at 1.0; token-mean losses where
rlft takes seq-mean-token-mean; the score one position after EOS; for trl-grpo: none beyond implementation).

What this benchmark adds, the same on both sides:
- start: the warm-up (`--warmup`: an rlft checkpoint `RUN/checkpoints/ckpt-N` or its HF folder `.../model`), the
  policy and the frozen reference, float32 weights;
- precision (`--precision`, default fp32): fp32 on both sides, or bf16-mixed on both (rlft `model.precision=
  bf16-mixed`, TRL's `bf16=True`: autocast over fp32 master weights and optimizer state, as in
  `benchmarks/ppo_throughput.py`); the held-out evaluation then samples under bf16 autocast on both sides too;
- training questions: a fixed set (`--n-train`, built-in arithmetic task, difficulty 0, as rlft's `data.*`
  loads it with `--n-test` held-out), cycled in epochs, each side shuffling each epoch with its own generator
  (rlft `epoch_order`, TRL's samplers). Not matched: TRL 1.12's PPO dataloader drops the last incomplete batch of
  each epoch (1000 questions / 32 = 8 left out per epoch, different ones each time); rlft wraps into the next;
- held-out accuracy: greedy, on the same `--n-test` questions, by the same function (`rlft.evaluate.evaluate`:
  rlft's HF engine, `--max-new-tokens`, the checker with partial reward 0.1) on each side's in-memory weights,
  at iteration 0 (the warm-up, in every run: a check that both sides see the same model), every `--eval-every`
  iterations and after the last one. rlft evaluates inside its loop (`ppo.eval_every`); TRL in a
  `TrainerCallback.on_step_end`. Evaluation time is kept out of the training clock on both sides;
- training clock: rlft's `time/train_seconds` (each iteration from sampling to the end of the weight sync and its
  metrics; evaluation, checkpoints and metric logging outside); TRL's wall time from `on_train_begin` to each
  `on_step_end`, minus the evaluations (TRL's logging, dataloader and its PPO loop's `gc.collect()` inside);
- per iteration: training reward (mean checker score of the batch: rlft `reward/mean`, TRL GRPO `reward`, TRL PPO
  `objective/scores`), KL and the clock. KL, in the unit TRL logs: GRPO, k3 per response token (TRL `kl`: a
  token mean over the batch; rlft `kl/mean` (sum per response, mean over responses) / `rollout/response_len_mean`,
  the same quantity); PPO, k1 summed over a response (TRL `objective/kl`, from the sampler's log-probs; rlft
  `kl/k1_mean`, from its recomputed old log-probs);
- learning rate: `--lr` 5e-5 constant on both sides, where the throughput benchmark takes 1e-5: from a 44 %
  warm-up of this task, ReFT at 5e-5 gained 4 points in 100 iterations and barely moved at 1e-5
  (docs/benchmarks.md, "Why ReFT did not move").

Outputs (in `--run-dir`; under `--rlft-set` their names carry the variant's tag, `variant_tag`): `results.json`
(every run's per-iteration rows and evaluations, the summaries), the markdown report (also `--out` and stdout)
and the plot (`--plot`): training reward (moving average over `SMOOTH` iterations) and held-out accuracy vs
iteration, and accuracy vs training wall time; mean over seeds with a min-max band. A finished run whose settings
match is reused on a rerun (its `result.json`).

Report, per pair: accuracy at a few iterations (mean +- std over seeds, and the difference rlft - TRL with a 95 %
t-interval from the two sides' seed spread, which says whether the curves are within seed noise); time to
reach each accuracy level (`--gains` points above the warm-up, or absolute `--levels`), per seed the training
clock at the FIRST evaluation at or above the level (no interpolation between evaluations: accuracy is only
known there, and noisy), then mean +- std over the seeds that reached it; the ratio rlft / TRL of the means when
every seed of both sides reached it. Beside it, a second estimator with less seed noise (`mean_curve_crossing`):
the clock where the seeds' mean accuracy curve first reaches the level, interpolated between evaluations.
Targets: issue 18, curves within seed noise and time no worse than TRL's (ratio <= 1); issue 23, GRPO's ratio
<= 0.67.
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ceilings import peak_rss_mib
from peers import (
    PARTIAL_REWARD,
    PRECISIONS,
    Setup,
    machine,
    prompt_tokens_note,
    records,
    rlft_overrides,
    side_env,
    side_python,
    trl_grpo_trainer,
    trl_ppo_trainer,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAIRS = {"grpo": ("rlft-grpo", "trl-grpo"), "ppo": ("rlft-reft", "trl-ppo")}
SMOOTH = 10  # iterations in the plotted moving average of the training reward


def setup_of(args, name: str, seed: int) -> Setup:
    return Setup(prompts=args.prompts, group=args.group, iterations=args.iterations, n_train=args.n_train,
                 n_test=args.n_test, max_new_tokens=args.max_new_tokens, lr=args.lr, seed=seed,
                 ppo_epochs=args.ppo_epochs if name in PAIRS["ppo"] else 1, precision=args.precision)


def warmup_folder(path: str) -> Path:
    """The warm-up's HF folder: an rlft checkpoint's `model/`, or the folder itself."""
    p = Path(path)
    folder = p / "model" if (p / "model" / "config.json").exists() else p
    if not (folder / "config.json").exists():
        raise SystemExit(f"peer_parity: --warmup {path} is neither an HF model folder nor an rlft checkpoint "
                         "(RUN/checkpoints/ckpt-N)")
    return folder


# ----------------------------------------------------------------------------------------------------
# One run (child process)


def held_out(model, tokenizer, test, s: Setup, name: str) -> dict:
    """rlft's greedy held-out evaluation of `model` as it is now, as rlft's loop runs it (`evaluate_held_out`)."""
    from rlft.evaluate import evaluate
    from rlft.rollout.hf_engine import HFRolloutEngine

    engine = HFRolloutEngine(model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                             batch_size=s.generate_batch(name), mixed_precision=s.precision == "bf16-mixed")
    summary, _ = evaluate(engine, tokenizer, test, style="nl", max_new_tokens=s.max_new_tokens,
                          partial_reward=PARTIAL_REWARD, seed=s.seed)
    return {"accuracy": summary["eval/accuracy"], "mean_score": summary["eval/mean_score"],
            "response_len": summary["eval/response_len_mean"], "eval_seconds": summary["eval/seconds"]}


def run_rlft(name: str, s: Setup, args, warmup: Path, tokenizer, test, out_dir: Path) -> dict:
    from rlft.config import load_config
    from rlft.models.loading import load_policy
    from rlft.trainers.ppo import run_ppo
    from rlft.utils.logging import read_metrics

    model, _ = load_policy(warmup, dtype="float32")
    evals = [{"iteration": 0, "train_seconds": 0.0, **held_out(model, tokenizer, test, s, name)}]
    del model
    overrides = rlft_overrides(name, s, warmup, out_dir) + [
        f"ppo.eval_every={args.eval_every}", f"eval.max_new_tokens={s.max_new_tokens}", "eval.samples=1",
        f"eval.partial_reward={PARTIAL_REWARD}", *rlft_set(args)]
    run_ppo(load_config(None, overrides))
    rows = read_metrics(out_dir)
    grpo = name == "rlft-grpo"
    iterations = [{"iteration": r["step"], "reward": r["reward/mean"], "train_seconds": r["time/train_seconds"],
                   "kl": r["kl/mean"] / r["rollout/response_len_mean"] if grpo else r["kl/k1_mean"]}
                  for r in rows if "reward/mean" in r]
    evals += [{"iteration": r["step"], "train_seconds": r["time/train_seconds"], "accuracy": r["eval/accuracy"],
               "mean_score": r["eval/mean_score"], "response_len": r["eval/response_len_mean"],
               "eval_seconds": r["eval/seconds"]} for r in rows if "eval/accuracy" in r]
    return {"iterations": iterations, "evals": evals, "overrides": overrides}


def held_out_callback(evaluate_now, every: int, total: int):
    """A TrainerCallback that evaluates held-out accuracy every `every` steps and after the last, keeps the
    time out of the training clock, and collects the per-step logs."""
    from transformers import TrainerCallback

    class HeldOut(TrainerCallback):
        def __init__(self):
            self.clock, self.logs, self.evals, self.eval_seconds = {}, {}, [], 0.0

        def on_train_begin(self, args_, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            step = state.global_step
            self.clock[step] = time.perf_counter() - self.start - self.eval_seconds
            if step % every == 0 or step == total:
                begin = time.perf_counter()
                self.evals.append({"iteration": step, "train_seconds": self.clock[step], **evaluate_now()})
                self.eval_seconds += time.perf_counter() - begin

        def on_log(self, args_, state, control, logs=None, **kwargs):
            self.logs.setdefault(state.global_step, {}).update(logs or {})

    return HeldOut()


def run_trl(name: str, s: Setup, args, warmup: Path, tokenizer, test, out_dir: Path) -> dict:
    model = None
    callback = held_out_callback(lambda: held_out(model, tokenizer, test, s, name), args.eval_every, s.iterations)
    if name == "trl-grpo":
        trainer, config, setup = trl_grpo_trainer(s, warmup, out_dir, [callback])
        model = trainer.accelerator.unwrap_model(trainer.model)
        reward_key, kl_key = "reward", "kl"
    else:
        trainer, config, setup = trl_ppo_trainer(s, warmup, out_dir, [callback], on_score=lambda *_: None)
        model = trainer.accelerator.unwrap_model(trainer.model).policy
        reward_key, kl_key = "objective/scores", "objective/kl"
    evals = [{"iteration": 0, "train_seconds": 0.0, **held_out(model, tokenizer, test, s, name)}]
    trainer.train()
    iterations = [{"iteration": k, "reward": callback.logs[k][reward_key], "kl": callback.logs[k].get(kl_key),
                   "train_seconds": t} for k, t in sorted(callback.clock.items())]
    config_dict = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    return {"iterations": iterations, "evals": evals + callback.evals, "setup": setup, "config": config_dict}


def child(args) -> None:
    import torch

    from rlft.models.loading import load_policy

    # transformers 5.x renamed gradient_checkpointing; TRL still reads the old name (harmless FutureWarnings)
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, s = args.only, setup_of(args, args.only, args.only_seed)
    out_dir = run_dir_of(args, name, s.seed)
    if out_dir.is_symlink():  # a run dir assembled from links to other run dirs' runs: replace the link only
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    warmup = warmup_folder(args.warmup)
    _, tokenizer = load_policy(warmup, with_model=False)  # rlft's: left padding, pad falls back to EOS
    test = records("test", s.n_train, s.n_test)
    start = time.perf_counter()
    run = run_trl if name.startswith("trl") else run_rlft
    result = run(name, s, args, warmup, tokenizer, test, out_dir / "run")
    result.update(name=name, key=run_key(args, name, s.seed), wall_seconds=time.perf_counter() - start,
                  peak_rss_mib=peak_rss_mib(), torch_threads=torch.get_num_threads(), python=sys.executable,
                  versions=versions())
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def run_dir_of(args, name: str, seed: int) -> Path:
    return Path(args.run_dir) / side_folder(args, name) / f"seed{seed}"


def side_folder(args, name: str) -> str:
    """A side's folder in the run dir: its name, and for rlft's side under `--rlft-set` the name plus
    `variant_tag`, so that a variant's runs sit beside the plain ones (and TRL's, which every variant reuses)."""
    return f"{name}+{variant_tag(args)}" if name.startswith("rlft") and rlft_set(args) else name


def variant_tag(args) -> str:
    """Readable and unique for the `--rlft-set` overrides (in their order): the overrides with characters other
    than letters, digits and `._=-` replaced (cut to 60 characters), and 8 hex digits of their hash."""
    overrides = rlft_set(args)
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", ",".join(overrides))[:60]
    return f"{readable}-{hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:8]}"


def run_key(args, name: str, seed: int) -> dict:
    """What decides a run's result: a saved run with the same key is reused. `--rlft-set` is part of rlft's runs'
    keys only (TRL's runs are reused across it), and only when given (keys of runs made without it stay valid)."""
    extra = {"rlft_set": rlft_set(args)} if name.startswith("rlft") and rlft_set(args) else {}
    return {**dataclasses.asdict(setup_of(args, name, seed)), "warmup": str(warmup_folder(args.warmup).resolve()),
            "eval_every": args.eval_every, "threads": args.threads, **extra}


def rlft_set(args) -> list[str]:
    """`--rlft-set KEY=VALUE` overrides for rlft's side (after the matched settings, so they win)."""
    return list(getattr(args, "rlft_set", None) or [])


# ----------------------------------------------------------------------------------------------------
# Summaries (pure: results in, numbers and markdown out)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    from rlft.experiments.compare import mean_std_ci

    stat = mean_std_ci(values)
    return stat["mean"], stat["std"]


def first_crossing(evals: list[dict], level: float) -> dict | None:
    """The first evaluation (in iteration order) with accuracy >= level, or None if the run never got there.
    No interpolation: accuracy is known only where it was evaluated."""
    return next((e for e in sorted(evals, key=lambda e: e["iteration"]) if e["accuracy"] >= level - 1e-12), None)


def time_to_accuracy(runs: list[dict], level: float) -> dict:
    """Over a side's seeds: the training clock and iteration at each seed's first crossing of `level`."""
    hits = [first_crossing(r["evals"], level) for r in runs]
    reached = [h for h in hits if h is not None]
    return {"level": level, "n": len(runs), "reached": len(reached),
            "seconds": [h["train_seconds"] for h in reached], "iterations": [h["iteration"] for h in reached]}


def time_ratio(a: dict, b: dict) -> float | None:
    """rlft's mean time over TRL's, only when every seed of both sides reached the level."""
    if a["reached"] < a["n"] or b["reached"] < b["n"] or not a["n"] or not b["n"]:
        return None
    tb = mean_std(b["seconds"])[0]
    return mean_std(a["seconds"])[0] / tb if tb > 0 else None


def mean_curve_crossing(runs: list[dict], level: float) -> dict | None:
    """A second estimator of the time to `level`, with less seed noise than the per-seed first crossing: the
    seeds' mean accuracy and mean training clock at each evaluated iteration (evaluated on every seed), and the
    clock where that mean curve first reaches the level, linearly interpolated from the evaluation before.
    Why both: a single seed's first crossing moves by a whole evaluation interval with the noise of 300
    questions (1 SD ~ 2.8 points against levels 2 points apart), and so does the ratio of two such means; the
    mean curve averages that noise first. None where the mean curve never reaches the level."""
    its, accuracy, seconds = curve_table(runs)
    return curve_crossing(its, [sum(col) / len(col) for col in zip(*accuracy)],
                          [sum(col) / len(col) for col in zip(*seconds)], level)


def curve_table(runs: list[dict]) -> tuple[list[int], list[list[float]], list[list[float]]]:
    """The iterations evaluated on every run, and each run's accuracy and training clock there (a row per run)."""
    common = sorted(set.intersection(*({e["iteration"] for e in r["evals"]} for r in runs))) if runs else []
    at = [{e["iteration"]: e for e in reversed(r["evals"])} for r in runs]  # an iteration's first evaluation
    return (common, [[a[it]["accuracy"] for it in common] for a in at],
            [[a[it]["train_seconds"] for it in common] for a in at])


def curve_crossing(its: list[int], accuracy: list[float], seconds: list[float], level: float) -> dict | None:
    """Where a curve (accuracy and clock at iterations `its`) first reaches `level`, interpolated linearly from
    the point before; None where it never does."""
    for i, (it, acc, sec) in enumerate(zip(its, accuracy, seconds)):
        if acc >= level - 1e-12:
            if i == 0:
                return {"iteration": float(it), "seconds": sec}
            it0, acc0, sec0 = its[i - 1], accuracy[i - 1], seconds[i - 1]
            f = (level - acc0) / (acc - acc0)
            return {"iteration": it0 + f * (it - it0), "seconds": sec0 + f * (sec - sec0)}
    return None


BOOTSTRAP_RESAMPLES = 2000


def ratio_intervals(a: list[dict], b: list[dict], level: float, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> dict[str, tuple[float, float] | None]:
    """95 % percentile-bootstrap intervals of both time ratios (a over b) at `level`: `per_seed` (`time_ratio` of
    the first crossings) and `mean_curve` (`mean_curve_crossing`). Each resample draws each side's seeds with
    replacement, independently (the sides share no randomness). A resample where a side does not reach the level
    (a seed, or the mean curve) counts as ratio +inf where `a` misses (both missing included) and 0 where only `b`
    misses, so the interval says how often that happens instead of hiding it. None with fewer than 2 seeds on a
    side. Why: the levels nearest the warm-up are crossed within one or two evaluations, and whether a ratio there
    is below a target is a question about seed noise. With ~10 seeds a side a percentile interval of a skewed
    ratio tends to be somewhat narrow: read it as a lower bound on the uncertainty."""
    import numpy as np

    if len(a) < 2 or len(b) < 2:
        return {"per_seed": None, "mean_curve": None}
    rng = np.random.default_rng(seed)
    first = [np.array([math.nan if h is None else h["train_seconds"]
                       for h in (first_crossing(r["evals"], level) for r in runs)]) for runs in (a, b)]
    curves = [tuple(np.array(x, dtype=float) for x in curve_table(runs)) for runs in (a, b)]

    def ratio(ta: float | None, tb: float | None) -> float:
        if ta is None or math.isnan(ta):
            return math.inf
        if tb is None or math.isnan(tb):
            return 0.0
        if tb <= 0:  # TRL's time 0 (the level at the warm-up): the same time if rlft's is 0 too
            return 1.0 if ta <= 0 else math.inf
        return ta / tb

    per_seed, mean_curve = [], []
    for _ in range(resamples):
        picks = [rng.integers(0, len(runs), len(runs)) for runs in (a, b)]
        per_seed.append(ratio(*(float(f[i].mean()) for f, i in zip(first, picks))))
        hits = [curve_crossing(list(its), acc[i].mean(0).tolist(), sec[i].mean(0).tolist(), level)
                for (its, acc, sec), i in zip(curves, picks)]
        mean_curve.append(ratio(*(None if h is None else h["seconds"] for h in hits)))
    return {name: (float(np.quantile(v, 0.025, method="lower")), float(np.quantile(v, 0.975, method="higher")))
            for name, v in (("per_seed", per_seed), ("mean_curve", mean_curve))}


def interval_cell(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return ""
    # 3 digits: an upper end of 0.6706 must not read as the 0.67 target
    return " [" + ", ".join("∞" if math.isinf(x) else f"{x:.3f}" for x in interval) + "]"


def accuracy_at(runs: list[dict], iteration: int) -> list[float]:
    return [e["accuracy"] for r in runs for e in r["evals"] if e["iteration"] == iteration]


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """mean(a) - mean(b) and the half-width of its 95 % t-interval (Welch's standard error, n_a + n_b - 2
    degrees of freedom); None with one seed per side."""
    from rlft.experiments.compare import T95

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, None
    return ma - mb, T95.get(len(a) + len(b) - 2, 2.0) * math.sqrt(sa**2 / len(a) + sb**2 / len(b))


def table_iterations(evals: list[dict], most: int = 6) -> list[int]:
    """Iterations to tabulate: 0, the last, and evenly spaced evaluated iterations between (at most `most`)."""
    its = sorted({e["iteration"] for e in evals})
    if len(its) <= most:
        return its
    picks = {its[round(i * (len(its) - 1) / (most - 1))] for i in range(most)}
    return sorted(picks)


def pct(values: list[float]) -> str:
    if not values:
        return "—"
    m, s = mean_std(values)
    return f"{m * 100:.1f} ± {s * 100:.1f}"


def seconds_cell(t: dict) -> str:
    """'mean ± std s (it. mean)', with 'k/n:' in front when only some seeds reached the level."""
    if not t["reached"]:
        return f"not reached (0/{t['n']})"
    (ms, ss), (mi, _) = mean_std(t["seconds"]), mean_std(t["iterations"])
    cell = f"{ms:.0f} ± {ss:.0f} s (it. {mi:.0f})"
    return cell if t["reached"] == t["n"] else f"{t['reached']}/{t['n']}: {cell}"


def pair_markdown(sides: tuple[str, str], runs: dict[str, list[dict]], levels: list[tuple[str, float]],
                  target: float) -> tuple[str, dict]:
    """The tables of one pair (rlft side first) and its summary numbers."""
    a, b = sides
    its = table_iterations([e for r in runs[a] + runs[b] for e in r["evals"]])
    lines = [f"| iteration | {a} accuracy % | {b} accuracy % | {a} − {b} (95 % interval), points |",
             "|---|---|---|---|"]
    for it in its:
        xa, xb = accuracy_at(runs[a], it), accuracy_at(runs[b], it)
        diff = "—"
        if xa and xb:
            d, half = difference_interval(xa, xb)
            diff = f"{d * 100:+.1f}" + ("" if half is None else f" ± {half * 100:.1f}")
        lines.append(f"| {it} | {pct(xa)} | {pct(xb)} | {diff} |")
    lines += ["", f"| held-out accuracy reached | {a}: training s (iteration) | {b}: training s (iteration) "
                  f"| {a} / {b} time | mean curves, interpolated: {a} s (iteration) / {b} s (iteration) = ratio |",
              "|---|---|---|---|---|"]
    rows = []
    for label, level in levels:
        ta, tb = time_to_accuracy(runs[a], level), time_to_accuracy(runs[b], level)
        ratio = time_ratio(ta, tb)
        ca, cb = mean_curve_crossing(runs[a], level), mean_curve_crossing(runs[b], level)
        curve_ratio = ca["seconds"] / cb["seconds"] if ca and cb and cb["seconds"] > 0 else None
        intervals = ratio_intervals(runs[a], runs[b], level)
        rows.append({"label": label, "level": level, a: ta, b: tb, "ratio": ratio,
                     "ratio_interval": intervals["per_seed"],
                     "mean_curve": {a: ca, b: cb, "ratio": curve_ratio, "interval": intervals["mean_curve"]}})
        verdict = "" if ratio is None else (" (meets)" if ratio <= target else " (misses)")
        curve = "—" if curve_ratio is None else (
            f"{ca['seconds']:.1f} ({ca['iteration']:.0f}) / {cb['seconds']:.1f} ({cb['iteration']:.0f}) = "
            f"{curve_ratio:.3f}x{interval_cell(intervals['mean_curve'])}"
            + (" (meets)" if curve_ratio <= target else " (misses)"))
        per_seed = "—" if ratio is None else f"{ratio:.2f}x{interval_cell(intervals['per_seed'])}"
        lines.append(f"| {label} | {seconds_cell(ta)} | {seconds_cell(tb)} | {per_seed}{verdict} | {curve} |")
    per_it = {side: mean_std([r["iterations"][-1]["train_seconds"] / r["iterations"][-1]["iteration"]
                              for r in runs[side]]) for side in sides}
    lines += ["", f"Training seconds per iteration: {a} {per_it[a][0]:.2f} ± {per_it[a][1]:.2f}, "
                  f"{b} {per_it[b][0]:.2f} ± {per_it[b][1]:.2f}. Target for the time ratio: <= {target}x "
                  f"(the verdict reads the point estimate). In brackets: 95 % bootstrap interval over seeds "
                  f"({BOOTSTRAP_RESAMPLES:,} resamples of each side's seeds; ∞ or 0 where resampled seeds do not "
                  f"reach the level: `ratio_intervals`)."]
    return "\n".join(lines), {"time_to_accuracy": rows, "seconds_per_iteration": per_it, "table_iterations": its}


def levels_of(warmup_accuracy: float, gains: list[float], absolute: list[float] | None) -> list[tuple[str, float]]:
    """(label, accuracy) of each level: absolute `--levels`, or the warm-up plus `--gains` points."""
    if absolute:
        return [(f"{x * 100:.1f} %", x) for x in absolute]
    return [(f"warm-up {g:+g} = {(warmup_accuracy + g / 100) * 100:.1f} %", warmup_accuracy + g / 100) for g in gains]


# ----------------------------------------------------------------------------------------------------
# Parent


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over at most `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def write_plot(path: Path, pairs: list[str], runs: dict[str, list[dict]], warmup_accuracy: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlft.experiments.compare import _band

    fig, axes = plt.subplots(len(pairs), 3, figsize=(16, 4 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        for side in PAIRS[pair]:
            if side not in runs:
                continue
            rewards = [[(x["iteration"], y) for x, y in zip(r["iterations"], moving_average(
                [x["reward"] for x in r["iterations"]], SMOOTH))] for r in runs[side]]
            _band(row[0], np, rewards, side)
            _band(row[1], np, [[(e["iteration"], e["accuracy"] * 100) for e in r["evals"]] for r in runs[side]], side)
            _band(row[2], np, [[(e["train_seconds"], e["accuracy"] * 100) for e in r["evals"]] for r in runs[side]],
                  side)
        for ax in row[1:]:
            ax.axhline(warmup_accuracy * 100, color="gray", ls="--", lw=1, label="warm-up")
        for ax, title, xl in zip(row, (f"{pair}: training reward ({SMOOTH}-iteration mean)",
                                       f"{pair}: held-out accuracy (%)", f"{pair}: held-out accuracy (%)"),
                                 ("iteration", "iteration", "training wall time (s)")):
            ax.set_title(title), ax.set_xlabel(xl), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(args, names: list[str]) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Run (or reuse) every side and seed; returns the results per side and the skipped sides with why."""
    runs: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        python, why = side_python(name, args.bench_python)
        if python is None:
            skipped[name] = why
            print(f"peer_parity: skipping {name}: {why}", file=sys.stderr, flush=True)
            continue
        for seed in args.seeds:
            saved = run_dir_of(args, name, seed) / "result.json"
            if saved.exists() and json.loads(saved.read_text()).get("key") == run_key(args, name, seed):
                print(f"peer_parity: {name} seed {seed}: reusing {saved}", file=sys.stderr, flush=True)
            else:
                print(f"peer_parity: running {name} seed {seed} ...", file=sys.stderr, flush=True)
                subprocess.run([python, str(Path(__file__).resolve()), *sys.argv[1:], "--only", name,
                                "--only-seed", str(seed)], check=True, env=side_env(name))
            runs.setdefault(name, []).append(json.loads(saved.read_text()))
    return runs, skipped


def parent(args) -> None:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    warmup = warmup_folder(args.warmup)
    names = [n for p in args.pairs for n in PAIRS[p]]
    start = time.perf_counter()
    runs, skipped = collect(args, names)
    # every run evaluates the warm-up first: the same greedy answers everywhere, or the evaluations disagree
    warm = sorted({(round(r["evals"][0]["accuracy"], 6), round(r["evals"][0]["mean_score"], 6),
                    round(r["evals"][0]["response_len"], 4)) for rs in runs.values() for r in rs})
    levels = levels_of(warm[0][0], args.gains, args.levels)
    command = "python benchmarks/peer_parity.py " + " ".join(sys.argv[1:])
    s = setup_of(args, "rlft-grpo", args.seeds[0])
    lines = [
        f"## Peer parity: rlft vs TRL from one warm-up ({datetime.date.today().isoformat()})", "",
        f"- command: `{command.strip()}` ({(time.perf_counter() - start) / 60:.0f} min, runs reused included)",
        f"- machine: {machine()}; torch threads {next(iter(runs.values()))[0]['torch_threads']}",
        f"- versions: {versions()}",
        *([f"- trl-ppo venv: {runs['trl-ppo'][0]['versions']}"] if "trl-ppo" in runs else []),
        f"- warm-up: `{warmup}`, held-out accuracy at iteration 0 "
        + (f"{warm[0][0] * 100:.1f} % (mean score {warm[0][1]:.3f}, {warm[0][2]:.1f} tokens) on every side and seed"
           if len(warm) == 1 else "DIFFERS between runs (the evaluations do not agree): "
           + ", ".join(f"{a * 100:.1f} % / score {m:.3f} / {n:.1f} tokens" for a, m, n in warm)),
        f"- data: built-in arithmetic task, difficulty 0, {s.n_train} training questions cycled, {s.n_test} held-out "
        f"(greedy, at most {s.max_new_tokens} new tokens, evaluated every {args.eval_every} iterations); "
        f"{prompt_tokens_note(warmup)}",
        f"- each run: {s.iterations} iterations, lr {s.lr:g}, GRPO {s.prompts} prompts x {s.group} samples, PPO "
        f"{s.prompts * s.group} prompts x 1 sample with {args.ppo_epochs} PPO epochs; seeds "
        f"{' '.join(map(str, args.seeds))}; precision {s.precision} on both sides (training and evaluation); "
        "what is matched and what is not: `benchmarks/peer_parity.py`"
        + (f"; rlft's side with `{' '.join(rlft_set(args))}`" if rlft_set(args) else ""),
        "", "Accuracy: mean ± std over seeds; time: the training clock (evaluation excluded) at each seed's first "
        "evaluation at or above the level, mean ± std over the seeds that reached it.",
    ]
    summary = {}
    for pair in args.pairs:
        a, b = PAIRS[pair]
        if a not in runs or b not in runs:
            lines += ["", f"### {pair}: not compared ({', '.join(f'{n} skipped' for n in (a, b) if n in skipped)})"]
            continue
        target = 0.67 if pair == "grpo" else 1.0  # issue 23 (GRPO) and issue 18 (no worse than TRL)
        text, summary[pair] = pair_markdown((a, b), runs, levels, target)
        lines += ["", f"### {pair}: {a} vs {b}", "", text]
    for name, why in skipped.items():
        lines += ["", f"{name}: skipped, {why}."]
    text = "\n".join(lines) + "\n"
    suffix = f"+{variant_tag(args)}" if rlft_set(args) else ""  # a variant's files beside the plain ones'
    plot = Path(args.plot) if args.plot else run_dir / f"peer_parity{suffix}.png"
    write_plot(plot, [p for p in args.pairs if p in summary], runs, warm[0][0])
    text += f"\n![training reward and held-out accuracy]({plot})\n"
    (run_dir / f"results{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "warmup_accuracy": warm, "levels": levels, "summary": summary, "runs": runs,
         "skipped": skipped}, indent=2, default=str))
    print(text)
    out = Path(args.out) if args.out else run_dir / f"peer_parity{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Peer parity: rlft vs TRL\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", required=True, help="the SFT warm-up: RUN/checkpoints/ckpt-N or an HF folder")
    parser.add_argument("--pairs", nargs="+", choices=tuple(PAIRS), default=list(PAIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N iterations")
    parser.add_argument("--n-train", type=int, default=1000, help="training questions (cycled)")
    parser.add_argument("--n-test", type=int, default=300, help="held-out questions")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per GRPO iteration (P)")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt (G); PPO: P*G prompts x 1")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="rollout and evaluation budget")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--ppo-epochs", type=int, default=2, help="PPO epochs per batch in the ppo pair")
    parser.add_argument("--gains", nargs="+", type=float, default=[2.0, 4.0, 6.0],
                        help="accuracy levels as points above the warm-up")
    parser.add_argument("--levels", nargs="+", type=float, help="absolute accuracy levels (0-1) instead of --gains")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: torch's default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="both sides' precision: fp32, or bf16-mixed (rlft model.precision, TRL's bf16=True)")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_peer_parity"))
    parser.add_argument("--out", help="markdown report (default RUN_DIR/peer_parity.md; a variant's: "
                                      "RUN_DIR/peer_parity+TAG.md, see `variant_tag`)")
    parser.add_argument("--plot", help="plot PNG (default RUN_DIR/peer_parity.png; a variant's: "
                                       "RUN_DIR/peer_parity+TAG.png)")
    parser.add_argument("--rlft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an rlft config override for rlft's runs (repeatable), e.g. model.dtype=float32: a "
                             "variant of rlft's side against the same TRL runs")
    parser.add_argument("--bench-python", default=str(ROOT / ".venv-bench/bin/python"),
                        help="interpreter with TRL 1.12 for trl-ppo (`make bench-venv`); missing: skipped")
    parser.add_argument("--only", choices=[n for p in PAIRS.values() for n in p], help=argparse.SUPPRESS)
    parser.add_argument("--only-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.group < 2:
        parser.error("--group must be >= 2 (GRPO needs groups)")
    if args.levels and any(not 0 < x <= 1 for x in args.levels):
        parser.error("--levels are accuracies between 0 and 1")
    child(args) if args.only else parent(args)


if __name__ == "__main__":
    main()
