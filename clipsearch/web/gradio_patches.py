"""Every workaround of Gradio's internals, in one place, each written for (and checked against) gradio 6.31."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re

import gradio as gr
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from gradio import state_holder
from gradio.blocks import BlocksConfig
from gradio.components.base import Component
from starlette.exceptions import HTTPException

from ..core.gallery import LOCAL, PLACEHOLDER, ThumbnailStore

log = logging.getLogger(__name__)

WRITTEN_FOR = "6.31"  # the gradio major.minor whose internals every patch below was read from
PATCHES = (
    "lazy_session_configs (SessionState.__init__, BlocksConfig.config_for_block)",
    "shared_api_schemas (Component.api_info, its per-instance _api_info_cache)",
    "QueryImage/QueryNumber/QuerySlider (Component.preprocess, get_block_name)",
    "ThumbnailFiles (the file route /gradio_api/file=)",
    "busy_handler (the queue-full HTTPException's 'Queue is full' detail)",
    "SESSION_CAPACITY (Blocks.launch's state_session_capacity)",
    "GRADIO_ANALYTICS_CACHE_FREQUENCY",
    "ACCESSIBLE_MARKUP (Gallery's thumbnails, Dataset's example buttons, Empty's placeholder)",
    "PICTURE_SHOWN (Image's `.image-frame img`, its object-fit, and how a tap maps to the picture's pixels)",
    "EarlyPictures (the upload route /gradio_api/upload and its JSON list of stored paths)",
)


def check_version() -> bool:
    """Warn once, without stopping the Space, when the installed gradio is not the one the patches were written for."""
    installed = gr.__version__
    if ".".join(installed.split(".")[:2]) == WRITTEN_FOR:
        return True
    log.warning("clipsearch.web.gradio_patches was written for gradio %s but gradio %s is installed; re-check: %s",
                WRITTEN_FOR, installed, "; ".join(PATCHES))
    return False


check_version()

# Gradio recomputes a usage summary with pandas over its last 10,000 events after every event (~3 ms a search,
# growing with traffic); once per 1,000 events is plenty for the API page's statistics. Read when a Blocks is made.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")

# Gradio keeps per-session state (a copy of every component's config, ~135 KB here) for its newest N sessions,
# and every raw-HTTP API call is a new session: its default of 10,000 held ~1.3 GB. 500 keeps it near 70 MB;
# a visitor whose session was dropped only loses "More results" paging (a sentence asks to search again).
SESSION_CAPACITY = 500


def session_capacity() -> dict:
    """Blocks.launch's keyword for the session cap, or none (with a warning) where launch no longer takes it."""
    if "state_session_capacity" not in inspect.signature(gr.Blocks.launch).parameters:
        log.warning("gradio %s has no state_session_capacity: the session cap is skipped", gr.__version__)
        return {}
    return {"state_session_capacity": SESSION_CAPACITY}


