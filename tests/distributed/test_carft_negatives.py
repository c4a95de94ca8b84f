"""CARFT's in-batch negatives across data-parallel ranks (`specs/carft.md` §4, §11 "Distributed equivalence").

Two gloo ranks x 2 samples against one process holding the 4 samples. Each rank gathers the other rank's
z_gen with the DeepSpeed learner's collective (`gather_other_ranks`, what `ResponseOutput.gather_ranks` is on
2+ ranks) and calls the pure `contrastive.loss`:
- every den_i = Σ_j exp(cos(z_ann_i, z_gen_j)/τ) over all 4 samples equals the one-process value. den_i is
  read from the loss of sample i alone: L_i = −min(cos_ii, κ)/τ + log den_i;
- with one correct sample per rank, the mean of the two ranks' losses (what data parallelism averages) and
  their gradients equal the one-process loss and gradient (the normaliser Σ c_i is per rank);
- without the gather (each rank alone) the dens differ: the check is not vacuous.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from dist_helpers import free_port

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.dist

TAU, CLAMP = 0.2, 0.9


def _vectors():
    g = torch.Generator().manual_seed(0)
    z_anchor = torch.randn(4, 8, generator=g)
    z_gen = z_anchor + 1.5 * torch.randn(4, 8, generator=g)  # cosines 0.19-0.85: nothing clamps
    return z_anchor, z_gen


def _log_dens(z_anchor, z_gen, z_others):
    """log den_i of each row, read back from the loss of that row alone (the positive's cosine is < κ)."""
    from rlft.algos import contrastive

    cos = torch.nn.functional.cosine_similarity(z_anchor, z_gen, dim=-1)
    assert (cos < CLAMP).all()
    out = []
    for i in range(len(z_gen)):
        correct = torch.zeros(len(z_gen), dtype=torch.bool)
        correct[i] = True
        loss, _ = contrastive.loss(z_anchor, z_gen, correct, z_others, tau=TAU, clamp=CLAMP)
        out.append(float(loss) + float(cos[i]) / TAU)
    return torch.tensor(out, dtype=torch.float64)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from rlft.algos import contrastive
    from rlft.learner.deepspeed_learner import gather_other_ranks

    z_anchor, z_gen = _vectors()
    rows = slice(2 * rank, 2 * rank + 2)
    a, g = z_anchor[rows], z_gen[rows].clone().requires_grad_(True)
    others = gather_other_ranks(g)
    assert not others.requires_grad and others.shape == (2, 8)
    log_dens = _log_dens(a, g.detach(), others)
    correct = torch.tensor([True, False])  # one correct sample per rank: rows 0 and 2 of the whole batch
    loss, _ = contrastive.loss(a, g, correct, others, tau=TAU, clamp=CLAMP)
    loss.backward()
    torch.save({"log_dens": log_dens, "loss": float(loss), "grad": g.grad, "alone": _log_dens(a, g.detach(), None)},
               f"{out}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_deepspeed_learner.py: skip DeepSpeed's teardown at exit


def test_two_ranks_of_two_equal_one_rank_of_four(tmp_path):
    from rlft.algos import contrastive

    out = str(tmp_path / "rank")
    ranks = mp.start_processes(_rank_main, args=(2, free_port(), out), nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + 240
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the 2 gloo ranks did not finish in 240 s")
    got = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]

    z_anchor, z_gen = _vectors()
    expected = _log_dens(z_anchor, z_gen, None)  # one process, 4 samples: all of them in every den_i
    torch.testing.assert_close(torch.cat([got[0]["log_dens"], got[1]["log_dens"]]), expected, rtol=1e-6, atol=1e-6)
    alone = torch.cat([got[0]["alone"], got[1]["alone"]])
    assert (expected - alone).abs().min() > 1e-3  # without the other rank's rows every den_i is smaller

    g = z_gen.clone().requires_grad_(True)
    loss, _ = contrastive.loss(z_anchor, g, torch.tensor([True, False, True, False]), tau=TAU, clamp=CLAMP)
    loss.backward()
    assert (got[0]["loss"] + got[1]["loss"]) / 2 == pytest.approx(float(loss), rel=1e-6)
    grads = torch.cat([got[0]["grad"], got[1]["grad"]]) / 2  # data parallelism averages the ranks' gradients
    torch.testing.assert_close(grads, g.grad, rtol=1e-5, atol=1e-7)
    assert g.grad.abs().sum() > 0
