"""The Map tab's atlas: the build's 2-D layout as compact bytes for the browser, its state, and the files it loads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.atlas import ATLAS, weighted_position
from ..core.gallery import LOCAL, PLACEHOLDER, Gallery

STATIC = Path(__file__).resolve().parent / "static"
SCRIPT = STATIC / "atlas.js"
SCRIPTS = ("atlas.js", "region.js")  # the page's own scripts in STATIC (region.js: the region drawn on the picture)
ROUTE = "/atlas/"  # every file the atlas loads is under this path, answered by AtlasFiles before Gradio sees it
IMMUTABLE = b"public, max-age=31536000, immutable"
LEGEND = 12  # the most common categories get their own colour; the rest share colour 0
PLACE_FROM = 10  # a search is placed at the weighted mean of (up to) this many of its results' positions
TEMPLATE = """<div class="atlas">
  <div class="atlas-bar">
    <button type="button" class="atlas-in" aria-label="Zoom in">+</button>
    <button type="button" class="atlas-out" aria-label="Zoom out">−</button>
    <button type="button" class="atlas-reset" aria-label="Show the whole map">Whole map</button>
    <span class="atlas-status" role="status"></span>
  </div>
  <canvas tabindex="0" aria-label="Map of the gallery: drag or use the arrow keys to move, wheel, pinch or plus and
    minus to zoom, click a picture or press Enter for its details"></canvas>
  <ul class="atlas-legend" aria-label="Colours: the image's rarest common category"></ul>
</div>"""
_THUMB = re.compile(r"([0-9a-f]{16})/(?:points\.bin|thumb/(\d+)\.jpg)")


class AtlasView:
    """One build's atlas as the browser gets it: positions as 16-bit fixed point and a colour per image (5 bytes
    per image, ~600 KB for COCO, fetched after the page is up), and the state drawn on top (results, the search)."""

    def __init__(self, gallery: Gallery):
        self.gallery = gallery
        self.xy = gallery.atlas_xy
        # A build's atlas never changes under its manifest, so its URLs may be cached for good.
        self.key = gallery.manifest.files[ATLAS].sha256[:16]

    @cached_property
    def legend(self) -> list[str]:
        counts = {name: int(self.gallery.mask([name]).sum()) for name in self.gallery.categories()}
        return sorted(counts, key=lambda name: (-counts[name], name))[:LEGEND]

    @cached_property
    def points(self) -> bytes:
        """x and y as uint16 (0..65535 over [0, 1]), then one colour byte per image: 1 + its rarest legend
        category, 0 for none."""
        fixed = np.round(np.clip(self.xy, 0, 1) * 65535).astype("<u2")
        colour = np.zeros(len(self.xy), np.uint8)
        for number, name in reversed(list(enumerate(self.legend, start=1))):  # the rarer category wins
            colour[self.gallery.mask([name]) & (colour == 0)] = number
        return fixed[:, 0].tobytes() + fixed[:, 1].tobytes() + colour.tobytes()

    def config(self) -> dict:
        return {"count": len(self.xy), "points": f"atlas/{self.key}/points.bin", "thumb": f"atlas/{self.key}/thumb/",
                "legend": ["other or none", *self.legend], "highlight": [], "query": None, "label": ""}

    def value(self, hits: list[dict] | None = None) -> str:
        """The HTML component's value: the atlas's files and what to mark, the latest results and the search placed
        among them (at the similarity-weighted mean of its best results' positions)."""
        state = self.config()
        found = [(row, hit["score"]) for hit in hits or [] if (row := self.gallery.row_of(hit["image_id"])) is not None]
        if found:
            rows, scores = [row for row, _ in found], np.asarray([score for _, score in found])
            nearest = np.argsort(-scores, kind="stable")[:PLACE_FROM]
            place = weighted_position(scores[nearest], self.xy[np.asarray(rows)[nearest]])
            state.update(highlight=rows, query=[round(float(v), 5) for v in place], label="your search")
        return json.dumps(state)


def atlas_view(gallery: Gallery) -> AtlasView | None:
    """The gallery's atlas, or None for a build made before the atlas."""
    return AtlasView(gallery) if gallery.atlas_xy is not None else None


class AtlasFiles:
    """ASGI middleware answering the atlas's own files: the page's scripts (the atlas's and the region drawing's),
    the positions and each image's thumbnail (read from its pack on first request). Plain Starlette-level routing,
    not a Gradio workaround: Gradio has no route for bytes computed by the app."""

    def __init__(self, app, gallery: Gallery):
        self.app = app
        self.gallery = gallery
        self.view = atlas_view(gallery)  # its bytes are made on the first request for them

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and (at := scope["path"].find(ROUTE)) >= 0:
            answer = await self._answer(scope["path"][at + len(ROUTE):])
            if answer is not None:
                status, kind, cache_control, body = answer
                headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                           (b"cache-control", cache_control), (b"x-content-type-options", b"nosniff")]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
                return
        await self.app(scope, receive, send)

    async def _answer(self, name: str):
        if name in SCRIPTS:  # the page asks with ?v=<its hash> (script_tag), so a new version is fetched at once
            return 200, b"text/javascript; charset=utf-8", IMMUTABLE, (STATIC / name).read_bytes()
        view, named = self.view, _THUMB.fullmatch(name)
        if view is None or not named or named.group(1) != view.key:
            return None
        if named.group(2) is None:
            points = await asyncio.to_thread(lambda: view.points)  # made once (~tens of ms at COCO size)
            return 200, b"application/octet-stream", IMMUTABLE, points
        row = int(named.group(2))
        if row >= len(self.gallery):
            return 404, b"text/plain", b"no-cache", b"no such image"
        store = self.gallery.thumbnails
        path = await asyncio.to_thread(store.path, row)  # a pack read and a small file written, off the event loop
        verified = path.name != PLACEHOLDER and store.state(store.pack_of(row)) == LOCAL
        return 200, b"image/jpeg", IMMUTABLE if verified else b"no-cache", path.read_bytes()


def script_version(name: str = "atlas.js") -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def script_tag(name: str) -> str:
    """A <script> loading one of SCRIPTS from ROUTE, its URL versioned by its content (so cacheable for good)."""
    return f'<script src="{ROUTE.strip("/")}/{name}?v={script_version(name)}"></script>'

