"""Shared benchmark helpers: a ViT-B/32-size CLIP with random weights, COCO-like JPEGs, a COCO-size synthetic
artifact folder, and a raw-HTTP client for the app (start it, call its named endpoints, upload files)."""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OWNED = ".clipsearch-benchmark"  # written into every folder a benchmark makes and may replace on a later run


def fresh_folder(path: Path) -> Path:
    """An empty folder at `path`. One a benchmark made earlier (it holds the OWNED marker) is replaced; anything
    else there is left untouched and refused, so a --cache pointed at a user's own folder deletes nothing."""
    if path.exists():
        if not (path / OWNED).is_file():
            raise SystemExit(f"{path} exists and was not made by a benchmark; nothing was deleted. Move it away or "
                             "choose another --cache.")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / OWNED).write_text("made by a clipsearch benchmark; replaced on its next run\n")
    return path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    try:
        load = f", load average {Path('/proc/loadavg').read_text().split()[0]} at start"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}{load}"


def vit_b32_clip(folder: Path) -> Path:
    """openai/clip-vit-base-patch32's architecture (same compute as the default LAION ViT-B/32), random weights."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from tiny_models import _clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = 77
    # the text tower pools at its config's eos id: it must be this tokenizer's, or every text gets one vector
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    # defaults: ViT-B/32 vision, 12-layer 512-wide text
    model = CLIPModel(CLIPConfig(projection_dim=512, text_config=ids))
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def coco_like_jpegs(folder: Path, count: int, size=(640, 480), seed: int = 0) -> Path:
    """Photo-sized JPEGs with texture (noise + shapes) so decoding costs what a real photo costs."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(seed + existing)
    for number in range(existing, count):
        base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            draw.ellipse([x, y, x + rng.integers(20, 200), y + rng.integers(20, 200)],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"{number:06d}.jpg", quality=90)
    return folder


# --- a COCO-size artifact folder from synthetic vectors ---------------------------------------------------------
COCO_COUNT = 123_287  # train2017 118,287 + val2017 5,000
CATEGORIES = ("person", "bicycle", "car", "bus", "dog", "cat", "horse", "giraffe", "pizza", "broccoli", "laptop",
              "surfboard", "frisbee", "bench", "umbrella", "kite", "clock", "train", "boat", "chair")
WORDS = ("a man", "a woman", "two people", "a dog", "a cat", "a red bus", "a plate of food", "a giraffe",
         "a surfer", "a train", "a kite", "a laptop", "a group of children", "a horse", "a pizza", "a clock tower")
VERBS = ("is sitting", "standing together", "walking slowly", "that is parked", "looking at the camera",
         "covered with toppings", "flying high", "waiting patiently", "lying down", "riding along")
PLACES = ("on a city street", "in a park", "on the beach", "in a kitchen", "next to a building", "in a field",
          "at the station", "on a table", "in the snow", "near the water", "in a living room", "on a wave")


