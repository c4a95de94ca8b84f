"""Peak memory and time of one RL train forward+backward with logits for every position vs only the
T + 1 positions that score the response (`PolicyModel(..., logits_to_keep=T+1)`, issue 10).

    python benchmarks/response_logits.py [--model smollm2-135m] [--batch 8 --prompt 150 --response 200]

Each setting runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(model_path: str, batch: int, prompt: int, response: int, keep: bool) -> dict:
    import torch

    from rlft.algos.ppo import logprobs_from_logits
    from rlft.models.policy import load_policy
    from rlft.models.value_head import PolicyModel, response_slice

    torch.manual_seed(0)
    model = PolicyModel(load_policy(model_path)[0], value_head="linear")
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt + response))
    mask = torch.ones_like(ids)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = model(ids, mask, logits_to_keep=response + 1 if keep else 0)
        logprobs = logprobs_from_logits(response_slice(out.logits, prompt, response).float(), ids[:, prompt:])
        (-(logprobs.mean()) + response_slice(out.values, prompt, response).pow(2).mean()).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"keep": keep, "seconds": min(times), "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=150)
    parser.add_argument("--response", type=int, default=200)
    parser.add_argument("--child", choices=["full", "keep"])
    args = parser.parse_args()
    if args.child:
        from rlft.models.policy import resolve_model_path
        from rlft.config import ModelConfig

        path = resolve_model_path(ModelConfig(path=args.model), "runs/bench_logits", 0, [])
        print(json.dumps(one(str(path), args.batch, args.prompt, args.response, args.child == "keep")))
        return
    rows = []
    for mode in ("full", "keep"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--batch", str(args.batch),
                              "--prompt", str(args.prompt), "--response", str(args.response)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    full, keep = rows
    print(f"| logits for | step time (s) | peak RSS (MB) | RSS growth in the step (MB) |")
    print(f"|---|---|---|---|")
    for r in rows:
        print(f"| {'response positions (T+1)' if r['keep'] else 'all positions'} | {r['seconds']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['step_rss_mb']:.0f} |")
    print(f"ratio (response-only / all): time {keep['seconds'] / full['seconds']:.2f}, step RSS "
          f"{keep['step_rss_mb'] / max(full['step_rss_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
