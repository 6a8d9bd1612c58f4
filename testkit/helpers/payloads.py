"""Crafted bytes: images that are broken, disguised or too big to decode, and a pickle that betrays being unpickled."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """`image` saved as `fmt` (PNG, JPEG, ...), in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
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


class Trap:
    """Unpickling this touches a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)
