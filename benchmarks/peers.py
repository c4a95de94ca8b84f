"""What the peer benchmarks share (`ppo_throughput.py`: speed, `peer_parity.py`: learning curves): the model
folder and the questions, and each framework's run configured with the same settings. The settings, and what
could not be matched, are listed in `ppo_throughput.py`'s docstring; `peer_parity.py` adds its own.

Four runs, named as in both benchmarks:
- `rlft-grpo`: rlft algo=grpo, P prompts x G samples (k3 KL in the loss, seq-mean-token-mean);
- `trl-grpo`:  TRL's `GRPOTrainer` (main venv), the same;
- `rlft-reft`: rlft algo=reft (value head, k1 KL in the reward, GAE, whitened advantages), P*G prompts x 1;
- `trl-ppo`:   TRL 1.12's `trl.experimental.ppo.PPOTrainer` (`.venv-bench`), the same as far as it allows.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BETA = 0.04  # KL coefficient on both sides (TRL's `beta` / `kl_coef`; rlft's `kl.coef`)
CLIP = 0.2
PARTIAL_REWARD = 0.1
TOKENIZER_CORPUS = 2000  # questions the tiny model's tokenizer is trained on
RUNS = ("rlft-grpo", "trl-grpo", "rlft-reft", "trl-ppo")
PRECISIONS = ("fp32", "bf16-mixed")  # rlft's `model.precision` values; TRL's side: `trl_precision_kwargs`


@dataclasses.dataclass(frozen=True)
class Setup:
    """The settings every run of a benchmark shares (see the module docstring for the geometry)."""

    prompts: int  # P: prompts per GRPO iteration
    group: int  # G: samples per prompt (GRPO); PPO runs take P*G prompts x 1 sample
    iterations: int  # optimizer iterations (one rollout batch each)
    n_train: int  # training questions, cycled in epochs
    n_test: int  # held-out questions (their draw also decides which training questions exist)
    max_new_tokens: int
    lr: float
    seed: int
    ppo_epochs: int = 1  # PPO passes over each batch (the PPO pair; GRPO runs take one, TRL's num_iterations=1)
    precision: str = "fp32"  # "fp32" | "bf16-mixed": rlft's `model.precision`, TRL's `bf16` (`trl_precision_kwargs`)

    def geometry(self, name: str) -> tuple[int, int]:
        """(prompts per iteration, samples per prompt) of a run."""
        return (self.prompts * self.group, 1) if name in ("rlft-reft", "trl-ppo") else (self.prompts, self.group)

    def generate_batch(self, name: str) -> int:
        """Prompts per generate call of rlft's HF engine: the whole rollout batch in one call, like TRL; the
        held-out evaluation runs in chunks of this size on both sides."""
        return max(self.geometry(name)[0], 64)


def records(split: str, n_train: int, n_test: int):
    """The built-in arithmetic task at difficulty 0, as rlft's `data.*` loads it (the training questions
    exclude the held-out ones, so they depend on `n_test` too)."""
    from rlft.tasks import load_records

    return load_records("arithmetic", split, n_train=n_train, n_test=n_test, difficulty=0, seed=0)


def build_model(size: str, run_dir: Path, seed: int) -> Path:
    """The one model folder both frameworks load (built once, in the parent process)."""
    if size == "smollm2":
        from rlft.models.smollm import convert_smollm2

        return convert_smollm2()
    from rlft.models.tiny import build_tiny_model
    from rlft.workspace import tokenizer_corpus

    out = run_dir / "tiny-model"
    if not (out / "config.json").exists():
        build_tiny_model(out, tokenizer_corpus(records("train", TOKENIZER_CORPUS, 200), "nl"), seed=seed)
    return out


def default_precisions() -> tuple[str, ...]:
    """What the benchmarks run when `--precision` is not given: both precisions where this CPU multiplies bf16
    natively (rlft's own `model.precision=auto` probe, `rlft.utils.device.cpu_fast_bf16`; the benchmarks run on
    the CPU), fp32 alone elsewhere (emulated bf16 is several times slower than fp32 there)."""
    from rlft.utils.device import cpu_fast_bf16

    return PRECISIONS if cpu_fast_bf16()[0] else ("fp32",)


def precisions_of(choice: str | None) -> tuple[str, ...]:
    """The precisions a `--precision` value asks for: fp32, bf16-mixed, both, or None for the default."""
    if choice is None:
        return default_precisions()
    if choice == "both":
        return PRECISIONS
    if choice not in PRECISIONS:
        raise ValueError(f"--precision {choice!r}: use one of {', '.join(PRECISIONS)}, both")
    return (choice,)


def add_precision_argument(parser) -> None:
    """`--precision fp32|bf16-mixed|both` of the benchmarks that run rlft beside TRL (None: `default_precisions`)."""
    parser.add_argument("--precision", choices=(*PRECISIONS, "both"), default=None,
                        help="fp32, bf16-mixed or both, each run by rlft (model.precision) and TRL (its bf16 option); "
                             "default: both where this CPU has AMX-BF16 / AVX512-BF16 (rlft's auto probe; "
                             "RLFT_CPU_FAST_BF16=0|1 overrides it), else fp32")


def trl_precision_kwargs(precision: str) -> dict:
    """TRL's own option for `precision`, as TrainingArguments fields: bf16-mixed = `bf16=True`, i.e. accelerate's
    mixed_precision="bf16": torch.autocast(bfloat16) over the model's fp32 weights and fp32 AdamW state (on the CPU
    as on a GPU); fp32 = neither bf16 nor fp16. (TRL 1.12's PPOTrainer builds its own Accelerator, which reads
    only the ACCELERATE_MIXED_PRECISION environment variable: `trl_ppo_config` sets that too.)"""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return {"bf16": precision == "bf16-mixed", "fp16": False}


def accelerate_mixed_precision(precision: str) -> str:
    """accelerate's name for `precision` (`Accelerator.mixed_precision`)."""
    return "bf16" if trl_precision_kwargs(precision)["bf16"] else "no"


