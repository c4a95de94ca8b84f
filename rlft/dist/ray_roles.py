"""The roles of one run as Ray actor groups (`cluster.backend=ray`); the only module importing ray.

Every group satisfies the same small protocol as its in-process counterpart in `rlft/dist/local.py`, so
the loops in `rlft/trainers/ppo.py` and `rlft/trainers/sft.py` are unchanged and never call `ray.get`.
An RL run gets every role (`build_ray_roles`); the SFT warm-up only the learner group (`build_ray_learner`),
the same ranks with SFT's optimizer and schedule:

- `RayRolloutGroup`  N engines (`cluster.rollout_workers`); prompts are split into N contiguous slices and
                     the results gathered back in prompt order.
- `RayLearnerGroup`  `cluster.learner_ranks` data-parallel ranks forming one torch.distributed group
                     (gloo on CPU, NCCL on GPU), each a `DeepSpeedLearner` (or one `TorchLearner`). A
                     minibatch is split evenly across ranks (RL: its rows; SFT: its micro-batches); metrics
                     are summed (the loss contract makes per-rank shares add up), the gradient norm comes
                     from rank 0. CARFT's anchor pass runs on the ranks too (`pooled_embeddings`: only
                     pooled embeddings travel back).
- `RayReference`     the frozen warm-up model in an actor of its own.
- `RayRewardPool`    `cluster.reward_workers` CPU actors, each with the configured reward function.

`build_ray_sampler` starts only engines and reward workers (offline self-training's sampling).

Placement (`cluster.placement`): learner ranks, engines and the reference live in one placement group;
`colocated` puts learner rank i and engine i (and the reference with rank 0) in bundle i, sharing its GPU;
`split` gives each its own bundle. The cluster's resources are checked before anything starts.

Devices: every actor resolves `run.device` / `model.precision` itself (`rlft/utils/device.py`): with
`cluster.gpus_per_worker > 0` it runs on the GPU Ray made visible to it (as the DeepSpeed learner's NCCL group
does), else on the CPU; the reference gets no GPU share with `kl.reference_device=cpu`. Actors return CPU
tensors (the driver may have no GPU).

Failures: any call to a dead actor raises `WorkerLostError` naming the actor (role, index, pid, node); the
loop stops, names the last checkpoint, and `run.resume=true` continues from it. With
`cluster.on_worker_failure=restart`, dead rollout engines and reward workers (stateless apart from the
weights, which are re-sent) are replaced and the call is retried once; learner ranks and the reference
always stop the run (their state is in the checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlft.config import Config, config_from_dict, to_dict
from rlft.dist.errors import ClusterTooSmallError, WorkerLostError
from rlft.learner.base import add_shares, combine_ranks
from rlft.rollout.base import SamplingParams
from rlft.trainers.algorithms import plan
from rlft.types import RolloutBatch, concat_batches

# ----------------------------------------------------------------------------------------------------
# Actors (plain classes; wrapped with ray.remote when placed)


class _Actor:
    def where(self) -> dict:
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def rng_state(self) -> dict:
        from rlft.utils.seeding import rng_state

        return rng_state()

    def set_rng_state(self, state: dict) -> None:
        from rlft.utils.seeding import set_rng_state

        set_rng_state(state)


class RolloutWorker(_Actor):
    def __init__(self, cfg: dict, model_path: str, seed: int):
        from rlft.models.loading import load_for_run, load_policy
        from rlft.rollout.factory import make_engine
        from rlft.utils.device import resolve_compute
        from rlft.utils.seeding import seed_everything

        cfg = config_from_dict(cfg)
        seed_everything(seed)
        compute = resolve_compute(cfg)
        # rollout.engine=vllm: the engine loads the weights itself. The HF engine's copy holds the learner's
        # weights as they are (fp32, autocast under bf16-mixed): the numerics of the in-process engine.
        self.model, tokenizer = load_for_run(model_path, cfg, compute, trains=True) if cfg.rollout.engine == "hf" \
            else load_policy(model_path, with_model=False)
        self.engine = make_engine(cfg, self.model, tokenizer, model_path, compute=compute)
        self.sync_group = None

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        return self.engine.generate(prompt_ids, params)

    def load_weights(self, state: dict) -> None:
        self.engine.load_weights(state.items())

    def join_sync_group(self, backend: str, addr: str, port: int, rank: int, world: int) -> None:
        from rlft.dist.weight_sync import new_group

        self.sync_group = new_group(backend, addr, port, rank, world)

    def receive_weights(self) -> None:
        from rlft.dist.weight_sync import broadcast_receive

        broadcast_receive(self.sync_group, self.model)


class LearnerWorker(_Actor):
    """One data-parallel rank. `setup` joins the learners' torch.distributed group, then builds the model.
    `options`: the optimizer and schedule (`rl_learner_options` or `sft_learner_options` of `dist/local.py`);
    `phase`: "sft" or "ppo", whose `packing` key applies."""

    def __init__(self, cfg: dict, model_path: str, rank: int, world_size: int, value_head: str | None,
                 options: dict, phase: str):
        self.cfg, self.model_path, self.rank, self.world_size = config_from_dict(cfg), model_path, rank, world_size
        self.value_head, self.options, self.phase = value_head, options, phase
        self.sync_group = None

    def address(self) -> tuple[str, int]:
        from rlft.dist.weight_sync import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int, backend: str) -> None:
        import torch.distributed as dist

        from rlft.dist.local import policy_model_options
        from rlft.learner.torch_learner import TorchLearner
        from rlft.models.loading import load_for_run
        from rlft.models.policy import PolicyModel
        from rlft.utils.device import deepspeed_bf16, resolve_compute
        from rlft.utils.seeding import seed_everything

        cfg = self.cfg
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        seed_everything(cfg.run.seed)
        compute = resolve_compute(cfg)  # this actor's bundle: its GPU, or the CPU
        options = policy_model_options(cfg, compute, phase=self.phase)
        deepspeed = cfg.cluster.learner == "deepspeed"
        if deepspeed:  # DeepSpeed's own bf16 mode instead of autocast
            options["mixed_precision"] = False
        model = PolicyModel(load_for_run(self.model_path, cfg, compute, trains=True)[0], value_head=self.value_head,
                            head_dropout=cfg.carft.head_dropout, init_seed=cfg.run.seed,
                            prefix_sharing=cfg.ppo.prefix_sharing, value_head_init=cfg.ppo.value_head_init, **options)
        if deepspeed:
            from rlft.learner.deepspeed_learner import DeepSpeedLearner, load_deepspeed_config

            ds = load_deepspeed_config(cfg.cluster.deepspeed_config)
            bf16 = deepspeed_bf16(ds, compute.precision, f"cluster.deepspeed_config {cfg.cluster.deepspeed_config}")
            self.learner = DeepSpeedLearner(model, ds_config=ds, bf16=bf16, **self.options)
        else:
            self.learner = TorchLearner(model, **self.options)

    def train_step(self, micro_batches, loss_fn, padding: int = 0) -> dict:
        if padding:  # only a group of several (DeepSpeed) ranks pads
            return self.learner.train_step(micro_batches, loss_fn, padding=padding)
        return self.learner.train_step(micro_batches, loss_fn)

    def logprobs_and_values(self, batch, micro_batch_size: int):
        return self.learner.logprobs_and_values(batch, micro_batch_size)

    def set_value_only(self, flag: bool) -> None:
        self.learner.set_value_only(flag)

    def num_trainable(self) -> int:
        return self.learner.num_trainable()

    def named_weights(self) -> dict | None:
        """Full weights from rank 0 (every rank must take part: a collective under ZeRO-3), on the CPU: the
        object store's readers (engines, the SFT driver's evaluation) may have no GPU."""
        weights = {name: tensor.cpu() for name, tensor in self.learner.named_weights()}
        return weights if self.rank == 0 else None

    def join_sync_group(self, backend: str, addr: str, port: int, world: int) -> None:
        from rlft.dist.weight_sync import new_group

        if self.rank == 0:
            self.sync_group = new_group(backend, addr, port, 0, world)

    def send_weights(self) -> int:
        """Broadcast to the engines (rank 0 sends; the others only join a ZeRO-3 gather)."""
        from rlft.dist.weight_sync import broadcast_send

        named = list(self.learner.named_weights())  # every rank: a collective gather under ZeRO-3
        return broadcast_send(self.sync_group, named) if self.rank == 0 else 0

    def save(self, path: str) -> None:
        """The learner's state, and this rank's RNG (dropout in SFT's train mode draws from it)."""
        from rlft.utils.seeding import rng_state

        self.learner.save(path)
        rng_file = Path(path) / "learner_rng" / f"rank{self.rank}.pt"
        rng_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_file)

    def load(self, path: str) -> None:
        from rlft.utils.seeding import set_rng_state

        self.learner.load(path)
        rng_file = Path(path) / "learner_rng" / f"rank{self.rank}.pt"
        if rng_file.exists():  # absent in checkpoints written before ranks saved their RNG
            set_rng_state(torch.load(rng_file, weights_only=False))

    # -- CARFT's anchor pass: this rank's rows, pooled here (only (b, D) embeddings travel back) --------

    def pooled_embeddings(self, batch, pool_fn, micro_batch_size: int) -> dict:
        return self.learner.pooled_embeddings(batch, pool_fn, micro_batch_size)  # on the CPU (`pooled_forward`)


