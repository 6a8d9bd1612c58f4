"""Cold start: a Space waking with an empty disk, from process start to serving, artifacts and model from a Hub.

    python benchmarks/cold_start.py [--count 123287] [--runs 1]

What is measured: `python app.py` with an empty HF cache and an empty app cache, INDEX_REPO pointing at a loopback
Hub (tests/hub_server.py, run in this process) that holds a COCO-size build in the builder's exact format with
thumbnails of REALISTIC byte size (256-px noise-textured JPEGs at quality 85, ~15 KB each like real 256-px photos:
~1.9 GB in 4 packs of 512 MB), and the ViT-B/32-size CLIP the manifest names as a model repo on the same Hub
(random weights, real size: model.safetensors 605 MB). Reported: bytes the app downloaded before it served (the
server's own per-request byte counters), seconds from process start to "Running on local URL" over loopback, the
same at 100 MB/s (bytes / 100 MB/s + the seconds that were not spent downloading), resident memory at ready, and
then what the background fetch of the thumbnail packs costs after serving. A second start with the complete cache
must download nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import httpx
import numpy as np
from common import ROOT, call, free_port, machine
from PIL import Image

NETWORK_MB_S = 100.0  # the reference network speed of the report
TARGET_BYTES, TARGET_SECONDS, TARGET_MB = 1e9, 30.0, 1200.0
REPO, MODEL_REPO = "bench/coco-cold-start", "bench/clip-vit-b32-random"


# --- realistic thumbnails ---------------------------------------------------------------------------------------
def realistic_thumbnail_pool(count: int = 512, seed: int = 0) -> list[bytes]:
    """256x192 JPEGs at quality 85 weighing what 256-px thumbnails of real photos weigh (~12-20 KB, mean ~15 KB):
    a smooth random colour field (bicubic from 32x24) plus grain of sigma 2..6. Real photos of gradio's media assets
    at 256 px, quality 85: 8.8-21.5 KB."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(count):
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize((256, 192), Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, rng.uniform(2, 6), (192, 256, 1))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
        pool.append(buffer.getvalue())
    return pool


def realistic_artifacts(cache: Path, count: int) -> Path:
    """common.synthetic_artifacts (the builder's own writers) with realistic thumbnails instead of tiny ones; its
    own cache folder, so the tiny-thumbnail folders of the other benchmarks are not replaced."""
    real_pool = common._thumbnail_pool
    common._thumbnail_pool = realistic_thumbnail_pool
    try:
        return common.synthetic_artifacts(cache, count)
    finally:
        common._thumbnail_pool = real_pool



# --- the loopback Hub, timing every file body it sends --------------------------------------------------------------
class TimedBodies:
    """ASGI wrapper: (start, end, path, body bytes) of every /resolve GET, end when the last body byte has been handed
    to the socket (uvicorn waits for the transport to drain), so the union of the spans is the time spent
    downloading."""

    def __init__(self, app, latency_s: float = 0.0):
        self.app, self.spans, self.latency_s = app, [], latency_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.latency_s:
            await asyncio.sleep(self.latency_s)  # a real Hub's round trip, before the answer starts
        if scope["type"] != "http" or scope["method"] != "GET" or "/resolve/" not in scope["path"]:
            return await self.app(scope, receive, send)
        began, sent = time.time(), [0]

        async def timed(message):
            await send(message)
            if message["type"] == "http.response.body":
                sent[0] += len(message.get("body", b""))
                if not message.get("more_body"):
                    self.spans.append((began, time.time(), scope["path"], sent[0]))

        return await self.app(scope, receive, timed)


def busy_seconds(spans, until: float) -> float:
    """Length of the union of the spans, clipped at `until`."""
    total, reach = 0.0, 0.0
    for start, end, *_ in sorted(spans):
        end = min(end, until)
        if end <= max(start, reach):
            continue
        total += end - max(start, reach)
        reach = end
    return total


def publish(server, folder: Path, model: Path) -> tuple[str, dict[str, int]]:
    """The model as a model repo and the build as a tagged dataset commit whose manifest names that model repo at
    its commit, as a real published build names its model. Returns (model commit, {file: size})."""
    from clipsearch.core.manifest import MANIFEST, Manifest

    model_files = {p.name: p.read_bytes() for p in sorted(model.iterdir()) if p.is_file()}
    model_commit = server.put_files(MODEL_REPO, model_files, repo_type="model", message="model")
    manifest = Manifest.read(folder)
    manifest.model = {**manifest.model, "model_id": MODEL_REPO, "revision": model_commit}
    files = {name: (folder / name).read_bytes() for name in manifest.files}
    files[MANIFEST] = manifest.to_json().encode()
    server.put_files(REPO, files, message="build")
    server.create_tag(REPO, "build-20000101T000000000000Z")
    return model_commit, {**{n: len(d) for n, d in files.items()}, **{n: len(d) for n, d in model_files.items()}}


