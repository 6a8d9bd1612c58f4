"""The Karpathy 5k COCO test split (the split published COCO retrieval figures use): its image ids and captions."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

from clipsearch.core.errors import first_line

log = logging.getLogger(__name__)

NAME = "karpathy-5k-test"
# yerevann/coco-karpathy: Karpathy's dataset_coco.json as parquet, one row per image with the columns filepath,
# sentids, filename, imgid, split, sentences, cocoid, url. Its test file (about 1 MB) is the smallest public copy
# that holds the 5,000 test images' COCO ids and captions; no images are downloaded.
REPO = "yerevann/coco-karpathy"
# main's commit "Fix task tags (#1)" (448fdb1, 2022-10-31; its data files date from 03528ca). b6cdca8, pinned before,
# is the head of the pull-request ref refs/pr/1 that this commit merged: same files, but not a commit of main.
REVISION = "448fdb1bc7b2d09e46881c4541a14d796a3d41e8"
FILENAME = "data/test-00000-of-00001.parquet"
# Every caption the test split lists (25,010: a few images have six or seven), as the published tables' evaluators do:
# big_vision's retrieval evaluator and CLIP_benchmark both encode all of them. A number here keeps the first N of each
# image instead; the evaluation record says which (captions, captions_listed, captions_per_image).
CAPTIONS_PER_IMAGE: int | None = None
# Where the split comes from: unset = the pinned Hub file above; "off" = skip; a parquet file (or a folder holding
# FILENAME) in the same format; or "REPO[@REVISION]" for another Hub dataset repo with FILENAME.
ENV = "CLIPSEARCH_KARPATHY"
_OFF = {"off", "none", "no", "0", "false"}


class KarpathyUnavailable(RuntimeError):
    """The split could not be read; the message says why (the build goes on without this evaluation)."""


@dataclass
class KarpathySplit:
    image_ids: list[int]  # COCO image ids, in the file's order
    captions: list[list[str]]  # every caption of the image (the first CAPTIONS_PER_IMAGE if set), never empty
    listed: list[int]  # how many captions the file lists for each image
    source: dict  # repo, revision and file (or the local path) the split was read from


def default_source() -> dict:
    return {"repo": REPO, "revision": REVISION, "file": FILENAME}


def describe(source: dict) -> str:
    if "path" in source:
        return source["path"]
    return f"{source['repo']}@{str(source.get('revision') or 'main')[:12]}/{source['file']}"


def requested_source(location: str | None = None) -> dict | None:
    """Where load_split() will read from (None when switched off), from `location` or $CLIPSEARCH_KARPATHY."""
    location = (os.environ.get(ENV, "") if location is None else location).strip()
    if location.lower() in _OFF:
        return None
    if not location:
        return default_source()
    path = Path(location).expanduser()
    if path.is_dir():
        return {"path": str(path / FILENAME)}
    if path.exists() or location.startswith((".", "/", "~")) or location.endswith(".parquet"):
        return {"path": str(path)}
    repo, _, revision = location.partition("@")
    return {"repo": repo, "revision": revision or None, "file": FILENAME}


def load_split(location: str | None = None) -> KarpathySplit:
    """Read the test split; raise KarpathyUnavailable with the reason when it is switched off or unreadable."""
    source = requested_source(location)
    if source is None:
        raise KarpathyUnavailable(f"switched off (${ENV}={os.environ.get(ENV, location)})")
    path = Path(source["path"]) if "path" in source else _download(source)
    try:
        return read_split(path, source)
    except KarpathyUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed file costs this evaluation, never the build
        raise KarpathyUnavailable(f"{describe(source)} could not be read "
                                  f"({type(error).__name__}: {first_line(error)})") from None


def read_split(path: Path, source: dict) -> KarpathySplit:

    if not Path(path).is_file():
        raise KarpathyUnavailable(f"{path} does not exist")
    names = set(pq.read_schema(path).names)
    missing = {"cocoid", "sentences"} - names
    if missing:
        raise KarpathyUnavailable(f"{describe(source)} has no column {', '.join(sorted(missing))} (columns: "
                                  f"{', '.join(sorted(names))})")
    columns = ["cocoid", "sentences"] + (["split"] if "split" in names else [])
    rows = pq.read_table(path, columns=columns).to_pylist()
    image_ids, captions, listed, seen = [], [], [], set()
    for row in rows:
        if row.get("split", "test") != "test" or row["cocoid"] is None or int(row["cocoid"]) in seen:
            continue
        texts = [text for text in map(_caption, row["sentences"] or []) if text]
        if texts:
            seen.add(int(row["cocoid"]))
            image_ids.append(int(row["cocoid"]))
            captions.append(texts[:CAPTIONS_PER_IMAGE])
            listed.append(len(texts))
    if not image_ids:
        raise KarpathyUnavailable(f"{describe(source)} lists no test image with captions")
    log.info("Karpathy test split: %d images, %d of the %d captions the file lists, from %s",
             len(image_ids), sum(map(len, captions)), sum(listed), describe(source))
    return KarpathySplit(image_ids=image_ids, captions=captions, listed=listed, source=source)


def _caption(sentence) -> str:
    """A caption as the file stores it: a string, or Karpathy's {"raw": ..., "tokens": ...} record."""
    if isinstance(sentence, dict):
        sentence = sentence.get("raw") or " ".join(sentence.get("tokens") or [])
    return str(sentence or "").strip()


def _download(source: dict) -> Path:
    """The pinned file from the Hub cache, else one quick metadata request (no retries: without a network this
    costs a second, not the client's half-minute of back-off), then the download."""

    repo, revision, filename = source["repo"], source.get("revision"), source["file"]
    kwargs = {"repo_type": "dataset", "revision": revision}
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True, **kwargs))
    except Exception:  # noqa: BLE001 - not cached (or offline mode): go to the Hub
        pass
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, **kwargs), timeout=10)
        return Path(hf_hub_download(repo, filename, **kwargs))
    except Exception as error:  # noqa: BLE001 - no network, no such repo/file/revision: skip with the reason
        raise KarpathyUnavailable(f"{describe(source)} could not be downloaded "
                                  f"({type(error).__name__}: {first_line(error)})") from None
