"""Chromium pages for the browser tests: Debian's /usr/bin/chromium driven by Playwright, never a download."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT = 30_000  # ms; generous for a 2-core machine, but bounded


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_for_results(page: Page) -> None:
    thumbnails = page.locator("#results .thumbnail-item")
    expect(thumbnails.first).to_be_visible(timeout=WAIT)
    expect(thumbnails.first.locator("img")).to_have_js_property("complete", True, timeout=WAIT)
    expect(page.locator("#results")).not_to_have_attribute("aria-busy", "true", timeout=WAIT)  # the search has ended
