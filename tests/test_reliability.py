"""Reliability and security: bad input through the API, faults (downloads, disk, pushes), load shedding, no pickle,
no path out of the thumbnails, no token in logs or artifacts. Complements test_app, test_images and test_publish."""

from __future__ import annotations

import ast
import errno
import http.client
import io
import json
import os
import pickle
import re
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import HUB_TOKEN, ROOT, run_build
from gradio_client import Client, handle_file
from huggingface_hub import HfApi
from PIL import Image
from test_app import _start_app, _stop
from tiny_models import draw_shape

from builder.publish import PublishError, push
from clipsearch.hub import latest_tag, open_gallery
from clipsearch.manifest import EMBEDDINGS, MANIFEST, ArtifactError, Manifest, sha256_file

REPO = "tester/reliable-index"


# --- helpers -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server[0], verbose=False)


def kinds(service, hits) -> list[str]:
    """'blue-square' for each hit (the gallery's file names are <colour>-<shape>-<n>.png)."""
    gallery = service.searcher.gallery
    return [gallery.rows([gallery.row_of(h["image_id"])])[0].file_name.rsplit("-", 1)[0] for h in hits]


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


# === 1. Bad input through the API ==================================================================================
def _exif_rotated(picture: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; EXIF orientation 6 turns it back upright
    return encoded(picture.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def _with_transparent_corner(picture: Image.Image) -> Image.Image:
    rgba = picture.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    return rgba


BLUE = (30, 60, 220)
# name -> (the file's bytes from the blue-square picture, whether its colours survive: then the top hit must be the
# same kind as the plain PNG's)
EXOTIC = {
    "cmyk.jpg": (lambda p: encoded(p.convert("CMYK"), "JPEG", quality=95), True),
    "palette.png": (lambda p: encoded(p.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), True),
    "alpha.png": (lambda p: encoded(_with_transparent_corner(p), "PNG"), True),
    "grey16.png": (lambda p: encoded(Image.fromarray(np.asarray(p.convert("L"), np.uint16) * 257, "I;16"), "PNG"),
                   False),
    "animated.gif": (lambda p: encoded(p, "GIF", save_all=True, append_images=[draw_shape("red", "circle")],
                                       duration=100, loop=0), True),
    "animated.webp": (lambda p: encoded(p, "WEBP", save_all=True, append_images=[draw_shape("red", "circle")],
                                        lossless=True), True),
    "exif-rotated.jpg": (_exif_rotated, True),
    "one-pixel.png": (lambda p: encoded(Image.new("RGB", (1, 1), BLUE), "PNG"), False),
    "very-wide.png": (lambda p: encoded(Image.new("RGB", (8000, 2), BLUE), "PNG"), False),
    "very-tall.png": (lambda p: encoded(Image.new("RGB", (2, 8000), BLUE), "PNG"), False),
    "large-photo.jpg": (lambda p: encoded(p.resize((6000, 4000)), "JPEG", quality=90), True),
    # 81 MP in about 300 KB: under the pixel limit, so decoded (two at a time at most) and shrunk right away
    "huge-81mp.png": (lambda p: encoded(p.resize((9000, 9000), Image.Resampling.NEAREST), "PNG"), True),
}


@pytest.mark.parametrize("name", sorted(EXOTIC))
def test_usable_uploads_of_every_kind_are_searched(client, app_server, tmp_path, name):
    picture = draw_shape("blue", "square", size=64, seed=2024)
    plain, path = tmp_path / "plain.png", tmp_path / name
    picture.save(plain)
    make, keeps_colour = EXOTIC[name]
    path.write_bytes(make(picture))
    _, reference = client.predict(handle_file(str(plain)), 3, api_name="/search_image")
    _, hits = client.predict(handle_file(str(path)), 3, api_name="/search_image")
    assert len(hits) == 3 and all(isinstance(h["score"], float) for h in hits)
    if keeps_colour:  # the same picture in another container: found like the plain PNG
        assert kinds(app_server[1], hits)[0] == kinds(app_server[1], reference)[0], name


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


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_uploads_get_a_sentence_on_every_image_endpoint(client, app_server, tmp_path, name):
    make, message = UNUSABLE[name]
    path = tmp_path / name
    path.write_bytes(make())
    assert path.stat().st_size < 2_000_000  # the bombs are small files
    with pytest.raises(Exception, match=message) as refused:  # /search_image: its validator answers
        client.predict(handle_file(str(path)), 3, api_name="/search_image")
    assert_sentence(str(refused.value).split(": ", 1)[-1])
    # /search takes a list of pictures and has no validator: the search itself answers with the sentence.
    kind, shown = call(app_server[0], "search", search_data(app_server[0], images=[upload(app_server[0], path)]))
    assert kind == "error", shown
    assert_sentence(shown)
    assert re.search(message, shown), shown


@pytest.mark.parametrize("payload", [
    pytest.param(lambda: encoded(draw_shape("red", "circle"), "JPEG")[:700] + np.random.default_rng(2).bytes(3000),
                 id="jpeg-header-then-noise"),
    pytest.param(lambda: (lambda g: g[: len(g) * 2 // 3])(encoded(draw_shape("red", "circle"), "GIF", save_all=True,
                 append_images=[draw_shape("blue", "cross")] * 3)), id="animated-gif-cut-short"),
    pytest.param(lambda: encoded(draw_shape("red", "circle"), "PNG") + np.random.default_rng(3).bytes(5000),
                 id="png-with-trailing-junk"),
])
def test_junk_after_a_valid_header_is_answered_or_refused_never_a_crash(client, tmp_path, payload):
    path = tmp_path / "upload.img"
    path.write_bytes(payload())
    try:
        _, hits = client.predict(handle_file(str(path)), 3, api_name="/search_image")
    except Exception as error:  # noqa: BLE001 - refused is fine, with a sentence
        assert_sentence(str(error).split(": ", 1)[-1])
        assert "damaged or truncated" in str(error) or "not an image" in str(error), error
    else:
        assert len(hits) == 3


def test_the_pixel_limit_is_checked_before_any_pixel_is_decoded(app_server, tmp_path, monkeypatch):
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)  # the app runs in this process
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(encoded(Image.new("L", (15000, 15000)), "PNG"))
    kind, shown = call(app_server[0], "search_image", [upload(app_server[0], bomb), 3])
    assert kind.startswith("refused") and "(225 MP); the limit is 100 MP" in shown
    assert all(w * h <= 100_000_000 for w, h in decoded), decoded


def test_a_burst_of_big_pictures_is_decoded_a_few_at_a_time(app_server, tmp_path):
    """Six 81-MP PNGs of 300 KB at once: decoded (324 MB each in PIL) two at a time, so the peak stays bounded;
    validators run outside the queue's concurrency limit, so nothing else would bound it."""
    url = app_server[0]
    path = tmp_path / "huge.png"
    path.write_bytes(EXOTIC["huge-81mp.png"][0](draw_shape("green", "triangle", size=64, seed=99)))
    data = upload(url, path)
    rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # resets this process's peak resident memory (VmHWM)
    before = rss_mb()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: call(url, "search_image", [data, 3]), range(6)))
    peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    assert all(kind == "complete" and len(outputs[1]) == 3 for kind, outputs in results), results
    assert peak - before < 1000, f"peak {peak - before:.0f} MB above the resident memory before the burst"


