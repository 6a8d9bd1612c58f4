"""How long until a Space serves? A cold start (it wakes with an empty disk and downloads from the Hub at a given
bandwidth and latency) and a warm start (restarted with a complete cache): seconds, bytes and resident memory.

    python -m benchmarks.startup [--bandwidth-mb-s 100] [--hub-latency-ms 0] [--also before=DIR] [--quick]
    python -m benchmarks.startup --objects 500000      # and when a COCO-size object index arrives (issue #19)
    python -m benchmarks.startup --serving-copy layouts --repeat 2   # towers apart vs in the copy's one file

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

--objects N: the build also has an object index of N boxes (benchmarks.artifacts.synthetic_objects; COCO keeps
~500,000), which the app fetches in the background once it serves (clipsearch.serve.service.attach_objects). Each app
is then measured on two builds published side by side, the same build without its object index first, so that the
time to serving can be compared, and for the build with one: the object-index bytes whose download began before
the app served (0 when nothing waits for them), when objects.faiss and objects.parquet were fetched, and when an
object search (/search_objects, asked every 0.25 s after the first text search) first answered. A large
objects.npy (the builder's copy for --append, which the Space never downloads once the build is over
clipsearch.serve.download.EAGER_BYTES) is listed in the manifest but left off the loopback Hub: 1.5 GB of memory saved
at COCO's size, and a request for it would fail the start-up loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import httpx

from benchmarks.artifacts import COCO_COUNT, synthetic_artifacts, with_serving_copy
from benchmarks.common import App, Report, arguments, call, fresh_folder, proc_rss_mb, subjects
from benchmarks.models import DEFAULT_MODEL, random_model
from clipsearch.core.manifest import MANIFEST, OBJECTS_INDEX, OBJECTS_META, OBJECTS_VECTORS, SERVING_MODEL, Manifest
from clipsearch.serve.download import EAGER_BYTES
from testkit.helpers import serving_copy_in_one_file
from testkit.hub import HubServer

REPO, MODEL_REPO = "bench/coco-startup", "bench/default-model-random-weights"
OBJECT_FILES = (OBJECTS_INDEX, OBJECTS_META)  # what the Space downloads of an object index
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


# The builds a run may publish: (repo suffix, how the table names it) by key, and which ones each --serving-copy means.
BUILDS = {"copy": ("", "serving copy"), "one file": ("-one-file", "serving copy in one file"),
          "checkpoint": ("-checkpoint", "checkpoint")}
BUILD_SETS = {"int8": ["copy"], "none": ["checkpoint"], "both": ["copy", "checkpoint"], "layouts": ["copy", "one file"]}


def build_folder(folder: Path, build: str) -> Path:
    """The artifacts of `folder` as the build `build` (see BUILDS) publishes them."""
    if build == "checkpoint":
        return folder
    copy = with_serving_copy(folder)
    if build == "copy":
        return copy
    out = copy.with_name(copy.name + "-one-file")  # every torch tower inside the copy's one file
    if not (out / MANIFEST).exists():
        serving_copy_in_one_file(copy, fresh_folder(out))
    return out


def build_line(folder: Path, build: str) -> str:
    """What the build `build` gives the app, in words, with its files' sizes."""
    if build == "checkpoint":
        return "without a serving copy (the app fetches the checkpoint and converts it)"
    manifest = Manifest.read(build_folder(folder, build))
    serving = manifest.serving
    towers = "; ".join(f"{name} {manifest.files[name].size / 1e6:,.0f} MB" for name in serving.towers)
    return (f"with the encoder's int8 serving copy ({serving.file} {serving.size / 1e6:,.0f} MB"
            + (f"; the towers its graphs replace apart: {towers}" if towers else ", every torch tower inside")
            + "; the app fetches only the model's configs)")


def publish(hub: HubServer, folder: Path, model: Path, repo: str = REPO, objects_repo: str | None = None
            ) -> dict[str, int]:
    """The model as a model repo, and the build as a tagged dataset commit of `repo` whose manifest names that model
    repo at its commit, as a published build names its model. A build with an object index goes to `objects_repo` (a
    large objects.npy left out, see the module's help), and the same build without it to `repo`. Returns {thumbnail
    pack: size}."""
    model_commit = hub.put_files(MODEL_REPO, {p.name: p.read_bytes() for p in sorted(model.iterdir()) if p.is_file()},
                                 repo_type="model", message="model")
    manifest = Manifest.read(folder)
    manifest.model = {**manifest.model, "model_id": MODEL_REPO, "revision": model_commit}
    files = {name: (folder / name).read_bytes() for name, entry in manifest.files.items()
             if name != OBJECTS_VECTORS or entry.size <= EAGER_BYTES}
    if manifest.objects is not None and objects_repo:
        _publish_build(hub, objects_repo, manifest, files)  # the same bytes objects: stored once
    plain = dataclasses.replace(manifest, objects=None, files={
        name: entry for name, entry in manifest.files.items() if name not in (*OBJECT_FILES, OBJECTS_VECTORS)})
    _publish_build(hub, repo, plain, {name: files[name] for name in plain.files})
    return {name: manifest.files[name].size for name in manifest.thumbnails.files}


