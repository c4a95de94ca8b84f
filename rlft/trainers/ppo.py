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

`algo`: reft | carft (ReFT + contrastive loss, `rlft/trainers/carft.py`) | grpo | rloo | reinforce_pp | online_st (online self-training, spec §12: CE on the correct
samples and the gold CoTs, no KL, no critic). Offline self-training is `rlft/trainers/selftrain.py`.

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
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlft.algos import advantages as adv_algos
from rlft.algos import kl as kl_algos
from rlft.algos import ppo
from rlft.config import Config, to_dict
from rlft.dist.errors import WorkerLostError
from rlft.dist.local import Roles, build_roles
from rlft.evaluate import encode_prompts, evaluate
from rlft.learner.base import DivergedError
from rlft.learner.torch_learner import sequence_batch
from rlft.models.value_head import response_slice
from rlft.rollout.base import SamplingParams
from rlft.trainers import carft
from rlft.trainers.selftrain import online_st_micro_batches
from rlft.trainers.sft import epoch_order
from rlft.utils import checkpoint
from rlft.utils.logging import MetricLogger, print0, write_jsonl
from rlft.utils.seeding import rng_state, seed_everything, set_rng_state
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


def needs_old_logprobs(cfg: Config, batch_size: int) -> bool:
    """False when one on-policy step per batch makes old log-probs equal the current ones (TRL's
    num_iterations=1 shortcut): critic-free, one PPO epoch, one minibatch, no KL in the reward."""
    single_step = cfg.ppo.ppo_epochs == 1 and (cfg.ppo.sequences_per_minibatch or batch_size) >= batch_size
    kl_in_reward = cfg.kl.placement == "reward" and cfg.kl.coef > 0
    return not (cfg.algo in ("grpo", "rloo", "reinforce_pp") and single_step and not kl_in_reward)


def compute_advantages(cfg: Config, data: dict, kl_coef: float) -> dict:
    """Step 4: advantages (B, T) and returns (reft) from scores, log-probs and values. Adds metrics."""
    mask, scores = data["response_mask"], data["scores"]
    metrics: dict = {}
    kl_t = None
    if "ref_logprobs" in data and "old_logprobs" in data:
        kl_t = kl_algos.kl_penalty(data["old_logprobs"], data["ref_logprobs"], kind=cfg.kl.estimator) * mask
        k1 = kl_algos.kl_penalty(data["old_logprobs"], data["ref_logprobs"], kind="k1") * mask
        metrics["kl/mean"] = (kl_t.sum(-1)).mean()
        metrics["kl/k1_mean"] = (k1.sum(-1)).mean()
    in_reward = kl_t is not None and cfg.kl.placement == "reward"
    G = cfg.rollout.samples_per_prompt
    if cfg.algo in ("reft", "carft"):
        rewards = ppo.shape_rewards(scores, mask, kl_t if in_reward else None, kl_coef=kl_coef if in_reward else 0.0)
        advantages, returns = ppo.gae(rewards, data["values"], mask, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam)
        metrics["value/explained_variance"] = ppo.explained_variance(data["values"], returns, mask)
        data["returns"] = returns
        if cfg.ppo.whiten_advantages:
            advantages = ppo.masked_whiten(advantages, mask)
    elif cfg.algo in ("grpo", "rloo"):
        seq_scores = scores - kl_coef * kl_t.sum(-1) if in_reward else scores
        estimator = adv_algos.grpo if cfg.algo == "grpo" else adv_algos.rloo
        advantages = adv_algos.broadcast_to_tokens(estimator(seq_scores, group_size=G), mask)
        if G > 1:
            metrics.update(adv_algos.group_metrics(scores, group_size=G))
    elif cfg.algo == "reinforce_pp":
        advantages, _ = adv_algos.reinforce_pp(scores, mask, kl_t if in_reward else None,
                                               kl_coef=kl_coef if in_reward else 0.0, gamma=cfg.ppo.gamma)
    else:
        raise ValueError(f"compute_advantages: algo {cfg.algo} has no advantages")
    data["advantages"] = advantages
    return metrics


GLOBAL_METRICS = ("policy/loss", "value/loss", "kl/loss")


