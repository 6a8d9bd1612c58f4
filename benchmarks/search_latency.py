"""How fast is a search, for a visitor in a real browser? Search pressed (or picture chosen) → five thumbnails painted,
text and picture, p50/p95; raw-HTTP timings per endpoint to explain that figure; optionally many clients at once.

    python -m benchmarks.search_latency [--also before=DIR] [--queries 30] [--parts browser,http,load] [--quick]
    python -m benchmarks.search_latency --modes objects,region [--objects 500000]   # finding things (issue #19)

Serves the 123,287-row synthetic artifacts (benchmarks.artifacts: the builder's format, the default model's
random-weight stand-in; with --objects N, an object index of N boxes beside them, COCO's ~500,000 by default when
--modes names objects or region) with `python app.py` from this checkout, labelled --label, and from every --also
LABEL=DIR (DIR holds an app.py and clipsearch/, e.g. `git archive REV app.py clipsearch | tar -x -C DIR`). All apps
run at once and every part alternates its queries between them, so a machine that gets busier or quieter during the run
(other people's work) weighs on every column alike: that is how before/after comparisons are made.

- browser: Debian's Chromium (/usr/bin/chromium; never `playwright install`) via Playwright, 1280×900. Times are
  taken in the page with performance.now(): text from just before the Search button's click() to the moment all
  five result <img> of this answer have loaded, been decoded and a frame has been painted; picture from the file
  input's change event to the same point (where the page does not search on upload, the script presses "Find
  similar images" the moment the preview has loaded: a visitor with zero reaction time). --modes objects: "Things
  in pictures" chosen once, then like text (five things, each thumbnail with its box drawn); --modes region: a
  picture chosen (its whole-image search answered and painted, not timed), a region typed in the Region field, then
  timed from its Enter keydown to the region search's five things painted. Every query is distinct
  (texts never hit the app's text cache; a distinct 640×480 JPEG per picture). The breakdown comes from the page
  (queue stream, fetches, Resource Timing, DOM mutations, img loads) and from Gradio's own per-event traces
  (GRADIO_PROFILING=1); the CPU time the app and the browser used per search says how much work a search is,
  however busy the machine.
- http: one query at a time over raw HTTP on a kept-alive connection (POST /gradio_api/call/<endpoint> + its result
  stream): /search_text, /search_image (timed from its upload) and /search_similar, and /search_objects and
  /search_region when the artifacts have an object index (--objects). What the Space's CPU spends per
  visitor without a browser on the same cores; the difference to the browser figure is the page's own work.
- load (only when asked): --clients clients with their own connections, back to back for --seconds, a share of them
  picture queries (uploaded each time), after --warmup-seconds of the same load (Gradio's session store fills up:
  memory reaches its steady state). One app at a time. Reports queries/s, p50/p95/p99, errors (a full queue's
  refusal counts as one) and the app's memory growth. It replaces the old throughput and load tests: a visitor's
  mix on every endpoint at once says what the per-endpoint floods said, and more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.artifacts import (
    COCO_COUNT,
    COCO_OBJECTS,
    coco_like_jpegs,
    synthetic_artifacts,
    text_queries,
    with_serving_copy,
)
from benchmarks.common import (
    App,
    Report,
    arguments,
    call,
    fresh_folder,
    percentile,
    proc_stat,
    subjects,
    upload,
)
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP

# p50 ms in the browser, the issues' targets for a 2-vCPU Space: finding things by a description or by a region of a
# picture has the same goals as whole-image search by a description or by a picture (issue #19)
TARGETS = {"text": 100.0, "image": 200.0, "objects": 100.0, "region": 200.0}
MODES = tuple(TARGETS)
OBJECT_MODES = {"objects", "region"}  # what needs an object index
STARTS = {"text": "Search click", "image": "file chosen", "objects": "Search click", "region": "Enter in Region"}
IMAGE_TAB = re.compile(r"^(Image → Image|Image)$")
K = 5

# Installed before any page script: records, with performance.now(), every EventSource message (Gradio's queue
# stream), every fetch start, file-input changes, and offers __bench.wait(t0, mode) that resolves once the newest
# answer's five thumbnails are painted, with the milestones of the way there.
PAGE_JS = r"""
(() => {
  const marks = [];
  const bench = window.__bench = {marks, completed: []};
  performance.setResourceTimingBufferSize(1000000);  // the default 250 entries fill up within a few searches
  const mark = (what, extra) => marks.push({t: performance.now(), what, ...(extra || {})});
  // Gradio's queue answers on a server-sent-event stream read with fetch (GET .../queue/data): read a tee of it.
  // The thumbnails of an answer: the URLs of its files (Gradio FileData carries a path; a hit's COCO url does not).
  const fileUrls = (outputs) => {
    const urls = [];
    const walk = (v) => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') {
        if (typeof v.url === 'string' && typeof v.path === 'string') urls.push(v.url);
        Object.values(v).forEach(walk);
      }
    };
    walk(outputs);
    return urls;
  };
  const answered = (t, urls, bytes) => {
    bench.completed.push({t, urls, bytes});
    if (bench.onAnswer) bench.onAnswer();
  };
  const onEvent = (text) => {
    let msg = '?';
    let urls = [];
    try {
      const data = JSON.parse(text);
      msg = data.msg;
      if (msg === 'process_completed' && data.output && data.output.data) urls = fileUrls(data.output.data);
    } catch (err) {}
    const t = performance.now();
    marks.push({t, what: 'sse:' + msg, bytes: text.length});
    if (msg === 'process_completed') answered(t, urls, text.length);
  };
  // An event outside the queue (queue=False) is one POST .../run/<name> answered with {"data": [...]}.
  const onRunAnswer = (text) => {
    const t = performance.now();
    marks.push({t, what: 'run:answer', bytes: text.length});
    try { answered(t, fileUrls(JSON.parse(text).data), text.length); } catch (err) {}
  };
  const readStream = async (body) => {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const {done, value} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (data) onEvent(data);
      }
    }
  };
  const origFetch = window.fetch;
  window.fetch = function(input, init) {
    const url = typeof input === 'string' ? input : (input && input.url) || String(input);
    mark('fetch', {url});
    const answer = origFetch.apply(this, arguments);
    if (url.includes('/run/')) {
      return answer.then((response) => {
        response.clone().text().then(onRunAnswer).catch(() => null);
        return response;
      });
    }
    if (!url.includes('/queue/data')) return answer;
    return answer.then((response) => {
      if (!response.body) return response;
      const [mine, theirs] = response.body.tee();
      readStream(mine).catch(() => null);  // the client aborts the stream when it is done
      return new Response(theirs, {status: response.status, statusText: response.statusText,
                                   headers: response.headers});
    });
  };
  document.addEventListener('change', (e) => {
    if (e.target && e.target.type === 'file') mark('file-chosen');
  }, true);
  document.addEventListener('keydown', (e) => { if (e.key === 'Enter') mark('enter'); }, true);
  document.addEventListener('load', (e) => {
    if (e.target && e.target.tagName === 'IMG') mark('img-load', {src: e.target.currentSrc || e.target.src});
  }, true);

  const abs = (u) => new URL(u, location.href).href;
  const thumbs = () => Array.from(document.querySelectorAll('#results .thumbnail-item img'));
  const afterPaint = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));

  // Resolves when the newest answer after t0 is on screen: its thumbnails (by URL) are the grid's, loaded and
  // decoded, and a frame has been painted since. For image mode with a clickName, clicks that button the moment
  // the preview has loaded.
  bench.wait = (t0, mode, want, clickName, timeoutMs = 30000) => new Promise((resolve, reject) => {
    let done = false, clicked = null, previewAt = null, domAt = null, checking = false;
    const timer = setTimeout(() => {
      done = true;
      reject(new Error('timeout: ' + JSON.stringify(marks.filter((m) => m.t >= t0).map((m) => m.what))));
    }, timeoutMs);
    const check = async () => {
      if (done || checking) return;
      checking = true;
      try {
        if (mode === 'image' && clicked === null && previewAt === null) {
          const preview = document.querySelector('[data-testid=image] .image-frame img');
          if (preview && preview.complete && preview.naturalWidth > 0 && preview.src.includes(want)) {
            previewAt = performance.now();
            if (clickName) {
              clicked = performance.now();
              const button = Array.from(document.querySelectorAll('button'))
                .find((b) => b.textContent.trim() === clickName);
              button.click();
            }
          }
        }
        const answer = bench.completed.filter((c) => c.t >= t0).pop();
        if (!answer) return;
        const imgs = thumbs();
        const wanted = answer.urls.map(abs);
        const srcs = new Set(imgs.map((i) => i.src));
        if (wanted.length === 0 || !wanted.every((u) => srcs.has(u))) return;
        if (domAt === null) domAt = performance.now();
        const mine = imgs.filter((i) => wanted.includes(i.src));
        if (!mine.every((i) => i.complete && i.naturalWidth > 0)) return;
        const loadedAt = performance.now();
        await Promise.all(mine.map((i) => i.decode().catch(() => null)));
        await afterPaint();
        if (done) return;
        done = true;
        clearTimeout(timer);
        observer.disconnect();
        resolve({t0, painted: performance.now(), loadedAt, domAt, previewAt, clicked, answerAt: answer.t,
                 answerBytes: answer.bytes, shown: mine.length});
      } finally {
        checking = false;
      }
    };
    // No polling (a per-frame loop would itself load the CPU the app shares): DOM changes, image loads and the
    // answer's arrival are the moments anything can have changed; a slow fallback catches a missed one.
    const observer = new MutationObserver(check);
    observer.observe(document.body, {subtree: true, childList: true, attributes: true,
                                     attributeFilter: ['src', 'class']});
    document.addEventListener('load', check, true);
    bench.onAnswer = check;
    const fallback = () => { if (!done) { check(); setTimeout(fallback, 250); } };
    setTimeout(fallback, 250);
  });
})();
"""

# The timeline of one search, relative to t0, from the marks and the Resource Timing entries since t0.
TIMELINE_JS = r"""
([t0, end]) => {
  const rel = (t) => t === null || t === undefined ? null : t - t0;
  const marks = window.__bench.marks.filter((m) => m.t >= t0 && m.t <= end + 1);
  const first = (pred) => { const m = marks.find(pred); return m ? rel(m.t) : null; };
  const res = performance.getEntriesByType('resource').filter((r) => r.startTime >= t0 - 1 && r.startTime <= end);
  const kind = (name) => name.includes('/queue/join') ? 'join' : name.includes('/queue/data') ? 'stream'
    : name.includes('/upload') ? 'upload' : /\/file=|\/thumb/.test(name) ? 'file' : 'other';
  const requests = res.map((r) => ({kind: kind(r.name), name: r.name.slice(0, 160), start: rel(r.startTime),
    end: rel(r.responseEnd), transfer: r.transferSize, body: r.encodedBodySize, status: r.responseStatus}));
  return {
    join_sent: first((m) => m.what === 'fetch' && m.url.includes('/queue/join')),
    upload_sent: first((m) => m.what === 'fetch' && m.url.includes('/upload')),
    process_starts: first((m) => m.what === 'sse:process_starts'),
    sse: marks.filter((m) => m.what.startsWith('sse:')).map((m) => [m.what.slice(4), rel(m.t), m.bytes]),
    fetches: marks.filter((m) => m.what === 'fetch')
      .map((m) => [m.url.replace(location.origin, '').slice(0, 120), rel(m.t)]),
    requests,
  };
}
"""


def page_setup(browser, url: str, rtt_ms: float = 0):
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(60_000)
    context.add_init_script(PAGE_JS)
    page = context.new_page()
    if rtt_ms:  # a visitor far from the Space: Chromium delays every response by this much (DevTools' throttling)
        context.new_cdp_session(page).send("Network.emulateNetworkConditions", {
            "offline": False, "latency": rtt_ms, "downloadThroughput": -1, "uploadThroughput": -1})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/", wait_until="domcontentloaded")
    page.get_by_label("Describe the image").wait_for(state="visible")
    return context, page, errors


def text_search(page, text: str) -> dict:
    page.get_by_label("Describe the image").fill(text)
    return page.evaluate("""async () => {
        const button = Array.from(document.querySelectorAll('button')).find((b) => b.textContent.trim() === 'Search');
        await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));  // start from a quiet frame
        const t0 = performance.now();
        const waiting = window.__bench.wait(t0, 'text', '', '');
        button.click();
        return await waiting;
    }""")


def clear_picture(page) -> None:
    """Remove the current picture (outside the timed part), as a visitor does before choosing the next one."""
    image = page.get_by_test_id("image")
    if image.locator(".image-frame img").count():
        image.get_by_role("button", name="Remove Image").click()
        image.locator(".image-frame img").wait_for(state="detached")
        image.locator("input[type=file]").wait_for(state="attached")


def image_search(page, picture: Path, button: str | None, timeout_ms: int = 30_000) -> dict:
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))")
    page.evaluate("() => { window.__bench.pending = null; }")
    # t0 is the file input's change event, recorded in the page; start waiting from just before it
    start = page.evaluate("() => performance.now()")
    page.evaluate(f"""() => {{
        window.__bench.pending = window.__bench.wait({start}, 'image', {json.dumps(picture.name)},
                                                     {json.dumps(button)}, {timeout_ms})
            .then((r) => {{ window.__bench.result = r; }}, (e) => {{ window.__bench.result = {{error: String(e)}}; }});
        window.__bench.result = null;
    }}""")
    page.get_by_test_id("image").locator("input[type=file]").set_input_files(picture)
    result = settled(page)
    if "error" in result:
        raise RuntimeError(result["error"])
    chosen = page.evaluate(f"() => window.__bench.marks.filter((m) => m.t >= {start} && m.what === 'file-chosen')"
                           ".map((m) => m.t)")
    result["t0"] = chosen[0] if chosen else start
    return result


REGION_FIELD = "Region [x0, y0, x1, y1] in the picture's pixels"


def settled(page) -> dict:
    """The pending search's result, awaited in the page: Playwright's wait_for_function would poll on every animation
    frame, and that loop loaded the cores the app shares (~90 extra frames per picture search); bench.wait's own
    timer ends a search that never settles."""
    return page.evaluate("async () => { await window.__bench.pending; return window.__bench.result; }")


def region_search(page, box: list[int], timeout_ms: int = 30_000) -> dict:
    """The region typed into its field (not timed), then Enter pressed: timed from that keydown, recorded in the
    page, to the five things painted. The picture is already chosen and its own search answered."""
    field = page.get_by_label(REGION_FIELD)
    field.fill(json.dumps(box))
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))")
    start = page.evaluate("() => performance.now()")
    page.evaluate(f"""() => {{
        window.__bench.result = null;
        window.__bench.pending = window.__bench.wait({start}, 'text', '', '', {timeout_ms})
            .then((r) => {{ window.__bench.result = r; }}, (e) => {{ window.__bench.result = {{error: String(e)}}; }});
    }}""")
    field.press("Enter")
    result = settled(page)
    if "error" in result:
        raise RuntimeError(result["error"])
    pressed = page.evaluate(f"() => window.__bench.marks.filter((m) => m.t >= {start} && m.what === 'enter')"
                            ".map((m) => m.t)")
    result["t0"] = pressed[0] if pressed else start
    return result


def regions(count: int, size=(640, 480), seed: int = 0) -> list[list[int]]:
    """`count` boxes [x0, y0, x1, y1] inside a `size` picture, sides 64 px to 60% of it: a thing a visitor marks."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        w, h = (int(rng.integers(64, 0.6 * side)) for side in size)
        x0, y0 = int(rng.integers(0, size[0] - w)), int(rng.integers(0, size[1] - h))
        boxes.append([x0, y0, x0 + w, y0 + h])
    return boxes