def test_an_upload_over_the_size_limit_is_refused_at_the_door(app_server, tmp_path):
    big = tmp_path / "huge.jpg"
    big.write_bytes(encoded(Image.new("RGB", (64, 64)), "JPEG") + bytes(25 * 2**20 + 1))
    with httpx.Client(base_url=app_server[0], timeout=120) as http:
        response = http.post("/gradio_api/upload", files={"files": (big.name, big.read_bytes(), "image/jpeg")})
    assert response.status_code == 413
    assert "exceeded maximum allowed size of 26214400 bytes" in response.text  # Gradio's sentence, 25 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        Client(app_server[0], verbose=False).predict(handle_file(str(big)), 3, api_name="/search_image")


def test_text_edge_cases_are_answered_or_refused_with_a_sentence(client, app_server):
    url = app_server[0]
    _, clean = client.predict("a red circle", 5, api_name="/search_text")
    # far longer than the model's context and the 1000-character cap: cut, then truncated by the tokenizer
    long_text = "a red circle " * 10_000
    started = time.perf_counter()
    _, long_hits = client.predict(long_text, 5, api_name="/search_text")
    assert time.perf_counter() - started < 30
    _, capped = client.predict(" ".join(long_text.split())[:1000], 5, api_name="/search_text")
    assert [h["image_id"] for h in long_hits] == [h["image_id"] for h in capped]
    # control characters and escape sequences carry no meaning: the same search as the clean text
    _, noisy = client.predict("a red\x00 circle\x1b\x07\r\n\t", 5, api_name="/search_text")
    assert [h["image_id"] for h in noisy] == [h["image_id"] for h in clean]
    for answered in ("\u202ba red circle\u202c", "🔴 a red circle ⭕", "一个红色的圆 a red circle", "دائرة حمراء"):
        kind, outputs = call(url, "search_text", [answered, 3])
        assert kind == "complete" and len(outputs[1]) == 3, (answered, outputs)
    for blank in ("\u200b\u200b", "\u3000\u00a0\n\r\t", "\x00\x01\x1f", "\ufeff"):
        kind, shown = call(url, "search_text", [blank, 3])
        assert kind == "refused:422" and shown.startswith("Please type a description"), (blank, shown)
    kind, shown = call(url, "search_text", [None, 3])
    assert kind == "refused:422" and "must be text" in shown


