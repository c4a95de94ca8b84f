"""The roles of one RL run as plain in-process objects (tests, `breakpoint()`, a laptop).

The loop in `rlft/trainers/ppo.py` talks only to `Roles`; `rlft/dist/ray_roles.py` (a later backend)
provides the same objects as proxies over Ray actor groups.

- rollout:   `HFRolloutEngine` sharing the policy's module, so weight sync is free (same tensors); or,
             with `rollout.engine=vllm`, a `VLLMRolloutEngine` built from the warm-up folder.
- policy:    `TorchLearner` over `PolicyModel` (LM + value head for `algo=reft`).
- critic:    with `ppo.critic=separate` only, a second `TorchLearner` over another copy of the warm-up
             model with the value head (the policy then has none); otherwise None.
- reference: a frozen copy of the warm-up model, used only through `logprobs`.
- reward:    `RewardRole`, the configured reward function behind a timeout that counts failures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import rewards
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

    def __init__(self, lm: torch.nn.Module):
        self.model = PolicyModel(lm).eval()
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
        return response_logprobs_and_values(self.model, batch, micro_batch_size)[0]


@dataclass
class Roles:
    rollout: RolloutEngine  # HFRolloutEngine, or VLLMRolloutEngine with rollout.engine=vllm
    policy: TorchLearner
    reference: FrozenReference | None
    reward: RewardRole
    critic: TorchLearner | None = None  # a separate value model (ppo.critic=separate), else None


def build_local_roles(cfg: Config, lm: torch.nn.Module, tokenizer, model_path, *, total_steps: int) -> Roles:
    """Policy (+ value head for reft), the optional separate critic and a frozen reference, each loaded
    from the same warm-up, and the HF engine."""
    make_learner = functools.partial(
        TorchLearner, lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay, max_grad_norm=cfg.ppo.max_grad_norm,
        total_steps=total_steps, warmup_steps=cfg.ppo.warmup_iterations, schedule="constant",
        train_mode=False,  # ReFT runs every forward in eval mode (dropout off), spec §9
    )
    separate = cfg.ppo.critic == "separate"
    head = None if separate else {"reft": "linear", "carft": "carft"}.get(cfg.algo)
    learner = make_learner(PolicyModel(lm, value_head=head, head_dropout=cfg.carft.head_dropout))
    critic = None
    if separate:  # spec §5's ablation: a second learner with a value head, not a new kind of role
        critic = make_learner(PolicyModel(load_policy(model_path, dtype=cfg.model.dtype)[0], value_head="linear"))
    needs_reference = cfg.algo != "online_st" and cfg.kl.coef > 0
    reference = FrozenReference(load_policy(model_path, dtype=cfg.model.dtype)[0]) if needs_reference else None
    if cfg.rollout.engine == "vllm":  # its own copy of the weights, refreshed by the loop's load_weights
        from rlft.rollout.vllm_engine import VLLMRolloutEngine  # lazy: vllm is an optional extra

        engine = VLLMRolloutEngine(
            model_path, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, dtype=cfg.model.dtype,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, enable_sleep=cfg.rollout.vllm_enable_sleep,
            max_model_len=min(cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens),
                              getattr(lm.config, "max_position_embeddings", None) or 10**9),  # bounds vLLM's KV cache
            seed=cfg.run.seed,
        )
    else:
        engine = HFRolloutEngine(lm, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                 batch_size=cfg.rollout.batch_size)
    return Roles(rollout=engine, policy=learner, reference=reference, reward=RewardRole(cfg), critic=critic)
