"""The resume cache --out/.work: embedded shards are reused only by a build with the same settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import FORMAT_VERSION

from .embed import THUMB_SIDE
from .errors import BuildError
from .guard import WORK
from .plan import BuildPlan
from .sources import Source


def settings(plan: BuildPlan, source: Source, encoder: Encoder) -> dict:
    """Everything that shapes the result (these keys let an existing .work resume)."""
    return {**source.fingerprint(), "model": encoder.info.model_id, "model_revision": encoder.info.revision,
            "batch_size": plan.batch_size, "shard_size": plan.shard_size, "thumb_side": THUMB_SIDE,
            "device": plan.device.type, "precision": encoder.precision, "format_version": FORMAT_VERSION,
            "objects": [source.boxes_kept, plan.object_context, plan.object_min_side] if source.boxes_kept else None}


def prepare_work(out: Path, settings: dict, fresh: bool) -> Path:
    """The resume cache: reused only when every setting that shapes the result is the same."""
    work = out / WORK
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    config = work / "settings.json"
    if config.exists():
        previous = json.loads(config.read_text())
        if previous != settings:
            raise BuildError(f"--out {out} holds a partial build with other settings ({_changed(previous, settings)}); "
                             "re-run with the same arguments to resume, or add --fresh to start over.")
    work.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(settings, indent=1, sort_keys=True))
    return work


def joined_work(out: Path, mine: dict, main: dict) -> Path:
    """The cache rank 0 prepared, seen from another process of a distributed build: the same build and folder."""
    if mine != main:
        raise BuildError(f"this process sees a different build than rank 0 ({_changed(mine, main)}): every process "
                         "must be given the same arguments, gallery and model.")
    work = out / WORK
    try:
        shared = json.loads((work / "settings.json").read_text()) == main
    except (OSError, ValueError):
        shared = False
    if not shared:
        raise BuildError(f"--out {out} is not the folder rank 0 prepared: on several nodes, --out must be on "
                         "storage that every node mounts at the same path.")
    return work


def _changed(one: dict, other: dict) -> str:
    return ", ".join(sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k)))
