"""Thumbnails + metadata stage: merge embedded shards into row-aligned vectors, metadata parquet and thumbnail packs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsearch.core.manifest import EMBEDDINGS, METADATA, OBJECTS_META, OBJECTS_VECTORS, THUMBS_PATTERN, Skipped

from .embed import read_shard, read_shard_objects
from .sources import Source

log = logging.getLogger(__name__)

PACK_BYTES = 512 * 2**20  # a thumbnail pack file grows to about this size; COCO's 123k thumbnails fit in ~4

SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("split", pa.string()), ("file_name", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("captions", pa.list_(pa.string())),
    ("categories", pa.list_(pa.string())), ("url", pa.string()),
    ("thumb_shard", pa.int16()), ("thumb_offset", pa.int64()), ("thumb_size", pa.int32()),
])  # builds before the atlas (builder/atlas.py) also have map_x, map_y: a PCA map nothing reads any more


OBJECT_SCHEMA = pa.schema([
    ("image_row", pa.int32()), ("image_id", pa.int64()), ("x0", pa.float32()), ("y0", pa.float32()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("category", pa.string()),
])


@dataclass
class PackedObjects:
    """The object rows of a build: one vector per kept box of a decoded image, and its image row, box, category."""

    vectors: np.ndarray
    table: pa.Table  # OBJECT_SCHEMA
    boxes_total: int
    boxes_kept: int
    min_side: float
    context: float


@dataclass
class Packed:
    vectors: np.ndarray
    rows: list[int]  # source record index of each gallery row
    skipped: list[Skipped]
    thumb_files: list[str]
    objects: PackedObjects | None = None

    @property
    def files(self) -> list[str]:
        """Every file pack() wrote, by name."""
        return [EMBEDDINGS, METADATA, *self.thumb_files, *([OBJECTS_VECTORS, OBJECTS_META] if self.objects else [])]


def pack(source: Source, work: Path, out: Path, shard_count: int, dim: int, context: float | None = None,
         min_side: float = 0.0) -> Packed:
    """Write embeddings.npy, metadata.parquet and thumbs-*.bin into `out`, row i of each describing the same image;
    with `context` (boxes were embedded), objects.npy and objects.parquet too, row j of each describing one box."""
    blocks, rows, skipped, columns = [], [], [], {name: [] for name in SCHEMA.names}
    object_blocks, object_columns = [], {name: [] for name in OBJECT_SCHEMA.names}
    thumb_files: list[str] = []
    writer, written = None, 0
    try:
        for shard in range(shard_count):
            vectors, info, thumbs_path = read_shard(work, shard)
            for index, reason in info["skipped"]:
                record = source.records[index]
                skipped.append(Skipped(path=_where(record), reason=reason))
            if not info["rows"]:
                continue
            blocks.append(vectors.reshape(-1, dim))
            data = thumbs_path.read_bytes()
            for index, width, height, offset, size in info["rows"]:
                if writer is None or written + size > PACK_BYTES and written:
                    if writer:
                        writer.close()
                    thumb_files.append(THUMBS_PATTERN.format(len(thumb_files)))
                    writer, written = open(out / thumb_files[-1], "wb"), 0
                writer.write(data[offset:offset + size])
                record = source.records[index]
                rows.append(index)
                for name, value in (
                    ("image_id", record.image_id), ("split", record.split), ("file_name", record.file_name),
                    ("width", record.width or width), ("height", record.height or height),
                    ("captions", record.captions), ("categories", record.categories), ("url", record.url),
                    ("thumb_shard", len(thumb_files) - 1), ("thumb_offset", written), ("thumb_size", size),
                ):
                    columns[name].append(value)
                written += size
            if context is not None and info.get("objects"):
                object_blocks.append(read_shard_objects(work, shard).reshape(-1, dim))
                _object_rows(source, info["objects"], len(rows) - len(info["rows"]), info["rows"], object_columns)
    finally:
        if writer:
            writer.close()
    if not rows:
        raise ValueError("no image could be decoded; see the skipped list for the reasons")
    vectors = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
    np.save(out / EMBEDDINGS, vectors, allow_pickle=False)
    write_metadata(pa.table(columns, schema=SCHEMA), out)
    log.info("packed %d rows, %d thumbnail files, %d skipped", len(rows), len(thumb_files), len(skipped))
    objects = None
    if context is not None and object_blocks:
        objects = PackedObjects(np.ascontiguousarray(np.concatenate(object_blocks), dtype=np.float32),
                                pa.table(object_columns, schema=OBJECT_SCHEMA), source.boxes_total, source.boxes_kept,
                                min_side, context)
        write_objects(objects, out)
        log.info("packed %d objects", len(objects.vectors))
    return Packed(vectors=vectors, rows=rows, skipped=skipped, thumb_files=thumb_files, objects=objects)


def _object_rows(source: Source, objects: list, first_row: int, shard_rows: list, columns: dict) -> None:
    """Append one shard's object rows to `columns`: each names its record and box; its image is gallery row
    first_row + (that record's place among the shard's rows)."""
    row_of = {index: first_row + n for n, (index, *_) in enumerate(shard_rows)}
    for index, box_number in objects:
        record = source.records[index]
        x0, y0, x1, y1, category = record.boxes[box_number]
        for name, value in (("image_row", row_of[index]), ("image_id", record.image_id), ("x0", x0), ("y0", y0),
                            ("x1", x1), ("y1", y1), ("category", category)):
            columns[name].append(value)


def write_objects(objects: PackedObjects, out: Path) -> None:
    """Write objects.npy and objects.parquet into `out` (pack and --append use it)."""
    np.save(out / OBJECTS_VECTORS, objects.vectors, allow_pickle=False)
    pq.write_table(objects.table, out / OBJECTS_META, compression="zstd", row_group_size=65536, store_schema=False)


def write_metadata(table: pa.Table, out: Path) -> None:
    """Write metadata.parquet into `out`: the one place its writer settings live (pack and --append use it)."""
    # Fixed writer settings and no pandas metadata keep the file byte-identical across identical builds.
    pq.write_table(table, out / METADATA, compression="zstd", row_group_size=16384, store_schema=False)


def _where(record) -> str:
    return str(record.locator) if isinstance(record.locator, str) else f"{record.split}/{record.file_name}"
