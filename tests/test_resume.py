"""Resumable builds: a build killed mid-way and re-run yields byte-identical artifacts, without redoing shards; a
killed builder leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.core.manifest import MANIFEST
from testkit import ROOT
from testkit.galleries import write_shapes_folder
from testkit.helpers import assert_same_build, run_build
from testkit.models import save_tiny_clip


def test_a_killed_build_resumes_to_identical_artifacts(tmp_path, tiny_clip):
    gallery = tmp_path / "gallery"
    write_shapes_folder(gallery, per_combo=12)  # 240 images -> 30 shards of 8
    (gallery / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["--images", str(gallery), "--model", str(tiny_clip), "--batch-size", "4", "--shard-size", "8",
            "--num-workers", "1", "--eval", "none"]

    clean = tmp_path / "clean"
    assert run_build(*args, "--out", clean) == 0

    resumed = tmp_path / "resumed"
    shards = resumed / ".work" / "shards"
    process = subprocess.Popen([sys.executable, "-m", "builder.build", *args, "--out", str(resumed), "--quiet"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (shards / "00003" / "done").exists():
        assert process.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(p.parent.name for p in shards.glob("*/done"))
    assert 4 <= len(done) < 30, done
    assert not (resumed / MANIFEST).exists()  # a killed build never looks complete
    stamps = {name: (shards / name / "vectors.npy").stat().st_mtime_ns for name in done}

    assert run_build(*args, "--out", resumed) == 0
    assert all((shards / name / "vectors.npy").stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert len(assert_same_build(clean, resumed)["skipped"]) == 1


def test_rerunning_a_finished_build_is_instant_and_identical(tmp_path, tiny_clip, shapes_folder):
    out = tmp_path / "out"
    args = ["--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--eval", "none"]
    assert run_build(*args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != MANIFEST}
    assert run_build(*args) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != MANIFEST}
    assert before == after
    assert json.loads((out / MANIFEST).read_text())["images_per_second"] == 0.0  # nothing embedded again


def _children(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc (each process's stat names its parent)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if int(parent) == pid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_a_builder_killed_with_sigkill_takes_its_decoding_workers_with_it(tmp_path):
    """The OOM killer or a job's time limit sends SIGKILL: no clean-up code runs. The DataLoader workers must not
    outlive the builder: a worker whose results nobody reads any more blocks forever in its queue's finalizer.
    Noise pictures and a 128-px model make each batch's thumbnails (256-px JPEGs of noise, ~50 KB each) far larger
    than a pipe holds, as real COCO batches are, so a surviving worker has results stuck in its pipe."""
    model = save_tiny_clip(tmp_path / "model", "clip", image_size=128)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for number in range(160):  # 20 shards of 8
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            gallery / f"noise-{number:03d}.png", compress_level=1)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "builder.build", "--images", str(gallery), "--model", str(model), "--out",
               str(out), "--batch-size", "8", "--shard-size", "8", "--num-workers", "2", "--eval", "none",
               "--precision", "fp32", "--quiet"]
    builder = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not ((out / ".work/shards/00000/done").exists() and len(workers) >= 2):
            assert builder.poll() is None, "the build ended before it could be killed"
            workers = _children(builder.pid)
            time.sleep(0.005)
        assert len(workers) >= 2, f"no decoding workers seen (children: {workers})"
        builder.send_signal(signal.SIGKILL)
        builder.wait()
        assert not (out / MANIFEST).exists() and len(list(out.glob(".work/shards/*/done"))) < 20  # killed mid-way
        deadline = time.time() + 3
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "decoding workers outlived the killed builder"
    finally:
        for pid in [builder.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
