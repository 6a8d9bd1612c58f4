"""What a visitor feels: search latency in a real browser, from the click (or chosen file) to five painted results.

    python benchmarks/browser_latency.py --label after [--queries 30] [--app-root DIR]

Starts `python app.py` on the 123,287-row synthetic artifacts (benchmarks/common.py: builder format, ViT-B/32-size
random CLIP) and drives the page with Playwright in Debian's Chromium (/usr/bin/chromium; never `playwright install`),
desktop viewport 1280×900. Times are taken in the page with performance.now():

- text: from just before the Search button's click() to the moment all five result <img> elements of this answer
  have loaded, been decoded (img.decode()) and a frame has been painted (requestAnimationFrame, then a task);
- image: from the file input's change event (the file is chosen, as a drop or a picker does) to the same point.
  Where the page does not search on upload by itself (read from the app's config), the script presses "Find similar
  images" the moment the preview has loaded, as a visitor with zero reaction time would.

Every query is distinct (text: distinct strings, so the app's text-vector cache never answers; image: a distinct
640×480 JPEG per query). The breakdown comes from the page (the queue's event stream, fetch starts, Resource Timing,
DOM mutations, img load events) and from Gradio's own per-event server traces (GRADIO_PROFILING=1:
queue wait, preprocess, the function itself = encode + search, postprocess).

Results are kept per label in benchmarks/results/browser_latency.json; the Markdown table of every label so far is
printed and written to benchmarks/results/browser_latency.md (`--report` rewrites it from the JSON alone). To
compare code, measure the apps in one run with their queries alternating, so that a machine shared with other jobs
weighs on every column alike: `--app-root DIR --label after --also before=OLD_DIR`, where each DIR holds an app.py
and clipsearch/ (e.g. `git archive <commit> app.py clipsearch | tar -x -C OLD_DIR`). Per search the script also
records the CPU time the app and the browser used, which says how much work a search is however busy the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import common
import httpx
from common import App, coco_like_jpegs, machine, percentile, synthetic_artifacts, text_queries

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"text": 100.0, "image": 200.0}  # p50 ms, the targets for this machine
IMAGE_TAB = re.compile(r"^(Image → Image|Image)$")

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
  const onEvent = (text) => {
    let msg = '?';
    const urls = [];
    try {
      const data = JSON.parse(text);
      msg = data.msg;
      if (msg === 'process_completed' && data.output && data.output.data) {
        const walk = (v) => {
          if (Array.isArray(v)) v.forEach(walk);
          else if (v && typeof v === 'object') {
            if (typeof v.url === 'string') urls.push(v.url);
            Object.values(v).forEach(walk);
          }
        };
        walk(data.output.data[0]);
      }
    } catch (err) {}
    const t = performance.now();
    marks.push({t, what: 'sse:' + msg, bytes: text.length});
    if (msg === 'process_completed') {
      bench.completed.push({t, urls, bytes: text.length});
      if (bench.onAnswer) bench.onAnswer();
    }
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


def page_setup(browser, url: str):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    context.add_init_script(PAGE_JS)
    page = context.new_page()
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
    page.wait_for_function("() => window.__bench.result !== null", timeout=timeout_ms + 30_000)
    result = page.evaluate("() => window.__bench.result")
    if "error" in result:
        raise RuntimeError(result["error"])
    chosen = page.evaluate(f"() => window.__bench.marks.filter((m) => m.t >= {start} && m.what === 'file-chosen')"
                           ".map((m) => m.t)")
    result["t0"] = chosen[0] if chosen else start
    return result


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


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process we can read."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return found


def cpu_now(app_pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each app, and ("browser") by everything else this script started: Playwright
    and Chromium. The load average says how busy the machine is; these say how much work a search is."""
    table = _processes()

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
    """One app under test (a label and the folder holding its app.py and clipsearch/) and its own browser page."""

    def __init__(self, label: str, root: Path):
        self.label, self.root = label, root
        self.rows: dict[str, list[dict]] = {"text": [], "image": []}
        self.cpu: dict[str, list[float]] = {"text": [0.0, 0.0], "image": [0.0, 0.0]}
        self.windows: list[tuple[float, float]] = []
        self.button: str | None = None


