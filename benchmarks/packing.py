"""Packed vs padded learner forwards (`sft.packing`, `ppo.packing`) on one config: how much of the decoder's
work was padding, and the step times, measured interleaved in one process on the same batches.

    python benchmarks/packing.py --model runs/demo/checkpoints/ckpt-N/model --threads 1            # the demo
    python benchmarks/packing.py --model tiny --sft-steps 3 --iterations 2 --out /tmp/packing.md     # smoke

Why not a flag of `sft_throughput.py` / `ppo_throughput.py`: those run each side in its own process, one after
the other, and time whole runs; here the two settings must see identical batches and the same machine load (this
machine is shared), so both learners live in one process and their steps alternate (padded first on even steps,
packed first on odd ones). The peer benchmarks take `--rlft-set sft.packing=false` / `ppo.packing=false` for
padded rlft runs.

What runs (the config `--config`, default configs/demo.yaml, with `run.device=cpu`, `model.precision=fp32` and
`--set` overrides; `--model` is `model.path`: an SFT warm-up gives realistic response lengths, a random-init model
mostly samples to the token budget):
- sft: two SFT learners (`build_sft_learner`, one with `sft.packing=false`, one with true) over copies of the
  model; `--sft-steps` optimizer steps of `sft.sequences_per_step` examples in epoch-0 order, each step's
  micro-batches (`step_micro_batches`) through both learners; timed: `train_step`;
- rl, per `--algos` (default reft and grpo; grpo with `rollout.samples_per_prompt=4` and a quarter of the
  prompts, so prompts are shared and an iteration has as many samples):
  every iteration samples one rollout batch from a frozen copy of the model (HF engine, the config's sampling) and
  scores it; both sides then run the loop's own phases on copies of it: step 3 `evaluate_batch` (the policy's
  log-prob and value pass, the reference's log-probs) and step 5 `ppo_update` (`ppo.ppo_epochs` x minibatches of
  train steps), after step 4's advantages; timed: those two phases.
Padding: a forward pre-hook on each side's decoders counts the token positions every decoder call runs (the
padded forward: B x S per micro-batch, or with shared prompts U x P + B x T; the packed forward: the real tokens);
"padding removed" = 1 - packed / padded positions. The first step / iteration of each side is excluded from the
timing (warm-up); times are medians.
"""

from __future__ import annotations

import rlft  # noqa: F401  # isort: skip  (first: its host-memory policy acts before torch is imported)

import argparse
import copy
import datetime
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIDES = ("padded", "packed")


def count_positions(lm, counter: list[int]) -> None:
    """Adds the token positions of every decoder call of `lm` to counter[0]."""
    lm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: counter.__setitem__(0, counter[0] + kwargs["input_ids"].numel()), with_kwargs=True)


def side_configs(cfg, phase: str) -> dict:
    """The padded and the packed copy of `cfg`, differing in `<phase>.packing` only (phase: "sft" or "ppo")."""
    out = {}
    for side in SIDES:
        out[side] = copy.deepcopy(cfg)
        getattr(out[side], phase).packing = side == "packed"
    return out


def order_of(step: int) -> tuple[str, ...]:
    return SIDES if step % 2 == 0 else SIDES[::-1]


