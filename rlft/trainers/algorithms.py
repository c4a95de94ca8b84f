"""The algorithms `rlft train` runs, one row each; config choices, validation and role wiring derive from it.

A row says what an algorithm needs (a value head, a reference, groups of samples), which advantage
estimator step 4 of the loop calls, the defaults of the keys it decides (`kl.coef`, `kl.placement`,
`kl.estimator`, `ppo.loss_agg`, `ppo.clip_eps_high`: each is `auto`/None in the config until the user sets
it), its extra phases, and whether the Ray backend runs it. `plan(cfg)` resolves a config against its row
into a frozen `Plan` (runtime values, never written back into the config). The loop in `ppo.py`, the roles
(`dist/local.py`, `dist/ray_roles.py`) and `config.validate` read only the plan.

Adding an algorithm: its math in `rlft/algos/` (tested against hand-computed numbers), one estimator
function below if step 4 differs, one row in `ALGORITHMS`, tests. Nothing else in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch

from rlft.algos import advantages as adv_algos
from rlft.algos import ppo

if TYPE_CHECKING:
    from rlft.config import Config
    from rlft.types import TrainBatch

# (batch, per-token KL for the reward or None, β, cfg) -> advantages (B, T), returns (B, T) or None, metrics
Estimator = Callable[["TrainBatch", "torch.Tensor | None", float, "Config"], tuple[torch.Tensor, "torch.Tensor | None", dict]]


# ----------------------------------------------------------------------------------------------------
# Step 4 per estimator: glue from the batch to the pure math of `rlft/algos/`


def gae_advantages(batch: TrainBatch, kl_t: torch.Tensor | None, kl_coef: float, cfg: Config):
    """ReFT (spec §6-7): score at the last token minus β·KL per token, GAE over the critic's values, whitening."""
    mask = batch.response_mask
    rewards = ppo.shape_rewards(batch.scores, mask, kl_t, kl_coef=kl_coef if kl_t is not None else 0.0)  # (B, T)
    advantages, returns = ppo.gae(rewards, batch.old_values, mask, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam)
    metrics = {"value/explained_variance": ppo.explained_variance(batch.old_values, returns, mask)}
    if cfg.ppo.whiten_advantages:
        advantages = ppo.masked_whiten(advantages, mask)
    return advantages, returns, metrics


def _sequence_scores(batch: TrainBatch, kl_t: torch.Tensor | None, kl_coef: float) -> torch.Tensor:
    """(B,) scores minus β·Σ_t KL_t when the KL is in the reward (TRL's RLOO does the same)."""
    return batch.scores - kl_coef * kl_t.sum(-1) if kl_t is not None else batch.scores


def group_estimator(estimator: Callable[..., torch.Tensor], **kwargs) -> Estimator:
    """A per-sequence group baseline (GRPO, Dr. GRPO, RLOO, ...) spread over the response tokens."""

    def advantages(batch: TrainBatch, kl_t: torch.Tensor | None, kl_coef: float, cfg: Config):
        G = cfg.rollout.samples_per_prompt
        seq = estimator(_sequence_scores(batch, kl_t, kl_coef), group_size=G, **kwargs)  # (B,)
        return (adv_algos.broadcast_to_tokens(seq, batch.response_mask), None,
                adv_algos.group_metrics(batch.scores, group_size=G))

    return advantages


def reinforce_pp_advantages(batch: TrainBatch, kl_t: torch.Tensor | None, kl_coef: float, cfg: Config):
    """REINFORCE++: token returns with the KL in the reward, whitened over the batch."""
    advantages, _ = adv_algos.reinforce_pp(batch.scores, batch.response_mask, kl_t,
                                           kl_coef=kl_coef if kl_t is not None else 0.0, gamma=cfg.ppo.gamma)
    return advantages, None, {}


def reinforce_pp_baseline_advantages(batch: TrainBatch, kl_t: torch.Tensor | None, kl_coef: float, cfg: Config):
    """REINFORCE++-baseline: the group mean subtracted from the scores, then REINFORCE++ (OpenRLHF's order)."""
    advantages, _ = adv_algos.reinforce_pp_baseline(batch.scores, batch.response_mask, kl_t,
                                                    group_size=cfg.rollout.samples_per_prompt,
                                                    kl_coef=kl_coef if kl_t is not None else 0.0, gamma=cfg.ppo.gamma)
    return advantages, None, adv_algos.group_metrics(batch.scores, group_size=cfg.rollout.samples_per_prompt)


