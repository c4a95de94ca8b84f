"""Which reasoning paths does a policy sample on its training questions? (issue 18, the paper's regime)

ReFT's premise is that RL learns from many sampled reasoning paths where SFT sees one annotated CoT per
question. This measures how many different correct paths a checkpoint actually samples:

    python benchmarks/sampled_paths.py benchmarks/configs/paper_regime_varied.yaml \
        runs/paper_varied/sft_full/seed1/checkpoints/ckpt-260 runs/paper_varied/runs/reft/seed1/checkpoints/ckpt-150

For every training question of the config's data (`data.*`), `--samples` responses at the rollout's temperature
(`rollout.temperature`, `rollout.max_new_tokens`), scored by the answer checker (`rewards.math_verdicts`).
Per checkpoint: the share of samples that are correct; of the correct ones, the share whose reasoning is the
annotated CoT word for word, the share that reach the answer another way, and of those the ones whose every
`a op b = c` step is right (a valid other order, not a lucky slip); the questions with at least one
correct sample, and with a correct sample that is not the annotation; distinct correct reasoning texts per
question. Prints a Markdown table (and writes it to `--out` when given).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from rewards import math_verdicts
from rlft.config import load_config
from rlft.reward.judgment import reasoning_steps
from rlft.tasks.prompts import prompt_text
from rlft.workspace import load_split

_STEP = re.compile(r"(-?\d+(?:\.\d+)?) ([-+*/]) (-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)")


def steps_hold(reasoning: str) -> bool:
    """Every `a op b = c` in the reasoning is right, and there is at least one: a valid path, not a lucky one."""
    steps = _STEP.findall(reasoning)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b if b else float("nan")}
    return bool(steps) and all(abs(ops[op](float(a), float(b)) - float(c)) < 1e-9 for a, op, b, c in steps)


def reasoning_of(text: str) -> str:
    """The reasoning of a response (`reasoning_steps`: its lines without the answer line), whitespace-normalised."""
    return " ".join(word for step in reasoning_steps(text) for word in step.split())


@torch.inference_mode()
def sample(model_dir: Path, prompts: list[str], n: int, max_new_tokens: int, temperature: float, batch: int,
           seed: int) -> list[list[str]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    torch.manual_seed(seed)
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        enc = tok(chunk, return_tensors="pt", padding=True)
        ids = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [texts[i * n:(i + 1) * n] for i in range(len(chunk))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint dirs (their model/ folder is loaded)")
    parser.add_argument("--samples", type=int, default=8, help="responses per question")
    parser.add_argument("--batch", type=int, default=32, help="questions per generate call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    cfg = load_config(args.config, [])
    records = load_split(cfg, "train")
    prompts = [prompt_text(r, cfg.data.style) for r in records]
    n = args.samples
    rows = []
    for ckpt in args.checkpoints:
        start = time.perf_counter()
        model_dir = Path(ckpt) / "model" if (Path(ckpt) / "model").is_dir() else Path(ckpt)
        texts = sample(model_dir, prompts, n, cfg.rollout.max_new_tokens, cfg.rollout.temperature, args.batch,
                       args.seed)
        flat = [t for group in texts for t in group]
        verdicts = math_verdicts(flat, answer=[str(r.answer) for r in records for _ in range(n)])
        correct = same = other = valid_other = q_any = q_other = distinct = 0
        for i, record in enumerate(records):
            annotated = reasoning_of(record.cot)
            paths = set()
            for j, text in enumerate(texts[i]):
                if verdicts[i * n + j].status != "correct":
                    continue
                correct += 1
                path = reasoning_of(text)
                paths.add(path)
                same += path == annotated
                other += path != annotated
                valid_other += path != annotated and steps_hold(path)
            q_any += bool(paths)
            q_other += any(p != annotated for p in paths)
            distinct += len(paths)
        total = len(flat)
        share = max(correct, 1)
        rows.append((ckpt, correct / total, same / share, other / share, valid_other / share, q_any / len(records),
                     q_other / len(records), distinct / max(q_any, 1)))
        print(f"{ckpt}: {correct}/{total} correct, {time.perf_counter() - start:.0f} s", flush=True)

    lines = [(f"{len(records)} training questions x {n} samples at temperature {cfg.rollout.temperature}, "
              f"at most {cfg.rollout.max_new_tokens} new tokens (`{args.config}`)."), "",
             ("| checkpoint | samples correct | of those: the annotated CoT | another path | another path, every step "
              "right | questions with a correct sample | with a correct non-annotated path | distinct correct paths "
              "per solved question |"),
             "|---|---|---|---|---|---|---|---|"]
    for ckpt, acc, same, other, valid, q_any, q_other, distinct in rows:
        lines.append(f"| `{ckpt}` | {acc:.1%} | {same:.1%} | {other:.1%} | {valid:.1%} | {q_any:.1%} | {q_other:.1%} "
                     f"| {distinct:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
