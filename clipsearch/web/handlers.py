"""Event handlers: each turns a request into a checked query, runs it through the Searcher, adapts hits to outputs."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict

import gradio as gr

from ..core.errors import ImageError, QueryError
from ..core.objects import parse_box
from ..core.query import Paging, Plan, Query, check_k
from ..core.search import Hit, ObjectHit, Searcher
from .atlas import AtlasView
from .forms import PageView, Refine
from .views import details_markdown, feedback_choices, gallery_items, hits_data, results_label

PICTURES, THINGS = "Pictures", "Things in pictures"  # what the text tab looks for (THINGS: the object index)


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

    def peek(self, key: str):
        with self._lock:
            return self._items.get(key)


class Handlers:
    """The named API endpoints (the contract), their validators, and the visible UI's events."""

    def __init__(self, searcher: Searcher, atlas: AtlasView | None):
        self.searcher = searcher
        self.gallery = searcher.gallery
        self.atlas = atlas
        self.decoded = DecodedImages()

    # --- validators for the named API endpoints: a failure is a sentence for the caller --------------------------
    def validate_text(self, text, k):
        return [_check(lambda: self.searcher.text_query(text)), _check(lambda: check_k(k))]

    def validate_image(self, image, k):
        def usable():
            if not image:
                raise QueryError("Please upload, paste or take a picture first.")
            self.decoded.put(image, self.searcher.load_image(image))
        return [_check(usable), _check(lambda: check_k(k))]

    def validate_similar(self, image_id, k):
        def known():
            try:
                row = self.gallery.row_of(int(image_id)) if image_id is not None else None
            except (TypeError, ValueError):
                row = None
            if row is None:
                raise QueryError("Pick a result first, then ask for more like it.")
        return [_check(known), _check(lambda: check_k(k))]

    def validate_objects(self, text, k):
        return [_check(lambda: self.searcher.text_query(text)), _check(lambda: check_k(k))]

    def validate_region(self, image, box, k):
        """The picture decoded (at full size: a small region keeps its pixels) and the box checked against it."""
        def usable():
            if not image:
                raise QueryError("Please upload, paste or take a picture first.")
            self.decoded.put(f"region:{image}", self.searcher.load_region_image(image))

        def inside():
            picture = self.decoded.peek(f"region:{image}")
            if picture is not None:
                parse_box(box, *picture.info.get("original_size", picture.size))
        return [_check(usable), _check(inside), _check(lambda: check_k(k))]

    # --- named API endpoints (concurrent calls share encoder passes in the micro-batchers) -------------------------
    def search_text(self, text: str, k: int):
        """Find the COCO images that best match a description.

        Args:
            text: what the image shows, in plain words, e.g. "a dog catching a frisbee".
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: self.searcher.search_text(text, k))

    def search_image(self, image: str, k: int):
        """Find the COCO images that look most like a given picture.

        Args:
            image: the example picture.
            k: how many results, 1 to 50.
        """
        decoded = self.decoded.pop(image)  # the validator's; an upload embedded since it arrived is not decoded again
        return _outputs(lambda: self.searcher.search_image(
            image if decoded is None or self.searcher.early.begun(image) else decoded, k))

    def search_objects(self, text: str, k: int):
        """Find things in the COCO images (instance boxes, e.g. the umbrella rather than the street) that best match
        a description; each hit adds the thing's `box` [x0, y0, x1, y1] in its image's pixels and its `category`.

        Args:
            text: the thing, in plain words, e.g. "a red umbrella".
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: self.searcher.search_objects(text, k))

    def search_region(self, image: str, box: str, k: int):
        """Find the things most like a region of a picture (whole images when the index has no object index).

        Args:
            image: the picture.
            box: the region as a JSON list [x0, y0, x1, y1] in the picture's pixels, e.g. "[40, 30, 200, 180]".
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: self.searcher.search_region(self.decoded.pop(f"region:{image}") or image, box, k))

    def search_similar(self, image_id: int, k: int):
        """More like this: the images most similar to one already in the gallery, by its COCO image id.

        Args:
            image_id: the COCO image id of a result (the image_id field of a hit).
            k: how many results, 1 to 50.
        """
        return _outputs(lambda: self.searcher.search_similar(int(image_id), k))

    def search_composed(self, text: str, images: list[str] | None, image_weight: float, negative: str,
                        negative_weight: float, categories: list[str] | None, match_all: bool,
                        splits: list[str] | None, collapse: bool, diversity: float, min_score: float,
                        more_like: list[int] | None, less_like: list[int] | None, k: int, page: int,
                        min_confidence: float = 0.0):
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
            min_confidence: 0 to 1; drop hits less likely than this to be a match (0 = keep all). Only a description
                alone or one picture alone (no negative, no feedback) gets a confidence; the index must have a
                calibration.
        """
        refine = Refine(extras=images, image_weight=image_weight, negative=negative, negative_weight=negative_weight,
                        categories=categories, match="all" if match_all else "any", splits=splits,
                        collapse=collapse, diversity=diversity, min_score=min_score, min_confidence=min_confidence)
        return _outputs(lambda: self._first_page(refine.text_query(text), refine.plan(k, page), more_like,
                                                 less_like)[0])

    def _first_page(self, query: Query, plan: Plan, more_like=None, less_like=None) -> tuple[list[Hit], Paging]:
        vector, text = self.searcher.compose(query)
        if more_like or less_like:
            vector = self.searcher.with_feedback(vector, more_like, less_like)
        paging = Paging(vector, text, plan, calibrated=None if more_like or less_like else query.calibrated_as())
        return self._page(paging), paging

    def _page(self, paging: Paging) -> list[Hit]:
        return self.searcher.search(paging.vector, paging.plan, query_text=paging.text, calibrated=paging.calibrated)

    # --- the visible UI: the same searches with the refine options, plus paging from the stored query vector -----
    def ui_text_search(self, text: str, k, refine: Refine, feedback_is_open: bool, look_for: str = PICTURES
                       ) -> PageView:
        if look_for == THINGS:
            return self._things_view(lambda: self.searcher.search_objects(text, k), feedback_is_open)
        return self._ui_search(refine.text_query(text), k, refine, feedback_is_open)

    def ui_region_search(self, picture: str | None, k, refine: Refine, feedback_is_open: bool, box: str) -> PageView:
        """The region of the picture in the box field: the things most like it (whole images without objects)."""
        if not picture:
            raise gr.Error("Please upload, paste or take a picture first.")
        return self._things_view(lambda: self.searcher.search_region(picture, box, k), feedback_is_open)

    @staticmethod
    def pick_corner(drawing: str | None, event: gr.SelectData):
        """A tap on the picture at event.index = [x, y] (its pixels): the first tap is one corner, kept (and drawn) in
        the region's drawing; the second closes the box and writes it into the region field, which redraws it."""
        point = event.index if isinstance(event.index, (list, tuple)) and len(event.index) == 2 else None
        if point is None:
            return gr.skip(), gr.skip()
        try:
            state = json.loads(drawing) if drawing else {}
        except ValueError:
            state = {}
        corner = state.get("corner") if isinstance(state, dict) else None
        if not (isinstance(corner, list) and len(corner) == 2):
            return json.dumps({**(state if isinstance(state, dict) else {}), "corner": list(point)}), gr.skip()
        (ax, ay), (bx, by) = corner, point
        box = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
        return json.dumps({"box": box}), json.dumps(box)

    @staticmethod
    def _things_view(search, feedback_is_open: bool) -> PageView:
        """One page of object (or region) hits: their thumbnails show the box; no paging or feedback from them."""
        try:
            hits = search()
        except (QueryError, ImageError) as error:
            raise gr.Error(str(error)) from None
        data = hits_data(hits)
        marks = gr.update(choices=feedback_choices(data), value=[]) if feedback_is_open else gr.skip()
        label = f"Things 1–{len(hits)}" if hits and isinstance(hits[0], ObjectHit) else \
            f"Results 1–{len(hits)}" if hits else "No results"
        return PageView(results=gr.update(value=gallery_items(hits), label=label), hits=data, paging=None,
                        more=gr.update(visible=False), liked=marks, disliked=marks)

    def ui_picture_search(self, picture: str | None, k, refine: Refine, feedback_is_open: bool) -> PageView:
        if not picture:
            raise gr.Error("Please upload, paste or take a picture first.")
        return self._ui_search(refine.picture_query(picture), k, refine, feedback_is_open)

    def ui_image_search(self, picture: str | None, k, refine: Refine, feedback_is_open: bool):
        """The picture changed (dropped, picked, pasted, captured or an example chosen): search at once; a cleared
        picture leaves the results as they are."""
        if not picture:
            return gr.skip()
        return self.ui_picture_search(picture, k, refine, feedback_is_open)

    def _ui_search(self, query: Query, k, refine: Refine, feedback_is_open: bool) -> PageView:
        try:
            hits, paging = self._first_page(query, refine.plan(k))
        except (QueryError, ImageError) as error:
            raise gr.Error(str(error)) from None
        return self._page_view(hits, paging, feedback_is_open)

    def ui_next_page(self, paging: Paging | None, feedback_is_open) -> PageView:
        if not paging:
            raise gr.Error("Search first, then ask for more results.")
        try:
            paging = dataclasses.replace(paging, plan=paging.plan.next_page())
            hits = self._page(paging)
        except QueryError as error:
            raise gr.Error(str(error)) from None
        return self._page_view(hits, paging, feedback_is_open)

    def ui_feedback(self, paging: Paging | None, liked, disliked) -> PageView:
        if not paging:
            raise gr.Error("Search first, then mark results as more or less like what you want.")
        if not liked and not disliked:
            raise gr.Error("Mark at least one result as 'more like these' or 'less like these'.")
        try:
            vector = self.searcher.with_feedback(paging.vector, liked, disliked)
            paging = Paging(vector, paging.text, dataclasses.replace(paging.plan, page=0))
            hits = self._page(paging)
        except QueryError as error:
            raise gr.Error(str(error)) from None
        return self._page_view(hits, paging, True)

    @staticmethod
    def _page_view(hits: list[Hit], paging: Paging, feedback_is_open: bool) -> PageView:
        """Only what a visitor sees changes. The map is not an output: its frame is ~260 KB of JSON (3,000 points)
        that every search used to send and the browser to re-plot, hidden tab or not; the Map tab draws the latest
        results when opened. The feedback lists are filled only while their panel is open (else when it opens)."""
        data = hits_data(hits)
        marks = gr.update(choices=feedback_choices(data), value=[]) if feedback_is_open else gr.skip()
        return PageView(results=gr.update(value=gallery_items(hits), label=results_label(hits, paging.plan)),
                        hits=data, paging=paging,
                        more=gr.update(visible=len(hits) == paging.plan.k), liked=marks, disliked=marks)

    @staticmethod
    def open_feedback(hits_now):
        marks = gr.update(choices=feedback_choices(hits_now or []), value=[])
        return True, marks, marks

    def atlas_value(self, hits_now):
        """The atlas with the latest results marked and their search placed among them."""
        return self.atlas.value(hits_now) if hits_now else gr.skip()  # nothing new to mark: keep the drawing

    def atlas_marks(self, hits) -> str:
        """The atlas's state for the results the page shows now, sent by atlas.js while the Map is in view whenever
        they change (a search, a page, feedback, "More like this"): their rows ringed, the search placed among them;
        no marks for no results. Only image ids and scores come from the browser; anything else is ignored."""
        marked = []
        for hit in hits if isinstance(hits, list) else []:
            try:
                marked.append({"image_id": int(hit["image_id"]), "score": float(hit["score"])})
            except (KeyError, TypeError, ValueError):
                continue
        return self.atlas.value(marked)

    def atlas_details(self, hits_now, event: gr.SelectData):
        """A picture clicked on the atlas: the details a result shows (with its score when it is one of the latest
        results), and "More like this"."""
        row = event.index
        if not isinstance(row, int) or not 0 <= row < len(self.gallery):
            return gr.update(), None, gr.update(visible=False), gr.update()
        image_id = self.gallery.rows([row])[0].image_id
        hit = next((h for h in hits_now or [] if h["image_id"] == image_id), None)
        if hit is None:
            hit = {**hits_data(self.searcher.hits_for([(0.0, row)], None))[0], "score": None}
        return details_markdown(hit), image_id, gr.update(visible=True), len(hits_now or []) or 5

    def similar_paging(self, image_id, k):
        """After 'more like this', 'More results' pages on from the stored vector of that image."""
        try:
            vector = self.searcher.stored_vector(int(image_id))
        except (TypeError, ValueError):  # no image id (QueryError, an unknown one, is a ValueError too)
            return None, gr.update(visible=False)
        return Paging(vector, None, Plan.checked(k)), gr.update(visible=True)

    @staticmethod
    def show_details(hits: list[dict], event: gr.SelectData):
        if not hits or event.index is None or event.index >= len(hits):
            return gr.update(), None, gr.update(visible=False), gr.update()
        hit = hits[event.index]
        return details_markdown(hit), hit["image_id"], gr.update(visible=True), len(hits)


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
