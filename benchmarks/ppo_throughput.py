"""Speed of one RL iteration (issues 4, 10): rlft's GRPO and ReFT iterations against TRL's GRPOTrainer and
TRL 1.12's PPOTrainer on CPU.

    python benchmarks/ppo_throughput.py                  # tiny model, 8 prompts x 4 samples, 64 tokens, 12 steps
    python benchmarks/ppo_throughput.py --steps 2 --prompts 2 --group 2 --max-new-tokens 8 --out /tmp/ppo.md  # smoke
    python benchmarks/ppo_throughput.py --runs rlft-grpo --rlft-set ppo.prefix_sharing=false --out /tmp/a.md  # ablation
    python benchmarks/ppo_throughput.py --precision fp32  # one precision (default: both where bf16 is fast)
    python benchmarks/ppo_throughput.py --peer-allocator same  # TRL under rlft's host-memory policy too
    python benchmarks/ppo_throughput.py --steps 2 --prompts 2 --group 2 --max-new-tokens 8 --no-ceilings \
        --gemm-dtypes --out /tmp/dtypes.md   # which dtype each side's matrix products run in, per phase
    make bench-venv   # once: .venv-bench with TRL 1.12 for the trl-ppo run (skipped, with a note, without it)

Timings are only meaningful on an otherwise idle machine: with torch's intra-op threads competing for the
cores, one slow thread stalls every parallel region (seen here: 100x slower iterations under load).

Four runs per precision, each in its own subprocess of this script (`--only NAME --precision P`), one after the
other, so that peak RSS (`VmHWM` of that process, `ceilings.peak_rss_mib`) is per run and no run inherits another's
caches or allocator state:

- `rlft-grpo`: `rlft.trainers.ppo.run_ppo` with algo=grpo, P prompts x G samples per iteration;
- `trl-grpo`:  TRL's `GRPOTrainer`, P prompts x G completions per optimizer step;
- `rlft-reft`: `run_ppo` with algo=reft (value head, KL in the reward), P*G prompts x 1 sample: the same
  number of samples per iteration, for a second row (a different algorithm; not a like-for-like ratio);
- `trl-ppo`:   TRL 1.12's `trl.experimental.ppo.PPOTrainer` (TRL's last PPO; 1.16 has none), P*G prompts x 1
  sample, the counterpart of rlft-reft. It runs in the interpreter of `--bench-python` (default
  `.venv-bench/bin/python`, made by `make bench-venv`: TRL 1.12.0, transformers 5.12.1, the same torch); without
  it the run is skipped with a note. Its settings and how they differ from rlft-reft are listed below.

Precisions (`--precision fp32|bf16-mixed|both`; default: both where the CPU has AMX-BF16 / AVX512-BF16, which is
rlft's own `model.precision=auto` probe, `rlft.utils.device.cpu_fast_bf16`, else fp32). Each side runs its own
option for the precision (`peers.rlft_overrides`, `peers.trl_precision_kwargs`); what each then computes in was
read in the installed sources (transformers 5.25 / accelerate 1.16 / TRL 1.16; TRL 1.12 with transformers 5.12.1)
and checked with `--gemm-dtypes`, which counts the input dtypes of every GEMM and attention op per phase:
- fp32: rlft `model.precision=fp32 model.dtype=float32`, TRL `bf16=False, fp16=False`: every op in fp32.
- bf16-mixed, rlft: `model.precision=bf16-mixed` with its default `model.dtype=auto`: torch.autocast(bfloat16)
  around the rollout engine's sampling loop, the no-grad passes and the train step's forward (backward follows
  the forward's dtypes), over fp32 policy weights, gradients and AdamW state; the frozen reference is loaded in
  bf16 weights (half its memory; no cast per forward); the value head (rlft-reft) computes in fp32.
- bf16-mixed, TRL GRPOTrainer: `bf16=True` = accelerate's mixed_precision="bf16": `prepare_model` wraps the
  policy's and the reference's `forward` in torch.autocast(bfloat16) (on the CPU too: accelerate's `native_amp`),
  and `_get_per_token_logps_and_entropies` runs under `accelerator.autocast()`; so generation (each `generate`
  step calls the wrapped forward), the reference pass and the train step compute in bf16, over fp32 weights (policy
  and reference loaded in float32 by `model_init_kwargs`; weights are cast again in every forward) and fp32 AdamW
  state. Its chunked LM head multiplies in the autocast dtype and accumulates the log-softmax in fp32.
- bf16-mixed, TRL 1.12 PPOTrainer: it builds its own `Accelerator()`, which takes the mixed precision from the
  ACCELERATE_MIXED_PRECISION environment variable only (`bf16=True` alone leaves it at "no": checked), so the
  child sets ACCELERATE_MIXED_PRECISION=bf16 as `accelerate launch --mixed_precision bf16` would
  (`peers.trl_ppo_config`). Only the prepared policy + value wrapper's forward is autocast: the update runs in
  bf16; generation (`policy.generate` on the unwrapped policy), the reference pass and the value pass stay fp32.
The rows give each run's precision and weight dtypes; rlft / TRL ratios are given within each precision, then
with each side in its best precision (the one with more samples/s), which is how issue 23 states its target.
MFU is taken against the matmul ceiling of the run's precision, the rollout against the bandwidth bound of that
precision's bytes (bf16 weights and KV cache for bf16-mixed).

What is shared (the settings live in `benchmarks/peers.py`, which `peer_parity.py` uses too): one model folder
built once, offline (`rlft.models.tiny.build_tiny_model` on the built-in arithmetic task's text, difficulty 0,
random init; or SmolLM2-135M with `--model-size smollm2`), loaded by both sides (policy and a frozen reference copy
each; float32, but rlft's reference in bf16 under bf16-mixed); the same training questions (`peers.records("train", n_train=P * steps, n_test=4)`: the
built-in task at difficulty 0 as rlft's `data.*` loads it, where the training questions depend on the held-out
count too; prompt text from `rlft.tasks.prompts.prompt_text`, so each run sees every question once, in its own
shuffled order); G samples per question at temperature 1.0, top-p 1, top-k off, at most `--max-new-tokens` new
tokens, stopping at EOS; the same reward (`rewards.math_reward`, partial reward 0.1, wrapped for TRL's
`fn(prompts, completions, **columns)` signature with the `answer` and `dataset` columns); KL to the reference
with beta 0.04 (k3 estimator in the loss for GRPO on both sides); PPO clip 0.2; one optimizer step (fused AdamW:
rlft's `TorchLearner` and TRL's default `optim="adamw_torch_fused"`; lr 1e-5 constant, grad-norm clip 1.0, no weight decay) on the whole P*G batch per iteration, in ONE forward
/ backward (rlft `ppo.micro_batch_size_per_device` = TRL `per_device_train_batch_size` = P*G), no gradient
checkpointing, the same precision (above), no vLLM, torch's default thread count (or `--threads`) on both sides.

One iteration, per side (what is timed):

rlft (`timing/iteration` from `metrics.jsonl`; evaluation, checkpoints and metric logging are outside it,
     and evaluation happens only after the last iteration with 4 questions):
  rollout   the HF engine's own sampling loop (`rlft/rollout/decode.py`: prefill + one cached forward per
            token, finished rows dropped, inverse-CDF draws) over P prompts x G rows, left-padded, with the
            sampled tokens' log-probs (for the `rollout/logprob_diff` check);
  reward    `rewards.math_reward` behind rlft's timeout wrapper (`rewards.safe_call`);
  logprobs  no-grad teacher-forced forwards over prompt+response: the reference's, plus the policy's old
            log-probs for ReFT (KL in the reward); GRPO with one PPO epoch skips that pass like TRL does
            (old = current log-probs, `rlft.trainers.ppo.needs_old_logprobs`); each distinct prompt runs
            once for its G rows (`ppo.prefix_sharing`, `PolicyModel.forward`), and only real tokens are
            computed (`ppo.packing`: the distinct prompts as one packed row, the responses as another on top;
            `--rlft-set ppo.packing=false` for padded forwards);
  (other)   decode, advantages, metrics;
  train     one forward + backward with grad over the P*G sequences (prompts shared the same way), clip,
            AdamW step.
TRL (`on_step_begin` -> `on_step_end` of a `TrainerCallback`; TRL's own `profiling/Time taken` records are
     captured by wrapping `trl.extras.profiling.ProfilingContext._log_metrics`, since report_to="none"):
  rollout   `transformers.generate` of the P*G repeated prompts, left-padded;
  reward    `_calculate_rewards` (decode happens before, in `other`);
  logprobs  ONE no-grad forward: the reference's log-probs. With num_iterations=1 and one step per generation
            TRL skips the old-policy forward (the ratio is exactly 1 anyway), and its fused LM head computes
            log-probs over the completion positions only, in chunks, never the full logits;
  (other)   tokenization, decode, padding, advantages;
  train     `compute_loss` (forward with grad) + backward + clip + AdamW step (step time minus `_prepare_inputs`).
trl-ppo (TRL 1.12's `PPOTrainer.train` is one method; its module-level helpers are wrapped by name, and an
     iteration runs from one `on_step_end` to the next, the first from `on_train_begin`):
  rollout   `batch_generation`: `generate` of the P*G prompts in one call, left-padded, keeping the scores
            (TRL's old log-probs are the sampler's: no old-policy forward);
  reward    `rewards.math_reward` only, inside the rule-reward wrapper (`peers.rule_reward_model`: PPOTrainer takes a
            reward *model*, so a weightless nn.Module decodes the responses and calls the rule reward; its prompt
            lookup and `batch_decode` are in `other`);
  logprobs  the no-grad forwards: the reference's (`forward`) and the value model's (`get_reward`);
  (other)   log-softmax of the sampler's scores and the reference logits, truncation at EOS, GAE (a Python loop
            over tokens), whitening, stats and logging, the dataloader, and TRL's two `gc.collect()` per
            iteration (timed on their own and printed under the tables);
  train     from the policy + value model forward with grad to the end of `optimizer.step` (loss, backward, step).
trl-ppo's settings, matched to rlft-reft where TRL allows: the same model folder (policy; a frozen reference, TRL's
deep copy); the same questions and prompt token ids (rlft's `encode_prompts`, add_special_tokens=False), P*G
prompts x 1 sample, temperature 1.0 (TRL adds 1e-7), top-p 1, top-k off, at most `--max-new-tokens` tokens,
stopping at EOS (`stop_token="eos"`); `rewards.math_reward`, partial reward 0.1; KL k1 in the reward, coefficient
0.04 (`kl_coef`); gamma 1, lambda 0.95, advantages whitened over the batch, no reward whitening, no missing-EOS
penalty; clip 0.2, value clip 0.2, vf_coef 5.0 (TRL's defaults 0.1 and 0.2 changed to rlft's); one PPO epoch, one
minibatch of all P*G sequences in one forward / backward; AdamW lr 1e-5 constant, betas (0.9, 0.999), eps 1e-8, no
weight decay; fp32 weights, the run's precision (above), no gradient checkpointing, torch threads as for the
other runs. What
still differs from rlft-reft (TRL offers no setting for these):
- value model: TRL trains a separate one, `AutoModelForSequenceClassification(num_labels=1)` from the same
  folder (a second backbone plus a bias-free `score` Linear, HF's normal(0, 0.02) init), in the same AdamW:
  about twice the trainable weights and optimizer state, one more no-grad forward per iteration and two
  forward/backward passes in the update. rlft-reft has a Linear(hidden, 1) head (with bias, std 1/(hidden+1))
  on the policy's backbone (`ppo.critic=shared`; rlft's `ppo.critic=separate` is closer to TRL's layout, with
  its own AdamW);
- old log-probs: TRL's come from the sampler's scores; rlft recomputes them with a teacher-forced policy
  forward (which also gives the values), so both do two no-grad forwards per iteration, different ones;
- gradient clipping: TRL's PPO loop steps the optimizer without clipping (`max_grad_norm` is unused); rlft clips
  at 1.0;
- loss aggregation: TRL averages the policy and value losses over all response tokens of the minibatch
  (token-mean); rlft-reft uses seq-mean-token-mean;
- score position: for a response that ends with EOS, TRL adds the score one position after the EOS token
  (`sequence_lengths + 1`, inside its value mask); rlft on the EOS token. Truncated responses: the last token
  on both sides;
- reward call: rlft runs `math_reward` behind its timeout wrapper (`rewards.safe_call`); trl-ppo calls it
  directly (as trl-grpo does), after the wrapper's decode;
- stats: TRL computes a full-vocabulary softmax entropy of the update's logits and runs `gc.collect()` twice per
  iteration; rlft's evaluation (4 questions, after the last iteration) is outside its timing, and TRL has none;
- question order: each side shuffles the questions with its own generator (TRL's DataLoader, rlft's
  `epoch_order`); both see every question once.
The first (warm-up) iteration of every run is excluded. samples/s = samples / time of the timed iterations;
completion tokens/s counts generated tokens up to and including EOS (rlft `rollout/response_len_mean`, TRL
`completions/mean_length`; trl-ppo: the response tokens its reward wrapper sees, cut after EOS). With a random-init
model almost every completion runs to `--max-new-tokens`, so both sides generate the same number of tokens.

Writes the markdown report to stdout and `--out` (default docs/benchmarks_ppo.md) and the raw numbers to
`--run-dir`/results.json. Needs `pip install -e '.[bench]'` (TRL >= 1.0), and `make bench-venv` for trl-ppo.
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import dataclasses
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ceilings import (
    ceilings_markdown,
    decode_bound_tokens_per_s,
    matmul_ceiling,
    measure_ceilings,
    peak_rss_mib,
)
from peers import (
    GEMM_PHASES,
    PRECISIONS,
    RUNS,
    GemmDtypes,
    Setup,
    add_peer_allocator_argument,
    add_precision_argument,
    build_model,
    gemm_dtypes_cell,
    machine,
    peer_allocator_note,
    precisions_of,
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

PHASES = ("rollout", "logprobs", "reward", "train", "other")
EVAL_N = 4  # held-out questions rlft evaluates after its last iteration (outside the timing)
PAIRS = (("rlft-grpo", "trl-grpo"), ("rlft-reft", "trl-ppo"))  # (rlft run, its TRL counterpart)
TARGET = 2.0  # issue 23: rlft-grpo >= 2x trl-grpo samples/s, each in its best precision, at no more peak RSS


def setup_of(args, name: str, precision: str = "fp32") -> Setup:
    """Run `name`'s settings: it sees every training question once (prompts per iteration x steps of them)."""
    s = Setup(prompts=args.prompts, group=args.group, iterations=args.steps, n_train=0, n_test=EVAL_N,
              max_new_tokens=args.max_new_tokens, lr=args.lr, seed=args.seed, precision=precision)
    return dataclasses.replace(s, n_train=s.geometry(name)[0] * args.steps)


