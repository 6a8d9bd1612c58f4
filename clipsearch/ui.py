"""The Gradio layer: tabs, results grid, details and named API endpoints; it only adapts hits to components."""

from __future__ import annotations

import html
import logging
import os
import threading
from collections import OrderedDict

import gradio as gr

from .images import ImageError
from .search import MAX_K, Hit, QueryError, check_k, clean_text
from .service import Service

log = logging.getLogger(__name__)

TITLE = "COCO CLIP visual search"
EXAMPLE_QUERIES = [
    "a dog catching a frisbee in a park",
    "two giraffes standing next to each other",
    "a plate of pasta with broccoli",
    "a man surfing a large wave",
    "a red double-decker bus on a city street",
    "a cat sleeping on a laptop keyboard",
]
# Requests handled at once per endpoint. Threads mostly wait on the shared encoder batchers, so this is how many
# queries can join one forward pass; the CPU itself only ever runs one encoder pass per modality at a time.
CONCURRENCY = 16
CSS = """
#results .caption-label {font-size: 0.8rem;}
#results .grid-wrap {min-height: 0; max-height: none;}  /* Gradio reserves 450px even for one row of results */
#details {min-height: 2rem;}
footer {display: none !important;}
@media (max-width: 640px) { #results .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } }
"""


def _gpu(fn):
    """On ZeroGPU hardware, run encoders under spaces.GPU; a no-op on CPU Spaces and local runs."""
    if os.environ.get("SPACES_ZERO_GPU"):
        import spaces  # the Hugging Face package, present on ZeroGPU Spaces only

        return spaces.GPU(fn)
    return fn


class DecodedImages:
    """Images decoded by the validator, handed to the batched search so each upload is decoded once."""

    def __init__(self, size: int = 64):
        self._items: OrderedDict[str, object] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def put(self, key: str, image) -> None:
        with self._lock:
            self._items[key] = image
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def pop(self, key: str):
        with self._lock:
            return self._items.pop(key, None)


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


def gallery_items(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(hit.thumbnail, f"{hit.score:.3f} · {hit.caption}") for hit in hits]


def hits_data(hits: list[Hit]) -> list[dict]:
    """The API's view of a hit: everything but the server-side thumbnail path."""
    return [{key: value for key, value in hit.to_dict().items() if key not in ("thumbnail", "row")} for hit in hits]


def details_markdown(hit: dict) -> str:
    captions = "\n".join(f"- {html.escape(c)}" for c in hit["captions"]) or "- (no captions)"
    categories = ", ".join(html.escape(c) for c in hit["categories"]) or "none listed"
    link = f" · [Open the original image]({hit['url']})" if hit.get("url") else ""
    split = f" · {html.escape(hit['split'])}" if hit.get("split") not in (None, "", ".") else ""
    return (
        f"### Image {hit['image_id']}{split}\n"
        f"Similarity **{hit['score']:.3f}** · {hit['width']}×{hit['height']} px{link}\n\n"
        f"**Captions**\n{captions}\n\n**COCO categories:** {categories}"
    )


def about_markdown(service: Service) -> str:
    manifest, source = service.searcher.gallery.manifest, service.source
    model = manifest.model
    lines = [
        f"## About\n{TITLE} finds images from the COCO 2017 gallery that match a description or look like a picture "
        "you give it. Both are embedded with a CLIP model into the same vector space; the closest gallery images "
        "are found with FAISS. Everything runs on this Space's CPU.",
        "### This build",
        f"- **Model:** `{model['model_id']}`" + (f" @ `{model['revision'][:12]}`" if model.get("revision") else ""),
        f"- **Images:** {manifest.count:,} (dimension {manifest.dim}, index {manifest.index.factory})",
        f"- **Built:** {manifest.created_at} by builder `{manifest.builder_version}`",
    ]
    if source.repo_id:
        lines.append(f"- **Artifacts:** `{source.repo_id}` at `{source.ref}` (commit `{(source.revision or '')[:12]}`)")
    else:
        lines.append(f"- **Artifacts:** local folder `{source.folder}`")
    if source.notice:
        lines.append(f"- ⚠️ {source.notice}")
    for name, result in manifest.evaluation.items():
        row = " | ".join(f"{result['text_to_image'][k]:.1f}" for k in ("R@1", "R@5", "R@10"))
        row2 = " | ".join(f"{result['image_to_text'][k]:.1f}" for k in ("R@1", "R@5", "R@10"))
        lines.append(f"\n**Recall on {name}** ({result['images']:,} images, {result['captions']:,} captions)\n\n"
                     f"| direction | R@1 | R@5 | R@10 |\n|---|---|---|---|\n| text → image | {row} |\n"
                     f"| image → text | {row2} |")
    lines.append(
        "\n### Use it from Python\n```python\nfrom gradio_client import Client, handle_file\n"
        "client = Client(\"<this Space's id or URL>\")\n"
        "gallery, hits = client.predict(\"a dog on a beach\", 5, api_name=\"/search_text\")\n"
        "gallery, hits = client.predict(handle_file(\"photo.jpg\"), 5, api_name=\"/search_image\")\n"
        "gallery, hits = client.predict(hits[0][\"image_id\"], 5, api_name=\"/search_similar\")\n"
        "print(hits[0][\"image_id\"], hits[0][\"score\"], hits[0][\"caption\"])\n```"
    )
    return "\n".join(lines)