class ReferenceWorker(_Actor):
    def __init__(self, cfg: dict, model_path: str):
        from rlft.learner.reference import FrozenReference
        from rlft.models.loading import load_for_run
        from rlft.utils.device import resolve_compute

        cfg = config_from_dict(cfg)
        # kl.reference_device=cpu: placed without a GPU share, on the CPU
        where = resolve_compute(cfg, torch.device("cpu") if cfg.kl.reference_device == "cpu" else None)
        self.reference = FrozenReference(load_for_run(model_path, cfg, where, trains=False)[0], cfg.ppo.prefix_sharing,
                                         mixed_precision=where.mixed, packing=cfg.ppo.packing,
                                         compile=cfg.model.compile)

    def logprobs(self, batch, micro_batch_size: int):
        return self.reference.logprobs(batch, micro_batch_size)


class RewardWorker(_Actor):
    def __init__(self, cfg: dict):
        from rlft.reward.role import RewardRole

        self.role = RewardRole(config_from_dict(cfg))

    def score(self, texts, records, truncated, completion_ids=None):
        return self.role.score(texts, records, truncated, completion_ids)


# ----------------------------------------------------------------------------------------------------
# Driver-side groups


def _describe(role: str, index: int, where: dict) -> str:
    return f"{role} {index} (pid {where.get('pid', '?')} on {where.get('node', '?')})"


