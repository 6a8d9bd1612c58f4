"""The real UI in a real browser: Playwright driving Debian's Chromium against the in-process app.

Screenshots land in test-artifacts/screenshots/ (gitignored) so a human can look at the finished UI.
Needs /usr/bin/chromium (`apt-get install -y chromium`); never `playwright install`.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from testkit.browser import DESKTOP, PHONE, WAIT, shot, wait_for_results

TITLE = "COCO CLIP visual search"
TABS = ["Text → Image", "Image → Image", "Map", "About"]


def captions(page: Page):
    return page.locator("#results .caption-label")


def expect_ranking(page: Page, hits, wanted: str) -> None:
    """The grid shows the service's own ranking for the query, and its top hit is the wanted kind of picture.

    The first check is the UI's job; the second is the shapes model's (a model trained too briefly, e.g. on a
    busy machine, fails it while the UI is fine; see train_metrics.json next to the trained model).
    """
    expect(captions(page)).to_have_text([re.compile(rf" · {re.escape(hit.caption)}$") for hit in hits], timeout=WAIT)
    ranking = [f"{hit.score:.3f} {hit.caption}" for hit in hits]
    assert wanted in hits[0].caption, f"the shapes model ranks {ranking} for this query (UI shows the same)"


def test_text_search_details_and_more_like_this(open_page, app_server):
    expected = app_server[1].searcher.search_text("a red circle", 5)
    page = open_page(DESKTOP)
    expect(page).to_have_title(TITLE)
    expect(page.get_by_role("heading", name=TITLE)).to_be_visible()
    for name in TABS:
        expect(page.get_by_role("tab", name=name)).to_be_visible()

    box = page.get_by_label("Describe the image")
    box.fill("a red circle")
    box.press("Enter")
    wait_for_results(page)
    expect(captions(page)).to_have_count(5)  # the slider's default
    expect_ranking(page, expected, "red circle")
    shot(page, "1-text-search")

    page.locator("#results .thumbnail-item").first.click()
    details = page.locator("#details")
    expect(details).to_contain_text(re.compile(r"Image \d+"), timeout=WAIT)
    expect(details).to_contain_text("Captions")
    expect(details).to_contain_text(expected[0].caption)
    image_id = re.search(r"Image (\d+)", details.inner_text()).group(1)
    more = page.get_by_role("button", name="More like this")
    expect(more).to_be_visible(timeout=WAIT)
    shot(page, "2-result-details")

    first_caption = captions(page).first.inner_text().split(" · ", 1)[1]
    more.click()
    # The picked image is its own nearest neighbour: the refreshed grid starts with it at similarity 1.000.
    expect(captions(page).first).to_have_text(f"similarity 1.000 · {first_caption}", timeout=WAIT)
    wait_for_results(page)
    page.locator("#results .thumbnail-item").first.click()
    expect(details).to_contain_text(f"Image {image_id}", timeout=WAIT)


def test_image_search_starts_when_the_picture_is_chosen(open_page, app_server, tmp_path):
    """No button press: choosing the file is enough (as dropping, pasting or capturing a picture is)."""
    from testkit.models import draw_shape

    picture = tmp_path / "query.png"
    draw_shape("blue", "square", size=64, seed=4242).save(picture)
    expected = app_server[1].searcher.search_image(picture, 5)
    page = open_page(DESKTOP)
    page.get_by_role("tab", name="Image → Image").click()
    image = page.get_by_test_id("image")
    expect(image).to_be_visible(timeout=WAIT)
    expect(page.locator("#results .thumbnail-item")).to_have_count(0)
    image.locator("input[type=file]").set_input_files(picture)
    expect(image.locator(".image-frame img")).to_have_attribute("src", re.compile(r"query\.png$"), timeout=WAIT)
    wait_for_results(page)
    expect_ranking(page, expected, "blue square")
    shot(page, "3-image-search")

    # The button still searches again; removing the picture leaves the results (and raises no error).
    page.get_by_role("button", name="Find similar images").click()
    wait_for_results(page)
    image.get_by_role("button", name="Remove Image").click()
    expect(image.locator(".image-frame img")).to_have_count(0)
    expect(captions(page)).to_have_count(5)


def test_a_slow_search_shows_it_is_busy(open_page, app_server):
    """No Gradio tracker redraws the page during a search; the results are marked busy instead (aria-busy), and a
    bar shows once the search has taken 400 ms (here every response is delayed 700 ms, as for a distant visitor)."""
    page = open_page(DESKTOP)
    results = page.locator("#results")
    # the bar's opacity as drawn: 0 where it is not there at all (no ::after without the `searching` class)
    bar = "el => { const a = getComputedStyle(el, '::after'); return a.content === 'none' ? 0 : +a.opacity; }"
    page.context.new_cdp_session(page).send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 700, "downloadThroughput": -1, "uploadThroughput": -1})
    box = page.get_by_label("Describe the image")
    box.fill("a red circle")
    box.press("Enter")
    expect(results).to_have_attribute("aria-busy", "true", timeout=WAIT)
    assert results.evaluate(bar) == 0, "the bar shows before 400 ms have passed"
    page.wait_for_timeout(550)
    assert results.get_attribute("aria-busy") == "true", "the search ended before the bar was due: latency too low"
    assert results.evaluate(bar) == 1, "a search running for 550 ms shows no bar"
    expect(page.locator("[data-testid=status-tracker]:not(.hide)")).to_have_count(0)  # nor Gradio's tracker
    wait_for_results(page)
    expect(results).to_have_attribute("aria-busy", "false")
    assert results.evaluate(bar) == 0, "the bar stays after the search"
    expect(captions(page)).to_have_count(5)


def test_thumbnails_are_cached_for_good(open_page, app_server):
    """Thumbnail URLs are content-addressed (folder = build's manifest hash, file = row), so they are served
    immutable for a year: a browser never asks for one again."""
    thumbnails = app_server[1].searcher.gallery.thumbnails.cache_dir
    page = open_page(DESKTOP)
    answers = []
    page.on("response", lambda response: answers.append(response) if "/gradio_api/file=" in response.url else None)
    box = page.get_by_label("Describe the image")
    box.fill("a green triangle")
    box.press("Enter")
    wait_for_results(page)
    expect(page.locator("#results .thumbnail-item img")).to_have_count(5)
    shown = page.locator("#results .thumbnail-item img").evaluate_all("imgs => imgs.map(i => i.src)")
    page.wait_for_timeout(200)
    served = {response.url: response for response in answers}
    assert set(shown) <= set(served), (shown, list(served))
    for url in shown:
        response = served[url]
        assert f"{thumbnails.name}/" in url, url
        assert response.status == 200, (url, response.status)
        headers = response.all_headers()
        assert headers["cache-control"] == "public, max-age=31536000, immutable", headers
        assert headers["content-type"] == "image/jpeg" and headers.get("etag"), headers
    # Asked again (a revisit, as a cache would): the same bytes, the same headers, and 304 for a known ETag.
    again = page.request.get(shown[0])
    assert again.status == 200 and again.headers["cache-control"].endswith("immutable")
    assert again.body() == served[shown[0]].body()
    unchanged = page.request.get(shown[0], headers={"If-None-Match": again.headers["etag"]})
    assert unchanged.status == 304
    # Anything else under the file route is still Gradio's to answer (and to refuse).
    assert page.request.get(shown[0].replace(".jpg", ".png")).status in (403, 404)


def test_about_tab(open_page):
    page = open_page(DESKTOP)
    page.get_by_role("tab", name="About").click()
    panel = page.get_by_role("tabpanel")
    expect(panel.get_by_role("heading", name="This build")).to_be_visible(timeout=WAIT)
    expect(panel).to_contain_text("/search_text")
    shot(page, "5-about")


def test_empty_query_shows_validation_message(open_page):
    """Gradio 6 shows a validator's sentence next to the input (not a toast); it must be visible."""
    page = open_page(DESKTOP)
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("Please type a description")).to_be_visible(timeout=WAIT)
    expect(page.locator("#results .thumbnail-item")).to_have_count(0)


