"""Resumable builds: a build killed mid-way and re-run yields byte-identical artifacts, without redoing shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from clipsearch.core.manifest import MANIFEST
from testkit import ROOT
from testkit.galleries import write_shapes_folder
from testkit.helpers import assert_same_build, run_build


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
