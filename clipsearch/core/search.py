"""The search core: every query (text, image, similar, composed) becomes a vector and ends in Searcher.search."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .batcher import ModelThread
from .early import EarlyVectors
from .encoder import Encoder
from .errors import QueryError
from .gallery import Gallery
from .images import open_image
from .objects import CONTEXT, ObjectIndex, crop_with_context, parse_box
from .query import Plan, Query, check_weights, clean_text
from .ranking import collapse, mmr

TEXT_CACHE_SIZE = 1024  # recent text queries whose vectors are kept (2 KB each at 512 dims): repeats skip the model


@dataclass
class Hit:
    rank: int
    row: int
    image_id: int
    score: float
    caption: str
    captions: list[str]
    categories: list[str]
    split: str
    file_name: str
    url: str
    width: int
    height: int
    thumbnail: str  # path of a small JPEG the UI can serve
    # the chance a person would call this a match (see core.calibration); None where the build cannot say
    confidence: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ObjectHit(Hit):
    """A hit of the object index: the image it is in (as a Hit, its thumbnail with the box drawn) and the thing."""

    box: list[float] = field(default_factory=list)  # [x0, y0, x1, y1] in the image's original pixels
    category: str = ""
    object_row: int = -1


class Searcher:
    """Answers text, image and stored-vector queries against one gallery with one encoder.

    Queries from concurrent callers are encoded together on the model thread (one forward pass for many visitors),
    while decoding, validation and the FAISS search run on the callers' own threads. Pass the ModelThread the
    encoder was loaded on (see clipsearch.serve.service.start); a new one is made otherwise.
    """

    def __init__(self, gallery: Gallery, encoder: Encoder, model_thread: ModelThread | None = None,
                 text_batch: int = 16, image_batch: int = 8):
        if encoder.info.dim != gallery.manifest.dim:
            raise ValueError(f"encoder dim {encoder.info.dim} != index dim {gallery.manifest.dim}")
        self.gallery = gallery
        self.encoder = encoder
        self.calibration = gallery.manifest.calibration  # descriptions; None: no captions to calibrate on
        self.picture_calibration = gallery.manifest.picture_calibration  # one picture alone; None: as above
        self.model_thread = model_thread or ModelThread()
        self._encode_text = self.model_thread.lane("text", lambda texts: list(encoder.encode_texts(texts)), text_batch)
        self._encode_image = self.model_thread.lane("image", lambda images: list(encoder.encode_images(images)),
                                                    image_batch)
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # LRU, see text_vector
        self._text_lock = threading.Lock()
        # Uploaded pictures are embedded from the moment they are stored (web.gradio_patches.EarlyPictures).
        self.early = EarlyVectors(lambda path: np.array(self._encode_image(self.load_image(path)), dtype=np.float32))
        # The object index, attached by the service when its files are local and verified (a cold start serves whole
        # images before it arrives); the build's manifest says whether there is one to wait for.
        self.objects: ObjectIndex | None = None

    # --- queries --------------------------------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return self.encoder.info.has_text

    def text_query(self, text) -> str:
        """A text query checked for this index and cleaned (see clean_text). Image-only indexes (DINOv2, ViT,
        ResNet, ...) have no text side: they answer with a sentence whatever was typed. Every text comes here."""
        if not self.has_text:
            raise QueryError(f"This index was built with an image-only model ({self.encoder.info.model_id}), which "
                             "cannot read text: search with a picture instead (Image → Image, or the /search_image "
                             "endpoint).")
        return clean_text(text)

    def search_text(self, text: str, k: int = 5) -> list[Hit]:
        query = self.text_query(text)
        return self.search(self.text_vector(query), Plan.checked(k), query_text=query, calibrated="text")

    def search_image(self, image: Image.Image | str | Path | bytes, k: int = 5) -> list[Hit]:
        plan = Plan.checked(k)
        decoded = isinstance(image, Image.Image) and image.mode == "RGB"  # the validator's, through load_image
        return self.search(self._encode_image(image) if decoded else self.image_vector(image), plan,
                           calibrated="image")

    def search_similar(self, image_id: int, k: int = 5) -> list[Hit]:
        """'More like this': the stored vector of a gallery image, no re-encoding."""
        return self.search(self.stored_vector(image_id), Plan.checked(k))

    def search(self, vector: np.ndarray, plan: Plan, query_text: str | None = None,
               calibrated: str | None = None) -> list[Hit]:
        """Where every search ends: the hits of `plan` for a unit query vector, ranked from plan.first_rank; exact
        for a flat index. query_text picks each hit's best caption; `calibrated` ("text" for a description alone,
        "image" for one picture alone: Query.calibrated_as) gives each hit the build's calibrated confidence for
        that kind of query, where it has one, which plan.min_confidence may cut at."""
        gallery = self.gallery
        calibration = {"text": self.calibration, "image": self.picture_calibration}.get(calibrated)
        if plan.min_confidence is not None and self.calibration is None:
            raise QueryError("This index has no confidence calibration (it was built without captions to fit one), "
                             "so min_confidence cannot apply; use min_score instead.")
        allowed = gallery.mask(**vars(plan.filters)) if plan.filters.active() else None
        if allowed is not None and not allowed.any():
            return []
        want = (plan.page + 1) * plan.k
        depth = min(len(gallery), want * 4 if plan.collapse or plan.diversity else want)
        while True:
            scores, rows = gallery.nearest(vector, depth, allowed)
            found = [(float(s), int(r)) for s, r in zip(scores, rows)]
            if plan.min_score is not None:
                found = [(s, r) for s, r in found if s >= plan.min_score]
            if plan.collapse:
                found = collapse(gallery, found)
            if len(found) >= want or depth >= len(gallery) or plan.min_score is not None and len(found) < depth:
                break
            depth = min(len(gallery), depth * 4)  # duplicates ate the candidates: look deeper
        if plan.diversity:
            found = mmr(gallery, found, plan.diversity, want)
        found, confidences = found[:want], None
        if calibration is not None:  # from rank 1, so a later page never looks surer
            confidences = calibration.confidences([score for score, _ in found])
            if plan.min_confidence is not None:  # confidence never rises with rank: this cuts the tail
                found = found[:sum(c >= plan.min_confidence for c in confidences)]
            confidences = confidences[plan.page * plan.k:len(found)]
        return self.hits_for(found[plan.page * plan.k:], query_text, first_rank=plan.first_rank,
                             confidences=confidences)

    # --- objects ------------------------------------------------------------------------------------------------
    @property
    def object_context(self) -> float:
        """The context regions are cut with: the build's own, so a region meets the indexed boxes in one space."""
        info = self.gallery.manifest.objects
        return info.context if info else CONTEXT

    def object_index(self) -> ObjectIndex | None:
        """The object index to search, None for a build without one; a sentence while it is still loading."""
        if self.gallery.manifest.objects is None:
            return None
        if self.objects is None:
            raise QueryError("The object index is still loading; please try again in a few seconds.")
        return self.objects

    def search_objects(self, text: str, k: int = 5) -> list[ObjectHit]:
        """The things (instance boxes) that best match a description."""
        query = self.text_query(text)
        plan = Plan.checked(k)
        if self.object_index() is None:
            raise QueryError("This index has no object index (it was built without instance boxes, or with "
                             "--objects none); search whole pictures with /search_text instead.")
        return self.search_objects_by_vector(self.text_vector(query), plan, query_text=query, calibrated=True)

    def load_region_image(self, image) -> Image.Image:
        """Decode a picture for a region search at full size: a small box keeps every pixel it has."""
        return image if isinstance(image, Image.Image) and "original_size" in image.info else open_image(image)

    def search_region(self, image, box, k: int = 5) -> list[Hit]:
        """The things most like a region of a picture (`box` [x0, y0, x1, y1] in its pixels, a list or JSON), cut as
        the indexed boxes were; whole images when the build has no object index."""
        plan = Plan.checked(k)
        picture = self.load_region_image(image)
        size = picture.info.get("original_size", picture.size)
        region = crop_with_context(picture, parse_box(box, *size), self.object_context, size)
        objects = self.object_index()
        vector = self._encode_image(region)
        return self.search_objects_by_vector(vector, plan) if objects is not None else self.search(vector, plan)

    def search_objects_by_vector(self, vector: np.ndarray, plan: Plan, query_text: str | None = None,
                                 calibrated: bool = False) -> list[ObjectHit]:
        """Where every object search ends: page plan.page of plan.k object hits for a unit query vector, each with
        its image (thumbnail with the box drawn), box and category; `calibrated` (a description) gives each hit the
        build's object confidence, where it has one."""
        objects = self.object_index()
        scores, rows = objects.nearest(vector, (plan.page + 1) * plan.k)
        calibration = self.gallery.manifest.objects.calibration
        confidences = calibration.confidences(scores.tolist())[plan.page * plan.k:] if calibrated and calibration \
            else None
        found = list(zip(scores.tolist(), rows.tolist()))[plan.page * plan.k:]
        things = objects.rows([row for _, row in found])
        images = self.hits_for([(score, thing.image_row) for (score, _), thing in zip(found, things)], query_text,
                               first_rank=plan.first_rank, confidences=confidences)
        hits = []
        for image, thing in zip(images, things):
            fields = {**vars(image), "thumbnail": str(self.gallery.thumbnails.boxed_path(
                image.row, thing.box, (image.width, image.height), thing.row))}
            hits.append(ObjectHit(**fields, box=thing.box, category=thing.category, object_row=thing.row))
        return hits

    # --- query vectors --------------------------------------------------------------------------------------------
    def text_vector(self, query: str) -> np.ndarray:
        """A text query from text_query as a unit vector: recent queries from a cache, the rest micro-batched with
        other visitors' queries on the model thread."""
        with self._text_lock:
            vector = self._text_vectors.get(query)
            if vector is not None:
                self._text_vectors.move_to_end(query)
        if vector is None:
            vector = np.array(self._encode_text(query), dtype=np.float32)  # a copy: the cache must not pin the batch
            with self._text_lock:
                self._text_vectors[query] = vector
                while len(self._text_vectors) > TEXT_CACHE_SIZE:
                    self._text_vectors.popitem(last=False)
        return vector

    def image_vector(self, image: Image.Image | str | Path | bytes) -> np.ndarray:
        """A query picture as a unit vector: an uploaded file's from its early embedding where one was begun (see
        core.early), anything else decoded and embedded now, micro-batched on the model thread."""
        if isinstance(image, (str, Path)):
            vector = self.early.vector(str(image))
            if vector is not None:
                return vector
        return self._encode_image(self.load_image(image))

    def load_image(self, image) -> Image.Image:
        """Decode a query image (raises clipsearch.core.images.ImageError with a sentence when it is unusable)."""
        return open_image(image, draft_size=self.encoder.info.image_size)

    def stored_vector(self, image_id: int) -> np.ndarray:
        row = self.gallery.row_of(image_id)
        if row is None:
            raise QueryError(f"Image id {image_id} is not in this gallery.")
        return self.gallery.vector(row)

    def compose(self, query: Query) -> tuple[np.ndarray, str | None]:
        """The query vector (unit length) of a composed query and the text used for choosing each hit's caption."""
        text = self.text_query(query.text) if query.text and query.text.strip() else None
        images = [image for image in query.images if image is not None]
        if not text and not images:
            raise QueryError("Please type a description or add an example image.")
        check_weights(query)
        parts = []
        if images:
            picture = _unit(np.mean([self.image_vector(image) for image in images], axis=0))
            parts.append((float(query.image_weight) if text else 1.0, picture))
        if text:
            parts.append((1.0 - float(query.image_weight) if images else 1.0, self.text_vector(text)))
        vector = sum(weight * part for weight, part in parts)
        if query.negative and query.negative.strip():
            vector = vector - float(query.negative_weight) * self.text_vector(self.text_query(query.negative))
        if not np.linalg.norm(vector) > 1e-6:
            raise QueryError("The weights cancel the query out; give the text or the images more weight.")
        return _unit(vector), text

    def with_feedback(self, vector: np.ndarray, more_like: list[int] | None = None,
                      less_like: list[int] | None = None, *, alpha: float = 1.0, beta: float = 0.75,
                      gamma: float = 0.25) -> np.ndarray:
        """Rocchio relevance feedback from stored gallery vectors (no re-encoding): toward the images marked
        'more like this', away from those marked 'less like this'."""
        def mean_of(ids):
            rows = [self.gallery.row_of(int(i)) for i in ids or []]
            if any(row is None for row in rows):
                raise QueryError("A feedback image id is not in this gallery.")
            return np.mean([self.gallery.vector(row) for row in rows], axis=0) if rows else 0.0

        refined = alpha * np.asarray(vector, np.float32) + beta * mean_of(more_like) - gamma * mean_of(less_like)
        if not np.linalg.norm(refined) > 1e-6:
            raise QueryError("The feedback cancels the query out; mark fewer images as 'less like this'.")
        return _unit(refined)

    # --- results ------------------------------------------------------------------------------------------------
    def hits_for(self, found: list[tuple[float, int]], query_text: str | None, first_rank: int = 1,
                 confidences: list[float] | None = None) -> list[Hit]:
        records = self.gallery.rows([row for _, row in found])
        confidences = confidences or [None] * len(found)
        thumbnails = self.gallery.thumbnails.paths([row for _, row in found])
        hits = []
        for rank, ((score, row), record, thumbnail, confidence) in enumerate(
                zip(found, records, thumbnails, confidences), start=first_rank):
            hits.append(Hit(
                rank=rank, row=row, image_id=record.image_id, score=round(score, 4),
                caption=best_caption(query_text, record.captions) or record.file_name,
                captions=record.captions, categories=record.categories, split=record.split,
                file_name=record.file_name, url=record.url, width=record.width, height=record.height,
                thumbnail=str(thumbnail), confidence=confidence,
            ))
        return hits


_WORD = re.compile(r"\w+", re.UNICODE)


def best_caption(query: str | None, captions: list[str]) -> str:
    """The caption sharing most words with the query (ties: the first, COCO's own order); '' if none."""
    if not captions:
        return ""
    if not query:
        return captions[0]
    words = set(_WORD.findall(query.lower()))
    overlaps = [len(words & set(_WORD.findall(caption.lower()))) for caption in captions]
    return captions[int(np.argmax(overlaps))]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