# ----------------------------------------------------------------------------------------------------
# rlft


def run_rlft(name: str, args, model_dir: Path, out_dir: Path) -> dict:
    from rlft.config import load_config
    from rlft.trainers.ppo import run_ppo
    from rlft.utils.device import resolve_compute, weights_dtype
    from rlft.utils.logging import read_metrics

    s = setup_of(args, name, args.precision)
    P, G = s.geometry(name)
    overrides = rlft_overrides(name, s, model_dir, out_dir) + [
        f"ppo.eval_every={10**9}", "eval.max_new_tokens=8", f"eval.batch_size={EVAL_N}",
    ]
    overrides += args.rlft_set  # ablations, e.g. ppo.prefix_sharing=false
    cfg = load_config(None, overrides)
    compute = resolve_compute(cfg)
    setup = {"precision": compute.precision, "policy_dtype": weights_dtype(cfg, compute, trains=True),
             "reference_dtype": weights_dtype(cfg, compute, trains=False)}
    if compute.precision != s.precision:
        raise SystemExit(f"{name}: asked for {s.precision}, rlft resolved {compute.describe()}")
    run_ppo(cfg)
    rows = [r for r in read_metrics(out_dir) if "timing/iteration" in r]
    steps = []
    for r in rows:
        parts = {k: float(r.get(f"timing/{k}", 0.0)) for k in ("rollout", "reward", "logprobs", "train", "sync")}
        total = float(r["timing/iteration"])
        steps.append({
            "step": r["step"], "seconds": total, "samples": P * G,
            "tokens": float(r["rollout/response_len_mean"]) * P * G,
            "rollout": parts["rollout"], "reward": parts["reward"], "logprobs": parts["logprobs"],
            "train": parts["train"], "other": total - sum(parts.values()) + parts["sync"],
        })
    return {"steps": steps, "overrides": overrides, "setup": setup}


