"""Data parallelism with PyTorch's own ``torchrun`` + DistributedDataParallel.

Launch one process per GPU (and per node)::

    torchrun --nproc_per_node=4 -m mne_unfolded_sbl.training --config cfg.toml
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 -m mne_unfolded_sbl.training --config cfg.toml

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; each rank
simulates its own shard of the global batch (rank-dependent seeds) and DDP
averages the gradients. Frozen parameters (progressive phases) are excluded
by building a new DDP wrapper at every phase, after ``requires_grad`` is set.
"""

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    """Rank and size of the data-parallel group (1 process: 0 and 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def init_distributed(device="auto"):
    """Join the process group described by the ``torchrun`` environment.

    Without ``WORLD_SIZE > 1`` (or if a group is already initialised, e.g. by
    a test) nothing is initialised. The backend is NCCL for CUDA, else gloo.

    Returns
    -------
    info : DistInfo
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device).startswith("cuda") or (
        device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank)


def resolve_device(device, info):
    """The device of this rank (``cuda:LOCAL_RANK`` under torchrun)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank if info.enabled
                              else torch.cuda.current_device())
    return device


def wrap(module, info, device):
    """DDP-wrap ``module`` (only parameters requiring grad are synchronised)."""
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids,
                                   find_unused_parameters=False)


def any_rank(flag, info, device):
    """True on every rank if ``flag`` is True on any rank."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values, info, device):
    """Average a list of floats over the ranks."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def barrier(info):
    if info.enabled:
        dist.barrier()


def cleanup():
    """Leave the process group, if one is initialised.

    Drop every DistributedDataParallel wrapper first (e.g.
    :meth:`Trainer.close <mne_unfolded_sbl.training.Trainer.close>`): a DDP
    reducer that outlives the group destroys it from its own destructor,
    which can deadlock with gloo's worker threads (they need the GIL to free
    finished work). The barrier and the short sleep let them go idle.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        time.sleep(0.2)  # releases the GIL: gloo threads free finished work
        dist.destroy_process_group()
