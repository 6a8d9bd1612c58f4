"""Atlas frame times: how long each frame of the Map tab takes while a visitor pans and zooms, in Chromium, on a
COCO-size synthetic build (123,287 images, benchmarks.artifacts with the builder's own atlas), desktop and phone.

- desktop: 1280x900 at device pixel ratio 1; mouse drag and wheel (Playwright's input, real DOM events).
- phone: 390x844 at device pixel ratio 3 with touch, the CPU throttled 4x (Chromium's emulation of a mid-range
  phone, as Lighthouse uses it); one-finger drag and two-finger pinch sent as touch events (CDP Input).
- draw: the atlas's own work per frame (atlas.js: dots, thumbnails, marks), the part that decides smoothness;
  interval: time between the frames the page drew while the gesture ran (the browser's compositing included;
  headless Chromium paces frames at ~16.7 ms).
Also the atlas's download size. Writes results/atlas.md and screenshots beside it.

    python -m benchmarks.atlas                 # 123,287 images (the first run spends ~10 min on the t-SNE layout)
    python -m benchmarks.atlas --quick         # 20,000 images
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import httpx

from benchmarks.artifacts import COCO_COUNT, synthetic_artifacts
from benchmarks.common import App, Report, arguments, percentile
from clipsearch.core.atlas import ATLAS
from clipsearch.core.manifest import Manifest
from clipsearch.web.atlas import SCRIPT
from testkit.browser import CHROMIUM, CHROMIUM_ARGS

MOVES = 60  # input events per gesture
RECORD = """() => { const a = window.clipAtlas, run = (window.__run || 0) + 1; a.frames.length = 0;
  window.__run = run; window.__stamps = [];  // a numbered run: the previous one's last callback stops itself
  const tick = (t) => { if (window.__run !== run) return; window.__stamps.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick); }"""
PICTURES = """async () => { const a = window.clipAtlas, frame = () => new Promise((r) => requestAnimationFrame(
  () => requestAnimationFrame(r))), star = () => [a.state.query[0] * a.view.s + a.view.tx,
  a.state.query[1] * a.view.s + a.view.ty];
  let [x, y] = star(); a.panBy(a.w / 2 - x, a.h / 2 - y);
  for (let i = 0; i < 60; i++) { await frame(); [x, y] = star();
    if (a.inView > 1000) a.zoomAt(x, y, 1.3); else if (a.inView < 30) a.zoomAt(x, y, 1 / 1.3); else break; }
  return a.inView; }"""  # not measured: zoom about the search until its neighbours show as pictures
STOP = """() => { window.__run += 1; const s = window.__stamps;
  return {draw: window.clipAtlas.frames.slice(), interval: s.slice(1).map((t, i) => t - s[i]),
          inView: window.clipAtlas.inView, thumbnails: Number(window.clipAtlas.root.dataset.thumbnails)}; }"""


def open_atlas(page, url: str) -> None:
    page.goto(url + "/", wait_until="domcontentloaded")
    box = page.get_by_label("Describe the image")
    box.fill("a dog catching a frisbee in a park")
    box.press("Enter")
    page.locator("#results .thumbnail-item").first.wait_for(timeout=120_000)
    page.get_by_role("tab", name="Map").click()
    page.wait_for_selector("#atlas .atlas[data-ready=true]", state="attached", timeout=120_000)
    page.wait_for_function("() => window.clipAtlas.frames.length > 0")


class Desktop:
    name, viewport, scale, touch, throttle = "desktop 1280×900", {"width": 1280, "height": 900}, 1, False, 1

    def __init__(self, page, box):
        self.page, self.box = page, box

    def pan(self) -> None:
        x, y = self.box["x"] + self.box["width"] / 2, self.box["y"] + self.box["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        for step in range(MOVES):
            self.page.mouse.move(x + 4 * ((step % 30) - 15 if step % 60 < 30 else 15 - (step % 30)), y + step % 7)
        self.page.mouse.up()

    def star(self) -> tuple[float, float]:
        """Where the search landed, on the page: a visitor zooms in there."""
        x, y = self.page.evaluate("() => { const a = window.clipAtlas, q = a.state.query; "
                                  "return [q[0] * a.view.s + a.view.tx, q[1] * a.view.s + a.view.ty]; }")
        return (self.box["x"] + min(max(x, 60), self.box["width"] - 60),
                self.box["y"] + min(max(y, 60), self.box["height"] - 60))

    def zoom(self, steps: int = MOVES, direction: int = 1) -> None:
        self.page.mouse.move(*self.star())
        for _ in range(steps):
            self.page.mouse.wheel(0, -30 * direction)  # x1.046 a step: x15 over a gesture


class Phone(Desktop):
    name, viewport, scale, touch, throttle = "phone 390×844 (DPR 3, CPU ÷4)", {"width": 390, "height": 844}, 3, True, 4

    def __init__(self, page, box):
        super().__init__(page, box)
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Emulation.setCPUThrottlingRate", {"rate": self.throttle})

    def send_touch(self, kind: str, points: list[tuple[float, float]]) -> None:
        self.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": x, "y": y, "id": number} for number, (x, y) in enumerate(points)]})

    def pan(self) -> None:
        x, y = self.box["x"] + self.box["width"] / 2, self.box["y"] + self.box["height"] / 2
        self.send_touch("touchStart", [(x, y)])
        for step in range(MOVES):
            self.send_touch("touchMove", [(x + 3 * (step % 20 - 10), y + 3 * (step % 20 - 10))])
        self.send_touch("touchEnd", [])

    def zoom(self, steps: int = MOVES, direction: int = 1) -> None:
        for _ in range(1):  # a pinch of x7.9 (fingers 40 -> 316 px apart) about where the search landed
            x, y = self.star()
            spreads = [20 * 1.035 ** step for step in range(steps + 1)][::direction]
            self.send_touch("touchStart", [(x - spreads[0], y), (x + spreads[0], y)])
            for spread in spreads[1:]:
                self.send_touch("touchMove", [(x - spread, y), (x + spread, y)])
            self.send_touch("touchEnd", [])


def measure(page, gesture) -> dict:
    page.evaluate(RECORD)
    gesture()
    page.wait_for_timeout(300)  # the last frames of the gesture
    return page.evaluate(STOP)


def run(browser, url: str, device, shots: Path) -> list[tuple[str, dict]]:
    """The four gestures on `device`; screenshots of the whole map and of the zoomed region go to `shots`."""
    context = browser.new_context(viewport=device.viewport, device_scale_factor=device.scale,
                                  is_mobile=device.touch, has_touch=device.touch)
    page = context.new_page()
    open_atlas(page, url)
    user = device(page, page.locator("#atlas canvas").bounding_box())
    name = "phone" if device.touch else "desktop"
    page.wait_for_timeout(300)
    page.locator("#atlas canvas").screenshot(path=str(shots / f"atlas-{name}-whole.jpg"), quality=80)
    rows = [("pan, whole map", measure(page, user.pan)), ("zoom in (wheel / pinch)", measure(page, user.zoom))]
    page.evaluate(PICTURES)
    page.wait_for_function("() => Number(window.clipAtlas.root.dataset.thumbnails) > 0", timeout=60_000)
    page.wait_for_timeout(1500)  # the visible thumbnails arrive
    page.locator("#atlas canvas").screenshot(path=str(shots / f"atlas-{name}-zoomed.jpg"), quality=80)
    rows.append(("pan, zoomed in with thumbnails", measure(page, user.pan)))
    rows.append(("zoom out (wheel / pinch)", measure(page, lambda: user.zoom(direction=-1))))
    context.close()
    return rows


def table(results: list[tuple[str, str, dict]]) -> str:
    lines = ["| viewport | gesture | frames | draw p50 ms | draw p95 ms | interval p50 ms | interval p95 ms | "
             "images in view at the end | thumbnails drawn |", "|---|---|---|---|---|---|---|---|---|"]
    for device, gesture, r in results:
        lines.append(f"| {device} | {gesture} | {len(r['draw'])} | {percentile(r['draw'], 0.5):.1f} | "
                     f"{percentile(r['draw'], 0.95):.1f} | {percentile(r['interval'], 0.5):.1f} | "
                     f"{percentile(r['interval'], 0.95):.1f} | {r['inView']:,} | {r['thumbnails']} |")
    return "\n".join(lines)


def main() -> None:
    from playwright.sync_api import sync_playwright  # lazy: only this benchmark drives a browser

    parser = arguments(__doc__, quick="20,000 images instead of 123,287")
    parser.add_argument("--count", type=int, default=COCO_COUNT, help="images in the synthetic build")
    args = parser.parse_args()
    report = Report.start("atlas", "Atlas: frame times while panning and zooming")
    count = 20_000 if args.quick else args.count
    artifacts = synthetic_artifacts(args.cache, count, thumbnails="realistic" if count < 20_000 else "tiny",
                                    atlas=True)
    results = []
    with App({"INDEX_DIR": str(artifacts), "CLIPSEARCH_CACHE": str(args.cache / "app-cache")},
             args.cache / "atlas-app.log") as app:
        key = Manifest.read(artifacts).files[ATLAS].sha256[:16]  # as clipsearch.web.atlas names its URLs
        started = time.perf_counter()
        points = httpx.get(f"{app.url}/atlas/{key}/points.bin").content
        fetch_ms = (time.perf_counter() - started) * 1000
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            for device in (Desktop, Phone):
                results += [(device.name, gesture, r) for gesture, r in run(browser, app.url, device, args.results)]
            browser.close()
    atlas_file = (artifacts / "atlas.npy").stat().st_size
    body = (f"{count:,} synthetic images (benchmarks.artifacts.synthetic_artifacts with the builder's openTSNE atlas, "
            "64×48 thumbnails), served by `python app.py`; a text search first, so its results are ringed and placed."
            f"\n\n{table(results)}\n\n**Sizes.** atlas.npy in the artifacts: {atlas_file:,} bytes (float32 x, y). "
            f"Sent to the browser when the Map tab is drawn, not before: {len(points):,} bytes (uint16 x, y and a "
            f"colour byte per image; {len(gzip.compress(points)):,} gzipped, not compressed by the app), "
            f"{fetch_ms:.0f} ms over loopback; atlas.js {SCRIPT.stat().st_size:,} bytes. Thumbnails are fetched one "
            "by one for the images in view only (at most one per 64-px cell), and only once at most 1,500 images are "
            "in view.\n\nScreenshots (the canvas): whole map [desktop](atlas-desktop-whole.jpg), "
            "[phone](atlas-phone-whole.jpg); zoomed about the search [desktop](atlas-desktop-zoomed.jpg), "
            "[phone](atlas-phone-zoomed.jpg).")
    report.write(body, args.results)


if __name__ == "__main__":
    main()