def bench_sft(cfg, steps: int) -> dict:
    from rlft.config import derive_sft_geometry
    from rlft.dist.local import build_sft_learner
    from rlft.tasks.chat import PromptFormat
    from rlft.tasks.encoding import IGNORE, encode_examples, epoch_order
    from rlft.trainers.sft import make_loss_fn, step_micro_batches
    from rlft.utils.device import resolve_compute
    from rlft.workspace import load_split, prepare_model

    train = load_split(cfg, "train")
    compute = resolve_compute(cfg)
    learners, counters, tokenizer = {}, {}, None
    for side, side_cfg in side_configs(cfg, "sft").items():
        lm, tokenizer, model_path, adapter = prepare_model(side_cfg, train, compute=compute)
        learners[side] = build_sft_learner(side_cfg, lm, model_path, adapter, total_steps=steps, compute=compute)[0]
        counters[side] = [0]
        count_positions(lm, counters[side])
    examples, _ = encode_examples(tokenizer, train, cfg.data.style, cfg.sft.max_seq_tokens, fmt=PromptFormat.of(cfg.data))
    geo = derive_sft_geometry(cfg)
    order = epoch_order(len(examples), cfg.run.seed, 0)
    times = {side: [] for side in SIDES}
    losses = {side: [] for side in SIDES}
    tokens = positions = 0
    for step in range(steps):
        idx = order[step * geo.sequences_per_step:(step + 1) * geo.sequences_per_step]
        micro = step_micro_batches([examples[j] for j in idx], geo, tokenizer.pad_token_id)
        n_label = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro)
        tokens += sum(int(mb["attention_mask"].sum()) for mb in micro)
        positions += sum(mb["attention_mask"].numel() for mb in micro)
        for side in order_of(step):
            start = time.perf_counter()
            metrics = learners[side].train_step(micro, make_loss_fn(n_label))
            times[side].append(time.perf_counter() - start)
            losses[side].append(metrics["sft/loss"])
    return {"steps": steps, "tokens": tokens, "batch_positions": positions,
            "decoder_positions": {side: counters[side][0] for side in SIDES}, "seconds": times, "losses": losses,
            "geometry": f"{geo.sequences_per_step} sequences/step in micro-batches of {geo.micro_batch_size_per_device}"}


def bench_rl(cfg, iterations: int) -> dict:
    import torch

    from rlft.dist.local import build_local_roles
    from rlft.reward.role import RewardRole, completion_ids
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.factory import hf_engine
    from rlft.tasks.chat import PromptFormat
    from rlft.tasks.encoding import encode_prompts
    from rlft.trainers.algorithms import plan
    from rlft.trainers.ppo import compute_advantages, evaluate_batch, ppo_update, prompt_indices
    from rlft.types import TrainBatch
    from rlft.utils.device import resolve_compute
    from rlft.workspace import load_split, prepare_model

    run = plan(cfg)
    train = load_split(cfg, "train")
    compute = resolve_compute(cfg)
    sampler_lm, tokenizer, _, sampler_adapter = prepare_model(cfg, train, compute=compute)
    sampler = hf_engine(cfg, sampler_lm, tokenizer, sampler_adapter, compute=compute)  # frozen: lengths stay realistic
    reward = RewardRole(cfg)
    loops, counters = {}, {}
    for side, side_cfg in side_configs(cfg, "ppo").items():
        lm, tokenizer, model_path, adapter = prepare_model(side_cfg, train, compute=compute)
        roles = build_local_roles(side_cfg, lm, tokenizer, model_path, adapter, total_steps=iterations, compute=compute)
        loops[side] = SimpleNamespace(cfg=side_cfg, plan=run, roles=roles, tokenizer=tokenizer)
        counters[side] = [0]
        for model in {id(m): m for m in (lm, getattr(roles.reference, "model", None) and roles.reference.model.lm)
                      if m is not None}.values():
            count_positions(model, counters[side])
    prompts = encode_prompts(tokenizer, train, cfg.data.style, cfg.data.max_prompt_tokens, fmt=PromptFormat.of(cfg.data))
    params = SamplingParams(n=cfg.rollout.samples_per_prompt, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens, logprobs=False)
    times = {side: {"evaluate": [], "update": []} for side in SIDES}
    phase_positions = {side: {"evaluate": 0, "update": 0} for side in SIDES}
    losses = {side: [] for side in SIDES}
    tokens = positions = 0
    for it in range(iterations):
        indices = prompt_indices(len(train), cfg.rollout.prompts_per_step, cfg.run.seed, it)
        rollout = sampler.generate([prompts[i] for i in indices], params)
        owners = [train[indices[j]] for j in rollout.prompt_index.tolist()]
        texts = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        scores, _ = reward.score(texts, owners, rollout.truncated, completion_ids(rollout))
        mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1)
        tokens += int(mask.sum())
        positions += mask.numel()
        for side in order_of(it):
            loop = loops[side]
            batch = TrainBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask, scores)
            m: dict = {}
            before = counters[side][0]
            start = time.perf_counter()
            evaluate_batch(loop, batch, owners, m)
            middle = time.perf_counter()
            phase_positions[side]["evaluate"] += counters[side][0] - before
            m.update(compute_advantages(cfg, run, batch, run.kl_coef))
            before, before_update = counters[side][0], time.perf_counter()
            m.update(ppo_update(loop.cfg, run, loop.roles, batch, kl_coef=run.kl_coef, value_only=False,
                                seed=cfg.run.seed * 7919 + it, state={}))
            end = time.perf_counter()
            phase_positions[side]["update"] += counters[side][0] - before
            times[side]["evaluate"].append(middle - start)
            times[side]["update"].append(end - before_update)
            losses[side].append(float(m["policy/loss"]))
    return {"iterations": iterations, "tokens": tokens, "batch_positions": positions,
            "decoder_positions": phase_positions, "seconds": times, "losses": losses,
            "geometry": (f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt} samples, "
                         f"<= {cfg.rollout.max_new_tokens} new tokens, "
                         f"micro-batches of {cfg.ppo.micro_batch_size_per_device}, "
                         f"{cfg.ppo.ppo_epochs} PPO epochs")}