def make_loss_fn(cfg: Config, *, num_seqs: int, kl_coef: float, part: str, num_tokens: float | None = None):
    """Step 5's loss on one learner. `part`:
    - "policy": PPO-clip policy loss [+ CARFT's L_cl] [+ beta * KL in the loss] (the policy, separate critic);
    - "value":  vf_coef * value loss (a separate critic, or the shared head during value warm-up);
    - "both":   their sum, for a value head on the policy's backbone (or none: critic-free algos).

    Normalised by the minibatch's global sequence count, or for `loss_agg=token-mean` its response-token
    count `num_tokens` (the learner sums micro-batches), and metrics are weighted by each micro-batch's
    share, so micro-batching does not change either.
    """
    agg = dict(agg=cfg.ppo.loss_agg, num_seqs=num_seqs, num_tokens=num_tokens, max_len=cfg.rollout.max_new_tokens)

    def loss_fn(output, mb):
        P, T = mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
        mask = mb["response_mask"]
        share = mask.shape[0] / num_seqs
        loss, metrics = 0.0, {}
        if part != "value":
            logits = response_slice(output.logits, P, T)  # (b, T, V)
            logprobs = ppo.logprobs_from_logits(logits.float(), mb["response_ids"])  # (b, T)
            old = mb["old_logprobs"] if "old_logprobs" in mb else logprobs.detach()
            loss, metrics = ppo.policy_loss(logprobs, old, mb["advantages"], mask,
                                            clip_eps=cfg.ppo.clip_eps, clip_eps_high=cfg.ppo.clip_eps_high, **agg)
            metrics["policy/loss"] = loss.detach()
            if cfg.algo == "carft":
                cl_loss, cl_metrics = carft.loss_term(cfg, output, mb)
                loss = loss + share * cl_loss  # L_cl is a per-micro-batch mean: average it over micro-batches
                metrics.update(cl_metrics)
            if cfg.kl.placement == "loss" and "ref_logprobs" in mb:
                kl_loss = ppo.aggregate(kl_algos.kl_penalty(logprobs, mb["ref_logprobs"], kind=cfg.kl.estimator),
                                        mask, mode=cfg.ppo.loss_agg, num_seqs=num_seqs, num_tokens=num_tokens,
                                        max_len=cfg.rollout.max_new_tokens)
                loss = loss + kl_coef * kl_loss
                metrics["kl/loss"] = kl_loss.detach()
                if "old_logprobs" not in mb:  # no pre-update pass computed the KL metrics: take them here
                    with torch.no_grad():
                        k1 = kl_algos.kl_penalty(logprobs, mb["ref_logprobs"], kind="k1") * mask
                        kl_est = kl_algos.kl_penalty(logprobs, mb["ref_logprobs"], kind=cfg.kl.estimator) * mask
                    metrics["kl/mean"], metrics["kl/k1_mean"] = kl_est.sum(-1).mean(), k1.sum(-1).mean()
            with torch.no_grad():
                metrics["policy/entropy"] = ppo.masked_mean(ppo.entropy_from_logits(logits.float()), mask)
        if part != "policy" and output.values is not None:
            values = response_slice(output.values, P, T)  # (b, T)
            v_loss, v_metrics = ppo.value_loss(values, mb["old_values"], mb["returns"], mask,
                                               clip_eps=cfg.ppo.value_clip_eps, **agg)
            loss = loss + cfg.ppo.vf_coef * v_loss
            metrics.update(v_metrics, **{"value/loss": v_loss.detach()})
        # policy/value/kl losses are already normalised globally; per-micro-batch means get their share
        return loss, {k: v if k in GLOBAL_METRICS else v * share for k, v in metrics.items()}

    return loss_fn


def count_skipped(state: dict, step: dict, limit: int) -> None:
    """Track optimizer steps skipped in a row for a non-finite loss or gradient; raise at `limit` (0: never).
    The streak lives in the trainer state, so it survives a resume."""
    state["skipped_streak"] = state.get("skipped_streak", 0) + 1 if step.get("train/skipped_step", 0.0) > 0 else 0
    if limit and state["skipped_streak"] >= limit:
        raise DivergedError(f"{state['skipped_streak']} optimizer steps in a row had a non-finite loss or gradient "
                            f"and were skipped (ppo.max_consecutive_skipped_steps={limit})")