# ----------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Algorithm:
    """One row. Defaults are what `auto` (or None) resolves to for this algorithm."""

    name: str
    summary: str
    loop: Literal["ppo", "online_st", "offline_st", "nlft"] = "ppo"
    """`ppo`: the RL loop of `ppo.py`; `online_st`: the same loop with a CE update on correct samples;
    `offline_st`: sample once, then SFT (`selftrain.py`); `nlft`: sample and judge once, then epochs of the
    NLFT loss (`nlft.py`)."""
    advantage: Estimator | None = None
    """Step 4; None for the self-training loops."""
    value_head: Literal["linear", "carft"] | None = None
    """The policy's head: ReFT's linear critic, CARFT's 64-d embedding head, or none (critic-free)."""
    separate_critic: bool = False
    """`ppo.critic=separate` is possible (the value model as a second learner)."""
    reference: bool = True
    """A frozen warm-up reference for the KL (built only when the resolved kl.coef > 0)."""
    group: bool = False
    """Needs rollout.samples_per_prompt >= 2 (a group baseline)."""
    kl_coef: float = 0.05
    kl_placement: Literal["reward", "loss"] = "reward"
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    clip_eps_high: float | None = None
    """Upper ratio clip; None: symmetric (ppo.clip_eps)."""
    anchor_phase: bool = False
    """CARFT: pool the annotated CoT's embedding before the update, add the contrastive loss in it."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose scores are all equal and sample more prompts until the batch is full."""
    overlong_shaping: bool = False
    """DAPO: soft punishment of responses that run into the last `dapo.overlong_cache_tokens` of the budget."""
    ray: bool = True
    """Runs with cluster.backend=ray (else local only: an extra phase that needs the policy module in the driver).
    Every row but nlft runs on Ray today: CARFT's anchor pass runs on the learner ranks, self-training's CE steps go
    through the learner group."""
    adapter: Literal["full", "lora"] = "full"
    """What the policy trains when `adapter.kind=auto` (the default)."""


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("reft", "ReFT: PPO with a value head on the policy and the KL in the reward (Luong et al. 2024)",
              advantage=gae_advantages, value_head="linear", separate_critic=True),
    Algorithm("carft", "CARFT: ReFT plus a contrastive loss against the annotated CoT (specs/carft.md)",
              advantage=gae_advantages, value_head="carft", anchor_phase=True),
    Algorithm("grpo", "GRPO: group-normalised outcome advantage (Shao et al. 2024)",
              advantage=group_estimator(adv_algos.grpo), group=True),
    Algorithm("rloo", "RLOO: leave-one-out group baseline (Ahmadian et al. 2024)",
              advantage=group_estimator(adv_algos.rloo), group=True),
    Algorithm("reinforce_pp", "REINFORCE++: token returns with the KL in the reward, batch-whitened (Hu 2025)",
              advantage=reinforce_pp_advantages),
    Algorithm("dr_grpo", "Dr. GRPO: GRPO without the std division, token sums over a constant length (Liu et al. 2025)",
              advantage=group_estimator(adv_algos.grpo, scale=False), group=True, kl_coef=0.0,
              loss_agg="seq-mean-token-sum-norm"),
    Algorithm("reinforce_pp_baseline", "REINFORCE++-baseline: group mean subtracted, then REINFORCE++ (OpenRLHF)",
              advantage=reinforce_pp_baseline_advantages, group=True, kl_coef=0.001, kl_placement="loss",
              kl_estimator="k2"),
    Algorithm("dapo", "DAPO: GRPO with clip-higher, token-level loss, dynamic sampling, overlong shaping, no KL "
              "(Yu et al. 2025)", advantage=group_estimator(adv_algos.grpo), group=True, kl_coef=0.0,
              loss_agg="token-mean", clip_eps_high=0.28, dynamic_sampling=True, overlong_shaping=True),
    Algorithm("online_st", "online self-training: CE on the correct samples and the gold CoTs (spec §12)",
              loop="online_st", reference=False),
    Algorithm("offline_st", "offline self-training: sample the warm-up once, then SFT on gold + correct samples",
              loop="offline_st", reference=False),
    Algorithm("nlft", "NLFT: sample and judge once, then token-level likelihood / unlikelihood weighted by how the "
              "judgment and the reference move each token (Liu et al. 2024, docs/nlft.md)",
              loop="nlft", reference=False, ray=False, adapter="lora"),
]}


def get(name: str) -> Algorithm:
    """The row of `name`; a KeyError naming the choices (config validation reports it as a ConfigError)."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algo {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


@dataclass(frozen=True)
class Plan:
    """A config resolved against its algorithm's row (runtime values; the config keeps what the user set)."""

    algorithm: Algorithm
    kl_coef: float
    kl_placement: str
    kl_estimator: str
    loss_agg: str
    clip_eps_high: float | None
    value_head: str | None
    """The policy's head (None when a separate critic holds the value head)."""
    uses_reference: bool
    adapter_kind: str
    """`adapter.kind`, with `auto` resolved to the row's adapter."""

    @property
    def kl_in_reward(self) -> bool:
        return self.uses_reference and self.kl_placement == "reward"

    @property
    def kl_in_loss(self) -> bool:
        return self.uses_reference and self.kl_placement == "loss"


def plan(cfg: Config) -> Plan:
    """Resolve `auto`/None keys from the row of `cfg.algo`."""
    row = get(cfg.algo)
    kl_coef = row.kl_coef if cfg.kl.coef is None else cfg.kl.coef
    separate = cfg.ppo.critic == "separate"
    return Plan(
        algorithm=row,
        kl_coef=kl_coef,
        kl_placement=row.kl_placement if cfg.kl.placement == "auto" else cfg.kl.placement,
        kl_estimator=row.kl_estimator if cfg.kl.estimator == "auto" else cfg.kl.estimator,
        loss_agg=row.loss_agg if cfg.ppo.loss_agg == "auto" else cfg.ppo.loss_agg,
        clip_eps_high=row.clip_eps_high if cfg.ppo.clip_eps_high is None else cfg.ppo.clip_eps_high,
        value_head=None if separate else row.value_head,
        uses_reference=row.reference and kl_coef > 0,
        adapter_kind=row.adapter if cfg.adapter.kind == "auto" else cfg.adapter.kind,
    )
