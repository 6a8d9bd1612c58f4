"""The object index on a world of scenes with true boxes: built, searched by text and by region, appended, served."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from gradio_client import Client, handle_file
from huggingface_hub import HfApi
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import clipsearch.serve.download as download
import clipsearch.serve.service as service_module
from builder.publish import push
from clipsearch.core.encoder import Encoder
from clipsearch.core.errors import ArtifactError, QueryError
from clipsearch.core.gallery import Gallery
from clipsearch.core.manifest import MANIFEST, OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS, Manifest, sha256_file
from clipsearch.core.objects import CONTEXT, MIN_BOX_SIDE, context_box, crop_with_context, parse_box
from clipsearch.core.search import Hit, ObjectHit, Searcher
from clipsearch.serve.download import IndexSource
from clipsearch.serve.service import attach_objects
from testkit import HUB_TOKEN
from testkit.axe import assert_accessible
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, SCREENSHOTS, WAIT, shot, wait_for_results
from testkit.galleries import iou, write_scene_coco
from testkit.helpers import run_build

SPLITS = {"train2017": 30, "val2017": 10}
PER_SCENE = 3


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("scenes") / "coco"
    return root, write_scene_coco(root, SPLITS, per_scene=PER_SCENE)


@pytest.fixture(scope="module")
def built(tmp_path_factory, scenes, shapes_model) -> Path:
    out = tmp_path_factory.mktemp("objects") / "artifacts"
    assert run_build("--coco-dir", scenes[0], "--model", shapes_model, "--out", out, "--batch-size", "8") == 0
    return out


def _searcher(folder: Path) -> Searcher:
    gallery = Gallery.open(folder)
    model = gallery.manifest.model
    searcher = Searcher(gallery, Encoder.load(model["model_id"], model["revision"], "cpu"))
    attach_objects(searcher, IndexSource(folder=folder, repo_id=None, revision=None, ref=None), None)
    return searcher


@pytest.fixture(scope="module")
def searcher(built) -> Searcher:
    return _searcher(built)


def _categories(truth: dict) -> list[str]:
    return sorted({category for image in truth.values() for category, _ in image["objects"]})


def test_a_coco_build_indexes_every_box_large_enough_with_its_image_box_and_category(built, scenes):
    manifest = Manifest.read(built)
    objects = manifest.objects
    scene_count = sum(SPLITS.values())
    # every scene has three shapes (boxes of 36-60 px) and one 11-px dot below the 32-px cut-off
    assert (objects.boxes_total, objects.boxes_kept, objects.count) == (4 * scene_count, 3 * scene_count,
                                                                       3 * scene_count)
    assert objects.min_side == MIN_BOX_SIDE == 32 and objects.context == CONTEXT == 0.1
    for name in (OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS):
        assert manifest.files[name].sha256 == sha256_file(built / name)
    rows = pq.read_table(built / OBJECTS_META).to_pylist()
    image_ids = pq.read_table(built / "metadata.parquet", columns=["image_id"]).column("image_id").to_pylist()
    for row in rows:
        assert image_ids[row["image_row"]] == row["image_id"]  # row -> its image's gallery row
        truth = scenes[1][row["image_id"]]["objects"]
        assert max(iou([row["x0"], row["y0"], row["x1"], row["y1"]], box) for category, box in truth
                   if category == row["category"]) > 0.99
    assert {row["image_id"] for row in rows} == set(scenes[1])


def test_object_search_finds_the_thing_with_its_box_far_more_often_than_whole_images_find_it(searcher, scenes):
    truth = scenes[1]
    found_objects = found_images = asked = 0
    for category in _categories(truth):
        hits = searcher.search_objects(f"a {category}", 5)
        assert all(isinstance(hit, ObjectHit) for hit in hits) and len(hits) == 5
        found_objects += sum(hit.category == category and any(
            c == category and iou(hit.box, box) >= 0.5 for c, box in truth[hit.image_id]["objects"]) for hit in hits)
        found_images += sum(any(c == category for c, _ in truth[hit.image_id]["objects"])
                            for hit in searcher.search_text(f"a {category}", 5))
        asked += 5
    objects, images = found_objects / asked, found_images / asked
    assert objects >= 0.75 and objects >= images + 0.3, (objects, images)
    evaluation = searcher.gallery.manifest.objects.evaluation
    assert evaluation["objects_precision_at_5"] >= evaluation["images_precision_at_5"] + 0.3


def test_object_hits_of_a_description_carry_a_confidence_fitted_on_the_builds_own_categories(searcher, scenes):
    calibration = searcher.gallery.manifest.objects.calibration
    assert calibration.queries == "object-text" and calibration.held_out["ece"] < 0.15
    right, sure = [], []
    for category in _categories(scenes[1]):
        hits = searcher.search_objects(f"a {category}", 10)
        confidences = [hit.confidence for hit in hits]
        assert confidences == sorted(confidences, reverse=True) and all(0 <= c <= 1 for c in confidences)
        right += [hit.category == category for hit in hits]
        sure += confidences
    # calibrated: over these 200 hits the mean confidence is close to the share that really is the thing asked for
    assert abs(sum(sure) / len(sure) - sum(right) / len(right)) < 0.15, (sum(sure) / len(sure), sum(right) / len(right))
    assert all(hit.confidence is None for hit in searcher.search_region(
        str(scenes[0] / "val2017" / next(t for t in scenes[1].values() if t["split"] == "val2017")["file_name"]),
        "[0, 0, 60, 60]", 3))  # a region is no description: no confidence


def test_an_object_hit_carries_its_box_on_a_thumbnail_and_in_its_images_pixels(searcher):
    hit = searcher.search_objects("a red circle", 1)[0]
    assert hit.thumbnail.endswith(f"-object-{hit.object_row}.jpg")
    with Image.open(hit.thumbnail) as boxed, Image.open(searcher.gallery.thumbnails.path(hit.row)) as plain:
        assert boxed.size == plain.size
        scale = boxed.width / hit.width
        x, y = int((hit.box[0] + hit.box[2]) / 2 * scale), int(hit.box[1] * scale)  # the middle of the top edge
        red, green, blue = boxed.convert("RGB").getpixel((x, max(0, y - 3)))
        assert red > 150 and green > 120 and blue < 120, (red, green, blue)  # yellow just outside the box
        centre = (int((hit.box[0] + hit.box[2]) / 2 * scale), int((hit.box[1] + hit.box[3]) / 2 * scale))
        assert boxed.convert("RGB").getpixel(centre) == pytest.approx(plain.convert("RGB").getpixel(centre), abs=12)
        corner = (int(hit.box[0] * scale) + 3, int(hit.box[1] * scale) + 3)  # inside the box: the thing is not covered
        assert boxed.convert("RGB").getpixel(corner) == pytest.approx(plain.convert("RGB").getpixel(corner), abs=30)
    assert 0 <= hit.box[0] < hit.box[2] <= hit.width and 0 <= hit.box[1] < hit.box[3] <= hit.height


def test_region_search_finds_the_regions_shape(searcher, scenes):
    root, truth = scenes
    right = tried = 0
    for image in list(truth.values())[::4]:
        path = root / image["split"] / image["file_name"]
        for category, box in image["objects"]:
            hits = searcher.search_region(str(path), json.dumps(box), 3)
            right += hits[0].category == category
            tried += 1
    assert right / tried >= 0.8, (right, tried)


def test_without_an_object_index_region_search_searches_whole_images(built, tmp_path, scenes, shapes_model):
    out = tmp_path / "images-only"
    assert run_build("--coco-dir", scenes[0], "--model", shapes_model, "--out", out, "--batch-size", "8",
                     "--objects", "none", "--eval", "none") == 0
    assert Manifest.read(out).objects is None
    assert not any((out / name).exists() for name in (OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS))
    searcher = _searcher(out)
    with pytest.raises(QueryError, match="no object index .*--objects none.*/search_text"):
        searcher.search_objects("a red circle", 5)
    image = next(iter(scenes[1].values()))
    category, box = image["objects"][0]
    hits = searcher.search_region(str(scenes[0] / image["split"] / image["file_name"]), box, 5)
    assert hits and all(type(hit) is Hit for hit in hits)
    assert any(c == category for hit in hits for c, _ in scenes[1][hit.image_id]["objects"])


def test_a_rebuild_with_objects_none_removes_the_object_files_and_an_interrupted_build_reruns(built, tmp_path,
                                                                                              scenes, shapes_model):
    out = Path(shutil.copytree(built, tmp_path / "again"))
    (out / "manifest.json").unlink()  # as a build killed after pack, before its manifest: objects.* are ours still
    assert (out / ".work").is_dir()
    common = ("--coco-dir", scenes[0], "--model", shapes_model, "--out", out, "--batch-size", "8", "--eval", "none")
    assert run_build(*common) == 0 and Manifest.read(out).objects is not None
    assert run_build(*common, "--objects", "none", "--fresh") == 0  # other settings: the resume cache goes
    assert Manifest.read(out).objects is None
    assert not any((out / name).exists() for name in (OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS))


@pytest.mark.parametrize("flags, message", [
    (("--object-context", "-0.1"), "--object-context -0.1: give the context"),
    (("--object-min-side", "0"), "--object-min-side 0.0: give the shortest box side"),
])
def test_bad_object_flags_get_a_sentence_naming_the_flag(tmp_path, scenes, shapes_model, capsys, flags, message):
    assert run_build("--coco-dir", scenes[0], "--model", shapes_model, "--out", tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err


def test_crowd_boxes_and_boxes_without_a_bbox_are_left_out(tmp_path):
    from builder.sources import CocoDirSource

    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
    notes = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 30], "iscrowd": 0},
             {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 90, 70], "iscrowd": 1},
             {"id": 3, "image_id": 1, "category_id": 1}]
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": notes, "categories": [{"id": 1, "name": "person"}]}))
    record = CocoDirSource(tmp_path, ["val2017"]).records[0]
    assert record.boxes == [[10.0, 20.0, 50.0, 50.0, "person"]] and record.categories == ["person"]


def test_append_extends_the_object_index(tmp_path, scenes, shapes_model, built):
    out = tmp_path / "grown"
    common = ("--coco-dir", scenes[0], "--model", shapes_model, "--out", out, "--batch-size", "8", "--eval", "none")
    assert run_build(*common, "--splits", "train2017") == 0
    assert Manifest.read(out).objects.count == 3 * SPLITS["train2017"]
    assert run_build(*common, "--splits", "train2017,val2017", "--append") == 0
    manifest = Manifest.read(out)
    assert manifest.objects.count == 3 * sum(SPLITS.values()) and manifest.objects.boxes_total == 4 * sum(
        SPLITS.values())
    searcher = _searcher(out)  # opening verifies every listed file's sha256, the appended object files too
    rows = pq.read_table(out / OBJECTS_META).to_pylist()
    image_ids = pq.read_table(out / "metadata.parquet", columns=["image_id"]).column("image_id").to_pylist()
    assert all(image_ids[row["image_row"]] == row["image_id"] for row in rows)
    new = [image_id for image_id, image in scenes[1].items() if image["split"] == "val2017"]
    category, box = scenes[1][new[0]]["objects"][0]
    found = searcher.search_region(str(scenes[0] / "val2017" / scenes[1][new[0]]["file_name"]), box, 1)[0]
    assert found.image_id == new[0] and iou(found.box, box) > 0.99  # the appended box is found by its own crop


def test_a_tampered_object_index_is_refused_on_load(built, tmp_path):
    copy = Path(shutil.copytree(built, tmp_path / "copy", ignore=shutil.ignore_patterns(".*")))
    data = bytearray((copy / OBJECTS_META).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / OBJECTS_META).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="objects.parquet .*does not match the sha256"):
        Gallery.open(copy)


@pytest.mark.parametrize("box, message", [
    ("", "Please give a box"),
    (None, "Please give a box"),
    ("[1, 2", "JSON list of four numbers"),
    ("[1, 2, 3]", "JSON list of four numbers"),
    ('["a", 2, 3, 4]', "JSON list of four numbers"),
    ("[1, 2, NaN, 4]", "JSON list of four numbers"),
    ("[50, 10, 20, 40]", "empty or inverted"),
    ("[10, 10, 10, 40]", "empty or inverted"),
    ("[-5, 10, 40, 40]", "outside the picture, which is 192x192"),
    ("[10, 10, 40, 400]", "outside the picture, which is 192x192"),
])
def test_a_bad_box_gets_a_sentence(box, message):
    with pytest.raises(QueryError, match=message) as caught:
        parse_box(box, 192, 192)
    assert str(caught.value).endswith(".") and "\n" not in str(caught.value)


def test_a_crop_has_its_context_clamped_to_the_picture_and_is_the_same_from_a_smaller_decode():
    assert context_box((10, 20, 50, 40), 200, 100, 0.25) == (0, 15, 60, 45)
    assert context_box((150, 80, 200, 100), 200, 100, 0.5) == (125, 70, 200, 100)
    picture = Image.radial_gradient("L").convert("RGB").resize((256, 256))
    half = picture.resize((128, 128))
    full_crop = crop_with_context(picture, (64, 64, 128, 160), 0.1)
    half_crop = crop_with_context(half, (64, 64, 128, 160), 0.1, original_size=(256, 256))
    assert abs(half_crop.width * 2 - full_crop.width) <= 2 and abs(half_crop.height * 2 - full_crop.height) <= 2


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    from clipsearch.serve.service import Settings, start
    from clipsearch.web.ui import build_ui, launch

    os.environ["CLIPSEARCH_CACHE"] = str(tmp_path_factory.mktemp("objects-app-cache"))
    service = start(Settings(index_dir=str(built), index_repo="unused/unused", index_revision=None, endpoint=None,
                             token=None))
    demo = build_ui(service)
    launch(demo, service, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo.local_url.rstrip("/"), service
    demo.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0], verbose=False)


def test_both_endpoints_answer_a_gradio_client(client, scenes):
    root, truth = scenes
    _, hits = client.predict("a blue square", 3, api_name="/search_objects")
    assert len(hits) == 3 and hits[0]["category"] == "blue square"
    assert set(hits[0]) >= {"image_id", "box", "category", "score", "confidence"} and len(hits[0]["box"]) == 4
    assert any(iou(hits[0]["box"], box) >= 0.5 for _, box in truth[hits[0]["image_id"]]["objects"])
    image_id, image = next(iter(truth.items()))
    category, box = image["objects"][1]
    gallery, hits = client.predict(handle_file(str(root / image["split"] / image["file_name"])), json.dumps(box), 2,
                                   api_name="/search_region")
    assert len(gallery) == 2 and hits[0]["category"] == category


@pytest.mark.parametrize("box, message", [
    ("[1, 2", "JSON list of four numbers"),
    ("[100, 10, 20, 40]", "empty or inverted"),
    ("[0, 0, 500, 40]", "outside the picture"),
])
def test_a_bad_box_sent_to_the_endpoint_gets_a_sentence(client, scenes, box, message):
    root, truth = scenes
    image = next(iter(truth.values()))
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(root / image["split"] / image["file_name"])), box, 2,
                       api_name="/search_region")
    _, hits = client.predict("a red circle", 1, api_name="/search_objects")  # and it keeps serving
    assert hits[0]["category"] == "red circle"


def test_a_cold_start_answers_whole_images_before_the_object_index_arrives_verified(hub, built, monkeypatch,
                                                                                    tmp_path):
    """From the Hub (loopback), deferral forced (EAGER_BYTES=0: the test build is tiny): the page serves with the
    manifest, index and metadata only; the object index is fetched and verified afterwards, its vectors never."""
    push(built, Manifest.read(built), "tester/objects", api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setattr(download, "EAGER_BYTES", 0)
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    held = []
    real_attach = service_module.attach_objects
    monkeypatch.setattr(service_module, "attach_objects", lambda *args: held.append(args))
    service = service_module.start(service_module.Settings(index_dir=None, index_repo="tester/objects",
                                                           index_revision=None, endpoint=hub.url, token=None))
    folder = service.source.folder
    assert not any((folder / name).exists() for name in (OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS))
    assert service.searcher.search_text("a red circle", 3)  # whole images are answered already
    with pytest.raises(QueryError, match="still loading"):
        service.searcher.search_objects("a red circle", 3)
    real_attach(*held.pop()).join(60)
    hits = service.searcher.search_objects("a red circle", 3)
    assert hits[0].category == "red circle"
    assert (folder / OBJECTS_INDEX).exists() and not (folder / OBJECTS_VECTORS).exists()


def test_a_small_build_is_fetched_whole_but_the_object_vectors_and_a_restart_fetches_nothing(hub, built, tmp_path,
                                                                                           monkeypatch):
    """EAGER_BYTES as shipped (the test build is tiny, so everything is fetched before serving): everything but
    objects.npy, which only --append reads, and the torch towers the graphs replace (fetched only where a graph fails
    its check); the app restarted on that cache downloads not a byte."""
    manifest = Manifest.read(built)
    push(built, manifest, "tester/small", api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    settings = service_module.Settings(index_dir=None, index_repo="tester/small", index_revision=None,
                                       endpoint=hub.url, token=None)
    hub.bytes_served.clear()
    service = service_module.start(settings)
    unused = {OBJECTS_VECTORS, *manifest.serving.towers}
    assert manifest.serving.towers and set(hub.downloaded("tester/small")) == set(manifest.files) - unused | {MANIFEST}
    assert service.searcher.search_objects("a red circle", 3)[0].category == "red circle"
    hub.bytes_served.clear()
    service_module.start(settings)
    assert sum(hub.bytes_served.values()) == 0


def test_the_page_finds_things_by_text_and_by_a_region_on_desktop_and_phone(served, scenes, tmp_path):
    """In Chromium: the text tab's "Things in pictures" answers with object hits (labelled by category, box on the
    thumbnail, box in the details); the image tab searches a typed region of the chosen picture; both on a phone,
    and both pass axe-core with no serious or critical violation."""
    url, service = served
    root, truth = scenes
    image = next(iter(truth.values()))
    category, box = image["objects"][2]
    expected = service.searcher.search_objects("a red circle", 5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                page = browser.new_context(viewport=viewport).new_page()
                page.goto(url + "/", wait_until="domcontentloaded")
                page.get_by_label("Things in pictures").check()
                page.get_by_label("Describe the image").fill("a red circle")
                page.get_by_role("button", name="Search", exact=True).click()
                wait_for_results(page)
                labels = page.locator("#results .caption-label")
                expect(labels).to_have_text([re.compile(rf" · {hit.category}$") for hit in expected], timeout=WAIT)
                page.locator("#results .thumbnail-item").first.click()
                expect(page.locator("#details")).to_contain_text(
                    f"red circle at [{', '.join(f'{v:g}' for v in expected[0].box)}]", timeout=WAIT)
                shot(page, f"objects-text-{name}")
                assert_accessible(page, f"things found by text, details shown ({name})")
                page.get_by_role("tab", name="Image → Image").click()
                page.get_by_test_id("image").locator("input[type=file]").set_input_files(
                    root / image["split"] / image["file_name"])
                wait_for_results(page)
                region = page.get_by_label("Region [x0, y0, x1, y1] in the picture's pixels")
                picture = page.get_by_test_id("image").locator(".image-frame img")
                expect(picture).to_have_attribute("src", re.compile(re.escape(image["file_name"])), timeout=WAIT)
                expect(picture).to_have_js_property("complete", True, timeout=WAIT)
                shown = picture.bounding_box()
                # the picture is drawn centred in its element, scaled down to fit and never up (object-fit)
                scale = min(shown["width"] / 192, shown["height"] / 192, 1)
                left, top = (shown["width"] - 192 * scale) / 2, (shown["height"] - 192 * scale) / 2
                for x, y in ((box[2] - 1, box[3] - 1), (box[0] + 1, box[1] + 1)):  # two taps, the far corner first
                    picture.click(position={"x": left + x * scale, "y": top + y * scale})
                expect(region).to_have_value(re.compile(r"^\[\d+, \d+, \d+, \d+\]$"), timeout=WAIT)
                tapped = json.loads(region.input_value())
                assert iou(tapped, box) > 0.8, (tapped, box)  # the box between the taps, in the picture's pixels
                region.fill(json.dumps(box))
                region.press("Enter")  # from the keyboard
                expect(labels.first).to_have_text(re.compile(rf" · {category}$"), timeout=WAIT)
                shot(page, f"objects-region-{name}")
                assert_accessible(page, f"things found by a region ({name})")
                region.fill("[50, 10, 20, 40]")
                page.get_by_role("button", name="Search this region").click()
                expect(page.get_by_text("empty or inverted").first).to_be_visible(timeout=WAIT)
                page.context.close()
        finally:
            browser.close()
