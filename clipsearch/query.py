"""Composed queries and result shaping: image+text with weights, negative text, filters, paging, near-duplicates."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from .search import MAX_K, Hit, QueryError, Searcher, check_k, clean_text

MAX_DEPTH = 1000  # paging stops here: nobody reads result 1001, and deeper searches only cost time
DUPLICATE_COSINE = 0.95  # two gallery images this close are the same shot for a visitor


@dataclass
class Filters:
    """Only images in these COCO categories (any or all of them) and splits are considered."""

    categories: list[str] = field(default_factory=list)
    match_all: bool = False
    splits: list[str] = field(default_factory=list)

    def active(self) -> bool:
        return bool(self.categories or self.splits)


@dataclass
class Query:
    """What to look for: text, example images (averaged), both (weighted), minus a negative text."""

    text: str | None = None
    images: list = field(default_factory=list)
    image_weight: float = 0.5  # share of the images when text is given too: 0 = only text, 1 = only images
    negative: str | None = None
    negative_weight: float = 0.5


def compose(searcher: Searcher, query: Query) -> tuple[np.ndarray, str | None]:
    """The query vector (unit length) and the text used for choosing each hit's best caption."""
    text = clean_text(query.text) if query.text and query.text.strip() else None
    images = [image for image in query.images if image is not None]
    if not text and not images:
        raise QueryError("Please type a description or add an example image.")
    if not 0.0 <= float(query.image_weight) <= 1.0 or not 0.0 <= float(query.negative_weight) <= 2.0:
        raise QueryError("image_weight must be between 0 and 1, and negative_weight between 0 and 2.")
    parts = []
    if images:
        vectors = [searcher.encode_image(searcher.load_image(image)) for image in images]
        picture = _unit(np.mean(vectors, axis=0))
        parts.append((float(query.image_weight) if text else 1.0, picture))
    if text:
        parts.append((1.0 - float(query.image_weight) if images else 1.0, searcher.encode_text(text)))
    vector = sum(weight * part for weight, part in parts)
    if query.negative and query.negative.strip():
        vector = vector - float(query.negative_weight) * searcher.encode_text(clean_text(query.negative))
    if not np.linalg.norm(vector) > 1e-6:
        raise QueryError("The weights cancel the query out; give the text or the images more weight.")
    return _unit(vector), text


def with_feedback(searcher: Searcher, vector: np.ndarray, more_like: list[int] | None = None,
                  less_like: list[int] | None = None, *, alpha: float = 1.0, beta: float = 0.75,
                  gamma: float = 0.25) -> np.ndarray:
    """Rocchio relevance feedback from stored gallery vectors (no re-encoding): toward the images marked
    'more like this', away from those marked 'less like this'."""
    def mean_of(ids):
        rows = [searcher.gallery.row_of(int(i)) for i in ids or []]
        if any(row is None for row in rows):
            raise QueryError("A feedback image id is not in this gallery.")
        return np.mean([searcher.gallery.vector(row) for row in rows], axis=0) if rows else 0.0

    refined = alpha * np.asarray(vector, np.float32) + beta * mean_of(more_like) - gamma * mean_of(less_like)
    if not np.linalg.norm(refined) > 1e-6:
        raise QueryError("The feedback cancels the query out; mark fewer images as 'less like this'.")
    return _unit(refined)


def search(searcher: Searcher, vector: np.ndarray, k: int = 5, *, page: int = 0, filters: Filters | None = None,
           collapse: bool = False, query_text: str | None = None, diversity: float = 0.0,
           min_score: float | None = None) -> list[Hit]:
    """Page `page` (0-based) of the k best images among those matching the filters; exact for a flat index.

    diversity > 0 re-ranks by maximal marginal relevance (0 = pure similarity, 1 = mostly variety); min_score
    drops hits less similar than that cosine."""
    k, page = check_k(k), _check_page(page, k)
    if not 0.0 <= float(diversity) <= 1.0:
        raise QueryError("diversity must be between 0 (off) and 1.")
    gallery = searcher.gallery
    allowed = gallery.mask(filters.categories, filters.match_all, filters.splits) if filters and filters.active() \
        else None
    if allowed is not None and not allowed.any():
        return []
    want = (page + 1) * k
    depth = min(len(gallery), want * 4 if collapse or diversity else want)
    while True:
        scores, rows = _nearest(gallery, np.asarray(vector, np.float32).reshape(1, -1), depth, allowed)
        found = [(float(s), int(r)) for s, r in zip(scores, rows) if r >= 0]
        if min_score is not None:
            found = [(s, r) for s, r in found if s >= float(min_score)]
        if collapse:
            found = _collapse(gallery, found)
        if len(found) >= want or depth >= len(gallery) or min_score is not None and len(found) < depth:
            break
        depth = min(len(gallery), depth * 4)  # duplicates ate the candidates: look deeper
    if diversity:
        found = _mmr(gallery, found, float(diversity), want)
    page_found = found[page * k:want]
    hits = searcher.hits_for(page_found, query_text)
    for offset, hit in enumerate(hits):
        hit.rank = page * k + offset + 1
    return hits


def _nearest(gallery, vector: np.ndarray, depth: int, allowed: np.ndarray | None):
    if allowed is None:
        scores, rows = gallery.search(vector, depth)
        return scores[0], rows[0]
    if isinstance(faiss.downcast_index(gallery.index), faiss.IndexFlat):
        # A bitmap selector inside the flat scan: the k best *matching* images, never a post-filtered shortfall.
        bits = np.packbits(allowed, bitorder="little")
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)))
        scores, rows = gallery.search(vector, depth, params=params)
        return scores[0], rows[0]
    # Approximate indexes can miss matches under a selective filter; score the matching rows exactly instead.
    candidates = np.flatnonzero(allowed)
    scores = np.asarray(gallery.vectors[candidates], np.float32) @ vector[0]
    order = np.argsort(-scores, kind="stable")[:depth]
    return scores[order], candidates[order]


def _collapse(gallery, found: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Greedy: keep a hit unless it is a near-copy (cosine > DUPLICATE_COSINE) of a better one already kept."""
    kept, kept_vectors = [], []
    for score, row in found:
        vector = gallery.vector(row)
        if kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) > DUPLICATE_COSINE:
            continue
        kept.append((score, row))
        kept_vectors.append(vector)
    return kept


def _mmr(gallery, found: list[tuple[float, int]], diversity: float, want: int) -> list[tuple[float, int]]:
    """Maximal marginal relevance: each next hit balances similarity to the query against the closest hit
    already chosen; scores stay the true cosine to the query."""
    if not found:
        return found
    vectors = np.stack([gallery.vector(row) for _, row in found])
    relevance = np.asarray([score for score, _ in found], np.float32)
    chosen: list[int] = [0]
    closest = vectors @ vectors[0]
    while len(chosen) < min(want, len(found)):
        value = (1.0 - diversity) * relevance - diversity * closest
        value[chosen] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        closest = np.maximum(closest, vectors @ vectors[pick])
    return [found[i] for i in chosen]


def _check_page(page, k: int) -> int:
    if isinstance(page, float) and page.is_integer():
        page = int(page)
    if not isinstance(page, int) or isinstance(page, bool) or page < 0:
        raise QueryError("page must be a whole number, 0 for the first page.")
    if (page + 1) * k > MAX_DEPTH:
        raise QueryError(f"Results stop at {MAX_DEPTH}; refine the query instead of paging further.")
    return page


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


__all__ = ["Filters", "Query", "compose", "search", "with_feedback", "MAX_K", "MAX_DEPTH"]