def _publish_build(hub: HubServer, repo: str, manifest: Manifest, files: dict[str, bytes]) -> None:
    hub.put_files(repo, {**files, MANIFEST: manifest.to_json().encode()}, message="build")
    hub.create_tag(repo, "build-20000101T000000000000Z")


def first_object_search(url: str, began: float, timeout: float = 600) -> float | None:
    """Seconds from `began` (time.time) until /search_objects first answers with hits (it answers "still loading"
    with an error event until the object index is attached), asked every 0.25 s; None past `timeout`."""
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.time() - began < timeout:
            try:
                if call(client, "search_objects", ["a dog on the beach", 5])[1]:
                    return time.time() - began
            except RuntimeError:
                pass
            time.sleep(0.25)
    return None


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
    row = {"label": label, "load": Path("/proc/loadavg").read_text().split()[0], "repo": repo}
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
        if repo.endswith("-objects"):  # the build with an object index (main: REPO[-checkpoint]-objects)
            row["objects_s"] = first_object_search(app.url, app.started_at, packs_timeout)
            fetched = [span for span in wire.spans if span[2].rsplit("/", 1)[-1] in OBJECT_FILES]
            # what serving needs is down once the model is (the app then loads it and serves): object bytes that
            # began on the wire before that shared it with the start-up, any later ones did not
            row["model_down_s"] = model_end - app.started_at
            row["objects_bytes_before_model"] = sum(span[3] for span in fetched if span[0] <= model_end)
            row["objects_fetch"] = (min(span[0] for span in fetched) - app.started_at,
                                    max(span[1] for span in fetched) - app.started_at) if fetched else None
            row["objects_rss"] = proc_rss_mb(app.process.pid)
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