# --- one cold start --------------------------------------------------------------------------------------------------
READY_LINE = re.compile(r"resident memory (\d+) MB")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process so far (all its threads): what start-up costs whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_app(root: Path, server, work: Path, log: Path, timeout: float = 600):
    port = free_port()
    env = {**os.environ, "INDEX_REPO": REPO, "HF_ENDPOINT": server.url, "HF_HOME": str(work / "hf-home"),
           "HF_HUB_CACHE": str(work / "hf-cache"), "CLIPSEARCH_CACHE": str(work / "app-cache"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    for name in ("INDEX_DIR", "INDEX_REVISION", "HF_TOKEN"):
        env.pop(name, None)
    began_wall = time.time()
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT)
    while "Running on local URL" not in log.read_text():
        if process.poll() is not None or time.perf_counter() - began > timeout:
            process.kill()
            raise RuntimeError(f"the app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    seconds, ready_at = time.perf_counter() - began, time.time()
    process.cpu_at_ready = cpu_seconds(process.pid)
    return process, f"http://127.0.0.1:{port}", began_wall, ready_at, seconds


def stop(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def first_search(url: str) -> tuple[float, float, int]:
    """A visitor's first text search (seconds), then fetching the result thumbnails over HTTP like a browser
    (seconds, how many)."""
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


def cold_start(label: str, root: Path, server, timing: TimedBodies, packs: list[str],
               scratch: Path) -> dict:
    work = common.fresh_folder(scratch / label)
    server.bytes_served.clear()
    timing.spans.clear()
    log = work / "app.log"
    process, url, began, ready_at, seconds = start_app(root, server, work, log)
    try:
        ready_rss = rss_mb(process.pid)
        logged = READY_LINE.search(log.read_text())
        # Needed before serving: every file body whose request began before the model's last byte was sent (the app
        # serves only once the model is loaded; the background packs begin after that, on resume()).
        model_end = max(end for _, end, path, _ in timing.spans if f"/{MODEL_REPO}/" in path)
        needed = [span for span in timing.spans if span[0] <= model_end]
        artifacts = [span for span in needed if f"/{REPO}/" in span[2]]
        row = {
            "label": label, "seconds": seconds, "load": Path("/proc/loadavg").read_text().split()[0],
            "artifact_bytes": sum(span[3] for span in artifacts),
            "model_bytes": sum(span[3] for span in needed if f"/{MODEL_REPO}/" in span[2]),
            "files": sorted({span[2].rsplit("/", 1)[-1] for span in artifacts}),
            "download_s": busy_seconds(needed, ready_at),
            "rss_ready": float(logged.group(1)) if logged else float("nan"), "rss_serving": ready_rss,
            "cpu_s": process.cpu_at_ready,
        }
        row["bytes"] = row["artifact_bytes"] + row["model_bytes"]
        row["other_s"] = seconds - row["download_s"]
        row["at_100"] = row["bytes"] / (NETWORK_MB_S * 1e6) + row["other_s"]
        row["search_s"], row["thumbs_s"], row["thumbs"] = first_search(url)
        waited = time.perf_counter()
        while packs and len(re.findall(r"thumbnail pack \S+ (downloaded and verified|does not match)",
                                       log.read_text())) < len(packs):
            if time.perf_counter() - waited > 600 or process.poll() is not None:
                break
            time.sleep(0.1)
        row["complete_s"] = time.time() - began if packs else seconds
        row["total_bytes"] = sum(server.bytes_served.values())
        row["rss_complete"] = rss_mb(process.pid)
    finally:
        stop(process)
    # a restart with the complete cache (a Space restarted without sleeping): the non-download floor
    server.bytes_served.clear()
    process, url, _, _, warm = start_app(root, server, work, work / "restart.log")
    stop(process)
    row["restart_s"], row["restart_bytes"] = warm, sum(server.bytes_served.values())
    row["restart_cpu_s"] = process.cpu_at_ready
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=common.COCO_COUNT)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-cold")
    parser.add_argument("--variants", default="before,after",
                        help="before: the app at --before-ref, after: the app at --after-ref")
    parser.add_argument("--before-ref", default="e10165a~1", help="the code before this work (the app at that commit)")
    parser.add_argument("--after-ref", default="HEAD", help="a commit, or 'worktree' for the checkout as it is")
    parser.add_argument("--hub-latency-ms", type=float, default=0.0,
                        help="every request to the loopback Hub waits this long first, like a real Hub round trip")
    args = parser.parse_args()
    header = machine()
    folder = realistic_artifacts(args.cache, args.count)
    from hub_server import HubServer

    from clipsearch.core.manifest import Manifest

    manifest = Manifest.read(folder)
    thumbs = sum(manifest.files[n].size for n in manifest.thumbnails.files)
    server = HubServer()
    timing = TimedBodies(server.app, args.hub_latency_ms / 1000)
    server.app = timing
    rows = []
    with server:
        publish(server, folder, common.vit_b32_clip(args.cache / "clip-b32"))
        for variant in args.variants.split(","):
            ref = args.before_ref if variant == "before" else args.after_ref
            root = ROOT
            if ref != "worktree":  # the app exactly as committed (others' uncommitted edits left out)
                root = common.fresh_folder(args.cache / f"app-{variant}")
                archive = subprocess.run(["git", "archive", ref, "app.py", "clipsearch"], cwd=ROOT,
                                         capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
            packs = manifest.thumbnails.files if variant.startswith("after") else []
            rows.append(cold_start(variant, root, server, timing, packs, args.cache / "runs"))
            print(rows[-1], flush=True)
    print(f"\nCold start, empty disk, {args.count:,} images ({thumbs / 1e9:.2f} GB of realistic thumbnails in "
          f"{len(manifest.thumbnails.files)} packs, index {manifest.files['index.faiss'].size / 1e6:.0f} MB, "
          f"embeddings {manifest.files['embeddings.npy'].size / 1e6:.0f} MB) + ViT-B/32-size model "
          f"(605 MB) from a loopback Hub (+{args.hub_latency_ms:.0f} ms a request); {header}\n")
    print("| code | downloaded before serving (MB: artifacts + model) | ready over loopback (s) | of which downloading "
          f"(s) | ready at {NETWORK_MB_S:.0f} MB/s (s) | app CPU s to ready | RSS at ready (MB) | "
          "first search / its 20 thumbnails (s) | all packs local (s) | RSS then (MB) | restart, complete cache |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        restart = f"{r['restart_s']:.1f} s ({r['restart_cpu_s']:.1f} CPU s), {r['restart_bytes']} bytes"
        split = f"{r['artifact_bytes'] / 1e6:,.0f} + {r['model_bytes'] / 1e6:,.0f}"
        print(f"| {r['label']} | {r['bytes'] / 1e6:,.0f} ({split}) | {r['seconds']:.1f} | {r['download_s']:.1f} | "
              f"{r['at_100']:.1f} | {r['cpu_s']:.1f} | {r['rss_ready']:.0f} | "
              f"{r['search_s']:.2f} / {r['thumbs_s']:.2f} ({r['thumbs']}) | {r['complete_s']:.1f} | "
              f"{r['rss_complete']:.0f} | {restart} |")
    print(f"\nTargets: ≤ {TARGET_BYTES / 1e9:.0f} GB before serving, ready ≤ {TARGET_SECONDS:.0f} s at "
          f"{NETWORK_MB_S:.0f} MB/s, RSS ≤ {TARGET_MB:.0f} MB. 'at {NETWORK_MB_S:.0f} MB/s' = bytes before serving / "
          f"{NETWORK_MB_S:.0f} MB/s + (seconds to ready - seconds the loopback Hub spent sending file bodies). "
          f"Load average at each start: {', '.join(r['label'] + ' ' + r['load'] for r in rows)}.")


# --- proposals: thumbnail format and vectors stored once -------------------------------------------------------------
PHOTOS = ("media_assets/images/cheetah.jpg", "media_assets/images/cheetah1.jpg", "media_assets/images/lion.jpg",
          "media_assets/images/tower.jpg", "media_assets/images/groot.jpeg", "test_data/cheetah2.jpg")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def encoded(image: Image.Image, kind: str, quality: int) -> tuple[int, float]:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, quality=quality, **({"method": 6} if kind == "WEBP" else {}))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return len(buffer.getvalue()), psnr(np.asarray(image), decoded)


def thumbnail_formats() -> None:
    """JPEG q85 (what the builder writes) against WebP at the same nominal quality and at equal PSNR, on the only
    real photos on this machine (gradio's media assets) and crops of them, made 256-px like the builder's."""
    import gradio

    from clipsearch.core.images import _resized  # the builder's own resize (the thumbnail before JPEG encoding)

    base = Path(gradio.__file__).parent
    thumbs = []
    for name in PHOTOS:
        photo = Image.open(base / name).convert("RGB")
        for box in (None, (0, 0, photo.width * 2 // 3, photo.height * 2 // 3),
                    (photo.width // 3, photo.height // 3, photo.width, photo.height)):
            image = photo.crop(box) if box else photo
            if box and min(image.size) < 128:
                continue
            thumbs.append(image.copy() if max(image.size) <= 256 else _resized(image, 256))
    rows = []
    for image in thumbs:
        jpeg, jpeg_psnr = encoded(image, "JPEG", 85)
        webp85, webp85_psnr = encoded(image, "WEBP", 85)
        matched = next(((size, q) for q in range(40, 101, 5)
                        for size, value in [encoded(image, "WEBP", q)] if value >= jpeg_psnr), (None, None))
        rows.append((jpeg, jpeg_psnr, webp85, webp85_psnr, *matched))
    jpeg = sum(r[0] for r in rows)
    webp85 = sum(r[2] for r in rows)
    equal = [r for r in rows if r[4] is not None]
    print(f"\nThumbnail format, {len(rows)} 256-px thumbnails of real photos (gradio media assets and crops):\n")
    print("| format | total KB | mean KB | vs JPEG q85 | mean PSNR (dB) |\n|---|---:|---:|---:|---:|")
    print(f"| JPEG q85 (today) | {jpeg / 1e3:.0f} | {jpeg / len(rows) / 1e3:.1f} | 100% | "
          f"{np.mean([r[1] for r in rows]):.1f} |")
    print(f"| WebP q85 | {webp85 / 1e3:.0f} | {webp85 / len(rows) / 1e3:.1f} | {webp85 / jpeg:.0%} | "
          f"{np.mean([r[3] for r in rows]):.1f} |")
    if equal:
        same = sum(r[4] for r in equal)
        base_same = sum(r[0] for r in equal)
        print(f"| WebP at the lowest quality reaching JPEG q85's PSNR ({len(equal)} of {len(rows)}; q "
              f"{min(r[5] for r in equal)}-{max(r[5] for r in equal)}) | {same / 1e3:.0f} | "
              f"{same / len(equal) / 1e3:.1f} | {same / base_same:.0%} | - |")


def vectors_once(folder: Path, sample: int = 500) -> None:
    """embeddings.npy (float32) against the index's own fp16 codes for 'more like this': bytes, memory, agreement."""
    import faiss

    from clipsearch.core.gallery import index_vectors

    index = faiss.read_index(str(folder / "index.faiss"))
    codes = index_vectors(index)
    stored = np.load(folder / "embeddings.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(stored), sample, replace=False)
    exact = np.asarray(stored[rows], np.float32)
    half = np.asarray(codes[rows], np.float32)
    # 'more like this' by exact scoring of every row, with each representation
    overlap, worst = [], 0.0
    for start in range(0, sample, 100):
        full = np.asarray(stored, np.float32) @ exact[start:start + 100].T
        from_codes = np.asarray(codes, np.float32) @ half[start:start + 100].T
        worst = max(worst, float(np.abs(full - from_codes).max()))
        top_a = np.argsort(-full, axis=0)[:20].T
        top_b = np.argsort(-from_codes, axis=0)[:20].T
        overlap += [len(set(a) & set(b)) / 20 for a, b in zip(top_a, top_b)]
    print(f"\nVectors stored once ({len(stored):,} x {stored.shape[1]}): embeddings.npy "
          f"{(folder / 'embeddings.npy').stat().st_size / 1e6:.0f} MB float32 to download and map, against the "
          f"{codes.nbytes / 1e6:.0f} MB of fp16 codes the index ({type(faiss.downcast_index(index)).__name__}) "
          f"already holds in memory (a view, no copy). Largest score difference over {sample} queries x all rows: "
          f"{worst:.1e}; 'more like this' top-20 overlap: mean {np.mean(overlap):.4f}, min {np.min(overlap):.2f}.")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proposals"]:
        thumbnail_formats()
        vectors_once(realistic_artifacts(Path(tempfile.gettempdir()) / "clipsearch-cold", common.COCO_COUNT))
        sys.exit()
    if sys.argv[1:2] == ["--build-only"]:
        print(realistic_artifacts(Path(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
