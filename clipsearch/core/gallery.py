"""A loaded artifact set: FAISS index, stored vectors, row metadata and packed thumbnails, addressed by row."""

from __future__ import annotations

import io
import logging
import mmap
import os
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from .atlas import ATLAS
from .errors import ArtifactError, QueryError, ThumbnailUnavailable
from .manifest import EMBEDDINGS, INDEX, METADATA, IndexInfo, Manifest, verify_files

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


LOCAL, REMOTE, MISSING, REFUSED = "local", "remote", "missing", "refused"
FETCH_THREADS = 8  # range requests in flight for one answer's thumbnails while their packs are still downloading
PLACEHOLDER = "unavailable.jpg"


class ThumbnailStore:
    """Reads thumbnail i from the packed shard files and materialises it once as a small file for serving.

    A pack that is not local yet (a cold start serves before every pack is downloaded) is read with an HTTP range
    request for exactly the thumbnail's bytes through `fetch_range(name, offset, size)`, until `attach` maps the
    downloaded and verified pack. A pack that failed its sha256 check (`refuse`), or that is absent with no way to
    fetch it (offline), is never read: its rows are served a placeholder image.
    """

    def __init__(self, folder: Path, files: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 cache_dir: Path, absent: Collection[str] = (),
                 fetch_range: Callable[[str, int, int], bytes] | None = None):
        self.files = list(files)
        self._maps: list = []
        self._state: list[str] = []
        for name in self.files:
            if name in absent:
                self._maps.append(None)
                self._state.append(REMOTE if fetch_range else MISSING)
            else:
                self._maps.append(_map(Path(folder) / name))
                self._state.append(LOCAL)
        self._shard, self._offset, self._size = shard, offset, size
        self._fetch_range = fetch_range
        self._pool: ThreadPoolExecutor | None = None  # range fetches in parallel, made on the first remote answer
        self._pool_lock = threading.Lock()
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def state(self, number: int) -> str:
        """local | remote (fetched by range until its pack is local) | missing (offline) | refused (failed check)."""
        return self._state[number]

    def pack_of(self, row: int) -> int:
        return int(self._shard[row])

    def rows_in(self, number: int) -> int:
        return int(np.count_nonzero(self._shard == number))

    def attach(self, number: int, path: Path) -> None:
        """Pack `number` is now local and verified: read it from disk from now on."""
        if self._state[number] != REFUSED:
            self._maps[number] = _map(Path(path))
            self._state[number] = LOCAL

    def refuse(self, number: int) -> None:
        """Pack `number` failed its check: never serve its bytes, including thumbnails already materialised from
        range requests (they came from the same unverified pack)."""
        self._state[number] = REFUSED
        self._maps[number] = None
        for row in np.flatnonzero(self._shard == number):
            (self.cache_dir / f"{row}.jpg").unlink(missing_ok=True)

    def read(self, row: int) -> bytes:
        number = int(self._shard[row])
        start, size = int(self._offset[row]), int(self._size[row])
        state, data = self._state[number], self._maps[number]
        if state == LOCAL and data is not None:
            return bytes(data[start:start + size])
        if state == REMOTE:
            data = self._fetch_range(self.files[number], start, size)
            if len(data) != size:
                raise ThumbnailUnavailable(f"a range request for {size} bytes of {self.files[number]} returned "
                                           f"{len(data)}")
            if self._state[number] == REFUSED:  # refused while the request was in flight
                raise ThumbnailUnavailable(f"{self.files[number]} failed its sha256 check")
            return data
        raise ThumbnailUnavailable(f"{self.files[number]} is {'refused' if state == REFUSED else 'not available'}")

    def paths(self, rows: list[int]) -> list[Path]:
        """path() of each row (one answer's hits). Thumbnails still to be fetched by range are fetched together, so a
        cold start's first answer waits about one Hub round trip instead of one per hit."""
        remote = [row for row in rows if self._state[int(self._shard[row])] == REMOTE
                  and not (self.cache_dir / f"{row}.jpg").exists()]
        if len(remote) < 2:
            return [self.path(row) for row in rows]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="thumbnail-fetch")
        return list(self._pool.map(self.path, rows))

    def path(self, row: int) -> Path:
        """A file holding thumbnail `row`; written on first use, atomically, so concurrent requests are safe. A
        thumbnail that cannot be served now gets the placeholder's path (search answers are never held up)."""
        number = int(self._shard[row])
        path = self.cache_dir / f"{row}.jpg"
        if self._state[number] in (REFUSED, MISSING):
            return self._placeholder()
        if not path.exists():
            try:
                data = self.read(row)
            except Exception as error:  # noqa: BLE001 - a failed fetch costs one picture, never the answer
                log.warning("thumbnail of row %d not served (%s: %s); a placeholder is shown", row,
                            type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
                return self._placeholder()
            _write_atomically(path, data)
            if self._state[number] == REFUSED:  # refused meanwhile: its clean-up may have run before this write
                path.unlink(missing_ok=True)
                return self._placeholder()
        return path

    def boxed_path(self, row: int, box: list[float], size: tuple[int, int], key: int) -> Path:
        """A file holding thumbnail `row` with `box` (in the original's pixels, the original `size` wide x high)
        drawn on it; written once per object (`key`), atomically. The placeholder when the thumbnail cannot be
        served."""
        plain = self.path(row)
        path = self.cache_dir / f"{row}-object-{key}.jpg"
        if plain.name == PLACEHOLDER or path.exists():
            return plain if plain.name == PLACEHOLDER else path
        with Image.open(plain) as thumbnail:
            image = thumbnail.convert("RGB")
        scale_x, scale_y = image.width / max(size[0], 1), image.height / max(size[1], 1)
        x0, y0, x1, y1 = box[0] * scale_x, box[1] * scale_y, box[2] * scale_x - 1, box[3] * scale_y - 1
        width = max(3, round(min(image.size) / 64))
        draw = ImageDraw.Draw(image)
        # Drawn around the box, not over it (PIL draws a wide outline inward), so the thing keeps its outline; thin
        # dark rims on both sides keep the yellow visible on any photo.
        draw.rectangle([x0 - width - 1, y0 - width - 1, x1 + width + 1, y1 + width + 1], outline=(0, 0, 0), width=1)
        draw.rectangle([x0 - width, y0 - width, x1 + width, y1 + width], outline=(255, 214, 0), width=width)
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=1)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        _write_atomically(path, buffer.getvalue())
        return path

    def _placeholder(self) -> Path:
        path = self.cache_dir / PLACEHOLDER
        if not path.exists():
            buffer = io.BytesIO()
            Image.new("RGB", (256, 192), (200, 200, 200)).save(buffer, format="JPEG", quality=85)
            _write_atomically(path, buffer.getvalue())
        return path


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file of this process and thread, so that concurrent requests for
    the same thumbnail never read a half-written file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _map(path: Path):
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b""


