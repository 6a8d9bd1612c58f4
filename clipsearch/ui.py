"""The Gradio layer: tabs, results grid, details and named API endpoints; it only adapts hits to components."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import gradio as gr
import numpy as np

from .gradio_patches import (
    QueryImage,
    QueryNumber,
    QuerySlider,
    ThumbnailFiles,
    busy_handler,
    lazy_session_configs,
    session_capacity,
)
from .images import ImageError
from .query import Filters, Query, compose, with_feedback
from .query import search as run_search
from .search import MAX_K, Hit, QueryError, check_k, clean_text
from .service import Service
from .views import (
    HIGHLIGHT,
    TITLE,
    EmbeddingMap,
    about_markdown,
    details_markdown,
    feedback_choices,
    gallery_items,
    hits_data,
)

log = logging.getLogger(__name__)

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


def build_ui(service: Service) -> gr.Blocks:
    lazy_session_configs()
    # Thumbnails never change under a given cache folder (it is named by the manifest's hash), so Gradio may serve
    # them where they are instead of copying each result (and each example) into its cache: ~4 ms less per search,
    # and only uploads ever land in the cache, which delete_cache below empties of hour-old files.
    gr.set_static_paths([str(service.searcher.gallery.thumbnails.cache_dir)])
    searcher = service.searcher
    gallery = searcher.gallery
    decoded = DecodedImages()

    # --- validators for the named API endpoints: a failure is a sentence for the caller ---
    def validate_text(text, k):
        return [_check(lambda: (searcher.require_text(), clean_text(text))), _check(lambda: check_k(k))]

    def validate_image(image, k):
        def usable():
            if not image:
                raise QueryError("Please upload, paste or take a picture first.")
            decoded.put(image, searcher.load_image(image))
        return [_check(usable), _check(lambda: check_k(k))]

    def validate_similar(image_id, k):
        def known():
            try:
                row = gallery.row_of(int(image_id)) if image_id is not None else None
            except (TypeError, ValueError):
                row = None
            if row is None:
                raise QueryError("Pick a result first, then ask for more like it.")
        return [_check(known), _check(lambda: check_k(k))]

    # --- named API endpoints (the contract; concurrent calls share encoder passes in the micro-batchers) ---
    def search_text(text: str, k: int):
        """Find the COCO images that best match a description.

        Args:
            text: what the image shows, in plain words, e.g. "a dog catching a frisbee".
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: searcher.search_text(text, k))

    def search_image(image: str, k: int):
        """Find the COCO images that look most like a given picture.

        Args:
            image: the example picture.
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: searcher.search_image(decoded.pop(image) or image, k))

    def search_similar(image_id: int, k: int):
        """More like this: the images most similar to one already in the gallery, by its COCO image id.

        Args:
            image_id: the COCO image id of a result (the image_id field of a hit).
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: searcher.search_similar(int(image_id), k))

    def search(text: str, images: list[str] | None, image_weight: float, negative: str, negative_weight: float,
               categories: list[str] | None, match_all: bool, splits: list[str] | None, collapse: bool,
               diversity: float, min_score: float, more_like: list[int] | None, less_like: list[int] | None, k: int,
               page: int):
        """Composed search over the COCO images, with filters and paging.

        Args:
            text: a description (optional when images are given).
            images: example pictures, averaged (optional when text is given).
            image_weight: 0 to 1, the share of the pictures when text is given too.
            negative: a description of what the results should not look like (optional).
            negative_weight: 0 to 1, how strongly to move away from the negative description.
            categories: COCO category names such as "dog"; only images with any of them (all, with match_all).
            match_all: require every listed category instead of any.
            splits: only these splits, e.g. ["val2017"]; empty for all.
            collapse: hide near-duplicate shots.
            diversity: 0 to 1; above 0 re-ranks for varied results (maximal marginal relevance).
            min_score: drop results less similar than this cosine (0 = keep all).
            more_like: image ids of results to move toward (relevance feedback, no re-encoding).
            less_like: image ids of results to move away from.
            k: results per page, 1 to 50.
            page: 0 for the first page, 1 for the next k results, and so on.
        """
        query = Query(text=text, images=list(images or []), image_weight=image_weight, negative=negative,
                      negative_weight=negative_weight)
        shape = {"collapse": collapse, "diversity": diversity, "min_score": min_score}
        return _outputs(lambda: _run(query, categories, match_all, splits, shape, k, page, more_like, less_like)[0])

    def _run(query: Query, categories, match_all, splits, shape: dict, k, page, more_like=None, less_like=None):
        k = check_k(k)
        vector, text = compose(searcher, query)
        if more_like or less_like:
            vector = with_feedback(searcher, vector, more_like, less_like)
        filters = Filters(categories=list(categories or []), match_all=bool(match_all), splits=list(splits or []))
        state = {"vector": vector.tolist(), "text": text, "filters": vars(filters), "k": int(k),
                 "page": int(page or 0), "collapse": bool(shape.get("collapse")),
                 "diversity": float(shape.get("diversity") or 0.0), "min_score": float(shape.get("min_score") or 0)}
        return _from_state(state), state

    def _from_state(state: dict) -> list[Hit]:
        return run_search(searcher, np.asarray(state["vector"], np.float32), state["k"], page=state["page"],
                          filters=Filters(**state["filters"]), collapse=state["collapse"], query_text=state["text"],
                          diversity=state["diversity"], min_score=state["min_score"] or None)

    # --- the visible UI: the same searches with the refine options, plus paging from the stored query vector ---
    def ui_search(text, picture, extra_text, extras, image_weight, negative, negative_weight, categories, match,
                  splits, collapse, diversity, min_score, k, feedback_is_open, from_image: bool):
        images = ([picture] if from_image and picture else []) + [f for f in (extras or [])]
        if from_image and not picture:
            raise gr.Error("Please upload, paste or take a picture first.")
        query = Query(text=extra_text if from_image else text, images=images, image_weight=image_weight,
                      negative=negative, negative_weight=negative_weight)
        try:
            shape = {"collapse": collapse, "diversity": diversity, "min_score": min_score}
            hits, state = _run(query, categories, match == "all", splits, shape, k, 0)
        except (QueryError, ImageError) as error:
            raise gr.Error(str(error)) from None
        return _page_outputs(hits, state, feedback_is_open)

    def ui_next_page(state, feedback_is_open):
        if not state:
            raise gr.Error("Search first, then ask for more results.")
        state = {**state, "page": state["page"] + 1}
        try:
            hits = _from_state(state)
        except QueryError as error:
            raise gr.Error(str(error)) from None
        return _page_outputs(hits, state, feedback_is_open)

    def ui_feedback(state, liked, disliked):
        if not state:
            raise gr.Error("Search first, then mark results as more or less like what you want.")
        if not liked and not disliked:
            raise gr.Error("Mark at least one result as 'more like these' or 'less like these'.")
        try:
            vector = with_feedback(searcher, np.asarray(state["vector"], np.float32), liked, disliked)
            state = {**state, "vector": vector.tolist(), "page": 0}
            hits = _from_state(state)
        except QueryError as error:
            raise gr.Error(str(error)) from None
        return _page_outputs(hits, state, True)

    def _page_outputs(hits, state, feedback_is_open: bool):
        """Only what a visitor sees changes. The map is not an output: its frame is ~260 KB of JSON (3,000 points)
        that every search used to send and the browser to re-plot, hidden tab or not; the Map tab draws the latest
        results when opened. The feedback lists are filled only while their panel is open (else when it opens)."""
        first = state["page"] * state["k"] + 1
        label = f"Results {first}–{first + len(hits) - 1}" if hits else "No more results"
        data = hits_data(hits)
        marks = gr.update(choices=feedback_choices(data), value=[]) if feedback_is_open else gr.skip()
        return (gr.update(value=gallery_items(hits), label=label), data, state,
                gr.update(visible=len(hits) == state["k"]), marks, marks)

    def open_feedback(hits_now):
        marks = gr.update(choices=feedback_choices(hits_now or []), value=[])
        return True, marks, marks

    def ui_image_search(*args):
        """The picture changed (dropped, picked, pasted, captured or an example chosen): search at once; a cleared
        picture leaves the results as they are."""
        if not args[1]:
            return tuple(gr.skip() for _ in paged)
        return ui_search(*args, from_image=True)

    def map_frame(hits_now):
        return embedding_map.frame(hits_now) if hits_now else gr.skip()  # nothing new to mark: keep what is drawn

    def ui_map_region(event: gr.SelectData):
        if embedding_map is None or not isinstance(event.index, (list, tuple)) or len(event.index) != 2:
            return gr.update(), gr.update()
        rows = embedding_map.region(event.index)
        if not rows:
            raise gr.Error("No images in that part of the map; drag across a wider area.")
        found = [(float(gallery.vector(rows[0]) @ gallery.vector(row)), row) for row in rows]
        hits = searcher.hits_for(found, None)
        return gr.update(value=gallery_items(hits), label="Images from the map"), hits_data(hits)

    def similar_state(image_id, k):
        """After 'more like this', 'More results' pages on from the stored vector of that image."""
        row = gallery.row_of(int(image_id)) if image_id is not None else None
        if row is None:
            return None, gr.update(visible=False)
        state = {"vector": gallery.vector(row).tolist(), "text": None, "filters": vars(Filters()),
                 "collapse": False, "diversity": 0.0, "min_score": 0.0, "k": int(k), "page": 0}
        return state, gr.update(visible=True)

    def show_details(hits: list[dict], event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return gr.update(), None, gr.update(visible=False), gr.update()
        hit = hits[event.index]
        return details_markdown(hit), hit["image_id"], gr.update(visible=True), len(hits)

    embedding_map = EmbeddingMap(gallery) if gallery.map_xy is not None else None
    manifest = gallery.manifest
    has_text = searcher.has_text
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        if has_text:
            gr.Markdown(f"# {TITLE}\nSearch {manifest.count:,} COCO images by description or by example picture.")
        else:
            gr.Markdown(f"# {TITLE}\nSearch {manifest.count:,} images by example picture. This index was built with "
                        f"an image-only model (`{manifest.model['model_id']}`) for visual similarity; it cannot read "
                        "text, so search by description is off.")
        if service.source.notice:
            gr.Markdown(f"⚠️ {service.source.notice}")
        # "wrap": on a phone the tabs take a second row instead of hiding behind Gradio's "…" overflow menu.
        with gr.Tabs(selected="text" if has_text else "image", overflow_behavior="wrap", elem_id="modes"):
            with gr.Tab("Text → Image", id="text", visible=has_text) as text_tab:
                with gr.Row(equal_height=True):
                    query = gr.Textbox(label="Describe the image", placeholder=EXAMPLE_QUERIES[0], scale=5,
                                       max_length=1000, autofocus=True, submit_btn=False, min_width=240)
                    text_button = gr.Button("Search", variant="primary", scale=1, min_width=100)
                text_k = QuerySlider(1, MAX_K, value=5, step=1, label="Number of results")
                gr.Examples(EXAMPLE_QUERIES, inputs=query, label="Try")
            with gr.Tab("Image → Image", id="image") as image_tab:
                with gr.Row():
                    picture = QueryImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                         label="Your image", height=260)
                    with gr.Column():
                        image_k = QuerySlider(1, MAX_K, value=5, step=1, label="Number of results")
                        image_button = gr.Button("Find similar images", variant="primary")
                gr.Examples(_example_images(searcher), inputs=picture, label="Or start from a gallery image")
            with gr.Tab("Map") as map_tab:
                if embedding_map is None:
                    gr.Markdown("This index was built before the embedding map existed; rebuild it to get one.")
                    map_plot = gr.State(None)
                else:
                    gr.Markdown(f"The gallery laid out by similarity ({len(embedding_map.rows):,} sampled images, "
                                "2-D PCA of the image vectors), coloured by COCO category. Your latest results are "
                                f"marked {HIGHLIGHT}. Drag across an area to see its images below, then pick one "
                                "for **More like this**.")
                    map_plot = gr.ScatterPlot(embedding_map.frame(), x="x", y="y", color="category",
                                              tooltip=["caption", "image_id", "category"], height=520,
                                              x_title="first principal component",
                                              y_title="second principal component", label="Embedding map")
            with gr.Tab("About") as about_tab:
                gr.Markdown(about_markdown(service))
        with gr.Column() as results_area:
            with gr.Accordion("Refine: combine, exclude, filter" if has_text else "Refine: combine, filter",
                              open=False):
                with gr.Row(visible=has_text):
                    extra_text = gr.Textbox(label="Words to add to a picture search",
                                            placeholder="e.g. at night", scale=3)
                    image_weight = gr.Slider(0, 1, value=0.5, step=0.05, scale=2,
                                             label="Picture vs words (1 = only the pictures)")
                extras = gr.File(label="More example pictures (averaged with the query)", file_count="multiple",
                                 file_types=["image"], height=130)
                with gr.Row(visible=has_text):
                    negative = gr.Textbox(label="Not like", placeholder="e.g. a dog", scale=3)
                    negative_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="How strongly", scale=2)
                with gr.Row(visible=bool(gallery.categories()) or len(gallery.splits()) > 1):  # folders have neither
                    categories = gr.Dropdown(gallery.categories(), multiselect=True, label="COCO categories",
                                             scale=3, visible=bool(gallery.categories()))
                    match = gr.Radio(["any", "all"], value="any", label="Match categories", scale=1,
                                     visible=bool(gallery.categories()))
                    splits = gr.CheckboxGroup(gallery.splits(), label="Splits", scale=2,
                                              visible=len(gallery.splits()) > 1)
                with gr.Row():
                    collapse = gr.Checkbox(label="Hide near-duplicate shots", value=False)
                    diversity = gr.Slider(0, 1, value=0, step=0.05, label="Variety (0 = most similar first)")
                    min_score = gr.Slider(0, 1, value=0, step=0.01, label="Minimum similarity (0 = off)")
            results = gr.Gallery(label="Results", columns=5, height="auto", object_fit="cover", allow_preview=False,
                                 elem_id="results", show_label=True, interactive=False)
            next_page = gr.Button("More results", visible=False, size="sm")
            with gr.Accordion("Not quite? Mark results and refine", open=False) as feedback:
                with gr.Row():
                    liked = gr.Dropdown([], multiselect=True, label="More like these", scale=2)
                    disliked = gr.Dropdown([], multiselect=True, label="Less like these", scale=2)
                    refine_button = gr.Button("Refine results", scale=1)
            hits = gr.JSON(visible=False, label="hits")
            last_query = gr.State(None)
            feedback_open = gr.State(False)
            with gr.Group():
                details = gr.Markdown("Select a result to see its captions and categories.", elem_id="details")
                with gr.Row():
                    more = gr.Button("More like this", visible=False, variant="secondary", size="sm")
                selected = QueryNumber(visible=False, precision=0, label="image id")
                similar_k = QueryNumber(visible=False, value=5, precision=0, label="k")

        refine = [extra_text, extras, image_weight, negative, negative_weight, categories, match, splits, collapse,
                  diversity, min_score]
        paged = [results, hits, last_query, next_page, liked, disliked]
        # Progress shows as a small timer on the results alone: Gradio's full tracker (spinner and a pulsing border on
        # every output) kept the browser drawing frames throughout the search, on the CPU the search needs.
        ui = dict(api_visibility="private", concurrency_limit=CONCURRENCY, concurrency_id="ui",
                  show_progress="minimal", show_progress_on=results)
        for trigger in (text_button.click, query.submit):
            trigger(lambda *a: ui_search(*a, from_image=False), [query, picture, *refine, text_k, feedback_open],
                    paged, **ui)
        image_button.click(lambda *a: ui_search(*a, from_image=True), [query, picture, *refine, image_k,
                                                                        feedback_open], paged, **ui)
        # A search starts as soon as there is a picture (no button press needed); a newer picture replaces a search
        # still waiting for its turn.
        picture.change(ui_image_search, [query, picture, *refine, image_k, feedback_open], paged,
                       trigger_mode="always_last", **ui)
        next_page.click(ui_next_page, [last_query, feedback_open], paged, **ui)
        feedback.expand(open_feedback, hits, [feedback_open, liked, disliked], api_visibility="private")
        feedback.collapse(lambda: False, None, feedback_open, api_visibility="private", queue=False)
        refine_button.click(ui_feedback, [last_query, liked, disliked], paged, **ui)

        # Named API endpoints, on hidden triggers so the visible UI can offer more than the contract's inputs.
        with gr.Row(visible=False):
            api_text, api_image, api_search = gr.Button(), gr.Button(), gr.Button()
            api_images = gr.File(file_count="multiple", label="images")
            api_match_all = gr.Checkbox(label="match_all")
            api_page = gr.Number(value=0, precision=0, label="page")
            api_more_like, api_less_like = gr.JSON(label="more_like"), gr.JSON(label="less_like")
        api_text.click(search_text, [query, text_k], [results, hits], validator=validate_text,
                       api_name="search_text", concurrency_limit=CONCURRENCY, concurrency_id="text")
        api_image.click(search_image, [picture, image_k], [results, hits], validator=validate_image,
                        api_name="search_image", concurrency_limit=CONCURRENCY, concurrency_id="image")
        api_search.click(search, [query, api_images, image_weight, negative, negative_weight, categories,
                                  api_match_all, splits, collapse, diversity, min_score, api_more_like,
                                  api_less_like, text_k, api_page], [results, hits],
                         api_name="search", concurrency_limit=CONCURRENCY, concurrency_id="ui")
        more.click(fn=search_similar, inputs=[selected, similar_k], outputs=[results, hits],
                   validator=validate_similar, api_name="search_similar", concurrency_limit=CONCURRENCY,
                   show_progress="minimal", show_progress_on=results,
                   ).success(similar_state, [selected, similar_k], [last_query, next_page], api_visibility="private")
        # Results belong to the search tabs: the About tab hides them.
        about_tab.select(lambda: gr.update(visible=False), None, results_area, api_visibility="private", queue=False)
        if embedding_map is not None:
            map_plot.select(ui_map_region, None, [results, hits], api_visibility="private", show_progress="minimal",
                            show_progress_on=results)
            map_tab.select(map_frame, hits, map_plot, api_visibility="private")  # the latest results, marked
        for tab in (text_tab, image_tab, map_tab):
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


def launch(demo: gr.Blocks, service: Service, *, queue_size: int = 128, **kwargs):
    """Queue sized for a 2-vCPU Space: requests wait their turn (and are batched) instead of thrashing the CPU.

    When `queue_size` requests are already waiting, the next one is turned away at once (HTTP 503 with Retry-After
    and a sentence saying the search is busy; gradio_client raises QueueError, the browser says "busy, try again")
    instead of waiting without end."""
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware

    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["exception_handlers"] = {**app_kwargs.get("exception_handlers", {}),
                                        HTTPException: busy_handler(queue_size)}
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                Middleware(ThumbnailFiles, store=service.searcher.gallery.thumbnails)]
    kwargs = {**session_capacity(), **kwargs}  # the caller's own cap wins
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo.launch(
        theme=gr.themes.Soft(), css=CSS, allowed_paths=[str(service.searcher.gallery.thumbnails.cache_dir)],
        max_file_size="25mb", show_error=True, app_kwargs=app_kwargs, **kwargs,
    )
