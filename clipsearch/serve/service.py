"""App start-up: settings from the environment, the verified gallery, the manifest's own model, timing and memory."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..core.batcher import ModelThread
from ..core.gallery import Gallery
from ..core.manifest import OBJECTS_INDEX, OBJECTS_META
from ..core.objects import ObjectIndex
from ..core.search import Searcher
from ..hub.encoders import served_encoder
from .download import (
    IndexRepoNotFound,
    IndexSource,
    fetch_verified,
    open_cached,
    open_gallery,
    open_source,
    work_folder,
)
from .settings import Settings
from .starter import build_starter

log = logging.getLogger(__name__)


@dataclass
class Service:
    searcher: Searcher
    source: IndexSource
    startup_seconds: float
    rss_mb: float


def rss_mb() -> float:
    """Resident memory of this process now (Linux); 0 where /proc is not available."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_index(settings: Settings) -> tuple[Gallery, IndexSource]:
    """INDEX_DIR, else INDEX_REPO from the Hub (or its verified cache); a newcomer's first run, where the default repo
    does not exist yet, gets the cached copy of it or else a starter index built here (an explicit INDEX_REPO that
    cannot be found stays an error)."""
    try:
        return open_gallery(index_dir=settings.index_dir, repo_id=settings.index_repo,
                            revision=settings.index_revision, endpoint=settings.endpoint, token=settings.token,
                            precision=settings.precision)
    except IndexRepoNotFound:
        if not settings.default_repo or settings.index_revision or settings.index_dir:
            raise
    why = f"{settings.index_repo} was not found on the Hub"
    if served := open_cached(settings.index_repo, None, None, work_folder(), why):
        return served
    source = build_starter(work_folder(), endpoint=settings.endpoint)
    return open_source(source), source


def start(settings: Settings) -> Service:
    """Build the heavy objects once: verified artifacts, then exactly the model the manifest names."""
    started = time.perf_counter()
    # Every forward pass runs on one thread (see ModelThread), loading and calibration included.
    model_thread = ModelThread()
    model_thread.run(torch.set_num_threads, max(1, os.cpu_count() or 1))
    gallery, source = open_index(settings)
    model = gallery.manifest.model
    # Exactly the manifest's model: the build's int8 serving copy where it has one, else the checkpoint in the
    # fastest CPU path this host has (int8 / bf16), kept only if it agrees with fp32 (see served_encoder).
    fetch = partial(fetch_verified, source, gallery.manifest, work_folder()) if source.fetch else None
    encoder = model_thread.run(served_encoder, gallery.manifest, source.folder, settings.precision, fetch)
    service = Service(Searcher(gallery, encoder, model_thread), source, time.perf_counter() - started, rss_mb())
    if source.remote:  # thumbnail packs a cold start left for later: fetched now that the model is down
        source.remote.resume()
    attach_objects(service.searcher, source, work_folder())
    log.info("ready: %d images, model %s, started in %.1f s, resident memory %.0f MB", len(gallery),
             model["model_id"], service.startup_seconds, service.rss_mb)
    return service


def attach_objects(searcher: Searcher, source: IndexSource, stamp_dir: Path | None) -> threading.Thread | None:
    """Give the searcher the build's object index: at once when its files are here (INDEX_DIR, a small download),
    else fetched, verified and attached by a background thread while whole-image searches are already answered
    (a cold start of a COCO build does not wait for ~0.5 GB of object codes). Returns that thread, if any."""
    manifest = searcher.gallery.manifest
    if manifest.objects is None:
        return None
    names = (OBJECTS_INDEX, OBJECTS_META)
    if all((source.folder / name).is_file() for name in names):
        searcher.objects = ObjectIndex.open(source.folder, manifest, stamp_dir=stamp_dir)
        log.info("object index: %d boxes", len(searcher.objects))
        return None
    if source.fetch is None:
        log.warning("the object index of this build is not here and cannot be fetched (a cached copy that never got "
                    "it): object and region searches answer with a sentence until a start that reaches the Hub")
        return None

    def fetch_and_attach() -> None:
        try:
            for name in names:
                source.fetch(name)
            searcher.objects = ObjectIndex.open(source.folder, manifest, stamp_dir=stamp_dir)
            log.info("object index: %d boxes, downloaded and verified after the page could answer",
                     len(searcher.objects))
        except Exception as error:  # noqa: BLE001 - whole-image search keeps serving; the log says why
            log.error("the object index could not be loaded (%s: %s); object and region searches answer with a "
                      "sentence", type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")

    thread = threading.Thread(target=fetch_and_attach, name="object-index", daemon=True)
    thread.start()
    return thread