def sweep(cfg, fractions: list[float], repeats: int = 8) -> list[dict]:
    """Synthetic micro-batches of 4 prompts x 4 samples (48 prompt tokens, 64 response positions), the responses
    cut short at random so that `fraction` of the response positions are padding: one RL forward + backward
    (T + 1 logits, a value head), padded vs packed, with and without shared prompts, on copies of the model."""
    import torch

    from rlft.models.policy import PolicyModel, response_slice
    from rlft.utils.device import resolve_compute
    from rlft.workspace import load_split, prepare_model

    train = load_split(cfg, "train")
    compute = resolve_compute(cfg)
    B, U, P, T = 16, 4, 48, 64
    models = {}
    for packing in (False, True):
        lm = prepare_model(cfg, train, compute=compute)[0]
        for shared in (False, True):
            models[packing, shared] = PolicyModel(lm, value_head="linear", packing=packing, prefix_sharing=shared)
    gen = torch.Generator().manual_seed(0)
    vocab = lm.config.vocab_size
    ids = torch.cat([torch.randint(3, vocab, (U, P), generator=gen).repeat_interleave(B // U, 0),
                     torch.randint(3, vocab, (B, T), generator=gen)], 1)
    out = []
    for fraction in fractions:
        mask = torch.ones_like(ids)
        lengths = (T * (1 - 2 * fraction * torch.rand(B, generator=gen))).long().clamp(1, T)
        for b in range(B):
            mask[b, P + int(lengths[b]):] = 0
        row = {"response_padding": 1 - float(mask[:, P:].float().mean())}
        for shared in (False, True):
            times = {side: [] for side in SIDES}
            for rep in range(repeats):
                for side in order_of(rep):
                    model = models[side == "packed", shared]
                    start = time.perf_counter()
                    output = model(ids, mask, None, T + 1, P)
                    loss = (response_slice(output.logits, P, T).log_softmax(-1)[..., 0] * mask[:, P:]).sum()
                    (loss + output.values.sum()).backward()
                    model.zero_grad(set_to_none=True)
                    times[side].append(time.perf_counter() - start)
            row["shared" if shared else "unshared"] = median_after_warmup(times["packed"]) / median_after_warmup(times["padded"])
        out.append(row)
    return out


def median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def report(args, results: dict) -> str:
    import torch
    from peers import machine, versions

    lines = [f"## Packed vs padded learner forwards ({datetime.date.today().isoformat()})", "",
             f"- command: `python benchmarks/packing.py {' '.join(sys.argv[1:])}`",
             f"- machine: {machine()}; torch threads {torch.get_num_threads()}; {versions()}",
             f"- config: {args.config} with model.path={args.model}, fp32, CPU", "",
             "| phase | batch geometry | padding in the batches | decoder positions, padded -> packed | removed "
             "| s/step padded | s/step packed | packed / padded time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "sweep":
            continue
        batch_pad = 1 - r["tokens"] / r["batch_positions"]
        phases = ["train_step"] if name == "sft" else ["evaluate", "update"]
        for phase in phases:
            t = {side: median_after_warmup(r["seconds"][side] if name == "sft" else r["seconds"][side][phase])
                 for side in SIDES}
            padded, packed = (r["decoder_positions"][side] if name == "sft" else r["decoder_positions"][side][phase]
                              for side in SIDES)
            step = "step 3 (log-probs, values, reference)" if phase == "evaluate" else "step 5 (PPO update)"
            label = name if name == "sft" else f"{name}: {step}"
            lines.append(f"| {label} | {r['geometry']} | {batch_pad * 100:.1f}% | {padded:,} -> {packed:,} | "
                         f"{(1 - packed / padded) * 100:.1f}% | {t['padded']:.3f} | {t['packed']:.3f} | "
                         f"{t['packed'] / t['padded']:.2f} |")
    lines.append("")
    if "sweep" in results:
        lines += ["Synthetic micro-batches (16 rows: 4 prompts x 4 samples, 48 + 64 positions), RL forward + backward, "
                  "packed / padded time:", "",
                  "| padding of the response positions | without shared prompts | with shared prompts |", "|---|---|---|"]
        lines += [f"| {r['response_padding'] * 100:.0f}% | {r['unshared']:.2f} | {r['shared']:.2f} |" for r in results["sweep"]]
        lines.append("")
    for name, r in results.items():
        if name == "sweep":
            continue
        gap = max(abs(a - b) for a, b in zip(r["losses"]["padded"], r["losses"]["packed"]))
        lines.append(f"- {name}: largest loss difference padded vs packed over the run {gap:.2e}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    parser.add_argument("--model", default="tiny", help="model.path (an SFT warm-up gives realistic response lengths)")
    parser.add_argument("--sft-steps", type=int, default=12, help="SFT optimizer steps (the first is a warm-up)")
    parser.add_argument("--iterations", type=int, default=6, help="RL iterations per algorithm (the first is a warm-up)")
    parser.add_argument("--algos", nargs="*", default=["reft", "grpo"], help="RL algorithms (none: SFT only)")
    parser.add_argument("--sweep", default="", help="response padding fractions of a synthetic sweep, e.g. 0,0.1,0.2")
    parser.add_argument("--sweep-repeats", type=int, default=8, help="forward + backward pairs per sweep point")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--run-dir", default=str(ROOT / "runs/bench_packing"))
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    args = parser.parse_args()

    import torch

    from rlft.config import load_config
    from rlft.utils.logging import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = [f"run.dir={args.run_dir}", f"model.path={args.model}", "run.device=cpu", "model.precision=fp32",
              "run.resume=false", "log.progress=false", "log.tensorboard=false", *args.set]
    results = {}
    if args.sft_steps:
        cfg = load_config(args.config, common)
        torch.manual_seed(cfg.run.seed)
        results["sft"] = bench_sft(cfg, args.sft_steps)
    if args.sweep:
        results["sweep"] = sweep(load_config(args.config, common), [float(x) for x in args.sweep.split(",")],
                                 args.sweep_repeats)
    for algo in args.algos:
        extra = []
        if algo == "grpo":  # groups of 4 (prompts shared), as many samples per iteration as the config's prompts
            prompts = load_config(args.config, [*common, "algo=reft"]).rollout.prompts_per_step
            extra = ["rollout.samples_per_prompt=4", f"rollout.prompts_per_step={max(1, prompts // 4)}"]
        cfg = load_config(args.config, [*common, f"algo={algo}", *extra])
        torch.manual_seed(cfg.run.seed)
        results[algo] = bench_rl(cfg, args.iterations)
        if args.out:  # what is measured so far, in case a later part fails
            Path(args.out).write_text(report(args, results))
    text = report(args, results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
