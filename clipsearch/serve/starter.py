"""A newcomer's first run: when the default index has not been published yet, build a starter index and serve it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import ArtifactError
from ..core.manifest import DEFAULT_INDEX_REPO, MANIFEST, Manifest
from .download import IndexSource

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the repository: clipsearch/serve/starter.py
# COCO val2017 (5,000 images) with the builder's default model, on the CPU fast path: minutes on a laptop.
# No object index: val2017's ~18k kept boxes would make the first run several times longer (decision 0029).
STARTER_ARGS = ("--splits", "val2017", "--precision", "auto", "--device", "cpu", "--objects", "none")


def starter_folder(work_dir: Path) -> Path:
    return Path(work_dir) / "starter-index"


def build_starter(work_dir: Path, *, endpoint: str | None = None) -> IndexSource:
    """Build (or resume, or reuse) the starter index in the cache with the project's own builder, in a subprocess:
    the app never imports the builder, and the build's progress goes to this process's log as it happens."""
    out = starter_folder(work_dir)
    notice = (f"The default index {DEFAULT_INDEX_REPO} has not been published yet, so this app serves a starter index "
              "built here from COCO val2017 (5,000 images). Publish the full index with "
              "`python -m builder.build --push`, or set INDEX_REPO to a published one.")
    if (out / MANIFEST).is_file():
        log.warning("serving the starter index built before in %s", out)
        return IndexSource(folder=out, repo_id=None, revision=None, ref=None, notice=notice)
    if not (ROOT / "builder" / "build.py").is_file():
        raise ArtifactError(f"INDEX_REPO={DEFAULT_INDEX_REPO} has not been published yet, and this deployment has no "
                            "builder/ to make a starter index: set INDEX_REPO to a published index repo.")
    command = [sys.executable, "-m", "builder.build", *STARTER_ARGS, "--out", str(out)]
    log.warning("%s has not been published yet: building a starter index from COCO val2017 into %s (%s); this "
                "takes a few minutes the first time and is reused afterwards", DEFAULT_INDEX_REPO, out,
                " ".join(command[1:]))
    env = dict(os.environ, **({"HF_ENDPOINT": endpoint} if endpoint else {}))
    last = "no output"
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True) as build:
        for line in build.stderr:  # the build's log and progress, passed through; its last line says why it failed
            sys.stderr.write(line)
            last = line.strip() or last
    if build.returncode != 0:
        reason = last.removeprefix("error: ")
        raise ArtifactError(f"INDEX_REPO={DEFAULT_INDEX_REPO} has not been published yet and building a starter "
                            f"index failed ({reason}); re-run to resume it, or set INDEX_REPO or INDEX_DIR.")
    log.warning("starter index ready: %d images in %s", Manifest.read(out).count, out)
    return IndexSource(folder=out, repo_id=None, revision=None, ref=None, notice=notice)