class _Group:
    def __init__(self, role: str, actors: list, factory=None):
        self.role = role
        self.actors = actors
        self.factory = factory  # factory(index, restart) -> a new actor; None: this role cannot be replaced
        self.restarts = 0
        self.where = ray.get([a.where.remote() for a in actors])

    def replace(self, indices: list[int]) -> None:
        """Start fresh actors in place of dead ones (stateless roles only)."""
        for i in indices:
            self.restarts += 1
            ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = self.factory(i, self.restarts)
            self.where[i] = ray.get(self.actors[i].where.remote())
            print(f"rlft: replaced {self.role} {i} (now pid {self.where[i]['pid']} on {self.where[i]['node']})")

    def _retrying(self, call):
        """Run `call()`; with cluster.on_worker_failure=restart, replace dead actors and run it once more."""
        try:
            return call()
        except WorkerLostError as e:
            if self.factory is None or not getattr(e, "dead", None):
                raise
            self.replace(e.dead)
            self.after_replace()
            return call()

    def after_replace(self) -> None:
        """Bring replaced actors up to date (rollout engines: the latest weights)."""

    def _get(self, refs: list, indices: list[int] | None = None) -> list:
        """`ray.get` that turns a dead actor into `WorkerLostError` naming it."""
        indices = list(range(len(refs))) if indices is None else indices
        try:
            # Wait for results one at a time, so a dead actor is reported at once, even while its peers
            # are blocked in a collective waiting for it (they are killed when the run closes).
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready[0])
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
            self._raise_lost(self._dead(refs, indices, wait_s=0.0), e)
        except ray.exceptions.RayTaskError as e:
            # A peer's collective failed (gloo: "connection reset by peer") because another member died: the
            # dead one is the news. Its own result turns into an actor error within moments.
            dead = self._dead(refs, indices, wait_s=30.0)
            if not dead:
                raise
            self._raise_lost(dead, e)

    def _dead(self, refs: list, indices: list[int], *, wait_s: float) -> list[int]:
        """Indices of the members whose call failed because the actor died (waiting up to `wait_s` for them)."""
        if wait_s > 0:
            ray.wait(list(refs), num_returns=len(refs), timeout=wait_s)
        dead = []
        for i, ref in zip(indices, refs):
            try:
                ray.get(ref, timeout=0)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                dead.append(i)
            except Exception:  # noqa: BLE001  (another error or still running: not the dead one)
                pass
        return dead

    def _raise_lost(self, dead: list[int], cause: Exception):
        names = ", ".join(_describe(self.role, i, self.where[i]) for i in dead) or f"a {self.role}"
        error = WorkerLostError(f"{names} died ({type(cause).__name__})")
        error.dead = dead
        raise error from None

    def state_dict(self) -> dict:
        return {"rng": self._get([a.rng_state.remote() for a in self.actors])}

    def load_state_dict(self, state: dict) -> None:
        self._get([a.set_rng_state.remote(s) for a, s in zip(self.actors, state["rng"])])