def objects_table(rows: list[dict], boxes: int) -> str:
    """--objects: each app's time to serving without and with the object index, and when the latter answered."""
    lines = ["| app | serving after, no object index (s) | serving after, with it (s) | model's last byte (s) | "
             "object-index bytes on the wire before it | objects.faiss + .parquet on the wire (s after process "
             "start) | **first object search answered (s after process start)** | RSS then (MB) | warm start, with "
             "it (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for plain, full in zip(rows[0::2], rows[1::2]):
        wire = "—" if full["objects_fetch"] is None else "{:.1f} → {:.1f}".format(*full["objects_fetch"])
        answered = "— (not within --packs-timeout)" if full["objects_s"] is None else f"**{full['objects_s']:.1f}**"
        lines.append(f"| {full['label']} | {plain['seconds']:.1f} | {full['seconds']:.1f} | "
                     f"{full['model_down_s']:.1f} | {full['objects_bytes_before_model']:,} | {wire} | {answered} | "
                     f"{full['objects_rss']:,.0f} | {full['warm_s']:.1f} |")
    return (f"### When the object index ({boxes:,} boxes) arrives\n\n" + "\n".join(lines) + "\n\nThe two builds are "
            "the same files but for the object index; each app starts on the one without it first. 'Model's last "
            "byte': when everything serving needs was down (the app then loads the model and serves). 'Object-index "
            "bytes on the wire before it': of objects.faiss and objects.parquet, in downloads that began before "
            "then (0: they never shared the wire with what serving waits for). 'First object search answered': the "
            "first /search_objects call, asked every 0.25 s once the first text search and its thumbnails are done, "
            "that returned hits instead of \"still loading\".\n")


def main() -> None:
    parser = arguments(__doc__, quick="a check that it runs end to end: 2,000 rows (one small pack)")
    parser.add_argument("--label", default="this checkout", help="name of this checkout's app in the table")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                        help="another app (DIR holds its app.py and clipsearch/), started after this one")
    parser.add_argument("--count", type=int, default=COCO_COUNT, help="gallery rows (default COCO's 123,287)")
    parser.add_argument("--bandwidth-mb-s", type=float, default=100.0, help="the wire's speed in MB/s; 0: unlimited")
    parser.add_argument("--hub-latency-ms", type=float, default=0.0, help="every Hub request waits this long first")
    parser.add_argument("--packs-timeout", type=float, default=600.0,
                        help="seconds after serving to wait for every thumbnail pack (and the object index)")
    parser.add_argument("--serving-copy", default="int8", choices=list(BUILD_SETS),
                        help="publish the build with the encoder's int8 serving copy (int8, the builder's default), "
                             "without it (none: the app fetches the checkpoint and converts it), or both, each app "
                             "measured on each; layouts: the serving copy with the torch towers its graphs replace "
                             "in files of their own (the default since 2026-12-06) and in its one file (before)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every app on every build this many times, in turn (A B A B: the host's speed "
                             "drifts between runs)")
    parser.add_argument("--objects", type=int, default=0,
                        help="boxes in the build's object index (0: none; COCO keeps ~500,000): each app is measured "
                             "on the build without and then with it")
    args = parser.parse_args()
    if args.quick:
        args.count = 2000
        args.objects = min(args.objects, 8000)
    report = Report.start("startup", "Start-up: how long until a Space serves")
    folder = synthetic_artifacts(args.cache, args.count, thumbnails="realistic", objects=args.objects)
    builds = BUILD_SETS[args.serving_copy]
    hub = HubServer()
    wire = Wire(hub.app, args.hub_latency_ms / 1000, args.bandwidth_mb_s * 1e6)
    hub.app = wire
    rows = []
    with hub:
        model = random_model(DEFAULT_MODEL, args.cache)
        repos = {}  # each build: (thumbnail packs, the repos of the build without and with its objects)
        for build in builds:
            repo = REPO + BUILDS[build][0]
            objects_repo = repo + "-objects" if args.objects else None
            packs = publish(hub, build_folder(folder, build), model, repo, objects_repo)
            repos[build] = packs, [repo] + ([objects_repo] if objects_repo else [])
        scratch = fresh_folder(args.cache / "startup")
        for run in range(args.repeat):
            for number, (label, root) in enumerate(subjects(args.label, args.also)):
                for build, (packs, names) in repos.items():
                    for repo in names:
                        name = f"{label}, {BUILDS[build][1]}" if len(builds) > 1 else label
                        if args.objects:
                            name += ", with the object index" if repo.endswith("-objects") else ", without"
                        name += f" (run {run + 1})" if args.repeat > 1 else ""
                        work = fresh_folder(scratch / f"{run}-{number}-{repo[6:]}")
                        rows.append(measure(hub, wire, name, root, work, packs, args.packs_timeout, repo))
                        print(rows[-1], flush=True)
    manifest = Manifest.read(folder)
    packs = next(iter(repos.values()))[0]
    objects = ""
    if args.objects:
        info = manifest.objects
        sizes = {name: manifest.files[name].size / 1e6 for name in (*OBJECT_FILES, OBJECTS_VECTORS)}
        objects = (f"\n{objects_table(rows, args.objects)}\nThe object index: {info.count:,} boxes, "
                   f"`{info.index.factory}` `{info.index.search_params}` (recall@5 {info.index.recall_at_5}); "
                   f"objects.faiss "
                   f"{sizes[OBJECTS_INDEX]:,.0f} MB and objects.parquet {sizes[OBJECTS_META]:,.1f} MB downloaded by "
                   f"the Space, objects.npy {sizes[OBJECTS_VECTORS]:,.0f} MB published for --append only.\n")
    wire_speed = f"{args.bandwidth_mb_s:g} MB/s" if args.bandwidth_mb_s else "unlimited (loopback)"
    body = (f"{args.count:,} rows ({sum(packs.values()) / 1e9:.2f} GB of realistic thumbnails, {len(packs)} pack "
            f"file(s), "
            f"index {manifest.files['index.faiss'].size / 1e6:.0f} MB, `{manifest.index.factory}`) and the default "
            f"model's random-weight stand-in from a loopback Hub; wire {wire_speed}, +{args.hub_latency_ms:g} ms a "
            f"request. Apps: " + "; ".join(f"{label} `{root}`" for label, root in subjects(args.label, args.also))
            + ". Builds: " + " and ".join(build_line(folder, build) for build in repos)
            + f".\n\n{table(rows)}\n\nTargets of the issue: {TARGETS}. 'All packs local': from process start until "
            "every thumbnail pack has arrived whole ('—': not within --packs-timeout). Warm start: the same app "
            "started again on the complete cache, as a Space restarted without sleeping.\n" + objects)
    report.write(body + ("\n(--quick: a check that the script runs, not figures to quote)\n" if args.quick else ""),
                 args.results)


if __name__ == "__main__":
    main()