BAD_K = [0, -3, 51, 10**12, 2.5, "abc", None, True, [5], {"k": 5}]


@pytest.mark.parametrize("endpoint", ["search_text", "search_image", "search_similar", "search"])
def test_k_outside_the_range_or_of_the_wrong_type_is_refused_with_a_message(app_server, tmp_path, endpoint):
    url, service = app_server
    picture = tmp_path / "q.png"
    draw_shape("green", "cross", size=64, seed=7).save(picture)
    image_id = int(service.searcher.gallery.rows([0])[0].image_id)
    first = {"search_text": lambda k: ["a red circle", k], "search_image": lambda k: [upload(url, picture), k],
             "search_similar": lambda k: [image_id, k], "search": lambda k: search_data(url, text="a red circle", k=k)}
    for k in BAD_K:
        kind, shown = call(url, endpoint, first[endpoint](k))
        if kind == "complete" and endpoint in ("search_similar", "search") and k in (2.5, True):
            # Coerced, not refused: /search_similar's k is a gr.Number(precision=0), which rounds (and reads true
            # as 1), and /search's state takes int(k) before checking it. Answered with that many results.
            assert len(shown[1]) in (int(k), round(k)), (endpoint, k)
            continue
        assert kind != "complete", (endpoint, k, shown)  # never answered with some other number of results
        assert kind in ("error", "refused:400", "refused:422"), (endpoint, k, kind, shown)  # never a server fault
        assert "k must be a whole number between 1 and 50" in str(shown), (endpoint, k, shown)
    kind, outputs = call(url, endpoint, first[endpoint](50))  # the edges of the range are fine
    assert kind == "complete" and len(outputs[1]) == min(50, len(service.searcher.gallery))


@pytest.mark.parametrize("k", [2.5, True, 51])
def test_k_refused_by_the_validator_reaches_python_clients_as_a_sentence(client, k):
    with pytest.raises(Exception, match="k must be a whole number between 1 and 50") as refused:
        client.predict(1000 if k == 51 else "a red circle", k, api_name="/search_similar" if k == 51 else
                       "/search_text")
    assert "ValidationError" in type(refused.value).__name__


@pytest.mark.parametrize("k", [0, 51, "abc", None])
def test_k_refused_by_the_slider_reaches_python_clients_as_a_sentence(client, k):
    with pytest.raises(Exception, match=r"k must be|minimum value|maximum value") as refused:
        client.predict("a red circle", k, api_name="/search_text")
    assert "400 Bad Request" not in str(refused.value)


