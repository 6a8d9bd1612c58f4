"""Thumbnails + metadata stage: merge embedded shards into row-aligned vectors, metadata parquet and thumbnail packs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsearch.core.manifest import EMBEDDINGS, METADATA, THUMBS_PATTERN, Skipped

from .embed import read_shard
from .sources import Source

log = logging.getLogger(__name__)

PACK_BYTES = 512 * 2**20  # a thumbnail pack file grows to about this size; COCO's 123k thumbnails fit in ~4

SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("split", pa.string()), ("file_name", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("captions", pa.list_(pa.string())),
    ("categories", pa.list_(pa.string())), ("url", pa.string()),
    ("thumb_shard", pa.int16()), ("thumb_offset", pa.int64()), ("thumb_size", pa.int32()),
])  # builds before the atlas (builder/atlas.py) also have map_x, map_y: a PCA map nothing reads any more


@dataclass
class Packed:
    vectors: np.ndarray
    rows: list[int]  # source record index of each gallery row
    skipped: list[Skipped]
    thumb_files: list[str]

    @property
    def files(self) -> list[str]:
        """Every file pack() wrote, by name."""
        return [EMBEDDINGS, METADATA, *self.thumb_files]


def pack(source: Source, work: Path, out: Path, shard_count: int, dim: int) -> Packed:
    """Write embeddings.npy, metadata.parquet and thumbs-*.bin into `out`, row i of each describing the same image."""
    blocks, rows, skipped, columns = [], [], [], {name: [] for name in SCHEMA.names}
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
    finally:
        if writer:
            writer.close()
    if not rows:
        raise ValueError("no image could be decoded; see the skipped list for the reasons")
    vectors = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
    np.save(out / EMBEDDINGS, vectors, allow_pickle=False)
    write_metadata(pa.table(columns, schema=SCHEMA), out)
    log.info("packed %d rows, %d thumbnail files, %d skipped", len(rows), len(thumb_files), len(skipped))
    return Packed(vectors=vectors, rows=rows, skipped=skipped, thumb_files=thumb_files)


def write_metadata(table: pa.Table, out: Path) -> None:
    """Write metadata.parquet into `out`: the one place its writer settings live (pack and --append use it)."""
    # Fixed writer settings and no pandas metadata keep the file byte-identical across identical builds.
    pq.write_table(table, out / METADATA, compression="zstd", row_group_size=16384, store_schema=False)


def _where(record) -> str:
    return str(record.locator) if isinstance(record.locator, str) else f"{record.split}/{record.file_name}"
