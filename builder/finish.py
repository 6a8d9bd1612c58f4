"""The end of a build and of an --append: index the packed vectors, evaluate, calibrate, write the manifest last."""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import faiss
import pyarrow.parquet as pq

from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import (
    FORMAT_VERSION,
    INDEX,
    METADATA,
    OBJECTS_INDEX,
    Manifest,
    SourceInfo,
    ThumbnailInfo,
    hash_files,
    write_manifest,
)

from .atlas import write_atlas
from .calibrate import calibrate, calibrate_pictures, caption_sample
from .embed import THUMB_SIDE
from .evaluate import evaluate
from .index import build_index
from .objects import index_objects
from .pack import Packed
from .plan import BuildPlan
from .serving import write_serving_copy
from .sources import keeps_coco_ids

log = logging.getLogger("builder")
NOTHING_EMBEDDED = {"images": 0, "seconds": 0.0, "images_per_second": 0.0}


@dataclass
class Built:
    """A finished artifact folder: its manifest, and this run's embedding throughput."""

    manifest: Manifest
    speed: dict  # images, seconds, images_per_second (and processes, for a distributed build)


def finish(plan: BuildPlan, folder: Path, packed: Packed, encoder: Encoder, *, sources: list[SourceInfo],
           speed: dict, started: float, base: Manifest | None = None) -> Manifest:
    """Index, evaluate and describe the packed set in `folder` (vectors, metadata and thumbnails written by pack);
    the manifest is written last. A build's index follows --index; an --append keeps its `base` build's index type,
    model record and thumbnail size, and adds to its sources and skipped list (`sources`, `packed` hold the sum)."""
    factory, params = (base.index.factory, base.index.search_params) if base else (plan.index_factory,
                                                                                   plan.index_params)
    log.info("stage 5/6 index: %s over %d vectors", factory, len(packed.vectors))
    index, index_info = build_index(packed.vectors, factory, params)
    faiss.write_index(index, str(folder / INDEX))
    log.info("stage 6/6 evaluate: %s", plan.eval_mode)
    rows = pq.read_table(folder / METADATA, columns=["captions", "split", "categories", "image_id"]).to_pydict()
    coco_ids = rows["image_id"] if keeps_coco_ids(sources) else None
    evaluation = evaluate(encoder, packed.vectors, rows["captions"], rows["split"], plan.eval_mode,
                          categories=rows["categories"], image_ids=coco_ids)
    log.info("calibrating confidence on the gallery's captions")
    sample = caption_sample(encoder, rows["captions"], rows["split"])
    calibration, picture_calibration = calibrate(sample, packed.vectors), calibrate_pictures(sample, packed.vectors)
    objects = None
    if packed.objects is not None:  # an --append keeps its base's object index type, as it does for images
        kind = (base.objects.index.factory, base.objects.index.search_params) if base and base.objects else (
            plan.index_factory, plan.index_params)
        objects = index_objects(packed.objects, folder, *kind, encoder, index, rows["categories"])
    atlas = write_atlas(folder, packed.vectors, base, plan.out if base else None)
    # an --append keeps its base's model, so its copy (linked into the stage by builder.append)
    serving = base.serving if base else write_serving_copy(encoder.info, folder) if plan.serving_copy else None
    # exactly what was written, never a listing of the folder
    names = sorted([INDEX, atlas, *packed.files, *([OBJECTS_INDEX] if objects else []),
                    *(serving.files if serving else [])])
    fields = dict(
        count=len(packed.vectors), index=index_info, sources=sources, skipped=packed.skipped, evaluation=evaluation,
        thumbnails=ThumbnailInfo(files=packed.thumb_files, max_side=base.thumbnails.max_side if base else THUMB_SIDE),
        builder_version=builder_version(), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 1), images_per_second=round(speed["images_per_second"], 1),
        device=plan.device.type, precision=encoder.precision, files=hash_files(folder, names), calibration=calibration,
        picture_calibration=picture_calibration, objects=objects, serving=serving,
    )
    manifest = replace(base, **fields) if base else Manifest(
        format_version=FORMAT_VERSION, model=encoder.info.to_dict(), dim=encoder.info.dim, **fields)
    write_manifest(folder, manifest)
    return manifest


def builder_version() -> str:
    """The builder's git commit (with -dirty for local changes), or 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