def test_after_a_storm_of_bad_requests_the_server_answers_and_memory_is_bounded(client, app_server, tmp_path):
    url, service = app_server
    uploads = {name: make() for name, (make, _) in UNUSABLE.items() if "bomb" in name or "pdf" in name}

    def storm(round_: int) -> None:
        for name, data in uploads.items():
            (tmp_path / name).write_bytes(data)
            call(url, "search_image", [upload(url, tmp_path / name), 3])
        # big pictures (40 MP in a few hundred KB) that decode fine: one searched, one sent with an invalid k
        # (decoded by the validator, then refused: nothing of it may stay behind)
        for number, k, outcome in ((0, 3, "complete"), (1, 2.5, "refused:422")):
            big = tmp_path / f"big-{round_}-{number}.png"
            big.write_bytes(encoded(Image.new("RGB", (8000, 5000), (round_ * 37 % 256, 80, 160 + number)), "PNG"))
            assert call(url, "search_image", [upload(url, big), k])[0] == outcome
        for k in (0, "abc", 2.5):
            call(url, "search_text", ["a red circle", k])
        call(url, "search_text", ["a red circle " * 5000, 3])
        call(url, "search_similar", [123456789, 3])
        call(url, "search", search_data(url, text="", k=3))

    storm(0)  # warm-up: first-time allocations, caches, thread pools
    before = rss_mb()
    for round_ in range(1, 5):
        storm(round_)
    grown = rss_mb() - before
    _, hits = client.predict("a yellow triangle", 3, api_name="/search_text")
    assert len(hits) == 3
    assert grown < 50, f"resident memory grew {grown:.0f} MB over 4 rounds of bad requests"


def test_raw_api_calls_do_not_pile_up_sessions(app_server):
    """Every raw-HTTP call is a new Gradio session holding a copy of the UI's config (~135 KB); only the newest 500
    are kept (clipsearch.ui.launch), so a steady stream of calls reaches a ceiling instead of growing ~1.3 GB."""
    url = app_server[0]

    def calls(first: int, count: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            kinds_ = list(pool.map(lambda n: call(url, "search_text", [f"a green cross {n}", 1])[0],
                                   range(first, first + count)))
        assert set(kinds_) == {"complete"}

    calls(0, 650)  # fills the session store
    before = rss_mb()
    calls(1000, 500)
    grown = rss_mb() - before
    assert grown < 30, f"resident memory grew {grown:.0f} MB over 500 more calls"


# === 2. Load shedding ==============================================================================================
def test_an_overfull_queue_says_busy_try_again(app_server):
    """A second app on the same gallery with a two-place queue and an encoder held shut: once 16 searches run and
    2 wait, the next ones are refused at once with a readable 'busy' answer, and every accepted one completes."""
    from clipsearch.search import Searcher
    from clipsearch.service import Service
    from clipsearch.ui import build_ui, launch

    service = app_server[1]
    gate = threading.Event()
    searcher = Searcher(service.searcher.gallery, service.searcher.encoder)
    real = searcher._encode_text
    searcher._encode_text = lambda text: (gate.wait(60), real(text))[1]
    demo = build_ui(Service(searcher, service.source, 0.0, 0.0))
    launch(demo, Service(searcher, service.source, 0.0, 0.0), queue_size=2, prevent_thread_lock=True,
           server_name="127.0.0.1", quiet=True)
    url = demo.local_url.rstrip("/")
    accepted, refused = [], []
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for number in range(40):
                response = http.post("/gradio_api/call/search_text", json={"data": [f"a red circle {number}", 3]})
                (accepted if response.status_code == 200 else refused).append(response)
                time.sleep(0.02)
            assert refused, "the queue never filled"
            assert {r.status_code for r in refused} == {503}
            busy = refused[0].json()["detail"]
            assert "busy" in busy and "try again" in busy, busy
            assert refused[0].headers.get("retry-after")
            with pytest.raises(Exception, match="(?i)queue is full.*try again"):  # gradio_client's own sentence
                Client(url, verbose=False).predict("a blue square", 3, api_name="/search_text")
            gate.set()
            for response in accepted:
                kind = None
                with http.stream("GET", f"/gradio_api/call/search_text/{response.json()['event_id']}") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event:"):
                            kind = line.split(":", 1)[1].strip()
                            if kind in ("complete", "error"):
                                break
                assert kind == "complete"
        assert 18 <= len(accepted) < 40
    finally:
        gate.set()
        demo.close()


# === 3. Faults =====================================================================================================
def _published(hub, shapes_artifacts, repo: str = REPO):
    return push(shapes_artifacts, Manifest.read(shapes_artifacts), repo, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))


