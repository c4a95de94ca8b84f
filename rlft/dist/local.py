"""The roles of one RL run as plain in-process objects (tests, `breakpoint()`, a laptop).

The loop in `rlft/trainers/ppo.py` talks only to `Roles`; `rlft/dist/ray_roles.py` (a later backend)
provides the same objects as proxies over Ray actor groups.

- rollout:   `HFRolloutEngine` sharing the policy's module, so weight sync is free (same tensors); or,
             with `rollout.engine=vllm`, a `VLLMRolloutEngine` built from the warm-up folder.
- policy:    `TorchLearner` over `PolicyModel` (LM + value head for `algo=reft`).
- critic:    with `ppo.critic=separate` only, a second `TorchLearner` over another copy of the warm-up
             model with the value head (the policy then has none); otherwise None.
- reference: a frozen copy of the warm-up model, used only through `logprobs` (`adapter.kind=full`);
             with any other adapter, the policy itself with its adapter switched off (`AdapterReference`):
             no second copy of the model.
- reward:    `RewardRole`, the configured reward function behind a timeout that counts failures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

import rewards
from rlft.adapters import read_adapter_json
from rlft.config import Config
from rlft.learner.torch_learner import TorchLearner, response_logprobs_and_values
from rlft.models.policy import load_policy
from rlft.models.value_head import PolicyModel
from rlft.rollout.base import RolloutEngine
from rlft.rollout.hf_engine import HFRolloutEngine
from rlft.tasks.base import Record
from rlft.tasks.prompts import program_text, prompt_text


class RewardRole:
    """Scores decoded responses with the configured reward function (`reward.fn`).

    Columns passed to the function are the record's fields (`answer`, `question`, `dataset`, `options`,
    `id`) plus `format` (`text` or `program`). P-CoT completions are passed as whole programs (the
    generation prefix + the generated body), so plug-ins see runnable code.
    """

    def __init__(self, cfg: Config):
        self.fn = rewards.get_reward_fn(cfg.reward.fn)
        if self.fn.builtin and cfg.reward.fn == "math":
            self.fn = functools.partial(rewards.math_reward, partial_reward=cfg.reward.partial_reward)
        self.style = cfg.data.style
        self.timeout = cfg.reward.timeout
        self.on_error = cfg.reward.on_error
        self.truncated_score = cfg.reward.truncated_score

    def score(self, texts: list[str], records: list[Record], truncated: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Returns scores (B,) and metrics (`reward/failed`: samples whose reward call failed)."""
        completions = texts if self.style != "program" else [
            program_text(prompt_text(r, "program"), t) for r, t in zip(records, texts)
        ]
        columns = {
            "answer": [r.answer for r in records], "question": [r.question for r in records],
            "dataset": [r.dataset for r in records], "options": [r.options for r in records],
            "id": [r.id for r in records], "format": ["program" if self.style == "program" else "text"] * len(records),
        }
        # Failures (raise, hang, NaN, wrong length) are scored 0 and counted, or raise naming the record ids.
        scores, n_failed = rewards.safe_call(self.fn, completions, columns, timeout=self.timeout, on_error=self.on_error)
        out = torch.tensor(scores, dtype=torch.float32)
        if self.truncated_score is not None:
            out = torch.where(truncated, torch.tensor(self.truncated_score), out)
        return out, {"reward/failed": float(n_failed)}


class FrozenReference:
    """The warm-up policy, frozen: teacher-forced log-probs only."""

    def __init__(self, lm: torch.nn.Module, prefix_sharing: bool = True):
        self.model = PolicyModel(lm, prefix_sharing=prefix_sharing).eval()
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
        return response_logprobs_and_values(self.model, batch, micro_batch_size)[0]


