"""The RL loop: ReFT (PPO with a value head and KL in the reward) and its critic-free baselines.

    rlft train configs/reft_demo.yaml model.path=runs/demo-sft/checkpoints/ckpt-126

`model.path` is the warm-up checkpoint: it is both the initial policy and the frozen reference (spec §1).
One iteration, top to bottom (spec §9):

    1. sample      rollout.generate               one or more responses per training question
    2. score       reward.score                   1 / partial / 0, or a plug-in's score
    3. evaluate    policy.logprobs_and_values, reference.logprobs   (teacher-forced, eval mode; values
                   from critic.logprobs_and_values when ppo.critic=separate)
    4. advantage   algos: shape_rewards -> gae -> whiten (reft) | group baselines | REINFORCE++
    5. update      ppo_epochs x minibatches: policy.train_step(micro_batches, loss_fn) [+ critic.train_step]
    6. sync        rollout.load_weights(policy.named_weights())   (free in-process: shared module)
    7. log         reward/ policy/ value/ kl/ rollout/ timing/ eval/

`algo`: a row of `rlft/trainers/algorithms.py` (reft, carft, grpo, dr_grpo, rloo, reinforce_pp,
reinforce_pp_baseline, dapo, online_st). The loop reads only the row's resolved `Plan`: whether there is a
value head and a reference, which estimator step 4 calls, and the extra phases (CARFT's anchor pass,
`rlft/trainers/carft.py`; DAPO's dynamic sampling and overlong shaping). Offline self-training is
`rlft/trainers/selftrain.py`.

Deviations from the ReFT reference (spec §17), each a config value:
- the sampler is an engine (HF here, vLLM on GPU); old log-probs are always recomputed by the learner, so
  the first minibatch's ratio is exactly 1; the sampler's log-probs are only compared (`rollout/logprob_diff`);
- `rollout.max_new_tokens` instead of a prompt + response cap;
- `rollout.samples_per_prompt` > 1 is allowed (ReFT samples 1);
- `ppo.value_warmup_iterations` > 0 trains only the value head first (spec §16's suggestion);
- group estimators with `kl.placement=reward` subtract beta * sum_t KL_t from the sequence score before the
  group baseline (TRL's RLOO does the same); with `kl.placement=loss` the KL term is added to the loss.

Policy adapters (`adapter.kind`, `rlft/adapters/`): the policy may train a LoRA or a representation
adapter on a frozen warm-up instead of every weight. The reference is then the same model with the
adapter switched off (no second copy); the value head trains beside the adapter on the shared trunk.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rlft.algos import dapo
from rlft.algos import kl as kl_algos
from rlft.algos import ppo
from rlft.config import Config, to_dict
from rlft.dist.errors import WorkerLostError
from rlft.dist.local import Roles, build_roles
from rlft.evaluate import evaluate_held_out
from rlft.learner.base import DivergedError
from rlft.models.card import write_model_card
from rlft.models.policy import ResponseOutput
from rlft.reward.role import completion_ids
from rlft.rollout.base import SamplingParams
from rlft.tasks.base import Record
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import encode_prompts, epoch_order
from rlft.trainers import carft
from rlft.trainers import dapo as dapo_phases
from rlft.trainers.algorithms import Plan, gae_advantages, plan
from rlft.trainers.selftrain import online_st_micro_batches
from rlft.types import RolloutBatch, TrainBatch
from rlft.utils import checkpoint
from rlft.utils.device import resolve_compute
from rlft.utils.logging import MetricLogger, print0, progress, write_jsonl
from rlft.utils.seeding import rng_state, seed_everything, set_rng_state
from rlft.utils.trackers import open_trackers
from rlft.workspace import check_context, load_split, open_run_dir, prepare_model


def prompt_indices(n: int, per_step: int, seed: int, iteration: int) -> list[int]:
    """Questions of `iteration`: consecutive slices of per-epoch shuffles, wrapping across epochs."""
    orders: dict[int, list[int]] = {}  # one shuffle per epoch touched (at most two per iteration)
    out = []
    for p in range(iteration * per_step, (iteration + 1) * per_step):
        epoch = p // n
        if epoch not in orders:
            orders[epoch] = epoch_order(n, seed, epoch)
        out.append(orders[epoch][p % n])
    return out


def needs_old_logprobs(cfg: Config, run: Plan, batch_size: int) -> bool:
    """False when one on-policy step per batch makes old log-probs equal the current ones (TRL's
    num_iterations=1 shortcut): critic-free, one PPO epoch, one minibatch, no KL in the reward."""
    single_step = cfg.ppo.ppo_epochs == 1 and (cfg.ppo.sequences_per_minibatch or batch_size) >= batch_size
    return not (run.algorithm.value_head is None and single_step and not run.kl_in_reward)


def kl_metrics(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str):
    """Per-token KL (B, T) with the configured estimator, and `kl/mean` / `kl/k1_mean` per sequence."""
    kl_t = kl_algos.kl_penalty(logprobs, ref_logprobs, kind=estimator) * mask  # (B, T)
    k1 = kl_algos.kl_penalty(logprobs, ref_logprobs, kind="k1") * mask
    return kl_t, {"kl/mean": kl_t.sum(-1).mean(), "kl/k1_mean": k1.sum(-1).mean()}


def compute_advantages(cfg: Config, run: Plan, batch: TrainBatch, kl_coef: float) -> dict:
    """Step 4: sets `batch.advantages` (and `returns`) with the algorithm's estimator; returns metrics."""
    metrics: dict = {}
    kl_t = None
    if batch.ref_logprobs is not None and batch.old_logprobs is not None:
        kl_t, metrics = kl_metrics(batch.old_logprobs, batch.ref_logprobs, batch.response_mask, run.kl_estimator)
    in_reward = kl_t if run.kl_placement == "reward" else None
    batch.advantages, batch.returns, estimator_metrics = run.algorithm.advantage(batch, in_reward, kl_coef, cfg)
    metrics.update(estimator_metrics)
    return metrics