def _app_env(hub, tmp_path, repo: str = REPO, **extra) -> dict:
    return {"INDEX_REPO": repo, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf"),
            "CLIPSEARCH_CACHE": str(tmp_path / "app-cache"), **extra}


def test_an_interrupted_startup_download_is_retried_and_the_app_starts(hub, tmp_path, shapes_artifacts):
    published = _published(hub, shapes_artifacts)
    hub.cut_after(64, times=3)  # the first three file downloads break off after 64 bytes
    process, url = _start_app(_app_env(hub, tmp_path), tmp_path / "cut.log")
    try:
        assert url.startswith("http"), url
        gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        names = [r.path.rsplit("/", 1)[-1] for r in gets]
        assert len(gets) >= len(set(names)) + 3  # three of them fetched again
        assert f"downloading {REPO} at {published.tag}" in (tmp_path / "cut.log").read_text()
        _, hits = Client(url, verbose=False).predict("a red circle", 2, api_name="/search_text")
        assert len(hits) == 2
    finally:
        _stop(process)


def test_a_big_artifact_cut_mid_way_resumes_from_the_last_whole_chunk(hub, tmp_path, monkeypatch, shapes_artifacts):
    from huggingface_hub import constants

    _published(hub, shapes_artifacts)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # files > 1 KB are "big" here
    size = (shapes_artifacts / "thumbs-00000.bin").stat().st_size
    assert size > 8 * 1024
    files = len(hub.files(REPO))
    hub.cut_after(4 * 1024 + 100, times=files)  # every file's first download breaks off after 4 KB + 100 bytes
    gallery, source = open_gallery(index_dir=None, repo_id=REPO, revision=None, endpoint=hub.url,
                                   cache_dir=tmp_path / "hf", work_dir=tmp_path / "work")
    resumed = {r.path.rsplit("/", 1)[-1]: r.range for r in hub.requests if r.method == "GET" and r.range}
    assert resumed.get("thumbs-00000.bin") == "bytes=4096-", resumed  # the whole 1 KB chunks were kept
    assert len(gallery) == Manifest.read(shapes_artifacts).count  # and everything verified


def test_artifacts_corrupted_in_the_cache_are_refused_and_the_advice_works(hub, tmp_path, shapes_artifacts):
    _published(hub, shapes_artifacts)
    env = _app_env(hub, tmp_path)
    process, url = _start_app(env, tmp_path / "good.log")
    assert url.startswith("http"), url
    _stop(process)
    snapshot = next((tmp_path / "hf").glob(f"datasets--{REPO.replace('/', '--')}/snapshots/*"))
    blob = (snapshot / EMBEDDINGS).resolve()
    assert blob != snapshot / EMBEDDINGS  # the snapshot holds a link; the bytes are in blobs/
    with open(blob, "r+b") as handle:  # bit rot: same size, a few bytes flipped
        handle.seek(blob.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))

    process, message = _start_app(env, tmp_path / "corrupt.log")
    assert process.returncode not in (0, None), message
    assert "embeddings.npy" in message and "does not match the sha256 in the manifest" in message
    assert "Traceback" not in message
    repo_cache = snapshot.parent.parent
    assert re.search(re.escape(f"deleting {repo_cache}") + r"(?!/)", message), message  # the folder with blobs/
    shutil.rmtree(snapshot)  # deleting just the snapshot folder is not enough: it links the same damaged blob again
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        open_gallery(index_dir=None, repo_id=REPO, revision=None, endpoint=hub.url, cache_dir=tmp_path / "hf",
                     work_dir=tmp_path / "app-cache")
    shutil.rmtree(repo_cache)  # ... what the message says does bring the app back
    process, url = _start_app(env, tmp_path / "recovered.log")
    try:
        assert url.startswith("http"), url
    finally:
        _stop(process)


def _raise(error: BaseException):
    raise error


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_when(predicate, real):
    def wrapper(*args, **kwargs):
        if predicate(args):
            _raise_enospc()
        return real(*args, **kwargs)
    return wrapper