def test_phone_shows_both_search_modes_without_a_menu(open_page):
    """At 390 px both modes are tabs in plain sight (Gradio's default would hide one behind its "…" menu)."""
    page = open_page(PHONE)
    for name in TABS:
        tab = page.get_by_role("tab", name=name)
        expect(tab).to_be_visible(timeout=WAIT)
        bounds = tab.bounding_box()
        assert bounds and bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= PHONE["width"], (name, bounds)
    expect(page.locator(".overflow-menu button")).to_be_hidden()
    assert_no_horizontal_overflow(page)
    shot(page, "8-phone-modes")

    page.get_by_role("tab", name="Image → Image").click()
    expect(page.get_by_role("tab", name="Image → Image")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_test_id("image")).to_be_visible(timeout=WAIT)
    page.get_by_role("tab", name="Text → Image").click()
    expect(page.get_by_label("Describe the image")).to_be_visible(timeout=WAIT)
    assert_no_horizontal_overflow(page)


def test_phone_layout(open_page):
    page = open_page(PHONE)
    box = page.get_by_label("Describe the image")
    button = page.get_by_role("button", name="Search", exact=True)
    for element in (box, button):
        expect(element).to_be_visible(timeout=WAIT)
        element.scroll_into_view_if_needed()
        bounds = element.bounding_box()
        assert bounds and bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= PHONE["width"] + 1, bounds
    assert_no_horizontal_overflow(page)
    shot(page, "6-phone")

    box.fill("a red circle")
    button.click()
    wait_for_results(page)
    assert_no_horizontal_overflow(page)
    # A visitor who searched sees the first results without scrolling: the examples scroll sideways in one row.
    page.evaluate("window.scrollTo(0, 0)")
    first = page.locator("#results .thumbnail-item").first.bounding_box()
    assert first and first["y"] + first["height"] <= PHONE["height"], f"first result below the first screen: {first}"
    shot(page, "7-phone-results")


def assert_no_horizontal_overflow(page: Page) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= PHONE["width"] + 2, f"horizontal overflow on a phone: scrollWidth {scroll_width}"