def make_loss_fn(cfg: Config, run: Plan, *, num_seqs: int, kl_coef: float, part: str, num_tokens: float,
                 has_old_logprobs: bool):
    """Step 5's loss on one learner. `part`:
    - "policy": PPO-clip policy loss [+ CARFT's L_cl] [+ beta * KL in the loss] (the policy, separate critic);
    - "value":  vf_coef * value loss (a separate critic, or the shared head during value warm-up);
    - "both":   their sum, for a value head on the policy's backbone (or none: critic-free algos).

    Normalised by the minibatch's global sequence count, or for `token-mean` its response-token count
    `num_tokens` (the learner sums micro-batches). Metrics follow the learners' rule (`rlft/learner/base.py`):
    each is this micro-batch's share of the minibatch value, so micro-batching changes neither.
    """
    agg = dict(agg=run.loss_agg, num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.rollout.max_new_tokens)

    def loss_fn(output: ResponseOutput, mb: dict):
        mask = mb["response_mask"]
        share = mask.shape[0] / num_seqs
        loss, means, shares = 0.0, {}, {}  # means: of this micro-batch; shares: already minibatch-normalised
        if part != "value":
            logprobs = ppo.logprobs_from_logits(output.logits, mb["response_ids"])  # (b, T)
            old = mb["old_logprobs"] if has_old_logprobs else logprobs.detach()
            loss, means = ppo.policy_loss(logprobs, old, mb["advantages"], mask,
                                          clip_eps=cfg.ppo.clip_eps, clip_eps_high=run.clip_eps_high, **agg)
            shares["policy/loss"] = loss.detach()
            if run.algorithm.anchor_phase:
                cl_loss, cl_metrics = carft.loss_term(cfg, output.sequence, mb, output.gather_ranks)
                loss = loss + share * cl_loss  # L_cl is a per-micro-batch mean: average it over micro-batches
                means.update(cl_metrics)
            if run.kl_in_loss:
                kl_loss = ppo.aggregate(kl_algos.kl_penalty(logprobs, mb["ref_logprobs"], kind=run.kl_estimator),
                                        mask, mode=run.loss_agg, num_seqs=num_seqs, num_tokens=num_tokens,
                                        max_len=cfg.rollout.max_new_tokens)
                loss = loss + kl_coef * kl_loss
                shares["kl/loss"] = kl_loss.detach()
                if not has_old_logprobs:  # no pre-update pass computed the KL metrics: take them here
                    with torch.no_grad():
                        means.update(kl_metrics(logprobs, mb["ref_logprobs"], mask, run.kl_estimator)[1])
            with torch.no_grad():
                means["policy/entropy"] = ppo.masked_mean(ppo.entropy_from_logits(output.logits), mask)
        if part != "policy" and output.values is not None:
            v_loss, v_metrics = ppo.value_loss(output.values, mb["old_values"], mb["returns"], mask,
                                               clip_eps=cfg.ppo.value_clip_eps, **agg)
            loss = loss + cfg.ppo.vf_coef * v_loss
            means.update(v_metrics)
            shares["value/loss"] = v_loss.detach()
        metrics = {k: v * share for k, v in means.items()}
        metrics.update(shares)
        return loss, metrics

    return loss_fn