class RemoteWeights:
    """The policy's weights as a Ray object (learner rank 0's result); iterating fetches them."""

    def __init__(self, ref):
        self.ref = ref

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(ray.get(self.ref).items())


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, end) slices of range(n) whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


class RayRolloutGroup(_Group):
    def __init__(self, actors: list, pad_id: int, weight_sync: str, learners: "RayLearnerGroup | None", factory=None):
        """`learners`: the group whose rank 0 sends weights (None for a sampler that never syncs)."""
        super().__init__("rollout engine", actors, factory)
        self.pad_id = pad_id
        self.weight_sync = weight_sync
        self.learners = learners
        self.latest_weights = None  # object ref of the last synced state dict (to bring a new engine up to date)
        if weight_sync == "broadcast":
            self._init_broadcast()

    def _init_broadcast(self) -> None:
        addr, port = self.learners._get([self.learners.actors[0].address.remote()])[0]
        world = 1 + len(self.actors)
        backend = self.learners.backend
        refs = [a.join_sync_group.remote(backend, addr, port, world) for a in self.learners.actors]
        refs += [a.join_sync_group.remote(backend, addr, port, i + 1, world) for i, a in enumerate(self.actors)]
        ray.get(refs)

    def after_replace(self) -> None:
        if self.latest_weights is not None:
            self._get([a.load_weights.remote(self.latest_weights) for a in self.actors])

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        return self._retrying(lambda: self._generate(prompt_ids, params))

    def _generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> RolloutBatch:
        slices = [(s, e) for s, e in split_evenly(len(prompt_ids), len(self.actors)) if e > s]
        refs = [self.actors[i].generate.remote(prompt_ids[s:e], params) for i, (s, e) in enumerate(slices)]
        batches = self._get(refs, list(range(len(slices))))
        for batch, (start, _) in zip(batches, slices):
            batch.prompt_index = batch.prompt_index + start  # engine-local -> global prompt index
        return concat_batches(batches, self.pad_id)

    def close(self) -> None:
        """Nothing to free from the driver: the engines stop with their actors (`Roles.close`)."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.weight_sync == "broadcast":
            # The learners' `named_weights()` result is not needed: rank 0 sends straight to the engines.
            refs = [a.send_weights.remote() for a in self.learners.actors]
            refs += [a.receive_weights.remote() for a in self.actors]
            n = len(self.learners.actors)
            self._get(refs[n:], list(range(len(self.actors))))
            self.learners._get(refs[:n])
            return
        ref = named_tensors.ref if isinstance(named_tensors, RemoteWeights) else ray.put(dict(named_tensors))
        self.latest_weights = ref
        self._retrying(lambda: self._get([a.load_weights.remote(ref) for a in self.actors]))


class RayLearnerGroup(_Group):
    def __init__(self, actors: list, backend: str, micro_batch_size: int):
        super().__init__("learner rank", actors)
        self.backend = backend
        self.micro_batch_size = micro_batch_size
        addr, port = self._get([actors[0].address.remote()])[0]
        self._get([a.setup.remote(addr, port, backend) for a in actors])

    def _shards(self, batch: dict, rows_per_rank: int) -> list[dict]:
        return [{k: v[r * rows_per_rank:(r + 1) * rows_per_rank] for k, v in batch.items()}
                for r in range(len(self.actors))]

    def train_step(self, micro_batches: list[dict], loss_fn) -> dict[str, float]:
        """RL batches (one width): the minibatch is re-split, rank r gets rows [r*n/R, (r+1)*n/R) in
        micro-batches of the same size. SFT batches (`labels`; each micro-batch padded to its own width): rank
        r gets the r-th contiguous block of ceil(m/R) micro-batches (`rlft/trainers/sft.py` makes m a multiple
        of R); a shorter last block is padded with zero-loss copies, so every rank makes the same calls."""
        if "labels" in micro_batches[0]:
            return self._train_step_blocks(micro_batches, loss_fn)
        rows = sum(mb["response_ids"].shape[0] for mb in micro_batches)
        ranks = len(self.actors)
        if rows % ranks:
            raise ValueError(f"a minibatch of {rows} sequences does not split across {ranks} learner ranks; "
                             f"make ppo.sequences_per_minibatch a multiple of {ranks}")
        micro = max(mb["response_ids"].shape[0] for mb in micro_batches)
        full = {k: torch.cat([mb[k] for mb in micro_batches]) for k in micro_batches[0]}
        refs = []
        for actor, shard in zip(self.actors, self._shards(full, rows // ranks)):
            n = shard["response_ids"].shape[0]
            mbs = [{k: v[s:s + micro] for k, v in shard.items()} for s in range(0, n, micro)]
            refs.append(actor.train_step.remote(mbs, loss_fn))
        return combine_ranks(self._get(refs))

    def _train_step_blocks(self, micro_batches: list[dict], loss_fn) -> dict[str, float]:
        per_rank = -(-len(micro_batches) // len(self.actors))
        refs = []
        for r, actor in enumerate(self.actors):
            own = micro_batches[r * per_rank:(r + 1) * per_rank]
            padding = per_rank - len(own)
            refs.append(actor.train_step.remote(own + [micro_batches[-1]] * padding, loss_fn, padding))
        return combine_ranks(self._get(refs))

    def _padded_shards(self, batch: dict, micro_batch_size: int) -> list[dict]:
        """Rows split evenly; the batch is padded (by repeating its last row) to a multiple of ranks x
        micro-batch so every rank runs the same number of forwards (ZeRO-3 gathers are collectives)."""
        n, ranks = next(iter(batch.values())).shape[0], len(self.actors)
        unit = ranks * micro_batch_size
        padded = -(-n // unit) * unit
        full = {k: torch.cat([v, v[-1:].expand(padded - n, *v.shape[1:])]) if padded > n else v
                for k, v in batch.items()}
        return self._shards(full, padded // ranks)

    def logprobs_and_values(self, batch: dict, micro_batch_size: int):
        n = batch["response_ids"].shape[0]
        results = self._get([a.logprobs_and_values.remote(shard, micro_batch_size)
                             for a, shard in zip(self.actors, self._padded_shards(batch, micro_batch_size))])
        logprobs = torch.cat([r[0] for r in results])[:n]
        values = None if results[0][1] is None else torch.cat([r[1] for r in results])[:n]
        return logprobs, values

    def pooled_embeddings(self, batch: dict, pool_fn, micro_batch_size: int) -> dict[str, torch.Tensor]:
        """CARFT's anchor pass on the learner ranks (their own, ZeRO-sharded modules), rows split as in
        `logprobs_and_values`; each rank pools its rows and sends back only those."""
        n = batch["input_ids"].shape[0]
        results = self._get([a.pooled_embeddings.remote(shard, pool_fn, micro_batch_size)
                             for a, shard in zip(self.actors, self._padded_shards(batch, micro_batch_size))])
        return {k: torch.cat([r[k] for r in results])[:n] for k in results[0]}

    def set_value_only(self, flag: bool) -> None:
        self._get([a.set_value_only.remote(flag) for a in self.actors])

    def num_trainable(self) -> int:
        return self._get([self.actors[0].num_trainable.remote()])[0]

    def named_weights(self) -> RemoteWeights:
        refs = [a.named_weights.remote() for a in self.actors]
        self._get(refs[1:], list(range(1, len(refs))))  # the others only took part in the gather
        return RemoteWeights(refs[0])

    def save(self, path) -> None:
        self._get([a.save.remote(str(path)) for a in self.actors])

    def load(self, path) -> None:
        self._get([a.load.remote(str(path)) for a in self.actors])


class RayReference(_Group):
    def __init__(self, actor):
        super().__init__("reference", [actor])

    def logprobs(self, batch: dict, micro_batch_size: int) -> torch.Tensor:
        return self._get([self.actors[0].logprobs.remote(batch, micro_batch_size)])[0]


class RayRewardPool(_Group):
    def __init__(self, actors: list, factory=None):
        super().__init__("reward worker", actors, factory)

    def score(self, texts: list[str], records: list, truncated: torch.Tensor, completion_ids: list | None = None):
        return self._retrying(lambda: self._score(texts, records, truncated, completion_ids))

    def _score(self, texts: list[str], records: list, truncated: torch.Tensor, completion_ids: list | None):
        slices = [(s, e) for s, e in split_evenly(len(texts), len(self.actors)) if e > s]
        refs = [self.actors[i].score.remote(texts[s:e], records[s:e], truncated[s:e],
                                            None if completion_ids is None else completion_ids[s:e])
                for i, (s, e) in enumerate(slices)]
        results = self._get(refs, list(range(len(slices))))
        metrics: dict = {}
        for _, m in results:
            add_shares(metrics, m)  # counts (reward/failed): summed over workers
        return torch.cat([r[0] for r in results]), metrics


# ----------------------------------------------------------------------------------------------------
# Placement and construction


def connect(cfg: Config) -> bool:
    """Join `cluster.address`, or start a private local Ray bound to loopback. Returns whether this call
    started or joined Ray (and so should shut it down at the end)."""
    if ray.is_initialized():
        return False
    if cfg.cluster.address is None:
        # Workers of a private Ray inherit this process's environment (HF_HUB_OFFLINE etc.).
        ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=True, logging_level="warning")
    else:  # a submitted job: its runtime env (working dir, env vars from `rlft launch`) applies
        ray.init(address=cfg.cluster.address, logging_level="warning")
    return True


def plan_bundles(cfg: Config) -> tuple[list[dict], dict[str, list[tuple[int, float]]]]:
    """Placement-group bundles and, per role, [(bundle index, GPUs per actor)].

    colocated: bundle i = learner rank i + rollout engine i (+ the reference in bundle 0), sharing the
    bundle's GPU equally; split: one bundle per actor."""
    c = cfg.cluster
    has_reference = plan(cfg).uses_reference
    members: list[list[str]] = []
    if c.placement == "colocated":
        members = [["learner", "rollout"] for _ in range(c.learner_ranks)]
        if has_reference:
            members[0].append("reference")
    else:
        members = [["learner"] for _ in range(c.learner_ranks)] + [["rollout"] for _ in range(c.rollout_workers)]
        if has_reference:
            members.append(["reference"])
    bundles, assignment = [], {"learner": [], "rollout": [], "reference": []}
    for i, roles in enumerate(members):
        bundle = {"CPU": c.cpus_per_worker * len(roles)}
        if c.gpus_per_worker > 0:
            bundle["GPU"] = c.gpus_per_worker
        bundles.append(bundle)
        on_gpu = [r for r in roles if not (r == "reference" and cfg.kl.reference_device == "cpu")]
        for role in roles:
            assignment[role].append((i, c.gpus_per_worker / len(on_gpu) if role in on_gpu else 0.0))
    return bundles, assignment