def holds_vectors(info: IndexInfo) -> bool:
    """Whether an index of this kind stores the vectors themselves (float32, or float16 for SQfp16), so that
    embeddings.npy adds nothing the app needs (see index_vectors)."""
    return info.faiss_type in ("IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexHNSWFlat") or (
        info.faiss_type == "IndexHNSWSQ" and info.factory.upper().endswith("SQFP16"))


def index_vectors(index: faiss.Index) -> np.ndarray | None:
    """The vectors the index stores, as a read-only view of its own memory (no copy): float32 for a flat index or
    HNSW over flat storage, float16 for HNSW over SQfp16; None for codes that are not plain vectors (PQ, SQ8, IVF).
    The view is valid while `index` lives (the Gallery holds both)."""
    inner = faiss.downcast_index(index)
    storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    if isinstance(storage, faiss.IndexFlat):
        dtype = np.float32
    elif isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        dtype = np.float16
    else:
        return None
    if storage.ntotal == 0:
        return np.zeros((0, storage.d), dtype=dtype)
    codes = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size())
    view = codes.view(dtype).reshape(storage.ntotal, storage.d)
    view.flags.writeable = False
    return view


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
        # image id -> row by binary search over the sorted ids (1 MB at COCO size; a dict of Python ints was 17 MB)
        self._id_order = np.argsort(self._image_ids, kind="stable")
        self._sorted_ids = self._image_ids[self._id_order]
        self.atlas_xy: np.ndarray | None = None  # the build's neighbour-keeping 2-D layout (atlas.npy), if it has one

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def open(cls, folder: Path, *, verify: bool = True, stamp_dir: Path | None = None,
             thumb_cache: Path | None = None, absent: Collection[str] = (),
             fetch_range: Callable[[str, int, int], bytes] | None = None) -> Gallery:
        """Verify and load the artifacts in `folder`. `absent`: listed files not local (yet): thumbnail packs,
        served by `fetch_range` until attached, and embeddings.npy when the index stores the vectors itself."""
        folder = Path(folder)
        manifest = Manifest.read(folder)
        absent = set(absent)
        needed = {INDEX, METADATA} | (set() if holds_vectors(manifest.index) else {EMBEDDINGS})
        if absent & needed:
            raise ArtifactError(f"{', '.join(sorted(absent & needed))} listed in the manifest but missing from "
                                f"{folder}; re-download or rebuild.")
        if verify:
            verify_files(folder, manifest, stamp_dir, names=[n for n in manifest.files if n not in absent])
        try:
            index = faiss.read_index(str(folder / INDEX))
            if manifest.index.search_params:
                faiss.ParameterSpace().set_index_parameters(index, manifest.index.search_params)
            # The index's own vectors when embeddings.npy was not downloaded: stored once, in memory already.
            vectors = np.load(folder / EMBEDDINGS, mmap_mode="r", allow_pickle=False) if EMBEDDINGS not in absent \
                else index_vectors(index)
            table = pq.read_table(folder / METADATA)
        except (RuntimeError, OSError, ValueError) as error:
            raise ArtifactError(f"The artifacts in {folder} could not be read ({error}); rebuild them.") from None
        if vectors is None:
            raise ArtifactError(f"{folder}: {EMBEDDINGS} is missing and the index ({type(index).__name__}) does not "
                                "store the vectors; re-download or rebuild.")
        if not (index.ntotal == len(vectors) == table.num_rows == manifest.count):
            raise ArtifactError(
                f"{folder}: index ({index.ntotal}), vectors ({len(vectors)}) and metadata ({table.num_rows}) rows "
                f"disagree with the manifest ({manifest.count}); rebuild the artifacts."
            )
        thumbs = ThumbnailStore(
            folder, manifest.thumbnails.files,
            table.column("thumb_shard").to_numpy(), table.column("thumb_offset").to_numpy(),
            table.column("thumb_size").to_numpy(),
            thumb_cache or folder / ".thumbs", absent=absent, fetch_range=fetch_range,
        )
        # one chunk per column: take() on a multi-chunk table costs ms per query, on one chunk tens of microseconds
        gallery = cls(folder, manifest, index, vectors, table.select(ROW_COLUMNS).combine_chunks(), thumbs)
        if ATLAS in manifest.files:  # builds before the atlas have none; the Map tab says so
            gallery.atlas_xy = _read_atlas(folder, manifest.count)
        # Arrow's allocator keeps the parquet decode buffers and the multi-chunk table just dropped (~100 MB at COCO
        # size) for reuse that never comes; hand them back to the OS.
        del table
        pa.default_memory_pool().release_unused()
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
        image_id = int(image_id)  # as the dict lookup did: a non-number is the caller's ValueError / TypeError
        if not -2**63 <= image_id < 2**63:
            return None
        where = int(np.searchsorted(self._sorted_ids, np.int64(image_id)))
        if where < len(self._sorted_ids) and int(self._sorted_ids[where]) == image_id:
            return int(self._id_order[where])
        return None

    def nearest(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k rows nearest to one query vector (cosine, best first; fewer when fewer exist), among the rows where
        the boolean mask `allowed` is true if given: (scores, rows), both 1-D."""
        faiss.omp_set_num_threads(1)  # per calling thread: one query cannot use a team, and teams slow the model's
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.manifest.dim)
        if allowed is None:
            scores, rows = self.index.search(query, k)
        elif isinstance(faiss.downcast_index(self.index), faiss.IndexFlat):
            # A bitmap selector inside the flat scan: the k best *matching* rows, never a post-filtered shortfall.
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            scores, rows = self.index.search(query, k, params=faiss.SearchParameters(sel=selector))
        else:
            # Approximate indexes can miss matches under a selective filter; score the matching rows exactly instead.
            candidates = np.flatnonzero(allowed)
            exact = np.asarray(self.vectors[candidates], np.float32) @ query[0]
            order = np.argsort(-exact, kind="stable")[:k]
            return exact[order], candidates[order]
        found = rows[0] >= 0
        return scores[0][found], rows[0][found]

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.vectors[row], dtype=np.float32)


def _read_atlas(folder: Path, count: int) -> np.ndarray:
    """atlas.npy: one finite (x, y) in [0, 1] per row, or an ArtifactError saying to rebuild."""
    try:
        xy = np.load(folder / ATLAS, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{folder / ATLAS} could not be read ({error}); rebuild the artifacts.") from None
    if xy.shape != (count, 2) or not np.isfinite(xy).all():
        raise ArtifactError(f"{folder / ATLAS} holds {xy.shape} positions for {count} images; rebuild the artifacts.")
    return np.asarray(xy, dtype=np.float32)
