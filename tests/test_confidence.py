"""Honest when nothing matches: on galleries that lack a colour or a shape entirely, the absent queries are told there
is no good match and the present ones keep theirs, with two models whose cosine scales differ threefold. Every
figure comes from the build's own calibration (manifest.calibration): no threshold in the code or in these tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipsearch.core.calibration import WEAK
from clipsearch.core.encoder import Encoder
from clipsearch.core.gallery import Gallery
from clipsearch.core.manifest import Manifest
from clipsearch.core.query import Plan, QueryError
from clipsearch.core.search import Searcher
from testkit.helpers import run_build, search_data
from testkit.models import COLORS, SHAPES, caption_for, draw_shape
from testkit.models.rescaled import with_cosines_scaled

WORLDS = {"no red": lambda color, shape: color != "red", "no crosses": lambda color, shape: shape != "cross"}


def _gallery(root: Path, keep, per_combo: int = 3) -> Path:
    """A captioned picture folder with only the colour/shape pairs `keep` allows."""
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w") as sidecar:
        for color in COLORS:
            for shape in SHAPES:
                for k in range(per_combo if keep(color, shape) else 0):
                    name = f"{color}-{shape}-{k}.png"
                    draw_shape(color, shape, size=64, seed=7000 + 97 * k + 11 * len(name)).save(root / name)
                    sidecar.write(json.dumps({"file_name": name, "caption": caption_for(color, shape)}) + "\n")
    return root


@pytest.fixture(scope="module")
def models(shapes_model, tmp_path_factory) -> dict[str, Path]:
    """The trained shapes CLIP, and a copy whose cosines are a third of its own (rankings unchanged)."""
    return {"shapes": Path(shapes_model),
            "shapes, cosines / 3": with_cosines_scaled(shapes_model, tmp_path_factory.mktemp("scaled") / "model")}


@pytest.fixture(scope="module")
def built(models, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = {}
    for world, keep in WORLDS.items():
        gallery = _gallery(tmp_path_factory.mktemp("world") / "gallery", keep)
        for name, model in models.items():
            folder = tmp_path_factory.mktemp("built") / "artifacts"
            assert run_build("--images", gallery, "--model", model, "--out", folder, "--batch-size", "16") == 0
            out[world, name] = folder
    return out


def _searcher(folder: Path) -> Searcher:
    gallery = Gallery.open(folder)
    return Searcher(gallery, Encoder.load(gallery.manifest.model["model_id"], None, "cpu"))


def _assert_honest(search, world: str, model: str, what: str) -> None:
    """`search(color, shape)` → hits: the absent colour/shape pairs are told "no good match" (top hit below WEAK) for
    at least 85 %, the present ones keep a confident top hit of their own pair for at least 90 %."""
    keep = WORLDS[world]
    told, kept, absent, present = 0, 0, 0, 0
    for color in COLORS:
        for shape in SHAPES:
            hits = search(color, shape)
            assert all(h.confidence is not None for h in hits)
            assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
            if keep(color, shape):
                present += 1
                kept += hits[0].confidence >= WEAK and hits[0].file_name.startswith(f"{color}-{shape}-")
            else:
                absent += 1
                told += hits[0].confidence < WEAK
    assert told / absent >= 0.85, f"{world}, {model}: only {told} of {absent} absent {what} told 'no good match'"
    assert kept / present >= 0.90, f"{world}, {model}: only {kept} of {present} present {what} kept their match"


@pytest.mark.parametrize("model", ["shapes", "shapes, cosines / 3"])
@pytest.mark.parametrize("world", list(WORLDS))
def test_absent_things_are_told_no_good_match_and_present_ones_keep_theirs(built, world, model):
    searcher = _searcher(built[world, model])
    _assert_honest(lambda color, shape: searcher.search_text(caption_for(color, shape), k=5), world, model,
                   "descriptions")


@pytest.mark.parametrize("model", ["shapes", "shapes, cosines / 3"])
@pytest.mark.parametrize("world", list(WORLDS))
def test_pictures_of_absent_things_are_told_no_good_match_and_present_ones_keep_theirs(built, world, model):
    """The same honesty for a search by picture, from the build's second curve (manifest.picture_calibration): a
    new drawing of each colour and shape, none of them in the gallery, as the query."""
    searcher = _searcher(built[world, model])

    def search(color, shape):
        return searcher.search_image(draw_shape(color, shape, size=64, seed=90_001 + 7 * len(color + shape)), k=5)

    _assert_honest(search, world, model, "pictures")


def test_the_two_models_really_score_on_different_scales(built):
    """The point of the pair: the same match scores about three times lower with the second model, so any fixed
    cosine threshold that fits one fails the other; the calibrations differ accordingly."""
    tops = {}
    for name in ("shapes", "shapes, cosines / 3"):
        searcher = _searcher(built["no red", name])
        tops[name] = np.median([searcher.search_text(caption_for(c, s), k=1)[0].score
                                for c in COLORS for s in SHAPES if c != "red"])
    assert tops["shapes, cosines / 3"] == pytest.approx(tops["shapes"] / 3, rel=0.02)
    assert tops["shapes"] > 0.6 and tops["shapes, cosines / 3"] < 0.3
    slopes = [Manifest.read(built["no red", name]).calibration.slope for name in tops]
    assert slopes[1] == pytest.approx(3 * slopes[0], rel=0.25)


def test_the_calibration_is_recorded_with_its_held_out_error(built):
    calibration = Manifest.read(built["no red", "shapes"]).calibration
    assert calibration.queries == "text"
    assert calibration.fitted_on["positives"] > 0 and calibration.fitted_on["pairs"] > calibration.fitted_on[
        "positives"]
    assert 0 <= calibration.held_out["ece"] < 0.15
    again = Manifest.from_json(Manifest.read(built["no red", "shapes"]).to_json()).calibration
    assert again == calibration  # a typed record through JSON and back
    pictures = Manifest.read(built["no red", "shapes"]).picture_calibration
    assert pictures.queries == "image" and pictures.slope > 0
    assert 0 < pictures.fitted_on["positives"] < pictures.fitted_on["pairs"]
    assert 0 <= pictures.held_out["ece"] < 0.15
    assert Manifest.from_json(Manifest.read(built["no red", "shapes"]).to_json()).picture_calibration == pictures


def test_min_confidence_cuts_weak_hits_and_needs_a_calibration(built, tmp_path):
    searcher = _searcher(built["no red", "shapes"])
    vector = searcher.text_vector("a blue circle")
    every = searcher.search(vector, Plan.checked(10), "a blue circle", calibrated="text")
    sure = searcher.search(vector, Plan.checked(10, min_confidence=0.5), "a blue circle", calibrated="text")
    assert sure == [h for h in every if h.confidence >= 0.5] and 0 < len(sure) < len(every)
    # pages continue the same confidences: page 2 never looks surer than page 1's last hit
    second = searcher.search(vector, Plan.checked(5, page=1), "a blue circle", calibrated="text")
    assert [h.confidence for h in second] == [h.confidence for h in every[5:10]]
    # a picture alone gets the build's picture calibration, and no confidence where the build has none
    picture = draw_shape("blue", "circle", 64, 1)
    assert all(h.confidence is not None for h in searcher.search_image(picture, k=3))
    searcher.picture_calibration = None
    assert all(h.confidence is None for h in searcher.search_image(picture, k=3))
    searcher.calibration = None  # an index built without captions
    with pytest.raises(QueryError, match="no confidence calibration.*min_score"):
        searcher.search(vector, Plan.checked(5, min_confidence=0.5), "a blue circle", calibrated="text")


def test_the_page_says_plainly_when_nothing_matches_and_marks_the_hits_weak(built):
    from clipsearch.web.views import gallery_items, results_label

    searcher = _searcher(built["no red", "shapes"])
    absent = searcher.search_text("a red square", k=5)
    label = results_label(absent, Plan.checked(5))
    assert label.startswith("Nothing in this collection matches well") and "Results 1–5" in label
    assert all(caption.startswith("weak · ") for _, caption in gallery_items(absent))
    present = searcher.search_text("a blue square", k=5)
    assert results_label(present, Plan.checked(5)) == "Results 1–5"
    assert not gallery_items(present)[0][1].startswith("weak")


def test_the_api_returns_confidence_and_lets_the_client_cut(client, app_server):
    _, hits = client.predict("a red circle", 5, api_name="/search_text")
    values = [hit["confidence"] for hit in hits]
    assert all(0 <= v <= 1 for v in values) and values == sorted(values, reverse=True)
    _, every = client.predict(*search_data(app_server[0], text="a red circle", k=10), api_name="/search")
    _, sure = client.predict(*search_data(app_server[0], text="a red circle", k=10, min_confidence=0.5),
                             api_name="/search")
    assert [h["image_id"] for h in sure] == [h["image_id"] for h in every if h["confidence"] >= 0.5]


def test_in_a_browser_an_absent_thing_is_told_plainly_and_a_present_one_is_not(built, tmp_path, monkeypatch):
    """What a visitor sees: the sentence above the grid and the weak marks, in Chromium, on the world without red."""
    from playwright.sync_api import expect, sync_playwright

    from clipsearch.serve.service import Settings, start
    from clipsearch.web.ui import build_ui, launch
    from testkit.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, SCREENSHOTS, WAIT

    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    service = start(Settings(index_dir=str(built["no red", "shapes"]), index_repo="unused/unused",
                             index_revision=None, endpoint=None, token=None))
    demo = build_ui(service)
    launch(demo, service, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=DESKTOP)
            page.goto(demo.local_url, wait_until="domcontentloaded")
            results = page.locator("#results")
            for query, honest in (("a red circle", True), ("a blue square", False)):
                page.get_by_label("Describe the image").fill(query)
                page.get_by_role("button", name="Search", exact=True).click()
                expect(results.locator(".caption-label").first).to_contain_text("match", timeout=WAIT)
                sentence = results.get_by_text("Nothing in this collection matches well")
                if honest:
                    expect(sentence).to_be_visible(timeout=WAIT)
                    expect(results.locator(".caption-label").first).to_contain_text("weak ·")
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SCREENSHOTS / "no-good-match.png"))
                else:
                    expect(sentence).to_have_count(0, timeout=WAIT)
                    expect(results.locator(".caption-label").first).not_to_contain_text("weak")
            browser.close()
    finally:
        demo.close()
