"""Exact resume after a real SIGKILL, and after a kill during a save (issue #9, promise 1).

The killed run is a real `python -m rlft.cli train` subprocess, killed with SIGKILL at a seeded random
moment after its first checkpoint exists, then resumed with `run.resume=true`. Its final weights and every
metrics row must equal those of an uninterrupted run, bit for bit: on CPU with the same seed and one
thread, every op is deterministic, so any difference means some state (data order, RNG, optimizer,
scheduler, KL controller, counters) was not restored. No tolerance.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlft.config import load_config
from rlft.trainers.ppo import run_ppo
from rlft.utils import checkpoint

ROOT = Path(__file__).resolve().parents[2]
MICRO = [
    "data.difficulty=0", "data.n_train=16", "data.n_test=4", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=12", "eval.max_new_tokens=12", "ppo.micro_batch_size_per_device=4", "ppo.lr=1e-4",
    "ppo.eval_every=3", "ppo.save_every=1", "ppo.keep_last_checkpoints=2", "log.progress=false",
    "log.tensorboard=false", "kl.adaptive=true",  # adaptive KL: the controller's state must be restored too
]
ITERATIONS = 6


def _train_cmd(run_dir, model):
    return [sys.executable, "-m", "rlft.cli", "train", f"run.dir={run_dir}", f"model.path={model}",
            f"ppo.iterations={ITERATIONS}", *MICRO]


def _env():
    # one thread in both runs: the same kernels in the same order, so the comparison can be exact
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _rows(run_dir):
    volatile = ("timing/", "time/", "eval/seconds")
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(volatile)} for r in rows]


def _final_weights(run_dir):
    model = run_dir / "checkpoints" / f"ckpt-{ITERATIONS}" / "model"
    return {**load_file(str(model / "model.safetensors")), **{f"v.{k}": v for k, v in load_file(str(model / "value_head.safetensors")).items()}}


def _assert_same_run(a, b):
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in rb] == list(range(1, ITERATIONS + 1)), "a metrics row was lost or duplicated"
    assert ra == rb


def test_sigkill_at_a_random_moment_then_resume_equals_uninterrupted(tmp_path, warm_model):
    """Breaks if: any trainer state is not checkpointed/restored (weights or metrics differ), a kill leaves a
    corrupt latest checkpoint (the resume crashes), or a row is lost/duplicated (steps are not 1..N)."""
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full, warm_model), env=_env(), check=True, capture_output=True, cwd=tmp_path)

    rng = random.Random(9)  # seeded: the same kill points every run, yet not hand-picked
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, warm_model), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = rng.randint(2, ITERATIONS - 3)
    deadline = time.monotonic() + 300
    seen = {}
    while target not in seen:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill point"
        for k in (target - 1, target):
            if k not in seen and (killed / "checkpoints" / f"ckpt-{k}").exists():
                seen[k] = time.monotonic()
        time.sleep(0.005)
    # Anywhere in the next iteration (rollout, update, save ...): a random fraction of the last iteration's
    # duration, so the kill lands before the run ends however fast the machine is.
    time.sleep(rng.uniform(0.0, 1.0) * (seen[target] - seen.get(target - 1, seen[target])))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    last = checkpoint.latest_checkpoint(killed / "checkpoints")
    assert last is not None and int(last.name.split("-")[1]) < ITERATIONS, "the kill came too late to test a resume"
    print(f"killed after ckpt-{target}; resuming from {last.name}; left over: "
          f"{sorted(p.name for p in (killed / 'checkpoints').iterdir())}")

    resumed = subprocess.run(_train_cmd(killed, warm_model) + ["run.resume=true"], env=_env(), cwd=tmp_path,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {last}" in resumed.stdout + resumed.stderr
    _assert_same_run(full, killed)
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    # keep-last-2 plus the best by held-out accuracy (always protected); no temp folder left
    assert names[-2:] == [f"ckpt-{ITERATIONS - 1}", f"ckpt-{ITERATIONS}"] and len(names) <= 3, names
    assert not any(n.endswith(".tmp") for n in names), names


def _cfg(run_dir, model, *extra):
    return load_config(None, [f"run.dir={run_dir}", f"model.path={model}", f"ppo.iterations={ITERATIONS}", *MICRO, *extra])


def test_kill_during_save_leaves_the_previous_checkpoint_latest(tmp_path, warm_model):
    """A kill during `_save` leaves `ckpt-N.tmp` half written (here: a truncated weights file and no
    trainer state) and a torn last line in metrics.jsonl. Breaks if: `latest_checkpoint` picks the temp
    folder (the resume crashes on the truncated file), the torn line crashes the resume, or the resumed run
    differs from an uninterrupted one."""
    run_ppo(_cfg(tmp_path / "full", warm_model))
    part = tmp_path / "part"
    run_ppo(_cfg(part, warm_model), stop_after_iterations=3)
    ckpts = part / "checkpoints"
    # what a SIGKILL half-way through the next save leaves behind
    tmp = ckpts / "ckpt-4.tmp"
    (tmp / "model").mkdir(parents=True)
    weights = (ckpts / "ckpt-3" / "model" / "model.safetensors").read_bytes()
    (tmp / "model" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with (part / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward/mean": 0.1, "policy/lo')  # the row of iteration 4, torn
    assert checkpoint.latest_checkpoint(ckpts) == ckpts / "ckpt-3"

    run_ppo(_cfg(part, warm_model))
    _assert_same_run(tmp_path / "full", part)
    assert not tmp.exists()