class AdapterReference:
    """The policy with its adapter switched off, or, for a run that continues an adapter checkpoint, set
    back to the weights it started from (`specs/adapters.md` §11.4). Adapters start as the identity, so
    adapter-off is exactly the warm-up and the first KL is 0."""

    def __init__(self, model: PolicyModel, start_state: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.start_state = start_state

    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
        adapter = self.model.adapter
        switch = adapter.disabled() if self.start_state is None else adapter.using(self.start_state)
        was_training = self.model.training
        self.model.eval()
        try:
            with switch, torch.inference_mode():
                return response_logprobs_and_values(self.model, batch, micro_batch_size)[0]
        finally:
            self.model.train(was_training)


@dataclass
class Roles:
    """What the loop talks to; each member is an in-process object here or a Ray group
    (`rlft/dist/ray_roles.py`) with the same methods."""

    rollout: RolloutEngine  # HFRolloutEngine, or VLLMRolloutEngine with rollout.engine=vllm
    policy: TorchLearner
    reference: FrozenReference | AdapterReference | None
    reward: RewardRole
    critic: TorchLearner | None = None  # a separate value model (ppo.critic=separate), else None
    on_close: Callable[[], None] | None = None  # stops remote workers

    def remote_state(self) -> dict:
        """State that lives outside this process (the RNG of Ray rollout engines), for exact resume."""
        return {"rollout": self.rollout.state_dict()} if hasattr(self.rollout, "state_dict") else {}

    def load_remote_state(self, state: dict) -> None:
        if "rollout" in state and hasattr(self.rollout, "load_state_dict"):
            self.rollout.load_state_dict(state["rollout"])

    def close(self) -> None:
        """Frees the engine (a vLLM engine's memory, before the next run in this process: compare), then
        stops remote workers."""
        self.rollout.close()
        if self.on_close is not None:
            self.on_close()


def build_roles(cfg: Config, lm, tokenizer, model_path, adapter, *, total_steps: int) -> Roles:
    """`cluster.backend=local`: every role in this process; `ray`: actor groups (imported only then)."""
    if cfg.cluster.backend == "ray":
        from rlft.dist.ray_roles import build_ray_roles

        return build_ray_roles(cfg, tokenizer, model_path, total_steps=total_steps)
    return build_local_roles(cfg, lm, tokenizer, model_path, adapter, total_steps=total_steps)


def make_engine(cfg: Config, lm, tokenizer, model_path, adapter=None) -> RolloutEngine:
    """`rollout.engine`: hf (shares `lm`, so syncing is free) or vllm (its own copy of the weights at
    `model_path`, refreshed by the loop's `load_weights`). Used in-process and by Ray rollout workers."""
    if cfg.rollout.engine == "vllm":
        from rlft.rollout.vllm_engine import VLLMRolloutEngine  # lazy: vllm is an optional extra

        max_position = getattr(getattr(lm, "config", None), "max_position_embeddings", None) or 10**9
        return VLLMRolloutEngine(
            model_path, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, dtype=cfg.model.dtype,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, enable_sleep=cfg.rollout.vllm_enable_sleep,
            max_model_len=min(cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens),
                              max_position),  # bounds vLLM's KV cache
            seed=cfg.run.seed,
        )
    return HFRolloutEngine(lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                           batch_size=cfg.rollout.batch_size, adapter=adapter,
                           lean_step=cfg.rollout.hf_lean_step)


def build_local_roles(cfg: Config, lm: torch.nn.Module, tokenizer, model_path, adapter, *, total_steps: int) -> Roles:
    """Policy (+ value head for reft) over `lm` with its attached `adapter`, the optional separate critic
    and the reference, each from the same warm-up, and the HF engine."""
    make_learner = functools.partial(
        TorchLearner, lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay, max_grad_norm=cfg.ppo.max_grad_norm,
        total_steps=total_steps, warmup_steps=cfg.ppo.warmup_iterations, schedule="constant",
        train_mode=False,  # ReFT runs every forward in eval mode (dropout off), spec §9
    )
    separate = cfg.ppo.critic == "separate"
    head = None if separate else {"reft": "linear", "carft": "carft"}.get(cfg.algo)
    learner = make_learner(PolicyModel(lm, value_head=head, head_dropout=cfg.carft.head_dropout, adapter=adapter,
                                       init_seed=cfg.run.seed, prefix_sharing=cfg.ppo.prefix_sharing))
    base_path = adapter.base_path or model_path  # the HF folder under an adapter checkpoint
    critic = None
    if separate:  # spec §5's ablation: a second learner with a value head, not a new kind of role
        critic = make_learner(PolicyModel(load_policy(base_path, dtype=cfg.model.dtype)[0], value_head="linear",
                                          init_seed=cfg.run.seed, prefix_sharing=cfg.ppo.prefix_sharing))
    reference = None
    if cfg.algo != "online_st" and cfg.kl.coef > 0:
        if adapter.kind == "full":
            reference = FrozenReference(load_policy(model_path, dtype=cfg.model.dtype)[0], cfg.ppo.prefix_sharing)
        else:  # continuing an adapter checkpoint: the reference is that checkpoint, not the bare base
            start = adapter.adapter_state_dict() if read_adapter_json(model_path) is not None else None
            reference = AdapterReference(learner.model, start)
    engine = make_engine(cfg, lm, tokenizer, model_path, adapter)
    return Roles(rollout=engine, policy=learner, reference=reference, reward=RewardRole(cfg), critic=critic)
