"""The DeepSpeed learner on 2 CPU ranks (gloo) against the single-process torch learner.

Both take one optimizer step on the same minibatch with the same loss; the DeepSpeed ranks each get half
of the micro-batches. Tolerance: 1e-5 relative on the loss and gradient norm, and 1e-3 on the relative L2 distance
between the two weight updates. The maths are identical (sum of per-micro-batch gradients, AdamW,
clipping); only the order of floating-point additions differs (gloo's all-reduce / ZeRO's reduce-scatter
sum the two ranks' partial gradients, the torch learner accumulates them in one buffer), which moves
gradients by ~1e-7 relative. Adam's first update is lr * g / (|g| + eps): for the few entries whose
gradient is of the order of eps, that becomes a visible change of that entry's update (measured up to
2e-5 absolute with lr 1e-3), so entries are not compared one by one; the update as a whole agrees to
~1e-4 relative.

With `packing` the DeepSpeed ranks run packed forwards (`ppo.packing`: one row of real tokens per forward, the
shared prompt packed too) and still match the padded torch learner.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from dist_helpers import free_port

deepspeed = pytest.importorskip("deepspeed")

pytestmark = pytest.mark.dist

LR = 1e-3


def make_batch(vocab: int, seed: int = 0) -> list[dict]:
    """4 micro-batches of 2 sequences: left-padded prompts, right-padded responses. In micro-batch 2 both
    rows have the same prompt, so the learners run it once for both (`PolicyModel`'s shared prompts): with
    two ranks, rank 0 (micro-batches 0, 2) shares and rank 1 (1, 3) has nothing to share, and both must
    still make the same module calls (ZeRO-3 gathers parameters per call)."""
    g = torch.Generator().manual_seed(seed)
    mbs = []
    for i in range(4):
        prompt = torch.randint(3, vocab, (2, 5), generator=g)
        prompt_mask = torch.ones(2, 5, dtype=torch.long)
        prompt_mask[0, :2] = 0
        if i == 2:
            prompt[1], prompt_mask[1] = prompt[0], prompt_mask[0]
        response = torch.randint(3, vocab, (2, 4), generator=g)
        response_mask = torch.ones(2, 4, dtype=torch.long)
        response_mask[1, 3] = 0
        mbs.append({"prompt_ids": prompt, "prompt_mask": prompt_mask, "response_ids": response,
                    "response_mask": response_mask, "returns": torch.randn(2, 4, generator=g),
                    "input_ids": torch.cat([prompt, response], 1), "attention_mask": torch.cat([prompt_mask, response_mask], 1)})
    return mbs


def loss_fn(output, mb):
    """A token-level loss normalised by the minibatch's global token count (the learner contract)."""
    from rlft.algos.ppo import logprobs_from_logits

    mask = mb["response_mask"].float()
    # learners hand the loss logits and values aligned to the response tokens (`ResponseOutput`)
    assert output.logits.shape[1] == mb["response_ids"].shape[1] == output.values.shape[1]
    logprobs = logprobs_from_logits(output.logits.float(), mb["response_ids"])
    values = output.values
    total_tokens = 4 * 7  # 4 micro-batches x (4 + 3) response tokens
    loss = (-(logprobs * mask).sum() + ((values - mb["returns"]) ** 2 * mask).sum()) / total_tokens
    return loss, {"loss": loss.detach()}


def build_model(path, packing: bool = False):
    from rlft.models.loading import load_policy
    from rlft.models.policy import PolicyModel

    model = PolicyModel(load_policy(path)[0], value_head="linear", init_seed=3, packing=packing)
    assert model.packing is packing
    return model


def _rank_main(rank: int, world: int, port: int, stage: int, model_path: str, out: str, packing: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from rlft.learner.deepspeed_learner import DeepSpeedLearner

    model = build_model(model_path, packing)
    # persistence threshold 0: ZeRO-3 gathers every parameter at each module call (the tiny model's are all
    # below the default 1e5 elements, which would keep them gathered and hide a mismatch in calls)
    zero = {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})}
    learner = DeepSpeedLearner(model, ds_config={"zero_optimization": zero}, lr=LR, max_grad_norm=1.0,
                               total_steps=10, schedule="constant", train_mode=False)
    mbs = make_batch(model.config.vocab_size)
    metrics = learner.train_step(mbs[rank::world], loss_fn)
    metrics["loss"] = torch.tensor(metrics["loss"])
    losses = torch.zeros(1) + metrics["loss"]
    torch.distributed.all_reduce(losses)  # the minibatch loss is the sum of the ranks' shares
    weights = dict(learner.named_weights())
    if rank == 0:
        torch.save({"loss": float(losses), "grad_norm": metrics["train/grad_norm"], "weights": weights}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Skip interpreter teardown: DeepSpeed's CPU shared-memory comm op can abort in a C++ destructor at exit
    # ("terminate called without an active exception") after all the work above is done.
    os._exit(0)


@pytest.mark.parametrize("stage,packing", [(2, False), (3, False), (2, True), (3, True)])
def test_first_step_matches_torch_learner(warm_model, tmp_path, stage, packing):
    from rlft.learner.torch_learner import TorchLearner

    model_path = str(warm_model)
    model = build_model(model_path)
    reference = TorchLearner(model, lr=LR, max_grad_norm=1.0, total_steps=10, schedule="constant", train_mode=False)
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    expected = reference.train_step(make_batch(model.config.vocab_size), loss_fn)

    out = str(tmp_path / "rank0.pt")
    ranks = mp.start_processes(_rank_main, args=(2, free_port(), stage, model_path, out, packing), nprocs=2,
                               start_method="spawn", join=False)
    deadline = time.monotonic() + 240  # ~20 s when it works; ranks whose collectives do not match hang
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"ZeRO-{stage}: the ranks did not finish in 240 s (mismatched collectives hang them)")
    got = torch.load(out, weights_only=False)

    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert got["grad_norm"] == pytest.approx(expected["train/grad_norm"], rel=1e-5)
    delta_torch = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.lm.named_parameters()])
    delta_ds = torch.cat([(got["weights"][n] - before[n]).flatten() for n, _ in model.lm.named_parameters()])
    assert delta_torch.norm() > 0  # the step really moved the weights (so agreement is not vacuous)
    relative = ((delta_ds - delta_torch).norm() / delta_torch.norm()).item()
    assert relative < 1e-3, f"DeepSpeed ZeRO-{stage} update differs from the torch learner's by {relative:.2e} (relative L2)"
