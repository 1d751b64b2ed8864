"""Which sample indices this process draws, on which device, under torchrun or alone.

torchrun (and any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK) starts one process per device; each
takes a contiguous, balanced block of the indices 0..N-1 (block r of W is [N*r//W, N*(r+1)//W)). The split
depends only on (N, W), never on what is already on disk, so processes never race over who draws an
index, and a resumed run with any W draws exactly the indices still missing.

torch.distributed is used for one thing only: a barrier (and a sum of counts) at the end, so that rank 0
can assemble an npz and print one summary after every process has written its part. A single process
never initialises it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class ProcessShare:
    rank: int
    world_size: int
    local_rank: int
    start: int  # first index of this process's block
    stop: int  # one past its last index

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def process_share(num_images: int) -> ProcessShare:
    """This process's block of indices from RANK / WORLD_SIZE / LOCAL_RANK (absent: the only process)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process of a group")
    start, stop = block_of(num_images, rank, world_size)
    return ProcessShare(rank, world_size, local_rank, start, stop)


def block_of(num_images: int, rank: int, world_size: int) -> tuple[int, int]:
    return num_images * rank // world_size, num_images * (rank + 1) // world_size


def batches(indices: list[int], batch_size: int) -> list[tuple[int, int]]:
    """Cut sorted indices into (start, count) batches of consecutive indices, at most batch_size each.

    Where the cuts fall does not change any image (each depends only on its own index); batches of one
    run start at multiples of batch_size from the run's start, so a run resumed after a whole batch was
    written cuts the rest where the interrupted one would have.
    """
    result: list[tuple[int, int]] = []
    position = 0
    while position < len(indices):
        run_end = position
        while run_end + 1 < len(indices) and indices[run_end + 1] == indices[run_end] + 1:
            run_end += 1
        for first in range(position, run_end + 1, batch_size):
            count = min(batch_size, run_end + 1 - first)
            result.append((indices[first], count))
        position = run_end + 1
    return result


def device_for(share: ProcessShare, requested: str) -> str:
    """cuda:LOCAL_RANK when CUDA is there and wanted, else cpu; an explicit device is taken as given.

    ``requested`` is "auto", "cpu", "cuda" (one device per process: cuda:LOCAL_RANK) or "cuda:K".
    """
    import torch

    if requested == "auto":
        return f"cuda:{share.local_rank}" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{share.local_rank}"
    return requested


class ProcessGroup:
    """A gloo group for the final barrier under torchrun; does nothing for a single process."""

    def __init__(self, share: ProcessShare):
        self.share = share
        self._active = False
        if share.world_size > 1:
            import torch.distributed as dist

            # gloo works for CPU and GPU processes alike and needs only the launcher's MASTER_ADDR/PORT;
            # the timeout covers ranks that finish their share far apart on uneven hardware.
            dist.init_process_group("gloo", timeout=timedelta(hours=6))
            self._active = True

    def sum(self, value: int) -> int:
        """The sum of ``value`` over all processes (a barrier too)."""
        if not self._active:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def barrier(self) -> None:
        if self._active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._active:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._active = False
