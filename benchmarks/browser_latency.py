"""What a visitor feels: search latency in a real browser, from the click (or chosen file) to five painted results.

    python benchmarks/browser_latency.py --label after [--queries 30] [--app-root DIR]

Starts `python app.py` on the 123,287-row synthetic artifacts (benchmarks/common.py: builder format, ViT-B/32-size
random CLIP) and drives the page with Playwright in Debian's Chromium (/usr/bin/chromium; never `playwright install`),
desktop viewport 1280×900. Times are taken in the page with performance.now():

- text: from just before the Search button's click() to the moment all five result <img> elements of this answer
  have loaded, been decoded (img.decode()) and a frame has been painted (requestAnimationFrame, then a task);
- image: from the file input's change event (the file is chosen, as a drop or a picker does) to the same point.
  Where the page does not search on upload by itself (no queue/join request once the preview is shown), the script
  presses "Find similar images" the moment the preview has loaded, as a visitor with zero reaction time would.

Every query is distinct (text: distinct strings, so the app's text-vector cache never answers; image: a distinct
640×480 JPEG per query). The breakdown comes from the page (EventSource messages, fetch starts, Resource Timing,
DOM mutations, img load events) and from Gradio's own per-event server traces (GRADIO_PROFILING=1:
queue wait, preprocess, the function itself = encode + search, postprocess).

Results are kept per label in benchmarks/results/browser_latency.json; the Markdown table of every label so far is
printed and written to benchmarks/results/browser_latency.md. To measure older code, point --app-root at a copy of
that commit (e.g. `git archive <commit> app.py clipsearch | tar -x -C DIR`); the page is driven the same way.
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
    clear_picture(page)
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


def cpu_split(app_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the app, and by everything else this script started (Playwright + Chromium).
    The load average says how busy the machine is; these say how much work a search is, busy or not."""
    table = _processes()

    def subtree(root: int) -> set[int]:
        mine, grew = {root}, True
        while grew:
            more = {pid for pid, (parent, _) in table.items() if parent in mine} - mine
            mine |= more
            grew = bool(more)
        return mine

    app = subtree(app_pid)
    ours = subtree(os.getpid()) - app - {os.getpid()}
    return sum(table[p][1] for p in app if p in table), sum(table[p][1] for p in ours if p in table)


