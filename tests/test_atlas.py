"""The atlas: a build's neighbour-keeping 2-D layout (atlas.npy), kept by --append, served to the browser compactly,
and the Map tab of a build made before it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import httpx
import numpy as np

from builder.atlas import layout, principal_components
from clipsearch.core.atlas import ATLAS, place
from clipsearch.core.gallery import Gallery
from clipsearch.core.manifest import Manifest, sha256_file, write_manifest
from clipsearch.web.atlas import AtlasView, atlas_view
from testkit.galleries import write_shapes_folder
from testkit.helpers import run_build
from testkit.models import draw_shape


def _clusters(count: int = 400, groups: int = 40, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    labels = rng.integers(0, groups, count)
    vectors = centres[labels] + 0.5 * rng.standard_normal((count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def _same_group_share(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    distances = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_layout_keeps_neighbours_together_where_pca_mixes_them():
    vectors, labels = _clusters()
    xy = layout(vectors)
    assert xy.shape == (len(vectors), 2) and xy.dtype == np.float32
    assert xy.min() >= 0 and xy.max() <= 1 and np.isclose(xy.max(axis=0) - xy.min(axis=0), 1).any()
    pca = principal_components(vectors, 2)
    assert _same_group_share(xy, labels) >= 0.95
    assert _same_group_share(pca, labels) < 0.6  # forty groups in 64 dimensions overlap on two axes


def test_a_placed_vector_lands_on_its_nearest_neighbours():
    vectors, _ = _clusters(count=200)
    xy = layout(vectors)
    placed = place(vectors[:5], vectors, xy)  # each is its own nearest gallery image (cosine 1)
    others = np.linalg.norm(xy[:5, None, :] - xy[None, :, :], axis=-1).mean(axis=1)
    assert (np.linalg.norm(placed - xy[:5], axis=1) < 0.25 * others).all()


def test_build_lists_the_atlas_and_append_places_new_images_among_their_neighbours(tmp_path, tiny_clip):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    write_shapes_folder(first, per_combo=2)  # 40 images: three more are under the 10% that are placed
    second.mkdir()
    for number, color in enumerate(["red", "blue", "green"]):
        draw_shape(color, "square", size=64, seed=70 + number).save(second / f"new-{color}.png")
    assert run_build("--images", first, "--model", tiny_clip, "--out", out, "--eval", "none") == 0
    manifest = Manifest.read(out)
    assert manifest.files[ATLAS].sha256 == sha256_file(out / ATLAS)
    before = Gallery.open(out).atlas_xy
    assert before.shape == (40, 2) and np.isfinite(before).all()

    assert run_build("--append", "--images", second, "--out", out, "--eval", "none") == 0
    gallery = Gallery.open(out)  # verifies every listed file, atlas.npy included
    after = gallery.atlas_xy
    assert after.shape == (43, 2)
    assert np.array_equal(after[:40], before)  # the map a visitor knows does not move
    vectors = np.asarray(gallery.vectors, np.float32)
    assert np.allclose(after[40:], place(vectors[40:], vectors[:40], before), atol=1e-6)


def test_build_without_an_atlas_still_loads_and_the_map_says_why(shapes_artifacts, tmp_path):
    from clipsearch.serve.service import Settings, start
    from clipsearch.web.ui import build_ui

    old = tmp_path / "old"
    shutil.copytree(shapes_artifacts, old, ignore=shutil.ignore_patterns(".*"))
    manifest = Manifest.read(old)
    write_manifest(old, replace(manifest, files={n: e for n, e in manifest.files.items() if n != ATLAS}))
    (old / ATLAS).unlink()
    gallery = Gallery.open(old)
    assert gallery.atlas_xy is None and atlas_view(gallery) is None
    service = start(Settings(index_dir=str(old), index_repo="unused/unused", index_revision=None, endpoint=None,
                             token=None))
    config = build_ui(service).config
    texts = [c["props"].get("value") for c in config["components"] if c["type"] == "markdown"]
    assert any("built before the atlas existed" in str(text) for text in texts)
    assert not any(c["type"] == "html" and c["props"].get("elem_id") == "atlas" for c in config["components"])


def test_search_is_placed_among_its_results(app_server):
    _, service = app_server
    view = AtlasView(service.searcher.gallery)
    hits = [{"image_id": h.image_id, "score": h.score} for h in service.searcher.search_text("a red circle", 5)]
    state = json.loads(view.value(hits))
    rows = [service.searcher.gallery.row_of(h["image_id"]) for h in hits]
    assert state["highlight"] == rows
    low, high = view.xy[rows].min(axis=0) - 1e-6, view.xy[rows].max(axis=0) + 1e-6
    assert (low <= state["query"]).all() and (state["query"] <= high).all()  # among its results
    assert json.loads(view.value([]))["query"] is None


def test_atlas_files_are_served_compactly(app_server):
    url, service = app_server
    gallery = service.searcher.gallery
    config = json.loads(AtlasView(gallery).value())
    points = httpx.get(f"{url}/{config['points']}")
    assert points.status_code == 200 and "immutable" in points.headers["cache-control"]
    count = len(gallery)
    assert len(points.content) == 5 * count  # x and y as uint16, a colour byte
    xs = np.frombuffer(points.content[:2 * count], "<u2")
    assert np.array_equal(xs, np.round(gallery.atlas_xy[:, 0] * 65535).astype(np.uint16))
    thumb = httpx.get(f"{url}/{config['thumb']}3.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == gallery.thumbnails.read(3)
    assert httpx.get(f"{url}/atlas/atlas.js").text.startswith("// The atlas")
    assert httpx.get(f"{url}/atlas/0123456789abcdef/points.bin").status_code == 404  # another build's key
    assert httpx.get(f"{url}/{config['thumb']}{count}.jpg").status_code == 404
