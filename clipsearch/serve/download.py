"""Artifacts from the Hub for the app: latest build tag, pinned snapshot download, verified cache fallback."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url, scan_cache_dir
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

from ..core.errors import ArtifactError, ThumbnailUnavailable, first_line
from ..core.gallery import Gallery, ThumbnailStore, holds_vectors
from ..core.manifest import (
    EMBEDDINGS,
    MANIFEST,
    OBJECTS_INDEX,
    OBJECTS_META,
    OBJECTS_VECTORS,
    TAG_PREFIX,
    FileEntry,
    Manifest,
    is_verified,
    remember_verified,
    sha256_file,
    verify_files,
)
from ..hub.errors import hub_unreachable

log = logging.getLogger(__name__)

# A lazy download fetches everything before serving anyway when all that is missing totals at most this: deferring
# only pays for big thumbnail packs (COCO: ~2 GB), and a small set is then complete and verified from the start.
EAGER_BYTES = 64 * 2**20
DOWNLOAD_THREADS = 4
# The background pack fetch waits for RemotePacks.resume() (the app calls it once the model is loaded, so the packs
# do not share the network with the model's download), or at most this long.
PACKS_WAIT_SECONDS = 60.0


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
    remote: RemotePacks | None = None  # a lazy download: thumbnail packs still to fetch once the app serves
    # a lazy download: fetches a listed file at the served commit (the object index, once whole images are served)
    fetch: Callable[[str], Path] | None = None


def fetch_verified(source: IndexSource, manifest: Manifest, stamp_dir: Path, name: str) -> Path:
    """A listed file that a lazy download left on the Hub, fetched at the served commit and checked against the
    manifest (ArtifactError naming it where it differs): a torch tower kept apart from the serving copy, wanted only
    where its graph fails its check on this CPU (clipsearch.hub.encoders)."""
    path = source.fetch(name)
    verify_files(source.folder, manifest, stamp_dir, names=[name])
    return path


def latest_tag(api: HfApi, repo_id: str) -> str | None:
    """The newest build tag; also the reachability check (snapshot_download alone silently falls back to cache)."""
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tags = sorted(tag.name for tag in refs.tags if tag.name.startswith(TAG_PREFIX))
    return tags[-1] if tags else None


def download(repo_id: str, revision: str | None, *, endpoint: str | None = None, token: str | None = None,
             cache_dir: Path | None = None, lazy: bool = False, stamp_dir: Path | None = None,
             on_manifest: Callable[[Manifest], None] | None = None, precision: str = "auto") -> IndexSource:
    """Fetch the artifacts at `revision` (default: the newest build tag, else main) into the HF cache: the manifest,
    then exactly the files it lists, all at one commit (whatever else the repo holds is not downloaded).

    lazy (the app's cold start): fetch now only what serving needs: the index, the metadata, and embeddings.npy
    unless the index stores the vectors itself (then it is never fetched); the thumbnail packs are left to
    `source.remote`, which fetches them in the background once the app serves (range requests meanwhile). When all
    that is missing totals at most EAGER_BYTES, everything is fetched now, but objects.npy (for --append only).
    Each file is hashed as soon as it is down,
    while the others still download, and stamped verified in `stamp_dir`, so opening it does not read it again.
    `on_manifest` is called with the manifest before the other files are fetched (the prefetch starts the model's
    download there). The serving files an app computing in `precision` never loads are not fetched (see
    Manifest.unused_serving_files)."""
    api = HfApi(endpoint=endpoint, token=token)
    newest = latest_tag(api, repo_id)
    ref = revision or newest or "main"
    commit = api.dataset_info(repo_id, revision=ref).sha
    log.info("downloading %s at %s (%s) from %s", repo_id, ref, commit[:12], api.endpoint)

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, repo_type="dataset", revision=commit, endpoint=endpoint,
                                    token=token, cache_dir=cache_dir))

    try:
        listed = fetch(MANIFEST)
    except EntryNotFoundError:
        raise ArtifactError(f"INDEX_REPO={repo_id} has no {MANIFEST} at {ref}: it holds no build. Publish one with "
                            "python -m builder.build --push, or set INDEX_REVISION to a build tag.") from None
    folder = listed.parent
    manifest = Manifest.read(folder)
    if on_manifest:
        on_manifest(manifest)
    unwanted = manifest.unused_serving_files(precision)
    if lazy:  # the object vectors are for --append only: an app never reads them, however small
        unwanted.add(OBJECTS_VECTORS)
    now, later = sorted(set(manifest.files) - unwanted), []
    if lazy:
        missing = [name for name in now if not (folder / name).exists()]  # in manifest order (sorted)
        if sum(manifest.files[name].size for name in missing) > EAGER_BYTES:
            later = [name for name in manifest.thumbnails.files if name in missing]
            # the object index arrives after the page answers whole-image searches (see serve.service)
            unused = {EMBEDDINGS} if holds_vectors(manifest.index) else set()
            now = [name for name in missing if name not in {*later, *unused, OBJECTS_INDEX, OBJECTS_META}]

    def fetch_and_hash(name: str) -> None:
        path, entry = fetch(name), manifest.files[name]
        if stamp_dir is not None and not is_verified(path, entry, stamp_dir) and \
                path.stat().st_size == entry.size and sha256_file(path) == entry.sha256:
            remember_verified(path, entry, stamp_dir)  # a mismatch is reported, with advice, when it is opened

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch_and_hash, now))
    source = IndexSource(folder=folder, repo_id=repo_id, revision=commit, ref=ref, fetch=fetch)
    if later:
        source.remote = RemotePacks(repo_id, commit, {name: manifest.files[name] for name in later},
                                    endpoint=endpoint, token=token, cache_dir=cache_dir)
        log.info("serving before %d thumbnail packs (%.0f MB) are local: they download in the background",
                 len(later), sum(manifest.files[name].size for name in later) / 1e6)
    return source


class RemotePacks:
    """Thumbnail packs of a pinned download that were not local when the app started serving.

    Until a pack is local, a thumbnail is read with an HTTP range request for exactly its bytes (read_range). A
    background thread downloads the packs with hf_hub_download into the HF cache, one after the other, checks each
    one's size and sha256 against the manifest and then serves it from disk; a pack that fails is refused (never
    served, its thumbnails show a placeholder, the log says why) and its cached copy is removed so the next start
    fetches it again.
    """

    def __init__(self, repo_id: str, commit: str, packs: dict[str, FileEntry], *, endpoint: str | None,
                 token: str | None, cache_dir: Path | None):
        self.repo_id, self.commit, self.packs = repo_id, commit, packs
        self.endpoint, self.token, self.cache_dir = endpoint, token, cache_dir
        self.done = threading.Event()
        self.go = threading.Event()
        self.refused: list[str] = []

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        """Exactly bytes [offset, offset + size) of pack `name` at the pinned commit: one GET with a Range header
        through huggingface_hub's session (its headers, auth, redirects to the CDN, one retry). A server that
        ignores the Range (200: the whole file) is refused before its body is read: never 512 MB for 15 KB."""
        if size == 0:
            return b""
        url = hf_hub_url(self.repo_id, name, repo_type="dataset", revision=self.commit, endpoint=self.endpoint)
        headers = {**build_hf_headers(token=self.token), "Range": f"bytes={offset}-{offset + size - 1}",
                   "Accept-Encoding": "identity"}
        with http_stream_backoff("GET", url, headers=headers, max_retries=1,
                                 timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            hf_raise_for_status(response)
            if response.status_code != 206:
                raise ThumbnailUnavailable(f"the Hub answered {response.status_code}, not 206, to a range request "
                                           f"for {size} bytes of {name}; not read")
            return response.read()

    def start(self, store: ThumbnailStore, stamp_dir: Path | None) -> threading.Thread:
        """The background fetch; it begins on resume() (or after PACKS_WAIT_SECONDS)."""
        thread = threading.Thread(target=self._wait_and_run, args=(store, stamp_dir), name="thumbnail-packs",
                                  daemon=True)
        thread.start()
        return thread

    def resume(self) -> None:
        """Start fetching the packs now (the app is about to serve: nothing else is downloading)."""
        self.go.set()

    def _wait_and_run(self, store: ThumbnailStore, stamp_dir: Path | None) -> None:
        self.go.wait(PACKS_WAIT_SECONDS)
        self._run(store, stamp_dir)

    def _run(self, store: ThumbnailStore, stamp_dir: Path | None) -> None:
        try:
            for name, entry in self.packs.items():
                self._fetch(store, store.files.index(name), name, entry, stamp_dir)
        finally:
            self.done.set()

    def _fetch(self, store: ThumbnailStore, number: int, name: str, entry: FileEntry, stamp_dir: Path | None):
        try:
            path = Path(hf_hub_download(self.repo_id, name, repo_type="dataset", revision=self.commit,
                                        endpoint=self.endpoint, token=self.token, cache_dir=self.cache_dir))
            good = is_verified(path, entry, stamp_dir) or (
                path.stat().st_size == entry.size and sha256_file(path) == entry.sha256)
        except Exception as error:  # noqa: BLE001 - the pack stays remote: its thumbnails are still fetched by range
            log.warning("thumbnail pack %s could not be downloaded (%s: %s); its thumbnails are fetched one at a time "
                        "until the next start", name, type(error).__name__, first_line(error, 160))
            return
        if good:
            remember_verified(path, entry, stamp_dir)
            store.attach(number, path)
            log.info("thumbnail pack %s downloaded and verified (%.0f MB)", name, entry.size / 1e6)
            return
        store.refuse(number)
        self.refused.append(name)
        blob = path.resolve()
        path.unlink(missing_ok=True)  # the snapshot's link and the blob it points to: this download's own files
        blob.unlink(missing_ok=True)
        log.error("thumbnail pack %s of %s at %s does not match the sha256 in the manifest (corrupted or tampered): "
                  "its %d thumbnails will not be served (a placeholder is shown) while search keeps working; its "
                  "cached copy was removed, so the next start downloads it again.", name, self.repo_id,
                  self.commit[:12], store.rows_in(number))


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
                 token: str | None = None, cache_dir: Path | None = None, work_dir: Path | None = None,
                 precision: str = "auto") -> tuple[Gallery, IndexSource]:
    """The verified gallery to serve: INDEX_DIR, else the Hub, else the newest cached copy that verifies
    (`precision`: what the app computes in, which decides the serving files it needs, see download)."""
    work_dir = work_folder(work_dir)
    if index_dir:
        folder = Path(index_dir)
        if not folder.is_dir():
            raise ArtifactError(f"INDEX_DIR={index_dir} is not a folder; point it at a built artifact folder.")
        source = IndexSource(folder=folder, repo_id=None, revision=None, ref=None)
        return _open(source, work_dir), source
    try:
        source = download(repo_id, revision, endpoint=endpoint, token=token, cache_dir=cache_dir, lazy=True,
                          stamp_dir=work_dir, precision=precision)
        return _open(source, work_dir), source
    except (RepositoryNotFoundError, GatedRepoError):
        raise IndexRepoNotFound(f"INDEX_REPO={repo_id}: no such dataset repo, or it is private (set the HF_TOKEN "
                            "secret to a token that can read it).") from None
    except RevisionNotFoundError:
        raise ArtifactError(f"INDEX_REVISION={revision}: no such tag, branch or commit in {repo_id}.") from None
    except Exception as error:  # noqa: BLE001 - classified below; anything else is re-raised
        if not hub_unreachable(error):
            raise
        log.warning("the Hub cannot be reached (%s); looking for a verified cached copy", type(error).__name__)
        reason = first_line(error, 160)
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
    absent: set[str] = set()
    if source.repo_id and source.folder.parent.name == "snapshots":
        # A download in the HF cache: its snapshot folder only links into blobs/, and a blob that is still there is
        # never fetched again, so deleting the snapshot folder alone would bring the same damaged bytes back.
        listed = Manifest.read(source.folder)
        # Listed files a lazy download left for later (or that a cached copy never got); Gallery.open refuses the
        # set if one of them is needed to serve. Every file that is here is verified before it is used.
        absent = {name for name in listed.files if not (source.folder / name).exists()}
        try:
            verify_files(source.folder, listed, work_dir, names=[n for n in listed.files if n not in absent])
        except ArtifactError as error:
            raise ArtifactError(f"{error} For this download that means deleting {source.folder.parent.parent} "
                                "(the Hugging Face cache of the repo), then restarting.") from None
    remote = source.remote
    gallery = Gallery.open(source.folder, stamp_dir=work_dir, thumb_cache=work_dir / "thumbs" / key, absent=absent,
                           fetch_range=remote.read_range if remote else None)
    if remote:
        remote.start(gallery.thumbnails, work_dir)
    elif unfetched := [n for n in gallery.manifest.thumbnails.files if n in absent]:
        log.warning("%d thumbnail packs of this cached copy were never downloaded (%s): their thumbnails show a "
                    "placeholder until a start that reaches the Hub downloads them", len(unfetched),
                    ", ".join(unfetched))
    return gallery