def ppo_update(cfg: Config, roles: Roles, data: dict, *, kl_coef: float, value_only: bool, seed: int,
               state: dict) -> dict:
    """Step 5: `ppo_epochs` passes of shuffled minibatches; returns the metrics averaged over steps.

    Shared value head: one policy step per minibatch. Separate critic: a policy step with the policy loss,
    then a critic step with the value loss (its train/* metrics logged as critic/*). Value warm-up
    (`value_only`) trains only the shared head, or only the separate critic.
    """
    keys = ["prompt_ids", "prompt_mask", "response_ids", "response_mask", "advantages"]
    keys += [k for k in ("old_logprobs", "old_values", "returns", "ref_logprobs", "scores", "z_anchor", "z_anchor_diff", "lcs_gen_in")
             if k in data]
    B = data["response_ids"].shape[0]
    per_mb = cfg.ppo.sequences_per_minibatch or B
    micro = cfg.ppo.micro_batch_size_per_device
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
            if cfg.ppo.prefix_sharing and cfg.algo != "carft":
                # The minibatch stays random; its micro-batches follow rollout order, so a prompt's samples
                # share a micro-batch and one prompt pass. Losses are normalised by minibatch totals, so the
                # gradient is the same. (CARFT contrasts a micro-batch's rows: its batches stay shuffled.)
                idx = idx.sort().values
            mbs = []
            for m in range(0, len(idx), micro):
                mb = {k: data[k][idx[m:m + micro]] for k in keys}
                mb["input_ids"], mb["attention_mask"] = sequence_batch(mb)
                mbs.append(mb)
            num_tokens = float(data["response_mask"][idx].sum())  # token-mean's normaliser
            for learner, part in steps:
                step = learner.train_step(mbs, make_loss_fn(cfg, num_seqs=len(idx), kl_coef=kl_coef, part=part,
                                                            num_tokens=num_tokens))
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
    start = time.perf_counter()
    yield
    metrics[f"timing/{name}"] = time.perf_counter() - start


def run_ppo(cfg: Config, *, stop_after_iterations: int | None = None) -> dict:
    """Train with `cfg.algo` from the warm-up at `model.path`; returns the summary (also summary.json)."""
    if cfg.algo == "reft" and cfg.kl.coef == 0:
        warnings.warn("algo=reft with kl.coef=0: the ReFT paper reports collapse to 0% accuracy without KL")
    run_dir = open_run_dir(cfg)
    seed_everything(cfg.run.seed)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    lm, tokenizer, model_path, adapter = prepare_model(cfg, train, with_model=cfg.cluster.backend == "local")
    check_context(cfg, model_path)
    roles = build_roles(cfg, lm, tokenizer, model_path, adapter, total_steps=cfg.ppo.iterations)
    try:
        return _train(cfg, roles, adapter, run_dir, train, test, tokenizer, model_path, stop_after_iterations)
    except (WorkerLostError, DivergedError) as e:
        # skipped steps never touch the weights, so the last checkpoint is a good one in both cases
        last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        where = f"last checkpoint: {last}; continue from it with run.resume=true" if last else "no checkpoint yet"
        raise type(e)(f"{e}; the run stopped ({where})") from None
    finally:
        roles.close()


