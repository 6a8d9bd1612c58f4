"""COCO from script-free Hub parquet repos: list the rows, plan what to download, fetch it, read image bytes."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from clipsearch.core.manifest import SourceInfo

from .errors import SourceError
from .hubfiles import Repo, download_files
from .hubrows import caption_lookup, find_layout, make_record
from .sources import Record, Source

log = logging.getLogger(__name__)

DEFAULT_HF_IMAGES = "BrandonLSX/coco-2017"  # parquet: image, image_id, file_name, width, height, annotations
DEFAULT_HF_CAPTIONS = "phiyodr/coco2017"  # parquet: image_id, captions, coco_url, flickr_url (no images)
LIST_THREADS = 8  # footers, metadata columns and row groups of several shards are read at once (range requests)
WHOLE_FRACTION = 0.5  # a shard whose needed row groups reach this share of its groups (or bytes) comes whole
GROUP_MEMORY = 512 * 2**20  # row groups fetched by range are held in memory; beyond this, whole shards instead
READ_CACHE = 256 * 2**20  # per process: row groups read on demand (from a local shard) kept for the next rows


@dataclass
class _Shard:
    """One parquet file of the images repo, with its footer (pyarrow FileMetaData, read once by range)."""

    split: str
    path: str
    metadata: object

    def group_rows(self) -> list[int]:
        return [self.metadata.row_group(g).num_rows for g in range(self.metadata.num_row_groups)]


class HubCocoSource(Source):
    """COCO from one Hub dataset repo with images (+ ids, sizes, categories), joined by image id with a second
    repo that has captions and urls. Either may be a local folder laid out like a Hub repo.

    The parquet shards are read in place at the pinned commit with pyarrow: listing reads their footers and the
    small metadata columns (HTTP Range requests through HfFileSystem); image bytes are read a row group at a time,
    from the shard in the Hub cache (downloaded whole by `fetch` when most of it is needed) or from row groups
    fetched by range into memory (a --limit trial). Nothing is converted to a second (Arrow) copy.

    Order: splits in --splits order, then the repo's own row order (shard by shard), fixed at the pinned commit. Image
    bytes are then read front to back, each row group decoded once, whatever order the repo keeps its ids in (in id
    order, an unsorted repo would decode a whole row group per image); a --limit N trial is the first N rows, the
    prefix of the full build.
    """

    def __init__(self, images_repo: str, captions_repo: str | None, splits: list[str]):
        self.splits = list(splits)
        self._images = Repo.open(images_repo, "--hf-images")
        self._split_files = {split: self._images.split_files(split) for split in self.splits}
        self.infos = [SourceInfo(kind="hub", location=self._images.repo_id, revision=self._images.revision,
                                 splits=list(splits), role="images, ids, sizes, categories")]
        self._captions = None
        if captions_repo:
            self._captions = Repo.open(captions_repo, "--hf-captions")
            self._caption_files = {split: self._captions.split_files(split) for split in self.splits}
            self.infos.append(SourceInfo(kind="hub", location=self._captions.repo_id,
                                         revision=self._captions.revision, splits=list(splits),
                                         role="captions, urls"))
        self._limit: int | None = None
        self._records: list[Record] | None = None
        self._shards: list[_Shard] = []
        self._numbers: dict[str, int] = {}  # shard path -> index in _shards
        self._where: list[tuple[int, int, int]] = []  # Record.locator -> (shard, row group, row in the group)
        self._layouts: dict[int, dict] = {}
        self._plans: dict = {}
        self._fetched: dict[tuple[int, int], pa.Array] = {}  # (shard, group) -> image bytes fetched by range
        self._local: dict[int, str] = {}  # shard -> local file, once downloaded
        self._per_process()

    def _per_process(self) -> None:
        """Open files and row groups read on demand belong to one process (DataLoader workers fork)."""
        self._pid = os.getpid()
        self._files: dict[int, object] = {}  # shard -> pq.ParquetFile
        self._cache: OrderedDict[tuple[int, int], pa.Array] = OrderedDict()  # LRU of row groups read on demand

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_cache"] = {}, OrderedDict()
        return state

    # -- records ----------------------------------------------------------------------------------------------------
    @property
    def records(self) -> list[Record]:
        if self._records is None:
            self._records = self._list()
        return self._records

    @records.setter
    def records(self, value: list[Record]) -> None:
        self._records = value

    def limit(self, count: int) -> None:
        if self._records is not None:
            self._records = self._records[:count]
        else:
            self._limit = count

    def _list(self) -> list[Record]:
        records: list[Record] = []
        remaining = self._limit
        for split in self.splits:
            if remaining is not None and remaining <= 0:
                break
            picked = self._pick(split, remaining)
            captions = caption_lookup(self._captions, self._caption_files[split]) if self._captions else {}
            found = self._read_records(split, picked, captions)
            found.sort(key=lambda r: self._where[r.locator])  # file order: see the class docstring
            records.extend(found)
            if remaining is not None:
                remaining -= len(found)
        if not records:
            raise SourceError(f"--hf-images {self._images.repo_id}: no images in --splits {','.join(self.splits)}.")
        return records

    def _pick(self, split: str, remaining: int | None) -> list[tuple[int, int]]:
        """(shard, rows) to list: every row, or the first `remaining` rows in file order (reading only the footers
        of the shards that hold them)."""
        paths = self._split_files[split]
        if remaining is None:  # every footer is needed: read them side by side
            todo = [path for path in paths if path not in self._numbers]
            with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
                for path, metadata in zip(todo, pool.map(self._footer, todo)):
                    self._add(split, path, metadata)
        picked = []
        for path in paths:
            if path not in self._numbers:
                self._add(split, path, self._footer(path))
            shard = self._numbers[path]
            rows = self._shards[shard].metadata.num_rows
            take = rows if remaining is None else min(rows, remaining)
            if take > 0:
                picked.append((shard, take))
            if remaining is not None:
                remaining -= take
                if remaining <= 0:
                    break
        return picked

    def _add(self, split: str, path: str, metadata) -> None:
        self._numbers[path] = len(self._shards)
        self._shards.append(_Shard(split=split, path=path, metadata=metadata))

    def _footer(self, path: str):

        try:
            with self._images.open_file(path) as handle:
                return pq.ParquetFile(handle).metadata
        except (OSError, ValueError, pa.ArrowException) as error:
            raise SourceError(f"--hf-images {self._images.repo_id}: {path} is not a readable parquet file "
                              f"({str(error).splitlines()[0]}).") from None

    def _layout(self, shard: int) -> dict:
        """Which columns to read from a shard: ids, names, sizes, captions, urls, categories, and the image."""
        if shard not in self._layouts:
            self._layouts[shard] = find_layout(self._shards[shard].metadata, self._images.repo_id)
        return self._layouts[shard]

    def _read_records(self, split: str, picked: list[tuple[int, int]], captions: dict[int, dict]) -> list[Record]:
        def read(item):
            shard, take = item
            groups, where = [], []
            for group, rows in enumerate(self._shards[shard].group_rows()):
                if len(where) >= take:
                    break
                groups.append(group)
                where += [(shard, group, row) for row in range(rows)]
            table = self._read(shard, lambda f: f.read_row_groups(groups, columns=self._layout(shard)["columns"]),
                               f"row groups 0-{groups[-1]}")
            return table.slice(0, take).to_pylist(), where[:take]

        records = []
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool, _Progress(len(picked), "listing", "shards") as bar:
            for (shard, _), (values, where) in zip(picked, pool.map(read, picked)):
                layout = self._layout(shard)
                for value, place in zip(values, where):
                    records.append(make_record(value, layout, split, len(self._where), captions))
                    self._where.append(place)
                bar.update(1)
        return records

    def _read(self, shard: int, how, what: str, handle=None):
        """how(pq.ParquetFile) on a shard (a file object opened for this call, or `handle`), errors as sentences."""

        path = self._shards[shard].path
        try:
            if handle is not None:
                return how(handle)
            with self._images.open_file(path) as file:
                return how(pq.ParquetFile(file, metadata=self._shards[shard].metadata))
        except (OSError, ValueError, pa.ArrowException) as error:
            raise SourceError(f"--hf-images {self._images.repo_id}: {path} {what} could not be read "
                              f"({str(error).splitlines()[0]}); re-run to resume.") from None

    # -- bytes: plan, fetch, read -----------------------------------------------------------------------------------
    def _group_bytes(self, shard: int, group: int) -> int:
        """Bytes of a row group's image column chunk, from the footer."""
        return self._shards[shard].metadata.row_group(group).column(self._layout(shard)["chunk"]).total_compressed_size

    def _plan(self, indices: list[int] | None = None) -> dict:
        """How each needed shard is read: 'local' (on disk already), 'whole' (download it) or 'groups' (fetch the
        needed row groups' image columns by range), with the bytes each way costs."""
        records = self.records
        if indices is not None and len(indices) == len(records) and set(indices) == set(range(len(records))):
            indices = None  # every record: the plan the estimate made
        key = None if indices is None else tuple(indices)
        if key in self._plans:
            return self._plans[key]
        need: dict[int, set[int]] = defaultdict(set)
        for index in (range(len(records)) if indices is None else indices):
            shard, group, _ = self._where[records[index].locator]
            need[shard].add(group)
        plan = {}
        for shard, groups in sorted(need.items()):
            path = self._shards[shard].path
            size = self._images.files[path]
            fetched = sum(self._group_bytes(shard, g) for g in groups)
            if shard in self._local or self._images.cached(path) is not None:
                plan[shard] = ("local", 0, size, [])
            elif len(groups) >= WHOLE_FRACTION * len(self._shards[shard].group_rows()) or \
                    fetched >= WHOLE_FRACTION * size:
                plan[shard] = ("whole", size, 0, [])
            else:
                plan[shard] = ("groups", fetched, 0, sorted(groups))
        ranged = sorted((s for s, p in plan.items() if p[0] == "groups"), key=lambda s: -plan[s][1])
        while ranged and sum(plan[s][1] for s in ranged) > GROUP_MEMORY:
            shard = ranged.pop(0)
            plan[shard] = ("whole", self._images.files[self._shards[shard].path], 0, [])
        self._plans[key] = plan
        return plan

    def download_estimate(self) -> tuple[int, int, str]:
        plan = self._plan()
        whole = [s for s, p in plan.items() if p[0] == "whole"]
        ranged = [s for s, p in plan.items() if p[0] == "groups"]
        how = []
        if whole:
            how.append(f"{len(whole)} of {sum(map(len, self._split_files.values()))} parquet shards whole")
        if ranged:
            how.append(f"the rows' row groups of {len(ranged)} shard(s) by range")
        return sum(p[1] for p in plan.values()), sum(p[2] for p in plan.values()), ", ".join(how)

    def fetch(self, indices: list[int] | None = None, progress: bool = True) -> None:
        """Bring the bytes of these records' images close: whole shards into the Hub cache, or their row groups'
        image columns into memory (a trial); one progress bar in bytes, with its ETA."""

        plan = self._plan(indices)
        whole = [(self._images, self._shards[s].path) for s, p in plan.items() if p[0] == "whole"]
        found = download_files(whole, progress=progress, desc="downloading images") if whole else {}
        for shard, p in plan.items():
            if p[0] in ("whole", "local"):
                path = self._shards[shard].path
                self._local[shard] = found.get(path) or self._images.cached(path)
                self._files.pop(shard, None)
        items = [(s, g) for s, p in plan.items() if p[0] == "groups" for g in p[3] if (s, g) not in self._fetched]
        if not items:
            return
        with tqdm(total=sum(self._group_bytes(s, g) for s, g in items), unit="B", unit_scale=True,
                  unit_divisor=1024, desc="fetching image row groups", dynamic_ncols=True, mininterval=1,
                  disable=not progress) as bar, ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            for (shard, group), column in zip(items, pool.map(lambda item: self._image_column(*item), items)):
                self._fetched[(shard, group)] = column
                bar.update(self._group_bytes(shard, group))

    def _image_column(self, shard: int, group: int, handle=None) -> pa.Array:
        """A row group's image bytes, read with pyarrow (only that column chunk)."""
        table = self._read(shard, lambda f: f.read_row_group(group, columns=[self._layout(shard)["image"]]),
                           f"row group {group}", handle)
        return table.column(0).combine_chunks().field("bytes")

    def read(self, record: Record):
        shard, group, row = self._where[record.locator]
        column = self._fetched.get((shard, group))
        if column is None:
            column = self._on_demand(shard, group)
        return column[row].as_py() or b""

    def _on_demand(self, shard: int, group: int) -> pa.Array:
        """A row group read in this process (from the local shard, else by range), kept in a small LRU cache."""

        if self._pid != os.getpid():
            self._per_process()
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        handle = None
        local = self._local.get(shard) or self._images.cached(self._shards[shard].path)
        if local is not None:
            if shard not in self._files:
                self._files[shard] = pq.ParquetFile(local, metadata=self._shards[shard].metadata, memory_map=True)
            handle = self._files[shard]
        column = self._cache[key] = self._image_column(shard, group, handle)
        while len(self._cache) > 1 and sum(c.nbytes for c in self._cache.values()) > READ_CACHE:
            self._cache.popitem(last=False)
        return column


class _Progress:
    """A tqdm bar for long listings only (the real COCO: ~1,200 row groups); silent when logging is quiet."""

    def __init__(self, total: int, desc: str, unit: str):

        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=2,
                        disable=total < 50 or not log.isEnabledFor(logging.INFO))

    def update(self, n: int) -> None:
        self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
