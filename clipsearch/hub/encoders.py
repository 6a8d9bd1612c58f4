"""The encoder of a Hub model id or a local model folder: its files fetched (models.resolve_model), then loaded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.encoder import Encoder
from ..core.errors import EncoderError, first_line
from ..core.manifest import GraphInfo, Manifest
from ..core.tower_graphs import TowerGraph
from .models import resolve_model

log = logging.getLogger(__name__)


def load_encoder(model_id: str, revision: str | None = None, device: str | torch.device = "auto",
                 **options) -> Encoder:
    """The encoder of a Hub model id (its files fetched first, see resolve_model) or of a local model folder;
    `options` go to Encoder.load (precision, min_cosine, batch)."""
    folder, resolved = resolve_model(model_id, revision)
    return Encoder.load(folder, resolved, device, model_id=model_id, **options)


def served_encoder(manifest: Manifest, artifacts: Path, precision: str,
                   fetch: Callable[[str], Path] | None = None) -> Encoder:
    """The app's CPU encoder for a build: exactly the model its manifest names. Where the build published a serving
    copy, `artifacts` holds it and `precision` is auto or int8, its int8 weights with the model's config and
    processor files (the checkpoint is never fetched); otherwise, or if that copy does not reproduce the build's
    fp32 vectors on this CPU, the checkpoint in `precision` (see Encoder.load). With `precision` auto, pictures and
    texts go through the build's ONNX graphs where it has them and they agree with fp32 here (core.tower_graphs),
    and the torch towers they replace are not loaded. A tower the build kept apart that is needed after all (its
    graph failed its check here, or `precision` is int8) is taken from `artifacts` or else brought by `fetch` (the
    served commit's file, verified: serve.download.fetch_verified)."""
    spec = manifest.model
    model_id, revision = spec["model_id"], spec.get("revision")
    copy = artifacts / manifest.serving.file if manifest.serving else None
    if copy is not None and precision in ("auto", "int8") and copy.is_file():
        folder, resolved = resolve_model(model_id, revision, weights=False)
        try:
            return _from_serving_copy(folder, resolved, manifest, artifacts, precision, fetch)
        except EncoderError as error:
            log.warning("%s; loading the checkpoint of %s instead", error, model_id)
    folder, resolved = resolve_model(model_id, revision)
    return Encoder.load(folder, resolved, "cpu", model_id=model_id, precision=precision,
                        batch=1)  # auto, on AMX: the faster for one query


def _from_serving_copy(folder: Path, revision: str | None, manifest: Manifest, artifacts: Path, precision: str,
                       fetch: Callable[[str], Path] | None) -> Encoder:
    """The serving copy's encoder (see served_encoder): first without the towers kept apart whose graphs may replace
    them; a graph that fails its check here has its tower fetched and the copy loaded again with it."""
    serving, model_id = manifest.serving, manifest.model["model_id"]
    graphs = {kind: graph for kind, graph in (("image", serving.image_graph), ("text", serving.text_graph)) if graph}
    apart = {kind: graph.tower for kind, graph in graphs.items() if graph.tower}  # towers in files of their own
    if precision != "auto":
        graphs = {}  # CLIPSEARCH_PRECISION=int8: torch's towers only
    without = {kind for kind in apart if kind in graphs}

    def load(left_out: set[str]) -> Encoder:
        towers = [_tower_file(apart[kind], artifacts, fetch) for kind in apart if kind not in left_out]
        return Encoder.load(folder, revision, "cpu", model_id=model_id, serving_copy=artifacts / serving.file,
                            tower_files=towers, without=left_out)

    encoder = load(without)
    serving_graphs = _use_graphs(encoder, graphs, artifacts)
    if failed := without - set(serving_graphs):
        log.warning("the serving copy's torch %s tower%s needed after all: loading %s", " and ".join(sorted(failed)),
                    "s are" if len(failed) > 1 else " is", ", ".join(apart[kind] for kind in sorted(failed)))
        encoder = load(without - failed)
        for kind, graph in serving_graphs.items():  # already checked: they serve as they are
            setattr(encoder, f"{kind}_graph", graph)
    return encoder


def _tower_file(name: str, artifacts: Path, fetch: Callable[[str], Path] | None) -> Path:
    """The serving copy's tower file `name`: in `artifacts`, or fetched; EncoderError with a sentence if neither."""
    if (artifacts / name).is_file():
        return artifacts / name
    if fetch is None:
        raise EncoderError(f"the serving copy's {name} is needed and is not here (a cached copy that never got it, "
                           "or INDEX_DIR without it)")
    try:
        return fetch(name)
    except Exception as error:  # noqa: BLE001 - huggingface_hub's many types, or the ArtifactError of its check
        raise EncoderError(f"the serving copy's {name} is needed and could not be fetched ({first_line(error)})") \
            from None


def _use_graphs(encoder: Encoder, graphs: dict[str, GraphInfo], artifacts: Path) -> dict[str, TowerGraph]:
    """Each of `graphs` that this CPU runs as the build's fp32 embeds its inputs from now on, and its torch tower
    (if loaded) hands its memory back; one that fails its check leaves torch's tower answering, with a warning.
    Returns the graphs that serve, by kind."""
    serving = {}
    for kind, graph in graphs.items():
        use, release, what = {"image": (encoder.use_image_graph, encoder.release_image_tower, "pictures"),
                              "text": (encoder.use_text_graph, encoder.release_text_tower, "texts")}[kind]
        try:
            if not (artifacts / graph.file).is_file():
                raise EncoderError(f"{graph.file} is not here")
            use(artifacts / graph.file)
            release()
            serving[kind] = getattr(encoder, f"{kind}_graph")
        except EncoderError as error:
            log.warning("%s; %s are embedded by the serving copy's torch tower", error, what)
    return serving
