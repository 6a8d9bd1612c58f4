"""The search core: encode a query with the shared encoder, search the gallery, return typed hits."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .batcher import ModelThread
from .encoder import Encoder
from .gallery import Gallery, QueryError
from .images import open_image

MAX_K = 50
MAX_QUERY_CHARS = 1000  # longer text is cut here, then truncated again to the model's context by the tokenizer
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

    def to_dict(self) -> dict:
        return asdict(self)


class Searcher:
    """Answers text, image and stored-vector queries against one gallery with one encoder.

    Queries from concurrent callers are encoded together on the model thread (one forward pass for many visitors),
    while decoding, validation and the FAISS search run on the callers' own threads. Pass the ModelThread the
    encoder was loaded on (see clipsearch.service.start); a new one is made otherwise.
    """

    def __init__(self, gallery: Gallery, encoder: Encoder, model_thread: ModelThread | None = None,
                 text_batch: int = 16, image_batch: int = 8):
        if encoder.info.dim != gallery.manifest.dim:
            raise ValueError(f"encoder dim {encoder.info.dim} != index dim {gallery.manifest.dim}")
        self.gallery = gallery
        self.encoder = encoder
        self.model_thread = model_thread or ModelThread()
        self._encode_text = self.model_thread.lane("text", lambda texts: list(encoder.encode_texts(texts)), text_batch)
        self._encode_image = self.model_thread.lane("image", lambda images: list(encoder.encode_images(images)),
                                                    image_batch)
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # LRU, see search_text
        self._text_lock = threading.Lock()

    # --- queries --------------------------------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return self.encoder.info.has_text

    def require_text(self) -> None:
        """Image-only indexes (DINOv2, ViT, ResNet, ...) have no text side: a sentence instead of a search."""
        if not self.has_text:
            raise QueryError(f"This index was built with an image-only model ({self.encoder.info.model_id}), which "
                             "cannot read text: search with a picture instead (Image → Image, or the /search_image "
                             "endpoint).")

    def search_text(self, text: str, k: int = 5) -> list[Hit]:
        self.require_text()
        query, k = clean_text(text), check_k(k)
        with self._text_lock:
            vector = self._text_vectors.get(query)
            if vector is not None:
                self._text_vectors.move_to_end(query)
        if vector is None:
            # micro-batched with other visitors' queries; a copy, so the cache does not pin the whole batch
            vector = np.array(self._encode_text(query), dtype=np.float32)
            with self._text_lock:
                self._text_vectors[query] = vector
                while len(self._text_vectors) > TEXT_CACHE_SIZE:
                    self._text_vectors.popitem(last=False)
        return self.search_vector(vector, k, query_text=query)

    def search_image(self, image: Image.Image | str | Path | bytes, k: int = 5) -> list[Hit]:
        k = check_k(k)
        picture = image if isinstance(image, Image.Image) and image.mode == "RGB" else self.load_image(image)
        return self.search_vector(self._encode_image(picture), k)

    def encode_text(self, text: str) -> np.ndarray:
        """One cleaned text query as a unit vector, encoded together with concurrent queries."""
        self.require_text()
        return self._encode_text(text)

    def encode_image(self, picture: Image.Image) -> np.ndarray:
        return self._encode_image(picture)

    def load_image(self, image) -> Image.Image:
        """Decode a query image (raises clipsearch.images.ImageError with a sentence when it is unusable)."""
        return open_image(image, draft_size=self.encoder.info.image_size)

    def search_similar(self, image_id: int, k: int = 5) -> list[Hit]:
        """'More like this': the stored vector of a gallery image, no re-encoding."""
        row = self.gallery.row_of(image_id)
        if row is None:
            raise QueryError(f"Image id {image_id} is not in this gallery.")
        return self.search_vector(self.gallery.vector(row), k)

    def search_vector(self, vector: np.ndarray, k: int = 5, query_text: str | None = None) -> list[Hit]:
        k = check_k(k)
        scores, rows = self.gallery.search(vector, k)
        found = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0]
        return self.hits_for(found, query_text)

    # --- results ------------------------------------------------------------------------------------------------
    def hits_for(self, found: list[tuple[float, int]], query_text: str | None) -> list[Hit]:
        records = self.gallery.rows([row for _, row in found])
        hits = []
        for rank, ((score, row), record) in enumerate(zip(found, records), start=1):
            hits.append(Hit(
                rank=rank, row=row, image_id=record.image_id, score=round(score, 4),
                caption=best_caption(query_text, record.captions) or record.file_name,
                captions=record.captions, categories=record.categories, split=record.split,
                file_name=record.file_name, url=record.url, width=record.width, height=record.height,
                thumbnail=str(self.gallery.thumbnails.path(row)),
            ))
        return hits


def clean_text(text) -> str:
    """Normalise a text query; empty or whitespace-only text is a QueryError with a sentence."""
    if not isinstance(text, str):
        raise QueryError("The query must be text.")
    text = text[:4 * MAX_QUERY_CHARS]  # cut before any per-character work: a 10 MB query costs no more than 4 kB
    # Control characters carry no meaning for the model and can confuse tokenizers.
    text = "".join(ch if ch.isprintable() or ch in " \t" else " " for ch in text)
    text = " ".join(text.split())
    if not text:
        raise QueryError("Please type a description of the image you are looking for.")
    return text[:MAX_QUERY_CHARS]


def check_k(k) -> int:
    """k must be a whole number in 1..MAX_K; anything else is a QueryError naming the allowed range."""
    if isinstance(k, bool):
        raise QueryError(f"k must be a whole number between 1 and {MAX_K}.")
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, str) and k.strip().isdigit():
        k = int(k.strip())
    if not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise QueryError(f"k must be a whole number between 1 and {MAX_K} (got {k!r}).")
    return int(k)


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
