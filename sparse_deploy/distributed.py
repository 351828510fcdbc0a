"""Data-parallel training under torchrun: which device each rank takes, and what ranks share.

``torchrun --nproc_per_node N -m sparse_deploy.train ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` (plus the rendezvous address) in each. Here, every rank:

* takes ``cuda:<LOCAL_RANK>`` and makes it the current device before anything touches CUDA
  (``auto``/``cuda``; an explicit ``cuda:N`` is refused under torchrun), or the CPU with gloo;
* wraps the student in ``DistributedDataParallel`` (``device_ids=[LOCAL_RANK]`` on CUDA, none on
  the CPU), without broadcasting buffers: masks are recomputed from weights that DDP keeps
  identical, so every rank computes the same masks itself (and :meth:`Distributed.check_same`
  proves it at every checkpoint);
* draws the same global batch from the ``(seed, step)`` generator and keeps its own
  ``1/WORLD_SIZE`` slice (:meth:`Distributed.shard`): ``--batch-size`` is the global batch, and
  DDP's averaged gradient is the single-process gradient at that batch, so a run on N ranks
  gives the checkpoint one process gives, up to float summation order;
* lets rank 0 alone write files and print.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .errors import SparseDeployError

__all__ = ["DistEnv", "Distributed", "resolve_device", "state_digest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """The rank layout torchrun gives this process (one process alone: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        environ = os.environ if environ is None else environ
        try:
            world = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError as exc:
            raise SparseDeployError(
                f"RANK, LOCAL_RANK and WORLD_SIZE must be integers ({exc}); launch with torchrun"
            ) from None
        if not (world >= 1 and 0 <= rank < world and 0 <= local <= rank):
            raise SparseDeployError(
                f"inconsistent torchrun environment: RANK {rank}, LOCAL_RANK {local}, WORLD_SIZE {world}"
            )
        return cls(rank, local, world)

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(request: str, env: DistEnv, cuda_devices: int | None = None) -> torch.device:
    """The device this rank trains on: ``cpu``, or ``cuda:<LOCAL_RANK>``.

    Args:
        request: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (``cuda:N`` only in a single process).
        env: this process's rank layout.
        cuda_devices: how many CUDA devices are visible (default: ask PyTorch).
    """
    from .backends.device import torch_device

    return torch_device(request, env.local_rank, env.world_size, cuda_devices)


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names and exact bytes of a state dict (weights, masks, EMA): equal only if identical."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class Distributed:
    """The process group of one training run; every method is a no-op in a single process."""

    def __init__(self, env: DistEnv, device: torch.device):
        self.env, self.device = env, device
        self.started = False

    @property
    def world(self) -> int:
        return self.env.world_size

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def main(self) -> bool:
        return self.env.main

    def start(self) -> "Distributed":
        """Make this rank's GPU current, then join the process group (nccl on CUDA, gloo on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not self.started:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            kwargs = {"device_id": self.device} if self.device.type == "cuda" else {}
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world, **kwargs)
            self.started = True
            log.info("rank %d of %d on %s (%s)", self.rank, self.world, self.device, backend)
        return self

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()
            self.started = False

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise SparseDeployError(
                f"--batch-size {batch_size} (the global batch) must be a multiple of the {self.world} ranks, which split it evenly"
            )

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``model`` (``device_ids`` from LOCAL_RANK on CUDA); the model itself in one process."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous ``1/world`` slice of a global batch (dimension 0)."""
        if self.world == 1:
            return tensor
        per = tensor.shape[0] // self.world
        return tensor[self.rank * per : (self.rank + 1) * per]

    def mean(self, values: Sequence[float]) -> list[float]:
        """The mean over ranks of each value (e.g. the step's losses, so the log shows the global batch)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return (t / self.world).tolist()

    def mean_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor, outside autograd (a normaliser every rank must share)."""
        if self.world == 1:
            return tensor
        t = tensor.detach().clone()
        torch.distributed.all_reduce(t)
        return t / self.world

    def check_same(self, digest: str, what: str) -> list[str]:
        """Every rank's ``digest``; raises when they differ (the ranks' models have drifted apart)."""
        if self.world == 1:
            return [digest]
        digests: list[str] = [""] * self.world
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            raise SparseDeployError(
                f"the {self.world} ranks hold different {what} ({', '.join(d[:12] for d in digests)}); "
                "data parallelism is broken, the run was stopped"
            )
        return digests

    def barrier(self) -> None:
        if self.started:
            torch.distributed.barrier()
