"""Incremental add: embed only new images and append them to an existing artifact set (ids of old rows stay)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from clipsearch.core.encoder import DEFAULT_MODEL, Encoder
from clipsearch.core.manifest import (
    EMBEDDINGS,
    MANIFEST,
    METADATA,
    OBJECTS_META,
    OBJECTS_VECTORS,
    THUMBS_PATTERN,
    ArtifactError,
    Manifest,
    verify_files,
)
from clipsearch.hub.encoders import load_encoder

from .embed import embed_shards, shard_ranges
from .errors import BuildError
from .finish import NOTHING_EMBEDDED, Built, finish
from .guard import APPEND_WORK, check_before_work
from .hubfiles import parse_repo
from .pack import OBJECT_SCHEMA, SCHEMA, Packed, PackedObjects, pack, write_metadata, write_objects
from .plan import BuildPlan
from .sources import ImageFolderSource, Source, keep_boxes

log = logging.getLogger("builder")


def fetch_base(repo: str, out: Path) -> None:
    """Start from a published build: download exactly the files its manifest lists (pinned to one commit) into --out,
    the manifest last, so an interrupted download never looks like a finished build."""

    repo_id, revision = parse_repo(repo)
    commit = HfApi().dataset_info(repo_id, revision=revision).sha
    listed = Path(hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=commit))
    names = sorted(Manifest.read(listed.parent).files)
    snapshot_download(repo_id, repo_type="dataset", revision=commit, local_dir=out, allow_patterns=names)
    shutil.copyfile(listed, out / MANIFEST)


def new_records(source: Source, table: pa.Table) -> int:
    """Drop images already in the index and give folder images fresh ids after the highest existing one."""
    seen = set(zip(table.column("split").to_pylist(), table.column("file_name").to_pylist()))
    source.records = [r for r in source.records if (r.split, r.file_name) not in seen]
    if isinstance(source, ImageFolderSource):
        first = int(pc.max(table.column("image_id")).as_py() or 0) + 1
        for number, record in enumerate(source.records):
            record.image_id = first + number
    taken = set(table.column("image_id").to_pylist())
    clashes = [r.image_id for r in source.records if r.image_id in taken]
    if clashes:
        raise ArtifactError(f"--append: image ids {clashes[:5]} are already in the index under other file names; "
                            "ids must stay unique.")
    return len(source.records)


def run_append(plan: BuildPlan) -> Built:
    """--append: embed only the new images of the source and add them to the build in --out (one process)."""
    check_before_work(plan)
    if plan.base:
        log.info("downloading the base build %s into %s", plan.base, plan.out)
        fetch_base(plan.base, plan.out)
    if not (plan.out / MANIFEST).exists() and not (plan.out / APPEND_WORK).exists():
        raise BuildError(f"--append: {plan.out} holds no finished build; build it first, pass --base REPO to start "
                         "from a published one, or drop --append.")
    return append(plan, plan.make_source())


def append(plan: BuildPlan, source: Source) -> Built:
    """Embed `source`'s new images with the index's own model and write the combined artifact set into plan.out.

    Everything is assembled in a staging folder first (old thumbnail packs hard-linked, so nothing big is copied)
    and moved into `out` with the manifest last; a run killed at any point is finished by running it again.
    """
    started, out = time.perf_counter(), plan.out
    if not (out / MANIFEST).exists() and (staged := _finished_stage(out)):
        log.info("completing an append that was interrupted while its files were being moved into place")
        return Built(_commit(staged, out), NOTHING_EMBEDDED)
    base = Manifest.read(out)
    verify_files(out, base)
    if plan.model not in (DEFAULT_MODEL, base.model["model_id"]):
        raise ArtifactError(f"--append: the index was built with {base.model['model_id']}; appending must use the "
                            "same model (leave out --model).")
    table = pq.read_table(out / METADATA)
    if new_records(source, table) == 0:
        log.info("nothing to add: every image is already in the index")
        return Built(base, NOTHING_EMBEDDED)
    context = _base_boxes(base, source)
    encoder = _base_encoder(plan, base)
    key = hashlib.sha256((out / MANIFEST).read_bytes()).hexdigest()[:12]
    work = out / APPEND_WORK / key  # per base build, so a resumed append never mixes bases
    work.mkdir(parents=True, exist_ok=True)
    log.info("appending %d new images to %d (model %s)", len(source.records), base.count, base.model["model_id"])
    speed = embed_shards(source, encoder, work, batch_size=plan.batch_size, shard_size=plan.shard_size,
                         num_workers=plan.workers, context=context)
    stage = work / "next"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    packed = _combine(plan, source, encoder, work, stage, base, table, context)
    finish(plan, stage, packed, encoder, sources=base.sources + source.infos, speed=speed, started=started, base=base)
    return Built(_commit(stage, out), speed)


def _base_boxes(base: Manifest, source: Source) -> float | None:
    """The new images' boxes, kept and cut exactly as the base build's were (its cut-off and context); none when the
    base has no object index. Returns the context to cut with, or None."""
    keep_boxes(source, base.objects.min_side if base.objects else None)
    if base.objects is None:
        return None
    log.info("objects: %d of %d new instance boxes kept (shorter side >= %g px, context %g, as the base build)",
             source.boxes_kept, source.boxes_total, base.objects.min_side, base.objects.context)
    return base.objects.context if source.boxes_kept else None


def _base_encoder(plan: BuildPlan, base: Manifest) -> Encoder:
    """The base build's model, in its own precision on CPU, so old and new rows come from the same arithmetic."""
    cpu = plan.device.type == "cpu"
    return load_encoder(base.model["model_id"], base.model.get("revision"), plan.device,
                        precision=base.precision if cpu and base.precision in ("bf16", "int8") else "fp32")


