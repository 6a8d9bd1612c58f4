"""The Gradio layout: tabs, results grid, details, and which handler each event and named API endpoint calls."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import gradio as gr
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from ..core.query import MAX_K
from ..serve.service import Service
from .atlas import TEMPLATE as ATLAS_TEMPLATE
from .atlas import AtlasFiles, AtlasView, atlas_view, script_tag
from .forms import Form, PageView, Refine
from .gradio_patches import (
    ACCESSIBLE_MARKUP,
    PICTURE_SHOWN,
    EarlyPictures,
    QueryImage,
    QueryNumber,
    QuerySlider,
    ThumbnailFiles,
    busy_handler,
    lazy_session_configs,
    session_capacity,
    shared_api_schemas,
)
from .handlers import PICTURES, THINGS, Handlers
from .theme import ATLAS_CSS, CSS, THEME
from .views import TITLE, about_markdown

EXAMPLE_QUERIES = [
    "a dog catching a frisbee in a park",
    "two giraffes standing next to each other",
    "a plate of pasta with broccoli",
    "a man surfing a large wave",
    "a red double-decker bus on a city street",
    "a cat sleeping on a laptop keyboard",
]
# For a multilingual model: the same kind of scenes in other languages and scripts (Spanish, Chinese, Hindi, Arabic).
EXAMPLE_QUERIES_ANY_LANGUAGE = [
    "a dog catching a frisbee in a park",
    "un autobús rojo de dos pisos en la calle",
    "一只猫睡在笔记本电脑的键盘上",
    "समुद्र में एक बड़ी लहर पर सर्फिंग करता आदमी",
    "زرافتان تقفان بجانب بعضهما",
    "a plate of pasta with broccoli",
]
# Requests handled at once per endpoint. Threads mostly wait on the shared encoder batchers, so this is how many
# queries can join one forward pass; the CPU itself only ever runs one encoder pass per modality at a time.
CONCURRENCY = 16


def build_ui(service: Service) -> gr.Blocks:
    lazy_session_configs()
    shared_api_schemas()
    # Thumbnails never change under a given cache folder (it is named by the manifest's hash), so Gradio may serve
    # them where they are instead of copying each result (and each example) into its cache: ~4 ms less per search,
    # and only uploads ever land in the cache, which delete_cache below empties of hour-old files.
    gr.set_static_paths([str(service.searcher.gallery.thumbnails.cache_dir)])
    gallery = service.searcher.gallery
    atlas = atlas_view(gallery)
    on = Handlers(service.searcher, atlas)
    ui = SimpleNamespace(refine=Form(Refine), page=Form(PageView))  # the components events use, by name
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        _search_tabs(ui, service, atlas, on)
        _results_area(ui, service.searcher)
        _visible_searches(ui, on)
        _api_endpoints(ui, on)
        _selections(ui, on, atlas)
    return demo


def _search_tabs(ui, service: Service, atlas: AtlasView | None, on: Handlers) -> None:
    searcher, manifest = service.searcher, service.searcher.gallery.manifest
    if searcher.has_text:
        language = " in any language" if searcher.encoder.info.multilingual else ""
        gr.Markdown(f"# {TITLE}\nSearch {manifest.count:,} COCO images by description{language} or by example "
                    "picture.")
    else:
        gr.Markdown(f"# {TITLE}\nSearch {manifest.count:,} images by example picture. This index was built with "
                    f"an image-only model (`{manifest.model['model_id']}`) for visual similarity; it cannot read "
                    "text, so search by description is off.")
    if service.source.notice:
        gr.Markdown(f"⚠️ {service.source.notice}")
    # "wrap": on a phone the tabs take a second row instead of hiding behind Gradio's "…" overflow menu.
    multilingual = searcher.encoder.info.multilingual
    examples = EXAMPLE_QUERIES_ANY_LANGUAGE if multilingual else EXAMPLE_QUERIES
    with gr.Tabs(selected="text" if searcher.has_text else "image", overflow_behavior="wrap", elem_id="modes"):
        with gr.Tab("Text → Image", id="text", visible=searcher.has_text) as ui.text_tab:
            with gr.Row(equal_height=True):
                ui.query = gr.Textbox(label="Describe the image, in any language" if multilingual else
                                      "Describe the image", placeholder=examples[0], scale=5,
                                      max_length=1000, autofocus=True, submit_btn=False, min_width=240)
                ui.text_button = gr.Button("Search", variant="primary", scale=1, min_width=100)
            with gr.Row():
                ui.text_k = QuerySlider(1, MAX_K, value=5, step=1, label="Number of results", scale=3)
                # things (COCO's instance boxes) where the build has an object index; pictures otherwise
                ui.look_for = gr.Radio([PICTURES, THINGS], value=PICTURES, label="Look for", scale=2,
                                       visible=searcher.gallery.manifest.objects is not None)
            gr.Examples(examples, inputs=ui.query, label="Try, in any language" if multilingual else "Try",
                        elem_id="text-examples")
        with gr.Tab("Image → Image", id="image") as ui.image_tab:
            with gr.Row():
                ui.picture = QueryImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                        label="Your image", height=260, elem_id="query-picture")
                with gr.Column():
                    ui.image_k = QuerySlider(1, MAX_K, value=5, step=1, label="Number of results")
                    ui.image_button = gr.Button("Find similar images", variant="primary")
                    # A region by its box: typed, so it works from the keyboard and on a phone alike.
                    ui.region = gr.Textbox(label="Region [x0, y0, x1, y1] in the picture's pixels",
                                           placeholder="type it, or tap two corners on the picture",
                                           max_length=200)
                    ui.region_button = gr.Button("Search this region", variant="secondary")
                    _region_drawing(ui)
            gr.Examples(_example_images(searcher), inputs=ui.picture, label="Or start from a gallery image")
        with gr.Tab("Map") as ui.map_tab:
            _atlas(ui, atlas, on)
        with gr.Tab("About") as ui.about_tab:
            gr.Markdown(about_markdown(service))


def _region_drawing(ui) -> None:
    """The region drawn over the picture (static/region.js): this hidden component's value is what is drawn, the
    first corner tapped (kept here until the second tap) and the box, as JSON; its script draws it, decoratively,
    where the picture is shown."""
    selectors = {"holder": "#query-picture", "picture": PICTURE_SHOWN}
    ui.drawing = gr.HTML("", html_template="<span hidden></span>", css_template="", elem_id="region-drawing",
                         visible="hidden", container=False, apply_default_css=False, head=script_tag("region.js"),
                         js_on_load=f"window.ClipRegion.mount(element, props, watch, {json.dumps(selectors)});")


def _atlas(ui, atlas: AtlasView | None, on: Handlers) -> None:
    """The Map tab: the atlas (a canvas drawn by static/atlas.js, its data fetched once the tab is drawn), or why
    this build has none. While in view, the atlas asks for its marks itself when the results change
    (`atlas_marks`, a server function of the component: a hidden Map costs searches nothing)."""
    if atlas is None:
        gr.Markdown("This index was built before the atlas existed (its manifest lists no atlas.npy), so there is no "
                    "map. Rebuild it, or add images with `python -m builder.build --append`, to get one.")
        ui.atlas = None
        return
    gr.Markdown(f"All {len(atlas.xy):,} images laid out by similarity (t-SNE of the image vectors, computed when "
                "the index was built): neighbours look alike. Zoom in to see the pictures; your latest results are "
                "ringed in orange and the star marks where your search lands. Click a picture for its details.")
    def atlas_marks(hits):  # a plain function: Gradio marks a server function with an attribute
        return on.atlas_marks(hits)

    ui.atlas = gr.HTML(atlas.value(), html_template=ATLAS_TEMPLATE, css_template="", elem_id="atlas",
                       head=script_tag("atlas.js"), apply_default_css=False, server_functions=[atlas_marks],
                       js_on_load="window.ClipAtlas.mount(element, props, trigger, watch, server);")


def _results_area(ui, searcher) -> None:
    """The refine panel (each option registered under its Refine field), the results (each output a PageView
    field), the feedback lists and the details of a selected result."""
    refine, page, gallery = ui.refine, ui.page, searcher.gallery
    with gr.Column() as ui.results_area:
        with gr.Accordion("Refine: combine, exclude, filter" if searcher.has_text else "Refine: combine, filter",
                          open=False):
            with gr.Row(visible=searcher.has_text):
                refine("extra_text", gr.Textbox(label="Words to add to a picture search", placeholder="e.g. at night",
                                                scale=3))
                refine("image_weight", gr.Slider(0, 1, value=0.5, step=0.05, scale=2,
                                                 label="Picture vs words (1 = only the pictures)"))
            refine("extras", gr.File(label="More example pictures (averaged with the query)", file_count="multiple",
                                     file_types=["image"], height=130))
            with gr.Row(visible=searcher.has_text):
                refine("negative", gr.Textbox(label="Not like", placeholder="e.g. a dog", scale=3))
                refine("negative_weight", gr.Slider(0, 1, value=0.5, step=0.05, label="How strongly", scale=2))
            with gr.Row(visible=bool(gallery.categories()) or len(gallery.splits()) > 1):  # folders have neither
                refine("categories", gr.Dropdown(gallery.categories(), multiselect=True, label="COCO categories",
                                                 scale=3, visible=bool(gallery.categories())))
                refine("match", gr.Radio(["any", "all"], value="any", label="Match categories", scale=1,
                                         visible=bool(gallery.categories())))
                refine("splits", gr.CheckboxGroup(gallery.splits(), label="Splits", scale=2,
                                                  visible=len(gallery.splits()) > 1))
            with gr.Row():
                refine("collapse", gr.Checkbox(label="Hide near-duplicate shots", value=False))
                refine("diversity", gr.Slider(0, 1, value=0, step=0.05, label="Variety (0 = most similar first)"))
                refine("min_score", gr.Slider(0, 1, value=0, step=0.01, label="Minimum similarity (0 = off)"))
                # only a build with captions has a calibration: descriptions and lone pictures get a confidence
                refine("min_confidence", gr.Slider(0, 1, value=0, step=0.05, label="Minimum confidence (0 = off)",
                                                   visible=gallery.manifest.calibration is not None))
        page("results", gr.Gallery(label="Results", columns=5, height="auto", object_fit="cover", allow_preview=False,
                                   elem_id="results", show_label=True, interactive=False))
        page("more", gr.Button("More results", visible=False, size="sm"))
        with gr.Accordion("Not quite? Mark results and refine", open=False) as ui.feedback:
            with gr.Row():
                page("liked", gr.Dropdown([], multiselect=True, label="More like these", scale=2))
                page("disliked", gr.Dropdown([], multiselect=True, label="Less like these", scale=2))
                ui.refine_button = gr.Button("Refine results", scale=1)
        page("hits", gr.JSON(visible=False, label="hits"))
        page("paging", gr.State(None))
        ui.feedback_open = gr.State(False)
        with gr.Group():
            ui.details = gr.Markdown("Select a result to see its captions and categories.", elem_id="details")
            with gr.Row():
                ui.more_like_this = gr.Button("More like this", visible=False, variant="secondary", size="sm")
            ui.selected = QueryNumber(visible=False, precision=0, label="image id")
            ui.similar_k = QueryNumber(visible=False, value=5, precision=0, label="k")


def _visible_searches(ui, on: Handlers) -> None:
    """The Text and Image tabs' searches, paging and feedback: a page of results (PageView) out, by name."""
    refine, page = ui.refine, ui.page
    # No Gradio progress tracker: even its minimal timer redraws the page every frame of a search, on the CPU the
    # search needs (picture p50 -18 ms in the browser benchmark, decision 0050). `busy` marks the results instead.
    paged = dict(outputs=page.components, api_visibility="private", concurrency_limit=CONCURRENCY,
                 concurrency_id="ui", show_progress="hidden")

    def search(handler, field, k, *more):
        """The tab's query field, its k and the refine panel in, as one dict keyed by component (inputs as a set);
        `more` components go to the handler after them, in order."""
        def event(values: dict):
            return page.write(handler(values[field], values[k], refine.read(values), values[ui.feedback_open],
                                      *(values[component] for component in more)))
        event.__name__ = handler.__name__  # Gradio names the (private) endpoint after the function
        return dict(fn=event, inputs={field, k, ui.feedback_open, *refine.components, *more}, **paged)


    def to_page(handler):
        """A handler's PageView as updates keyed by component."""
        def event(*values):
            return page.write(handler(*values))
        event.__name__ = handler.__name__
        return event

    for trigger in (ui.text_button.click, ui.query.submit):
        busy(trigger, **search(on.ui_text_search, ui.query, ui.text_k, ui.look_for))
    for trigger in (ui.region_button.click, ui.region.submit):
        busy(trigger, **search(on.ui_region_search, ui.picture, ui.image_k, ui.region))
    # Two taps (or clicks) on the picture fill the region with the box between them; no round trip to the model. The
    # drawing on the picture (ui.drawing) holds the first corner until the second tap, and shows it.
    ui.picture.select(on.pick_corner, ui.drawing, [ui.drawing, ui.region], api_visibility="private", queue=False)
    # The field is the region's truth: its box is drawn, nothing when it is empty or not a box (the search says why).
    # A new picture (or none) empties both. Both in the browser alone.
    ui.region.change(None, ui.region, ui.drawing, js="(box) => window.ClipRegion.fromField(box)")
    ui.picture.change(None, None, [ui.region, ui.drawing], js="() => ['', '']")
    busy(ui.image_button.click, **search(on.ui_picture_search, ui.picture, ui.image_k))
    # A search starts as soon as there is a picture (no button press needed); a newer picture replaces a search
    # still waiting for its turn.
    busy(ui.picture.change, **search(on.ui_image_search, ui.picture, ui.image_k), trigger_mode="always_last")
    busy(page["more"].click, to_page(on.ui_next_page), [page["paging"], ui.feedback_open], **paged)
    ui.feedback.expand(on.open_feedback, page["hits"], [ui.feedback_open, page["liked"], page["disliked"]],
                       api_visibility="private")
    ui.feedback.collapse(lambda: False, None, ui.feedback_open, api_visibility="private", queue=False)
    busy(ui.refine_button.click, to_page(on.ui_feedback), [page["paging"], page["liked"], page["disliked"]],
         **paged)


