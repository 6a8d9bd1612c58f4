"""How long until a Space serves? A cold start (it wakes with an empty disk and downloads from the Hub at a given
bandwidth and latency) and a warm start (restarted with a complete cache): seconds, bytes and resident memory.

    python -m benchmarks.startup [--bandwidth-mb-s 100] [--hub-latency-ms 0] [--also before=DIR] [--quick]

A loopback Hub (testkit.hub.HubServer, in this process) holds a COCO-size build in the builder's exact format
(benchmarks.artifacts, 123,287 rows) with thumbnails of REALISTIC byte size (~15 KB each like real 256-px photos:
~1.9 GB in 4 packs) and, as a model repo, the random-weight stand-in of the model its manifest names (real size:
model.safetensors 605 MB for the default B/32). In front of it, every request first waits --hub-latency-ms (a real
Hub's round trip) and file bodies share one wire of --bandwidth-mb-s (the Space's downlink; 0: as fast as loopback).

Each app (this checkout, labelled --label, then every --also LABEL=DIR holding an app.py and clipsearch/; one after
another, never at once) is started as `python app.py` with INDEX_REPO on that Hub and empty HF and app caches.
Measured: the bytes it downloaded before serving (body bytes of every file GET that began before the model's last
byte went out: the app serves once the model is loaded), seconds from process start to "Running on local URL" and
how many of them the wire was busy, the app's CPU seconds to ready (its work, whatever the machine's load), resident
memory at ready (the app's own log line), a visitor's first search (20 results) and fetching its thumbnails, and when
every thumbnail pack has arrived. Then the same app is started again on the complete cache: the warm start.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from benchmarks.artifacts import COCO_COUNT, synthetic_artifacts, with_serving_copy
from benchmarks.common import App, Report, arguments, call, fresh_folder, proc_rss_mb, subjects
from benchmarks.models import DEFAULT_MODEL, random_model
from clipsearch.core.manifest import MANIFEST, SERVING_MODEL, Manifest
from testkit.hub import HubServer

REPO, MODEL_REPO = "bench/coco-startup", "bench/default-model-random-weights"
TARGETS = "downloaded before serving ≤ 1 GB, serving ≤ 30 s at 100 MB/s, resident memory ≤ 1.2 GB"


class Wire:
    """ASGI wrapper in front of the loopback Hub: every request waits `latency_s` first, file bodies go out in 1 MiB
    pieces over one shared wire of `bandwidth` bytes/s (0: unlimited), and every /resolve GET leaves a span (start,
    end, path, bytes), its end when the last byte was handed to the socket (uvicorn waits for the transport)."""

    PIECE = 2**20

    def __init__(self, app, latency_s: float, bandwidth: float):
        self.app, self.latency_s, self.bandwidth = app, latency_s, bandwidth
        self.spans: list[tuple[float, float, str, int]] = []
        self.free_at = 0.0  # when the wire has sent everything handed to it so far (time.monotonic)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if scope["method"] != "GET" or "/resolve/" not in scope["path"]:
            return await self.app(scope, receive, send)
        began, sent = time.time(), [0]

        async def paced(message):
            if message["type"] != "http.response.body":
                return await send(message)
            body, more = message.get("body", b""), message.get("more_body", False)
            for start in range(0, max(1, len(body)), self.PIECE):
                piece = body[start:start + self.PIECE]
                if self.bandwidth and piece:
                    now = time.monotonic()
                    self.free_at = max(now, self.free_at) + len(piece) / self.bandwidth
                    await asyncio.sleep(self.free_at - now)
                await send({"type": "http.response.body", "body": piece,
                            "more_body": more or start + self.PIECE < len(body)})
                sent[0] += len(piece)
            if not more:
                self.spans.append((began, time.time(), scope["path"], sent[0]))

        return await self.app(scope, receive, paced)


def busy_seconds(spans, until: float) -> float:
    """Length of the union of the spans, clipped at `until`."""
    total, reach = 0.0, 0.0
    for start, end, *_ in sorted(spans):
        end = min(end, until)
        if end > max(start, reach):
            total += end - max(start, reach)
            reach = end
    return total


def publish(hub: HubServer, folder: Path, model: Path, repo: str = REPO) -> dict[str, int]:
    """The model as a model repo, and the build as a tagged dataset commit of `repo` whose manifest names that model
    repo at its commit, as a published build names its model. Returns {thumbnail pack: size}."""
    model_commit = hub.put_files(MODEL_REPO, {p.name: p.read_bytes() for p in sorted(model.iterdir()) if p.is_file()},
                                 repo_type="model", message="model")
    manifest = Manifest.read(folder)
    manifest.model = {**manifest.model, "model_id": MODEL_REPO, "revision": model_commit}
    files = {name: (folder / name).read_bytes() for name in manifest.files}
    files[MANIFEST] = manifest.to_json().encode()
    hub.put_files(repo, files, message="build")
    hub.create_tag(repo, "build-20000101T000000000000Z")
    return {name: manifest.files[name].size for name in manifest.thumbnails.files}


def first_search(url: str) -> tuple[float, float, int]:
    """A visitor's first text search (seconds), then its result thumbnails fetched like a browser (seconds, how
    many)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        began = time.perf_counter()
        result = call(client, "search_text", ["a dog on the beach", 20])
        searched = time.perf_counter() - began
        urls = re.findall(r"'url': '([^']+)'|\"url\": \"([^\"]+)\"", repr(result))
        links = [a or b for a, b in urls if (a or b).startswith(url)]  # not the hits' COCO urls
        began = time.perf_counter()
        for link in links:
            client.get(link).raise_for_status()
        return searched, time.perf_counter() - began, len(links)


