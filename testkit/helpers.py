"""Plain helpers shared by the test files (fixtures live in conftest.py): `python app.py` in a subprocess, raw-HTTP
API calls, publishing a built artifact set to the loopback Hub, and crafted image payloads."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from huggingface_hub import HfApi
from PIL import Image

from builder.publish import push
from clipsearch.core.manifest import Manifest

from . import HUB_TOKEN, ROOT


# --- results ----------------------------------------------------------------------------------------------------------
def kinds(service, hits) -> list[str]:
    """'blue-square' for each hit (the gallery's file names are <colour>-<shape>-<n>.png)."""
    gallery = service.searcher.gallery
    return [gallery.rows([gallery.row_of(h["image_id"])])[0].file_name.rsplit("-", 1)[0] for h in hits]


# --- `python app.py` against a loopback Hub ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(env: dict, log: Path, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("INDEX_DIR", "INDEX_REPO", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME")}
    env = {**inherited, **env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_DISABLE_XET": "1", "PYTHONUNBUFFERED": "1"}
    handle = open(log, "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return process, log.read_text()
        if "Running on local URL" in log.read_text():
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.3)
    process.kill()
    raise AssertionError("the app did not start in time:\n" + log.read_text()[-3000:])


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def publish_artifacts(hub, artifacts: Path, repo: str):
    """A built artifact folder published to the loopback Hub as `repo` (one tagged commit)."""
    return push(artifacts, Manifest.read(artifacts), repo, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))


def app_env(hub, tmp_path: Path, repo: str, **extra) -> dict:
    """The environment of an app serving `repo` from the loopback Hub, with its caches in tmp_path."""
    return {"INDEX_REPO": repo, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf"),
            "CLIPSEARCH_CACHE": str(tmp_path / "app-cache"), **extra}


# --- raw-HTTP API calls -----------------------------------------------------------------------------------------------
def call(url: str, endpoint: str, data: list, timeout: float = 60) -> tuple[str, object]:
    """One raw-HTTP API call: ("complete", outputs) or ("refused"/"error", the message the caller is shown)."""
    with httpx.Client(base_url=url, timeout=timeout) as http:
        response = http.post(f"/gradio_api/call/{endpoint}", json={"data": data})
        if response.status_code != 200:
            return f"refused:{response.status_code}", _detail(response)
        event = response.json()["event_id"]
        kind = None
        with http.stream("GET", f"/gradio_api/call/{endpoint}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    payload = json.loads(line[5:])
                    return kind, payload.get("error") if kind == "error" and isinstance(payload, dict) else payload
    raise AssertionError(f"{endpoint}: the result stream ended without a result")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text
    if isinstance(detail, list):  # validators: one entry per parameter
        return " ".join(item.get("message", "") for item in detail if not item.get("is_valid", True))
    return str(detail)


def upload(url: str, path: Path) -> dict:
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("/gradio_api/upload", files={"files": (path.name, path.read_bytes())})
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def search_data(url: str, **values) -> list:
    """Positional data for /search from its published parameter list, so new optional inputs need no test edits."""
    with httpx.Client(base_url=url, timeout=30) as http:
        parameters = http.get("/gradio_api/info").json()["named_endpoints"]["/search"]["parameters"]
    blank = {"text": "", "images": [], "negative": "", "more_like": [], "less_like": []}
    return [values.get(p["parameter_name"], p["parameter_default"] if p["parameter_has_default"]
                       else blank.get(p["parameter_name"])) for p in parameters]


def assert_sentence(message: object) -> None:
    """What a person is shown: a sentence saying what was wrong, never a bare 'Error' or a traceback."""
    text = str(message or "")
    assert len(text) > 20 and text.strip().lower() not in ("error", "none"), text
    assert "Traceback" not in text and text.rstrip().endswith((".", ")")), text


def rss_mb() -> float:
    """Resident memory of this process (the in-process app's), after handing freed heap back to the system: glibc
    keeps the memory of a big decode cached in its per-thread arenas for a while, which is not growth."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- crafted image payloads -------------------------------------------------------------------------------------------
def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header claiming width x height, followed by a few bytes of pixel data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + png_chunk(b"IEND", b"")



# name -> (the file's bytes, the refusal it must get): files no image endpoint can use
UNUSABLE = {
    "random-after-png-header.png": (lambda: encoded(Image.new("RGB", (64, 64), "red"), "PNG")[:41]
                                    + np.random.default_rng(1).bytes(4000), r"damaged or truncated|not an image"),
    "pdf-named.png": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" * 40, "not an image"),
    "html-named.webp": (lambda: b"<!doctype html><html><body>hello</body></html>\n" * 40, "not an image"),
    "zip-named.gif": (lambda: b"PK\x03\x04" + bytes(400), "not an image"),
    "bomb-400mp.png": (lambda: encoded(Image.new("L", (20000, 20000)), "PNG"), r"\(400 MP\); the limit is 100 MP"),
    "bomb-header-10gp.png": (lambda: png_claiming(100_000, 100_000), r"\(10000 MP\); the limit is 100 MP"),
    "bomb-header.gif": (lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + encoded(
        Image.new("P", (8, 8)), "GIF")[10:], r"\(4295 MP\); the limit is 100 MP"),
}


# --- builds compared ----------------------------------------------------------------------------------------------
# What may differ between two builds of the same input: when and how fast they ran, and the checkout's git sha
# (in a live working tree HEAD can move between the two builds of one test).
NOT_BUILT = ("build_seconds", "images_per_second", "created_at", "builder_version")


def assert_same_build(first: Path, second: Path) -> dict:
    """Two artifact folders hold the same files, byte for byte, and manifests equal but for NOT_BUILT; returns
    that manifest."""
    from clipsearch.core.manifest import MANIFEST

    names = sorted(p.name for p in first.iterdir() if p.is_file())
    assert names == sorted(p.name for p in second.iterdir() if p.is_file())
    for name in names:
        if name != MANIFEST:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    built = [{k: v for k, v in json.loads((folder / MANIFEST).read_text()).items() if k not in NOT_BUILT}
             for folder in (first, second)]
    assert built[0] == built[1]
    return built[0]


class Trap:
    """Unpickling this touches a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def run_build(*args: str) -> int:
    """The builder CLI in-process (same code path as `python -m builder.build`)."""
    from builder.build import main

    return main(["--quiet", "--num-workers", "0", *map(str, args)])
