"""Decode untrusted image bytes into RGB PIL images: size limits, EXIF orientation, first frame, odd colour modes."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

# A decompression bomb is refused by *our* check before any pixel is decoded; PIL's own guard only warns
# below 2x its limit, so we turn it off and enforce one clear rule ourselves.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger than any camera photo, far smaller than a bomb
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
# A decode holds every pixel at once (3 bytes each), whatever the file size: at most two big ones at a time per
# process, so a burst of big uploads (validators decode outside the queue's limits) waits instead of exhausting memory.
BIG_DECODE_PIXELS = 16_000_000
_big_decodes = threading.BoundedSemaphore(2)
# 64 MB pixel blocks are mmapped and go back to the system when freed; PIL's 16 MB default stayed in malloc arenas
# (docs/decisions/0020-bounded-big-decodes.md).
Image.core.set_block_size(max(Image.core.get_block_size(), 64 * 2**20))


def open_image(
    source: str | Path | bytes | BinaryIO | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    draft_size: int | None = None,
) -> Image.Image:
    """Open, check and fully decode an image into an upright RGB PIL image, or raise ImageError.

    draft_size lets JPEG decoding skip straight to the smallest DCT scale whose sides are both >= draft_size
    (up to 8x less work for large photos), and shrinks other huge pictures right after decoding (see _reduced);
    callers pass the smallest side they will need.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _open_lazily(source, max_bytes)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageError(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
            f"the limit is {max_pixels / 1e6:.0f} MP. Please use a smaller image."
        )
    owned = not isinstance(source, Image.Image)
    if draft_size and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    big = image.size[0] * image.size[1] > BIG_DECODE_PIXELS
    with _big_decodes if big else contextlib.nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL warns about odd EXIF/ICC chunks it can still decode
                image.seek(0)  # animations: the first frame is the picture people expect
                image.load()
                drafted = image.size
                if owned:  # upright, in place: no second full-size copy of an image we opened ourselves
                    ImageOps.exif_transpose(image, in_place=True)
                else:  # the caller's image stays as it is
                    image = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise ImageError(f"The image file is damaged or truncated and could not be decoded ({_short(error)}).") \
                from None
        rotated = image.size != drafted
        rgb = to_rgb(image)
        if draft_size:
            rgb = _reduced(rgb, draft_size)
    # The size of the upright original, before draft scaling: what the metadata reports as width x height.
    rgb.info["original_size"] = (height, width) if rotated else (width, height)
    return rgb


def _reduced(image: Image.Image, draft_size: int) -> Image.Image:
    """Shrink a huge decoded picture by a whole factor (box filter) while both sides stay >= 2 x draft_size, so it
    does not stay huge in memory (a 100-MP PNG is 300 MB of RGB; a query needs 224 px). JPEG's draft mode already
    decodes at a reduced scale; this does the same after decoding for every other format."""
    factor = min(image.size) // (2 * draft_size)
    if factor < 2:
        return image
    reduced = image.reduce(factor)
    reduced.info = dict(image.info)
    return reduced


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16/32-bit and float rescaled, CMYK/palette converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map 16-bit, 32-bit or float grey values into 0..255 without clipping everything to white."""
    pixels = pixels.astype(np.float64)
    high = float(pixels.max()) if pixels.size else 0.0
    if high <= 255:
        scale = 1.0
    elif high <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    return np.clip(pixels * scale, 0, 255).astype(np.uint8)


def _open_lazily(source: str | Path | bytes | BinaryIO, max_bytes: int | None) -> Image.Image:
    """Read the header only; refuse empty, oversized and non-image input with a sentence."""
    try:
        if isinstance(source, (str, Path)):
            path = Path(source)
            size = path.stat().st_size
            if size == 0:
                raise ImageError("The file is empty (0 bytes).")
            if max_bytes is not None and size > max_bytes:
                raise ImageError(_too_big(size, max_bytes))
            return Image.open(path)
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("The file is empty (0 bytes).")
            if max_bytes is not None and len(source) > max_bytes:
                raise ImageError(_too_big(len(source), max_bytes))
            return Image.open(io.BytesIO(source))
        return Image.open(source)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"The file {source} does not exist.") from None
    except UnidentifiedImageError:
        raise ImageError("The file is not an image in a format that can be read (JPEG, PNG, WebP, GIF, BMP, TIFF).") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ImageError(f"The image file is damaged or truncated and could not be read ({_short(error)}).") \
            from None


def _too_big(size: int, max_bytes: int) -> str:
    return f"The file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. Please use a smaller image."


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def make_thumbnail(image: Image.Image, max_side: int = 256, quality: int = 85) -> bytes:
    """Encode an RGB image as a JPEG whose longer side is at most max_side (never upscaled)."""
    thumb = image.copy() if max(image.size) <= max_side else _resized(image, max_side)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def _resized(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
