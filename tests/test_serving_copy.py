"""The encoder's serving copy: a build publishes its int8 weights, and the app loading them gets the vectors an int8
conversion of the checkpoint gives, without the checkpoint; a copy that does not match is refused with a sentence,
and the app then loads the checkpoint. Tiny real checkpoints of each family (testkit.models)."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import clipsearch.core.precision as precision
from clipsearch.core.encoder import Encoder
from clipsearch.core.errors import EncoderError
from clipsearch.core.manifest import SERVING_MODEL, Manifest
from clipsearch.core.precision import auto_precisions, calibration_images, reference_vectors
from clipsearch.core.serving import save_serving_copy
from clipsearch.hub.encoders import served_encoder
from testkit.helpers import run_build
from testkit.models import KINDS, save_tiny_clip

TEXTS = ["a red circle", "zwei blaue Quadrate", "一只狗", "a green triangle on grey"]


def _converted(folder):
    """The tiny model converted to int8 on the spot (what an app without a serving copy does), and its fp32 vectors."""
    encoder = Encoder.load(folder, device="cpu", precision="fp32")
    references = reference_vectors(encoder)
    encoder.use_precision("int8")
    return encoder, references


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("token_table", ["fp32", "fp16"])
def test_the_serving_copy_gives_the_vectors_of_an_int8_conversion(tmp_path, monkeypatch, kind, token_table):
    if token_table == "fp16":  # the tiny vocabularies are below the size whose table int8 keeps in fp16 (SigLIP 2's)
        monkeypatch.setattr(precision, "VOCABULARY_TABLE", 1)
    folder = save_tiny_clip(tmp_path / kind, kind)
    converted, references = _converted(folder)
    save_serving_copy(converted.model, tmp_path / SERVING_MODEL, references)
    # the app's folder holds the configs and processor files only: the checkpoint is not needed, so not there
    configs = tmp_path / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    loaded = Encoder.load(configs, device="cpu", serving_copy=tmp_path / SERVING_MODEL)
    assert loaded.precision == "int8"
    pictures = calibration_images(loaded.info.image_size)
    assert np.abs(loaded.encode_texts(TEXTS) - converted.encode_texts(TEXTS)).max() <= 1e-6
    assert np.abs(loaded.encode_images(pictures) - converted.encode_images(pictures)).max() <= 1e-6
    assert dataclasses.replace(loaded.info, model_id=converted.info.model_id) == converted.info  # the manifest's


def test_a_copy_of_another_model_is_refused_and_the_app_loads_the_checkpoint(tmp_path, shapes_folder, caplog):
    model = save_tiny_clip(tmp_path / "tiny", "clip")
    out = tmp_path / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", model, "--out", out) == 0
    manifest = Manifest.read(out)
    assert manifest.serving.file == SERVING_MODEL and manifest.files[SERVING_MODEL].size == manifest.serving.size
    assert served_encoder(manifest, out, "auto").precision == "int8"
    # the same architecture with other weights (seed 1): its vectors disagree with the build's fp32 vectors
    other, references = _converted(save_tiny_clip(tmp_path / "other", "clip", seed=1))
    save_serving_copy(other.model, out / SERVING_MODEL, reference_vectors(Encoder.load(model, device="cpu")))
    with pytest.raises(EncoderError, match="agrees with the build's fp32 vectors only to cosine"):
        Encoder.load(model, device="cpu", serving_copy=out / SERVING_MODEL)
    with caplog.at_level(logging.WARNING, logger="clipsearch.hub.encoders"):
        encoder = served_encoder(manifest, out, "auto")
    assert "loading the checkpoint" in caplog.text
    fp32 = Encoder.load(model, device="cpu")
    assert np.min(np.sum(encoder.encode_texts(TEXTS) * fp32.encode_texts(TEXTS), axis=1)) > 0.99


def test_a_damaged_or_foreign_file_gets_a_sentence(tmp_path):
    folder = save_tiny_clip(tmp_path / "tiny", "clip")
    converted, references = _converted(folder)
    copy = tmp_path / SERVING_MODEL
    save_serving_copy(converted.model, copy, references)
    tensors = load_file(copy)
    missing = next(name for name in tensors if name.endswith("layer_norm1.weight"))
    save_file({name: t for name, t in tensors.items() if name != missing}, str(copy), metadata={"format":
                                                                                               "clipsearch-int8/1"})
    with pytest.raises(EncoderError, match=f"lacks the weight {missing}.*rebuild the index"):
        Encoder.load(folder, device="cpu", serving_copy=copy)
    save_file(tensors, str(copy), metadata={"format": "someone-else/3"})
    with pytest.raises(EncoderError, match="not a serving copy this app can load"):
        Encoder.load(folder, device="cpu", serving_copy=copy)
    copy.write_bytes(b"not safetensors at all")
    with pytest.raises(EncoderError, match="cannot be read as a serving copy"):
        Encoder.load(folder, device="cpu", serving_copy=copy)


def test_serving_copy_none_publishes_no_copy(tmp_path, shapes_folder, capsys):
    model = save_tiny_clip(tmp_path / "tiny", "clip")
    out = tmp_path / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", model, "--out", out, "--serving-copy", "none") == 0
    manifest = Manifest.read(out)
    assert manifest.serving is None and SERVING_MODEL not in manifest.files and not (out / SERVING_MODEL).exists()
    assert "serving:   none: the Space downloads the model's checkpoint" in capsys.readouterr().out
    # converted here, as before: a fast path this host tries (on AMX bf16 may win the race) or fp32
    assert served_encoder(manifest, out, "auto").precision in (*auto_precisions(), "fp32")