DISK_FULL = {
    # where the disk fills up -> (target, how to fail there)
    "embedding-shard": ("numpy.save", lambda real: _fail_when(lambda a: Path(a[0]).name == "vectors.npy"
                                                             and "00002" in str(a[0]), real)),
    "embeddings.npy": ("numpy.save", lambda real: _fail_when(lambda a: Path(a[0]).name == EMBEDDINGS, real)),
    "thumbnail-pack": ("builder.pack.open", lambda real: _fail_when(lambda a: "thumbs-" in str(a[0]), real)),
    "manifest": ("pathlib.Path.write_text", lambda real: _fail_when(lambda a: MANIFEST in Path(a[0]).name, real)),
}


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory, tiny_clip, shapes_folder) -> tuple[list[str], Path]:
    args = ["--images", str(shapes_folder[0]), "--model", str(tiny_clip), "--batch-size", "8", "--shard-size", "8",
            "--eval", "none"]
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_build(*args, "--out", out) == 0
    return args, out


@pytest.mark.parametrize("where", sorted(DISK_FULL))
def test_a_full_disk_during_a_build_fails_cleanly_and_the_rerun_resumes(tmp_path, monkeypatch, capfd, where,
                                                                          reference_build):
    import builtins
    import importlib

    args, reference = reference_build
    out = tmp_path / "out"
    target, make = DISK_FULL[where]
    module_name, attribute = target.rsplit(".", 1)
    owner = importlib.import_module(module_name) if module_name != "pathlib.Path" else Path
    if target == "builder.pack.open":
        monkeypatch.setattr(owner, attribute, make(builtins.open), raising=False)
    else:
        monkeypatch.setattr(owner, attribute, make(getattr(owner, attribute)))
    code = run_build(*args, "--out", out)
    monkeypatch.undo()
    err = capfd.readouterr().err
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "re-run" in lines[0], err
    assert "Traceback" not in err
    assert not (out / MANIFEST).exists()  # never passes as complete
    with pytest.raises(ArtifactError, match="not a finished build"):
        open_gallery(index_dir=str(out), repo_id="unused/unused", revision=None, work_dir=tmp_path / "work")

    assert run_build(*args, "--out", out) == 0  # space freed: the same command finishes the build
    if where != "embedding-shard":
        assert json.loads((out / MANIFEST).read_text())["images_per_second"] == 0.0  # nothing embedded twice
    names = sorted(p.name for p in reference.iterdir() if p.is_file() and p.name != MANIFEST)
    assert names == sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _break_commits(hub, monkeypatch, mode: str) -> None:
    """The commit POST fails on the Hub side: a 500, or the connection drops before or after it is applied.
    (HubServer.fail_next only covers /resolve downloads, so the commit handler itself is wrapped.)"""
    from hub_server import _CutResponse, _HubError

    real = hub._commit

    async def failing(request, *args):
        if mode == "500":
            raise _HubError(500, "Internal Error")
        if mode == "dropped-before":
            await request.body()
            return _CutResponse(b"{}" * 64, 0, 200, {"Content-Type": "application/json"})
        response = await real(request, *args)  # "dropped-after": applied, but the answer never arrives
        return _CutResponse(response.body, 0, 200, {"Content-Type": "application/json"})

    monkeypatch.setattr(hub, "_commit", failing)


@pytest.mark.parametrize("mode", ["500", "dropped-before", "dropped-after", "tag-lost"])
def test_an_interrupted_push_keeps_a_complete_set_and_says_so(hub, monkeypatch, tmp_path, shapes_artifacts,
                                                             tiny_clip, shapes_folder, mode):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    old = _published(hub, shapes_artifacts)
    old_files, old_head = hub.files(REPO), hub.head(REPO)
    rebuilt = tmp_path / "rebuilt"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", rebuilt, "--limit", "5",
                     "--eval", "none") == 0
    if mode == "tag-lost":  # the commit lands, then the connection breaks while tagging it
        monkeypatch.setattr(api, "create_tag", lambda *a, **k: _raise(ConnectionResetError(104, "Connection reset")))
    else:
        _break_commits(hub, monkeypatch, mode)
    monkeypatch.setattr("builder.publish.new_tag", lambda: "build-29990101-000000")
    with pytest.raises(PublishError) as failed:
        push(rebuilt, Manifest.read(rebuilt), REPO, api=api)
    message = str(failed.value)
    assert message.startswith(f"--push {REPO}:") and "\n" not in message and "Traceback" not in message
    assert latest_tag(api, REPO) == old.tag  # the app keeps serving the previous build
    if mode in ("dropped-after", "tag-lost"):  # the commit landed whole, untagged; the message says so
        assert ("connection" in message and "re-run" in message.lower() if mode == "dropped-after" else
                "holds the complete build, but tagging it build-29990101-000000 failed" in message)
        files = hub.files(REPO)
        assert files[MANIFEST] == (rebuilt / MANIFEST).read_bytes()
        assert all(files[name] == (rebuilt / name).read_bytes() for name in Manifest.read(rebuilt).files)
    else:
        assert hub.head(REPO) == old_head and hub.files(REPO) == old_files
        assert "re-run" in message.lower() or "refused" in message