def check_resources(cfg: Config, bundles: list[dict], *, extra_cpus: float | None = None,
                    layout: str | None = None) -> None:
    """Fail at once, saying what is missing, when the cluster's total resources cannot hold `bundles` plus
    `extra_cpus` (default: the RL run's reward workers); `layout` describes the actors (default: the RL run's)."""
    c = cfg.cluster
    extra_cpus = c.reward_workers * c.cpus_per_worker if extra_cpus is None else extra_cpus
    need = {"CPU": sum(b["CPU"] for b in bundles) + extra_cpus, "GPU": sum(b.get("GPU", 0) for b in bundles)}
    have = ray.cluster_resources()  # total: resources busy now are waited for by the placement group
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: needs {n:g}, the cluster has {h:g}" for k, (n, h) in short.items())
        layout = layout or (f"{c.learner_ranks} learner ranks, {c.rollout_workers} rollout engines, "
                            f"{c.reward_workers} reward workers, placement={c.placement}")
        raise ClusterTooSmallError(
            f"the Ray cluster is too small for this run ({detail}): {layout}, "
            f"{c.cpus_per_worker:g} CPU / {c.gpus_per_worker:g} GPU each; lower cluster.* or add nodes")


def _ready_placement_group(cfg: Config, bundles: list[dict]):
    """One placement group of `bundles`, scheduled (or `ClusterTooSmallError` after cluster.startup_timeout)."""
    pg = placement_group(bundles, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=cfg.cluster.startup_timeout)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterTooSmallError(f"the placement group {bundles} was not scheduled within "
                                   f"cluster.startup_timeout={cfg.cluster.startup_timeout:g}s") from None
    return pg


