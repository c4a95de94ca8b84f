"""The `rlft` command.

    rlft sft   [CONFIG.yaml] [section.key=value ...]            SFT warm-up (+ held-out eval per epoch)
    rlft train [CONFIG.yaml] model.path=WARMUP [algo=reft ...]  RL (ReFT PPO or a baseline, or NLFT) from a warm-up
    rlft compare [CONFIG.yaml] [key=value ...]                  SFT vs ReFT vs CARFT (+ baselines): table, plots
    rlft eval  [CONFIG.yaml] --model CKPT [--samples k] [--rerank vote|value] [key=value ...]
                                                                greedy accuracy, majority vote@k, value rerank@k
    rlft data  preview|export [CONFIG.yaml] [--split S] ...     look at / export a task's records
    rlft model tiny|smollm2-135m [--out DIR]                    build the tiny model / convert SmolLM2
    rlft model merge CKPT --out DIR                             a LoRA checkpoint as a plain transformers model
    rlft check --gold G ANSWER | FILE.jsonl --out V.jsonl       the answer checker
    rlft config [CONFIG.yaml] [key=value ...] [--keys]          print the resolved config / every key

Every command that takes a config accepts dotted overrides after it; `rlft config --keys` lists every key
with its type, default and meaning. Errors in user input print one line (`rlft: error: ...`) and exit 2
(set RLFT_DEBUG=1 for the traceback). A run that stops on a runtime fault (a lost Ray worker, too many
non-finite steps in a row) prints one line naming the last checkpoint and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rlft.config import ConfigError, describe, load_config, split_config_args, to_dict
from rlft.utils.logging import quiet_libraries, write_jsonl

EPILOG = "Config keys (set in YAML or as section.key=value):\n" + describe()


def _config(items: list[str], extra: list[str] = (), command: str | None = None):
    """The config of `items` ([CONFIG.yaml] key=value ...); for a run `command`, checked for what it runs."""
    path, overrides = split_config_args(items)
    return load_config(path, [*overrides, *extra], command=command)


def cmd_sft(args: argparse.Namespace) -> int:
    from rlft.trainers.sft import run_sft

    summary = run_sft(_config(args.config, command="sft"))
    print(json.dumps({k: summary[k] for k in ("best_accuracy", "best_checkpoint", "train_seconds", "train_tokens_per_s")}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rlft.trainers import algorithms
    from rlft.trainers.nlft import run_nlft
    from rlft.trainers.ppo import run_ppo
    from rlft.trainers.selftrain import run_offline_st

    cfg = _config(args.config, command="train")
    loop = algorithms.get(cfg.algo).loop
    if loop == "offline_st":  # expert iteration: sample once, then SFT (no RL loop)
        summary = run_offline_st(cfg)
        print(json.dumps({k: summary[k] for k in ("algo", "offline_st", "best_accuracy", "best_checkpoint", "train_seconds")}, indent=2))
        return 0
    if loop == "nlft":  # sample and judge once, then epochs of the NLFT loss (no RL loop)
        summary = run_nlft(cfg)
        print(json.dumps({k: summary[k] for k in ("algo", "nlft", "best_accuracy", "best_checkpoint", "train_seconds")}, indent=2))
        return 0
    summary = run_ppo(cfg)
    print(json.dumps({k: summary[k] for k in ("algo", "iterations_done", "best_accuracy", "best_checkpoint", "train_seconds")}, indent=2))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from rlft.launch import launch

    return launch(args.config, address=args.address, working_dir=args.working_dir, wait=not args.no_wait,
                  job_id=args.job_id, command=args.command)


def cmd_compare(args: argparse.Namespace) -> int:
    from rlft.experiments.compare import run_compare

    path, overrides = split_config_args(args.config)
    results = run_compare(path, overrides)
    failed = sum(m["failed"] for m in results["methods"].values())
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlft.adapters import ADAPTER_FILE, load_policy_and_adapter
    from rlft.evaluate import evaluate
    from rlft.models.loading import resolve_model_path
    from rlft.rollout.factory import hf_engine
    from rlft.tasks.chat import PromptFormat
    from rlft.utils.device import resolve_compute, weights_dtype
    from rlft.utils.logging import print0
    from rlft.workspace import load_split, tokenizer_corpus

    extra = []
    if args.samples is not None:
        extra.append(f"eval.samples={args.samples}")
    cfg = _config(args.config, extra, command="eval")
    if args.rerank == "value" and cfg.eval.samples < 2:
        raise ConfigError(f"--rerank value needs --samples k >= 2 (eval.samples={cfg.eval.samples}): "
                          "one sample per question leaves nothing to rank")
    if not args.model and cfg.model.path == "tiny":  # the default would build and score an untrained model
        raise ConfigError("rlft eval needs a trained model: pass --model RUN/checkpoints/ckpt-N or model.path=... "
                          "(model.path=tiny is a new random model)")
    test = load_split(cfg, "test")
    if args.model:
        model_dir = Path(args.model)
        if any((model_dir / "model" / name).exists() for name in ("config.json", ADAPTER_FILE)):  # a checkpoint folder
            model_dir = model_dir / "model"
    else:
        model_dir = resolve_model_path(cfg.model, cfg.run.dir, cfg.run.seed,
                                       tokenizer_corpus(load_split(cfg, "train"), cfg.data.style))
    head_dir, head = _value_head_for_rerank(model_dir) if args.rerank == "value" else (None, None)
    compute = resolve_compute(cfg)
    print0(f"rlft eval: {compute.describe()}, weights {weights_dtype(cfg, compute, trains=False)}")
    # the folder decides: a whole model, or adapter-only files put back on the base model they name
    model, tokenizer, adapter = load_policy_and_adapter(model_dir, dtype=weights_dtype(cfg, compute, trains=False),
                                                        device=compute.device,
                                                        attn_implementation=cfg.model.attn_implementation)
    engine = hf_engine(cfg, model, tokenizer, adapter, batch_size=cfg.eval.batch_size, compute=compute)
    rank_fn = None if head is None else _value_rank_fn(model, adapter, model_dir, head_dir, head, cfg.eval.batch_size,
                                                       cfg, compute)
    summary, predictions = evaluate(
        engine, tokenizer, test, style=cfg.data.style, max_new_tokens=cfg.eval.max_new_tokens,
        samples=cfg.eval.samples, temperature=cfg.eval.temperature, partial_reward=cfg.eval.partial_reward,
        max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.run.seed, rank_fn=rank_fn, fmt=PromptFormat.of(cfg.data),
    )
    out = Path(args.out) if args.out else Path(cfg.run.dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", predictions)
    summary["model"] = str(model_dir)
    summary["adapter"] = adapter.kind
    summary["rerank"] = args.rerank
    (out / "eval_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'predictions.jsonl'} and {out / 'eval_summary.json'}")
    return 0


def _value_head_for_rerank(model_dir: Path) -> tuple[Path, str]:
    """The folder holding the value head and its kind: the checkpoint's own model, or, for a ReFT run with
    `ppo.critic=separate`, the critic beside it (`ckpt-N/critic/model`). Checked before the policy loads, so
    a wrong folder fails fast."""
    from rlft.models.policy import VALUE_HEAD_FILE, value_head_kind

    for folder in (model_dir, model_dir.parent / "critic" / "model"):
        kind = value_head_kind(folder)
        if kind is not None:
            return folder, kind
    raise ValueError(f"{model_dir} has no {VALUE_HEAD_FILE}: --rerank value needs a ReFT/CARFT checkpoint with "
                     "a value head (RUN/checkpoints/ckpt-N of `rlft train` with algo=reft or carft)")


def _value_rank_fn(lm, adapter, model_dir: Path, head_dir: Path, head: str, micro_batch_size: int, cfg, compute):
    """`rank_fn` for `evaluate`: the checkpoint's value head on the engine's model (shared weights), or a
    separate critic's own model and head (loaded like the evaluated model: same device, dtype, precision)."""
    import functools

    from safetensors.torch import load_file

    from rlft.evaluate import value_scores
    from rlft.models.loading import load_for_run
    from rlft.models.policy import VALUE_HEAD_FILE, PolicyModel

    if head_dir == model_dir:
        policy = PolicyModel(lm, value_head=head, adapter=adapter, mixed_precision=compute.mixed)
        policy.value_head.load_state_dict(load_file(str(model_dir / VALUE_HEAD_FILE)))
    else:  # a separate critic: a whole model of its own with the head
        policy = PolicyModel(load_for_run(head_dir, cfg, compute, trains=False)[0], value_head=head,
                             mixed_precision=compute.mixed)
        policy.load_weights(head_dir)
    return functools.partial(value_scores, policy.eval(), micro_batch_size=micro_batch_size)


