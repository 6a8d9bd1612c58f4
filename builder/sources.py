"""Load stage: list gallery images with their COCO metadata from the Hub, a local COCO folder or any image folder."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.manifest import SourceInfo

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
# Hub repos name COCO's splits differently; the first that exists wins.
HUB_SPLIT_NAMES = {"train2017": ("train", "train2017"), "val2017": ("validation", "val", "val2017")}
ID_COLUMNS = ("image_id", "id", "cocoid")
CAPTION_COLUMNS = ("captions", "sentences", "caption", "text", "answer")
URL_COLUMNS = ("coco_url", "url", "flickr_url")


def parse_repo(spec: str) -> tuple[str, str | None]:
    """'owner/name@revision' -> (repo, revision); a local folder path has no revision."""
    if "@" in spec and not Path(spec).exists():
        repo, revision = spec.rsplit("@", 1)
        return repo, revision or None
    return spec, None


class HubCocoSource(Source):
    """COCO from one Hub dataset repo with images (+ ids, sizes, categories), joined by image id with a second
    repo that has captions and urls. Either may be a local folder laid out like a Hub repo."""

    def __init__(self, images_repo: str, captions_repo: str | None, splits: list[str]):
        import datasets

        images_id, images_rev = parse_repo(images_repo)
        images_revision = _resolve_revision(images_id, images_rev, "--hf-images")
        self.infos = [SourceInfo(kind="hub", location=images_id, revision=images_revision, splits=list(splits),
                                 role="images, ids, sizes, categories")]
        captions = {}
        if captions_repo:
            captions_id, captions_rev = parse_repo(captions_repo)
            revision = _resolve_revision(captions_id, captions_rev, "--hf-captions")
            self.infos.append(SourceInfo(kind="hub", location=captions_id, revision=revision,
                                         splits=list(splits), role="captions, urls"))
        self.records, self._parts = [], []
        for split in splits:
            table = _load_split(images_id, self.infos[0].revision, split, "--hf-images")
            image_column = _image_column(table, images_id)
            table = table.cast_column(image_column, datasets.Image(decode=False))
            if captions_repo:
                captions = _caption_lookup(_load_split(captions_id, revision, split, "--hf-captions"))
            part = len(self._parts)
            self._parts.append((table, image_column))
            self.records.extend(_hub_records(table, image_column, split, part, captions))
        self.records.sort(key=lambda r: (splits.index(r.split), r.image_id))

    def read(self, record: Record):
        part, row = divmod(int(record.locator), 1 << 32)
        table, column = self._parts[part]
        value = table[row][column]
        return value.get("bytes") or value.get("path")


def _resolve_revision(repo: str, revision: str | None, flag: str) -> str | None:
    """The commit a branch or tag points at now, so the manifest pins exactly what was read."""
    if Path(repo).exists():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        return HfApi().dataset_info(repo, revision=revision).sha
    except HFValidationError:
        raise SourceError(f"{flag} {repo}: could not be loaded (neither an existing folder nor a Hub dataset id "
                          "like owner/name).") from None
    except HfHubHTTPError as error:
        raise SourceError(f"{flag} {repo}: {str(error).splitlines()[0]} (check the repo id, HF_TOKEN for private "
                          "repos, or use --coco-dir).") from None


def _load_split(repo: str, revision: str | None, split: str, flag: str):
    import datasets

    try:
        builder = datasets.load_dataset_builder(repo, revision=revision)
        available = dict(builder.config.data_files or {})
        hub_split = next((name for name in HUB_SPLIT_NAMES.get(split, (split,)) if name in available), None)
        if hub_split is None:
            raise SourceError(f"{flag} {repo}: no split for {split} (it has {', '.join(sorted(available))}); "
                              "check --splits.")
        # Only this split's files are fetched (COCO's unlabelled test split alone is 6 GB).
        return datasets.load_dataset(repo, revision=revision, data_files={hub_split: list(available[hub_split])},
                                     split=hub_split)
    except SourceError:
        raise
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise SourceError(f"{flag} {repo}: could not be loaded ({str(error).splitlines()[0]}).") from None


def _image_column(table, repo: str) -> str:
    import datasets

    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise SourceError(f"--hf-images {repo}: has no Image column; pass a dataset repo that holds the images.")


def _first(row: dict, names: tuple[str, ...]):
    return next((row[name] for name in names if row.get(name) not in (None, "", [])), None)


def _caption_lookup(table) -> dict[int, dict]:
    lookup = {}
    for row in table:
        image_id = _first(row, ID_COLUMNS)
        if image_id is None:
            continue
        captions = _first(row, CAPTION_COLUMNS) or []
        lookup[int(image_id)] = {
            "captions": [captions] if isinstance(captions, str) else [str(c) for c in captions],
            "url": _first(row, URL_COLUMNS) or "",
        }
    return lookup


def _categories(row: dict, features) -> list[str]:
    """Category names from the layouts seen on the Hub: annotations.category_name, objects.category (ClassLabel)."""
    names: set[str] = set()
    for column in ("annotations", "objects"):
        value = row.get(column)
        if not isinstance(value, dict):
            continue
        if value.get("category_name"):
            names.update(str(n) for n in value["category_name"])
        elif value.get("category") is not None:
            label = features[column].feature["category"] if hasattr(features[column], "feature") else \
                features[column]["category"]
            label = getattr(label, "feature", label)
            names.update(label.int2str(int(c)) if hasattr(label, "int2str") else str(c) for c in value["category"])
    return sorted(names)


def _hub_records(table, image_column: str, split: str, part: int, captions: dict[int, dict]) -> list[Record]:
    records = []
    metadata = table.remove_columns([image_column])
    for row_number, row in enumerate(metadata):
        image_id = _first(row, ID_COLUMNS)
        if image_id is None:
            raise SourceError("--hf-images: rows have no image_id/id column to join captions and show ids.")
        joined = captions.get(int(image_id), {})
        own = _first(row, CAPTION_COLUMNS) or []
        records.append(Record(
            image_id=int(image_id), split=split, file_name=str(row.get("file_name") or f"{image_id}.jpg"),
            locator=(part << 32) + row_number, width=int(row.get("width") or 0), height=int(row.get("height") or 0),
            captions=joined.get("captions") or ([own] if isinstance(own, str) else list(own)),
            categories=_categories(row, table.features), url=joined.get("url") or _first(row, URL_COLUMNS) or "",
        ))
    return records