def _placer(cfg: Config, pg) -> Callable:
    """`place(cls, bundle, gpus)`: an actor class pinned to one bundle of `pg`."""
    c = cfg.cluster

    def place(cls, bundle: int, gpus: float):
        return ray.remote(cls).options(
            num_cpus=cfg.cluster.cpus_per_worker, num_gpus=gpus, max_restarts=0, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle))

    return place


def _start_learners(cfg: Config, place: Callable, assignment: list[tuple[int, float]], model_path, *,
                    value_head: str | None, options: dict, micro_batch_size: int, phase: str) -> RayLearnerGroup:
    """`cluster.learner_ranks` `LearnerWorker`s, rank i in bundle assignment[i], joined into one group."""
    c = cfg.cluster
    actors = [place(LearnerWorker, b, g).remote(to_dict(cfg), str(model_path), rank, c.learner_ranks, value_head, options,
                                                phase)
              for rank, (b, g) in enumerate(assignment)]
    try:
        return RayLearnerGroup(actors, backend="nccl" if c.gpus_per_worker > 0 else "gloo",
                               micro_batch_size=micro_batch_size)
    except BaseException:  # a rank failed to start (a bad DeepSpeed config, ...): stop the others too
        for actor in actors:
            ray.kill(actor, no_restart=True)
        raise


