"""Image-only backbones (DINOv2, ViT, ResNet through the Auto classes): the builder indexes with them, the manifest
says the index has no text side, and the app serves image search only and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from transformers import AutoImageProcessor, AutoModel

from clipsearch.core.encoder import Encoder, EncoderError
from clipsearch.core.manifest import IMAGE_TOWER_FILE
from testkit.helpers import run_build
from testkit.models import VISION_KINDS, VISION_WIDTH, draw_shape, save_tiny_text_only, save_tiny_vision

TEXT_OFF = "image-only model"


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vision-models")
    return {kind: save_tiny_vision(root / kind, kind) for kind in VISION_KINDS}


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_image_only_models_embed_images_as_their_family_pools_them(vision_models, kind):
    """The vector is the class token (ViT, DINOv2) or the pooled output (ResNet) of exactly the model's own
    preprocessing, L2-normalised; text is refused with a sentence."""
    folder = vision_models[kind]
    encoder = Encoder.load(str(folder), device="cpu")
    assert (encoder.info.has_text, encoder.info.dim, encoder.info.text_max_length) == (False, VISION_WIDTH[kind], 0)
    assert encoder.info.pooling == ("pooler" if kind == "resnet" else "cls")
    pictures = [draw_shape("red", "circle", seed=1), draw_shape("blue", "square", seed=2)]
    vectors = encoder.encode_images(pictures)

    model = AutoModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=pictures, return_tensors="pt")
    with torch.inference_mode():
        output = model(pixel_values=pixels["pixel_values"])
    expected = output.pooler_output.flatten(1) if kind == "resnet" else output.last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(EncoderError, match="image-only model .*cannot embed text"):
        encoder.encode_texts(["a red circle"])


def test_the_fast_path_of_an_image_only_model_is_checked_on_images(vision_models):
    reference = Encoder.load(str(vision_models["dinov2"]), device="cpu")
    fast = Encoder.load(str(vision_models["dinov2"]), device="cpu", precision="int8")
    pictures = [draw_shape(c, s, seed=n) for n, (c, s) in enumerate([("red", "circle"), ("green", "cross")])]
    assert fast.precision == "int8"
    cosine = np.sum(reference.encode_images(pictures) * fast.encode_images(pictures), axis=1)
    assert cosine.min() >= 0.99


def test_a_model_that_takes_no_images_is_refused_with_a_sentence(tmp_path):
    with pytest.raises(EncoderError, match="a 'bert' model does not take images; pass a CLIP-family checkpoint"):
        Encoder.load(str(save_tiny_text_only(tmp_path / "bert")), device="cpu")


@pytest.fixture(scope="module")
def dinov2_artifacts(tmp_path_factory, vision_models, coco_dir):
    out = tmp_path_factory.mktemp("dinov2-build") / "artifacts"
    assert run_build("--coco-dir", coco_dir[0], "--model", vision_models["dinov2"], "--out", out,
                     "--batch-size", "8") == 0
    return out


def test_the_manifest_records_that_the_index_has_no_text_side(dinov2_artifacts):
    manifest = json.loads((dinov2_artifacts / "manifest.json").read_text())
    assert manifest["model"]["has_text"] is False and manifest["model"]["pooling"] == "cls"
    assert manifest["dim"] == VISION_WIDTH["dinov2"]
    # its image graph replaces the whole model, which the serving copy keeps: no tower file apart
    assert manifest["serving"]["image_graph"]["tower"] is None and IMAGE_TOWER_FILE not in manifest["files"]
    assert not (dinov2_artifacts / IMAGE_TOWER_FILE).exists()
    evaluation = manifest["evaluation"]
    assert not any("text_to_image" in result for result in evaluation.values() if isinstance(result, dict))
    by_category = evaluation["image_to_image_by_category"]  # category relevance needs no text side
    assert by_category["queries_from"] == "val2017" and by_category["images"] == 20 and 0 <= by_category["mAP"] <= 100


@pytest.fixture(scope="module")
def image_only_app(dinov2_artifacts, tmp_path_factory, monkeypatch_module):
    from clipsearch.serve.service import Settings, start
    from clipsearch.web.ui import build_ui, launch

    monkeypatch_module.setenv("CLIPSEARCH_CACHE", str(tmp_path_factory.mktemp("image-only-cache")))
    # fp32, as the builder: the test asserts exact self-retrieval, which fast paths only approximate
    service = start(Settings(index_dir=str(dinov2_artifacts), index_repo="unused/unused", index_revision=None,
                             endpoint=None, token=None, precision="fp32"))
    demo = build_ui(service)
    launch(demo, service, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo, service, Client(demo.local_url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_app_finds_a_gallery_picture_by_itself(image_only_app, coco_dir):
    _, service, client = image_only_app
    image_id, entry = next((i, e) for i, e in coco_dir[1].items() if e["split"] == "val2017" and "bad" not in e)
    _, hits = client.predict(handle_file(str(coco_dir[0] / "val2017" / entry["file_name"])), 3,
                             api_name="/search_image")
    assert hits[0]["image_id"] == image_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    _, similar = client.predict(image_id, 3, api_name="/search_similar")
    assert similar[0]["image_id"] == image_id


def test_the_app_refuses_text_queries_and_says_why(image_only_app):
    _, _, client = image_only_app
    with pytest.raises(Exception, match=f"{TEXT_OFF} .*cannot read text: search with a picture"):
        client.predict("a red circle", 3, api_name="/search_text")
    with pytest.raises(Exception, match=f"{TEXT_OFF} .*cannot read text"):
        client.predict("a red circle", [], 0.5, "", 0.5, [], False, [], False, 0, 0, [], [], 3, 0, api_name="/search")


def test_the_app_hides_the_text_tab_and_explains(image_only_app):
    demo, _, _ = image_only_app
    components = demo.config["components"]
    tabs = {c["props"].get("label"): c["props"] for c in components if c["type"] == "tabitem"}
    assert tabs["Text → Image"]["visible"] is False and tabs["Image → Image"].get("visible", True) is not False
    shown = " ".join(str(c["props"].get("value", "")) for c in components if c["type"] == "markdown")
    assert "image-only model" in shown and "search by description is off" in shown


def test_in_a_browser_the_page_opens_on_image_search_and_finds_the_picture(image_only_app, coco_dir):
    """Chromium: no Text → Image tab, the reason shown, Image → Image open at load; an upload finds itself."""
    import re

    from playwright.sync_api import expect

    from testkit.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, WAIT, shot, wait_for_results

    demo, _, _ = image_only_app
    image_id, entry = next((i, e) for i, e in coco_dir[1].items() if e["split"] == "val2017" and "bad" not in e)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=DESKTOP)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(demo.local_url, wait_until="domcontentloaded")
        expect(page.get_by_text("search by description is off")).to_be_visible(timeout=WAIT)
        expect(page.get_by_role("tab", name="Text → Image")).to_have_count(0)
        expect(page.get_by_role("tab", name="Image → Image")).to_have_attribute("aria-selected", "true")
        image = page.get_by_test_id("image")
        expect(image).to_be_visible(timeout=WAIT)
        image.locator("input[type=file]").set_input_files(coco_dir[0] / "val2017" / entry["file_name"])
        expect(image.locator(".image-frame img")).to_have_attribute("src", re.compile(r"\.jpg$"), timeout=WAIT)
        page.get_by_role("button", name="Find similar images").click()
        wait_for_results(page)
        page.locator("#results .thumbnail-item").first.click()
        expect(page.locator("#details")).to_contain_text(f"Image {image_id}", timeout=WAIT)
        shot(page, "7-image-only-index")
        browser.close()
    assert not errors, errors
