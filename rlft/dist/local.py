"""The roles of one run as plain in-process objects (tests, `breakpoint()`, a laptop).

The loop in `rlft/trainers/ppo.py` talks only to `Roles`, and the SFT loop in `rlft/trainers/sft.py` only to
its learner (`build_sft_learner`); `rlft/dist/ray_roles.py` provides the same objects as proxies over Ray
actor groups.

- rollout:   `HFRolloutEngine` sharing the policy's module, so weight sync is free (same tensors); or,
             with `rollout.engine=vllm`, a `VLLMRolloutEngine` built from the warm-up folder.
- policy:    `TorchLearner` over `PolicyModel` (LM + value head for `algo=reft`).
- critic:    with `ppo.critic=separate` only, a second `TorchLearner` over another copy of the warm-up
             model with the value head (the policy then has none); otherwise None.
- reference: a frozen copy of the warm-up model, used only through `logprobs` (`adapter.kind=full`);
             with any other adapter, the policy itself with its adapter switched off (`AdapterReference`):
             no second copy of the model.
- reward:    `RewardRole`, the configured reward function behind a timeout that counts failures.

`Sampler` is the sampling-only subset (rollout + reward) that offline self-training uses.

Every model lives on the run's resolved device (`rlft/utils/device.py`), the reference on the CPU with
`kl.reference_device=cpu`; each role moves batches to its model and returns results on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from rlft.adapters import read_adapter_json
from rlft.config import Config, ConfigError, compile_conflict
from rlft.learner.base import Learner, Reference
from rlft.learner.reference import AdapterReference, FrozenReference
from rlft.learner.torch_learner import TorchLearner
from rlft.models.loading import load_for_run
from rlft.models.policy import PolicyModel
from rlft.reward.base import Reward
from rlft.reward.role import RewardRole
from rlft.rollout.base import RolloutEngine
from rlft.rollout.factory import hf_engine, make_engine
from rlft.trainers.algorithms import plan
from rlft.utils.device import Compute, reference_compute, resolve_compute


@dataclass
class Roles:
    """What the loop talks to; each member is an in-process object here or a Ray group
    (`rlft/dist/ray_roles.py`) with the same methods."""

    rollout: RolloutEngine  # HFRolloutEngine, VLLMRolloutEngine, or a Ray group of either
    policy: Learner  # TorchLearner, or a Ray group of DeepSpeed / torch ranks
    reference: Reference | None  # None when the resolved kl.coef is 0 or the algorithm has no KL
    reward: Reward  # RewardRole, or a Ray pool of them
    critic: Learner | None = None  # a separate value model (ppo.critic=separate), else None
    on_close: Callable[[], None] | None = None  # stops remote workers

    def remote_state(self) -> dict:
        """State that lives outside this process (the RNG of Ray rollout engines), for exact resume."""
        return {"rollout": self.rollout.state_dict()}

    def load_remote_state(self, state: dict) -> None:
        if "rollout" in state:  # absent in checkpoints written before engines had state_dict
            self.rollout.load_state_dict(state["rollout"])

    def close(self) -> None:
        """Frees the engine (a vLLM engine's memory, before the next run in this process: compare), then
        stops remote workers."""
        self.rollout.close()
        if self.on_close is not None:
            self.on_close()


@dataclass
class Sampler:
    """The roles of a sampling-only job (offline self-training): engine(s) and reward, in this process or on Ray."""

    rollout: RolloutEngine  # HFRolloutEngine on the driver's module, or a Ray group of engines
    reward: Reward  # RewardRole, or a Ray pool of them
    on_close: Callable[[], None] | None = None  # stops remote workers

    def close(self) -> None:
        self.rollout.close()
        if self.on_close is not None:
            self.on_close()


def build_sampler(cfg: Config, lm, tokenizer, model_path, adapter, *, compute: Compute | None = None) -> Sampler:
    """`cluster.backend=local`: rlft's HF sampling loop on `lm` (whatever `rollout.engine` says: self-training
    samples the module it will train), on `lm`'s device under `compute`'s precision (default: the run's);
    `ray`: `cluster.rollout_workers` engines (`rollout.engine`: HF or vLLM) and `cluster.reward_workers` actors,
    the driver holding no model."""
    if cfg.cluster.backend == "ray":
        from rlft.dist.ray_roles import build_ray_sampler

        return build_ray_sampler(cfg, tokenizer, model_path)
    return Sampler(rollout=hf_engine(cfg, lm, tokenizer, adapter, compute=compute), reward=RewardRole(cfg))


def build_roles(cfg: Config, lm, tokenizer, model_path, adapter, *, total_steps: int,
                compute: Compute | None = None) -> Roles:
    """`cluster.backend=local`: every role in this process; `ray`: actor groups (imported only then)."""
    if cfg.cluster.backend == "ray":
        from rlft.dist.ray_roles import build_ray_roles

        return build_ray_roles(cfg, tokenizer, model_path, total_steps=total_steps)
    return build_local_roles(cfg, lm, tokenizer, model_path, adapter, total_steps=total_steps, compute=compute)


def build_local_roles(cfg: Config, lm: torch.nn.Module, tokenizer, model_path, adapter, *, total_steps: int,
                      compute: Compute | None = None) -> Roles:
    """Policy (+ value head for reft) over `lm` with its attached `adapter`, the optional separate critic
    and the reference, each from the same warm-up, and the HF engine. `lm` is on `compute`'s device already
    (`prepare_model`); the others are loaded there (default: the run's resolved `Compute`)."""
    run = plan(cfg)
    compute = resolve_compute(cfg) if compute is None else compute
    learner = TorchLearner(PolicyModel(lm, value_head=run.value_head, head_dropout=cfg.carft.head_dropout,
                                       adapter=adapter, init_seed=cfg.run.seed, prefix_sharing=cfg.ppo.prefix_sharing,
                                       value_head_init=cfg.ppo.value_head_init,
                                       **policy_model_options(cfg, compute, phase="ppo")),
                           **rl_learner_options(cfg, total_steps))
    base_path = adapter.base_path or model_path  # the HF folder under an adapter checkpoint
    critic = None
    if cfg.ppo.critic == "separate":  # spec §5's ablation: a second learner with a value head, not a new role
        critic = TorchLearner(PolicyModel(load_for_run(base_path, cfg, compute, trains=True)[0], value_head="linear",
                                          init_seed=cfg.run.seed, prefix_sharing=cfg.ppo.prefix_sharing,
                                          value_head_init=cfg.ppo.value_head_init,
                                          **policy_model_options(cfg, compute, phase="ppo")),
                              **rl_learner_options(cfg, total_steps))
    reference = None
    if run.uses_reference:
        if adapter.kind == "full":
            where = reference_compute(cfg, compute)  # kl.reference_device
            reference = FrozenReference(load_for_run(model_path, cfg, where, trains=False)[0], cfg.ppo.prefix_sharing,
                                        mixed_precision=where.mixed, packing=cfg.ppo.packing,
                                        compile=cfg.model.compile)
        else:  # continuing an adapter checkpoint: the reference is that checkpoint, not the bare base
            start = adapter.adapter_state_dict() if read_adapter_json(model_path) is not None else None
            reference = AdapterReference(learner.model, start)
    engine = make_engine(cfg, lm, tokenizer, model_path, adapter, compute=compute)
    return Roles(rollout=engine, policy=learner, reference=reference, reward=RewardRole(cfg), critic=critic)


def build_sft_learner(cfg: Config, lm: torch.nn.Module, model_path, adapter, *, total_steps: int,
                      compute: Compute | None = None) -> tuple[Learner, Callable[[], None]]:
    """The SFT warm-up's learner and a function that stops it. `cluster.backend=local`: a `TorchLearner` over
    `lm` with its attached `adapter` (training moves `lm` itself, so an engine on it evaluates the newest
    weights), under `compute`'s precision (default: the run's; `lm` is on its device already); `ray`: the Ray
    learner group of `cluster.learner_ranks` ranks that PPO uses, each loading `model_path` (full finetuning
    only) on its own device and precision, with SFT's optimizer and schedule."""
    options = sft_learner_options(cfg, total_steps)
    if cfg.cluster.backend == "ray":
        from rlft.dist.ray_roles import build_ray_learner

        return build_ray_learner(cfg, model_path, options=options)
    compute = resolve_compute(cfg) if compute is None else compute
    return TorchLearner(PolicyModel(lm, adapter=adapter, **policy_model_options(cfg, compute, phase="sft")),
                        **options), lambda: None


def sft_learner_options(cfg: Config, total_steps: int) -> dict:
    """The SFT warm-up's optimizer and schedule, the same for every backend: AdamW at `sft.lr`, a linear
    warm-up over `sft.warmup_ratio` of the steps, then `sft.schedule`; train mode (dropout on)."""
    return dict(lr=cfg.sft.lr, weight_decay=cfg.sft.weight_decay, max_grad_norm=cfg.sft.max_grad_norm,
                total_steps=total_steps, warmup_steps=int(cfg.sft.warmup_ratio * total_steps),
                schedule=cfg.sft.schedule, train_mode=True)


def policy_model_options(cfg: Config, compute: Compute, *, phase: Literal["sft", "ppo"]) -> dict:
    """`PolicyModel` settings of a learner's model, the same for every learner (SFT, RL policy, separate critic,
    Ray ranks): bf16 autocast under bf16-mixed, `model.gradient_checkpointing`, and the phase's packing key
    (`sft.packing` or `ppo.packing`), `model.compile` (RL learners: not with shared prompts, whose layers run
    eager)."""
    if phase == "ppo" and (conflict := compile_conflict(cfg)) is not None:
        raise ConfigError(conflict)
    return dict(mixed_precision=compute.mixed, gradient_checkpointing=cfg.model.gradient_checkpointing,
                packing=getattr(cfg, phase).packing, packing_key=f"{phase}.packing", compile=cfg.model.compile)


def rl_learner_options(cfg: Config, total_steps: int) -> dict:
    """The optimizer and schedule of an RL learner, the same for every backend (torch, DeepSpeed) and role
    (policy, separate critic)."""
    return dict(lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay, max_grad_norm=cfg.ppo.max_grad_norm,
                total_steps=total_steps, warmup_steps=cfg.ppo.warmup_iterations, schedule="constant",
                train_mode=False)  # ReFT runs every forward in eval mode (dropout off), spec §9