def cmd_data(args: argparse.Namespace) -> int:
    from rlft.workspace import load_split

    cfg = _config(args.config)
    records = load_split(cfg, args.split)
    if args.action == "preview":
        from rlft.tasks.prompts import prompt_text, target_text

        print(f"{len(records)} {args.split} records from {cfg.data.train if args.split == 'train' else cfg.data.test}")
        if cfg.data.prompt_format == "chat":
            print("(data.prompt_format=chat: the model sees each question and target inside its tokenizer's chat "
                  "template; shown here in the raw format)")
        for r in records[: args.n]:
            print("-" * 72)
            print(prompt_text(r, cfg.data.style) + (target_text(r, cfg.data.style) if (r.cot or r.program) else "<no annotation>"))
            print(f"[gold: {r.answer}]")
        return 0
    if not args.out:
        raise ConfigError("rlft data export needs --out FILE.jsonl")
    write_jsonl(args.out, [r.to_dict() for r in records])
    print(f"wrote {len(records)} records to {args.out}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    if args.kind == "merge":
        from rlft.models.merge import merge_checkpoint

        print(merge_checkpoint(args.checkpoint, args.out, dtype=args.dtype))
        return 0
    if args.kind == "smollm2-135m":
        from rlft.models.smollm import convert_smollm2

        print(convert_smollm2(args.out))
        return 0
    from rlft.models.tiny import build_tiny_model
    from rlft.workspace import load_split, tokenizer_corpus

    cfg = _config(args.config)
    t = cfg.model.tiny
    out = build_tiny_model(
        args.out or Path(cfg.run.dir) / "tiny-model", tokenizer_corpus(load_split(cfg, "train"), cfg.data.style),
        seed=cfg.run.seed, vocab_size=t.vocab_size, hidden_size=t.hidden_size, head_dim=t.head_dim,
        num_layers=t.num_layers, intermediate_size=t.intermediate_size, max_position_embeddings=t.max_position_embeddings,
    )
    print(out)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print(describe())
        return 0
    import yaml

    print(yaml.safe_dump(to_dict(_config(args.config)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="rlft", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sft", help="SFT warm-up with held-out eval per epoch", epilog=EPILOG, formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("train", help="RL from a warm-up checkpoint (algo=reft|grpo|rloo|reinforce_pp|online_st|offline_st|nlft)",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]; model.path = the warm-up checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("launch", help="submit `rlft train` (or `rlft sft`) to a Ray cluster (ray job submit, "
                                      "cluster.backend=ray)",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.add_argument("--address", help="the cluster's job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("--job-id", help="submission id (default: Ray picks one)")
    p.add_argument("--command", choices=["train", "sft"], default="train",
                   help="the rlft command the job runs (default: train; sft: the warm-up on cluster.learner_ranks)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("compare", help="SFT vs ReFT vs CARFT (and baselines) from one warm-up, over seeds: table + plots",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eval", help="greedy accuracy / majority vote@k / value rerank@k on the held-out split",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.add_argument("--model", help="HF folder or checkpoint folder to evaluate (default: model.path, which must "
                                   "not be the built-in random `tiny`)")
    p.add_argument("--samples", type=int, help="k samples per question for majority voting (default eval.samples)")
    p.add_argument("--rerank", choices=["vote", "value"], default="vote",
                   help="vote: eval/accuracy by majority vote only (default); value: also eval/rerank_accuracy, the "
                        "sample the checkpoint's value head ranks highest (ReFT/CARFT checkpoints, k >= 2)")
    p.add_argument("--out", help="output folder (default run.dir/eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="preview or export a task's records", epilog=EPILOG, formatter_class=fmt)
    p.add_argument("action", choices=["preview", "export"])
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--n", type=int, default=3, help="records to preview")
    p.add_argument("--out", help="export: output JSONL file")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("model", help="build the tiny model, convert SmolLM2-135M, or merge a LoRA checkpoint",
                       formatter_class=fmt)
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind in ("tiny", "smollm2-135m"):
        k = kinds.add_parser(kind, help="build the tiny model" if kind == "tiny" else "convert SmolLM2-135M",
                             epilog=EPILOG, formatter_class=fmt)
        k.add_argument("config", nargs="*", help="tiny: [CONFIG.yaml] [section.key=value ...] (task text trains the tokenizer)")
        k.add_argument("--out", help="output folder")
    k = kinds.add_parser("merge", help="fold a LoRA checkpoint into its base: a plain transformers model folder")
    k.add_argument("checkpoint", help="RUN/checkpoints/ckpt-N of a run with adapter.kind=lora (or its model/ folder)")
    k.add_argument("--out", required=True, help="output folder")
    k.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype to load, merge and save in (default float32)")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("check", help="check answers (see `rlft check --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("config", help="print the resolved config, or every key with --keys", formatter_class=fmt)
    p.add_argument("config", nargs="*", help="[CONFIG.yaml] [section.key=value ...]")
    p.add_argument("--keys", action="store_true", help="list every key with type, default and meaning")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:  # the checker has its own parser and lives in the standalone rewards package
        from rewards.cli import main as check_main

        return check_main(argv[1:])
    args = build_parser().parse_args(argv)
    quiet_libraries()
    from rlft.models.loading import ModelLoadError
    from rlft.dist.errors import ClusterTooSmallError, WorkerLostError
    from rlft.learner.base import DivergedError
    from rlft.tasks.errors import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, ModelLoadError, ValueError) as e:
        if os.environ.get("RLFT_DEBUG"):  # full traceback on request
            raise
        print(f"rlft: error: {e}", file=sys.stderr)
        return 2
    except (WorkerLostError, ClusterTooSmallError, DivergedError) as e:
        if os.environ.get("RLFT_DEBUG"):
            raise
        print(f"rlft: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("rlft: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
