"""The Gradio layout: tabs, results grid, details, and which handler each event and named API endpoint calls."""

from __future__ import annotations

import gradio as gr

from ..core.query import MAX_K
from ..serve.service import Service
from .gradio_patches import (
    QueryImage,
    QueryNumber,
    QuerySlider,
    ThumbnailFiles,
    busy_handler,
    lazy_session_configs,
    session_capacity,
)
from .handlers import Handlers
from .views import HIGHLIGHT, TITLE, EmbeddingMap, about_markdown

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


def build_ui(service: Service) -> gr.Blocks:
    lazy_session_configs()
    # Thumbnails never change under a given cache folder (it is named by the manifest's hash), so Gradio may serve
    # them where they are instead of copying each result (and each example) into its cache: ~4 ms less per search,
    # and only uploads ever land in the cache, which delete_cache below empties of hour-old files.
    gr.set_static_paths([str(service.searcher.gallery.thumbnails.cache_dir)])
    searcher = service.searcher
    gallery = searcher.gallery
    embedding_map = EmbeddingMap(gallery) if gallery.map_xy is not None else None
    on = Handlers(searcher, embedding_map)
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
            trigger(on.ui_text_search, [query, picture, *refine, text_k, feedback_open], paged, **ui)
        image_button.click(on.ui_picture_search, [query, picture, *refine, image_k, feedback_open], paged, **ui)
        # A search starts as soon as there is a picture (no button press needed); a newer picture replaces a search
        # still waiting for its turn.
        picture.change(on.ui_image_search, [query, picture, *refine, image_k, feedback_open], paged,
                       trigger_mode="always_last", **ui)
        next_page.click(on.ui_next_page, [last_query, feedback_open], paged, **ui)
        feedback.expand(on.open_feedback, hits, [feedback_open, liked, disliked], api_visibility="private")
        feedback.collapse(lambda: False, None, feedback_open, api_visibility="private", queue=False)
        refine_button.click(on.ui_feedback, [last_query, liked, disliked], paged, **ui)

        # Named API endpoints, on hidden triggers so the visible UI can offer more than the contract's inputs.
        with gr.Row(visible=False):
            api_text, api_image, api_search = gr.Button(), gr.Button(), gr.Button()
            api_images = gr.File(file_count="multiple", label="images")
            api_match_all = gr.Checkbox(label="match_all")
            api_page = gr.Number(value=0, precision=0, label="page")
            api_more_like, api_less_like = gr.JSON(label="more_like"), gr.JSON(label="less_like")
        api_text.click(on.search_text, [query, text_k], [results, hits], validator=on.validate_text,
                       api_name="search_text", concurrency_limit=CONCURRENCY, concurrency_id="text")
        api_image.click(on.search_image, [picture, image_k], [results, hits], validator=on.validate_image,
                        api_name="search_image", concurrency_limit=CONCURRENCY, concurrency_id="image")
        api_search.click(on.search, [query, api_images, image_weight, negative, negative_weight, categories,
                                  api_match_all, splits, collapse, diversity, min_score, api_more_like,
                                  api_less_like, text_k, api_page], [results, hits],
                         api_name="search", concurrency_limit=CONCURRENCY, concurrency_id="ui")
        more.click(fn=on.search_similar, inputs=[selected, similar_k], outputs=[results, hits],
                   validator=on.validate_similar, api_name="search_similar", concurrency_limit=CONCURRENCY,
                   show_progress="minimal", show_progress_on=results,
                   ).success(on.similar_paging, [selected, similar_k], [last_query, next_page],
                            api_visibility="private")
        # Results belong to the search tabs: the About tab hides them.
        about_tab.select(lambda: gr.update(visible=False), None, results_area, api_visibility="private", queue=False)
        if embedding_map is not None:
            map_plot.select(on.ui_map_region, None, [results, hits], api_visibility="private", show_progress="minimal",
                            show_progress_on=results)
            map_tab.select(on.map_frame, hits, map_plot, api_visibility="private")  # the latest results, marked
        for tab in (text_tab, image_tab, map_tab):
            tab.select(lambda: gr.update(visible=True), None, results_area, api_visibility="private", queue=False)
        results.select(on.show_details, inputs=hits, outputs=[details, selected, more, similar_k],
                       api_visibility="private", queue=False)
    return demo


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