def test_a_build_whose_push_is_cut_off_exits_with_one_line(hub, monkeypatch, tmp_path, capfd, tiny_clip,
                                                          shapes_folder):
    _break_commits(hub, monkeypatch, "dropped-before")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    out = tmp_path / "out"
    code = run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "5", "--eval",
                     "none", "--push", "someone/cut-index")
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--push someone/cut-index" in errors[0] and "connection" in errors[0], err
    assert (out / MANIFEST).exists()  # the local build is complete; only publishing has to be re-run
    assert "build-" not in " ".join(t for t in hub.storage.repos[("dataset", "someone/cut-index")].tags)


# === 4. Security ===================================================================================================
LOADING_CODE = sorted([*(ROOT / "clipsearch").glob("*.py"), *(ROOT / "builder").glob("*.py"), ROOT / "app.py"])
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_no_pickle_anywhere_in_loading():
    problems = []
    for path in LOADING_CODE:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(str(n).split(".")[0] in UNSAFE_MODULES for n in names if n):
                    problems.append(f"{where}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle", "loads") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pd", "pandas", "pickle"):
                problems.append(f"{where}:{node.lineno} {node.value.id}.{node.attr}")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            for name, bad in (("allow_pickle", True), ("trust_remote_code", True), ("weights_only", False),
                              ("use_safetensors", False)):
                if name in keywords and isinstance(keywords[name], ast.Constant) and keywords[name].value is bad:
                    problems.append(f"{where}:{node.lineno} {func}({name}={bad})")
            if func == "torch.load" or func.endswith(".torch.load"):
                problems.append(f"{where}:{node.lineno} torch.load")
            if func in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
            if func.endswith("from_pretrained") and func.split(".")[0].startswith("AutoModel"):
                flag = keywords.get("use_safetensors")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{node.lineno} {func} without use_safetensors=True")
    assert not problems, problems