# The results marked busy from a search's trigger until its event ends (success or error): aria-busy at once, for
# screen readers, and the `searching` class, whose bar (theme.CSS) is drawn, only once the search has lasted 400 ms
# (a timer, not a CSS delay: a pending animation already costs frames). Both run in the browser, with no round trip.
BUSY = ("() => { const r = document.getElementById('results'); if (!r) return; r.setAttribute('aria-busy', 'true');"
        " clearTimeout(r.busyTimer); r.busyTimer = setTimeout(() => r.classList.add('searching'), 400); }")
IDLE = ("() => { const r = document.getElementById('results'); if (!r) return; r.setAttribute('aria-busy', 'false');"
        " clearTimeout(r.busyTimer); r.classList.remove('searching'); }")


def busy(trigger, *args, **event):
    """`trigger(*args, **event)`, with the results marked busy (BUSY) while it runs."""
    trigger(None, None, None, js=BUSY)
    dependency = trigger(*args, **event)
    dependency.then(None, None, None, js=IDLE)
    return dependency


def _api_endpoints(ui, on: Handlers) -> None:
    """Named API endpoints (the contract), on hidden triggers so the visible UI can offer more than their inputs."""
    refine, results = ui.refine, [ui.page["results"], ui.page["hits"]]
    with gr.Row(visible=False):
        api_text, api_image, api_search = gr.Button(), gr.Button(), gr.Button()
        api_images = gr.File(file_count="multiple", label="images")
        api_match_all = gr.Checkbox(label="match_all")
        api_page = gr.Number(value=0, precision=0, label="page")
        api_more_like, api_less_like = gr.JSON(label="more_like"), gr.JSON(label="less_like")
        api_objects, api_region = gr.Button(), gr.Button()
        api_box = gr.Textbox(label="box")
    api_text.click(**_endpoint(on.search_text, "search_text"), inputs=[ui.query, ui.text_k], outputs=results,
                   validator=on.validate_text, concurrency_limit=CONCURRENCY, concurrency_id="text")
    api_image.click(**_endpoint(on.search_image, "search_image"), inputs=[ui.picture, ui.image_k], outputs=results,
                    validator=on.validate_image, concurrency_limit=CONCURRENCY, concurrency_id="image")
    # By parameter name; the order is the endpoint's documented one, which positional API calls follow.
    composed = dict(text=ui.query, images=api_images, image_weight=refine["image_weight"], negative=refine["negative"],
                    negative_weight=refine["negative_weight"], categories=refine["categories"],
                    match_all=api_match_all, splits=refine["splits"], collapse=refine["collapse"],
                    diversity=refine["diversity"], min_score=refine["min_score"], more_like=api_more_like,
                    less_like=api_less_like, k=ui.text_k, page=api_page, min_confidence=refine["min_confidence"])
    api_search.click(**_endpoint(on.search_composed, "search"), inputs_kwargs=composed, outputs=results,
                     concurrency_limit=CONCURRENCY, concurrency_id="ui")
    api_objects.click(**_endpoint(on.search_objects, "search_objects"), inputs=[ui.query, ui.text_k],
                      outputs=results, validator=on.validate_objects, concurrency_limit=CONCURRENCY,
                      concurrency_id="text")
    api_region.click(**_endpoint(on.search_region, "search_region"), inputs=[ui.picture, api_box, ui.image_k],
                     outputs=results, validator=on.validate_region, concurrency_limit=CONCURRENCY,
                     concurrency_id="image")
    busy(
        ui.more_like_this.click, **_endpoint(on.search_similar, "search_similar"), inputs=[ui.selected, ui.similar_k],
        outputs=results, validator=on.validate_similar, concurrency_limit=CONCURRENCY, show_progress="hidden",
    ).success(on.similar_paging, [ui.selected, ui.similar_k], [ui.page["paging"], ui.page["more"]],
              api_visibility="private")


