"""The atlas in Chromium: the whole map drawn, a zoomed region showing pictures, the search placed among its
results, pan and zoom by pointer, and a clicked picture opening its details.

Screenshots are written under the test's tmp_path (and copied to test-artifacts/screenshots/ for a human)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from testkit.browser import DESKTOP, PHONE, SCREENSHOTS, WAIT, wait_for_results

ORANGE = np.array([217, 72, 15])  # the search's star and the results' rings (atlas.js)


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(WAIT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_server[0] + "/", wait_until="domcontentloaded")
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _canvas_shot(page, path) -> np.ndarray:
    page.locator("#atlas canvas").screenshot(path=str(path))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_atlas_shows_the_gallery_places_the_search_and_opens_a_clicked_picture(page, app_server, tmp_path):
    gallery = app_server[1].searcher.gallery
    box = page.get_by_label("Describe the image")
    box.fill("a red circle")
    box.press("Enter")
    wait_for_results(page)
    page.get_by_role("tab", name="Map").click()
    expect(page.locator("#atlas .atlas[data-ready=true]")).to_be_attached(timeout=WAIT)
    page.wait_for_function("() => window.clipAtlas.state.highlight.length === 5 && window.clipAtlas.frames.length")

    # The whole map: every image drawn (a gallery this small shows pictures at once), the search's star among them.
    page.wait_for_function("() => Number(window.clipAtlas.root.dataset.thumbnails) > 0")
    page.wait_for_timeout(300)
    whole = _canvas_shot(page, tmp_path / "atlas-whole.png")
    assert (np.abs(whole - 250).sum(axis=-1) > 30).mean() > 0.02, "the whole map is (nearly) blank"
    star = page.evaluate("() => { const a = window.clipAtlas, q = a.state.query;"
                         " return [q[0] * a.view.s + a.view.tx, q[1] * a.view.s + a.view.ty]; }")
    assert np.abs(whole[round(star[1]), round(star[0])] - ORANGE).max() < 40, "no star where the search lands"
    # Placed among its results: nearer to them than the gallery's images are on average.
    spread = page.evaluate("""() => { const a = window.clipAtlas, q = a.state.query, d = (r) => Math.hypot(
        a.x[r] - q[0], a.y[r] - q[1]); const all = Array.from(a.x, (_, r) => d(r));
        return [Math.max(...a.state.highlight.map(d)), all.reduce((s, v) => s + v, 0) / all.length]; }""")
    assert spread[0] < spread[1]

    # Zoom into the top result's region: its neighbours as pictures, told apart.
    top = page.evaluate("() => window.clipAtlas.screenOf(window.clipAtlas.state.highlight[0])")
    scale = page.evaluate("() => window.clipAtlas.view.s")
    canvas = page.locator("#atlas canvas").bounding_box()
    page.mouse.move(canvas["x"] + top[0], canvas["y"] + top[1])
    for _ in range(4):
        page.mouse.wheel(0, -300)  # zoom about the cursor
        page.wait_for_timeout(60)
    page.wait_for_function(f"() => window.clipAtlas.view.s > {scale} * 2")
    page.wait_for_function("() => Number(window.clipAtlas.root.dataset.thumbnails) > 0")
    page.wait_for_timeout(500)
    zoomed = _canvas_shot(page, tmp_path / "atlas-zoomed.png")
    colours = len(np.unique(zoomed.reshape(-1, 3), axis=0))
    assert colours > 300, f"only {colours} colours in the zoomed map: no pictures drawn"

    # Pan by dragging: the map follows the pointer.
    before = page.evaluate("() => [window.clipAtlas.view.tx, window.clipAtlas.view.ty]")
    page.mouse.move(canvas["x"] + 200, canvas["y"] + 200)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 260, canvas["y"] + 230, steps=5)
    page.mouse.up()
    after = page.evaluate("() => [window.clipAtlas.view.tx, window.clipAtlas.view.ty]")
    assert after == pytest.approx([before[0] + 60, before[1] + 30], abs=1)

    # The keyboard does the same: arrows pan, + zooms.
    page.locator("#atlas canvas").focus()
    before = page.evaluate("() => ({...window.clipAtlas.view})")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("+")
    after = page.evaluate("() => ({...window.clipAtlas.view})")
    assert after["s"] == pytest.approx(before["s"] * 1.5)

    # Click a picture: its details, as a result shows them. A picture wholly inside the canvas: one drawn across
    # its right or bottom edge can have its middle outside it, where the click reaches the page, not the map.
    # Two frames first: `drawn` describes the last frame painted, and the one after the "+" may not have run yet.
    whole_picture = "(d) => d[4] && d[1] > 0 && d[2] > 0 && d[1] + d[3] < a.w && d[2] + d[3] < a.h"
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_function(f"() => {{ const a = window.clipAtlas; return a.drawn.some({whole_picture}); }}")
    row, left, top_edge, side, _ = page.evaluate(
        f"() => {{ const a = window.clipAtlas; return a.drawn.filter({whole_picture}).pop(); }}")
    page.mouse.click(canvas["x"] + left + side / 2, canvas["y"] + top_edge + side / 2)
    image_id = gallery.rows([row])[0].image_id
    expect(page.locator("#details")).to_contain_text(f"Image {image_id}", timeout=WAIT)
    expect(page.get_by_role("button", name="More like this")).to_be_visible()


def test_atlas_pans_and_pinches_by_touch_on_a_phone(browser, app_server):
    context = browser.new_context(viewport=PHONE, device_scale_factor=3, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT)
    try:
        page = context.new_page()
        page.goto(app_server[0] + "/", wait_until="domcontentloaded")
        page.get_by_role("tab", name="Map").click()
        expect(page.locator("#atlas .atlas[data-ready=true]")).to_be_attached(timeout=WAIT)
        box = page.locator("#atlas canvas").bounding_box()
        assert box["width"] <= PHONE["width"]
        cdp = context.new_cdp_session(page)
        x, y = box["x"] + box["width"] / 2, box["y"] + min(box["height"], 400) / 2

        def touch(kind, points):
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
                {"x": px, "y": py, "id": number} for number, (px, py) in enumerate(points)]})

        view = page.evaluate("() => ({...window.clipAtlas.view})")
        touch("touchStart", [(x, y)])
        for step in range(1, 11):
            touch("touchMove", [(x + 4 * step, y)])
        touch("touchEnd", [])
        panned = page.evaluate("() => ({...window.clipAtlas.view})")
        assert panned["tx"] == pytest.approx(view["tx"] + 40, abs=2) and panned["s"] == view["s"]
        touch("touchStart", [(x - 30, y), (x + 30, y)])
        for step in range(1, 11):
            touch("touchMove", [(x - 30 - 6 * step, y), (x + 30 + 6 * step, y)])
        touch("touchEnd", [])
        pinched = page.evaluate("() => ({...window.clipAtlas.view})")
        assert pinched["s"] == pytest.approx(view["s"] * 3, rel=0.05)  # fingers 60 -> 180 px apart
    finally:
        context.close()


def test_the_map_in_view_follows_every_change_of_the_results(page, app_server):
    """With the Map open, "More results" and a result's "More like this" ring their results at once (no tab switch
    needed); while the Map is hidden a search asks the app for no marks, and opening it shows the latest."""
    searcher = app_server[1].searcher
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "component_server" in request.url else None)

    def ringed(hits) -> None:
        rows = [searcher.gallery.row_of(hit.image_id) for hit in hits]
        page.wait_for_function("(rows) => JSON.stringify(window.clipAtlas.state.highlight) === JSON.stringify(rows)",
                               arg=rows)

    box = page.get_by_label("Describe the image")
    box.fill("a red circle")
    box.press("Enter")
    wait_for_results(page)
    page.get_by_role("tab", name="Map").click()
    expect(page.locator("#atlas .atlas[data-ready=true]")).to_be_attached(timeout=WAIT)
    top = searcher.search_text("a red circle", 10)
    ringed(top[:5])

    page.get_by_role("button", name="More results").click()
    expect(page.locator("#results")).to_contain_text("Results 6–10", timeout=WAIT)
    ringed(top[5:])
    star = page.evaluate("() => window.clipAtlas.state.query")
    assert star is not None and page.evaluate("() => window.clipAtlas.state.label") == "your search"

    page.locator("#results .thumbnail-item").first.click()
    page.get_by_role("button", name="More like this").click()
    ringed(searcher.search_similar(top[5].image_id, 5))
    assert page.evaluate("() => window.clipAtlas.state.query") != star  # the star moved to the new search
    assert asked, "the map in view never asked for its marks"

    # Hidden: a search costs no request for marks; the Map shows its results when opened again.
    page.get_by_role("tab", name="Text → Image").click()
    asked.clear()
    box.fill("a blue square")
    box.press("Enter")
    wait_for_results(page)
    expect(page.locator("#results .caption-label").first).to_contain_text("blue square", timeout=WAIT)
    assert not asked, f"a hidden map asked for marks: {asked}"
    page.get_by_role("tab", name="Map").click()
    ringed(searcher.search_text("a blue square", 5))