class _Trap:
    """Unpickling this touches a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_models_load_from_safetensors_only(tiny_clip, tmp_path):
    from clipsearch.encoder import Encoder, EncoderError

    marker = tmp_path / "unpickled"
    both = tmp_path / "with-a-planted-bin"
    shutil.copytree(tiny_clip, both)
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    Encoder.load(str(both), device="cpu")  # the safetensors weights; the .bin is never opened
    assert not marker.exists()

    bin_only = tmp_path / "bin-only"
    shutil.copytree(both, bin_only)
    for weights in bin_only.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(EncoderError) as refused:
        Encoder.load(str(bin_only), device="cpu")
    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith(f"--model {bin_only}") and "safetensors" in message, message


def test_a_pickled_embeddings_file_is_refused_even_with_a_matching_manifest(shapes_artifacts, tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "evil"
    shutil.copytree(shapes_artifacts, folder, ignore=shutil.ignore_patterns(".*"))
    np.save(folder / EMBEDDINGS, np.array([_Trap(marker)] * 3, dtype=object), allow_pickle=True)
    manifest = json.loads((folder / MANIFEST).read_text())  # the attacker controls the manifest too
    manifest["files"][EMBEDDINGS] = {"sha256": sha256_file(folder / EMBEDDINGS),
                                     "size": (folder / EMBEDDINGS).stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="could not be read"):
        open_gallery(index_dir=str(folder), repo_id="unused/unused", revision=None, work_dir=tmp_path / "work")
    assert not marker.exists()


def _traversal_targets(app_server, shapes_model) -> list[str]:
    service = app_server[1]
    artifacts = service.searcher.gallery.folder
    thumbs = service.searcher.gallery.thumbnails.cache_dir
    secret = [artifacts / MANIFEST, artifacts / EMBEDDINGS, artifacts / "index.faiss", Path(shapes_model) /
              "config.json", *Path(shapes_model).glob("*.safetensors"), ROOT / "app.py", Path("/etc/passwd"),
              Path("/proc/self/environ"), thumbs.parent.parent / "verified.json"]
    paths = []
    for target in secret:
        target = str(target)
        quoted = target.replace("/", "%2F")
        up = "../" * 12 + target.lstrip("/")
        paths += [f"/gradio_api/file={target}", f"/gradio_api/file={quoted}", f"/gradio_api/file={up}",
                  f"/gradio_api/file={up.replace('../', '%2e%2e/')}", f"/gradio_api/file={up.replace('/', '%2F')}",
                  f"/gradio_api/file={thumbs}/{up}", f"/gradio_api/file={thumbs}/{up.replace('../', '..%2F')}",
                  f"/gradio_api/file={thumbs}%2F..%2F..%2F..%2F{quoted}", f"/gradio_api/file=/{target}",
                  f"/gradio_api/file={quoted.replace('%', '%25')}", f"/file={target}", f"/gradio_api/file={up}%00.jpg",
                  f"/static/{up}", f"/assets/{up}", f"/gradio_api/upload/{up}", f"/gradio_api/{up}", f"/{up}"]
    return paths


def test_the_app_serves_its_thumbnails_and_nothing_else(app_server, shapes_model):
    url, service = app_server
    host, port = url.split("//", 1)[1].split(":")
    thumbnail = service.searcher.gallery.thumbnails.path(0)

    def get(path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", path)  # sent as written: no client-side normalisation of ../ or %2e
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = get(f"/gradio_api/file={thumbnail}")
    assert status == 200 and body == thumbnail.read_bytes()  # what the gallery shows is served ...
    secrets = {p.read_bytes()[:64] for p in [service.searcher.gallery.folder / n for n in (MANIFEST, EMBEDDINGS)]}
    secrets.add(Path("/etc/passwd").read_bytes()[:32])
    secrets.add((ROOT / "app.py").read_bytes()[:64])
    leaks = []
    for path in _traversal_targets(app_server, shapes_model):  # ... and no other file, however the path is spelt
        status, body = get(path)
        if status not in (400, 403, 404, 405) or any(secret and secret in body for secret in secrets):
            leaks.append((path, status, body[:80]))
    assert not leaks, leaks


def _files_under(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_tokens_never_reach_logs_or_artifacts(hub, monkeypatch, tmp_path, capfd, caplog, tiny_clip, shapes_folder,
                                              shapes_artifacts):
    import logging

    token = "hf_reliabilitySECRETtoken_" + os.urandom(6).hex()
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "6", "--eval",
                     "none", "--push", "someone/token-index") == 0
    printed = capfd.readouterr()
    assert token in hub.tokens_seen  # it was used ...
    assert token not in printed.out + printed.err + caplog.text  # ... and never shown
    for path in _files_under(out):
        assert token.encode() not in path.read_bytes(), path
    for name, data in hub.files("someone/token-index").items():
        assert token.encode() not in data, name

    _published(hub, shapes_artifacts)
    log = tmp_path / "app.log"
    process, url = _start_app(_app_env(hub, tmp_path, HF_TOKEN=token), log)
    try:
        assert url.startswith("http"), url
        with httpx.Client(base_url=url, timeout=30) as http:
            pages = [http.get(p).text for p in ("/", "/config", "/gradio_api/info", "/gradio_api/info?all_endpoints=1")]
        _, hits = Client(url, verbose=False).predict("a red circle", 2, api_name="/search_text")
        assert len(hits) == 2
    finally:
        _stop(process)
    assert token in hub.tokens_seen[-20:]
    assert token not in log.read_text() and not any(token in page for page in pages)
    for path in _files_under(tmp_path / "app-cache") + _files_under(tmp_path / "hf"):
        assert token.encode() not in path.read_bytes(), path

