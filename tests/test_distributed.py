"""Data-parallel builds: two torchrun processes write exactly the artifacts one process writes, and resume alike."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from builder.distributed import Ranks, rank_threads, rank_workers
from testkit import ROOT
from testkit.galleries import write_shapes_folder
from testkit.helpers import assert_same_build

LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID")


def _build(command: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}  # torch's default threads, no stray rank
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"},
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_ranks_split_shards_round_robin_and_read_the_launcher_environment():
    assert Ranks.from_env({}) == Ranks() and not Ranks().distributed and Ranks().shards(3) == [0, 1, 2]
    ranks = Ranks.from_env({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.local_world_size) == (2, 3, 1, 2)
    split = [Ranks(rank, 3).shards(10) for rank in range(3)]
    assert split == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(s for part in split for s in part) == list(range(10))
    assert rank_workers(Ranks(0, 8, 0, 8), cores=64) == 7 and rank_workers(Ranks(), cores=2) == 1
    if not os.environ.get("OMP_NUM_THREADS"):
        assert rank_threads(Ranks(1, 2, 1, 2), cores=2) == 1 and rank_threads(Ranks(), cores=2) is None


def test_two_processes_build_the_same_artifacts_as_one(tmp_path, tiny_clip):
    gallery = tmp_path / "gallery"
    write_shapes_folder(gallery, per_combo=3)  # 60 images + 1 broken -> 8 shards of 8, batches of 4
    (gallery / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["--images", str(gallery), "--model", str(tiny_clip), "--batch-size", "4", "--shard-size", "8",
            "--num-workers", "1", "--eval", "none"]

    # One process, as a user runs it: torch's default thread count (every core); the ranks below get 1 thread each
    # (torchrun's OMP_NUM_THREADS=1). The comparison is honest only because a batch's vectors do not depend on the
    # thread count on this CPU; if that ever stops holding, this test says so.
    single = tmp_path / "single"
    one = _build(["-m", "builder.build", *args, "--out", str(single)])
    assert one.stdout.count("Built 60 images") == 1

    # The distributed build resumes from the first three shards of the single build (same settings), so it also
    # shows that each rank skips finished shards: rank 0 embeds 4 and 6, rank 1 embeds 3, 5 and 7.
    multi = tmp_path / "multi"
    (multi / ".work" / "shards").mkdir(parents=True)
    shutil.copy(single / ".work" / "settings.json", multi / ".work" / "settings.json")
    for shard in ("00000", "00001", "00002"):
        shutil.copytree(single / ".work" / "shards" / shard, multi / ".work" / "shards" / shard)
    two = _build(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "builder.build", *args, "--out", str(multi)])
    logs = two.stdout + two.stderr
    assert "[rank 0/2]" in logs and "[rank 1/2]" in logs
    assert "resuming: 2 of 4 shards already embedded" in logs  # rank 0: 0 and 2 done
    assert "resuming: 1 of 4 shards already embedded" in logs  # rank 1: 1 done
    assert two.stdout.count("Built 60 images") == 1  # rank 0 alone finishes and reports
    assert "(2 processes)" in two.stdout

    assert len(assert_same_build(single, multi)["skipped"]) == 1


def test_decoding_workers_never_touch_cuda(tmp_path, tiny_clip, monkeypatch):
    """`--device cuda` forks decoding workers after the model is on the GPU: a worker that touched CUDA would fail
    ("Cannot re-initialize CUDA in forked subprocess"). Here any CUDA initialisation raises, in the forked worker as
    in this process, and a raise in a worker would turn the image into a skipped one."""
    import torch

    from builder.embed import embed_shards, read_shard, shard_ranges
    from builder.sources import ImageFolderSource
    from clipsearch.core.encoder import Encoder

    def no_cuda(*_, **__):
        raise RuntimeError("CUDA initialised in the decoding path")

    gallery = tmp_path / "gallery"
    write_shapes_folder(gallery, per_combo=1)
    source, encoder = ImageFolderSource(gallery), Encoder.load(str(tiny_clip), None, "cpu")
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    work = tmp_path / "work"
    speed = embed_shards(source, encoder, work, batch_size=4, shard_size=8, num_workers=1, progress=False)
    assert speed["images"] == len(source.records) == 20
    for shard in range(len(shard_ranges(20, 8))):
        assert read_shard(work, shard)[1]["skipped"] == []