# ----------------------------------------------------------------------------------------------------
# TRL


def run_trl(name: str, args, model_dir: Path, out_dir: Path) -> dict:
    from transformers import TrainerCallback
    from trl.extras import profiling

    s = setup_of(args, name, args.precision)
    P, G = s.geometry(name)

    # TRL times its phases with `profiling_context`, but only reports them to wandb/mlflow/trackio: record them.
    events: list[tuple[str, float]] = []

    def record(self, duration: float) -> None:
        events.append((self.name.split(".", 1)[-1], duration))

    profiling.ProfilingContext._log_metrics = record

    steps: list[dict] = []
    logs_by_step: dict[int, dict] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            self.start, self.first_event = time.perf_counter(), len(events)

        def on_step_end(self, args_, state, control, **kwargs):
            steps.append({"step": state.global_step, "seconds": time.perf_counter() - self.start,
                          "events": events[self.first_event:]})

        def on_log(self, args_, state, control, logs=None, **kwargs):
            logs_by_step.setdefault(state.global_step, {}).update(logs or {})

    trainer, config, setup = trl_grpo_trainer(s, model_dir, out_dir, [StepTimer()])
    trainer.train()

    def total(evs, key):
        return sum(d for n, d in evs if n == key)

    out = []
    for s in steps:
        names = [n for n, _ in s["events"]]
        # Events are recorded when a block ends: the reference forward ends inside `_prepare_inputs`, i.e.
        # before its record; the policy's forward with grad comes after it (inside `compute_loss`).
        cut = names.index("_prepare_inputs") if "_prepare_inputs" in names else len(names)
        before = s["events"][:cut]
        prepare = total(s["events"], "_prepare_inputs")
        rollout = total(before, "transformers.generate")
        reward = total(before, "_calculate_rewards")
        logprobs = total(before, "_get_per_token_logps_and_entropies")
        row = logs_by_step.get(s["step"], {})
        out.append({
            "step": s["step"], "seconds": s["seconds"], "samples": P * G,
            "tokens": float(row.get("completions/mean_length", float("nan"))) * P * G,
            "rollout": rollout, "reward": reward, "logprobs": logprobs, "train": s["seconds"] - prepare,
            "other": prepare - rollout - reward - logprobs,
            "trl_step_time": row.get("step_time"),  # TRL's own timer: training_step only (no optimizer step)
            "trl_profiling": s["events"],  # (block, seconds) in the order the blocks ended
        })
    return {"steps": out, "setup": setup, "config": {k: v for k, v in config.to_dict().items() if not k.startswith("_")}}