def no_checkpointing_kwargs(config_cls) -> dict:
    """TRL's configs default to gradient checkpointing (an extra forward per step); transformers >= 5.24
    renamed the flag, so turn it off under whichever name this TRL's config has."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in fields \
        else {"gradient_checkpointing": False}


# ----------------------------------------------------------------------------------------------------
# rlft


def rlft_dtype(precision: str) -> str:
    """rlft's `model.dtype` for a precision: float32 under fp32; under bf16-mixed rlft's default (`auto`): fp32
    master weights for what trains, bfloat16 weights for the frozen reference (TRL keeps its reference in the
    dtype of `model_init_kwargs`, float32, under autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return "float32" if precision == "fp32" else "auto"


def rlft_overrides(name: str, s: Setup, model_dir: Path, out_dir: Path) -> list[str]:
    """rlft's config for run `name` (rlft-grpo or rlft-reft); the caller appends its evaluation settings."""
    P, G = s.geometry(name)
    algo = "grpo" if name == "rlft-grpo" else "reft"
    never = 10**9
    overrides = [
        f"algo={algo}", f"run.dir={out_dir}", "run.resume=false", f"run.seed={s.seed}",
        f"model.path={model_dir}", f"model.dtype={rlft_dtype(s.precision)}", f"model.precision={s.precision}",
        "data.train=arithmetic", "data.test=arithmetic", "data.difficulty=0", "data.seed=0",
        f"data.n_train={s.n_train}", f"data.n_test={s.n_test}",
        f"rollout.prompts_per_step={P}", f"rollout.samples_per_prompt={G}", "rollout.temperature=1.0",
        "rollout.top_p=1.0", "rollout.top_k=0", f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.batch_size={s.generate_batch(name)}",
        f"ppo.iterations={s.iterations}", f"ppo.ppo_epochs={s.ppo_epochs if algo == 'reft' else 1}",
        f"ppo.micro_batch_size_per_device={P * G}",
        f"ppo.lr={s.lr}", "ppo.warmup_iterations=0", "ppo.weight_decay=0.0", "ppo.max_grad_norm=1.0",
        f"ppo.clip_eps={CLIP}", f"ppo.save_every={never}", "ppo.keep_last_checkpoints=1",
        f"kl.coef={BETA}", f"reward.partial_reward={PARTIAL_REWARD}",
        "log.tensorboard=false", "log.progress=false",
    ]
    if algo == "grpo":
        overrides += ["kl.placement=loss", "kl.estimator=k3", "ppo.loss_agg=seq-mean-token-mean"]
    return overrides


# ----------------------------------------------------------------------------------------------------
# TRL GRPOTrainer (main venv)


def trl_grpo_config(s: Setup, out_dir: Path):
    """TRL's `GRPOConfig` with the benchmark's settings (precision: `trl_precision_kwargs(s.precision)`)."""
    from trl import GRPOConfig

    P, G = s.geometry("trl-grpo")
    return GRPOConfig(
        output_dir=str(out_dir), seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=s.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
        repetition_penalty=1.0, beta=BETA, num_iterations=1, epsilon=CLIP, loss_type="grpo", scale_rewards="group",
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch_fused", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_steps=s.iterations, logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no",
        use_cpu=True, **trl_precision_kwargs(s.precision), use_vllm=False, **no_checkpointing_kwargs(GRPOConfig),
        model_init_kwargs={"dtype": "float32"}, remove_unused_columns=False, log_completions=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True,
    )


def trl_grpo_trainer(s: Setup, model_dir: Path, out_dir: Path, callbacks: list):
    """TRL's GRPOTrainer with the benchmark's settings, its printer callback removed; checks that TRL kept them.
    Returns (trainer, config, setup facts)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    import rewards
    from rlft.tasks.prompts import prompt_text

    dataset = Dataset.from_list([{"prompt": prompt_text(r, "nl"), "answer": r.answer, "dataset": r.dataset}
                                 for r in records("train", s.n_train, s.n_test)])

    def math_reward(prompts, completions, answer, dataset, **_):
        return rewards.math_reward(completions, answer=answer, dataset=dataset, partial_reward=PARTIAL_REWARD)

    config = trl_grpo_config(s, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=math_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the benchmarks' callbacks read them
    model = trainer.model
    checkpointing = model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing") \
        else model.is_gradient_checkpointing
    setup = {"policy_dtype": str(model.dtype), "reference": trainer.ref_model is not None,
             "reference_dtype": str(trainer.ref_model.dtype) if trainer.ref_model is not None else None,
             "checkpointing": bool(checkpointing), "mixed_precision": trainer.accelerator.mixed_precision}
    # fp32 master weights either way; bf16-mixed is accelerate's autocast (its mixed_precision)
    if setup["checkpointing"] or model.dtype != torch.float32 or trainer.ref_model is None \
            or setup["mixed_precision"] != accelerate_mixed_precision(s.precision):
        raise SystemExit(f"trl-grpo: not the benchmark's setup ({s.precision}): {setup}")
    return trainer, config, setup


# ----------------------------------------------------------------------------------------------------
# TRL 1.12 PPOTrainer (runs in the bench venv: `make bench-venv`)


def rule_reward_model(tokenizer, prompt_ids: list[list[int]], records, on_score):
    """TRL's PPOTrainer scores with a reward *model*: `trl.experimental.utils.get_reward` runs
    `getattr(model, model.base_model_prefix)(input_ids, attention_mask, ...)`, applies `model.score` to the last
    hidden states and reads the result at the last response token. This stand-in has no weights: its "backbone"
    decodes each response and calls `rewards.math_reward`, and returns the score at every position, (B, S, 1),
    so TRL reads it wherever it looks; `score` is the identity.

    The backbone sees prompt + response with the pads masked out but not where the prompt ends, so each row's
    prompt is found by its token ids (no prompt may be a proper prefix of another: checked here). It then decodes
    the response with skip_special_tokens=True, as rlft does. Its cost beyond the reward call: one lookup and
    one `batch_decode` per batch. `on_score(seconds_in_math_reward, response_tokens)` reports each call.
    """
    import types

    import torch

    import rewards

    gold: dict[tuple[int, ...], tuple[str, str]] = {}
    for ids, r in zip(prompt_ids, records):
        if gold.setdefault(tuple(ids), (r.answer, r.dataset)) != (r.answer, r.dataset):
            raise SystemExit(f"trl-ppo: two questions share a prompt but not an answer: {r.id}")
    lengths = sorted({len(k) for k in gold}, reverse=True)
    for key in gold:
        if any(key[:n] in gold for n in lengths if n < len(key)):
            raise SystemExit("trl-ppo: a prompt is a prefix of another; the reward wrapper cannot split them")

    class Backbone(torch.nn.Module):
        def forward(self, input_ids, attention_mask, **_):
            responses, owners = [], []
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                ids = [t for t, m in zip(ids, mask) if m]  # drop the left pads and the pads after EOS
                n = next((n for n in lengths if tuple(ids[:n]) in gold), None)
                if n is None:
                    raise RuntimeError("trl-ppo: a sequence starts with no known prompt")
                responses.append(ids[n:])
                owners.append(gold[tuple(ids[:n])])
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            start = time.perf_counter()
            scores = rewards.math_reward(texts, answer=[a for a, _ in owners], dataset=[d for _, d in owners],
                                         partial_reward=PARTIAL_REWARD)
            on_score(time.perf_counter() - start, sum(len(r) for r in responses))
            score = torch.tensor(scores, dtype=torch.float32, device=input_ids.device)  # (B,)
            hidden = score[:, None, None].expand(-1, input_ids.shape[1], 1)  # (B, S, 1)
            return types.SimpleNamespace(hidden_states=(hidden,))

    class RuleReward(torch.nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.score = torch.nn.Identity()

    return RuleReward()


def trl_ppo_trainer(s: Setup, model_dir: Path, out_dir: Path, callbacks: list, on_score):
    """TRL 1.12's PPOTrainer with the benchmark's settings (rule reward: `rule_reward_model`), its printer
    callback removed; checks that TRL kept them. Returns (trainer, config, setup facts)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        set_seed,
    )
    from trl.experimental.ppo import PPOTrainer

    from rlft.tasks.encoding import encode_prompts

    train = records("train", s.n_train, s.n_test)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    prompt_ids = encode_prompts(tokenizer, train, "nl")  # add_special_tokens=False, as rlft
    dataset = Dataset.from_list([{"input_ids": ids} for ids in prompt_ids])
    reward_model = rule_reward_model(tokenizer, prompt_ids, train, on_score)

    set_seed(s.seed)  # the value model's score head is random-init
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1, dtype=torch.float32)
    config = trl_ppo_config(s, out_dir)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the benchmarks' callbacks read them
    setup = {"policy_dtype": str(policy.dtype), "value_dtype": str(value_model.dtype),
             "reference": trainer.ref_model is not None,
             "reference_dtype": str(trainer.ref_model.dtype) if trainer.ref_model is not None else None,
             "checkpointing": bool(policy.is_gradient_checkpointing), "device": str(trainer.accelerator.device),
             "mixed_precision": trainer.accelerator.mixed_precision,
             "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    if setup["checkpointing"] or policy.dtype != torch.float32 or trainer.ref_model is None \
            or setup["mixed_precision"] != accelerate_mixed_precision(s.precision) or setup["device"] != "cpu":
        raise SystemExit(f"trl-ppo: not the benchmark's setup ({s.precision}): {setup}")
    return trainer, config, setup


def trl_ppo_config(s: Setup, out_dir: Path):
    """TRL 1.12's `PPOConfig` with the benchmark's settings. PPOTrainer builds its own `Accelerator()`, which takes
    its mixed precision from the ACCELERATE_MIXED_PRECISION environment variable only (what `accelerate launch
    --mixed_precision bf16` sets), not from `bf16=True`: the variable is set here to match (this process runs
    one trainer)."""
    from trl.experimental.ppo import PPOConfig

    os.environ["ACCELERATE_MIXED_PRECISION"] = accelerate_mixed_precision(s.precision)
    P, G = s.geometry("trl-ppo")
    return PPOConfig(
        output_dir=str(out_dir), seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=s.ppo_epochs, total_episodes=P * G * s.iterations, local_rollout_forward_batch_size=P * G,
        response_length=s.max_new_tokens, stop_token="eos", temperature=1.0, missing_eos_penalty=None,
        kl_coef=BETA, kl_estimator="k1", cliprange=CLIP, vf_coef=5.0, cliprange_value=0.2, gamma=1.0, lam=0.95,
        whiten_rewards=False, num_sample_generations=0,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch_fused", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no",
        use_cpu=True, **trl_precision_kwargs(s.precision), gradient_checkpointing=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True,
    )


# ----------------------------------------------------------------------------------------------------
# Which dtype the matrix products ran in (`--gemm-dtypes`): what each side's precision option really does

GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "_mkl_linear", "scaled_dot_product_attention",
                      "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
                      "_scaled_dot_product_flash_attention_for_cpu_backward"})