def build_ray_learner(cfg: Config, model_path, *, options: dict) -> tuple[RayLearnerGroup, Callable[[], None]]:
    """The learner ranks alone (the SFT warm-up: no engines, reference or reward workers), one bundle each;
    returns the group and a function that stops it."""
    owns_ray = connect(cfg)
    c = cfg.cluster
    bundle = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.gpus_per_worker > 0 else {})}
    bundles = [dict(bundle) for _ in range(c.learner_ranks)]
    check_resources(cfg, bundles, extra_cpus=0.0, layout=f"{c.learner_ranks} learner ranks")
    pg = _ready_placement_group(cfg, bundles)
    learners = None

    def close() -> None:
        for actor in learners.actors if learners is not None else []:
            ray.kill(actor, no_restart=True)
        remove_placement_group(pg)
        if owns_ray:  # a private Ray (or our connection to a cluster) ends with the run
            ray.shutdown()

    try:
        learners = _start_learners(cfg, _placer(cfg, pg), [(i, c.gpus_per_worker) for i in range(c.learner_ranks)],
                                   model_path, value_head=None, options=options,
                                   micro_batch_size=cfg.sft.micro_batch_size_per_device, phase="sft")
    except BaseException:
        close()
        raise
    return learners, close


def build_ray_roles(cfg: Config, tokenizer, model_path, *, total_steps: int):
    """Start every actor (checking the cluster first) and return `Roles` whose members are groups."""
    from rlft.dist.local import Roles, rl_learner_options

    owns_ray = connect(cfg)
    bundles, assignment = plan_bundles(cfg)
    check_resources(cfg, bundles)
    pg = _ready_placement_group(cfg, bundles)
    c, cfg_dict, path = cfg.cluster, to_dict(cfg), str(model_path)
    place = _placer(cfg, pg)
    run = plan(cfg)
    learners = _start_learners(cfg, place, assignment["learner"], path, value_head=run.value_head,
                               options=rl_learner_options(cfg, total_steps),
                               micro_batch_size=cfg.ppo.micro_batch_size_per_device, phase="ppo")
    restart = c.on_worker_failure == "restart"

    def new_engine(i: int, restart_count: int = 0):
        b, g = assignment["rollout"][i]
        return place(RolloutWorker, b, g).remote(cfg_dict, path, cfg.run.seed * 1000 + i + 7919 * restart_count)

    engines = [new_engine(i) for i in range(len(assignment["rollout"]))]
    rollout = RayRolloutGroup(engines, pad_id=tokenizer.pad_token_id, weight_sync=c.weight_sync, learners=learners,
                              factory=new_engine if restart else None)
    reference = None
    if assignment["reference"]:
        b, g = assignment["reference"][0]
        reference = RayReference(place(ReferenceWorker, b, g).remote(cfg_dict, path))
    def new_reward_worker(i: int, restart_count: int = 0):
        return ray.remote(RewardWorker).options(num_cpus=c.cpus_per_worker, max_restarts=0).remote(cfg_dict)

    reward = RayRewardPool([new_reward_worker(i) for i in range(c.reward_workers)],
                           factory=new_reward_worker if restart else None)

    def close() -> None:
        for group in (learners, rollout, reference, reward):
            for actor in group.actors if group is not None else []:
                ray.kill(actor, no_restart=True)
        remove_placement_group(pg)
        if owns_ray:  # a private Ray (or our connection to a cluster) ends with the run
            ray.shutdown()

    return Roles(rollout=rollout, policy=learners, reference=reference, reward=reward, on_close=close)