def count_skipped(state: dict, step: dict, limit: int) -> None:
    """Track optimizer steps skipped in a row for a non-finite loss or gradient; raise at `limit` (0: never).
    The streak lives in the trainer state, so it survives a resume."""
    state["skipped_streak"] = state.get("skipped_streak", 0) + 1 if step.get("train/skipped_step", 0.0) > 0 else 0
    if limit and state["skipped_streak"] >= limit:
        raise DivergedError(f"{state['skipped_streak']} optimizer steps in a row had a non-finite loss or gradient "
                            f"and were skipped (ppo.max_consecutive_skipped_steps={limit})")


def ppo_update(cfg: Config, run: Plan, roles: Roles, batch: TrainBatch, *, kl_coef: float, value_only: bool,
               seed: int, state: dict) -> dict:
    """Step 5: `ppo_epochs` passes of shuffled minibatches; returns the metrics averaged over steps.

    Shared value head: one policy step per minibatch. Separate critic: a policy step with the policy loss,
    then a critic step with the value loss (its train/* metrics logged as critic/*). Value warm-up
    (`value_only`) trains only the shared head, or only the separate critic.
    """
    B = len(batch)
    per_mb = cfg.ppo.sequences_per_minibatch or B
    generator = torch.Generator().manual_seed(seed)
    if roles.critic is None:
        steps = [(roles.policy, "value" if value_only else "both")]
    else:
        steps = ([] if value_only else [(roles.policy, "policy")]) + [(roles.critic, "value")]
    # Shared-head warm-up: the backbone gets no gradient, so only the value head learns.
    roles.policy.set_value_only(value_only and roles.critic is None)
    sums: dict = {}
    n_steps = 0
    for _ in range(cfg.ppo.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, per_mb):
            idx = order[start:start + per_mb]
            if cfg.ppo.prefix_sharing and not run.algorithm.anchor_phase:
                # The minibatch stays random; its micro-batches follow rollout order, so a prompt's samples
                # share a micro-batch and one prompt pass. Losses are normalised by minibatch totals, so the
                # gradient is the same. (CARFT contrasts a micro-batch's rows: its batches stay shuffled.)
                idx = idx.sort().values
            mbs = batch.micro_batches(idx, cfg.ppo.micro_batch_size_per_device)
            num_tokens = float(batch.response_mask[idx].sum())  # token-mean's normaliser
            for learner, part in steps:
                step = learner.train_step(mbs, make_loss_fn(cfg, run, num_seqs=len(idx), kl_coef=kl_coef, part=part,
                                                            num_tokens=num_tokens,
                                                            has_old_logprobs=batch.old_logprobs is not None))
                count_skipped(state, step, cfg.ppo.max_consecutive_skipped_steps)
                if learner is roles.critic:
                    step = {k.replace("train/", "critic/", 1): v for k, v in step.items()}
                for k, v in step.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            n_steps += 1
    roles.policy.set_value_only(False)
    return {k: v / n_steps for k, v in sums.items()}