def text_aware_model(cache: Path) -> Path:
    """common.vit_b32_clip's model with its text config's eos_token_id set to its tokenizer's end token.

    As common.py saves it, the config keeps CLIP's 49407 while the benchmark tokenizer ends texts with its own id,
    so transformers pools position 0 (the start token) and every text gets the same vector: every text query would
    return the same five images and a browser would never fetch a text search's thumbnails. Same architecture and
    compute; only the pooled position changes."""
    from transformers import AutoTokenizer, CLIPConfig

    folder = common.vit_b32_clip(cache / "vit-b32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = CLIPConfig.from_pretrained(folder)
    if config.text_config.eos_token_id != tokenizer.eos_token_id:
        config.text_config.eos_token_id = tokenizer.eos_token_id
        config.text_config.bos_token_id = tokenizer.bos_token_id
        config.text_config.pad_token_id = tokenizer.pad_token_id
        config.save_pretrained(folder)
    return folder


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    text_aware_model(args.cache)
    folder = synthetic_artifacts(args.cache, args.count)
    n = args.queries + args.warmup
    pictures = sorted(coco_like_jpegs(args.cache / "browser-jpegs", n, seed=7).glob("*.jpg"))[:n]
    texts = text_queries(n, seed=11)
    if args.app_root:
        common.ROOT = Path(args.app_root).resolve()  # App runs `python app.py` in common.ROOT
    loads = [Path("/proc/loadavg").read_text().strip()]
    rows: dict[str, list[dict]] = {"text": [], "image": []}
    with App(folder, args.cache, env={"GRADIO_PROFILING": "1"}) as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context, page, errors = page_setup(browser, app.url)
        page.wait_for_timeout(1000)  # let the page settle (fonts, lazy chunks) before the first search
        windows, cpu = [], {}
        for i, text in enumerate(texts if "text" in args.modes else []):
            if i == args.warmup:
                windows.append([time.time(), 0])
                cpu["text"] = cpu_split(app.process.pid)
            result = text_search(page, text)
            if i >= args.warmup:
                rows["text"].append(summarise(result, page.evaluate(TIMELINE_JS, [result["t0"], result["painted"]])))
        if "text" in args.modes:
            windows[-1][1] = time.time()
            cpu["text"] = [b - a for a, b in zip(cpu["text"], cpu_split(app.process.pid))]
        loads.append(Path("/proc/loadavg").read_text().strip())
        if "image" in args.modes:
            page.get_by_role("tab", name=IMAGE_TAB).click()
            page.get_by_test_id("image").wait_for(state="visible")
        # Does the page search as soon as a picture is chosen? The first warm-up picture says: no answer within
        # 5 s without a click means the visitor has to press "Find similar images" (then pressed at once, always).
        button = None
        try:
            if "image" in args.modes:
                image_search(page, pictures[0], None, timeout_ms=5000)
        except RuntimeError:
            button = "Find similar images"
        for i, picture in enumerate(pictures[1:] if "image" in args.modes else [], start=1):
            if i == args.warmup:
                windows.append([time.time(), 0])
                cpu["image"] = cpu_split(app.process.pid)
            result = image_search(page, picture, button)
            if i >= args.warmup:
                rows["image"].append(summarise(result, page.evaluate(TIMELINE_JS,
                                                                     [result["t0"], result["painted"]])))
        if "image" in args.modes:
            windows[-1][1] = time.time()
            cpu["image"] = [b - a for a, b in zip(cpu["image"], cpu_split(app.process.pid))]
        loads.append(Path("/proc/loadavg").read_text().strip())
        page.screenshot(path=str(args.cache / f"browser-latency-{args.label}.png"), full_page=True)
        context.close()
        browser.close()
        traces = server_traces(app.url)
    if errors:
        raise RuntimeError(f"errors in the page: {errors}")
    server = trace_summary(traces, windows)
    out = {"label": args.label, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "loadavg": loads, "queries": args.queries, "server": server, "modes": {}}
    for mode, mine in rows.items():
        if not mine:
            continue
        totals = [r["total"] for r in mine]
        out["modes"][mode] = {
            "p50": statistics.median(totals), "p95": percentile(totals, 0.95), "n": len(totals),
            "pressed": sum(1 for r in mine if r["clicked"] is not None),
            # CPU per search over the timed queries, clearing the picture between image queries included
            "cpu_app": 1000 * cpu[mode][0] / len(mine), "cpu_browser": 1000 * cpu[mode][1] / len(mine),
            **{key: med(mine, key) for key in ("upload_sent", "upload_done", "preview", "clicked", "join_sent",
                                               "join_done", "process_starts", "answer", "dom", "loaded",
                                               "answer_bytes", "all_answers_bytes", "sse_messages", "requests",
                                               "thumbs_network", "thumbs_cached", "thumb_bytes")},
            "thumb_ms": statistics.median([ms for r in mine for ms in r["thumb_ms"]] or [0]),
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
        lines.append(f"| {name} | " + " | ".join(get(results[label]) for label in labels) + " |")

    for mode in ("text", "image"):
        start = "Search click" if mode == "text" else "file chosen"
        row(f"**{mode}: {start} → 5 thumbnails painted, p50 ms** (target ≤ {TARGETS[mode]:.0f})",
            lambda r, m=mode: f"**{fmt(r['modes'][m]['p50'], digits=1)}**")
        row(f"{mode}: p95 ms", lambda r, m=mode: fmt(r["modes"][m]["p95"], digits=1))
        row(f"{mode}: queries timed", lambda r, m=mode: str(r["modes"][m]["n"]))
    row("image: the script pressed the button (no search on upload)",
        lambda r: "yes" if r["modes"]["image"].get("pressed") else "no")
    lines.append("| *breakdown, medians, ms from t0* | " + " | " * len(labels))
    steps = [("image", "upload request sent", "upload_sent"), ("image", "upload done", "upload_done"),
             ("image", "preview loaded", "preview"), ("image", "button pressed by the script", "clicked"),
             ("text", "queue/join sent", "join_sent"), ("image", "queue/join sent", "join_sent"),
             ("text", "queue/join answered", "join_done"), ("image", "queue/join answered", "join_done"),
             ("text", "SSE process_starts", "process_starts"), ("image", "SSE process_starts", "process_starts"),
             ("text", "SSE process_completed (answer in the page)", "answer"),
             ("image", "SSE process_completed (answer in the page)", "answer"),
             ("text", "new thumbnails in the DOM", "dom"), ("image", "new thumbnails in the DOM", "dom"),
             ("text", "thumbnails loaded", "loaded"), ("image", "thumbnails loaded", "loaded")]
    for mode, name, key in steps:
        row(f"{mode}: {name}", lambda r, m=mode, k=key: fmt(r["modes"][m].get(k), digits=1))
    lines.append("| *per search, medians* | " + " | " * len(labels))
    for mode in ("text", "image"):
        row(f"{mode}: CPU ms per search, app / browser (mean)",
            lambda r, m=mode: f"{fmt(r['modes'][m].get('cpu_app'))} / {fmt(r['modes'][m].get('cpu_browser'))}")
        row(f"{mode}: HTTP requests started", lambda r, m=mode: fmt(r["modes"][m]["requests"]))
        row(f"{mode}: SSE messages", lambda r, m=mode: fmt(r["modes"][m]["sse_messages"]))
        row(f"{mode}: answer size (process_completed), bytes",
            lambda r, m=mode: fmt(r["modes"][m]["answer_bytes"]))
        row(f"{mode}: thumbnails fetched / from cache",
            lambda r, m=mode: f"{fmt(r['modes'][m]['thumbs_network'])} / {fmt(r['modes'][m]['thumbs_cached'])}")
        row(f"{mode}: one thumbnail request, ms", lambda r, m=mode: fmt(r["modes"][m]["thumb_ms"], digits=1))
    lines.append("| *server (Gradio traces), medians, ms* | " + " | " * len(labels))
    fns = sorted({fn for r in results.values() for fn in r["server"]})
    for fn in fns:
        for phase in ("queue_wait", "preprocess", "fn_call", "postprocess", "total"):
            if fn == "gradio_file_upload" and phase != "total":
                continue
            row(f"`{fn}` {phase}", lambda r, f=fn, k=phase: fmt(r["server"].get(f, {}).get(k), digits=1))
    lines.append("| load average (start, after text, after image) | "
                 + " | ".join(" / ".join(x.split()[0] for x in results[label]["loadavg"]) for label in labels) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="column name, e.g. before / after")
    parser.add_argument("--queries", type=int, default=30, help="timed queries per mode (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--count", type=int, default=common.COCO_COUNT)
    parser.add_argument("--app-root", help="serve the app.py/clipsearch found here instead of this checkout")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench" / "browser",
                        help="its own folder: the model here differs from common.vit_b32_clip's (text_aware_model)")
    parser.add_argument("--modes", default="text,image", help="comma-separated: text, image")
    parser.add_argument("--no-save", action="store_true", help="print only; keep the stored results as they are")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args)
    store = RESULTS / "browser_latency.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    saved[args.label] = result
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps(saved, indent=1) + "\n")
    text = (f"# Browser latency: what a visitor feels\n\n`python benchmarks/browser_latency.py --label <label>` "
            f"(Chromium {CHROMIUM} headless via Playwright, viewport 1280×900, app and browser on the same machine), "
            f"{result['queries']} distinct queries per mode after warm-up, {args.count:,}-row synthetic artifacts, "
            "ViT-B/32-size random CLIP.\n\n"
            + "\n".join(f"- **{label}**: {r['date']}, {r['machine']}; load averages {' | '.join(r['loadavg'])}"
                        for label, r in saved.items())
            + "\n\n" + table(saved) + "\n")
    print(text)
    if not args.no_save:
        (RESULTS / "browser_latency.md").write_text(text)
    print(f"(ran in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
