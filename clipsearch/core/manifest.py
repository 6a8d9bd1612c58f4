"""The artifact format: file names, where builds are published, the typed manifest and sha256 verification."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .calibration import Calibration
from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.faiss"
EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.parquet"
THUMBS_PATTERN = "thumbs-{:05d}.bin"
# The object index (see clipsearch.core.objects): FAISS over the instance-box crops, their rows, and their float
# vectors (kept for --append; the app never downloads them).
OBJECTS_INDEX = "objects.faiss"
OBJECTS_META = "objects.parquet"
OBJECTS_VECTORS = "objects.npy"
SERVING_MODEL = "model-int8.safetensors"  # the encoder's int8 serving copy (core.serving): the app loads it, not fp32
IMAGE_GRAPH = "image-int8.onnx"  # its image tower as an ONNX Runtime graph (core.tower_graphs): picture queries
TEXT_GRAPH = "text-int8.onnx"  # its text tower likewise (SigLIP family): text queries
# The serving copy's torch towers that a graph replaces, each in a file of its own: the app fetches one only where
# its graph cannot serve on the Space's CPU (decision 0047).
IMAGE_TOWER_FILE = "image-tower-int8.safetensors"
TEXT_TOWER_FILE = "text-tower-int8.safetensors"
# Where builds are published: the project's Hub dataset repo (the builder's --push default, the app's INDEX_REPO
# default), one commit per build, tagged TAG_PREFIX + its UTC time (the app serves the newest such tag).
DEFAULT_INDEX_REPO = "coco-clip-search/coco2017-clip-index"
TAG_PREFIX = "build-"
# What --precision and CLIPSEARCH_PRECISION accept (clipsearch.core.precision says what each one means).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
_STAMPS_LOCK = threading.Lock()  # verified.json is shared by the start-up and the background pack fetcher


@dataclass
class SourceInfo:
    kind: str  # "hub" | "coco-dir" | "images"
    location: str  # repo id or folder
    revision: str | None = None
    splits: list[str] = field(default_factory=list)
    role: str = "images"  # what this source contributed: images, captions, categories


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IndexInfo:
    factory: str
    faiss_type: str
    metric: str = "inner_product"
    recall_at_5: float = 1.0  # against exact search; 1.0 by definition for a flat index
    recall_sample: int = 0
    search_params: str = ""  # e.g. "nprobe=32": FAISS does not store search-time parameters in the index file


@dataclass
class ThumbnailInfo:
    files: list[str]
    max_side: int
    format: str = "jpeg"


@dataclass
class FileEntry:
    sha256: str
    size: int


@dataclass
class ServingInfo:
    """The encoder's serving copy published with the build (core.serving), and how well it agreed with fp32 there."""

    file: str  # everything but the towers kept apart (GraphInfo.tower): token tables, heads, the fp32 references
    precision: str  # "int8"
    cosine: float  # worst cosine to the build's fp32 vectors on the calibration batch, on the build's CPU
    size: int  # bytes of `file`
    # the image tower as an ONNX Runtime int8 graph (core.tower_graphs), what the app embeds pictures with; None:
    # built before it existed, or the export failed for this model (the serving copy's torch tower then answers)
    image_graph: GraphInfo | None = None
    # the text tower likewise, what the app embeds texts with; None: not the SigLIP family, or built before it existed
    text_graph: GraphInfo | None = None

    @property
    def graphs(self) -> list[str]:
        return [graph.file for graph in (self.image_graph, self.text_graph) if graph]

    @property
    def towers(self) -> list[str]:
        return [graph.tower for graph in (self.image_graph, self.text_graph) if graph and graph.tower]

    @property
    def files(self) -> list[str]:
        return [self.file, *self.graphs, *self.towers]


@dataclass
class GraphInfo:
    """A tower's ONNX graph published with the serving copy, and how well it agreed with fp32 there."""

    file: str
    cosine: float  # worst cosine to the build's fp32 vectors on the calibration inputs, on the build's CPU
    size: int
    # the serving copy's file holding the torch tower this graph replaces, fetched only where the graph cannot serve;
    # None: that tower is in the serving copy's own file (builds before 2026-12-06)
    tower: str | None = None


@dataclass
class ObjectsInfo:
    """The object index of a build: which boxes were embedded and how they were cut."""

    count: int  # rows of the object index (kept boxes of decoded images)
    boxes_total: int  # instance boxes the source listed for the images asked for
    boxes_kept: int  # of those, boxes whose shorter side reached min_side
    min_side: float  # pixels of the original image
    context: float  # fraction of the box's width/height added on each side (core.objects.crop_with_context)
    index: IndexInfo
    evaluation: dict = field(default_factory=dict)  # category precision@5, object vs whole-image queries
    # P(the thing is of the category asked | cosine), fitted on category queries; None: no text side or too few
    calibration: Calibration | None = None


