"""Image decoding for builder and app: exotic formats decoded correctly, unusable ones refused with a sentence."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.core.images import ImageError, make_thumbnail, open_image


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _half_red_half_blue(width=80, height=40) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_exif_rotation_is_applied():
    image = _half_red_half_blue()  # red on the left, blue on the right, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    decoded = open_image(_bytes(image, "JPEG", exif=exif, quality=95))
    assert decoded.size == (40, 80) and decoded.info["original_size"] == (40, 80)
    pixels = np.asarray(decoded, float)
    assert pixels[5, 20, 0] > 200 and pixels[-5, 20, 2] > 200  # red now on top, blue at the bottom


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "LA", "RGBA", "I;16", "I", "F", "1"])
def test_colour_modes_become_rgb(mode):
    base = _half_red_half_blue()
    if mode in ("I;16", "I", "F"):
        grey = (np.linspace(0, 65535, 80)[None, :].repeat(40, 0)).astype(np.uint16)
        source = Image.fromarray(grey, "I;16") if mode == "I;16" else Image.fromarray(grey.astype(
            np.int32 if mode == "I" else np.float32))
        decoded = open_image(source)
        assert decoded.mode == "RGB"
        row = np.asarray(decoded)[0, :, 0].astype(int)
        assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row) >= 0)  # rescaled, not clipped to white
        return
    image = base.convert(mode)
    decoded = open_image(_bytes(image, "TIFF" if mode == "CMYK" else "PNG"))
    assert decoded.mode == "RGB" and decoded.size == (80, 40)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    decoded = open_image(_bytes(rgba, "PNG"))
    assert np.asarray(decoded)[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(open_image(_bytes(palette, "PNG", transparency=0)))[0, 0].tolist() == [255, 255, 255]


def test_animations_use_the_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP"):
        data = _bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
        pixel = np.asarray(open_image(data))[8, 8]
        assert pixel[0] > 200 and pixel[1] < 60, fmt


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"just some text pretending to be a JPEG\n" * 10, "not an image"),
    (_bytes(Image.new("RGB", (64, 64), "red"), "JPEG")[:200], "truncated"),
    (_bytes(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "truncated"),
])
def test_unusable_files_get_a_sentence(payload, message):
    with pytest.raises(ImageError, match=message) as error:
        open_image(payload)
    assert str(error.value).endswith(".")


def test_decompression_bombs_are_refused_before_decoding():
    bomb = _bytes(Image.new("L", (20000, 20000)), "PNG")  # 400 MP in a few hundred KB
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageError, match=r"\(400 MP\); the limit is 100 MP"):
        open_image(bomb)
    with pytest.raises(ImageError, match="the limit is 1 MB"):
        open_image(b"\xff" * (2 * 2**20), max_bytes=2**20)


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1), (3000, 2000)])
def test_tiny_huge_and_extreme_aspect_images_decode(size):
    image = open_image(_bytes(Image.new("RGB", size, "green"), "JPEG"), draft_size=224)
    assert image.info["original_size"] == size
    thumb = Image.open(io.BytesIO(make_thumbnail(image, 256)))
    assert max(thumb.size) <= 256 and min(thumb.size) >= 1


def test_jpeg_draft_decodes_big_photos_at_a_reduced_scale():
    image = open_image(_bytes(Image.new("RGB", (4000, 3000), "green"), "JPEG"), draft_size=224)
    assert image.size == (500, 375) and image.info["original_size"] == (4000, 3000)