# ----------------------------------------------------------------------------------------------------
# TRL 1.12 PPOTrainer (runs in the bench venv: `make bench-venv`)


def run_trl_ppo(name: str, args, model_dir: Path, out_dir: Path) -> dict:
    import gc
    import types

    import torch
    from transformers import TrainerCallback

    s = setup_of(args, name, args.precision)
    P, G = s.geometry(name)

    # Phases: (name, start, end) of the TRL calls below; an iteration owns the events that start inside it.
    events: list[tuple[str, float, float]] = []
    tokens: list[tuple[float, int]] = []

    def timed(phase: str, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            events.append((phase, start, time.perf_counter()))
            return out
        return wrapper

    def on_score(seconds: float, n_tokens: int) -> None:
        now = time.perf_counter()
        events.append(("reward", now - seconds, now))
        tokens.append((now, n_tokens))

    steps: list[dict] = []
    logs_by_step: dict[int, dict] = {}

    class StepTimer(TrainerCallback):  # TRL's PPO loop calls no on_step_begin: an iteration is end to end
        def on_train_begin(self, args_, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            now = time.perf_counter()
            steps.append({"step": state.global_step, "start": self.last, "end": now})
            self.last = now

        def on_log(self, args_, state, control, logs=None, **kwargs):
            logs_by_step.setdefault(state.global_step, {}).update(logs or {})

    trainer, config, setup = trl_ppo_trainer(s, model_dir, out_dir, [StepTimer()], on_score)
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    # `train` calls these module-level helpers by name: batch_generation = the rollout; forward without grad =
    # the reference, with grad = the policy + value model inside the update; get_reward = the value model
    # (timed here) or the rule reward (timed inside, math_reward only).
    forward, get_reward, reward_model = trl_ppo.forward, trl_ppo.get_reward, trainer.reward_model
    trl_ppo.batch_generation = timed("rollout", trl_ppo.batch_generation)
    trl_ppo.forward = lambda *a, **kw: timed("logprobs" if not torch.is_grad_enabled() else "train_start",
                                             forward)(*a, **kw)
    trl_ppo.get_reward = lambda model, *a, **kw: get_reward(model, *a, **kw) if model is reward_model \
        else timed("logprobs", get_reward)(model, *a, **kw)
    # TRL runs a full gc.collect() twice per iteration (part of `other`; reported on its own)
    trl_ppo.gc = types.SimpleNamespace(collect=timed("gc", gc.collect))
    step = trainer.optimizer.step  # the update ends with this call (TRL clips no gradient)
    trainer.optimizer.step = timed("train_end", step)
    trainer.train()

    out = []
    for s in steps:
        evs = [(n, a, b) for n, a, b in events if s["start"] <= a < s["end"]]
        phase = {k: sum(b - a for n, a, b in evs if n == k) for k in ("rollout", "logprobs", "reward")}
        # the update: from the policy + value forward with grad to the end of the optimizer step
        begin = min((a for n, a, _ in evs if n == "train_start"), default=None)
        end = max((b for n, _, b in evs if n == "train_end"), default=None)
        phase["train"] = end - begin if begin is not None and end is not None else 0.0
        seconds = s["end"] - s["start"]
        row = logs_by_step.get(s["step"], {})
        out.append({
            "step": s["step"], "seconds": seconds, "samples": P * G,
            "tokens": float(sum(n for t, n in tokens if s["start"] <= t < s["end"])), **phase,
            "other": seconds - sum(phase.values()), "gc": sum(b - a for n, a, b in evs if n == "gc"),
            "trl_logs": {k: v for k, v in row.items() if isinstance(v, (int, float))},
        })
    config_dict = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    return {"steps": out, "setup": setup, "config": config_dict}


# ----------------------------------------------------------------------------------------------------
# Child and parent


def child(args) -> None:
    import torch

    # transformers 5.x renamed gradient_checkpointing; TRL still reads the old name (harmless FutureWarnings)
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.run_dir) / args.precision / args.only
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model_dir = Path(args.model_dir) if args.model_dir else build_model(args.model_size, Path(args.run_dir), args.seed)
    probe = GemmDtypes() if args.gemm_dtypes else None
    if probe:
        probe.start()
    start = time.perf_counter()
    run = {"trl-grpo": run_trl, "trl-ppo": run_trl_ppo}.get(args.only, run_rlft)
    result = run(args.only, args, model_dir, out_dir / "run")
    if probe:
        result["gemm_dtypes"] = probe.summary()
    result.update(name=args.only, precision=args.precision, wall_seconds=time.perf_counter() - start, peak_rss_mib=peak_rss_mib(),
                  torch_threads=torch.get_num_threads(), python=sys.executable, versions=versions())
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def summarize(result: dict) -> dict:
    timed = result["steps"][1:]  # drop the warm-up iteration
    if not timed:
        raise SystemExit(f"{result['name']}: need --steps >= 2 (the first iteration is a warm-up)")
    seconds = sum(s["seconds"] for s in timed)
    out = {
        "samples_per_s": sum(s["samples"] for s in timed) / seconds,
        "tokens_per_s": sum(s["tokens"] for s in timed) / seconds,
        "s_per_step": seconds / len(timed),
        "s_per_step_stdev": statistics.stdev(s["seconds"] for s in timed) if len(timed) > 1 else 0.0,
        "completion_len": sum(s["tokens"] for s in timed) / sum(s["samples"] for s in timed),
        "peak_rss_mib": result["peak_rss_mib"],
        "timed_steps": len(timed),
    }
    for k in PHASES:
        out[k] = sum(s[k] for s in timed) / len(timed)
    return out


def ratio(a: dict, b: dict) -> dict:
    """a / b of two runs' summaries: samples/s, completion tokens/s, peak RSS and seconds per phase."""
    return {"samples_per_s": a["samples_per_s"] / b["samples_per_s"], "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
            "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"],
            "phases": {k: a[k] / b[k] for k in PHASES[:4] if b[k] > 0}}


