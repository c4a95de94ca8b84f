"""GPU check of CARFT on Ray (issue 19 item 3); a step of `tests/gpu/run_gpu_checks.sh`.

    python tests/gpu/carft_ray_check.py --device cuda --out R.jsonl --work W

`rlft train algo=carft cluster.backend=ray` on the tiny model: DeepSpeed ZeRO-2 learner ranks (one per GPU, at
most 2; on one GPU a single rank colocated with its engine and the reference) run CARFT's anchor pass and the
contrastive loss, whose negatives are all-gathered over NCCL when there are 2 ranks; HF engines (no vLLM needed).
Against the in-process loop on the same greedy batches (micro-batches of ranks x 4 there, 4 per rank on Ray, so
both see the same negatives), 2 iterations each. A stub reward scores every sample 1, so every sample is a
positive and every rank holds as many (the per-rank normaliser then matches one process, `specs/carft.md` §4).

Rows (appended to `--out`, the same format as `gpu_checks.py`): the losses of iteration 1 against the in-process
run (when both sampled the same responses), `carft/n_positive` > 0, the anchor pass timed on the learners, the
engines' log-probs after the weight sync, the CARFT head in the checkpoint, wall time. `--device cpu` runs the
same on 2 gloo ranks (the dry run of this step; about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from gpu_checks import ROOT, append, model_folder, row  # this folder is on sys.path when run as a script

STUB = "def always(completions, **columns):\n    return [1.0] * len(completions)\n"


def check(work: Path, device: str) -> list[dict]:
    import torch

    from rlft.config import load_config
    from rlft.trainers.ppo import run_ppo

    gpu = device == "cuda"
    ranks = min(2, torch.cuda.device_count()) if gpu else 2
    name = f"tiny, {ranks} rank{'s' if ranks > 1 else ''}"
    stub = work / "carft_stub.py"
    stub.write_text(STUB)
    common = [f"model.path={model_folder('tiny', work)}", "algo=carft", f"reward.fn={stub}:always",
              "data.difficulty=0", "data.n_train=64", "data.n_test=8", "rollout.prompts_per_step=8",
              "rollout.samples_per_prompt=1", "rollout.temperature=0", "rollout.max_new_tokens=32",
              "eval.max_new_tokens=32", "ppo.iterations=2", "ppo.eval_every=2", "ppo.save_every=2",
              "log.progress=false", "log.tensorboard=false",
              "model.precision=fp32"]  # the gaps below are fp32's (auto: bf16 on a GPU, autocast vs DeepSpeed's bf16)
    if gpu:  # every role on the GPU
        common.append("run.device=cuda")
    on_ray = ["cluster.backend=ray", f"cluster.learner_ranks={ranks}", f"cluster.rollout_workers={ranks}",
              "cluster.reward_workers=1", "cluster.deepspeed_config=configs/deepspeed/zero2.json",
              "ppo.micro_batch_size_per_device=4",
              *(["cluster.gpus_per_worker=1", "cluster.placement=colocated"] if gpu else ["cluster.num_cpus=8"])]
    start = time.perf_counter()
    run_ppo(load_config(None, [f"run.dir={work / 'carft-ray'}", *common, *on_ray]))
    seconds = time.perf_counter() - start
    run_ppo(load_config(None, [f"run.dir={work / 'carft-local'}", *common, f"ppo.micro_batch_size_per_device={4 * ranks}"]))
    remote, local = ([json.loads(x) for x in (work / d / "metrics.jsonl").read_text().splitlines()]
                     for d in ("carft-ray", "carft-local"))
    out = [row("carft-ray", name, "iterations", len(remote), "== 2", len(remote) == 2),
           row("carft-ray", name, "wall s (2 iterations, with start-up)", round(seconds, 1))]
    if not remote:
        return out
    first = remote[0]
    finite = all(math.isfinite(v) for r in remote for v in r.values() if isinstance(v, float))
    diff = float(remote[-1].get("rollout/logprob_diff", float("nan")))
    head = work / "carft-ray" / "checkpoints" / "ckpt-2" / "model" / "value_head.safetensors"
    out += [
        row("carft-ray", name, "metrics finite", finite, "True", finite),
        row("carft-ray", name, "carft/n_positive (iteration 1)", first.get("carft/n_positive", 0), "> 0",
            first.get("carft/n_positive", 0) > 0),
        row("carft-ray", name, "timing/anchor s (on the learners)", round(first.get("timing/anchor", 0.0), 3), "> 0",
            first.get("timing/anchor", 0.0) > 0),
        row("carft-ray", name, "rollout/logprob_diff (iteration 2)", f"{diff:.2e}", "< 1e-3", diff < 1e-3),
        row("carft-ray", name, "CARFT head in the checkpoint", head.exists(), "True", head.exists()),
    ]
    same = first["rollout/response_len_mean"] == local[0]["rollout/response_len_mean"]
    out.append(row("carft-ray", name, "same greedy responses as in-process", same))
    if same:  # near-tie argmaxes may differ between devices; then the losses are not comparable
        limit = 1e-3 if gpu else 1e-4
        for key in ("carft/loss", "carft/neg_cos_mean", "policy/loss", "value/loss"):
            gap = abs(first[key] - local[0][key]) / max(abs(local[0][key]), 1e-6)
            out.append(row("carft-ray", name, f"{key} relative gap vs in-process", f"{gap:.1e}", f"< {limit}",
                           gap < limit))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path, default=ROOT / "runs/gpu-checks/results.jsonl")
    p.add_argument("--work", type=Path, default=ROOT / "runs/gpu-checks/work")
    args = p.parse_args()
    from rlft.utils.logging import quiet_libraries

    quiet_libraries()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = check(args.work, args.device)
    append(args.out, rows)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