def _endpoint(handler, api_name: str) -> dict:
    """A named endpoint's function, named as the endpoint: Gradio names the endpoint's MCP tool after its function,
    and the tools' names are the API's (search_text, search_image, search_similar, search). Its signature and
    docstring stay the handler's: they are the endpoint's documented parameters."""
    @functools.wraps(handler)
    def endpoint(*args, **kwargs):
        return handler(*args, **kwargs)

    endpoint.__name__ = endpoint.__qualname__ = api_name
    return dict(fn=endpoint, api_name=api_name)


def _selections(ui, on: Handlers, atlas: AtlasView | None) -> None:
    """Tabs showing or hiding the results, the atlas's marks and clicked pictures, and a selected result's details."""
    results, hits = ui.page["results"], ui.page["hits"]
    # Results belong to the search tabs: the About tab hides them.
    ui.about_tab.select(lambda: gr.update(visible=False), None, ui.results_area, api_visibility="private",
                        queue=False)
    details = [ui.details, ui.selected, ui.more_like_this, ui.similar_k]
    if atlas is not None:
        ui.map_tab.select(on.atlas_value, hits, ui.atlas, api_visibility="private", queue=False)
        # Whatever changed the results (a search, a page, feedback, "More like this"), a Map in view re-marks them;
        # in the browser alone, and nothing at all while the Map is hidden (its tab's select marks them on return).
        hits.change(None, hits, None, js="(hits) => { window.clipAtlas && window.clipAtlas.follow(hits); }")
        ui.atlas.select(on.atlas_details, hits, details, api_visibility="private", queue=False)
    for tab in (ui.text_tab, ui.image_tab, ui.map_tab):
        tab.select(lambda: gr.update(visible=True), None, ui.results_area, api_visibility="private", queue=False)
    results.select(on.show_details, inputs=hits, outputs=details, api_visibility="private", queue=False)