def best_precision(summaries: dict, name: str) -> str | None:
    """The precision in which run `name` had the most samples/s, of those it ran in (None: it did not run).
    `summaries`: {precision: {run: summary}}."""
    ran = [(by_run[name]["samples_per_s"], p) for p, by_run in summaries.items() if name in by_run]
    return max(ran)[1] if ran else None


def comparisons(summaries: dict) -> list[dict]:
    """rlft / TRL for each pair of PAIRS: one entry per precision both sides ran in (`best` False), then one with
    each side in its best precision (`best` True; issue 23's target is stated this way). Each entry: `rlft` and
    `trl` as (run, precision), and `ratio`'s fields."""
    out = []
    for a, b in PAIRS:
        for p, by_run in summaries.items():
            if a in by_run and b in by_run:
                out.append({"rlft": (a, p), "trl": (b, p), "best": False, **ratio(by_run[a], by_run[b])})
        pa, pb = best_precision(summaries, a), best_precision(summaries, b)
        if pa and pb:
            out.append({"rlft": (a, pa), "trl": (b, pb), "best": True, **ratio(summaries[pa][a], summaries[pb][b])})
    return out


def precision_speedups(summaries: dict) -> dict:
    """Per run that ran in both precisions: samples/s under bf16-mixed / under fp32."""
    fp32, bf16 = summaries.get("fp32", {}), summaries.get("bf16-mixed", {})
    return {n: bf16[n]["samples_per_s"] / fp32[n]["samples_per_s"] for n in fp32 if n in bf16}


