"""A build from its plan: guard --out, list the gallery, load the model, embed every shard, pack, then finish."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from clipsearch.core.encoder import Encoder
from clipsearch.core.precision import BUILD_MIN_COSINE
from clipsearch.hub.encoders import load_encoder

from .append import run_append
from .distributed import Job
from .embed import embed_shards, shard_ranges
from .errors import BuildError
from .finish import Built, finish
from .guard import check_before_work, clear_artifacts
from .pack import pack
from .plan import BuildPlan
from .resume import joined_work, prepare_work, settings
from .sources import Source, estimate_line, keep_boxes

log = logging.getLogger("builder")


def run(plan: BuildPlan) -> Built | None:
    """One build, or an --append. Under torchrun / accelerate launch every process runs this (see
    builder.distributed): each embeds its own shards, and rank 0 alone finishes the build and returns it; the other
    ranks return None."""
    if plan.append:
        if plan.ranks.distributed:  # every rank would append the same images to the same folder at once
            raise BuildError("--append runs in one process: launch it with python -m builder.build, not torchrun.")
        return run_append(plan)
    started = time.perf_counter()
    with Job(plan.ranks) as job:
        source, encoder, work = job.start(lambda: _prepare(plan), lambda shared: _join(plan, shared))
        shard_count = len(shard_ranges(len(source.records), plan.shard_size))
        log.info("stage 3/6 embed: %d images, batch %d, %d workers, %s", len(source.records), plan.batch_size,
                 plan.workers, plan.device)
        speed = job.embed(shard_count, lambda shards: embed_shards(
            source, encoder, work, batch_size=plan.batch_size, shard_size=plan.shard_size, num_workers=plan.workers,
            shards=shards, progress=job.reports, context=object_context(plan, source)))
        if speed is None:
            return None  # rank 0 finishes the build
        log.info("stage 4/6 pack: thumbnails and metadata")
        packed = pack(source, work, plan.out, shard_count, encoder.info.dim, object_context(plan, source),
                      plan.object_min_side)
        manifest = finish(plan, plan.out, packed, encoder, sources=source.infos, speed=speed, started=started)
        return Built(manifest, speed)


def _prepare(plan: BuildPlan) -> tuple[tuple[Source, Encoder, Path], dict]:
    """Rank 0 (or the one process): check --out, load, and reset --out to the resume cache of these settings."""
    check_before_work(plan)
    source, encoder = _load(plan, report=True)
    shared = settings(plan, source, encoder)
    work = prepare_work(plan.out, shared, plan.fresh)
    clear_artifacts(plan.out)
    return (source, encoder, work), shared


def _join(plan: BuildPlan, shared: dict) -> tuple[Source, Encoder, Path]:
    """Any other rank, once rank 0 is ready: the same gallery and model, and rank 0's resume cache."""
    source, encoder = _load(plan, report=False)
    return source, encoder, joined_work(plan.out, settings(plan, source, encoder), shared)


def prepare_boxes(plan: BuildPlan, source: Source, report: bool = True) -> None:
    """The instance boxes the object index will hold: none with --objects none; else those whose shorter side
    reaches --object-min-side (counted on the source, for the manifest and the summary)."""
    keep_boxes(source, plan.object_min_side if plan.objects else None)
    if report and source.boxes_total:
        log.info("objects: %d of %d instance boxes have a shorter side of at least %g px and will be embedded with "
                 "context %g", source.boxes_kept, source.boxes_total, plan.object_min_side, plan.object_context)


def object_context(plan: BuildPlan, source: Source) -> float | None:
    """The context the boxes are cut with, or None when this build has no object index."""
    return plan.object_context if plan.objects and source.boxes_kept else None


def _load(plan: BuildPlan, *, report: bool) -> tuple[Source, Encoder]:
    """Stages 1-2: the gallery listing and the model."""
    log.info("stage 1/6 load: listing images")
    source = plan.make_source()
    log.info("%d images from %s", len(source.records), ", ".join(i.location for i in source.infos))
    prepare_boxes(plan, source, report)
    log.info("stage 2/6 model: %s", plan.model)
    # no batch, so no race on AMX: bf16 first, the more exact path for index vectors and the faster on batches
    encoder = load_encoder(plan.model, plan.model_revision, plan.device, precision=plan.precision,
                           min_cosine=BUILD_MIN_COSINE)
    if report:
        log.info("%s", estimate_line(source, encoder.info.dim))  # before any image byte is fetched
    return source, encoder
