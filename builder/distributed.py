"""Data-parallel builds under an existing launcher (torchrun, accelerate launch): ranks, shard split, sync points.

Every process runs the same `python -m builder.build ...` command. The launcher's environment says how many there
are (WORLD_SIZE), which one this is (RANK) and which GPU of its node it owns (LOCAL_RANK). Rank 0 prepares the
output folder, every rank embeds the shards s with s % WORLD_SIZE == RANK into the shared `--out/.work`, and after
the last shard rank 0 alone packs, indexes, evaluates, writes the manifest and pushes. A shard's vectors do not
depend on which process computed it, so the artifacts are byte-identical to a one-process build.

Only two sync points are needed and no tensors cross processes, so the process group is always gloo (TCP): it
works on CPU and GPU nodes alike, needs no device binding, and has no NCCL watchdog to kill a rank that waits
while rank 0 downloads a dataset. Across nodes `--out` must be storage every node sees (NFS, Lustre, a bucket
mount...): the shards are exchanged through it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import faiss
import torch

from .errors import BuildError

log = logging.getLogger(__name__)
T = TypeVar("T")

# A rank waits at a sync point while another one does long work (rank 0 downloading COCO, a slower GPU finishing
# its shards). A rank that dies ends the job through the launcher; this only bounds a rank that hangs.
SYNC_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job; Ranks() is the ordinary one-process build."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks:
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world, local_rank, int(env.get("LOCAL_WORLD_SIZE", world) or world))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shards(self, count: int) -> list[int]:
        """This rank's shards: round-robin, so every rank gets a spread of the gallery and resumes stay balanced."""
        return [shard for shard in range(count) if shard % self.world_size == self.rank]

    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}" if self.distributed else ""


class Group:
    """The process group of a distributed build (a no-op for one process); use as a context manager."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.started = False

    def __enter__(self) -> Group:
        if self.ranks.distributed and not torch.distributed.is_initialized():
            # env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, which every launcher sets.
            torch.distributed.init_process_group("gloo", timeout=SYNC_TIMEOUT)
            self.started = True
        return self

    def __exit__(self, *_) -> None:
        if self.started:
            torch.distributed.destroy_process_group()
            self.started = False

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any JSON-like object)."""
        if not self.ranks.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank; also a barrier."""
        if not self.ranks.distributed:
            return [value]
        values = [None] * self.ranks.world_size
        torch.distributed.all_gather_object(values, value)
        return values


class Job:
    """This process's part in a build, used as a context manager around it: one process, or one rank of a job that
    a launcher started. The rest of the builder sees two calls, `start` and `embed`, and never a rank."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.group = Group(ranks)

    @property
    def reports(self) -> bool:
        """Whether this process reports (progress bars, the download estimate, the summary): rank 0 only."""
        return self.ranks.main

    def __enter__(self) -> Job:
        if (threads := rank_threads(self.ranks)) is not None:
            torch.set_num_threads(threads)  # ranks sharing a node split its cores instead of oversubscribing them
        self.group.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.group.__exit__(*exc)

    def start(self, first: Callable[[], tuple[T, dict]], others: Callable[[dict], T]) -> T:
        """Set-up: rank 0 runs `first()` (checks, downloads into the caches the other ranks then read, resets --out)
        and shares the settings it returns; only then does every other rank run `others(settings)`. A failure on
        rank 0 reaches the other ranks as a message, not a hang. One process is rank 0 of one."""
        if self.ranks.main:
            try:
                value, settings = first()
            except Exception as error:
                self.group.broadcast({"error": f"{type(error).__name__}: {error}"})
                raise
            self.group.broadcast({"settings": settings})
            return value
        ready = self.group.broadcast(None)
        if "error" in ready:
            raise BuildError(f"rank 0 could not start the build ({ready['error']}).")
        try:
            return others(ready["settings"])
        except Exception as error:
            self._failed(error)  # rank 0 hears it at the end of embedding and says why
            raise

    def _failed(self, error: Exception) -> None:
        self.group.gather({"error": f"rank {self.ranks.rank}: {type(error).__name__}: {error}"})

    def embed(self, shard_count: int, run: Callable[[list[int]], dict]) -> dict | None:
        """`run(shards)` on this rank's share of the shards, then wait for every rank: the combined throughput on rank
        0, which alone finishes the build (with every core of its node); None on the other ranks."""
        mine = self.ranks.shards(shard_count)
        if self.ranks.distributed:
            log.info("%d of %d shards on this rank", len(mine), shard_count)
        try:
            speed = run(mine)
        except Exception as error:
            self._failed(error)
            raise
        speeds = self.group.gather(speed)  # also the barrier: every shard is on disk once this returns
        if not self.ranks.main:
            return None
        failed = [s["error"] for s in speeds if "error" in s]
        if failed:
            raise BuildError(f"{'; '.join(failed)}. Finished shards are kept: re-run the same command to resume.")
        if not self.ranks.distributed:
            return speed
        cores = os.cpu_count() or 1  # the other ranks are done: indexing and evaluation get the whole node
        torch.set_num_threads(cores)
        faiss.omp_set_num_threads(cores)
        return combined(speeds)


def combined(speeds: list[dict]) -> dict:
    """One throughput for the ranks' embedding, which ran side by side."""
    images, seconds = sum(s["images"] for s in speeds), max(s["seconds"] for s in speeds)
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds if seconds else 0.0,
            "processes": len(speeds)}


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on a node: cuda:LOCAL_RANK (made current, so pinned-memory threads use it too)."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    count = torch.cuda.device_count()
    if ranks.local_world_size > count:
        log.warning("%d processes on this node share %d GPU(s); launch --nproc_per_node %d for one each",
                    ranks.local_world_size, count, count)
    chosen = torch.device("cuda", ranks.local_rank % count)
    torch.cuda.set_device(chosen)
    return chosen


def rank_threads(ranks: Ranks, cores: int | None = None) -> int | None:
    """CPU threads for this process when several share a node; None leaves torch's default (one process).

    torchrun already exports OMP_NUM_THREADS=1 to its workers; an explicit OMP_NUM_THREADS is always respected.
    """
    if not ranks.distributed or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cores or os.cpu_count() or 1) // ranks.local_world_size)


def rank_workers(ranks: Ranks, cores: int | None = None) -> int:
    """Default decoding processes per rank: the node's cores split between its ranks, one left for the main loop."""
    share = (cores or os.cpu_count() or 2) // ranks.local_world_size
    return max(1, min(16, share - 1))
