"""The towers' ONNX graphs: a build exports them beside the serving copy (the image graph for every family that takes
pixels alone, the text graph for the SigLIP family), the app embeds pictures and texts with them as fp32 does and
ranks as torch does; a graph that disagrees with the build's fp32 vectors, or cannot be loaded, is refused with a
sentence and the serving copy's torch tower answers. Tiny real checkpoints of each family (testkit.models)."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import onnx
import pytest
from PIL import Image

from builder.serving import write_image_graph, write_text_graph
from clipsearch.core.encoder import Encoder
from clipsearch.core.errors import EncoderError
from clipsearch.core.manifest import (
    IMAGE_GRAPH,
    IMAGE_TOWER_FILE,
    INDEX,
    SERVING_MODEL,
    TEXT_GRAPH,
    TEXT_TOWER_FILE,
    Manifest,
    sha256_file,
)
from clipsearch.core.precision import calibration_images, reference_vectors
from clipsearch.core.tower_graphs import export_image_graph, export_text_graph
from clipsearch.hub.encoders import served_encoder
from testkit.helpers import run_build
from testkit.models import EXTRA_KINDS, KINDS, draw_shape, save_tiny_clip
from testkit.models.shapes import combos

# What visitors type: other scripts, emoji, a text past the 64 tokens, one word.
TEXTS = ["a red circle", "КРАСНЫЙ КРУГ на белом фоне", "红色的圆形", "دائرة حمراء", "लाल वृत्त", "🔴🟥", "circle",
         " ".join(["a photo of a big blue square on a plain background"] * 10)]


def _pictures(count: int = 5) -> list[Image.Image]:
    return [draw_shape(color, shape, size=64, seed=n) for n, (color, shape) in enumerate(combos()[:count])]


def _operators(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("kind", [*KINDS, *EXTRA_KINDS])
def test_the_graph_embeds_pictures_as_the_fp32_model_does(tmp_path, kind):
    folder = save_tiny_clip(tmp_path / kind, kind)
    encoder = Encoder.load(folder, device="cpu")
    fp32 = encoder.encode_images(_pictures())
    info = write_image_graph(encoder, tmp_path, reference_vectors(encoder)["images"])
    if set(encoder.preprocess(_pictures(1))) != {"pixel_values"}:  # NaFlex: patches and their mask, not exported
        assert info is None and not (tmp_path / IMAGE_GRAPH).exists()
        return
    assert info.file == IMAGE_GRAPH and info.cosine >= 0.99 and info.size == (tmp_path / IMAGE_GRAPH).stat().st_size
    assert "QAttention" in _operators(tmp_path / IMAGE_GRAPH)  # attention fused by onnxruntime, then made int8
    assert encoder.image_graph is None  # the builder's encoder computes as before
    assert encoder.model.config._attn_implementation == "sdpa"  # traced with eager attention, then given back
    served = Encoder.load(folder, device="cpu")
    assert served.use_image_graph(tmp_path / IMAGE_GRAPH) >= 0.99
    served.release_image_tower()  # as the app does: the torch tower's weights are freed
    batch = served.encode_images(_pictures())
    one_by_one = np.concatenate([served.encode_images([picture]) for picture in _pictures()])
    # the batch axis is free (the app's micro-batches); activations are quantised per call, so a batch shares a scale
    assert np.min(np.sum(batch * one_by_one, axis=1)) >= 0.999
    assert np.min(np.sum(batch * fp32, axis=1)) >= 0.99
    served.use_precision("fp32")  # another precision: pictures are computed in it again (reloaded), not by the graph
    assert served.image_graph is None and np.abs(served.encode_images(_pictures()) - fp32).max() < 1e-5


def test_a_build_publishes_the_graph_and_the_app_ranks_pictures_as_torch_does(shapes_artifacts, shapes_folder):
    manifest = Manifest.read(shapes_artifacts)
    graph = manifest.serving.image_graph
    assert graph.file == IMAGE_GRAPH and manifest.files[IMAGE_GRAPH].size == graph.size
    assert manifest.files[IMAGE_GRAPH].sha256 == sha256_file(shapes_artifacts / IMAGE_GRAPH)
    by_graph = served_encoder(manifest, shapes_artifacts, "auto")
    by_torch = served_encoder(manifest, shapes_artifacts, "int8")  # CLIPSEARCH_PRECISION=int8: torch's tower only
    assert by_graph.image_graph is not None and by_torch.image_graph is None
    assert by_graph.precision == by_torch.precision == "int8"
    pixels = by_graph.preprocess(calibration_images(by_graph.info.image_size))
    with pytest.raises(EncoderError, match="the torch image tower was released"):  # its memory is handed back
        by_graph.image_features(pixels)
    index = faiss.read_index(str(shapes_artifacts / INDEX))
    rows = shapes_folder[1]
    pictures = [Image.open(shapes_folder[0] / row["file_name"]).convert("RGB") for row in rows]
    _, graph_ids = index.search(by_graph.encode_images(pictures), 5)
    _, torch_ids = index.search(by_torch.encode_images(pictures), 5)
    # every gallery picture finds itself first either way, and the rest of the top 5 is the same images
    assert graph_ids[:, 0].tolist() == torch_ids[:, 0].tolist() == list(range(len(rows)))
    assert [set(row) for row in graph_ids] == [set(row) for row in torch_ids]


def test_a_graph_that_disagrees_or_is_damaged_is_refused_and_torch_answers(tmp_path, shapes_folder, caplog, capsys):
    out, fp32, encoder = _served_beside_a_foreign_graph(tmp_path, shapes_folder, "clip", "images", caplog)
    assert f"pictures: {IMAGE_GRAPH} (" in capsys.readouterr().out  # the build summary says what the Space runs
    assert encoder.image_graph is None
    assert "agrees with the build's fp32 vectors only to cosine" in caplog.text
    assert "pictures are embedded by the serving copy's torch tower" in caplog.text
    pictures = _pictures()
    assert np.min(np.sum(encoder.encode_images(pictures) * fp32.encode_images(pictures), axis=1)) >= 0.99

    foreign = onnx.load(str(out / IMAGE_GRAPH))
    del foreign.metadata_props[:]  # someone else's ONNX model of the tower
    onnx.save(foreign, str(out / IMAGE_GRAPH))
    with pytest.raises(EncoderError, match="is not an image graph this app can load"):
        encoder.use_image_graph(out / IMAGE_GRAPH)
    (out / IMAGE_GRAPH).write_bytes(b"not an ONNX file at all")
    with pytest.raises(EncoderError, match=f"{IMAGE_GRAPH} cannot be loaded by onnxruntime"):
        encoder.use_image_graph(out / IMAGE_GRAPH)
    assert encoder.image_graph is None
    assert encoder.encode_images(calibration_images(encoder.info.image_size)).shape == (2, encoder.info.dim)


def test_a_build_without_a_serving_copy_leaves_no_graph_behind(tmp_path, shapes_folder, monkeypatch, caplog):
    import builder.serving

    monkeypatch.setattr(builder.serving, "MIN_CALIBRATION_COSINE", 1.01)  # no int8 copy can pass: none is written
    out = tmp_path / "artifacts"
    with caplog.at_level(logging.WARNING, logger="builder"):
        assert run_build("--images", shapes_folder[0], "--model", save_tiny_clip(tmp_path / "tiny", "clip"),
                         "--out", out) == 0
    assert "no serving copy: int8 agrees with fp32 only to cosine" in caplog.text
    manifest = Manifest.read(out)
    assert manifest.serving is None and IMAGE_GRAPH not in manifest.files and not (out / IMAGE_GRAPH).exists()


@pytest.mark.parametrize("kind", [*KINDS, *EXTRA_KINDS])
def test_the_text_graph_embeds_texts_as_the_fp32_model_does(tmp_path, kind):
    folder = save_tiny_clip(tmp_path / kind, kind)
    encoder = Encoder.load(folder, device="cpu")
    fp32 = encoder.encode_texts(TEXTS)
    info = write_text_graph(encoder, tmp_path, reference_vectors(encoder)["texts"])
    if kind == "clip":  # its pooling reads the ids (the end token's place): no text graph, torch answers
        assert info is None and not (tmp_path / TEXT_GRAPH).exists()
        return
    assert info.file == TEXT_GRAPH and info.cosine >= 0.99 and info.size == (tmp_path / TEXT_GRAPH).stat().st_size
    assert "QAttention" in _operators(tmp_path / TEXT_GRAPH)
    assert encoder.text_graph is None  # the builder's encoder computes as before
    served = Encoder.load(folder, device="cpu")
    assert served.use_text_graph(tmp_path / TEXT_GRAPH) >= 0.99
    served.release_text_tower()  # as the app does: the torch tower's weights after the token table are freed
    with pytest.raises(EncoderError, match="the torch text tower was released"):
        served.model.get_text_features(**served.tokenize(TEXTS[:1]))
    batch = served.encode_texts(TEXTS)
    one_by_one = np.concatenate([served.encode_texts([text]) for text in TEXTS])
    assert np.min(np.sum(batch * one_by_one, axis=1)) >= 0.999  # the app's micro-batches of any size
    assert np.min(np.sum(batch * fp32, axis=1)) >= 0.99
    served.use_precision("fp32")  # another precision: texts are computed in it again (reloaded), not by the graph
    assert served.text_graph is None and np.abs(served.encode_texts(TEXTS) - fp32).max() < 1e-5


def test_a_siglip_build_publishes_both_graphs_and_the_app_embeds_texts_with_one(tmp_path, shapes_folder, tiny_siglip,
                                                                                   capsys):
    out = tmp_path / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", tiny_siglip, "--out", out) == 0
    assert f"texts: {TEXT_GRAPH} (" in capsys.readouterr().out  # the build summary says what the Space runs
    manifest = Manifest.read(out)
    graph = manifest.serving.text_graph
    assert graph.file == TEXT_GRAPH and manifest.files[TEXT_GRAPH].sha256 == sha256_file(out / TEXT_GRAPH)
    # what a default app downloads: both graphs, and not the torch towers they replace
    assert manifest.unused_serving_files("auto") == {IMAGE_TOWER_FILE, TEXT_TOWER_FILE}
    assert manifest.unused_serving_files("int8") == {IMAGE_GRAPH, TEXT_GRAPH}
    assert manifest.unused_serving_files("fp32") == {SERVING_MODEL, IMAGE_GRAPH, TEXT_GRAPH, IMAGE_TOWER_FILE,
                                                     TEXT_TOWER_FILE}
    by_graph = served_encoder(manifest, out, "auto")
    by_torch = served_encoder(manifest, out, "int8")
    assert by_graph.text_graph is not None and by_torch.text_graph is None
    fp32 = Encoder.load(tiny_siglip, device="cpu").encode_texts(TEXTS)
    assert np.min(np.sum(by_graph.encode_texts(TEXTS) * fp32, axis=1)) >= 0.99
    assert np.min(np.sum(by_torch.encode_texts(TEXTS) * fp32, axis=1)) >= 0.99


def test_a_text_graph_that_disagrees_or_is_damaged_is_refused_and_torch_answers(tmp_path, shapes_folder, caplog):
    out, fp32, encoder = _served_beside_a_foreign_graph(tmp_path, shapes_folder, "siglip", "texts", caplog)
    assert encoder.text_graph is None and encoder.image_graph is not None  # each graph is checked on its own
    assert "the text graph text-int8.onnx agrees with the build's fp32 vectors only to cosine" in caplog.text
    assert "texts are embedded by the serving copy's torch tower" in caplog.text
    assert np.min(np.sum(encoder.encode_texts(TEXTS) * fp32.encode_texts(TEXTS), axis=1)) >= 0.99

    with pytest.raises(EncoderError, match=f"{IMAGE_GRAPH} is not a text graph this app can load"):
        encoder.use_text_graph(out / IMAGE_GRAPH)  # the files swapped
    (out / TEXT_GRAPH).write_bytes(b"not an ONNX file at all")
    with pytest.raises(EncoderError, match=f"{TEXT_GRAPH} cannot be loaded by onnxruntime"):
        encoder.use_text_graph(out / TEXT_GRAPH)
    assert encoder.text_graph is None and encoder.encode_texts(TEXTS).shape == (len(TEXTS), encoder.info.dim)


def _served_beside_a_foreign_graph(tmp_path, shapes_folder, kind: str, inputs: str, caplog):
    """A build of a tiny `kind` model whose published graph for `inputs` ("images" or "texts") was replaced by the
    same architecture's with other weights (seed 1), whose vectors disagree with the build's fp32 ones; the build's
    folder, its fp32 encoder, and the app's encoder for it (warnings in caplog)."""
    model = save_tiny_clip(tmp_path / "tiny", kind)
    out = tmp_path / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", model, "--out", out) == 0
    fp32 = Encoder.load(model, device="cpu")
    other = Encoder.load(save_tiny_clip(tmp_path / "other", kind, seed=1), device="cpu")
    export, file = {"images": (export_image_graph, IMAGE_GRAPH), "texts": (export_text_graph, TEXT_GRAPH)}[inputs]
    export(other, out / file, reference_vectors(fp32)[inputs])
    with caplog.at_level(logging.WARNING, logger="clipsearch.hub.encoders"):
        return out, fp32, served_encoder(Manifest.read(out), out, "auto")
