"""Cold start: the artifacts and the model's files start downloading while the app still imports torch and Gradio."""

from __future__ import annotations

import logging
import threading

from ..core.manifest import Manifest
from ..hub.models import resolve_model
from .download import download, work_folder
from .settings import Settings

log = logging.getLogger(__name__)


def begin(settings: Settings) -> list[threading.Thread]:
    """Fetch into the Hub cache, in background threads, what `service.start` will open: the artifacts (as its lazy
    download would) and, as soon as the manifest names it, the model. start() then finds each file in the cache, or
    waits on huggingface_hub's lock for one still arriving, so nothing is fetched twice. This is only a head start:
    every failure is left to start(), which reports it as it always does. INDEX_DIR needs no download."""
    if settings.index_dir:
        return []
    threads: list[threading.Thread] = []

    def model(manifest: Manifest) -> None:
        spec = manifest.model
        # a build's serving copy comes with the artifacts: then only the model's config and processor files
        weights = not (manifest.serving and settings.serving_copy)
        threads.append(_background("prefetch-model", resolve_model, spec["model_id"], spec.get("revision"), weights))

    def artifacts() -> None:
        download(settings.index_repo, settings.index_revision, endpoint=settings.endpoint, token=settings.token,
                 lazy=True, stamp_dir=work_folder(), on_manifest=model, precision=settings.precision)

    threads.append(_background("prefetch-artifacts", artifacts))
    return threads


def _background(name: str, job, *args) -> threading.Thread:
    """A daemon thread (a failed start exits without waiting for it) whose failure is only logged."""
    def run() -> None:
        try:
            job(*args)
        except Exception as error:  # noqa: BLE001 - start() meets the same failure and reports it
            log.debug("%s stopped early: %s", name, error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
