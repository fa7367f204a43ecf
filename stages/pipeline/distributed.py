"""Running a stage under `torchrun`: the process's place in the world, and the few collectives stages use.

`torchrun --nproc-per-node=N -m stages.X` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python -m stages.X`
sets none and gets a world of one, where every helper here is a no-op, so single-process runs are exactly
what they were. Collectives carry JSON (no pickle crosses processes) and tensors only.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from stages.pipeline.errors import PipelineError
from stages.pipeline.outputs import atomic_dir

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous block of `items` (blocks differ in length by at most one)."""
        bounds = np.linspace(0, len(items), self.size + 1).round().astype(int)
        return list(items[bounds[self.rank]:bounds[self.rank + 1]])

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of n (DDP: every rank takes a slice of every batch)."""
        bounds = np.linspace(0, n, self.size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's JSON-able `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(self.device)
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(data)], device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[:len(data)] = data
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return [json.loads(p[:int(s.item())].cpu().numpy().tobytes()) for p, s in zip(parts, sizes)]

    def broadcast(self, obj):
        """Rank 0's JSON-able `obj` on every rank."""
        return self.gather(obj if self.main else None)[0]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            value = value.to(self.device)
            dist.all_reduce(value)
        return value.cpu()

    def ddp(self, model: nn.Module) -> nn.Module:
        """The model itself in a world of one, else wrapped in DistributedDataParallel (gradients averaged)."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise PipelineError(f"environment {name} = {value!r}: expected an integer (torchrun sets it)") from None


@contextlib.contextmanager
def world() -> Iterator[World]:
    """This process's World; under torchrun (WORLD_SIZE > 1) with a process group (nccl on CUDA, else gloo)
    that is destroyed on the way out, error or not."""
    size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < size:
        raise PipelineError(f"environment RANK = {rank}: outside WORLD_SIZE = {size}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if size == 1:
        yield World(device=device)
        return
    if cuda:
        torch.cuda.set_device(device)
    if rank != 0:
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar per run, rank 0's
    # torchrun stops the other workers with SIGTERM when one fails: exit through `finally` blocks then,
    # so a rank's temporary folders go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size)
    try:
        yield World(rank, size, local_rank, device)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def shared_dir(w: World, path: str | Path) -> Iterator[Path]:
    """atomic_dir for a whole world: rank 0 makes the temp folder, every rank writes into it, and rank 0
    renames it once every rank has left the block (same machine or a shared filesystem)."""
    if w.size == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    if not w.main:
        yield Path(w.broadcast(None))
        w.barrier()  # rank 0 finalises after this
        return
    with atomic_dir(path) as tmp:
        w.broadcast(str(tmp))
        yield tmp
        w.barrier()
