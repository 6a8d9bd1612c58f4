"""The torch towers that the ONNX graphs replace are kept apart from the serving copy: a default app neither downloads
nor loads them while its graphs agree with fp32 on its CPU; a graph that fails its check there has its tower fetched
(once, whole, verified) and torch answers for it; a tower that cannot be had gets a sentence and the checkpoint
answers; a build from before the split still serves. Tiny real SigLIP (both graphs), the loopback Hub."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi
from safetensors import safe_open

from builder.publish import push
from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import (
    IMAGE_GRAPH,
    IMAGE_TOWER_FILE,
    MANIFEST,
    SERVING_MODEL,
    TEXT_GRAPH,
    TEXT_TOWER_FILE,
    Manifest,
    hash_files,
    write_manifest,
)
from clipsearch.core.precision import calibration_images, reference_vectors
from clipsearch.core.serving import TOWER_MODULES, ReleasedTower
from clipsearch.core.tower_graphs import export_text_graph
from clipsearch.hub.encoders import served_encoder
from testkit import HUB_TOKEN
from testkit.helpers import run_build, serving_copy_in_one_file
from testkit.models import save_tiny_clip

TEXTS = ["a red circle", "КРАСНЫЙ КРУГ на белом фоне", "红色的圆形", "दो नीले वर्ग", "🔴🟥"]
TOWERS = (IMAGE_TOWER_FILE, TEXT_TOWER_FILE)
REPO = "tester/towers-apart"


@pytest.fixture(scope="module")
def siglip_build(tmp_path_factory, shapes_folder) -> tuple[Path, Path]:
    """(the tiny SigLIP's folder, its build of the shapes gallery with both graphs)."""
    model = save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-siglip", "siglip")
    out = tmp_path_factory.mktemp("siglip") / "artifacts"
    assert run_build("--images", shapes_folder[0], "--model", model, "--out", out) == 0
    return model, out


def _copy(build: Path, to: Path, without: tuple[str, ...] = TOWERS) -> Path:
    """The build's files as an app holds them after a default start: all but `without`."""
    shutil.copytree(build, to, ignore=shutil.ignore_patterns(*without))
    return to


def _with_foreign_text_graph(folder: Path, model: Path, tmp_path: Path) -> Manifest:
    """Replace the build's text graph by one of the same architecture with other weights, listed with its own sha256
    (as a graph that this CPU computes differently would be: its check against the fp32 vectors fails)."""
    other = Encoder.load(save_tiny_clip(tmp_path / "other", "siglip", seed=1), device="cpu")
    export_text_graph(other, folder / TEXT_GRAPH, reference_vectors(Encoder.load(model, device="cpu"))["texts"])
    manifest = Manifest.read(folder)
    manifest.files = {**manifest.files, **hash_files(folder, [TEXT_GRAPH])}
    write_manifest(folder, manifest)
    return manifest


def _agrees(encoder: Encoder, fp32: Encoder) -> float:
    pictures = calibration_images(fp32.info.image_size)
    return min(float(np.min(np.sum(encoder.encode_texts(TEXTS) * fp32.encode_texts(TEXTS), axis=1))),
               float(np.min(np.sum(encoder.encode_images(pictures) * fp32.encode_images(pictures), axis=1))))


def test_each_tower_a_graph_replaces_is_a_file_of_its_own_and_the_app_serves_without_them(siglip_build, tmp_path,
                                                                                         capsys):
    model, build = siglip_build
    manifest = Manifest.read(build)
    assert (manifest.serving.image_graph.tower, manifest.serving.text_graph.tower) == TOWERS
    assert set(TOWERS) <= set(manifest.files)  # listed with their sha256, published with the build
    with safe_open(str(build / SERVING_MODEL), framework="pt") as handle:  # the main file holds neither tower
        main = list(handle.keys())
    towers = [module for kind in ("image", "text") for module in TOWER_MODULES[kind]]
    assert main and not [name for name in main if any(name.startswith(module + ".") for module in towers)]
    for file, kind in zip(TOWERS, ("image", "text")):
        with safe_open(str(build / file), framework="pt") as handle:
            assert handle.keys() and all(name.split(".")[0] in {m.split(".")[0] for m in TOWER_MODULES[kind]}
                                         for name in handle.keys())
    fp32 = Encoder.load(model, device="cpu")
    served = _copy(build, tmp_path / "served")
    encoder = served_encoder(manifest, served, "auto")  # no tower file here, and nothing to fetch them with
    assert encoder.image_graph is not None and encoder.text_graph is not None
    assert isinstance(encoder.model.vision_model, ReleasedTower)
    assert isinstance(encoder.model.text_model.encoder, ReleasedTower)
    assert _agrees(encoder, fp32) >= 0.99
    by_torch = served_encoder(manifest, build, "int8")  # CLIPSEARCH_PRECISION=int8: both towers, from their files
    assert by_torch.image_graph is None and by_torch.text_graph is None
    assert not isinstance(by_torch.model.vision_model, ReleasedTower)
    assert _agrees(by_torch, fp32) >= 0.99


def test_a_graph_that_fails_here_has_its_tower_fetched_and_torch_answers(siglip_build, tmp_path, caplog):
    model, build = siglip_build
    served = _copy(build, tmp_path / "served")
    manifest = _with_foreign_text_graph(served, model, tmp_path)
    fetched = []

    def fetch(name: str) -> Path:  # the served commit's file (serve.download.fetch_verified does it from the Hub)
        fetched.append(name)
        return Path(shutil.copy(build / name, served / name))

    with caplog.at_level(logging.WARNING, logger="clipsearch.hub.encoders"):
        encoder = served_encoder(manifest, served, "auto", fetch)
    assert fetched == [TEXT_TOWER_FILE]  # the image graph serves: its tower stays on the Hub
    assert "the text graph text-int8.onnx agrees with the build's fp32 vectors only to cosine" in caplog.text
    assert f"the serving copy's torch text tower is needed after all: loading {TEXT_TOWER_FILE}" in caplog.text
    assert encoder.text_graph is None and encoder.image_graph is not None
    assert isinstance(encoder.model.vision_model, ReleasedTower)
    assert _agrees(encoder, Encoder.load(model, device="cpu")) >= 0.99


def test_a_tower_that_cannot_be_had_gets_a_sentence_and_the_checkpoint_answers(siglip_build, tmp_path, caplog):
    model, build = siglip_build
    served = _copy(build, tmp_path / "served")
    manifest = _with_foreign_text_graph(served, model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="clipsearch.hub.encoders"):
        encoder = served_encoder(manifest, served, "auto")  # a cached copy that never got the tower: no fetch
    assert (f"the serving copy's {TEXT_TOWER_FILE} is needed and is not here (a cached copy that never got it, or "
            "INDEX_DIR without it); loading the checkpoint of") in caplog.text
    assert encoder.text_graph is None and encoder.precision in ("fp32", "bf16", "int8")
    assert _agrees(encoder, Encoder.load(model, device="cpu")) >= 0.99


def test_a_build_from_before_the_split_still_serves(siglip_build, tmp_path):
    """Its serving copy holds every tower in one file and its manifest names no tower file."""
    model, build = siglip_build
    (old := tmp_path / "old").mkdir()
    serving_copy_in_one_file(build, old)
    manifest = Manifest.read(old)
    assert manifest.serving.towers == [] and manifest.unused_serving_files("auto") == set()
    assert not set(TOWERS) & {path.name for path in old.iterdir()}
    with safe_open(str(old / SERVING_MODEL), framework="pt") as handle:  # both towers inside the one file
        assert {name.split(".")[0] for name in handle.keys()} >= {"vision_model", "text_model"}
        assert any(name.startswith("text_model.encoder.") for name in handle.keys())
    fp32 = Encoder.load(model, device="cpu")
    by_graph, by_torch = served_encoder(manifest, old, "auto"), served_encoder(manifest, old, "int8")
    assert by_graph.image_graph is not None and by_graph.text_graph is not None and by_torch.text_graph is None
    assert _agrees(by_graph, fp32) >= 0.99 and _agrees(by_torch, fp32) >= 0.99


@pytest.mark.parametrize("text_graph", ["agrees", "fails here", "fails, its tower damaged on the Hub"])
def test_what_a_start_downloads_from_the_hub(hub, siglip_build, tmp_path, monkeypatch, caplog, text_graph):
    """A default start downloads both graphs and neither tower; where the text graph fails its check, the text
    tower once, whole and verified, after the rest; a tower whose bytes differ from the manifest's is refused with a
    sentence naming it, and the model's checkpoint answers."""
    from clipsearch.serve.service import start
    from clipsearch.serve.settings import Settings

    model, build = siglip_build
    manifest = Manifest.read(build)
    model_repo = "tester/tiny-siglip"
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    sha = hub.put_files(model_repo, files, "model", "Initial commit")
    served = _copy(build, tmp_path / "published", without=())
    write_manifest(served, dataclasses.replace(manifest, model={**manifest.model, "model_id": model_repo,
                                                                "revision": sha}))
    if text_graph != "agrees":
        _with_foreign_text_graph(served, model, tmp_path)
    if text_graph.endswith("damaged on the Hub"):
        tower = (served / TEXT_TOWER_FILE).read_bytes()
        (served / TEXT_TOWER_FILE).write_bytes(tower[:-1] + bytes([tower[-1] ^ 1]))  # one bit, same size
    push(served, Manifest.read(served), REPO, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    hub.bytes_served.clear()
    with caplog.at_level(logging.WARNING):
        service = start(Settings.from_env({"INDEX_REPO": REPO, "HF_ENDPOINT": hub.url}))
    downloaded = hub.downloaded(REPO)
    listed = Manifest.read(served).files
    assert {SERVING_MODEL, IMAGE_GRAPH, TEXT_GRAPH, MANIFEST} <= set(downloaded)
    assert IMAGE_TOWER_FILE not in downloaded
    encoder = service.searcher.encoder
    if text_graph == "agrees":
        assert TEXT_TOWER_FILE not in downloaded and encoder.text_graph is not None
    else:
        assert downloaded[TEXT_TOWER_FILE] == listed[TEXT_TOWER_FILE].size  # once, whole
        assert encoder.text_graph is None
    if text_graph.endswith("damaged on the Hub"):
        assert f"the serving copy's {TEXT_TOWER_FILE} is needed and could not be fetched ({TEXT_TOWER_FILE}" in \
            caplog.text
        assert "loading the checkpoint of tester/tiny-siglip instead" in caplog.text
        assert "model.safetensors" in hub.downloaded(model_repo)
    else:
        assert "model.safetensors" not in hub.downloaded(model_repo)  # only its configs and tokenizer
    hits = service.searcher.search_text("a red circle", 3)
    assert len(hits) == 3
    assert _agrees(encoder, Encoder.load(model, device="cpu")) >= 0.99
