"""Pictures through the API: every usable kind is searched, unusable ones (junk, disguised files, decompression
bombs) get a sentence on every image endpoint, and big pictures are decoded within the pixel and memory limits."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from testkit.helpers import UNUSABLE, assert_sentence, call, encoded, kinds, rss_mb, search_data, upload
from testkit.models import draw_shape


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