def searches_on_upload(url: str) -> bool:
    """Whether the page's picture input itself triggers an event that fills the results (from Gradio's config)."""
    config = httpx.get(url + "/config", timeout=30).json()
    pictures = {c["id"] for c in config["components"] if c.get("type") == "image"}
    results = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "results"}
    return any(any(target[0] in pictures and target[1] in ("change", "upload", "input") for target in d["targets"])
               and results & set(d["outputs"]) for d in config["dependencies"])


def summarise(result: dict, timeline: dict) -> dict:
    t0 = result["t0"]
    rel = lambda t: None if t is None else t - t0  # noqa: E731
    requests = timeline["requests"]
    files = [r for r in requests if r["kind"] == "file"]
    completed = [s for s in timeline["sse"] if s[0] == "process_completed"]
    upload = [r for r in requests if r["kind"] == "upload"]
    return {
        "total": result["painted"] - t0,
        "upload_sent": timeline["upload_sent"], "upload_done": upload[0]["end"] if upload else None,
        "preview": rel(result.get("previewAt")), "clicked": rel(result.get("clicked")),
        "join_sent": timeline["join_sent"],
        "join_done": next((r["end"] for r in requests if r["kind"] == "join"), None),
        "process_starts": timeline["process_starts"], "answer": rel(result["answerAt"]),
        "dom": rel(result["domAt"]), "loaded": rel(result["loadedAt"]),
        "answer_bytes": result["answerBytes"],
        "all_answers_bytes": sum(s[2] or 0 for s in completed),
        "sse_messages": len(timeline["sse"]),
        "requests": len(requests), "kinds": sorted(r["kind"] for r in requests),
        "thumbs_network": sum(1 for r in files if r["transfer"] > 0),
        "thumbs_cached": sum(1 for r in files if r["transfer"] == 0),
        "thumb_bytes": sum(r["body"] for r in files if r["transfer"] > 0),
        "thumb_ms": [r["end"] - r["start"] for r in files if r["transfer"] > 0],
        "fetches": timeline["fetches"],
    }


