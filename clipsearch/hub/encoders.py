"""The encoder of a Hub model id or a local model folder: its files fetched (models.resolve_model), then loaded."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.encoder import Encoder
from ..core.errors import EncoderError
from ..core.manifest import Manifest
from .models import resolve_model

log = logging.getLogger(__name__)


def load_encoder(model_id: str, revision: str | None = None, device: str | torch.device = "auto",
                 **options) -> Encoder:
    """The encoder of a Hub model id (its files fetched first, see resolve_model) or of a local model folder;
    `options` go to Encoder.load (precision, min_cosine, batch)."""
    folder, resolved = resolve_model(model_id, revision)
    return Encoder.load(folder, resolved, device, model_id=model_id, **options)


def served_encoder(manifest: Manifest, artifacts: Path, precision: str) -> Encoder:
    """The app's CPU encoder for a build: exactly the model its manifest names. Where the build published a serving
    copy, `artifacts` holds it and `precision` is auto or int8, its int8 weights with the model's config and
    processor files (the checkpoint is never fetched); otherwise, or if that copy does not reproduce the build's
    fp32 vectors on this CPU, the checkpoint in `precision` (see Encoder.load). With `precision` auto, pictures and
    texts go through the build's ONNX graphs where it has them and they agree with fp32 here (core.tower_graphs)."""
    spec = manifest.model
    model_id, revision = spec["model_id"], spec.get("revision")
    copy = artifacts / manifest.serving.file if manifest.serving else None
    if copy is not None and precision in ("auto", "int8") and copy.is_file():
        folder, resolved = resolve_model(model_id, revision, weights=False)
        try:
            encoder = Encoder.load(folder, resolved, "cpu", model_id=model_id, serving_copy=copy)
        except EncoderError as error:
            log.warning("%s; loading the checkpoint of %s instead", error, model_id)
        else:
            if precision == "auto":
                _use_graphs(encoder, manifest, artifacts)
            return encoder
    folder, resolved = resolve_model(model_id, revision)
    return Encoder.load(folder, resolved, "cpu", model_id=model_id, precision=precision,
                        batch=1)  # auto, on AMX: the faster for one query


def _use_graphs(encoder: Encoder, manifest: Manifest, artifacts: Path) -> None:
    """Each tower graph the build published and this CPU reproduces fp32 with replaces its torch tower, whose
    memory is handed back; one that fails its check leaves torch's tower answering, with a warning."""
    serving = manifest.serving
    for graph, use, release, what in ((serving.image_graph, encoder.use_image_graph, encoder.release_image_tower,
                                       "pictures"),
                                      (serving.text_graph, encoder.use_text_graph, encoder.release_text_tower,
                                       "texts")):
        if graph is None or not (artifacts / graph.file).is_file():
            continue
        try:
            use(artifacts / graph.file)
            release()
        except EncoderError as error:
            log.warning("%s; %s are embedded by the serving copy's torch tower", error, what)
