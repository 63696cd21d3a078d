"""Distributed data parallel when started with ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node N -m spikeforge.cli train CONFIG`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`init` reads them. Without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """One GPU per process: rank-local CUDA device when running distributed on CUDA."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


def parameter_checksums(model: torch.nn.Module, ctx: DistContext) -> list[float]:
    """Each rank's sum of |parameters| (float64), gathered on every rank. DDP keeps replicas
    identical, so all entries must be equal; training records them as a consistency check."""
    local = torch.stack([p.detach().double().abs().sum() for p in model.parameters()]).sum()
    if not ctx.enabled:
        return [local.item()]
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    if dist.get_backend() == "nccl":
        local = local.cuda()
        gathered = [g.cuda() for g in gathered]
    dist.all_gather(gathered, local)
    return [g.item() for g in gathered]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