def _combine(plan: BuildPlan, source: Source, encoder: Encoder, work: Path, stage: Path, base: Manifest,
             table: pa.Table, context: float | None) -> Packed:
    """Pack the new images into `stage` after the base build's rows: vectors, metadata and thumbnail packs of both
    (finish writes the atlas: builder.atlas). Old thumbnail packs stay byte-identical (the Hub stores them once); new
    ones continue the numbering."""
    packed = pack(source, work, stage, len(shard_ranges(len(source.records), plan.shard_size)), encoder.info.dim,
                  context, base.objects.min_side if base.objects else 0.0)
    first_pack = len(base.thumbnails.files)
    new_files = [THUMBS_PATTERN.format(first_pack + n) for n in range(len(packed.thumb_files))]
    for name, target in reversed(list(zip(packed.thumb_files, new_files))):  # reversed: never overwrite a source
        os.replace(stage / name, stage / target)
    for name in base.thumbnails.files + (base.serving.files if base.serving else []):  # the same bytes: linked
        _link_or_copy(plan.out / name, stage / name)
    added = pq.read_table(stage / METADATA)
    added = added.set_column(added.schema.get_field_index("thumb_shard"), "thumb_shard",
                             pc.add(added.column("thumb_shard"), first_pack).cast(pa.int16()))
    vectors = np.concatenate([np.load(plan.out / EMBEDDINGS, allow_pickle=False), packed.vectors]).astype(np.float32)
    combined = pa.concat_tables([table.select(SCHEMA.names), added.select(SCHEMA.names)])
    np.save(stage / EMBEDDINGS, vectors, allow_pickle=False)
    write_metadata(combined, stage)
    return Packed(vectors=vectors, rows=[], skipped=base.skipped + packed.skipped,
                  thumb_files=base.thumbnails.files + new_files,
                  objects=_combine_objects(plan.out, stage, base, packed.objects, source) if base.objects else None)


def _combine_objects(out: Path, stage: Path, base: Manifest, added: PackedObjects | None,
                     source: Source) -> PackedObjects:
    """The base build's object rows, then the new images' (their image rows moved after the base's images), written
    into `stage`."""
    vectors = [np.load(out / OBJECTS_VECTORS, allow_pickle=False)]
    tables = [pq.read_table(out / OBJECTS_META).select(OBJECT_SCHEMA.names).cast(OBJECT_SCHEMA)]
    if added is not None:
        moved = added.table.set_column(0, "image_row", pc.add(added.table.column("image_row"), base.count)
                                       .cast(pa.int32()))
        vectors.append(added.vectors)
        tables.append(moved)
    info = base.objects
    objects = PackedObjects(np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32),
                            pa.concat_tables(tables), info.boxes_total + source.boxes_total,
                            info.boxes_kept + source.boxes_kept, info.min_side, info.context)
    write_objects(objects, stage)
    return objects


def _finished_stage(out: Path) -> Path | None:
    stages = sorted((out / APPEND_WORK).glob("*/next/" + MANIFEST)) if (out / APPEND_WORK).is_dir() else []
    return stages[0].parent if stages else None


def _commit(stage: Path, out: Path) -> Manifest:
    """Move the staged set into `out`: the old manifest goes first, the new one last."""
    manifest = Manifest.read(stage)
    (out / MANIFEST).unlink(missing_ok=True)
    for name in manifest.files:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    os.replace(stage / MANIFEST, out / MANIFEST)
    shutil.rmtree(stage.parent, ignore_errors=True)
    return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem: a copy costs time, never correctness
        shutil.copy2(source, target)