def meets_target(c: dict) -> bool:
    """Issue 23's target for a GRPO comparison: >= TARGET x the samples/s at no more peak RSS."""
    return c["samples_per_s"] >= TARGET and c["peak_rss"] <= 1.0


def weights_cell(result: dict) -> str:
    """The dtypes a run keeps its weights in (policy, reference, and TRL PPO's value model)."""
    s = result.get("setup", {})
    short = lambda d: str(d).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16")
    cell = f"policy {short(s.get('policy_dtype', '?'))}, ref {short(s.get('reference_dtype', '?'))}"
    return cell + (f", value {short(s['value_dtype'])}" if "value_dtype" in s else "")


PRECISION_NOTE = (
    "fp32: no autocast anywhere (rlft `model.precision=fp32 model.dtype=float32`; TRL `bf16=False, fp16=False`). "
    "bf16-mixed: rlft `model.precision=bf16-mixed` with its default `model.dtype=auto`: torch.autocast(bfloat16) "
    "around every forward (sampling, the no-grad passes, the train step) over fp32 policy weights and fp32 AdamW "
    "state, the frozen reference in bf16 weights, the value head in fp32; TRL `bf16=True` (accelerate "
    "mixed_precision=bf16): torch.autocast(bfloat16) over fp32 weights (policy and reference loaded in float32 by "
    "`model_init_kwargs`) and fp32 AdamW state; GRPOTrainer autocasts generation, the reference pass and the train "
    "step; TRL 1.12's PPOTrainer (with ACCELERATE_MIXED_PRECISION=bf16, see `peers.trl_ppo_config`) autocasts only "
    "the update's policy + value forward: its generation, reference and value passes run in fp32")


