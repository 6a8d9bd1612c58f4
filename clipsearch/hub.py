"""Artifacts from the Hub for the app: latest build tag, pinned snapshot download, verified cache fallback."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, scan_cache_dir, snapshot_download
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .gallery import Gallery
from .manifest import MANIFEST, ArtifactError, Manifest, verify_files

log = logging.getLogger(__name__)

DEFAULT_INDEX_REPO = "coco-clip-search/coco2017-clip-index"
TAG_PREFIX = "build-"


class IndexRepoNotFound(ArtifactError):
    """The index repo does not exist on a reachable Hub (or is private)."""


@dataclass
class IndexSource:
    """Where the served artifacts came from, for the logs and the About tab."""

    folder: Path
    repo_id: str | None
    revision: str | None  # the commit served
    ref: str | None  # what was asked for: a tag, a branch or a commit
    notice: str | None = None  # set when a cached copy is served because the Hub was unreachable


def latest_tag(api: HfApi, repo_id: str) -> str | None:
    """The newest build tag; also the reachability check (snapshot_download alone silently falls back to cache)."""
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tags = sorted(tag.name for tag in refs.tags if tag.name.startswith(TAG_PREFIX))
    return tags[-1] if tags else None


def _unreachable(error: BaseException) -> bool:
    """Errors meaning 'the Hub cannot be reached now', as opposed to 'what you asked for does not exist'."""
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError)) or \
        type(error).__module__.startswith(("httpx", "httpcore", "requests", "urllib3"))


def download(repo_id: str, revision: str | None, *, endpoint: str | None = None, token: str | None = None,
             cache_dir: Path | None = None) -> IndexSource:
    """Fetch the artifacts at `revision` (default: the newest build tag, else main) into the HF cache: the manifest,
    then exactly the files it lists, all at one commit (whatever else the repo holds is not downloaded)."""
    api = HfApi(endpoint=endpoint, token=token)
    newest = latest_tag(api, repo_id)
    ref = revision or newest or "main"
    commit = api.dataset_info(repo_id, revision=ref).sha
    log.info("downloading %s at %s (%s) from %s", repo_id, ref, commit[:12], api.endpoint)
    try:
        listed = Path(hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=commit, endpoint=endpoint,
                                      token=token, cache_dir=cache_dir))
    except EntryNotFoundError:
        raise ArtifactError(f"INDEX_REPO={repo_id} has no {MANIFEST} at {ref}: it holds no build. Publish one with "
                            "python -m builder.build --push, or set INDEX_REVISION to a build tag.") from None
    names = sorted(Manifest.read(listed.parent).files)
    folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=commit, endpoint=endpoint, token=token,
                                    cache_dir=cache_dir, allow_patterns=[MANIFEST, *names]))
    return IndexSource(folder=folder, repo_id=repo_id, revision=commit, ref=ref)


def cached_snapshots(repo_id: str, revision: str | None, cache_dir: Path | None = None) -> list[IndexSource]:
    """Cached snapshots of the repo, newest first; only those matching `revision` (ref name or commit) if given."""
    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError, ValueError):
        return []
    found = []
    for repo in info.repos:
        if repo.repo_id != repo_id or repo.repo_type != "dataset":
            continue
        for cached in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if revision and revision not in cached.refs and not cached.commit_hash.startswith(revision):
                continue
            found.append(IndexSource(folder=Path(cached.snapshot_path), repo_id=repo_id,
                                     revision=cached.commit_hash, ref=revision or ", ".join(sorted(cached.refs))))
    return found


def open_gallery(*, index_dir: str | None, repo_id: str, revision: str | None, endpoint: str | None = None,
                 token: str | None = None, cache_dir: Path | None = None,
                 work_dir: Path | None = None) -> tuple[Gallery, IndexSource]:
    """The verified gallery to serve: INDEX_DIR, else the Hub, else the newest cached copy that verifies."""
    work_dir = work_folder(work_dir)
    if index_dir:
        folder = Path(index_dir)
        if not folder.is_dir():
            raise ArtifactError(f"INDEX_DIR={index_dir} is not a folder; point it at a built artifact folder.")
        source = IndexSource(folder=folder, repo_id=None, revision=None, ref=None)
        return _open(source, work_dir), source
    try:
        source = download(repo_id, revision, endpoint=endpoint, token=token, cache_dir=cache_dir)
        return _open(source, work_dir), source
    except (RepositoryNotFoundError, GatedRepoError):
        raise IndexRepoNotFound(f"INDEX_REPO={repo_id}: no such dataset repo, or it is private (set the HF_TOKEN "
                            "secret to a token that can read it).") from None
    except RevisionNotFoundError:
        raise ArtifactError(f"INDEX_REVISION={revision}: no such tag, branch or commit in {repo_id}.") from None
    except Exception as error:  # noqa: BLE001 - classified below; anything else is re-raised
        if not _unreachable(error):
            raise
        log.warning("the Hub cannot be reached (%s); looking for a verified cached copy", type(error).__name__)
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    if served := open_cached(repo_id, revision, cache_dir, work_dir, f"The Hub could not be reached ({reason})"):
        return served
    raise ArtifactError(f"The Hub cannot be reached ({reason}) and no copy of {repo_id} is cached; check the "
                        "network or HF_ENDPOINT, or set INDEX_DIR to a local artifact folder.")


def open_cached(repo_id: str, revision: str | None, cache_dir: Path | None, work_dir: Path,
                why: str) -> tuple[Gallery, IndexSource] | None:
    """The newest cached copy of the repo that verifies, with a notice starting with `why`; None if none is cached."""
    last_problem = None
    for candidate in cached_snapshots(repo_id, revision, cache_dir):
        try:
            gallery = _open(candidate, work_dir)
        except ArtifactError as problem:
            last_problem = problem
            log.warning("cached copy %s refused: %s", candidate.revision[:12], problem)
            continue
        candidate.notice = f"{why}; serving the cached copy of {repo_id} at revision {candidate.revision[:12]}."
        log.warning(candidate.notice)
        return gallery, candidate
    if last_problem:
        raise last_problem
    return None


def work_folder(work_dir: Path | None = None) -> Path:
    """The app's own cache (verification stamps, thumbnails, the starter index): CLIPSEARCH_CACHE or ~/.cache."""
    return Path(work_dir or os.environ.get("CLIPSEARCH_CACHE") or Path.home() / ".cache" / "clipsearch")


def open_source(source: IndexSource, work_dir: Path | None = None) -> Gallery:
    """Verify and open the artifacts of `source`."""
    return _open(source, work_folder(work_dir))


def _open(source: IndexSource, work_dir: Path) -> Gallery:
    # Thumbnails are materialised per build (keyed by the manifest's hash), so a rebuild never shows stale ones.
    manifest = source.folder / MANIFEST
    key = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "none"
    if source.repo_id and source.folder.parent.name == "snapshots":
        # A download in the HF cache: its snapshot folder only links into blobs/, and a blob that is still there is
        # never fetched again, so deleting the snapshot folder alone would bring the same damaged bytes back.
        listed = Manifest.read(source.folder)
        try:
            verify_files(source.folder, listed, work_dir)
        except ArtifactError as error:
            raise ArtifactError(f"{error} For this download that means deleting {source.folder.parent.parent} "
                                "(the Hugging Face cache of the repo), then restarting.") from None
    return Gallery.open(source.folder, stamp_dir=work_dir, thumb_cache=work_dir / "thumbs" / key)