def start(hub: HubServer, root: Path, work: Path, log: str, repo: str = REPO) -> tuple[App, int]:
    """The app started on the Hub's `repo` with its caches in `work`; returns it and the bytes it downloaded
    meanwhile."""
    hub.bytes_served.clear()
    env = {"INDEX_REPO": repo, "HF_ENDPOINT": hub.url, "HF_HOME": str(work / "hf-home"),
           "HF_HUB_CACHE": str(work / "hf-cache"), "CLIPSEARCH_CACHE": str(work / "app-cache"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    app = App(env, work / log, root=root).__enter__()
    return app, sum(hub.bytes_served.values())


def measure(hub: HubServer, wire: Wire, label: str, root: Path, work: Path, packs: dict[str, int],
            packs_timeout: float, repo: str = REPO) -> dict:
    wire.spans.clear()
    row = {"label": label, "load": Path("/proc/loadavg").read_text().split()[0]}
    app, _ = start(hub, root, work, "cold.log", repo)
    try:
        # the model is loaded from its repo's files, or from the build's serving copy and the repo's configs
        model_end = max(end for _, end, path, _ in wire.spans if f"/{MODEL_REPO}/" in path
                        or path.endswith(f"/{SERVING_MODEL}"))
        needed = [span for span in wire.spans if span[0] <= model_end]
        row.update(
            seconds=app.seconds, cpu_s=app.cpu_at_ready, rss=app.logged_rss_mb,
            artifact_bytes=sum(span[3] for span in needed if f"/{repo}/" in span[2]),
            model_bytes=sum(span[3] for span in needed if f"/{MODEL_REPO}/" in span[2]),
            download_s=busy_seconds(needed, app.ready_at))
        row["search_s"], row["thumbs_s"], row["thumbs"] = first_search(app.url)
        row["packs_s"] = None
        while time.time() - app.ready_at < packs_timeout and app.process.poll() is None:
            whole = {path.rsplit("/", 1)[-1] for _, _, path, size in wire.spans if f"/{repo}/" in path
                     and packs.get(path.rsplit("/", 1)[-1]) == size}
            if whole >= set(packs):
                row["packs_s"] = max(end for _, end, path, _ in wire.spans
                                     if path.rsplit("/", 1)[-1] in packs) - app.started_at
                break
            time.sleep(0.2)
        row["rss_packs"] = proc_rss_mb(app.process.pid)
    finally:
        app.stop()
    warm, row["warm_bytes"] = start(hub, root, work, "warm.log", repo)
    warm.stop()
    row.update(warm_s=warm.seconds, warm_cpu_s=warm.cpu_at_ready, warm_rss=warm.logged_rss_mb)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| app | load at start | downloaded before serving, MB (artifacts + model) | serving after (s) | of which "
             "the wire was busy (s) | app CPU s to serving | RSS at ready (MB) | first search / its thumbnails (s) "
             "| all packs local after (s) | RSS then (MB) | warm start (s) | its CPU s | its RSS (MB) | its download "
             "(bytes) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        packs = "—" if r["packs_s"] is None else f"{r['packs_s']:.1f}"
        lines.append(
            f"| {r['label']} | {r['load']} | {(r['artifact_bytes'] + r['model_bytes']) / 1e6:,.0f} "
            f"({r['artifact_bytes'] / 1e6:,.0f} + {r['model_bytes'] / 1e6:,.0f}) | **{r['seconds']:.1f}** | "
            f"{r['download_s']:.1f} | {r['cpu_s']:.1f} | {r['rss']:,.0f} | {r['search_s']:.2f} / {r['thumbs_s']:.2f} "
            f"({r['thumbs']}) | {packs} | {r['rss_packs']:,.0f} | **{r['warm_s']:.1f}** | {r['warm_cpu_s']:.1f} | "
            f"{r['warm_rss']:,.0f} | {r['warm_bytes']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__, quick="a check that it runs end to end: 2,000 rows (one small pack)")
    parser.add_argument("--label", default="this checkout", help="name of this checkout's app in the table")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="another app (DIR holds its app.py and clipsearch/), started after this one")
    parser.add_argument("--count", type=int, default=COCO_COUNT, help="gallery rows (default COCO's 123,287)")
    parser.add_argument("--bandwidth-mb-s", type=float, default=100.0, help="the wire's speed in MB/s; 0: unlimited")
    parser.add_argument("--hub-latency-ms", type=float, default=0.0, help="every Hub request waits this long first")
    parser.add_argument("--packs-timeout", type=float, default=600.0,
                        help="seconds after serving to wait for every thumbnail pack")
    parser.add_argument("--serving-copy", default="int8", choices=["int8", "none", "both"],
                        help="publish the build with the encoder's int8 serving copy (int8, the builder's default), "
                             "without it (none: the app fetches the checkpoint and converts it), or both, each app "
                             "measured on each")
    args = parser.parse_args()
    if args.quick:
        args.count = 2000
    report = Report.start("startup", "Start-up: how long until a Space serves")
    folder = synthetic_artifacts(args.cache, args.count, thumbnails="realistic")
    builds = {"int8": [True], "none": [False], "both": [True, False]}[args.serving_copy]
    hub = HubServer()
    wire = Wire(hub.app, args.hub_latency_ms / 1000, args.bandwidth_mb_s * 1e6)
    hub.app = wire
    rows = []
    with hub:
        model = random_model(DEFAULT_MODEL, args.cache)
        repos = {copy: (publish(hub, with_serving_copy(folder) if copy else folder, model, repo := REPO + (
            "" if copy else "-checkpoint")), repo) for copy in builds}
        scratch = fresh_folder(args.cache / "startup")
        for number, (label, root) in enumerate(subjects(args.label, args.also)):
            for copy, (packs, repo) in repos.items():
                name = f"{label}, {'serving copy' if copy else 'checkpoint'}" if len(builds) > 1 else label
                rows.append(measure(hub, wire, name, root, fresh_folder(scratch / f"{number}-{int(copy)}"), packs,
                                    args.packs_timeout, repo))
                print(rows[-1], flush=True)
    manifest = Manifest.read(folder)
    packs = next(iter(repos.values()))[0]
    copy = Manifest.read(with_serving_copy(folder)).serving if True in repos else None
    wire_speed = f"{args.bandwidth_mb_s:g} MB/s" if args.bandwidth_mb_s else "unlimited (loopback)"
    body = (f"{args.count:,} rows ({sum(packs.values()) / 1e9:.2f} GB of realistic thumbnails, {len(packs)} pack "
            f"file(s), "
            f"index {manifest.files['index.faiss'].size / 1e6:.0f} MB, `{manifest.index.factory}`) and the default "
            f"model's random-weight stand-in from a loopback Hub; wire {wire_speed}, +{args.hub_latency_ms:g} ms a "
            f"request. Apps: " + "; ".join(f"{label} `{root}`" for label, root in subjects(args.label, args.also))
            + ". Builds: " + " and ".join(
                f"with the encoder's int8 serving copy ({copy.size / 1e6:,.0f} MB; the app fetches only the model's "
                "configs)" if has else "without it (the app fetches the checkpoint and converts it)" for has in repos)
            + f".\n\n{table(rows)}\n\nTargets of the issue: {TARGETS}. 'All packs local': from process start until "
            "every thumbnail pack has arrived whole ('—': not within --packs-timeout). Warm start: the same app "
            "started again on the complete cache, as a Space restarted without sleeping.\n")
    report.write(body + ("\n(--quick: a check that the script runs, not figures to quote)\n" if args.quick else ""),
                 args.results)


if __name__ == "__main__":
    main()