@dataclass
class Manifest:
    """Describes one complete artifact set; written last, so its presence means the folder is complete."""

    format_version: int
    model: dict  # clipsearch.core.encoder.ModelInfo as a dict
    dim: int
    count: int
    index: IndexInfo
    thumbnails: ThumbnailInfo
    sources: list[SourceInfo]
    skipped: list[Skipped]
    evaluation: dict
    builder_version: str
    created_at: str
    build_seconds: float = 0.0
    images_per_second: float = 0.0
    device: str = ""
    precision: str = ""  # what the encoder computed in: fp32, int8 or bf16 on CPU, bf16-autocast on CUDA
    files: dict[str, FileEntry] = field(default_factory=dict)
    # P(match | cosine) for text queries, fitted on the build's own captions; None: no captions, hits get no confidence
    calibration: Calibration | None = None
    # the same for picture queries (a hit any of the query image's captions would call a match); None: as above
    picture_calibration: Calibration | None = None
    # the object index beside the image index; None: a build without instance boxes (or --objects none)
    objects: ObjectsInfo | None = None
    # the encoder's int8 serving copy; None: built before it existed or with --serving-copy none (the app converts)
    serving: ServingInfo | None = None

    def unused_serving_files(self, precision: str) -> set[str]:
        """The serving files an app computing in `precision` does not load at start: the serving copy serves auto and
        int8 (fp32 and bf16 need the checkpoint), its graphs auto only, the towers kept apart int8 only (auto fetches
        one only where its graph fails its check: clipsearch.hub.encoders)."""
        if self.serving is None:
            return set()
        if precision not in ("auto", "int8"):
            return set(self.serving.files)
        return set(self.serving.graphs if precision != "auto" else self.serving.towers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ArtifactError("manifest.json has no format_version; it was not written by this builder.")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"The artifacts use format_version {version}, newer than this app understands ({FORMAT_VERSION}); "
                "update the app, or set INDEX_REVISION to an older build."
            )
        return _from_dict(cls, data)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ArtifactError(
                f"{folder} has no {MANIFEST}: it is not a finished build. Re-run the builder, "
                "or point INDEX_DIR at a complete artifact folder."
            )
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ArtifactError(f"{path} is not a valid manifest ({error}); rebuild the artifacts.") from None


def _from_dict(cls, data):
    """Rebuild nested dataclasses from plain JSON; unknown keys from newer minor writers are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for item in dataclasses.fields(cls):
        if item.name not in data:
            continue
        kwargs[item.name] = _convert(hints[item.name], data[item.name])
    return cls(**kwargs)


def _convert(hint, value):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _from_dict(hint, value)
    if isinstance(hint, types.UnionType) and isinstance(value, dict):  # an optional record: X | None
        return next((_convert(arg, value) for arg in args if dataclasses.is_dataclass(arg)), value)
    if origin is list and args:
        return [_convert(args[0], v) for v in value]
    if origin is dict and len(args) == 2:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


def sha256_file(path: Path, chunk: int = 8 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, FileEntry]:
    """sha256 and size of each file; hashlib releases the GIL, so two threads use both cores."""
    folder = Path(folder)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda name: sha256_file(folder / name), names))
    return {name: FileEntry(sha256=d, size=(folder / name).stat().st_size) for name, d in zip(names, digests)}


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Atomically write manifest.json; callers do this last, after every listed file is in place."""
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def verify_files(folder: Path, manifest: Manifest, stamp_dir: Path | None = None,
                 names: list[str] | None = None) -> None:
    """Check every listed file's size and sha256 (or only `names`, files listed in the manifest); raise
    ArtifactError naming the first bad file.

    A verified file is remembered by (path, size, mtime, sha256) in stamp_dir, so a restart does not re-hash
    gigabytes that have not changed since they were last checked.
    """
    folder = Path(folder)
    pending = []
    with _STAMPS_LOCK:
        stamps = _read_stamps(stamp_dir)
    for name in sorted(manifest.files if names is None else names):
        entry = manifest.files[name]
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{name} is listed in the manifest but missing from {folder}; re-download or rebuild.")
        stat = path.stat()
        if stat.st_size != entry.size:
            raise ArtifactError(_mismatch(name, folder))
        if stamps.get(_stamp_key(path, stat)) != entry.sha256:
            pending.append((name, _stamp_key(path, stat), entry.sha256))
    if pending:
        actual = hash_files(folder, [name for name, _, _ in pending])
        verified = {}
        for name, key, expected in pending:
            if actual[name].sha256 != expected:
                _remember(stamp_dir, verified)  # what did verify need not be hashed again
                raise ArtifactError(_mismatch(name, folder))
            verified[key] = expected
        _remember(stamp_dir, verified)


def is_verified(path: Path, entry: FileEntry, stamp_dir: Path | None) -> bool:
    """Whether `path` was verified against `entry` before and has not changed since (size and mtime)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return False
    with _STAMPS_LOCK:
        return stat.st_size == entry.size and _read_stamps(stamp_dir).get(_stamp_key(Path(path), stat)) == entry.sha256


def remember_verified(path: Path, entry: FileEntry, stamp_dir: Path | None) -> None:
    """Record that `path` (hashed elsewhere, e.g. while it was downloaded) matches `entry`."""
    _remember(stamp_dir, {_stamp_key(Path(path), Path(path).stat()): entry.sha256})


def _stamp_key(path: Path, stat: os.stat_result) -> str:
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _remember(stamp_dir: Path | None, verified: dict[str, str]) -> None:
    """Add stamps; read-modify-write under a lock, since a background thread verifies packs while the app serves."""
    if not verified or stamp_dir is None:
        return
    with _STAMPS_LOCK:
        stamps = _read_stamps(stamp_dir)
        stamps.update(verified)
        _write_stamps(stamp_dir, stamps)


def _mismatch(name: str, folder: Path) -> str:
    return (
        f"{name} in {folder} does not match the sha256 in the manifest (corrupted or tampered); it will not be "
        "served. Delete the folder (or the cached copy) so it is downloaded again, or rebuild it."
    )


def _read_stamps(stamp_dir: Path | None) -> dict[str, str]:
    if stamp_dir is None:
        return {}
    try:
        return json.loads((Path(stamp_dir) / "verified.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_stamps(stamp_dir: Path | None, stamps: dict[str, str]) -> None:
    if stamp_dir is None:
        return
    try:
        Path(stamp_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(stamp_dir) / f"verified.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, Path(stamp_dir) / "verified.json")
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