def run(args, subjects: list[Subject]) -> dict[str, dict]:
    """Every subject's app runs at once; queries alternate between them, so a machine that gets busier or quieter
    during the run (other people's work) weighs on every column alike."""
    import contextlib

    from playwright.sync_api import sync_playwright

    common.vit_b32_clip(args.cache / "clip-b32")
    folder = synthetic_artifacts(args.cache, args.count)
    n = args.queries + args.warmup
    # every subject gets the same queries (each app has its own caches; the browser keeps one per origin)
    pictures = sorted(coco_like_jpegs(args.cache / "browser-jpegs", n, seed=7).glob("*.jpg"))[:n]
    texts = text_queries(n, seed=11)
    loads = [Path("/proc/loadavg").read_text().strip()]
    header = machine()  # its load average is the one at the start
    with contextlib.ExitStack() as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for subject in subjects:
            subject.app = stack.enter_context(App(folder, args.cache, env={"GRADIO_PROFILING": "1"},
                                                  root=subject.root))
            subject.context, subject.page, subject.errors = page_setup(browser, subject.app.url)
        pids = {subject.label: subject.app.process.pid for subject in subjects}
        time.sleep(1)  # let the pages settle (fonts, lazy chunks) before the first search

        def timed(subject: Subject, mode: str, i: int, search) -> None:
            before = cpu_now(pids)
            began = time.time()
            result = search()
            ended = time.time()
            after = cpu_now(pids)
            if i >= args.warmup:
                subject.windows.append((began, ended))
                subject.cpu[mode][0] += after[subject.label] - before[subject.label]
                subject.cpu[mode][1] += after["browser"] - before["browser"]
                timeline = subject.page.evaluate(TIMELINE_JS, [result["t0"], result["painted"]])
                subject.rows[mode].append(summarise(result, timeline))

        if "text" in args.modes:
            for i in range(n):
                for subject in subjects:
                    timed(subject, "text", i, lambda s=subject, t=texts[i]: text_search(s.page, t))
        loads.append(Path("/proc/loadavg").read_text().strip())
        if "image" in args.modes:
            for subject in subjects:
                subject.page.get_by_role("tab", name=IMAGE_TAB).click()
                subject.page.get_by_test_id("image").wait_for(state="visible")
            for i in range(n):
                for subject in subjects:
                    if i == 0 and not searches_on_upload(subject.app.url):
                        # a visitor must press "Find similar images": the script does, the moment the preview has
                        # loaded (zero reaction time)
                        subject.button = "Find similar images"
                    clear_picture(subject.page)  # as a visitor does before the next picture; not timed
                    timed(subject, "image", i, lambda s=subject, p=pictures[i]: image_search(s.page, p, s.button))
        loads.append(Path("/proc/loadavg").read_text().strip())
        results = {}
        for subject in subjects:
            subject.page.screenshot(path=str(args.cache / f"browser-latency-{subject.label}.png"), full_page=True)
            traces = server_traces(subject.app.url)
            if subject.errors:
                raise RuntimeError(f"{subject.label}: errors in the page: {subject.errors}")
            results[subject.label] = summary(args, subject, trace_summary(traces, subject.windows), header)
        browser.close()
    for result in results.values():
        result["loadavg"] = loads
    return results


def summary(args, subject: Subject, server: dict, header: str) -> dict:
    out = {"label": subject.label, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": header, "queries": args.queries, "server": server, "modes": {},
           "together_with": [], "code": str(subject.root)}
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
            "totals": [round(t, 1) for t in totals],
            "kinds_example": mine[-1]["kinds"], "fetches_example": mine[-1]["fetches"],
        }
    return out


