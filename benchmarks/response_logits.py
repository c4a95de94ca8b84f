"""Peak memory and time of one RL train forward+backward with logits for every position vs only the
T + 1 positions that score the response (`PolicyModel(..., logits_to_keep=T+1)`, issue 10), and the same
step with the weights in bfloat16 (`--modes keep keep-bf16`).

    python benchmarks/response_logits.py [--model smollm2-135m] [--batch 8 --prompt 150 --response 200]
    python benchmarks/response_logits.py --modes keep keep-bf16 --batch 4     # fp32 vs bf16 weights

Each setting runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("full", "keep", "keep-bf16")


def one(model_path: str, batch: int, prompt: int, response: int, keep: bool, dtype: str = "float32") -> dict:
    import torch

    from rlft.algos.ppo import logprobs_from_logits
    from rlft.models.loading import load_policy
    from rlft.models.policy import PolicyModel, response_slice

    torch.manual_seed(0)
    model = PolicyModel(load_policy(model_path, dtype=dtype)[0], value_head="linear")
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
    return {"keep": keep, "dtype": dtype, "seconds": min(times), "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=150)
    parser.add_argument("--response", type=int, default=200)
    parser.add_argument("--modes", nargs="+", default=["full", "keep"], choices=MODES)
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args()
    if args.child:
        from rlft.config import ModelConfig
        from rlft.models.loading import resolve_model_path

        path = resolve_model_path(ModelConfig(path=args.model), "runs/bench_logits", 0, [])
        print(json.dumps(one(str(path), args.batch, args.prompt, args.response, args.child != "full",
                             "bfloat16" if args.child.endswith("bf16") else "float32")))
        return
    rows = []
    for mode in args.modes:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--batch", str(args.batch),
                              "--prompt", str(args.prompt), "--response", str(args.response)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| logits for | weights | step time (s) | peak RSS (MB) | RSS growth in the step (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {'response positions (T+1)' if r['keep'] else 'all positions'} | {r['dtype']} | {r['seconds']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['step_rss_mb']:.0f} |")
    first = rows[0]
    for r in rows[1:]:
        print(f"ratio ({r['dtype']}, {'T+1' if r['keep'] else 'all'} / {first['dtype']}, "
              f"{'T+1' if first['keep'] else 'all'}): time {r['seconds'] / first['seconds']:.2f}, step RSS "
              f"{r['step_rss_mb'] / max(first['step_rss_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
