"""The region drawn on the image tab's picture (#19), in Chromium on desktop and phone: the first tap's corner as a
marker, the box between two taps (or typed) as a rectangle exactly where those pixels are shown (the picture scaled
down and letterboxed), nothing for an empty or invalid box, and nothing once a new picture is chosen; axe stays clean
with the drawing on the page."""

from __future__ import annotations

import json
import re

import gradio as gr
import pytest
from playwright.sync_api import Page, expect

from clipsearch.web.handlers import Handlers
from testkit.axe import assert_accessible
from testkit.browser import DESKTOP, PHONE, WAIT, shot, wait_for_results
from testkit.models import draw_shape

WIDE = (800, 450)  # scaled down on both viewports: pillarboxed on desktop, letterboxed on a phone
TALL = (300, 600)
PIXELS = 2  # how far (CSS px) a drawn edge may be from where the picture's pixels are shown


def _picture(page: Page):
    return page.get_by_test_id("image").locator(".image-frame img")


def _upload(page: Page, path, size) -> dict:
    """Choose a picture; once shown, where its pixel (0, 0) is on screen and the CSS px per pixel, as Gradio places
    it (centred in its <img> box, scaled down to fit, never up)."""
    page.get_by_test_id("image").locator("input[type=file]").set_input_files(path)
    picture = _picture(page)
    expect(picture).to_have_js_property("naturalWidth", size[0], timeout=WAIT)
    expect(picture).to_have_js_property("complete", True, timeout=WAIT)
    wait_for_results(page)  # the picture is searched on arrival; let the layout settle
    shown = picture.bounding_box()
    scale = min(shown["width"] / size[0], shown["height"] / size[1], 1)
    return {"x": shown["x"] + (shown["width"] - size[0] * scale) / 2,
            "y": shown["y"] + (shown["height"] - size[1] * scale) / 2, "scale": scale}


def _on_screen(at: dict, box) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return at["x"] + x0 * at["scale"], at["y"] + y0 * at["scale"], at["x"] + x1 * at["scale"], \
        at["y"] + y1 * at["scale"]


def _drawn_box(page: Page) -> tuple[float, float, float, float]:
    rect = page.locator("#query-picture svg.region-drawing rect.region-box")
    expect(rect).to_have_count(1, timeout=WAIT)
    found = rect.bounding_box()
    return found["x"], found["y"], found["x"] + found["width"], found["y"] + found["height"]


def _nothing_drawn(page: Page) -> None:
    expect(page.locator("#query-picture svg.region-drawing")).to_have_count(0, timeout=WAIT)


@pytest.mark.parametrize("name, viewport", [("desktop", DESKTOP), ("phone", PHONE)])
def test_the_region_is_drawn_where_its_pixels_are_shown(open_page, tmp_path, name, viewport):
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    draw_shape("blue", "square", size=64, seed=7).resize(WIDE).save(wide)
    draw_shape("red", "circle", size=64, seed=8).resize(TALL).save(tall)
    page = open_page(viewport)
    page.get_by_role("tab", name="Image → Image").click()
    at = _upload(page, wide, WIDE)
    assert at["scale"] < 1, f"the test picture is not scaled down on the {name} page: {at}"
    region = page.get_by_label("Region [x0, y0, x1, y1] in the picture's pixels")

    # The first tap: a marker on that corner, nothing in the field yet.
    first, second = (620, 340), (150, 90)
    page.mouse.click(*_on_screen(at, (*first, 0, 0))[:2])
    marker = page.locator("#query-picture svg.region-drawing circle.region-corner")
    expect(marker).to_have_count(1, timeout=WAIT)
    ring = marker.bounding_box()
    centre = (ring["x"] + ring["width"] / 2, ring["y"] + ring["height"] / 2)
    expected = _on_screen(at, (*first, 0, 0))[:2]
    assert centre == pytest.approx(expected, abs=PIXELS), (centre, expected)
    expect(region).to_have_value("")

    # The second tap: the box in the field, drawn over exactly those pixels; the marker gone.
    page.mouse.click(*_on_screen(at, (*second, 0, 0))[:2])
    expect(region).to_have_value(re.compile(r"^\[\d+, \d+, \d+, \d+\]$"), timeout=WAIT)
    box = json.loads(region.input_value())
    assert box == pytest.approx([*second, *first], abs=2 / at["scale"])  # a tap lands within a pixel on screen
    assert _drawn_box(page) == pytest.approx(_on_screen(at, box), abs=PIXELS)
    expect(marker).to_have_count(0)
    shot(page, f"region-drawn-{name}")
    assert_accessible(page, f"image tab with a region drawn ({name})")
    expect(page.locator("#query-picture svg.region-drawing")).to_have_attribute("aria-hidden", "true")

    # A typed box redraws it; an empty, inverted or out-of-picture one draws nothing.
    typed = [40, 50, 760, 400]
    region.fill(json.dumps(typed))
    page.wait_for_function("(box) => JSON.stringify(window.clipRegion.drawn && window.clipRegion.drawn.box)"
                           " === JSON.stringify(box)", arg=typed)
    assert _drawn_box(page) == pytest.approx(_on_screen(at, typed), abs=PIXELS)
    for wrong in ("[500, 10, 20, 40]", "[0, 0, 900, 40]", "[1, 2", ""):
        region.fill(wrong)
        _nothing_drawn(page)
        region.fill(json.dumps(typed))
        _drawn_box(page)

    # A new picture starts a new region: the field emptied, nothing drawn; the next taps draw on the new picture.
    at = _upload(page, tall, TALL)
    expect(region).to_have_value("", timeout=WAIT)
    _nothing_drawn(page)
    page.mouse.click(*_on_screen(at, (250, 500, 0, 0))[:2])
    expect(marker).to_have_count(1, timeout=WAIT)  # a visitor taps again once the first corner shows
    page.mouse.click(*_on_screen(at, (40, 60, 0, 0))[:2])
    expect(region).to_have_value(re.compile(r"^\[\d+, \d+, \d+, \d+\]$"), timeout=WAIT)
    box = json.loads(region.input_value())
    assert box == pytest.approx([40, 60, 250, 500], abs=2 / at["scale"])
    assert _drawn_box(page) == pytest.approx(_on_screen(at, box), abs=PIXELS)


def _tap(drawing, x, y):
    return Handlers.pick_corner(drawing, gr.SelectData(None, {"index": [x, y], "value": None}))


def test_two_taps_make_the_box_and_the_first_is_kept_in_the_drawing_meanwhile():
    drawing, field = _tap("", 300, 40)
    assert json.loads(drawing) == {"corner": [300, 40]} and field == gr.skip()  # the field waits for the second
    drawing, field = _tap(drawing, 20, 200)  # any two opposite corners, in any order
    assert json.loads(drawing) == {"box": [20, 40, 300, 200]} and json.loads(field) == [20, 40, 300, 200]
    # A box already drawn stays drawn beside a new first corner; a state that is not ours counts as none.
    assert json.loads(_tap(drawing, 5, 6)[0]) == {"box": [20, 40, 300, 200], "corner": [5, 6]}
    assert json.loads(_tap("not json", 5, 6)[0]) == {"corner": [5, 6]}