def fmt(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def table(results: dict[str, dict]) -> str:
    labels = list(results)
    head = "| | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels)
    lines = [head]

    def row(name, get):
        def cell(label):
            try:
                return get(results[label])
            except (KeyError, TypeError):
                return "—"
        lines.append(f"| {name} | " + " | ".join(cell(label) for label in labels) + " |")

    for mode in ("text", "image"):
        start = "Search click" if mode == "text" else "file chosen"
        row(f"**{mode}: {start} → 5 thumbnails painted, p50 ms** (target ≤ {TARGETS[mode]:.0f})",
            lambda r, m=mode: f"**{fmt(r['modes'][m]['p50'], digits=1)}**")
        row(f"{mode}: p95 ms", lambda r, m=mode: fmt(r["modes"][m]["p95"], digits=1))
        row(f"{mode}: queries timed", lambda r, m=mode: str(r["modes"][m]["n"]))
    row("image: button pressed by the script (no search on upload)",
        lambda r: "yes" if r["modes"]["image"]["pressed"] else "no")
    row("load average: start / after text / after image",
        lambda r: " / ".join(x.split()[0] for x in r["loadavg"]))
    row("measured together with (queries alternating)", lambda r: ", ".join(r["together_with"]) or "alone")
    lines.append("| *breakdown: medians, ms from t0* |" + " |" * len(labels))
    steps = [("image", "upload request sent", "upload_sent"), ("image", "upload done", "upload_done"),
             ("image", "preview loaded", "preview"), ("image", "button pressed by the script", "clicked")]
    for name, key in [("queue/join sent", "join_sent"), ("queue/join answered", "join_done"),
                      ("SSE process_starts", "process_starts"), ("SSE process_completed: the answer", "answer"),
                      ("new thumbnails in the DOM", "dom"), ("thumbnails loaded", "loaded")]:
        steps += [("text", name, key), ("image", name, key)]
    for mode, name, key in steps:
        row(f"{mode}: {name}", lambda r, m=mode, k=key: fmt(r["modes"][m].get(k), digits=1))
    lines.append("| *per search* |" + " |" * len(labels))
    for mode in ("text", "image"):
        row(f"{mode}: CPU ms, app / browser (means)",
            lambda r, m=mode: f"{fmt(r['modes'][m]['cpu_app'])} / {fmt(r['modes'][m]['cpu_browser'])}")
        row(f"{mode}: HTTP requests (median)", lambda r, m=mode: fmt(r["modes"][m]["requests"]))
        row(f"{mode}: SSE messages (median)", lambda r, m=mode: fmt(r["modes"][m]["sse_messages"]))
        row(f"{mode}: answer (process_completed) bytes", lambda r, m=mode: fmt(r["modes"][m]["answer_bytes"]))
        row(f"{mode}: thumbnails fetched / from cache (median)",
            lambda r, m=mode: f"{fmt(r['modes'][m]['thumbs_network'])} / {fmt(r['modes'][m]['thumbs_cached'])}")
        row(f"{mode}: one thumbnail request, ms (median)", lambda r, m=mode: fmt(r["modes"][m]["thumb_ms"], digits=1))
    lines.append("| *server: Gradio's traces, medians, ms* |" + " |" * len(labels))
    fns = sorted({fn for r in results.values() for fn in r["server"]})
    for fn in fns:
        for phase in ("queue_wait", "preprocess", "fn_call", "postprocess", "total"):
            if fn == "gradio_file_upload" and phase != "total":
                continue
            row(f"`{fn}` {phase}", lambda r, f=fn, k=phase: fmt(r["server"][f][k], digits=1))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="column name for this checkout's code, e.g. after")
    parser.add_argument("--app-root", help="serve the app.py/clipsearch found here instead of this checkout")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="another app to measure in the same run, queries alternating (e.g. before=/tmp/old)")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per mode (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--count", type=int, default=common.COCO_COUNT)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench" / "browser",
                        help="cache folder (model, artifacts, pictures)")
    parser.add_argument("--modes", default="text,image", help="comma-separated: text, image")
    parser.add_argument("--no-save", action="store_true", help="print only; keep the stored results as they are")
    parser.add_argument("--report", action="store_true", help="only print and write the table of the stored results")
    parser.add_argument("--note", help="a sentence for the Markdown page, under the list of runs")
    args = parser.parse_args()
    subjects = [Subject(label, Path(folder).resolve()) for label, folder in
                (item.split("=", 1) for item in args.also)]
    subjects.insert(0, Subject(args.label, Path(args.app_root).resolve() if args.app_root else common.ROOT))
    started = time.perf_counter()
    store = RESULTS / "browser_latency.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    if not args.report:
        results = run(args, subjects)
        for label, result in results.items():
            result["together_with"] = [other for other in results if other != label]
        saved.update(results)
    if args.note:
        saved.setdefault("_notes", []).append(args.note)
    notes = saved.pop("_notes", [])
    text = (f"# Browser latency: what a visitor feels\n\n`python benchmarks/browser_latency.py --label <label>` "
            f"(Chromium {CHROMIUM} headless via Playwright, viewport 1280×900, app and browser on the same machine), "
            f"{args.queries} distinct queries per mode after {args.warmup} warm-up, {args.count:,}-row synthetic "
            "artifacts, ViT-B/32-size random CLIP. t0: the Search click (text) or the file "
            "input's change event (image); end: five result thumbnails loaded, decoded and painted.\n\n"
            + "\n".join(f"- **{label}**: {r['date']}, {r['machine']}; code: `{r['code']}`; load averages "
                        f"{' | '.join(r['loadavg'])}" for label, r in saved.items())
            + "".join(f"\n\n{note}" for note in notes)
            + "\n\n" + table(saved) + "\n")
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps({**saved, "_notes": notes}, indent=1) + "\n")
        (RESULTS / "browser_latency.md").write_text(text)
    print(f"(ran in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
