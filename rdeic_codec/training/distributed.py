"""Where training runs: one process on the CPU, or one process per GPU under ``torchrun``.

``rdeic train`` runs unchanged under ``torchrun --nproc_per_node N``: torchrun sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``, each process drives one GPU (or the CPU, with the gloo backend),
draws its own crops, and DistributedDataParallel averages the gradients, so N processes train like one
process with an N times larger batch. Only rank 0 builds caches, logs, validates and writes
checkpoints; the others wait for it at the end of each stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

_RUNTIME = None


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def wrap(self, trained: dict, loss_fn):
        """``loss_fn`` as a callable whose backward averages the gradients of ``trained`` over processes.

        Args:
            trained: the modules this stage optimises (name → module); frozen ones stay out.
            loss_fn: computes (loss, logs) from a batch.
        """
        if not self.distributed:
            return loss_fn
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Some parameters get no gradient in some steps (e.g. the codebook, updated by its EMA).
        return nn.parallel.DistributedDataParallel(StageLoss(trained, loss_fn), device_ids=ids,
                                                   find_unused_parameters=True)


class StageLoss(nn.Module):
    """A stage's loss as a module, so that DistributedDataParallel sees the forward it must synchronise."""

    def __init__(self, trained: dict, loss_fn):
        super().__init__()
        self.trained = nn.ModuleDict(trained)
        self.loss_fn = loss_fn

    def forward(self, *args, **kwargs):
        return self.loss_fn(*args, **kwargs)


def runtime(device: str | None = None) -> Runtime:
    """The process's place in the run; under torchrun, joins the process group on first use.

    Args:
        device: "cpu", "cuda" or "cuda:N" on the first call (default: this process's GPU if there is
            one, else the CPU); under torchrun each process takes GPU ``LOCAL_RANK``.
    """
    global _RUNTIME
    if _RUNTIME is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if want.type == "cuda":
            device = torch.device("cuda", local if world > 1 else (want.index or 0))
            torch.cuda.set_device(device)
        else:
            device = want
        if world > 1 and not torch.distributed.is_initialized():
            # Rank 0 alone builds the latent cache while the others wait: allow it hours, not minutes.
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                                 timeout=timedelta(hours=3))
        _RUNTIME = Runtime(rank, world, device)
    return _RUNTIME
