"""`model.precision=bf16-mixed` on the DeepSpeed learner: DeepSpeed's bf16 mode (a bf16 module, fp32 master weights
in the ZeRO optimizer), on 2 CPU ranks (gloo), against the torch learner's autocast over fp32 weights.

Both compute in bf16, with different roundings (DeepSpeed rounds the weights and every activation to bf16;
autocast rounds only matmul inputs), so the loss agrees to bf16's precision (2e-2 relative), not to float32's.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from dist_helpers import free_port
from test_deepspeed_learner import LR, build_model, loss_fn, make_batch

deepspeed = pytest.importorskip("deepspeed")

pytestmark = pytest.mark.dist


def _rank_main(rank: int, world: int, port: int, model_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from rlft.learner.deepspeed_learner import DeepSpeedLearner

    learner = DeepSpeedLearner(build_model(model_path), ds_config={"zero_optimization": {"stage": 2}}, lr=LR,
                               max_grad_norm=1.0, total_steps=10, schedule="constant", train_mode=False, bf16=True)
    metrics = learner.train_step(make_batch(learner.model.config.vocab_size)[rank::world], loss_fn)
    losses = torch.zeros(1) + metrics["loss"]
    torch.distributed.all_reduce(losses)
    masters = list(learner.optimizer.single_partition_of_fp32_groups)  # ZeRO-1/2: the fp32 copy it steps
    if rank == 0:
        torch.save({"loss": float(losses), "module_dtypes": {p.dtype for p in learner.model.parameters()},
                    "master_dtypes": {t.dtype for t in masters}, "skipped": metrics["train/skipped_step"]}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_deepspeed_learner: DeepSpeed's CPU comm op can abort in a destructor at exit


def test_bf16_deepspeed_step_keeps_fp32_masters_and_matches_autocast(warm_model, tmp_path):
    from rlft.learner.torch_learner import TorchLearner

    model = build_model(str(warm_model))
    model.mixed_precision = True
    expected = TorchLearner(model, lr=LR, max_grad_norm=1.0, total_steps=10, schedule="constant",
                            train_mode=False).train_step(make_batch(model.config.vocab_size), loss_fn)
    out = str(tmp_path / "rank0.pt")
    ranks = mp.start_processes(_rank_main, args=(2, free_port(), str(warm_model), out), nprocs=2, start_method="spawn",
                               join=False)
    deadline = time.monotonic() + 240
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the bf16 ranks did not finish in 240 s")
    got = torch.load(out, weights_only=False)
    assert got["module_dtypes"] == {torch.bfloat16} and got["master_dtypes"] == {torch.float32}
    assert got["skipped"] == 0.0
    assert got["loss"] == pytest.approx(expected["loss"], rel=2e-2)