def med(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def server_traces(url: str) -> list[dict]:
    try:
        return httpx.get(url + "/gradio_api/profiling/traces", timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return []


def trace_summary(traces: list[dict], windows: list[tuple[float, float]]) -> dict:
    """Median phases per Gradio function, over the events of the timed queries (not the warm-up)."""
    traces = [t for t in traces if any(lo <= t["timestamp"] <= hi for lo, hi in windows)]
    by_fn: dict[str, dict] = {}
    for name in sorted({t["fn_name"] for t in traces}):
        mine = [t for t in traces if t["fn_name"] == name]
        by_fn[name] = {"n": len(mine), **{phase: statistics.median(t.get(f"{phase}_ms") or 0 for t in mine)
                                          for phase in ("queue_wait", "preprocess", "fn_call", "postprocess",
                                                        "total")}}
    return by_fn



def cpu_now(app_pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each app, and ("browser") by everything else this script started: Playwright
    and Chromium. The load average says how busy the machine is; these say how much work a search is."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                table[int(entry.name)] = proc_stat(int(entry.name))

    def subtree(root: int) -> set[int]:
        mine, grew = {root}, True
        while grew:
            more = {pid for pid, (parent, _) in table.items() if parent in mine} - mine
            mine |= more
            grew = bool(more)
        return mine

    apps = {label: subtree(pid) for label, pid in app_pids.items()}
    rest = subtree(os.getpid()) - set().union(*apps.values()) - {os.getpid()}
    used = {label: sum(table[p][1] for p in pids if p in table) for label, pids in apps.items()}
    used["browser"] = sum(table[p][1] for p in rest if p in table)
    return used


class Subject:
    """One app under test: its label, the folder holding its app.py, the running app and what was measured."""

    def __init__(self, number: int, label: str, root: Path):
        self.label, self.root = label, root
        self.slug = f"{number}-{re.sub(r'[^A-Za-z0-9]+', '-', label)}"  # for its files
        self.app: App | None = None
        self.rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
        self.cpu: dict[str, list[float]] = {mode: [0.0, 0.0] for mode in MODES}
        self.windows: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        self.button: str | None = None
        self.browser: dict = {}
        self.http: dict[str, list[float]] = {"search_text": [], "search_image": [], "search_similar": []}
        self.load: dict = {}


# --- browser -------------------------------------------------------------------------------------------------------
def browser_part(args, subjects: list[Subject], loads: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    n = args.queries + args.warmup
    # every subject gets the same queries (each app has its own caches; the browser keeps one per origin)
    pictures = coco_like_jpegs(args.cache / "jpegs-browser", n, seed=7)
    texts = text_queries(n, first=0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        for subject in subjects:
            subject.context, subject.page, subject.errors = page_setup(browser, subject.app.url, args.rtt_ms)
        pids = {subject.label: subject.app.process.pid for subject in subjects}
        time.sleep(1)  # let the pages settle (fonts, lazy chunks) before the first search

        def timed(subject: Subject, mode: str, i: int, search) -> None:
            before = cpu_now(pids)
            began = time.time()
            result = search()
            ended = time.time()
            after = cpu_now(pids)
            if i >= args.warmup:
                subject.windows[mode].append((began, ended))
                subject.cpu[mode][0] += after[subject.label] - before[subject.label]
                subject.cpu[mode][1] += after["browser"] - before["browser"]
                timeline = subject.page.evaluate(TIMELINE_JS, [result["t0"], result["painted"]])
                subject.rows[mode].append(summarise(result, timeline))

        if "text" in args.modes:
            for i in range(n):
                for subject in subjects:
                    timed(subject, "text", i, lambda s=subject, t=texts[i]: text_search(s.page, t))
        if "objects" in args.modes:
            things = text_queries(n, first=50_000)
            for subject in subjects:
                subject.page.get_by_label("Things in pictures").check()
            for i in range(n):
                for subject in subjects:
                    timed(subject, "objects", i, lambda s=subject, t=things[i]: text_search(s.page, t))
        loads.append(Path("/proc/loadavg").read_text().split()[0])
        if args.modes & {"image", "region"}:
            for subject in subjects:
                subject.page.get_by_role("tab", name=IMAGE_TAB).click()
                subject.page.get_by_test_id("image").wait_for(state="visible")
                if not searches_on_upload(subject.app.url):
                    subject.button = "Find similar images"  # pressed the moment the preview has loaded
        if "image" in args.modes:
            for i in range(n):
                for subject in subjects:
                    clear_picture(subject.page)  # as a visitor does before the next picture; not timed
                    timed(subject, "image", i, lambda s=subject, p=pictures[i]: image_search(s.page, p, s.button))
        if "region" in args.modes:
            boxes = regions(n, seed=11)
            for i in range(n):
                for subject in subjects:
                    clear_picture(subject.page)  # not timed: a new picture, and its own whole-image search
                    image_search(subject.page, pictures[(i + n // 2) % n], subject.button)
                    timed(subject, "region", i, lambda s=subject, b=boxes[i]: region_search(s.page, b))
        loads.append(Path("/proc/loadavg").read_text().split()[0])
        for subject in subjects:
            subject.page.screenshot(path=str(args.work / f"browser-{subject.slug}.png"), full_page=True)
            if subject.errors:
                raise RuntimeError(f"{subject.label}: errors in the page: {subject.errors}")
            traces = server_traces(subject.app.url)
            # text and image events have functions of their own; objects and region share theirs with text and
            # the region button, so their traces are labelled with the mode
            server = {fn if mode in ("text", "image") else f"{fn} ({mode})": phases
                      for mode, windows in subject.windows.items() if windows
                      for fn, phases in trace_summary(traces, windows).items()}
            subject.browser = browser_summary(subject, server)
        browser.close()


def browser_summary(subject: Subject, server: dict) -> dict:
    out = {"server": server, "modes": {}}
    for mode, mine in subject.rows.items():
        if not mine:
            continue
        totals = [r["total"] for r in mine]
        out["modes"][mode] = {
            "p50": statistics.median(totals), "p95": percentile(totals, 0.95), "n": len(totals),
            "pressed": sum(1 for r in mine if r["clicked"] is not None),
            # CPU used while each timed search ran (clearing the picture before an image query excluded); the
            # browser's figure includes the other subjects' pages idling meanwhile
            "cpu_app": 1000 * subject.cpu[mode][0] / len(mine), "cpu_browser": 1000 * subject.cpu[mode][1] / len(mine),
            **{key: med(mine, key) for key in ("upload_sent", "upload_done", "preview", "clicked", "join_sent",
                                               "join_done", "process_starts", "answer", "dom", "loaded",
                                               "answer_bytes", "all_answers_bytes", "sse_messages", "requests",
                                               "thumbs_network", "thumbs_cached", "thumb_bytes")},
            "thumb_ms": statistics.median([ms for r in mine for ms in r["thumb_ms"]] or [0]),
        }
    return out


def fmt(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def browser_table(subjects: list[Subject], loads: list[str], modes: set[str]) -> str:
    """The browser part's table: text and image rows always (as before the object modes), objects and region rows
    only when they were measured."""
    shown = [mode for mode in MODES if mode in ("text", "image") or mode in modes]
    lines = ["| | " + " | ".join(s.label for s in subjects) + " |", "|---|" + "---:|" * len(subjects)]

    def row(name, get):
        def cell(subject):
            try:
                return get(subject.browser)
            except (KeyError, TypeError):
                return "—"
        lines.append(f"| {name} | " + " | ".join(cell(s) for s in subjects) + " |")

    for mode in shown:
        start = STARTS[mode]
        row(f"**{mode}: {start} → 5 thumbnails painted, p50 ms** (target ≤ {TARGETS[mode]:.0f})",
            lambda r, m=mode: f"**{fmt(r['modes'][m]['p50'], 1)}**")
        row(f"{mode}: p95 ms", lambda r, m=mode: fmt(r["modes"][m]["p95"], 1))
        row(f"{mode}: queries timed", lambda r, m=mode: str(r["modes"][m]["n"]))
    row("image: button pressed by the script (no search on upload)",
        lambda r: "yes" if r["modes"]["image"]["pressed"] else "no")
    lines.append("| *breakdown: medians, ms from t0* |" + " |" * len(subjects))
    steps = [("image", "upload request sent", "upload_sent"), ("image", "upload done", "upload_done"),
             ("image", "preview loaded", "preview"), ("image", "button pressed by the script", "clicked")]
    for name, key in [("queue/join sent", "join_sent"), ("queue/join answered", "join_done"),
                      ("SSE process_starts", "process_starts"), ("SSE process_completed: the answer", "answer"),
                      ("new thumbnails in the DOM", "dom"), ("thumbnails loaded", "loaded")]:
        steps += [(mode, name, key) for mode in shown if mode != "image"] + [("image", name, key)]
    for mode, name, key in steps:
        row(f"{mode}: {name}", lambda r, m=mode, k=key: fmt(r["modes"][m].get(k), 1))
    lines.append("| *per search* |" + " |" * len(subjects))
    for mode in shown:
        row(f"{mode}: CPU ms, app / browser (means)",
            lambda r, m=mode: f"{fmt(r['modes'][m]['cpu_app'])} / {fmt(r['modes'][m]['cpu_browser'])}")
        row(f"{mode}: HTTP requests (median)", lambda r, m=mode: fmt(r["modes"][m]["requests"]))
        row(f"{mode}: SSE messages (median)", lambda r, m=mode: fmt(r["modes"][m]["sse_messages"]))
        row(f"{mode}: answer (process_completed) bytes", lambda r, m=mode: fmt(r["modes"][m]["answer_bytes"]))
        row(f"{mode}: thumbnails fetched / from cache (median)",
            lambda r, m=mode: f"{fmt(r['modes'][m]['thumbs_network'])} / {fmt(r['modes'][m]['thumbs_cached'])}")
        row(f"{mode}: one thumbnail request, ms (median)", lambda r, m=mode: fmt(r["modes"][m]["thumb_ms"], 1))
    lines.append("| *server: Gradio's traces, medians, ms* |" + " |" * len(subjects))
    for fn in sorted({fn for s in subjects for fn in s.browser.get("server", {})}):
        for phase in ("queue_wait", "preprocess", "fn_call", "postprocess", "total"):
            if fn != "gradio_file_upload" or phase == "total":
                row(f"`{fn}` {phase}", lambda r, f=fn, k=phase: fmt(r["server"][f][k], 1))
    return (f"Load average (1 min) before the text queries, between them and the pictures, after: "
            f"{' / '.join(loads)}.\n\n" + "\n".join(lines))


OBJECT_NOTE = (" Objects: \"Things in pictures\" chosen, t0 the Search click, end five things painted, each "
               "thumbnail with its box drawn by the app. Region: a picture chosen and its whole-image search painted "
               "(not timed), a region typed in the Region field; t0 its Enter keydown, end five things painted.")


# --- raw HTTP, one query at a time -----------------------------------------------------------------------------------
def http_part(args, subjects: list[Subject], warmup: int = 3) -> None:
    """Each endpoint's queries alternate between the apps; the first `warmup` rounds are not counted."""
    n = args.http_queries + warmup
    texts = text_queries(n, first=100_000)
    things, boxes = text_queries(n, first=150_000), regions(n, seed=13)
    pictures = coco_like_jpegs(args.cache / "jpegs-http", n, seed=5)
    clients = [httpx.Client(base_url=s.app.url, timeout=120) for s in subjects]
    try:
        for i in range(n):
            for subject, client in zip(subjects, clients):
                # /search_image is timed from its upload, as a script's call (gradio_client) uploads, then searches
                uploading = time.perf_counter()
                picture = upload(client, pictures[i])
                uploaded_ms = (time.perf_counter() - uploading) * 1000
                for endpoint, data in (("search_image", [picture, K]), ("search_text", [texts[i], K]),
                                       ("search_similar", [9 + 3 * ((i * 7919) % args.count), K]),
                                       ("search_objects", [things[i], K]),
                                       ("search_region", [picture, json.dumps(boxes[i]), K])):
                    if endpoint not in subject.http:  # the object endpoints: only with an object index
                        continue
                    began = time.perf_counter()
                    call(client, endpoint, data)
                    if i >= warmup:
                        subject.http[endpoint].append((time.perf_counter() - began) * 1000
                                                      + (uploaded_ms if endpoint == "search_image" else 0))
    finally:
        for client in clients:
            client.close()


def http_table(subjects: list[Subject]) -> str:
    lines = ["| app | encoder | endpoint | p50 ms | p90 ms | n |", "|---|---|---|---:|---:|---:|"]
    for s in subjects:
        for endpoint, times in s.http.items():
            lines.append(f"| {s.label} | {s.app.encoder_line()} | /{endpoint} | "
                         f"{statistics.median(times):.1f} | {percentile(times, 0.9):.1f} | {len(times)} |")
    return "\n".join(lines)


# --- many clients at once --------------------------------------------------------------------------------------------
def drive_clients(url: str, clients: int, seconds: float, query, kind) -> dict:
    """`clients` threads, each with its own connection, calling `query(client, number, sent)` back to back for
    `seconds`; each latency is counted under `kind(number, sent)`; an exception is counted as an error and never
    stops the run. Returns {"latencies": {kind: [ms]}, "errors": [...], "elapsed": s (finishing the requests in
    flight at the deadline included)}."""
    latencies: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client_loop(number: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            start.wait()
            sent = 0
            while time.perf_counter() < deadline[0]:
                label, began = kind(number, sent), time.perf_counter()
                try:
                    query(client, number, sent)
                    with lock:
                        latencies[label].append((time.perf_counter() - began) * 1000)
                except Exception as error:  # noqa: BLE001 - counted and reported, never stops the run
                    with lock:
                        errors.append(f"{label}: {type(error).__name__}: {str(error)[:160]}")
                sent += 1

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - began}


def load_part(args, subjects: list[Subject]) -> None:
    pictures = coco_like_jpegs(args.cache / "jpegs-load", 64, seed=3)
    texts = text_queries(args.clients * 4000, first=200_000)
    per_client = len(texts) // args.clients
    every = round(1 / args.image_share) if args.image_share > 0 else 0

    def kind(number: int, sent: int) -> str:
        return "image" if every and (sent + number) % every == 0 else "text"

    def queries(first: int):
        """Client n's query number `sent`; texts from `first` on in each client's share, never the same twice."""
        def query(client: httpx.Client, number: int, sent: int) -> None:
            if kind(number, sent) == "image":
                hits = call(client, "search_image", [upload(client, pictures[(number + sent) % len(pictures)]), K])
            else:
                hits = call(client, "search_text", [texts[number * per_client + (first + sent) % per_client], K])
            if len(hits[1]) != K:
                raise RuntimeError(f"{len(hits[1])} hits instead of {K}")
        return query

    for subject in subjects:  # one app at a time: the others idle
        ready = subject.app.rss_mb()
        warm = drive_clients(subject.app.url, args.clients, args.warmup_seconds, queries(per_client // 2), kind)
        before = subject.app.rss_mb()
        run = drive_clients(subject.app.url, args.clients, args.seconds, queries(0), kind)
        subject.load = {**run, "warm_errors": warm["errors"], "rss": (ready, before, subject.app.rss_mb())}


def load_table(args, subjects: list[Subject]) -> str:
    lines = ["| app | queries | done | per second | p50 ms | p95 ms | p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    notes = []
    for s in subjects:
        latencies, elapsed = s.load["latencies"], s.load["elapsed"]
        for name, values in (("text", latencies["text"]), ("picture (upload + /search_image)", latencies["image"]),
                             ("all", latencies["text"] + latencies["image"])):
            lines.append(f"| {s.label} | {name} | {len(values)} | {len(values) / elapsed:.1f} | "
                         f"{fmt(statistics.median(values) if values else None)} | {fmt(percentile(values, 0.95))} | "
                         f"{fmt(percentile(values, 0.99))} |")
        ready, before, after = s.load["rss"]
        errors = s.load["errors"]
        notes.append(f"- {s.label}: {len(errors)} errors ({sum('503' in e for e in errors)} 'busy' refusals), "
                     f"{len(s.load['warm_errors'])} in the warm-up; memory {ready:.0f} MB at the start, {before:.0f} "
                     f"after the warm-up, {after:.0f} after the run ({(after - before) / before:+.1%}; target: no "
                     "errors, growth under 10%)" + "".join(f"\n  - {e}" for e in sorted(set(errors))[:3]))
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


# --- the run -------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = arguments(__doc__, quick="a check that it runs end to end: 2,000 rows, 3 queries, 5 s of load")
    parser.add_argument("--label", default="this checkout", help="column name for this checkout's app")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="another app (DIR holds its app.py and clipsearch/), served at once, queries alternating")
    parser.add_argument("--env", action="append", default=[], metavar="LABEL:KEY=VALUE",
                        help="an environment variable for one app's process, e.g. int8:CLIPSEARCH_PRECISION=int8")
    parser.add_argument("--parts", default="browser,http", help="comma-separated: browser, http, load")
    parser.add_argument("--count", type=int, default=COCO_COUNT, help="gallery rows (default COCO's 123,287)")
    parser.add_argument("--queries", type=int, default=30, help="browser: timed queries per mode (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="browser: warm-up queries per mode")
    parser.add_argument("--rtt-ms", type=float, default=0,
                        help="browser: every request's answer delayed this long, as for a visitor far from the Space "
                             "(Chromium's network emulation; 0: loopback)")
    parser.add_argument("--modes", default="text,image",
                        help="browser: comma-separated: text, image, objects (things by a description), region "
                             "(things by a region of a picture)")
    parser.add_argument("--objects", type=int, default=None,
                        help="boxes in the artifacts' object index (default: COCO's ~500,000 when --modes names "
                             "objects or region, else none); with one, http also times /search_objects and "
                             "/search_region")
    parser.add_argument("--http-queries", type=int, default=60, help="http: timed queries per endpoint")
    parser.add_argument("--clients", type=int, default=32, help="load: concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="load: measured seconds per app")
    parser.add_argument("--warmup-seconds", type=float, default=40.0,
                        help="load: the same load first, until memory is steady (Gradio keeps its newest 500 "
                             "sessions and each raw-HTTP call is one)")
    parser.add_argument("--image-share", type=float, default=0.25, help="load: share of picture queries")
    args = parser.parse_args()
    if args.quick:
        args.count, args.queries, args.warmup, args.http_queries = 2000, 3, 1, 5
        args.clients, args.seconds, args.warmup_seconds = 4, 5.0, 2.0
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if args.modes - set(MODES):
        parser.error(f"--modes: {', '.join(sorted(args.modes - set(MODES)))} is not one of {', '.join(MODES)}")
    if args.objects is None:
        args.objects = (8000 if args.quick else COCO_OBJECTS) if args.modes & OBJECT_MODES else 0
    if args.modes & OBJECT_MODES and not args.objects:
        parser.error("--modes objects and region need an object index: leave --objects out or give it boxes")
    report = Report.start("search_latency", "Search latency: what a visitor feels")
    settings: dict[str, dict[str, str]] = {}
    for item in args.env:
        label, _, setting = item.partition(":")
        key, _, value = setting.partition("=")
        settings.setdefault(label, {})[key] = value
    # as a build publishes them: with the encoder's serving copy and image graph, which the app then loads
    folder = with_serving_copy(synthetic_artifacts(args.cache, args.count, objects=args.objects))
    args.work = fresh_folder(args.cache / "search_latency")
    measured = [Subject(number, label, root) for number, (label, root) in enumerate(subjects(args.label, args.also))]
    for subject in measured if args.objects else []:
        subject.http.update(search_objects=[], search_region=[])
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    with contextlib.ExitStack() as stack:
        for subject in measured:
            env = {"INDEX_DIR": str(folder), "CLIPSEARCH_CACHE": str(args.work / f"cache-{subject.slug}"),
                   **({"GRADIO_PROFILING": "1"} if "browser" in parts else {}), **settings.get(subject.label, {})}
            subject.app = stack.enter_context(App(env, args.work / f"app-{subject.slug}.log", root=subject.root))
        if "browser" in parts:
            browser_part(args, measured, loads)
        if "http" in parts:
            http_part(args, measured)
        if "load" in parts:
            load_part(args, measured)
    apps = "\n".join(f"- **{s.label}**: `{s.root}` ({report.code if s.root == measured[0].root else 'another copy'})"
                     f"; {s.app.encoder_line()}; serving {s.app.seconds:.1f} s after process "
                     f"start, {s.app.logged_rss_mb:.0f} MB at ready" for s in measured)
    things = (f" with an object index of {args.objects:,} boxes" if args.objects else "")
    body = (f"{args.count:,}-row synthetic artifacts{things}, the default model's random-weight stand-in (same "
            "compute). "
            f"Apps served at once, queries alternating between them:\n\n{apps}\n")
    if "browser" in parts:
        far = f", every request's answer delayed {args.rtt_ms:g} ms (a visitor's round trip)" if args.rtt_ms else ""
        body += (f"\n## In the browser\n\nChromium headless via Playwright, 1280×900, app and browser on the same "
                 f"machine{far}; {args.queries} distinct queries per mode after {args.warmup} warm-up. t0: the Search "
                 "click (text) or the file input's change event (picture); end: five result thumbnails loaded, "
                 f"decoded and painted.{OBJECT_NOTE if args.modes & OBJECT_MODES else ''}\n\n"
                 f"{browser_table(measured, loads, args.modes)}\n")
    if "http" in parts:
        body += ("\n## Over raw HTTP, one query at a time\n\nKept-alive connection, the result stream read to its end; "
                 "/search_image timed from the start of its upload (a script's call uploads, then searches); the "
                 f"other picture endpoints reuse that upload.\n\n{http_table(measured)}\n")
    if "load" in parts:
        body += (f"\n## {args.clients} clients at once\n\n{args.seconds:.0f} s per app after "
                 f"{args.warmup_seconds:.0f} s of warm-up, {args.image_share:.0%} picture queries, k={K}, raw HTTP "
                 f"on loopback, one app at a time.\n\n{load_table(args, measured)}\n")
    report.write(body + ("\n(--quick: a check that the script runs, not figures to quote)\n" if args.quick else ""),
                 args.results)


if __name__ == "__main__":
    main()
