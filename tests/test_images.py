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


def _photo_like(seed: int, size=(1280, 960)) -> bytes:
    """A camera-sized JPEG with what photos have: smooth light, texture, hard edges and fine detail."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    light = np.stack([np.sin(x / rng.uniform(90, 400) + c) * 60 + np.cos(y / rng.uniform(90, 400)) * 50 + 128
                      for c in rng.uniform(0, 6, 3)], axis=-1)
    noise = rng.normal(0, 18, light.shape)
    picture = Image.fromarray(np.clip(light + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0] - 200), rng.integers(0, size[1] - 200)
        box = [x0, y0, x0 + rng.integers(40, 400), y0 + rng.integers(40, 400)]
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill, outline=(0, 0, 0), width=3)
    return _bytes(picture, "JPEG")


def test_draft_decoding_keeps_the_vectors_of_photo_like_pictures(tmp_path):
    """The builder and the app decode JPEGs at a reduced DCT scale (still >= the model's input): on photo-like
    pictures the default model family's vectors (SigLIP 2 fixed resolution at 256 px, its image processor) from
    draft and full decoding agree at cosine >= 0.99."""
    from clipsearch.core.encoder import Encoder
    from testkit.models import save_tiny_clip

    encoder = Encoder.load(str(save_tiny_clip(tmp_path / "siglip2", "siglip2-fixres", image_size=256)), None, "cpu")
    assert encoder.info.image_size == 256
    photos = [_photo_like(seed) for seed in range(6)]
    draft = [open_image(photo, draft_size=encoder.info.image_size) for photo in photos]
    full = [open_image(photo) for photo in photos]
    assert all(d.size[0] <= f.size[0] // 2 and min(d.size) >= 256 for d, f in zip(draft, full))  # 1/2 or 1/4 scale
    cosines = (encoder.encode_images(draft) * encoder.encode_images(full)).sum(axis=1)
    assert cosines.min() >= 0.99, cosines
    pixels = [encoder.preprocess([image])["pixel_values"].flatten().numpy() for image in draft + full]
    pixel_cosines = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(pixels[:6], pixels[6:])]
    assert min(pixel_cosines) >= 0.99, pixel_cosines