# ----------------------------------------------------------------------------------------------------
# Sampling only (offline self-training): rollout engines and reward workers, no learners


def build_ray_sampler(cfg: Config, tokenizer, model_path):
    """`cluster.rollout_workers` engines (one bundle each: `cpus_per_worker` CPUs, `gpus_per_worker` GPUs) and
    `cluster.reward_workers` reward actors, as a `Sampler`; its `close` frees them (and the private Ray)."""
    from rlft.dist.local import Sampler

    owns_ray = connect(cfg)
    c, cfg_dict, path = cfg.cluster, to_dict(cfg), str(model_path)
    bundles = [{"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.gpus_per_worker > 0 else {})}
               for _ in range(c.rollout_workers)]
    check_resources(cfg, bundles, extra_cpus=c.reward_workers * c.cpus_per_worker,
                    layout=f"{c.rollout_workers} rollout engines, {c.reward_workers} reward workers")
    pg = _ready_placement_group(cfg, bundles)
    place = _placer(cfg, pg)
    restart = c.on_worker_failure == "restart"

    def new_engine(i: int, restart_count: int = 0):  # seeded as in build_ray_roles
        return place(RolloutWorker, i, c.gpus_per_worker).remote(cfg_dict, path, cfg.run.seed * 1000 + i + 7919 * restart_count)

    def new_reward_worker(i: int, restart_count: int = 0):
        return ray.remote(RewardWorker).options(num_cpus=c.cpus_per_worker, max_restarts=0).remote(cfg_dict)

    rollout = RayRolloutGroup([new_engine(i) for i in range(c.rollout_workers)], pad_id=tokenizer.pad_token_id,
                              weight_sync="object_store", learners=None, factory=new_engine if restart else None)
    reward = RayRewardPool([new_reward_worker(i) for i in range(c.reward_workers)],
                           factory=new_reward_worker if restart else None)

    def close() -> None:
        for actor in rollout.actors + reward.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(pg)
        if owns_ray:
            ray.shutdown()

    return Sampler(rollout=rollout, reward=reward, on_close=close)
