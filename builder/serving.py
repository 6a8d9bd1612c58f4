"""The build's serving copy of its encoder (clipsearch.core.serving, core.tower_graphs): what the Space loads."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clipsearch.core.encoder import Encoder, ModelInfo
from clipsearch.core.errors import EncoderError, first_line
from clipsearch.core.manifest import (
    IMAGE_GRAPH,
    IMAGE_TOWER_FILE,
    SERVING_MODEL,
    TEXT_GRAPH,
    TEXT_TOWER_FILE,
    GraphInfo,
    ServingInfo,
)
from clipsearch.core.precision import MIN_CALIBRATION_COSINE, agreement, calibration_images, reference_vectors
from clipsearch.core.serving import has_tower, save_serving_copy
from clipsearch.core.tower_graphs import export_image_graph, export_text_graph, has_text_graph
from clipsearch.hub.encoders import load_encoder

log = logging.getLogger("builder")
TOWERS = {"image": IMAGE_TOWER_FILE, "text": TEXT_TOWER_FILE}  # where each torch tower a graph replaces is kept


def write_serving_copy(info: ModelInfo, folder: Path) -> ServingInfo | None:
    """Convert the build's model to int8 on the CPU as the Space would, check it against fp32 as the Space will,
    and write it to `folder`, with its tower graphs, each torch tower a graph replaces in a file of its own (the Space
    fetches it only where that graph fails its check there); None (the Space then converts the checkpoint itself)
    where that fails here."""
    graphs: list[GraphInfo] = []
    try:
        # A CPU fp32 copy of exactly the build's model (its files are in the cache already): the build's own
        # encoder may be on a GPU, or in a CPU fast path, and it is the fp32 vectors the copy must reproduce.
        encoder = load_encoder(info.model_id, info.revision, "cpu", precision="fp32")
        references = reference_vectors(encoder)
        image_graph = write_image_graph(encoder, folder, references["images"])
        text_graph = write_text_graph(encoder, folder, references["texts"]) if "texts" in references else None
        graphs = [graph for graph in (image_graph, text_graph) if graph]
        encoder.use_precision("int8")
        cosine = agreement(encoder, references)
    except (EncoderError, RuntimeError, NotImplementedError) as error:  # int8 kernels missing on this CPU build
        log.warning("no serving copy: the int8 conversion failed here (%s); the Space will convert the checkpoint",
                    first_line(error))
    else:
        if cosine >= MIN_CALIBRATION_COSINE:
            apart = {kind: graph for kind, graph in (("image", image_graph), ("text", text_graph))
                     if graph and has_tower(encoder.model, kind)}
            for kind, graph in apart.items():
                graph.tower = TOWERS[kind]
            save_serving_copy(encoder.model, folder / SERVING_MODEL, references,
                              {kind: folder / graph.tower for kind, graph in apart.items()})
            size = (folder / SERVING_MODEL).stat().st_size
            log.info("serving copy: %s, %.0f MB (int8), cosine to fp32 %.5f%s", SERVING_MODEL, size / 1e6, cosine,
                     "".join(f"; {kind} tower apart: {graph.tower}, {(folder / graph.tower).stat().st_size / 1e6:.0f} "
                             "MB" for kind, graph in apart.items()))
            return ServingInfo(file=SERVING_MODEL, precision="int8", cosine=round(cosine, 6), size=size,
                               image_graph=image_graph, text_graph=text_graph)
        log.warning("no serving copy: int8 agrees with fp32 only to cosine %.5f (< %g) for this model; the Space "
                    "will serve it in another precision", cosine, MIN_CALIBRATION_COSINE)
    for graph in graphs:  # the graphs written above: the app loads them only beside the copy
        (folder / graph.file).unlink()
    return None


def write_image_graph(encoder: Encoder, folder: Path, references: np.ndarray) -> GraphInfo | None:
    """Export the fp32 `encoder`'s image tower as an int8 ONNX graph (core.tower_graphs) to `folder` and check it as
    the Space will; None (the Space then embeds pictures with the serving copy's torch tower) where that fails."""
    if set(encoder.preprocess(calibration_images(encoder.info.image_size))) != {"pixel_values"}:
        log.info("no image graph: %s takes more than pixels (a NaFlex processor)", encoder.info.model_id)
        return None
    return _write_graph("image", encoder, folder / IMAGE_GRAPH, references)


def write_text_graph(encoder: Encoder, folder: Path, references: np.ndarray) -> GraphInfo | None:
    """Export the fp32 `encoder`'s text tower as an int8 ONNX graph to `folder` and check it as the Space will; None
    (the Space then embeds texts with the serving copy's torch tower) for a model outside the SigLIP family, or where
    that fails."""
    if not has_text_graph(encoder):
        log.info("no text graph: %s is not of the SigLIP family", encoder.info.model_id)
        return None
    return _write_graph("text", encoder, folder / TEXT_GRAPH, references)


def _write_graph(kind: str, encoder: Encoder, path: Path, references: np.ndarray) -> GraphInfo | None:
    export, use = {"image": (export_image_graph, encoder.use_image_graph),
                   "text": (export_text_graph, encoder.use_text_graph)}[kind]
    try:
        export(encoder, path, references)  # writes `path` last, once the graph is whole
    except Exception as error:  # noqa: BLE001 - the tracer and onnxruntime raise many types; the copy still serves
        log.warning("no %s graph: the ONNX export failed here (%s: %s); the Space embeds %ss with the serving copy's "
                    "torch tower", kind, type(error).__name__, first_line(error), kind)
        return None
    try:
        cosine = use(path)  # the app's own check: the graph's vectors against fp32's
    except EncoderError as error:
        log.warning("no %s graph: %s; the Space embeds %ss with the serving copy's torch tower", kind, error, kind)
        path.unlink()  # the graph just written
        return None
    encoder.image_graph = encoder.text_graph = None  # the serving copy is converted from the torch towers
    size = path.stat().st_size
    log.info("%s graph: %s, %.0f MB (onnxruntime int8), cosine to fp32 %.5f", kind, path.name, size / 1e6, cosine)
    return GraphInfo(file=path.name, cosine=round(cosine, 6), size=size)