def _example_images(searcher, count: int = 6) -> list[str]:
    total = len(searcher.gallery)
    rows = sorted({int(i * total / count) for i in range(min(count, total))})
    return [str(searcher.gallery.thumbnails.path(row)) for row in rows]


def launch(demo: gr.Blocks, service: Service, *, queue_size: int = 128, **kwargs):
    """Queue sized for a 2-vCPU Space: requests wait their turn (and are batched) instead of thrashing the CPU.

    When `queue_size` requests are already waiting, the next one is turned away at once (HTTP 503 with Retry-After
    and a sentence saying the search is busy; gradio_client raises QueueError, the browser says "busy, try again")
    instead of waiting without end."""

    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["exception_handlers"] = {**app_kwargs.get("exception_handlers", {}),
                                        HTTPException: busy_handler(queue_size)}
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                Middleware(ThumbnailFiles, store=service.searcher.gallery.thumbnails),
                                Middleware(AtlasFiles, gallery=service.searcher.gallery),
                                Middleware(EarlyPictures, prepare=service.searcher.early.prepare)]
    # No run history: Gradio would rewrite up to 100 past runs in the visitor's localStorage several times per click
    # (slower with every search), and a visitor's queries stay out of the browser's storage.
    kwargs = {"run_history": False, **session_capacity(), **kwargs}  # the caller's own cap wins
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo.launch(
        theme=THEME, css=CSS + ATLAS_CSS, js=ACCESSIBLE_MARKUP,
        allowed_paths=[str(service.searcher.gallery.thumbnails.cache_dir)],
        max_file_size="25mb", show_error=True, app_kwargs=app_kwargs, **kwargs,
    )