@contextmanager
def timed(metrics: dict, name: str):
    """Adds the block's wall time to `timing/<name>` (summed when a phase runs several times)."""
    start = time.perf_counter()
    yield
    metrics[f"timing/{name}"] = metrics.get(f"timing/{name}", 0.0) + (time.perf_counter() - start)


@dataclass
class Loop:
    """What every phase of one run reads; built once by `run_ppo`."""

    cfg: Config
    plan: Plan
    roles: Roles
    adapter: object | None  # the policy's adapter (None on Ray: full finetuning only)
    run_dir: Path
    train: list[Record]
    test: list[Record]
    tokenizer: object
    prompts: list[list[int]]  # every training question, encoded once
    sampling: SamplingParams
    kl_ctl: kl_algos.FixedKLController | kl_algos.AdaptiveKLController
    state: dict  # what a checkpoint restores: iteration, counters, history, best checkpoint


def run_ppo(cfg: Config, *, stop_after_iterations: int | None = None) -> dict:
    """Train with `cfg.algo` from the warm-up at `model.path`; returns the summary (also summary.json)."""
    run = plan(cfg)
    if run.algorithm.advantage is gae_advantages and run.kl_coef == 0:
        warnings.warn(f"algo={cfg.algo} with kl.coef=0: the ReFT paper reports collapse to 0% accuracy without KL")
    run_dir = open_run_dir(cfg)
    compute = resolve_compute(cfg)
    print0(f"rlft train: {compute.describe()}" + (" in every Ray actor" if cfg.cluster.backend == "ray" else ""))
    seed_everything(cfg.run.seed)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    lm, tokenizer, model_path, adapter = prepare_model(cfg, train, with_model=cfg.cluster.backend == "local",
                                                       compute=compute)
    check_context(cfg, model_path)
    roles = build_roles(cfg, lm, tokenizer, model_path, adapter, total_steps=cfg.ppo.iterations, compute=compute)
    try:
        kl_ctl = kl_algos.AdaptiveKLController(init_kl_coef=run.kl_coef, target=cfg.kl.target, horizon=cfg.kl.horizon) \
            if cfg.kl.adaptive else kl_algos.FixedKLController(kl_coef=run.kl_coef)
        loop = Loop(cfg, run, roles, adapter, run_dir, train, test, tokenizer,
                    encode_prompts(tokenizer, train, cfg.data.style, cfg.data.max_prompt_tokens,
                                   fmt=PromptFormat.of(cfg.data)),
                    SamplingParams(n=cfg.rollout.samples_per_prompt, temperature=cfg.rollout.temperature,
                                   top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                                   max_new_tokens=cfg.rollout.max_new_tokens, logprobs=True),
                    kl_ctl, {"iteration": 0, "train_seconds": 0.0, "samples": 0, "tokens": 0, "best_accuracy": -1.0,
                             "best_checkpoint": None, "history": [], "model_path": str(model_path)})
        return _train(loop, stop_after_iterations)
    except (WorkerLostError, DivergedError) as e:
        # skipped steps never touch the weights, so the last checkpoint is a good one in both cases
        last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        where = f"last checkpoint: {last}; continue from it with run.resume=true" if last else "no checkpoint yet"
        raise type(e)(f"{e}; the run stopped ({where})") from None
    finally:
        roles.close()


