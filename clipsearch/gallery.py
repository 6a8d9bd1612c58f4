"""A loaded artifact set: FAISS index, stored vectors, row metadata and packed thumbnails, addressed by row."""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .manifest import EMBEDDINGS, INDEX, METADATA, ArtifactError, Manifest, verify_files

log = logging.getLogger(__name__)

# Per-row metadata the UI shows; thumbnail addressing columns are read into numpy arrays instead.
ROW_COLUMNS = ["image_id", "split", "file_name", "width", "height", "captions", "categories", "url"]


@dataclass
class Row:
    row: int
    image_id: int
    split: str
    file_name: str
    width: int
    height: int
    captions: list[str]
    categories: list[str]
    url: str


class ThumbnailStore:
    """Reads thumbnail i from the packed shard files and materialises it once as a small file for serving."""

    def __init__(self, folder: Path, files: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 cache_dir: Path):
        self._maps = []
        for name in files:
            with open(Path(folder) / name, "rb") as handle:
                self._maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(
                    Path(folder) / name) else b"")
        self._shard, self._offset, self._size = shard, offset, size
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def read(self, row: int) -> bytes:
        start = int(self._offset[row])
        return bytes(self._maps[int(self._shard[row])][start:start + int(self._size[row])])

    def path(self, row: int) -> Path:
        """A file holding thumbnail `row`; written on first use, atomically, so concurrent requests are safe."""
        path = self.cache_dir / f"{row}.jpg"
        if not path.exists():
            tmp = path.with_name(f"{row}.{os.getpid()}.{id(path)}.tmp")
            tmp.write_bytes(self.read(row))
            os.replace(tmp, path)
        return path


class QueryError(ValueError):
    """A query that cannot be answered (bad text, k, filter...); the message is a sentence for its sender."""


class Gallery:
    """Everything needed to answer a query except the encoder."""

    def __init__(self, folder: Path, manifest: Manifest, index: faiss.Index, vectors: np.ndarray, table,
                 thumbnails: ThumbnailStore):
        self.folder = Path(folder)
        self.manifest = manifest
        self.index = index
        self.vectors = vectors
        self._table = table
        self.thumbnails = thumbnails
        self._image_ids = table.column("image_id").to_numpy()
        self._row_of_id = {int(image_id): i for i, image_id in enumerate(self._image_ids)}
        self.map_xy: np.ndarray | None = None  # 2-D PCA coordinates per row, for the embedding map

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def open(cls, folder: Path, *, verify: bool = True, stamp_dir: Path | None = None,
             thumb_cache: Path | None = None) -> Gallery:
        folder = Path(folder)
        manifest = Manifest.read(folder)
        if verify:
            verify_files(folder, manifest, stamp_dir)
        try:
            index = faiss.read_index(str(folder / INDEX))
            if manifest.index.search_params:
                faiss.ParameterSpace().set_index_parameters(index, manifest.index.search_params)
            vectors = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False)
            table = pq.read_table(folder / METADATA)
        except (RuntimeError, OSError, ValueError) as error:
            raise ArtifactError(f"The artifacts in {folder} could not be read ({error}); rebuild them.") from None
        if not (index.ntotal == len(vectors) == table.num_rows == manifest.count):
            raise ArtifactError(
                f"{folder}: index ({index.ntotal}), vectors ({len(vectors)}) and metadata ({table.num_rows}) rows "
                f"disagree with the manifest ({manifest.count}); rebuild the artifacts."
            )
        thumbs = ThumbnailStore(
            folder, manifest.thumbnails.files,
            table.column("thumb_shard").to_numpy(), table.column("thumb_offset").to_numpy(),
            table.column("thumb_size").to_numpy(),
            thumb_cache or folder / ".thumbs",
        )
        # one chunk per column: take() on a multi-chunk table costs ms per query, on one chunk tens of microseconds
        gallery = cls(folder, manifest, index, vectors, table.select(ROW_COLUMNS).combine_chunks(), thumbs)
        if "map_x" in table.column_names:  # builds before the embedding map have no coordinates
            gallery.map_xy = np.stack([table.column("map_x").to_numpy(), table.column("map_y").to_numpy()], axis=1)
        return gallery

    @cached_property
    def _category_rows(self) -> dict[str, np.ndarray]:
        """Category name -> boolean row mask, built on first use (about 10 MB for COCO's 80 categories)."""
        masks: dict[str, np.ndarray] = {}
        column = self._table.column("categories")
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        owners = pc.list_parent_indices(column).to_numpy()
        for name in np.unique(flat):
            mask = np.zeros(len(self), dtype=bool)
            mask[owners[flat == name]] = True
            masks[str(name)] = mask
        return masks

    @cached_property
    def _split_column(self) -> np.ndarray:
        return np.asarray(self._table.column("split").to_pylist(), dtype=object)

    def categories(self) -> list[str]:
        return sorted(self._category_rows)

    def splits(self) -> list[str]:
        return sorted(set(self._split_column.tolist()))

    def mask(self, categories: list[str], match_all: bool = False, splits: list[str] | None = None) -> np.ndarray:
        """Rows with any (or all) of the categories and in one of the splits; unknown names are an error."""
        unknown = [c for c in categories if c not in self._category_rows]
        unknown += [s for s in splits or [] if s not in set(self._split_column.tolist())]
        if unknown:
            raise QueryError(f"Unknown category or split: {', '.join(map(str, unknown))}.")
        mask = np.ones(len(self), dtype=bool)
        if categories:
            masks = [self._category_rows[c] for c in categories]
            mask = np.logical_and.reduce(masks) if match_all else np.logical_or.reduce(masks)
        if splits:
            mask &= np.isin(self._split_column, list(splits))
        return mask

    def rows(self, indices: list[int]) -> list[Row]:
        records = self._table.take(np.asarray(indices, dtype=np.int64)).to_pylist()
        return [Row(row=int(i), **record) for i, record in zip(indices, records)]

    def row_of(self, image_id: int) -> int | None:
        return self._row_of_id.get(int(image_id))

    def search(self, vectors: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search on the calling thread alone. Queries come one at a time, which FAISS cannot split across
        threads anyway, while every request thread that lets it start an OpenMP team slows the model thread's own
        team (see clipsearch.batcher.ModelThread): 12.2 -> 10.5 ms per text query at COCO size, measured."""
        faiss.omp_set_num_threads(1)  # per calling thread
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.manifest.dim), k,
                                 params=params)

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.vectors[row], dtype=np.float32)