def report(args, results: dict, command: str, prompt_note: str, skipped: dict | None = None,
           ceilings: dict | None = None) -> str:
    """The markdown report. `results`: {precision: {run: the child's result}}, in run order."""
    summaries = {p: {n: summarize(r) for n, r in by_run.items()} for p, by_run in results.items()}
    runs = [(p, n) for p, by_run in results.items() for n in by_run]
    first = results[runs[0][0]][runs[0][1]]
    has_ppo = any(n == "trl-ppo" for _, n in runs)
    P, G = args.prompts, args.group
    batch = (f"{P} prompts x {G} samples = {P * G} samples per iteration, at most {args.max_new_tokens} new tokens, "
             f"temperature 1.0; one optimizer step per iteration; {args.steps} iterations per run, the first "
             "excluded (warm-up); each run in its own process, one after the other (peak RSS per run)")
    if args.rlft_set:
        batch += f"; rlft runs with the extra overrides {' '.join(args.rlft_set)}"
    passes = ("see the docstring of `benchmarks/ppo_throughput.py`. For GRPO with one PPO epoch both sides skip "
              "the old-log-prob pass (old = current, TRL's num_iterations=1 shortcut; rlft's `needs_old_logprobs`); "
              "rlft-reft needs it (KL in the reward) and adds the value head. Both sides compute logits for the "
              "response-scoring positions only (rlft: `logits_to_keep`; TRL's GRPO: its chunked LM head). rlft runs "
              "each prompt once for its G samples in the no-grad and train passes (`ppo.prefix_sharing`) and "
              "computes the real tokens only (`ppo.packing`); TRL runs every row's prompt, padded")
    if has_ppo:
        passes += (". trl-ppo (TRL 1.12's experimental PPOTrainer) takes old log-probs from the sampler's scores (no "
                   "old-policy pass), runs a separate value model (a second copy of the model with a score head) in "
                   "the no-grad pass and in the update, and scores with a rule-reward wrapper (no forward); no "
                   "gradient clipping")
    title = "TRL GRPOTrainer and PPOTrainer" if has_ppo else "TRL GRPOTrainer"
    lines = [
        f"## PPO iteration throughput: rlft vs {title} ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; torch threads {first['torch_threads']}",
        f"- versions: {versions()}",
        peer_allocator_note(args.peer_allocator),
    ]
    ppo_result = next((results[p][n] for p, n in runs if n == "trl-ppo"), None)
    if ppo_result:
        lines.append(f"- trl-ppo venv ({ppo_result['python']}): {ppo_result['versions']}")
    lines += [
        f"- model: {args.model_size}, policy + frozen reference on both sides, from one folder; {prompt_note}",
        f"- precisions: {', '.join(results)}. {PRECISION_NOTE}",
        f"- batch: {batch}",
        f"- what each side does per iteration: {passes}",
        "",
        ("| run | precision | weights | algo | prompts x samples | samples/s | completion tokens/s "
         "| s/iteration (stdev) | mean completion tokens | peak RSS MiB |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    algo = {"rlft-grpo": "GRPO (KL k3 in loss)", "trl-grpo": "GRPO (KL k3 in loss)",
            "rlft-reft": "ReFT PPO (value head, KL k1 in reward)",
            "trl-ppo": "PPO (separate value model, KL k1 in reward)"}
    for p, name in runs:
        g = setup_of(args, name).geometry(name)
        x = summaries[p][name]
        lines.append(f"| {name} | {p} | {weights_cell(results[p][name])} | {algo[name]} | {g[0]} x {g[1]} "
                     f"| {x['samples_per_s']:.2f} | {x['tokens_per_s']:.1f} | {x['s_per_step']:.3f} "
                     f"({x['s_per_step_stdev']:.3f}) | {x['completion_len']:.1f} | {x['peak_rss_mib']:.0f} |")
    lines += [
        "",
        "Where the time goes (seconds per timed iteration and share; `other` is the rest of the iteration):",
        "",
        "| run | precision | rollout (generate) | logprobs (no-grad forwards) | reward | train (fwd+bwd+step) | other | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, name in runs:
        x = summaries[p][name]
        cells = [f"{x[k]:.3f} ({x[k] / x['s_per_step'] * 100:.0f}%)" for k in PHASES]
        lines.append(f"| {name} | {p} | {' | '.join(cells)} | {x['s_per_step']:.3f} |")
    lines.append("")
    for c in comparisons(summaries):
        (a, pa), (b, pb) = c["rlft"], c["trl"]
        text = (f"{c['samples_per_s']:.2f}x samples/s, {c['tokens_per_s']:.2f}x completion tokens/s, "
                f"{c['peak_rss']:.2f}x peak RSS")
        per_phase = ", ".join(f"{k} {v:.2f}x" for k, v in c["phases"].items())
        if c["best"]:
            line = f"**Each in its best precision, {a} ({pa}) / {b} ({pb}): {text}**"
            if a == "rlft-grpo":
                line += (f" ({'meets' if meets_target(c) else 'misses'} issue 23's target: at least {TARGET:g}x the "
                         "samples/s at no more peak RSS; best = the precision with more samples/s, of those run)")
            lines += [line + ".", ""]
        else:
            lines.append(f"{pa}: {a} / {b}: {text}; per phase, rlft seconds / TRL seconds: {per_phase}.")
    speedups = precision_speedups(summaries)
    if speedups:
        lines.append("bf16-mixed / fp32, samples/s of the same run: "
                     + ", ".join(f"{n} {v:.2f}x" for n, v in speedups.items()) + ".")
    for p, name in runs:
        if name == "trl-ppo":
            timed = results[p][name]["steps"][1:]
            gc_s = sum(x["gc"] for x in timed) / len(timed)
            lines.append(f"trl-ppo ({p})'s `other` includes {gc_s:.3f} s per iteration in the two `gc.collect()` "
                         "calls of TRL's loop.")
    if any("gemm_dtypes" in results[p][n] for p, n in runs):
        lines += ["", ("Input dtypes of the matrix products as they reached the kernels (`--gemm-dtypes`: GEMMs and "
                       "attention, counted over the whole run by a TorchDispatchMode below autocast; timings of "
                       "these runs are slowed by it):"), "",
                  f"| run | precision | {' | '.join(GEMM_PHASES)} |", "|---|---|" + "---|" * len(GEMM_PHASES)]
        for p, name in runs:
            probe = results[p][name].get("gemm_dtypes", {})
            lines.append(f"| {name} | {p} | {' | '.join(gemm_dtypes_cell(probe.get(k)) for k in GEMM_PHASES)} |")
    if ceilings:
        lines += ["", ceilings_fractions(args, summaries, ceilings)]
    for name, why in (skipped or {}).items():
        lines += ["", f"{name}: skipped, {why}."]
    lines.append("")
    return "\n".join(lines)


def model_facts(model_dir: Path, args) -> dict:
    """What the ceiling fractions need: policy parameters, mean prompt tokens, and the decode bandwidth bound."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.tasks.prompts import prompt_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    questions = records("train", args.prompts * args.group * args.steps, EVAL_N)
    lengths = [len(tok(prompt_text(r, "nl"), add_special_tokens=False)["input_ids"]) for r in questions]
    return {"params": sum(p.numel() for p in model.parameters()), "prompt_len": sum(lengths) / len(lengths),
            "model": model}


def ceilings_fractions(args, summaries: dict, ceilings: dict) -> str:
    """Each run's train phase as model FLOPs utilisation of its precision's matmul ceiling, its rollout against
    the bandwidth bound of that precision's bytes."""
    from rlft.config import load_config

    facts = ceilings["facts"]
    sharing = load_config(None, list(args.rlft_set)).ppo.prefix_sharing  # rlft's runs, with --rlft-set applied
    lines = [ceilings_markdown(ceilings),
             ("Fractions of the ceilings (train: 6 x N x (prompt + completion tokens) per iteration / train seconds, "
              f"N = {facts['params']:,} policy parameters, mean prompt {facts['prompt_len']:.0f} tokens, counting "
              "the tokens each side computes: rlft-grpo runs each prompt once for its G samples (shared prompts), "
              "so P x prompt + P x G x completion, the others every row's prompt; TRL's PPO "
              "also trains a value model of the same size, not counted; MFU against the matmul ceiling of the run's "
              "precision (bf16 GEMMs for bf16-mixed); rollout: completion tokens/s against the memory-bandwidth bound "
              "of batched decoding, `ceilings.decode_bound_tokens_per_s`, with fp32 weights and KV cache for fp32 runs "
              "and bf16 ones (half the bytes, twice the bound) for bf16-mixed runs):"),
             "",
             ("| run | precision | train GFLOP/s | MFU (of the precision's matmul ceiling) | rollout tokens/s "
              "| bandwidth bound tokens/s | of the bound |"),
             "|---|---|---|---|---|---|---|"]
    for p, by_run in summaries.items():
        for name, x in by_run.items():
            g = setup_of(args, name).geometry(name)
            rows = g[0] * g[1]
            shared = name.startswith("rlft") and g[1] > 1 and sharing
            tokens = (g[0] if shared else rows) * facts["prompt_len"] + rows * x["completion_len"]
            flops = 6 * facts["params"] * tokens / x["train"] if x["train"] else 0.0
            rollout_tps = rows * x["completion_len"] / x["rollout"] if x["rollout"] else 0.0
            # weights and KV cache both scale with the element size: bf16's bound is twice the fp32 one
            bound = decode_bound_tokens_per_s(facts["model"], rows, facts["prompt_len"], x["completion_len"],
                                              ceilings["read_bandwidth"]) * (2 if p == "bf16-mixed" else 1)
            lines.append(f"| {name} | {p} | {flops / 1e9:.1f} | {flops / matmul_ceiling(ceilings, p) * 100:.0f}% | "
                         f"{rollout_tps:,.0f} | {bound:,.0f} | {rollout_tps / bound * 100:.0f}% |")
    return "\n".join(lines)


def parent(args) -> None:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    precisions = precisions_of(args.precision)
    model_dir = build_model(args.model_size, run_dir, args.seed)
    note = prompt_tokens_note(model_dir)
    passthrough = ["--steps", str(args.steps), "--prompts", str(args.prompts), "--group", str(args.group),
                   "--max-new-tokens", str(args.max_new_tokens), "--model-size", args.model_size,
                   "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
                   "--run-dir", str(run_dir), "--model-dir", str(model_dir),
                   *(["--gemm-dtypes"] if args.gemm_dtypes else []),
                   *[arg for item in args.rlft_set for arg in ("--rlft-set", item)]]
    ceilings = None
    if not args.no_ceilings:  # in the parent, before any run: its memory does not count in a run's peak RSS
        print("ppo_throughput: measuring the machine's ceilings ...", file=sys.stderr, flush=True)
        ceilings = {**measure_ceilings(args.threads or None), "facts": model_facts(model_dir, args)}
    results, skipped = {p: {} for p in precisions}, {}
    for precision in precisions:
        for name in args.runs:
            python, why = side_python(name, args.bench_python)
            if python is None:
                skipped[name] = why
                print(f"ppo_throughput: skipping {name}: {why}", file=sys.stderr, flush=True)
                continue
            print(f"ppo_throughput: running {name} ({precision}) ...", file=sys.stderr, flush=True)
            subprocess.run([python, str(Path(__file__).resolve()), "--only", name, "--precision", precision,
                            *passthrough], check=True, env=side_env(name, args.peer_allocator))
            results[precision][name] = json.loads((run_dir / precision / name / "result.json").read_text())
    results = {p: by_run for p, by_run in results.items() if by_run}
    if not results:
        raise SystemExit("ppo_throughput: no run left to report")
    command = "python benchmarks/ppo_throughput.py " + " ".join(sys.argv[1:])
    text = report(args, results, command.strip(), note, skipped, ceilings)
    (run_dir / "results.json").write_text(json.dumps(
        {"args": vars(args), "precisions": list(results),
         "summary": {p: {n: summarize(r) for n, r in by_run.items()} for p, by_run in results.items()},
         "runs": results, "skipped": skipped,
         "ceilings": {k: v for k, v in (ceilings or {}).items() if k != "facts"}},
        indent=2, default=str))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# PPO throughput: rlft vs TRL\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="iterations per run; the first is a warm-up")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step (P)")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model-size", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: torch's default)")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="which runs, in order")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks_ppo.md"), help="markdown report")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_ppo_throughput"), help="scratch folder")
    parser.add_argument("--bench-python", default=str(ROOT / ".venv-bench/bin/python"),
                        help="interpreter with TRL 1.12 for the trl-ppo run (`make bench-venv`); missing: run skipped")
    parser.add_argument("--rlft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra rlft config override for the rlft runs (repeatable), e.g. ppo.prefix_sharing=false")
    parser.add_argument("--no-ceilings", action="store_true", help="skip measuring matmul FLOP/s and bandwidth")
    add_precision_argument(parser)
    add_peer_allocator_argument(parser)
    parser.add_argument("--gemm-dtypes", action="store_true",
                        help="count the dtypes every GEMM / attention op runs in, per phase (slows the runs: for "
                             "checking what each precision does, not for timing)")
    parser.add_argument("--only", choices=RUNS, help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only and args.precision not in PRECISIONS:
        parser.error("a child (--only) runs one precision: --precision fp32 or bf16-mixed")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first iteration is a warm-up)")
    if args.group < 2:
        parser.error("--group must be >= 2 (GRPO needs groups)")
    child(args) if args.only else parent(args)


if __name__ == "__main__":
    main()
