"""Load stage: what a gallery source is, and the local ones (a COCO folder, any image folder)."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.core.manifest import SourceInfo

from .errors import SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DEFAULT_SPLITS = ("train2017", "val2017")
THUMB_BYTES = 13_000  # a 256-px JPEG thumbnail of a COCO photo, roughly
ROW_BYTES = 400  # metadata row (ids, captions, categories, url) in metadata.parquet, roughly


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
    # instance boxes [x0, y0, x1, y1, category] in the original image's pixels (COCO's [x, y, w, h] converted)
    boxes: list[list] = field(default_factory=list)


class Source:
    """Lists records cheaply in the main process; `read` runs in DataLoader workers and returns image bytes/paths."""

    infos: list[SourceInfo]
    records: list[Record]
    boxes_total = boxes_kept = 0  # instance boxes listed / kept for the object index (see builder.pipeline)

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
    boxes: dict[int, list[list]] = defaultdict(list)
    if instances_file.is_file():
        data = _read_json(instances_file)
        names = {int(c["id"]): c["name"] for c in data.get("categories", [])}
        seen: dict[int, set] = defaultdict(set)
        for note in sorted(data.get("annotations", []), key=lambda a: a.get("id", 0)):
            image_id, name = int(note["image_id"]), names.get(int(note["category_id"]))
            if name and not note.get("iscrowd") and (box := coco_box(note.get("bbox"))):  # a crowd is no one thing
                boxes[image_id].append([*box, name])
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
            boxes=boxes.get(image_id, []),
        )
        for image_id, image in sorted(images.items())
    ]


def coco_box(bbox) -> list[float] | None:
    """COCO's [x, y, width, height] as [x0, y0, x1, y1]; None for a missing or empty box."""
    try:
        x, y, width, height = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return [x, y, x + width, y + height] if width > 0 and height > 0 else None


def keep_boxes(source: Source, min_side: float | None) -> None:
    """Keep only the boxes whose shorter side is at least `min_side` pixels (None: none at all, the build has no
    object index), counting the boxes listed and kept on the source (source.boxes_total, source.boxes_kept)."""
    total = kept = 0
    for record in source.records:
        total += len(record.boxes) if min_side is not None else 0
        record.boxes = [] if min_side is None else [
            box for box in record.boxes if min(box[2] - box[0], box[3] - box[1]) >= min_side]
        kept += len(record.boxes)
    source.boxes_total, source.boxes_kept = total, kept


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


def keeps_coco_ids(infos) -> bool:
    """True when every source keeps COCO's image ids; an image folder numbers its images instead."""
    return all(info.kind != "images" for info in infos)


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
    written = count * (3 * dim * 4 + 2 * THUMB_BYTES + ROW_BYTES) + source.boxes_kept * 3 * dim * 4  # boxes: vectors
    objects = f" and {source.boxes_kept:,} boxes" if source.boxes_kept else ""
    parts = [f"download ~{human_bytes(fetch)}" + (f" ({how})" if how else ""),
             f"{human_bytes(cached)} already on disk" if cached else "",
             f"write ~{human_bytes(written)} for {count:,} images{objects} (vectors, index, thumbnails, metadata, "
             "resume cache)"]
    return "plan: " + "; ".join(p for p in parts if p)
