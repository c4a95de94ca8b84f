"""Moving the learner's new weights to the rollout engines (step 6 of the loop), timed as `timing/sync`.

- in-process: the local HF engine shares the policy's module, so nothing moves
  (`HFRolloutEngine.load_weights` skips tensors that already are its own).
- object store (`cluster.weight_sync=object_store`): learner rank 0 returns one `{name: tensor}` object
  (gathered first under ZeRO-3); every engine reads that single object (zero-copy on the same node).
  Simple and right for CPU and small models; the driver never holds the tensors.
- broadcast (`cluster.weight_sync=broadcast`): a torch.distributed group of learner rank 0 (rank 0) and the
  R engines (ranks 1..R), created from its own TCPStore so it is independent of the learners' own group
  (the NCCL path of OpenRLHF / verl). Rank 0 broadcasts each tensor of the LM in `named_parameters()`
  order; engines, which hold the same architecture, receive into buffers of the same shapes and copy.
  Tensors travel as float32 whatever the two sides hold (a DeepSpeed bf16 module, fp32 engine weights), so
  both agree on every buffer's size without a metadata round.
  gloo on CPU (tested here), NCCL on GPU.

No Ray import here: the actors in `ray_roles.py` call these functions.
"""

from __future__ import annotations

import datetime
import socket
from typing import Iterable

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def new_group(backend: str, master_addr: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0):
    """A process group of its own (not the default one), so a learner rank can be in two groups."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, port, world_size, is_master=rank == 0, timeout=timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def _broadcast(group, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def broadcast_send(group, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Rank 0: send every tensor in order. Returns the bytes sent."""
    sent = 0
    for _, tensor in named_tensors:
        tensor = tensor.detach().float().contiguous()
        _broadcast(group, tensor)
        sent += tensor.numel() * tensor.element_size()
    return sent


@torch.no_grad()
def broadcast_receive(group, model: torch.nn.Module) -> None:
    """Ranks 1..R: receive into the model's own parameters, in the sender's order."""
    for _, param in model.named_parameters():
        buffer = torch.empty(param.shape, dtype=torch.float32, device=param.device)
        _broadcast(group, buffer)
        param.data.copy_(buffer)