def build_ui(service: Service) -> gr.Blocks:
    searcher = service.searcher
    decoded = DecodedImages()

    # --- validators: cheap checks before a request joins the queue; a failure is a sentence for the visitor ---
    def validate_text(text, k):
        return [_check(lambda: clean_text(text)), _check(lambda: check_k(k))]

    def validate_image(image, k):
        def usable():
            if not image:
                raise QueryError("Please upload, paste or take a picture first.")
            decoded.put(image, searcher.load_image(image))
        return [_check(usable), _check(lambda: check_k(k))]

    def validate_similar(image_id, k):
        def known():
            if image_id is None or searcher.gallery.row_of(int(image_id)) is None:
                raise QueryError("Pick a result first, then ask for more like it.")
        return [_check(known), _check(lambda: check_k(k))]

    # --- searches (concurrent requests share encoder passes inside the Searcher's micro-batchers) ---
    @_gpu
    def search_text(text: str, k: int):
        return _outputs(lambda: searcher.search_text(text, k))

    @_gpu
    def search_image(image: str, k: int):
        return _outputs(lambda: searcher.search_image(decoded.pop(image) or image, k))

    def search_similar(image_id, k):
        return _outputs(lambda: searcher.search_similar(int(image_id), k))

    def show_details(hits: list[dict], event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return gr.update(), None, gr.update(visible=False), gr.update()
        hit = hits[event.index]
        return details_markdown(hit), hit["image_id"], gr.update(visible=True), len(hits)

    manifest = searcher.gallery.manifest
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nSearch {manifest.count:,} COCO images by description or by example picture.")
        if service.source.notice:
            gr.Markdown(f"⚠️ {service.source.notice}")
        with gr.Tabs():
            with gr.Tab("Text → Image") as text_tab:
                with gr.Row(equal_height=True):
                    query = gr.Textbox(label="Describe the image", placeholder=EXAMPLE_QUERIES[0], scale=5,
                                       max_length=1000, autofocus=True, submit_btn=False, min_width=240)
                    text_button = gr.Button("Search", variant="primary", scale=1, min_width=100)
                text_k = gr.Slider(1, MAX_K, value=5, step=1, label="Number of results")
                gr.Examples(EXAMPLE_QUERIES, inputs=query, label="Try")
            with gr.Tab("Image → Image") as image_tab:
                with gr.Row():
                    picture = QueryImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                         label="Your image", height=260)
                    with gr.Column():
                        image_k = gr.Slider(1, MAX_K, value=5, step=1, label="Number of results")
                        image_button = gr.Button("Find similar images", variant="primary")
                gr.Examples(_example_images(searcher), inputs=picture, label="Or start from a gallery image")
            with gr.Tab("About") as about_tab:
                gr.Markdown(about_markdown(service))
        with gr.Column() as results_area:
            results = gr.Gallery(label="Results", columns=5, height="auto", object_fit="cover", allow_preview=False,
                                 elem_id="results", show_label=True, interactive=False)
            hits = gr.JSON(visible=False, label="hits")
            with gr.Group():
                details = gr.Markdown("Select a result to see its captions and categories.", elem_id="details")
                with gr.Row():
                    more = gr.Button("More like this", visible=False, variant="secondary", size="sm")
                selected = gr.Number(visible=False, precision=0, label="image id")
                similar_k = gr.Number(visible=False, value=5, precision=0, label="k")

        text_event = dict(fn=search_text, inputs=[query, text_k], outputs=[results, hits], validator=validate_text,
                          concurrency_limit=CONCURRENCY, concurrency_id="text")
        text_button.click(api_name="search_text", **text_event)
        query.submit(api_visibility="private", **text_event)
        image_button.click(fn=search_image, inputs=[picture, image_k], outputs=[results, hits],
                           validator=validate_image, api_name="search_image", concurrency_limit=CONCURRENCY)
        more.click(fn=search_similar, inputs=[selected, similar_k], outputs=[results, hits],
                   validator=validate_similar, api_name="search_similar", concurrency_limit=CONCURRENCY)
        # Results belong to the search tabs: the About tab hides them.
        about_tab.select(lambda: gr.update(visible=False), None, results_area, api_visibility="private", queue=False)
        for tab in (text_tab, image_tab):
            tab.select(lambda: gr.update(visible=True), None, results_area, api_visibility="private", queue=False)
        results.select(show_details, inputs=hits, outputs=[details, selected, more, similar_k],
                       api_visibility="private", queue=False)
    return demo


def _check(action) -> object:
    try:
        action()
        return gr.validate(True, "")
    except (QueryError, ImageError) as error:
        return gr.validate(False, str(error))


def _outputs(action):
    try:
        found = action()
    except (QueryError, ImageError) as error:  # validated already; a race (e.g. a file gone) still gets a sentence
        raise gr.Error(str(error)) from None
    return gallery_items(found), hits_data(found)


def _example_images(searcher, count: int = 6) -> list[str]:
    total = len(searcher.gallery)
    rows = sorted({int(i * total / count) for i in range(min(count, total))})
    return [str(searcher.gallery.thumbnails.path(row)) for row in rows]


def launch(demo: gr.Blocks, service: Service, **kwargs):
    """Queue sized for a 2-vCPU Space: requests wait their turn (and are batched) instead of thrashing the CPU."""
    demo.queue(default_concurrency_limit=1, max_size=128)
    return demo.launch(
        theme=gr.themes.Soft(), css=CSS, allowed_paths=[str(service.searcher.gallery.thumbnails.cache_dir)],
        max_file_size="25mb", show_error=True, **kwargs,
    )