def clustered_vectors(count: int, dim: int, seed: int = 0, per_topic: int = 120, subtopics: int = 8,
                      noise: float = 0.35) -> np.ndarray:
    """L2-normalised float32 vectors shaped like CLIP image embeddings: a shared direction (CLIP's cone), topics,
    sub-topics and noise; nearest neighbours at cosine ~0.85, same topic ~0.65, unrelated ~0.3."""
    rng = np.random.default_rng(seed)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    topics = max(1, count // per_topic)
    common = unit(rng.standard_normal(dim, dtype=np.float32))
    centres = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    sub_centres = unit(rng.standard_normal((topics * subtopics, dim), dtype=np.float32))
    sub = rng.integers(0, topics * subtopics, count)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 16384):  # in blocks: a few hundred MB less at peak
        rows = sub[start:start + 16384]
        jitter = rng.standard_normal((len(rows), dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + 16384] = unit(0.5 * common + 0.6 * centres[rows // subtopics] + 0.45 * sub_centres[rows]
                                        + noise * jitter)
    return out


def _thumbnail_pool(count: int = 64, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((64, 48))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        pool.append(buffer.getvalue())
    return pool


def synthetic_artifacts(cache: Path, count: int = COCO_COUNT, index: str = "auto", seed: int = 0) -> Path:
    """A finished artifact folder in the builder's exact format (written by the builder's own shard writer, pack,
    index and manifest functions): `count` rows of clustered synthetic vectors, COCO-like metadata (ids, splits,
    5 captions, categories, urls) and tiny JPEG thumbnails, served with the ViT-B/32-size random CLIP. Cached."""
    import faiss

    from builder.embed import THUMB_SIDE, Decoded, _write_shard, shard_ranges
    from builder.index import AUTO, build_index, choose_index
    from builder.pack import pack
    from builder.sources import Record, Source
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.manifest import (
        FORMAT_VERSION,
        INDEX,
        MANIFEST,
        Manifest,
        SourceInfo,
        ThumbnailInfo,
        hash_files,
        write_manifest,
    )

    factory, params = choose_index(count, 512) if index == AUTO else (index, "")
    out = cache / f"synthetic-{count}-{factory.replace(',', '_')}"
    if (out / MANIFEST).exists():
        return out
    started = time.perf_counter()
    model = vit_b32_clip(cache / "clip-b32")
    info = Encoder.load(str(model), None, "cpu").info  # fp32: exactly what the builder records
    rng = np.random.default_rng(seed)
    val = min(5000, count // 20)
    source = Source()
    source.infos = [SourceInfo(kind="images", location="synthetic", splits=["train2017", "val2017"])]
    source.records = []
    for number in range(count):
        image_id = 9 + 3 * number
        split = "val2017" if number >= count - val else "train2017"
        name = f"{image_id:012d}.jpg"
        source.records.append(Record(
            image_id=image_id, split=split, file_name=name, locator=name, width=640, height=480,
            captions=[f"{WORDS[i]} {VERBS[v]} {PLACES[j]}"  # COCO-length captions (~50 characters)
                      for i, v, j in rng.integers(0, [len(WORDS), len(VERBS), len(PLACES)], (5, 3))],
            categories=sorted({CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), rng.integers(1, 5))}),
            url=f"http://images.cocodataset.org/{split}/{name}",
        ))
    vectors = clustered_vectors(count, info.dim, seed=seed)
    work = out / ".work"
    out.mkdir(parents=True, exist_ok=True)
    pool = _thumbnail_pool()
    ranges = shard_ranges(count, 4096)
    for shard, (lo, hi) in enumerate(ranges):
        items = [Decoded(i, None, pool[i % len(pool)], 640, 480, "") for i in range(lo, hi)]
        _write_shard(work, shard, (lo, hi), [(items, vectors[lo:hi])])
    packed = pack(source, work, out, len(ranges), info.dim)
    built, index_info = build_index(packed.vectors, factory, params)
    faiss.write_index(built, str(out / INDEX))
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = Manifest(
        format_version=FORMAT_VERSION, model=info.to_dict(), dim=info.dim, count=count, index=index_info,
        thumbnails=ThumbnailInfo(files=packed.thumb_files, max_side=THUMB_SIDE), sources=source.infos, skipped=[],
        evaluation={}, builder_version="benchmarks.common.synthetic_artifacts", created_at="2000-01-01T00:00:00+00:00",
        build_seconds=round(time.perf_counter() - started, 1), device="cpu", files=hash_files(out, names),
    )
    write_manifest(out, manifest)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return out


# --- the app over raw HTTP ----------------------------------------------------------------------------------------
READY = re.compile(r"started in ([\d.]+) s, resident memory (\d+) MB")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """`python app.py` serving `index` on a free port; `with App(...) as app:` waits until it is ready."""

    def __init__(self, index: Path, cache: Path, log: Path | None = None, env: dict | None = None,
                 timeout: float = 300, root: Path = ROOT):
        self.root = root  # the folder holding the app.py (and clipsearch/) to run: this checkout or another
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or cache / f"app-{self.port}.log"  # per run: other benchmarks may be running an app too
        self.env = {**os.environ, "INDEX_DIR": str(index), "GRADIO_SERVER_PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1", "CLIPSEARCH_CACHE": str(cache / "app-cache"), **(env or {})}
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.wall_seconds = 0.0  # process start to "Running on local URL" (imports included)
        self.ready_seconds = 0.0  # what the app logs: start-up work after imports
        self.ready_rss_mb = 0.0

    def __enter__(self) -> App:
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=self.root, env=self.env,
                                        stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        while "Running on local URL" not in self.log.read_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited:\n{self.log.read_text()[-3000:]}")
            if time.perf_counter() - started > self.timeout:
                raise RuntimeError(f"the app was not ready in {self.timeout} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.wall_seconds = time.perf_counter() - started
        ready = READY.search(self.log.read_text())
        if ready:
            self.ready_seconds, self.ready_rss_mb = float(ready.group(1)), float(ready.group(2))
        return self

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def log_line(self, pattern: str) -> str:
        found = re.search(pattern, self.log.read_text())
        return found.group(0) if found else ""

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def call(client, endpoint: str, data: list) -> dict:
    """POST /gradio_api/call/<endpoint>, then read its result stream: what any HTTP client would do."""
    event = client.post(f"/gradio_api/call/{endpoint}", json={"data": data}).json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/{endpoint}/{event}") as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                if kind == "error":
                    raise RuntimeError(line)
                return json.loads(line[5:])
    raise RuntimeError("no result")


def upload(client, path: Path) -> dict:
    response = client.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/jpeg")})
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def drive_clients(url: str, clients: int, seconds: float, query, label=lambda number, sent: "all",
                  **client_options) -> dict:
    """`clients` threads, each with its own HTTP connection (httpx.Client options in `client_options`), calling
    `query(client, number, sent)` back to back for `seconds`: number is the client's, sent how many it sent before.
    Each latency is counted under `label(number, sent)`; an exception is counted as an error, never stops the run.
    Returns {"latencies": {label: [ms, ...]}, "errors": ["label: Type: message"], "elapsed": s}; elapsed includes
    finishing the requests in flight at the deadline."""
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client_loop(number: int) -> None:
        with httpx.Client(base_url=url, **{"timeout": 120, **client_options}) as client:
            start.wait()
            sent = 0
            while time.perf_counter() < deadline[0]:
                kind = label(number, sent)
                began = time.perf_counter()
                try:
                    query(client, number, sent)
                    with lock:
                        latencies.setdefault(kind, []).append((time.perf_counter() - began) * 1000)
                except Exception as error:  # noqa: BLE001 - counted and reported, never stops the run
                    with lock:
                        errors.append(f"{kind}: {type(error).__name__}: {str(error)[:160]}")
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def text_queries(count: int, seed: int = 0) -> list[str]:
    """Distinct, caption-like queries (distinct so the app's text-vector cache never answers them)."""
    rng = np.random.default_rng(seed)
    return [f"{WORDS[i]} {PLACES[j]} #{n}" for n, (i, j) in
            enumerate(rng.integers(0, [len(WORDS), len(PLACES)], (count, 2)))]
