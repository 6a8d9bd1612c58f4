"""Load stage: list gallery images with their COCO metadata from the Hub, a local COCO folder or any image folder."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from clipsearch.core.manifest import SourceInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DEFAULT_SPLITS = ("train2017", "val2017")


class SourceError(ValueError):
    """A source that cannot be read; the message names the flag that fixes it."""


@dataclass
class Record:
    """One gallery image: everything the metadata needs, plus how to fetch its bytes (`locator`)."""

    image_id: int
    split: str
    file_name: str
    locator: str | int  # a path for folders, a row number for Hub datasets
    width: int = 0
    height: int = 0
    captions: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    url: str = ""


class Source:
    """Lists records cheaply in the main process; `read` runs in DataLoader workers and returns image bytes/paths."""

    infos: list[SourceInfo]
    records: list[Record]

    def read(self, record: Record):
        return record.locator

    def fingerprint(self) -> dict:
        return {"sources": [vars(info) for info in self.infos], "count": len(self.records)}

    def limit(self, count: int) -> None:
        """Keep only the first `count` images (--limit); a source may then list, and fetch, only those."""
        self.records = self.records[:count]

    def download_estimate(self) -> tuple[int, int, str]:
        """(bytes still to download, bytes already on disk, how) for every record; local sources download nothing."""
        return 0, 0, ""

    def fetch(self, indices: list[int] | None = None, progress: bool = True) -> None:
        """Download what `read` will need for these records (all by default), before the workers start."""


class CocoDirSource(Source):
    """Official COCO layout: DIR/<split>/*.jpg, DIR/annotations/{captions,instances}_<split>.json."""

    def __init__(self, root: Path, splits: list[str]):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"--coco-dir {root}: no such folder.")
        self.records = []
        for split in splits:
            self.records.extend(_coco_split(root, split))
        if not self.records:
            raise SourceError(f"--coco-dir {root}: no images found for --splits {','.join(splits)}.")
        self.infos = [SourceInfo(kind="coco-dir", location=str(root.resolve()), splits=list(splits))]


def _coco_split(root: Path, split: str) -> list[Record]:
    image_dir = root / split
    captions_file = root / "annotations" / f"captions_{split}.json"
    instances_file = root / "annotations" / f"instances_{split}.json"
    if not image_dir.is_dir() and not captions_file.is_file():
        raise SourceError(
            f"--coco-dir {root}: split '{split}' has neither {image_dir.name}/ nor annotations/{captions_file.name}; "
            "check --splits."
        )
    images: dict[int, dict] = {}
    captions: dict[int, list[str]] = defaultdict(list)
    if captions_file.is_file():
        data = _read_json(captions_file)
        images = {int(image["id"]): image for image in data.get("images", [])}
        for note in sorted(data.get("annotations", []), key=lambda a: a.get("id", 0)):
            captions[int(note["image_id"])].append(str(note["caption"]).strip())
    else:
        log.warning("%s missing: images of %s get no captions", captions_file, split)
    categories: dict[int, list[str]] = defaultdict(list)
    if instances_file.is_file():
        data = _read_json(instances_file)
        names = {int(c["id"]): c["name"] for c in data.get("categories", [])}
        seen: dict[int, set] = defaultdict(set)
        for note in data.get("annotations", []):
            image_id, name = int(note["image_id"]), names.get(int(note["category_id"]))
            if name and name not in seen[image_id]:
                seen[image_id].add(name)
                categories[image_id].append(name)
        for image in data.get("images", []):
            images.setdefault(int(image["id"]), image)
    else:
        log.warning("%s missing: images of %s get no categories", instances_file, split)
    if not images:  # no annotations at all: the folder itself, ids from the file names
        for path in sorted(image_dir.glob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                digits = re.sub(r"\D", "", path.stem)
                images[int(digits) if digits else len(images) + 1] = {"file_name": path.name}
    return [
        Record(
            image_id=image_id, split=split, file_name=image["file_name"], locator=str(image_dir / image["file_name"]),
            width=int(image.get("width", 0)), height=int(image.get("height", 0)), captions=captions.get(image_id, []),
            categories=sorted(categories.get(image_id, [])), url=image.get("coco_url") or image.get("flickr_url") or "",
        )
        for image_id, image in sorted(images.items())
    ]


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise SourceError(f"--coco-dir: {path} could not be read as JSON ({error}).") from None


class ImageFolderSource(Source):
    """Any folder of images, recursive; captions from DIR/metadata.jsonl (file_name + caption/captions/text)
    or a same-named .txt file beside each image. Ids are 1..N in sorted path order."""

    def __init__(self, root: Path):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"--images {root}: no such folder.")
        paths = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not paths:
            raise SourceError(f"--images {root}: no image files (jpg, png, webp, gif, bmp, tiff) found.")
        sidecar = _read_metadata_jsonl(root / "metadata.jsonl")
        self.records = []
        for number, path in enumerate(paths, start=1):
            name = path.relative_to(root).as_posix()
            captions = sidecar.get(name) or _read_txt_caption(path)
            self.records.append(Record(image_id=number, split=path.parent.relative_to(root).as_posix() or ".",
                                       file_name=name, locator=str(path), captions=captions))
        self.infos = [SourceInfo(kind="images", location=str(root.resolve()))]


def _read_metadata_jsonl(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            value = row.get("captions") or row.get("caption") or row.get("text") or []
            captions[str(row["file_name"])] = [value] if isinstance(value, str) else [str(v) for v in value]
        except (ValueError, KeyError, AttributeError):
            raise SourceError(f"--images: {path} line {number} is not a JSON object with a file_name.") from None
    return captions


def _read_txt_caption(path: Path) -> list[str]:
    text_file = path.with_suffix(".txt")
    if text_file.is_file():
        return [line.strip() for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return []


# --- COCO from script-free Hub dataset repos ---------------------------------------------------------------------
DEFAULT_HF_IMAGES = "BrandonLSX/coco-2017"  # parquet: image, image_id, file_name, width, height, annotations
DEFAULT_HF_CAPTIONS = "phiyodr/coco2017"  # parquet: image_id, captions, coco_url, flickr_url (no images)
ID_COLUMNS = ("image_id", "id", "cocoid")
CAPTION_COLUMNS = ("captions", "sentences", "caption", "text", "answer")
URL_COLUMNS = ("coco_url", "url", "flickr_url")
CATEGORY_FIELDS = ("category_name", "category")
LIST_THREADS = 8  # footers, metadata columns and row groups of several shards are read at once (range requests)
WHOLE_FRACTION = 0.5  # a shard whose needed row groups reach this share of its groups (or bytes) comes whole
GROUP_MEMORY = 512 * 2**20  # row groups fetched by range are held in memory; beyond this, whole shards instead
READ_CACHE = 256 * 2**20  # per process: row groups read on demand (from a local shard) kept for the next rows
THUMB_BYTES = 13_000  # a 256-px JPEG thumbnail of a COCO photo, roughly
ROW_BYTES = 400  # metadata row (ids, captions, categories, url) in metadata.parquet, roughly


def keeps_coco_ids(infos) -> bool:
    """True when every source keeps COCO's image ids; an image folder numbers its images instead."""
    return all(info.kind != "images" for info in infos)


def parse_repo(spec: str) -> tuple[str, str | None]:
    """'owner/name@revision' -> (repo, revision); a local folder path has no revision."""
    if "@" in spec and not Path(spec).exists():
        repo, revision = spec.rsplit("@", 1)
        return repo, revision or None
    return spec, None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def estimate_line(source: Source, dim: int) -> str:
    """What the build will download and write, said before it starts (from parquet metadata sizes)."""
    fetch, cached, how = source.download_estimate()
    count = len(source.records)
    # vectors three times (resume cache, embeddings.npy, a flat index), thumbnails twice (resume cache, packs)
    written = count * (3 * dim * 4 + 2 * THUMB_BYTES + ROW_BYTES)
    parts = [f"download ~{human_bytes(fetch)}" + (f" ({how})" if how else ""),
             f"{human_bytes(cached)} already on disk" if cached else "",
             f"write ~{human_bytes(written)} for {count:,} images (vectors, index, thumbnails, metadata, resume cache)"]
    return "plan: " + "; ".join(p for p in parts if p)


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
        from .hubfiles import Repo

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
            captions = self._caption_lookup(split) if self._captions else {}
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
        import pyarrow.parquet as pq

        try:
            with self._images.open_file(path) as handle:
                return pq.ParquetFile(handle).metadata
        except (OSError, ValueError, pa.ArrowException) as error:
            raise SourceError(f"--hf-images {self._images.repo_id}: {path} is not a readable parquet file "
                              f"({str(error).splitlines()[0]}).") from None

    def _layout(self, shard: int) -> dict:
        """Which columns to read from a shard: ids, names, sizes, captions, urls, categories, and the image."""
        if shard not in self._layouts:
            self._layouts[shard] = self._find_layout(shard)
        return self._layouts[shard]

    def _find_layout(self, shard: int) -> dict:
        import datasets

        metadata = self._shards[shard].metadata
        schema = metadata.schema.to_arrow_schema()
        try:
            features = datasets.Features.from_arrow_schema(schema)
        except (ValueError, TypeError, KeyError):
            features = None
        image = next((name for name, feature in (features or {}).items() if isinstance(feature, datasets.Image)),
                     None)
        if image is None:  # plain parquet: a struct with a binary `bytes` field
            image = next((f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes")
                          >= 0 and pa.types.is_binary(f.type.field("bytes").type)), None)
        if image is None:
            raise SourceError(f"--hf-images {self._images.repo_id}: has no Image column; pass a dataset repo that "
                              "holds the images.")
        names = schema.names
        id_column = next((c for c in ID_COLUMNS if c in names), None)
        if id_column is None:
            raise SourceError("--hf-images: rows have no image_id/id column to join captions and show ids.")
        columns = [id_column] + [c for c in ("file_name", "width", "height", *CAPTION_COLUMNS, *URL_COLUMNS)
                                 if c in names and c != id_column]
        for name in ("annotations", "objects"):
            if name in names:
                kind = schema.field(name).type
                if pa.types.is_struct(kind):
                    columns += [f"{name}.{f}" for f in CATEGORY_FIELDS if kind.get_field_index(f) >= 0]
                else:
                    columns.append(name)
        leaf = f"{image}.bytes"
        chunk = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path == leaf)
        return {"image": leaf, "chunk": chunk, "id": id_column, "columns": columns, "features": features}

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
                    image_id = value.get(layout["id"])
                    if image_id is None:
                        raise SourceError("--hf-images: rows have no image_id/id column to join captions and show "
                                          "ids.")
                    joined = captions.get(int(image_id), {})
                    own = _first(value, CAPTION_COLUMNS) or []
                    records.append(Record(
                        image_id=int(image_id), split=split,
                        file_name=str(value.get("file_name") or f"{image_id}.jpg"), locator=len(self._where),
                        width=int(value.get("width") or 0), height=int(value.get("height") or 0),
                        captions=joined.get("captions") or ([own] if isinstance(own, str) else list(own)),
                        categories=_categories(value, layout["features"]),
                        url=joined.get("url") or _first(value, URL_COLUMNS) or "",
                    ))
                    self._where.append(place)
                bar.update(1)
        return records

    def _read(self, shard: int, how, what: str, handle=None):
        """how(pq.ParquetFile) on a shard (a file object opened for this call, or `handle`), errors as sentences."""
        import pyarrow.parquet as pq

        path = self._shards[shard].path
        try:
            if handle is not None:
                return how(handle)
            with self._images.open_file(path) as file:
                return how(pq.ParquetFile(file, metadata=self._shards[shard].metadata))
        except (OSError, ValueError, pa.ArrowException) as error:
            raise SourceError(f"--hf-images {self._images.repo_id}: {path} {what} could not be read "
                              f"({str(error).splitlines()[0]}); re-run to resume.") from None

    def _caption_lookup(self, split: str) -> dict[int, dict]:
        import pyarrow.parquet as pq

        lookup: dict[int, dict] = {}
        for path in self._caption_files[split]:
            local = self._captions.path(path)
            try:
                handle = pq.ParquetFile(local)
                names = handle.schema_arrow.names
                wanted = [c for c in (*ID_COLUMNS, *CAPTION_COLUMNS, *URL_COLUMNS) if c in names]
                rows = handle.read(columns=wanted).to_pylist()
            except (OSError, ValueError, pa.ArrowException) as error:
                raise SourceError(f"--hf-captions {self._captions.repo_id}: {path} could not be read "
                                  f"({str(error).splitlines()[0]}).") from None
            for row in rows:
                image_id = _first(row, ID_COLUMNS)
                if image_id is None:
                    continue
                captions = _first(row, CAPTION_COLUMNS) or []
                lookup[int(image_id)] = {
                    "captions": [captions] if isinstance(captions, str) else [str(c) for c in captions],
                    "url": _first(row, URL_COLUMNS) or "",
                }
        return lookup

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
        from tqdm import tqdm

        from .hubfiles import download_files

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
        import pyarrow.parquet as pq

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
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=2,
                        disable=total < 50 or not log.isEnabledFor(logging.INFO))

    def update(self, n: int) -> None:
        self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def _first(row: dict, names: tuple[str, ...]):
    return next((row[name] for name in names if row.get(name) not in (None, "", [])), None)


def _categories(row: dict, features) -> list[str]:
    """Category names from the layouts seen on the Hub: annotations.category_name (BrandonLSX/coco-2017, a struct of
    lists), objects.category (ClassLabel ids), or a list of such structs."""
    names: set[str] = set()
    for column in ("annotations", "objects"):
        value = row.get(column)
        items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("category_name") is not None:
                found = item["category_name"]
                names.update(str(n) for n in (found if isinstance(found, list) else [found]))
            elif item.get("category") is not None:
                found = item["category"]
                label = _class_label(features, column)
                names.update(label.int2str(int(c)) if label is not None else str(c)
                             for c in (found if isinstance(found, list) else [found]))
    return sorted(names)


def _class_label(features, column: str):
    """The ClassLabel of `column`'s category field in the repo's datasets features, if it has one."""
    feature = (features or {}).get(column)
    for _ in range(3):  # List(...) / Sequence(...) / dict layers
        if isinstance(feature, dict):
            feature = feature.get("category")
        elif hasattr(feature, "feature"):
            feature = feature.feature
        if hasattr(feature, "int2str"):
            return feature
    return None