class GemmDtypes:
    """Counts the matrix products (GEMMs and attention) a process runs, by phase and by the dtypes of their
    floating-point inputs, as they reach the kernels: a TorchDispatchMode sits below autocast, so it sees the
    inputs after autocast has cast them. Phases: `generate` (inside HF `generate` or rlft's rollout engine),
    `backward` (inside `torch.autograd.backward`), else `forward (grad)` or `forward (no grad)` by grad mode.
    Slows every op down: runs with it on are for reading dtypes, not timings. `start()` once per process."""

    def __init__(self):
        self.counts: dict[tuple[str, str, str], int] = {}
        self.depth = {"generate": 0, "backward": 0}

    def _flagged(self, key: str, fn):
        def wrapper(*a, **kw):
            self.depth[key] += 1
            try:
                return fn(*a, **kw)
            finally:
                self.depth[key] -= 1
        return wrapper

    def phase(self, grad_enabled: bool) -> str:
        if self.depth["generate"]:
            return "generate"
        if self.depth["backward"]:
            return "backward"
        return "forward (grad)" if grad_enabled else "forward (no grad)"

    def record(self, op: str, tensors, grad_enabled: bool) -> None:
        if op not in GEMM_OPS:
            return
        dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in tensors if x.is_floating_point()})
        key = (self.phase(grad_enabled), op, "+".join(dtypes))
        self.counts[key] = self.counts.get(key, 0) + 1

    def mode(self):
        """The TorchDispatchMode that records every op run inside it (a context manager)."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        probe = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
                probe.record(func.overloadpacket.__name__, tensors, torch.is_grad_enabled())
                return func(*args, **kwargs)

        return Mode()

    def start(self) -> None:
        """Mark the generate and backward phases (patching those entry points) and record for the rest of the
        process."""
        import torch
        import transformers.generation.utils as hf_generation

        hf_generation.GenerationMixin.generate = self._flagged("generate", hf_generation.GenerationMixin.generate)
        try:  # not importable in a venv without rlft's engine (it is: `pip install -e .`)
            from rlft.rollout.hf_engine import HFRolloutEngine

            HFRolloutEngine.generate = self._flagged("generate", HFRolloutEngine.generate)
        except ImportError:
            pass
        torch.autograd.backward = self._flagged("backward", torch.autograd.backward)
        self.mode().__enter__()  # never left: the child process ends with the run

    def summary(self) -> dict[str, dict[str, int]]:
        """{phase: {input dtypes: count}}, over every counted op."""
        out: dict[str, dict[str, int]] = {}
        for (phase, _, dtypes), n in self.counts.items():
            out.setdefault(phase, {})
            out[phase][dtypes] = out[phase].get(dtypes, 0) + n
        return out


GEMM_PHASES = ("generate", "forward (no grad)", "forward (grad)", "backward")


def gemm_dtypes_cell(by_dtype: dict[str, int] | None) -> str:
    """'bfloat16: 116, float32: 2' (ops counted per input dtypes, most first); '-' when none ran."""
    if not by_dtype:
        return "-"
    return ", ".join(f"{d}: {n}" for d, n in sorted(by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------------------------------
# Report lines


def prompt_tokens_note(model_dir: Path) -> str:
    """rlft tokenizes prompts with add_special_tokens=False; TRL with the tokenizer's default. Say if they differ."""
    from transformers import AutoTokenizer

    from rlft.tasks.prompts import prompt_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = prompt_text(records("train", 1, 200)[0], "nl")
    extra = len(tok(text)["input_ids"]) - len(tok(text, add_special_tokens=False)["input_ids"])
    return "same prompt token ids on both sides" if extra == 0 else \
        f"TRL's prompts carry {extra} more special token(s) (the tokenizer's default add_special_tokens=True)"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.strip().startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kib = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:"))
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