def _train(loop: Loop, stop_after_iterations: int | None) -> dict:
    cfg, run, roles = loop.cfg, loop.plan, loop.roles
    resumed = _resume(loop)
    logger = MetricLogger(loop.run_dir, tensorboard=cfg.log.tensorboard, resume_step=loop.state["iteration"] if resumed else None,
                          trackers=open_trackers(cfg, loop.run_dir, resume=resumed))
    print0(f"rlft train: algo={cfg.algo}, {len(loop.train)} questions, {cfg.rollout.prompts_per_step} x "
           f"{cfg.rollout.samples_per_prompt} samples/iteration, {cfg.ppo.iterations} iterations, from "
           f"{loop.state['model_path']}; adapter {loop.adapter.kind if loop.adapter else 'full'}, "
           f"{roles.policy.num_trainable():,} trainable parameters")
    bar = progress(cfg.ppo.iterations, desc=f"rlft train {cfg.algo}", initial=loop.state["iteration"],
                   enabled=cfg.log.progress, every_seconds=cfg.log.progress_every_seconds)
    for it in range(loop.state["iteration"], cfg.ppo.iterations):
        if cfg.ppo.max_seconds is not None and loop.state["train_seconds"] >= cfg.ppo.max_seconds:
            print0(f"rlft train: wall-time budget {cfg.ppo.max_seconds:.0f}s reached at iteration {it}")
            break
        m: dict = {}
        t_start = time.perf_counter()
        if loop.adapter is not None:
            loop.adapter.set_progress(it, cfg.ppo.iterations)  # HEFT's stage
        # 1. sample + 2. score (DAPO: drop groups without signal, sample more prompts until the batch is full)
        rollout, owners, scores = sample_and_score(loop, it, m)
        batch = TrainBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask, scores)
        if run.algorithm.overlong_shaping:
            batch.scores = scores + dapo.overlong_penalty(rollout.response_mask.sum(-1), max_len=cfg.rollout.max_new_tokens,
                                                          cache_len=cfg.dapo.overlong_cache_tokens,
                                                          penalty=cfg.dapo.overlong_penalty)
        if run.algorithm.loop == "online_st":
            # 5. update only: CE on the correct samples and the gold CoTs
            with timed(m, "train"):
                questions = owners[::cfg.rollout.samples_per_prompt]  # a group's samples are adjacent
                step = roles.policy.train_step(*online_st_micro_batches(batch, questions, loop.tokenizer, cfg))
                count_skipped(loop.state, step, cfg.ppo.max_consecutive_skipped_steps)
                m.update(step)
        else:
            # 3. evaluate (teacher-forced, no grad) [+ CARFT's anchor pass]
            evaluate_batch(loop, batch, owners, m)
            # 4. advantage
            m.update(compute_advantages(cfg, run, batch, loop.kl_ctl.value))
            if run.algorithm.overlong_shaping and cfg.dapo.overlong_filter:  # DAPO §3.4: truncated samples leave
                batch.response_mask = dapo.overlong_filter(batch.response_mask, rollout.truncated)  # the loss only
            # 5. update
            with timed(m, "train"):
                m.update(ppo_update(cfg, run, roles, batch, kl_coef=loop.kl_ctl.value,
                                    value_only=it < cfg.ppo.value_warmup_iterations, seed=cfg.run.seed * 7919 + it,
                                    state=loop.state))
            if batch.old_logprobs is not None:
                m["rollout/logprob_diff"] = ((rollout.rollout_logprobs - batch.old_logprobs).abs()
                                             * rollout.response_mask).sum() / rollout.response_mask.sum().clamp(min=1)
            if "kl/mean" in m:
                loop.kl_ctl.update(float(m["kl/mean"]), len(batch))
        # 6. sync (a no-op when the engine shares the policy's module)
        with timed(m, "sync"):
            roles.rollout.load_weights(roles.policy.named_weights())
        # 7. log, evaluate held-out, checkpoint
        done = log_iteration(loop, it, rollout, scores, batch.scores, m, t_start, stop_after_iterations)
        logger.log(it + 1, m)
        bar.update(1)
        bar.set_postfix(reward=f"{float(m['reward/mean']):.3f}", kl=f"{float(m.get('kl/mean', 0.0)):.2f}",
                        samples_s=f"{len(batch) / m['timing/iteration']:.1f}")
        if (it + 1) % cfg.ppo.save_every == 0 or done:
            _save(loop)
        if done:
            break
    bar.close()
    logger.close()
    state = loop.state
    summary = {k: state[k] for k in ("history", "best_accuracy", "best_checkpoint", "train_seconds", "samples", "tokens")}
    summary.update(algo=cfg.algo, iterations_done=state["iteration"],
                   final_checkpoint=str(checkpoint.latest_checkpoint(loop.run_dir / "checkpoints") or ""),
                   adapter=loop.adapter.kind if loop.adapter else "full", trainable_params=roles.policy.num_trainable())
    (loop.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sample_and_score(loop: Loop, it: int, m: dict) -> tuple[RolloutBatch, list[Record], torch.Tensor]:
    """Steps 1-2: sample this iteration's questions and score the responses. Returns the rollout, the record
    each sample answers, and the scores (B,). With dynamic sampling (DAPO) groups without signal are
    replaced by groups of further questions (`rlft/trainers/dapo.py`)."""
    cfg, want = loop.cfg, loop.cfg.rollout.prompts_per_step
    first = _sample_round(loop, prompt_indices(len(loop.train), want, cfg.run.seed, it), m)
    if not loop.plan.algorithm.dynamic_sampling:
        return first

    def another_round(r: int):  # other shuffles of the questions: a pure function of (seed, round, iteration)
        return _sample_round(loop, prompt_indices(len(loop.train), want, cfg.run.seed * 1_000_003 + r, it), m)

    return dapo_phases.refill_groups(first, another_round, group_size=cfg.rollout.samples_per_prompt, groups=want,
                                     max_rounds=cfg.dapo.max_sample_rounds, pad_id=loop.tokenizer.pad_token_id,
                                     metrics=m)


def _sample_round(loop: Loop, indices: list[int], m: dict) -> tuple[RolloutBatch, list[Record], torch.Tensor]:
    records = [loop.train[i] for i in indices]
    with timed(m, "rollout"):
        rollout = loop.roles.rollout.generate([loop.prompts[i] for i in indices], loop.sampling)
    owners = [records[j] for j in rollout.prompt_index.tolist()]
    texts = loop.tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    with timed(m, "reward"):
        scores, reward_metrics = loop.roles.reward.score(texts, owners, rollout.truncated, completion_ids(rollout))
    for k, v in reward_metrics.items():  # counts: summed over rounds
        m[k] = m.get(k, 0.0) + v
    if "reward/true_score_sum" in reward_metrics:  # the null control: true-reward means over every scored sample
        m["rollout/samples_scored"] = m.get("rollout/samples_scored", 0.0) + len(rollout)
    return rollout, owners, scores


def evaluate_batch(loop: Loop, batch: TrainBatch, owners: list[Record], m: dict) -> None:
    """Step 3: the policy's old log-probs (unless one on-policy step makes them the current ones), the value
    model's values, the reference's log-probs; then CARFT's anchor pass (which may rescale the scores)."""
    cfg, roles, micro = loop.cfg, loop.roles, loop.cfg.ppo.micro_batch_size_per_device
    with timed(m, "logprobs"):
        sequences = batch.sequences()
        values = None
        if needs_old_logprobs(cfg, loop.plan, len(batch)):
            batch.old_logprobs, values = roles.policy.logprobs_and_values(sequences, micro)
        if roles.critic is not None:  # a separate value model; its log-probs are not used
            values = roles.critic.logprobs_and_values(sequences, micro)[1]
        batch.old_values = values
        if roles.reference is not None:
            batch.ref_logprobs = roles.reference.logprobs(sequences, micro)
    if loop.plan.algorithm.anchor_phase:  # forwards on the learner (on Ray: its ranks), pooled there
        with timed(m, "anchor"):
            m.update(carft.anchor_phase(cfg, roles.policy, loop.tokenizer, owners, batch))


def log_iteration(loop: Loop, it: int, rollout: RolloutBatch, raw_scores: torch.Tensor, scores: torch.Tensor,
                  m: dict, t_start: float, stop_after_iterations: int | None) -> bool:
    """Step 7: counters and metrics of iteration `it`, the held-out evaluation when due. Returns whether this
    is the run's last iteration. `scores` are what the advantage saw (CARFT's rescaled partial credit,
    DAPO's length shaping), `raw_scores` the reward function's."""
    cfg, state = loop.cfg, loop.state
    lengths = rollout.response_mask.sum(-1).float()
    state["iteration"] = it + 1
    state["train_seconds"] += time.perf_counter() - t_start
    state["samples"] += len(rollout)
    state["tokens"] += int(lengths.sum())
    m.update({"reward/mean": scores.mean(), "reward/accuracy": (raw_scores >= 1.0).float().mean(),
              "rollout/response_len_mean": lengths.mean(), "rollout/truncated_frac": rollout.truncated.float().mean(),
              "kl/coef": loop.kl_ctl.value, "time/train_seconds": state["train_seconds"], "time/samples": state["samples"]})
    if "reward/true_score_sum" in m:  # the null control trained on a constant: what the reward would have paid
        m["reward/true_mean"] = m.pop("reward/true_score_sum") / m["rollout/samples_scored"]
        m["reward/true_accuracy"] = m.pop("reward/true_correct") / m["rollout/samples_scored"]
    m["timing/iteration"] = time.perf_counter() - t_start
    done = it + 1 == cfg.ppo.iterations or it + 1 == stop_after_iterations or (
        cfg.ppo.max_seconds is not None and state["train_seconds"] >= cfg.ppo.max_seconds)
    if (it + 1) % cfg.ppo.eval_every == 0 or done:
        summary, predictions = evaluate_held_out(cfg, loop.roles.rollout, loop.tokenizer, loop.test)
        m.update(summary)
        state["history"].append({"iteration": it + 1, "accuracy": summary["eval/accuracy"],
                                 "train_seconds": state["train_seconds"], "samples": state["samples"]})
        write_jsonl(loop.run_dir / f"predictions_iter{it + 1}.jsonl", predictions)
        print0(f"iteration {it + 1}: held-out accuracy {summary['eval/accuracy']:.3f}, train reward "
               f"{float(m['reward/mean']):.3f}, kl {float(m.get('kl/mean', 0.0)):.3f}, {state['train_seconds']:.0f}s")
    return done


def _resume(loop: Loop) -> bool:
    """With `run.resume`, restore the latest checkpoint (learners, trainer state, RNG, KL controller, remote
    engines' RNG) and bring the engine's weights up to date. Returns whether there was one."""
    latest = checkpoint.latest_checkpoint(loop.run_dir / "checkpoints") if loop.cfg.run.resume else None
    if latest is None:
        return False
    roles = loop.roles
    roles.policy.load(latest)
    if roles.critic is not None:
        roles.critic.load(latest / "critic")
    saved = torch.load(latest / "trainer_state.pt", weights_only=False)
    loop.state = saved["state"]
    set_rng_state(saved["rng"])
    loop.kl_ctl.load_state_dict(saved["kl"])
    roles.load_remote_state(saved.get("remote", {}))
    # An engine with its own weights (vLLM) was built from the warm-up; a shared module is a no-op here.
    roles.rollout.load_weights(roles.policy.named_weights())
    print0(f"rlft train: resumed from {latest} (iteration {loop.state['iteration']})")
    return True


def _save(loop: Loop) -> Path:
    state, roles, root = loop.state, loop.roles, loop.run_dir / "checkpoints"
    final = root / f"ckpt-{state['iteration']}"
    accuracy = state["history"][-1]["accuracy"] if state["history"] and state["history"][-1]["iteration"] == state["iteration"] else -1.0
    if accuracy > state["best_accuracy"]:
        state["best_accuracy"], state["best_checkpoint"] = accuracy, str(final)
    tmp = checkpoint.begin(root, state["iteration"])
    roles.policy.save(tmp)
    loop.tokenizer.save_pretrained(tmp / "model")
    write_model_card(tmp / "model", loop.cfg, method=loop.cfg.algo, step=state["iteration"],
                     accuracy=accuracy if accuracy >= 0 else None)
    if roles.critic is not None:
        roles.critic.save(tmp / "critic")
        loop.tokenizer.save_pretrained(tmp / "critic" / "model")  # a whole HF folder too (rerank, hand-off)
    torch.save({"state": state, "rng": rng_state(), "kl": loop.kl_ctl.state_dict(), "config": to_dict(loop.cfg),
                "remote": roles.remote_state()}, tmp / "trainer_state.pt")
    best = (Path(state["best_checkpoint"]),) if state["best_checkpoint"] else ()
    return checkpoint.commit(tmp, keep_last=loop.cfg.ppo.keep_last_checkpoints, protect=best)