def _train(cfg: Config, roles: Roles, adapter, run_dir: Path, train, test, tokenizer, model_path,
           stop_after_iterations: int | None) -> dict:
    prompts = encode_prompts(tokenizer, train, cfg.data.style, cfg.data.max_prompt_tokens)
    kl_ctl = kl_algos.AdaptiveKLController(init_kl_coef=cfg.kl.coef, target=cfg.kl.target, horizon=cfg.kl.horizon) \
        if cfg.kl.adaptive else kl_algos.FixedKLController(kl_coef=cfg.kl.coef)
    sampling = SamplingParams(n=cfg.rollout.samples_per_prompt, temperature=cfg.rollout.temperature,
                              top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                              max_new_tokens=cfg.rollout.max_new_tokens, logprobs=True)
    micro = cfg.ppo.micro_batch_size_per_device
    state = {"iteration": 0, "train_seconds": 0.0, "samples": 0, "tokens": 0, "best_accuracy": -1.0,
             "best_checkpoint": None, "history": [], "model_path": str(model_path)}
    ckpt_root = run_dir / "checkpoints"
    latest = checkpoint.latest_checkpoint(ckpt_root) if cfg.run.resume else None
    if latest is not None:
        roles.policy.load(latest)
        if roles.critic is not None:
            roles.critic.load(latest / "critic")
        saved = torch.load(latest / "trainer_state.pt", weights_only=False)
        state = saved["state"]
        set_rng_state(saved["rng"])
        kl_ctl.load_state_dict(saved["kl"])
        roles.load_remote_state(saved.get("remote", {}))
        # An engine with its own weights (vLLM) was built from the warm-up; a shared module is a no-op here.
        roles.rollout.load_weights(roles.policy.named_weights())
        print0(f"rlft train: resumed from {latest} (iteration {state['iteration']})")
    logger = MetricLogger(run_dir, tensorboard=cfg.log.tensorboard, resume_step=state["iteration"] if latest else None)
    print0(f"rlft train: algo={cfg.algo}, {len(train)} questions, {cfg.rollout.prompts_per_step} x "
           f"{cfg.rollout.samples_per_prompt} samples/iteration, {cfg.ppo.iterations} iterations, from {model_path}; "
           f"adapter {adapter.kind if adapter else 'full'}, {roles.policy.num_trainable():,} trainable parameters")

    bar = tqdm(total=cfg.ppo.iterations, initial=state["iteration"], desc=f"rlft train {cfg.algo}",
               disable=not cfg.log.progress, file=sys.stderr, dynamic_ncols=True)
    for it in range(state["iteration"], cfg.ppo.iterations):
        if cfg.ppo.max_seconds is not None and state["train_seconds"] >= cfg.ppo.max_seconds:
            print0(f"rlft train: wall-time budget {cfg.ppo.max_seconds:.0f}s reached at iteration {it}")
            break
        m: dict = {}
        t_start = time.perf_counter()
        if adapter is not None:  # None on Ray (full finetuning only)
            adapter.set_progress(it, cfg.ppo.iterations)  # HEFT's stage
        indices = prompt_indices(len(train), cfg.rollout.prompts_per_step, cfg.run.seed, it)
        records = [train[i] for i in indices]
        # 1. sample
        with timed(m, "rollout"):
            batch = roles.rollout.generate([prompts[i] for i in indices], sampling)
        owners = [records[j] for j in batch.prompt_index.tolist()]
        texts = tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        # 2. score
        with timed(m, "reward"):
            scores, reward_metrics = roles.reward.score(texts, owners, batch.truncated)
        data = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask, "response_ids": batch.response_ids,
                "response_mask": batch.response_mask, "scores": scores}
        # 3. evaluate (teacher-forced, no grad) + 4. advantage; 5. update
        if cfg.algo == "online_st":
            with timed(m, "train"):
                step = roles.policy.train_step(*online_st_micro_batches(data, records, tokenizer, cfg))
                count_skipped(state, step, cfg.ppo.max_consecutive_skipped_steps)
                m.update(step)
        else:
            with timed(m, "logprobs"):
                if needs_old_logprobs(cfg, len(batch)):
                    data["old_logprobs"], values = roles.policy.logprobs_and_values(data, micro)
                else:
                    values = None  # one on-policy step: old = current log-probs (detached), as TRL does
                if roles.critic is not None:  # a separate value model; its log-probs are not used
                    values = roles.critic.logprobs_and_values(data, micro)[1]
                if values is not None:
                    data["old_values"] = data["values"] = values
                if roles.reference is not None:
                    data["ref_logprobs"] = roles.reference.logprobs(data, micro)
            if cfg.algo == "carft":
                with timed(m, "anchor"):
                    m.update(carft.anchor_phase(cfg, roles.policy.model, tokenizer, owners, data))
                scores = data["scores"]
            m.update(compute_advantages(cfg, data, kl_ctl.value))
            with timed(m, "train"):
                m.update(ppo_update(cfg, roles, data, kl_coef=kl_ctl.value,
                                    value_only=it < cfg.ppo.value_warmup_iterations, seed=cfg.run.seed * 7919 + it,
                                    state=state))
            if "old_logprobs" in data:
                m["rollout/logprob_diff"] = ((batch.rollout_logprobs - data["old_logprobs"]).abs()
                                             * batch.response_mask).sum() / batch.response_mask.sum().clamp(min=1)
            if "kl/mean" in m:
                kl_ctl.update(float(m["kl/mean"]), len(batch))
        # 6. sync (a no-op when the engine shares the policy's module)
        with timed(m, "sync"):
            roles.rollout.load_weights(roles.policy.named_weights())
        # 7. log
        lengths = batch.response_mask.sum(-1).float()
        state["iteration"] = it + 1
        state["train_seconds"] += time.perf_counter() - t_start
        state["samples"] += len(batch)
        state["tokens"] += int(lengths.sum())
        m.update(reward_metrics)
        m.update({"reward/mean": scores.mean(), "reward/accuracy": (scores >= 1.0).float().mean(),
                  "rollout/response_len_mean": lengths.mean(), "rollout/truncated_frac": batch.truncated.float().mean(),
                  "kl/coef": kl_ctl.value, "time/train_seconds": state["train_seconds"], "time/samples": state["samples"]})
        m["timing/iteration"] = time.perf_counter() - t_start
        done = it + 1 == cfg.ppo.iterations or it + 1 == stop_after_iterations or (
            cfg.ppo.max_seconds is not None and state["train_seconds"] >= cfg.ppo.max_seconds)
        if (it + 1) % cfg.ppo.eval_every == 0 or done:
            summary, predictions = evaluate(
                roles.rollout, tokenizer, test, style=cfg.data.style, max_new_tokens=cfg.eval.max_new_tokens,
                samples=cfg.eval.samples, temperature=cfg.eval.temperature, partial_reward=cfg.eval.partial_reward,
                seed=cfg.run.seed,
            )
            m.update(summary)
            state["history"].append({"iteration": it + 1, "accuracy": summary["eval/accuracy"],
                                     "train_seconds": state["train_seconds"], "samples": state["samples"]})
            write_jsonl(run_dir / f"predictions_iter{it + 1}.jsonl", predictions)
            print0(f"iteration {it + 1}: held-out accuracy {summary['eval/accuracy']:.3f}, train reward "
                   f"{float(m['reward/mean']):.3f}, kl {float(m.get('kl/mean', 0.0)):.3f}, {state['train_seconds']:.0f}s")
        logger.log(it + 1, m)
        bar.update(1)
        bar.set_postfix(reward=f"{float(m['reward/mean']):.3f}", kl=f"{float(m.get('kl/mean', 0.0)):.2f}",
                        samples_s=f"{len(batch) / m['timing/iteration']:.1f}")
        if (it + 1) % cfg.ppo.save_every == 0 or done:
            _save(roles, tokenizer, state, kl_ctl, ckpt_root, cfg)
        if done:
            break
    bar.close()
    logger.close()
    summary = {k: state[k] for k in ("history", "best_accuracy", "best_checkpoint", "train_seconds", "samples", "tokens")}
    summary.update(algo=cfg.algo, iterations_done=state["iteration"], final_checkpoint=str(checkpoint.latest_checkpoint(ckpt_root) or ""),
                   adapter=adapter.kind if adapter else "full", trainable_params=roles.policy.num_trainable())
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save(roles: Roles, tokenizer, state: dict, kl_ctl, root: Path, cfg: Config) -> Path:
    final = root / f"ckpt-{state['iteration']}"
    accuracy = state["history"][-1]["accuracy"] if state["history"] and state["history"][-1]["iteration"] == state["iteration"] else -1.0
    if accuracy > state["best_accuracy"]:
        state["best_accuracy"], state["best_checkpoint"] = accuracy, str(final)
    tmp = checkpoint.begin(root, state["iteration"])
    roles.policy.save(tmp)
    if roles.critic is not None:
        roles.critic.save(tmp / "critic")
    tokenizer.save_pretrained(tmp / "model")
    torch.save({"state": state, "rng": rng_state(), "kl": kl_ctl.state_dict(), "config": to_dict(cfg),
                "remote": roles.remote_state()}, tmp / "trainer_state.pt")
    best = (Path(state["best_checkpoint"]),) if state["best_checkpoint"] else ()
    return checkpoint.commit(tmp, keep_last=cfg.ppo.keep_last_checkpoints, protect=best)
