"""`rlft compare CONFIG`: SFT vs ReFT vs CARFT (and baselines) from one warm-up, over seeds, one command.

    rlft compare configs/demo.yaml                      # the embedded default (make demo)
    rlft compare configs/demo.yaml compare.seeds=[1,2,3]

What it does, in `run.dir`:
1. `warmup/`: one SFT run of `compare.warmup_epochs` epochs (seed `run.seed`; with `compare.warmup_schedule_epochs`
   the first epochs of a longer schedule, the paper's early checkpoint); its last checkpoint is the
   shared warm-up: the initial policy of every method and the frozen reference of the RL methods.
2. `runs/<method>/seed<k>/`: each method from that warm-up, once per seed, under the same budget:
   `compare.max_seconds` of training wall time (evaluation excluded) and at most `ppo.iterations`
   iterations (RL) or `sft.epochs` epochs (SFT-continued: a fresh SFT run initialised from the warm-up).
3. `results.json`, `results.md` (per method: final and best held-out greedy accuracy as mean ± std and a
   95% t-interval over seeds, wall time, samples, tokens) and PNG plots (accuracy vs samples and vs wall
   time, training reward, KL, response length; one line per method, a band over seeds).
4. With `log.wandb` / `log.mlflow`: a tracker run for the comparison (its config, then the results table and
   the files above) and one per run it makes (`<name>/warmup`, `<name>/<method>/seed<k>`; W&B group `<name>`,
   MLflow store `run.dir/mlruns`; `rlft/utils/trackers.py`).

Finished runs are skipped on re-run (the command resumes); a method that fails is reported with its
error in the results and the other methods still run.

Methods are strings: `sft`, an algo name (`reft`, `carft`, `grpo`, ..., `nlft`, `offline_st`: sampling from the warm-up,
then SFT on the union), either with `+<adapter kind>`
for a policy adapter (`sft+lora`, `reft+loreft`, `reft+brep`: `adapter.kind=...`, trained on top of the
shared full-finetuned warm-up), or `label: key=value ...` with per-method overrides (e.g.
`"grpo4: algo=grpo rollout.samples_per_prompt=4 kl.placement=loss kl.estimator=k3"`,
`"reft+loreft-r8: algo=reft adapter.kind=loreft adapter.repft.rank=8"`). The table reports each method's
trainable parameters (what its optimizer updates: the adapter, or the whole model, plus heads) beside
its accuracy.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

import yaml

from rlft.config import (ADAPTER_KINDS, CompareConfig, Config, ConfigError, compile_conflict, load_config, save_config,
                         to_dict)
from rlft.trainers.algorithms import ALGORITHMS
from rlft.utils.logging import print0, read_metrics
from rlft.utils.trackers import mlflow_uri, open_trackers

# two-sided 95% Student-t quantiles by degrees of freedom (1..10); beyond that ~1.96-2.2
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def parse_method(entry: str, default_algo: str = "reft") -> tuple[str, list[str]]:
    """`reft` -> ("reft", ["algo=reft"]); `sft` -> ("sft", []); `reft+lora` -> ("reft+lora", ["algo=reft",
    "adapter.kind=lora"]); `null` -> ("null", ["algo=<default_algo>"]) and `null-grpo` -> ("null-grpo",
    ["algo=grpo"]) (null controls: `run_compare` adds their constant reward); `label: k=v ...` -> (label,
    overrides), the label read the same way first."""
    label, _, rest = entry.partition(":")
    label, overrides = label.strip(), rest.split()
    if not label:
        raise ConfigError(f"compare.methods entry {entry!r} has no label")
    method, plus, kind = label.partition("+")
    if is_null(label) and not any(o.startswith("algo=") for o in overrides):
        overrides = [f"algo={label[len('null-'):] if label.startswith('null-') else default_algo}", *overrides]
        if overrides[0][len("algo="):] not in ALGORITHMS:
            raise ConfigError(f"compare.methods entry {entry!r}: '{overrides[0][5:]}' is not an algo {list(ALGORITHMS)}")
        return label, overrides
    if plus and not any(o.startswith("adapter.kind=") for o in overrides):
        if kind not in ADAPTER_KINDS:
            raise ConfigError(f"compare.methods entry {entry!r}: '+{kind}' is not an adapter kind {list(ADAPTER_KINDS)}; "
                              "name it after a colon with adapter.kind=...")
        overrides = [f"adapter.kind={kind}", *overrides]
    if method in ALGORITHMS and not any(o.startswith("algo=") for o in overrides):
        overrides = [f"algo={method}", *overrides]
    if method != "sft" and not any(o.startswith("algo=") for o in overrides):
        raise ConfigError(f"compare.methods entry {entry!r}: '{method}' is not sft or an algo {list(ALGORITHMS)}; "
                          "add algo=... after a colon")
    return label, overrides


def is_null(label: str) -> bool:
    """The null controls: `null` (the config's algo) and `null-<algo>`."""
    return label == "null" or label.startswith("null-")


def algo_of(overrides: list[str]) -> str | None:
    return next((o[len("algo="):] for o in overrides if o.startswith("algo=")), None)


def is_sft(overrides: list[str]) -> bool:
    """SFT-continued methods are the ones without an algo (`parse_method` gives every RL method one)."""
    return not any(o.startswith("algo=") for o in overrides)


def mean_std_ci(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = T95.get(n - 1, 2.0) * std / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "std": std, "ci95": None if half is None else [mean - half, mean + half], "n": n}


def tracking_overrides(base: Config, root: Path, run: str | None) -> list[str]:
    """Tracker settings (W&B, MLflow) of the comparison's own run (`run` None) and of each run it makes: named
    `<comparison>/<run>`, in the comparison's W&B group and MLflow store unless the config names others. Empty
    when no tracker is on."""
    log = base.log
    if not (log.wandb or log.mlflow):
        return []
    name = log.run_name or root.resolve().name
    out = [f"log.run_name={json.dumps(name if run is None else f'{name}/{run}')}"]  # quoted: always a YAML string
    if log.wandb and log.wandb_group is None:
        out.append(f"log.wandb_group={json.dumps(name)}")
    if log.mlflow and log.mlflow_tracking_uri is None:
        out.append(f"log.mlflow_tracking_uri={json.dumps(mlflow_uri(base, root))}")
    return out


def _method_config(base: Config, config_path: str | None, cli_overrides: list[str], method_overrides: list[str],
                   run_dir: Path, warmup: Path, seed: int, tracking: list[str]) -> Config:
    overrides = [*cli_overrides, *method_overrides, f"run.dir={run_dir}", f"run.seed={seed}", f"model.path={warmup}",
                 *tracking]
    if base.compare.max_seconds is not None:  # the compare budget applies to every method's own cap
        overrides += [f"ppo.max_seconds={base.compare.max_seconds}", f"sft.max_seconds={base.compare.max_seconds}"]
    return load_config(config_path, overrides)


def run_identity(cfg: Config) -> dict:
    """What makes a finished run reusable: its whole config except where it logs and how it reports, and
    the compare section (which lists the other runs). Device, precision, weight dtypes and the adapter kind
    count as what they resolve to here, so `auto` and the explicit setting it means are the same run; packing
    `true` (a run that packed) is the same run as `auto`."""
    from rlft.trainers.algorithms import plan
    from rlft.utils.device import resolve_compute, weights_dtype

    d = to_dict(cfg)
    for section in ("log", "compare"):
        d.pop(section, None)
    compute = resolve_compute(cfg)
    d["run"]["device"] = compute.device.type
    d["model"]["precision"] = compute.precision
    d["model"]["dtype"] = [weights_dtype(cfg, compute, trains=True), weights_dtype(cfg, compute, trains=False)]
    d["adapter"]["kind"] = plan(cfg).adapter_kind
    for phase in ("sft", "ppo"):  # packing=true ran where auto packs: the same computation
        if d[phase].get("packing") is True:
            d[phase]["packing"] = "auto"
    return d


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class StaleRunError(ConfigError):
    """A finished run directory holds a result made with another configuration."""


def check_same_run(run_dir: Path, cfg: Config) -> None:
    """A finished run is skipped only if its saved config.yaml matches this comparison's config for it;
    otherwise say what differs, so a changed warm-up, budget or method never passes off an old result."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise StaleRunError(f"{run_dir / 'compare_result.json'} has no config.yaml beside it: cannot tell whether it "
                            "matches this comparison; delete that run directory to rerun it, or use another run.dir")
    old_cfg = load_config(str(saved), [])
    raw = yaml.safe_load(saved.read_text()) or {}
    # Runs saved before run.device and model.precision existed ran on the CPU in fp32.
    if "precision" not in (raw.get("model") or {}):
        old_cfg.model.precision = "fp32"
    if "device" not in (raw.get("run") or {}):
        old_cfg.run.device = "cpu"
    old, new = _flatten(run_identity(old_cfg)), _flatten(run_identity(cfg))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
        raise StaleRunError(f"{run_dir} holds a finished run made with a different configuration ({shown}"
                            f"{' ...' if len(diff) > 5 else ''}); delete that run directory to rerun it, or use "
                            "another run.dir")


def _run_one(sft: bool, cfg: Config) -> dict:
    from rlft.trainers.nlft import run_nlft
    from rlft.trainers.ppo import run_ppo
    from rlft.trainers.selftrain import run_offline_st
    from rlft.trainers.sft import run_sft

    # the trainers whose history is per epoch over a fixed set (SFT-like); the RL loop's is per iteration
    epoch_trainers = {"offline_st": run_offline_st, "nlft": run_nlft}
    loop = None if sft else ALGORITHMS[cfg.algo].loop
    if sft or loop in epoch_trainers:
        summary = run_sft(cfg) if sft else epoch_trainers[loop](cfg)
        history = [{"step": h["epoch"], "accuracy": h.get("accuracy"), "train_seconds": h["train_seconds"],
                    "samples": h["epoch"] * summary.get("n_train", 0)} for h in summary["history"]]
    else:
        summary = run_ppo(cfg)
        history = [{"step": h["iteration"], "accuracy": h["accuracy"], "train_seconds": h["train_seconds"],
                    "samples": h["samples"]} for h in summary["history"]]
    accs = [h["accuracy"] for h in history if h["accuracy"] is not None]
    return {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "train_seconds": summary["train_seconds"],
        "samples": history[-1]["samples"] if history else 0,
        "tokens": summary.get("tokens", summary.get("train_tokens", 0)),
        "trainable_params": summary["trainable_params"],
        "history": history,
    }


def run_compare(config_path: str | None, cli_overrides: list[str]) -> dict:
    from rlft.trainers.sft import run_sft

    base = load_config(config_path, cli_overrides, command="compare")
    root = Path(base.run.dir)
    root.mkdir(parents=True, exist_ok=True)
    save_config(base, root / "config.yaml")
    methods = [parse_method(m, base.algo) for m in base.compare.methods]
    for label, overrides in methods:  # before the warm-up: a method that would fail later fails now
        if not is_sft(overrides) and (conflict := compile_conflict(load_config(config_path, [*cli_overrides, *overrides]))):
            raise ConfigError(f"compare.methods entry {label!r}: {conflict}")
    if not any(is_null(label) for label, _ in methods) and \
            base.compare.null_reward_questions != CompareConfig().null_reward_questions:
        raise ConfigError("compare.null_reward_questions sizes the null control's constant score, but "
                          "compare.methods has no null control (`null` or `null-<algo>`)")
    # the comparison's own tracker runs: its config now, its results table and plots at the end
    trackers = open_trackers(load_config(config_path, [*cli_overrides, *tracking_overrides(base, root, None)]), root,
                             resume=True)
    start = time.perf_counter()

    # 1. the shared warm-up (or a given one)
    if base.compare.warmup_checkpoint:
        warmup_ckpt = Path(base.compare.warmup_checkpoint)
        if not warmup_ckpt.exists():
            raise ConfigError(f"compare.warmup_checkpoint '{warmup_ckpt}' does not exist")
        warm = {"history": [{"accuracy": None}]}
        print0(f"rlft compare: warm-up {warmup_ckpt} (given)")
    else:
        warm_dir = root / "warmup"
        # the warm-up trains every weight: adapter methods start from it and use it as their reference
        schedule = base.compare.warmup_schedule_epochs or base.compare.warmup_epochs
        warm_cfg = load_config(config_path, [*cli_overrides, f"run.dir={warm_dir}", f"sft.epochs={schedule}",
                                             # an early stop is a checkpoint only when every epoch saves one
                                             *(["sft.save_every_epoch=true"] if schedule != base.compare.warmup_epochs else []),
                                             "adapter.kind=full",
                                             *tracking_overrides(base, root, "warmup")])
        of = f" of a {schedule}-epoch schedule" if schedule != base.compare.warmup_epochs else ""
        print0(f"rlft compare: warm-up SFT ({base.compare.warmup_epochs} epochs{of}) in {warm_dir}")
        warm = run_sft(warm_cfg, stop_after_epoch=base.compare.warmup_epochs)
        warmup_ckpt = Path(warm["final_checkpoint"])

    # the warm-up's held-out accuracy (every gain is measured from it) and, for null controls, its mean
    # training reward (their constant score)
    nulls = [label for label, _ in methods if is_null(label)]
    baseline = warmup_baseline(config_path, cli_overrides, base, warmup_ckpt, root, train_reward=bool(nulls),
                               accuracy=warm["history"][-1].get("accuracy"))
    methods = [(label, [*overrides, f"reward.constant={baseline['train_reward']}"]
                if is_null(label) and not any(o.startswith("reward.constant=") for o in overrides) else overrides)
               for label, overrides in methods]

    # 2. every method x seed, skipping finished runs
    results: dict = {"warmup": {"checkpoint": str(warmup_ckpt), "history": warm["history"], **baseline},
                     "budget": {"max_seconds": base.compare.max_seconds, "ppo.iterations": base.ppo.iterations,
                                "sft.epochs": base.sft.epochs},
                     "methods": {}}
    for label, overrides in methods:
        runs = {}
        for seed in base.compare.seeds:
            run_dir = root / "runs" / label / f"seed{seed}"
            done = run_dir / "compare_result.json"
            try:
                cfg = _method_config(base, config_path, cli_overrides, overrides, run_dir, warmup_ckpt, seed,
                                     tracking_overrides(base, root, f"{label}/seed{seed}"))
                if done.exists():
                    check_same_run(run_dir, cfg)
                    runs[str(seed)] = json.loads(done.read_text())
                    print0(f"rlft compare: {label} seed {seed} already finished, skipped")
                    continue
                print0(f"rlft compare: {label} seed {seed} -> {run_dir}")
                out = _run_one(is_sft(overrides), cfg)
                done.write_text(json.dumps(out, indent=2))
            except StaleRunError:
                raise  # a finished run from another configuration: stop, nothing is overwritten
            except Exception as e:  # one failed method must not lose the others: report it and go on
                out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
                print0(f"rlft compare: {label} seed {seed} FAILED: {out['error']}")
            runs[str(seed)] = out
        ok = [r for r in runs.values() if "error" not in r]
        results["methods"][label] = {
            "overrides": overrides,
            "runs": runs,
            "final_accuracy": mean_std_ci([r["final_accuracy"] for r in ok if r["final_accuracy"] is not None]),
            "best_accuracy": mean_std_ci([r["best_accuracy"] for r in ok if r["best_accuracy"] is not None]),
            "train_seconds": mean_std_ci([r["train_seconds"] for r in ok]),
            "samples": mean_std_ci([r["samples"] for r in ok]),
            "tokens": mean_std_ci([r["tokens"] for r in ok]),
            "trainable_params": next((r["trainable_params"] for r in ok if "trainable_params" in r), None),
            "failed": len(runs) - len(ok),
        }
    add_gains(results, methods, base.compare.seeds)
    results["wall_seconds"] = time.perf_counter() - start
    results["config"] = to_dict(base)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    table = results_markdown(results, base)
    (root / "results.md").write_text(table)
    write_plots(root, results, methods, base.compare.seeds)
    columns, rows = results_rows(results)
    files = [root / name for name in ("results.md", "results.json", "accuracy.png", "training.png")]
    for tracker in trackers:
        tracker.log_results(columns, rows, [f for f in files if f.exists()])
        tracker.close()
    print0("\n" + table)
    return results


def warmup_baseline(config_path: str | None, cli_overrides: list[str], base: Config, warmup_ckpt: Path, root: Path, *,
                    train_reward: bool, accuracy: float | None) -> dict:
    """The warm-up's held-out greedy accuracy (measured here when the warm-up SFT did not report it: a given
    checkpoint) and, with `train_reward`, its mean training reward: `compare.null_reward_questions` training
    questions (the first of epoch 0's order), `rollout.samples_per_prompt` samples each with the training
    sampler, scored by `reward.fn`. Cached in `warmup_baseline.json` for this checkpoint (resume)."""
    import torch

    from rlft.evaluate import evaluate_held_out
    from rlft.reward.role import RewardRole, completion_ids
    from rlft.rollout.base import SamplingParams
    from rlft.rollout.factory import hf_engine
    from rlft.tasks.chat import PromptFormat
    from rlft.tasks.encoding import encode_prompts, epoch_order
    from rlft.workspace import load_split, prepare_model

    cache = root / "warmup_baseline.json"
    out = json.loads(cache.read_text()) if cache.exists() else {}
    if out.get("checkpoint") != str(warmup_ckpt):
        out = {"checkpoint": str(warmup_ckpt)}
    if accuracy is not None:
        out["accuracy"] = accuracy
    if "accuracy" in out and ("train_reward" in out or not train_reward):
        return out
    cfg = load_config(config_path, [*cli_overrides, f"model.path={warmup_ckpt}", "adapter.kind=full",
                                    f"run.dir={root / 'warmup_baseline'}"])
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    model, tokenizer, _, adapter = prepare_model(cfg, train)
    engine = hf_engine(cfg, model, tokenizer, adapter)
    if "accuracy" not in out:
        out["accuracy"] = evaluate_held_out(cfg, engine, tokenizer, test)[0]["eval/accuracy"]
    if train_reward and "train_reward" not in out:
        records = [train[i] for i in epoch_order(len(train), cfg.run.seed, 0)[:base.compare.null_reward_questions]]
        r = cfg.rollout
        params = SamplingParams(n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.run.seed)
            batch = engine.generate(encode_prompts(tokenizer, records, cfg.data.style, cfg.data.max_prompt_tokens,
                                                  fmt=PromptFormat.of(cfg.data)), params)
        owners = [records[i] for i in batch.prompt_index.tolist()]
        texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        scores, _ = RewardRole(cfg).score(texts, owners, batch.truncated, completion_ids(batch))
        out.update(train_reward=float(scores.mean()), train_reward_samples=len(batch))
        print0(f"rlft compare: the warm-up's mean training reward is {out['train_reward']:.4f} over {len(batch)} "
               "samples (the null control's constant score)")
    cache.write_text(json.dumps(out, indent=2))
    return out


def add_gains(results: dict, methods: list[tuple[str, list[str]]], seeds: list[int]) -> None:
    """Per method, over seeds: `gain_vs_warmup` (final accuracy minus the warm-up's) and, for RL methods,
    `gain_vs_null` (paired by seed: final accuracy minus that of the null control of the same algorithm, or
    of `null` when there is none), each as mean, std and a 95% t-interval."""
    warm = results["warmup"].get("accuracy")
    nulls = [(label, o) for label, o in methods if is_null(label)]
    for label, overrides in methods:
        r = results["methods"][label]
        finals = {s: run["final_accuracy"] for s, run in r["runs"].items() if run.get("final_accuracy") is not None}
        if warm is not None:
            r["gain_vs_warmup"] = mean_std_ci([a - warm for a in finals.values()])
        if is_sft(overrides) or is_null(label) or not nulls:
            continue
        control = null_control_for(overrides, nulls)
        null_finals = {s: run["final_accuracy"] for s, run in results["methods"][control]["runs"].items()
                       if run.get("final_accuracy") is not None}
        pairs = [finals[s] - null_finals[s] for s in map(str, seeds) if s in finals and s in null_finals]
        r["gain_vs_null"] = {**mean_std_ci(pairs), "control": control}


def null_control_for(overrides: list[str], nulls: list[tuple[str, list[str]]]) -> str:
    """The null control of an RL method: the one with the same settings (algorithm and every other override,
    the constant score aside), else one of the same algorithm, else `null`, else the first."""
    def settings(o: list[str]) -> list[str]:
        return sorted(x for x in o if not x.startswith("reward.constant="))

    same_algo = [label for label, o in nulls if algo_of(o) == algo_of(overrides)]
    return next((label for label, o in nulls if settings(o) == settings(overrides)), None) or \
        (same_algo[0] if same_algo else "null" if any(label == "null" for label, _ in nulls) else nulls[0][0])


def _fmt(stat: dict, pct: bool = True) -> str:
    if stat["mean"] is None:
        return "–"
    scale = 100 if pct else 1
    text = f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"
    if stat["ci95"]:
        text += f" [{stat['ci95'][0] * scale:.1f}, {stat['ci95'][1] * scale:.1f}]"
    return text


def results_markdown(results: dict, cfg: Config) -> str:
    seeds = cfg.compare.seeds
    budget = f"{cfg.compare.max_seconds:.0f} s of training per run" if cfg.compare.max_seconds else "no wall-time cap"
    lines = [
        f"# rlft compare: {cfg.data.train} (held-out: {cfg.data.test}), model {cfg.model.path}",
        "",
        f"Seeds {seeds}; budget: {budget}, at most {cfg.ppo.iterations} RL iterations / {cfg.sft.epochs} SFT epochs. "
        + (f"Warm-up: {cfg.compare.warmup_checkpoint}. " if cfg.compare.warmup_checkpoint else
           f"Warm-up: {cfg.compare.warmup_epochs} SFT epochs"
           + (f" of a {cfg.compare.warmup_schedule_epochs}-epoch schedule. " if cfg.compare.warmup_schedule_epochs else ". ")) +
        f"Warm-up accuracy {(results['warmup'].get('accuracy') or 0) * 100:.1f}%" +
        (f", mean training reward {results['warmup']['train_reward']:.3f} (the null controls' constant score). "
         if "train_reward" in results["warmup"] else ". ") +
        "Accuracy is held-out greedy accuracy in %, mean ± std [95% t-interval] over seeds; gains are in points, "
        "the gain vs the null control paired by seed. A null control trains the same algorithm on a constant "
        "score: what it moves is update noise, not learning from the reward.",
        "",
        "| method | final accuracy | best accuracy | gain vs warm-up | gain vs null control | trainable params "
        "| train seconds | samples | failed runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["methods"].items():
        params = "–" if r.get("trainable_params") is None else f"{r['trainable_params']:,}"
        vs_null = f"{_fmt(r['gain_vs_null'])} ({r['gain_vs_null']['control']})" if "gain_vs_null" in r else "–"
        lines.append(f"| {label} | {_fmt(r['final_accuracy'])} | {_fmt(r['best_accuracy'])} | "
                     f"{_fmt(r['gain_vs_warmup']) if 'gain_vs_warmup' in r else '–'} | {vs_null} | {params} | "
                     f"{r['train_seconds']['mean'] or 0:.0f} | {r['samples']['mean'] or 0:.0f} | {r['failed']} |")
    lines += ["", f"Total wall time {results['wall_seconds'] / 60:.1f} min. Plots: accuracy.png, training.png.", ""]
    return "\n".join(lines)


def results_rows(results: dict) -> tuple[list[str], list[list]]:
    """The results table as columns and rows of numbers (accuracies in %; None where there is none), for trackers."""
    columns = ["method", "final_accuracy", "final_accuracy_std", "best_accuracy", "gain_vs_warmup", "gain_vs_null",
               "trainable_params", "train_seconds", "samples", "failed_runs"]

    def pct(stat: dict | None) -> float | None:
        return None if not stat or stat["mean"] is None else 100 * stat["mean"]

    rows = [[label, pct(r["final_accuracy"]), None if r["final_accuracy"]["std"] is None else 100 * r["final_accuracy"]["std"],
             pct(r["best_accuracy"]), pct(r.get("gain_vs_warmup")), pct(r.get("gain_vs_null")), r.get("trainable_params"),
             r["train_seconds"]["mean"], r["samples"]["mean"], r["failed"]] for label, r in results["methods"].items()]
    return columns, rows


def write_plots(root: Path, results: dict, methods: list[tuple[str, list[str]]], seeds: list[int]) -> None:
    """accuracy.png (vs samples and vs wall time) and training.png (reward, KL, response length)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print0("rlft compare: matplotlib not installed; no plots (pip install -e '.[plots]')")
        return
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    warm_acc = results["warmup"]["history"][-1].get("accuracy")
    start = [(0.0, warm_acc * 100)] if warm_acc is not None else []  # every method starts at the warm-up
    for label, _ in methods:
        runs = [r for r in results["methods"][label]["runs"].values() if "history" in r]
        for ax, key in zip(axes, ("samples", "train_seconds")):
            _band(ax, np, [start + [(h[key], h["accuracy"] * 100) for h in r["history"] if h["accuracy"] is not None]
                           for r in runs], label)
    for ax, xl in zip(axes, ("training samples", "training wall time (s)")):
        if warm_acc is not None:
            ax.axhline(warm_acc * 100, color="gray", ls="--", lw=1, label="warm-up")
        ax.set_xlabel(xl), ax.set_ylabel("held-out accuracy (%)"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(root / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, overrides in methods:
        if is_sft(overrides):
            continue
        dirs = [root / "runs" / label / f"seed{s}" for s in seeds]
        for ax, key in zip(axes, ("reward/mean", "kl/mean", "rollout/response_len_mean")):
            if key == "reward/mean":  # a null control trains on a constant: plot what the reward would pay
                key = "reward/true_mean" if is_null(label) else key
            curves = [[(row["step"], row[key]) for row in read_metrics(d) if isinstance(row.get(key), (int, float))] for d in dirs]
            _band(ax, np, curves, label)
    for ax, title in zip(axes, ("training reward", "KL to the warm-up (sum over tokens)", "response length (tokens)")):
        ax.set_title(title), ax.set_xlabel("iteration"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(root / "training.png", dpi=110)
    plt.close(fig)


def _band(ax, np, curves: list[list[tuple[float, float]]], label: str) -> None:
    """Mean line over seeds with a min-max band, on the shortest common length."""
    curves = [c for c in curves if c]
    if not curves:
        return
    n = min(len(c) for c in curves)
    xs = np.array([[p[0] for p in c[:n]] for c in curves]).mean(0)
    ys = np.array([[p[1] for p in c[:n]] for c in curves])
    line, = ax.plot(xs, ys.mean(0), marker="o", ms=3, label=label)
    if len(curves) > 1:
        ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