class _LazyConfigValues(dict):
    """A Gradio session's per-component configs, each computed when first used instead of all up front.

    Gradio 6 builds a new session for every raw-HTTP API call (twice with a validator) and, at creation, computes
    the config of every component on the page (~4 ms and ~135 KB with this UI) for deep links, which API calls never
    ask for. Reading any entry computes it exactly as Gradio would; listing them computes the rest first."""

    def __init__(self, blocks_config, live_ids):
        super().__init__()
        self._config = blocks_config
        self._pending = {key: None for key in blocks_config.blocks if key in live_ids}  # Gradio's order

    def _fill(self, key) -> None:
        if self._pending.pop(key, 0) is None:
            dict.__setitem__(self, key, self._config.config_for_block(key, [], self._config.blocks[key]))

    def _fill_all(self) -> None:
        for key in list(self._pending):
            self._fill(key)

    def __getitem__(self, key):
        self._fill(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._fill(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._pending or super().__contains__(key)

    def __setitem__(self, key, value) -> None:
        self._pending.pop(key, None)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        if self._pending.pop(key, 0) is None:
            return
        super().__delitem__(key)

    def __iter__(self):
        self._fill_all()
        return super().__iter__()

    def __len__(self) -> int:
        return len(self._pending) + super().__len__()

    def items(self):
        self._fill_all()
        return super().items()

    def keys(self):
        self._fill_all()
        return super().keys()

    def values(self):
        self._fill_all()
        return super().values()


class _NoComponents:
    """The Blocks as SessionState's constructor sees it, minus the components it would configure eagerly."""

    def __init__(self, blocks):
        self._blocks = blocks
        self.blocks: dict = {}

    def __getattr__(self, name):
        return getattr(self._blocks, name)


def lazy_session_configs() -> None:
    """Install _LazyConfigValues in Gradio's SessionState (once per process); skipped, with a warning, where
    SessionState or its config no longer look as this was written against."""
    original = state_holder.SessionState.__init__
    if getattr(original, "lazy_configs", False):
        return
    if list(inspect.signature(original).parameters) != ["self", "blocks"] or not hasattr(BlocksConfig,
                                                                                          "config_for_block"):
        log.warning("gradio %s: SessionState or BlocksConfig changed; per-session configs stay eager", gr.__version__)
        return

    def __init__(self, blocks):
        original(self, _NoComponents(blocks))
        self.config_values = _LazyConfigValues(self.blocks_config, blocks.blocks)

    __init__.lazy_configs = True
    state_holder.SessionState.__init__ = __init__


def shared_api_schemas() -> None:
    """Component.api_info's JSON schema computed once per data model for the process, not once per search.

    Gradio caches it per component instance, but each gr.update in an answer is a new instance whose config
    (SessionState._update_config) asks for it again: a pydantic model_json_schema, 2-4 ms of a search's postprocess
    on 2 vCPU (py-spy). The schema depends on the data model alone (File's differs with file_count, so the model
    is the key); components that override api_info are untouched."""
    original = Component.api_info
    if getattr(original, "shared", False):
        return
    schemas: dict[object, dict] = {}

    def api_info(self):
        model = self.data_model
        if model is None:
            return original(self)
        if model not in schemas:
            schemas[model] = original(self)
        return schemas[model]

    api_info.shared, api_info.original = True, original
    Component.api_info = api_info


class QueryImage(gr.Image):
    """gr.Image that hands even unreadable uploads to our validator, which says what is wrong with them
    (gr.Image's own preprocessing opens the file first and turns a bad one into a bare HTTP 400)."""

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - any failure here is reported by validate_image with a sentence
            return str(payload.path) if payload is not None and payload.path else None

    def get_block_name(self) -> str:
        return "image"  # rendered by the standard image component


class QueryNumber(gr.Number):
    """gr.Number that hands any value to our validators (see QuerySlider)."""

    def preprocess(self, payload):
        return payload

    def get_block_name(self) -> str:
        return "number"


class QuerySlider(gr.Slider):
    """gr.Slider for k that hands any value to our validators, which answer with the allowed range in a sentence
    (gr.Slider's own range check would answer an API caller with a bare HTTP 400)."""

    def preprocess(self, payload):
        return payload

    def get_block_name(self) -> str:
        return "slider"



# --- accessibility: Gradio's markup, named and de-duplicated in the page (docs/decisions/0032) ---
# Gradio 6.31 has no parameter for any of these, so a script run at page load (launch's `js`) corrects the markup
# as Svelte renders it, once per animation frame at most, and only where it is still wrong:
# - a results thumbnail's <img> has the caption as alt text while the same caption is printed under it (axe:
#   image-redundant-alt: a screen reader says it twice), and its button is named only "Thumbnail 1 of 5". The
#   picture becomes decorative (alt="") and the button is named by what it shows: "Result 1 of 5: <caption>";
# - the image tab's example pictures are buttons holding an image with empty alt: no name at all (axe:
#   button-name, critical). They are named "Example picture 1 of 6";
# - an empty component's placeholder (the results before a search) is a <div> with aria-label="Empty value" but no
#   role, where ARIA forbids a label (axe: aria-prohibited-attr); it holds an icon, so it gets role="img".
ACCESSIBLE_MARKUP = """() => {
  const set = (element, name, value) => {
    if (element.getAttribute(name) !== value) element.setAttribute(name, value);
  };
  const fix = () => {
    document.querySelectorAll('#results .thumbnail-item').forEach((button, i, all) => {
      const caption = button.querySelector('.caption-label');
      const image = button.querySelector('img');
      if (!caption || !image) return;
      set(image, 'alt', '');
      set(button, 'aria-label', `Result ${i + 1} of ${all.length}: ${caption.textContent.trim()}`);
    });
    document.querySelectorAll('.gallery').forEach((examples) => {
      const pictures = [...examples.querySelectorAll(':scope > button.gallery-item')]
        .filter((button) => !button.textContent.trim() && button.querySelector('img'));
      pictures.forEach((button, i) => set(button, 'aria-label', `Example picture ${i + 1} of ${pictures.length}`));
    });
    document.querySelectorAll('div.empty[aria-label]:not([role])').forEach((empty) => set(empty, 'role', 'img'));
  };
  let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fix(); });
  }).observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ['alt', 'aria-label']});
  fix();
}"""


# --- the region drawn on the picture (static/region.js, docs/decisions/0037) ---
# Gradio 6.31's Image has no way to draw over its picture nor says where the picture lies on screen. It shows the
# picture as an <img> inside `div.image-frame` (its upload view; the same in ImagePreview), sized 100% x 100% of the
# frame with `object-fit: scale-down`: centred, scaled down to fit, never up. A tap's `select` event maps the click
# to the picture's pixels by that same rule (get_coordinates_of_clicked_image: scale = min(width / natural width,
# height / natural height, 1), centred). region.js finds the picture with this selector inside our own elem_id and
# reads the fit from the <img>'s computed style, so the drawing lands where Gradio says a tap lands.
PICTURE_SHOWN = ".image-frame img"


# --- thumbnails: Gradio's file route, answered here with caching headers ---
FILE_ROUTE = "/gradio_api/file="  # gradio.routes (6.31): @router.get("/file={path_or_url:path}") under API_PREFIX
IMMUTABLE = "public, max-age=31536000, immutable"
_THUMBNAIL_NAME = re.compile(rf"(\d+)\.jpg|{re.escape(PLACEHOLDER)}")


class ThumbnailFiles:
    """ASGI middleware that answers Gradio's file route for the gallery's thumbnails itself, cacheable for good.

    Written for gradio 6.31, where every result's thumbnail is a GET /gradio_api/file=<absolute path> that Gradio
    answers generically: it resolves and checks the path against its allowed and blocked lists, stats the file,
    streams it from a worker thread and sends no Cache-Control, so a browser asks again for thumbnails it already
    has. These URLs are content-addressed: the folder is named by the hash of the build's manifest (which pins every
    thumbnail pack's sha256; see clipsearch.serve.download) and the file by its row, so the bytes behind a URL never
    change and may be cached for a year, immutable. Only thumbnails from a verified pack are marked so; one read by
    range request from a pack still downloading (a cold start) is served `no-cache` until its pack is checked. Exactly
    the names ThumbnailStore writes in its own folder are answered here; every other path goes to Gradio. (Gradio's
    login check is not applied to these files: this app launches without auth; thumbnails are public anyway.)"""

    def __init__(self, app, store: ThumbnailStore):
        self.app = app
        self.store = store
        folder = store.cache_dir
        self.folders = {str(folder), os.path.abspath(folder), str(folder.resolve())}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            at = path.find(FILE_ROUTE)
            if at >= 0 and await self._answer(path[at + len(FILE_ROUTE):], scope, send):
                return
        await self.app(scope, receive, send)

    async def _answer(self, target: str, scope, send) -> bool:
        folder, _, name = target.rpartition("/")
        named = _THUMBNAIL_NAME.fullmatch(name)
        if not named or folder not in self.folders:
            return False
        try:
            with open(os.path.join(folder, name), "rb") as handle:  # ~10 KB from the page cache: no thread hop
                body = handle.read()
        except OSError:
            return False  # not materialised (or removed): Gradio answers as it would
        row = named.group(1)
        verified = row is None or self.store.state(self.store.pack_of(int(row))) == LOCAL
        etag = f'"{os.path.basename(folder)}-{name}"'.encode()
        headers = [(b"cache-control", IMMUTABLE.encode() if verified else b"no-cache"), (b"etag", etag),
                   (b"x-content-type-options", b"nosniff")]
        request_headers = dict(scope.get("headers") or [])
        if request_headers.get(b"if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return True
        headers += [(b"content-type", b"image/jpeg"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        return True


UPLOAD_ROUTE = "/gradio_api/upload"  # gradio.routes (6.31): @router.post("/upload") under API_PREFIX


class EarlyPictures:
    """ASGI middleware that hands every file stored by Gradio's upload route to `prepare` (core.early), so a picture
    is embedded from the moment it is stored rather than when its search event arrives.

    Written for gradio 6.31, where a picture chosen in the browser is first POSTed to /gradio_api/upload (the answer
    is a JSON list of the stored files' paths; a background task of that request moves them into place), and only
    after the answer, the preview and the queue join does the search event reach the app (~40 ms on loopback, a
    round trip more per step for a distant visitor; docs/decisions/0042). Gradio then passes the same path to the
    event (gr.Image with type="filepath" and no image_mode returns it as it is), so the search finds the vector
    ready or under way.
    `prepare` is called once the request (background task included) is over; it only starts work in the
    background. Anything but a 200 answer holding a list of strings is left alone."""

    def __init__(self, app, prepare):
        self.app = app
        self.prepare = prepare

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        answer = {"status": 0, "body": []}

        async def watch(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body" and answer["status"] == 200:
                answer["body"].append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, watch)
        if answer["status"] != 200:
            return
        try:
            paths = json.loads(b"".join(answer["body"]))
        except ValueError:
            return
        for path in paths if isinstance(paths, list) else []:
            if isinstance(path, str):
                self.prepare(path)


def busy_handler(queue_size: int):
    """An exception handler that answers Gradio's full queue (HTTP 503) with Retry-After and a sentence saying the
    search is busy (gradio_client raises QueueError, the browser says "busy, try again"); everything else as FastAPI
    would. Matched on Gradio's detail text: where that changes, callers get Gradio's own answer."""

    async def busy(request, error: HTTPException):
        if error.status_code == 503 and str(error.detail).startswith("Queue is full"):  # Gradio's queue, full
            return JSONResponse({"detail": f"The search is busy right now ({queue_size} searches are waiting); "
                                           "please try again in a few seconds."},
                                status_code=503, headers={"Retry-After": "5"})
        return await http_exception_handler(request, error)

    return busy