PEER_ALLOCATORS = ("default", "same")


def side_env(name: str, peer_allocator: str = "default") -> dict[str, str]:
    """The environment of side `name`'s process. rlft's sides run with rlft's default host-memory policy (keep
    freed memory, `rlft/utils/memory.py`). TRL's sides (which import rlft for the reward and the task, so the
    policy would reach them too) run with the C library's allocator defaults, as TRL's users run it
    (`peer_allocator="default"`: RLFT_KEEP_FREED_MEMORY=0), or with rlft's policy (`"same"`: =1), which
    compares the two frameworks on one allocator (measured on SmolLM2: TRL 2-2.8x faster with it). Huge pages
    (torch's THP_MEM_ALLOC_ENABLE) are the user's setting, not the policy's: set in this environment, they reach
    both sides."""
    import os

    if peer_allocator not in PEER_ALLOCATORS:
        raise ValueError(f"peer_allocator={peer_allocator!r}: one of {PEER_ALLOCATORS}")
    env = dict(os.environ)
    if name.startswith("trl"):
        env["RLFT_KEEP_FREED_MEMORY"] = "1" if peer_allocator == "same" else "0"
    return env


def add_peer_allocator_argument(parser) -> None:
    parser.add_argument("--peer-allocator", choices=PEER_ALLOCATORS, default="default",
                        help="TRL's host memory: 'default' (glibc's defaults, as TRL's users run it) or 'same' "
                             "(rlft's keep-freed-memory policy, RLFT_KEEP_FREED_MEMORY=1: one allocator for both)")


def peer_allocator_note(peer_allocator: str) -> str:
    """The report line that says which allocator each side ran with."""
    import os

    from rlft.utils import memory

    pages = " on huge pages (THP_MEM_ALLOC_ENABLE=1, set in this environment: both sides)" \
        if os.environ.get(memory.HUGE_PAGES_ENV) == "1" else ""
    if peer_allocator == "same":
        trl = "rlft's policy too (RLFT_KEEP_FREED_MEMORY=1, `--peer-allocator same`)"
    else:
        trl = "glibc's defaults (RLFT_KEEP_FREED_MEMORY=0), as TRL's users run it"
    return f"- host memory{pages}: rlft keeps the memory it frees (`rlft/utils/memory.py`); TRL: {trl}"


def side_python(name: str, bench_python: str) -> tuple[str | None, str | None]:
    """The interpreter that runs side `name` and, when it is missing, why: TRL 1.12 lives in its own venv
    (`--bench-python`, made by `make bench-venv`; the main one has TRL 1.16, without PPOTrainer)."""
    if name != "trl-ppo":
        return sys.executable, None
    if not Path(bench_python).exists():
        return None, f"no interpreter at {bench_python}; run `make bench-venv` or pass --bench-python"
    return bench_python, None
