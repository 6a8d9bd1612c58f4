"""What a search asks for, checked once at the boundary: text, k, composed queries, filters, paging, result shape."""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from .errors import QueryError

MAX_K = 50
MAX_DEPTH = 1000  # paging stops here: nobody reads result 1001, and deeper searches only cost time
MAX_QUERY_CHARS = 1000  # longer text is cut here, then truncated again to the model's context by the tokenizer
# Invisible characters that only ever stand for a space (zero-width space, word joiner, byte-order mark).
_INVISIBLE_SPACES = frozenset("\u200b\u2060\ufeff")


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

    def plain_text(self) -> bool:
        """A description alone (no pictures, no negative)."""
        return bool(self.text and self.text.strip()) and not self.images and not (self.negative or "").strip()

    def calibrated_as(self) -> str | None:
        """The build's calibration that speaks for this query's hits: "text" for a description alone, "image" for one
        picture alone; None for a mix (no pairs calibrate those)."""
        if self.plain_text():
            return "text"
        alone = not (self.text or "").strip() and not (self.negative or "").strip()
        return "image" if alone and len(self.images) == 1 else None


@dataclass(frozen=True)
class Plan:
    """Which hits to return for a query vector: page `page` (0-based) of k, among the filtered rows, optionally
    without near-duplicates (collapse), re-ranked for variety (diversity 0..1), cut at a minimum cosine or at a
    minimum confidence (hits that carry one). Build it with Plan.checked, which validates every field with a
    sentence for the caller."""

    k: int = 5
    page: int = 0
    filters: Filters = field(default_factory=Filters)
    collapse: bool = False
    diversity: float = 0.0
    min_score: float | None = None
    min_confidence: float | None = None

    @classmethod
    def checked(cls, k, page=0, filters: Filters | None = None, collapse=False, diversity=0.0,
                min_score=None, min_confidence=None) -> Plan:
        k = check_k(k)
        if not 0.0 <= float(diversity or 0.0) <= 1.0:
            raise QueryError("diversity must be between 0 (off) and 1.")
        if not 0.0 <= float(min_confidence or 0.0) <= 1.0:
            raise QueryError("min_confidence must be between 0 (off) and 1.")
        return cls(k=k, page=check_page(page, k), filters=filters or Filters(), collapse=bool(collapse),
                   diversity=float(diversity or 0.0), min_score=float(min_score) if min_score else None,
                   min_confidence=float(min_confidence) if min_confidence else None)

    def next_page(self) -> Plan:
        return dataclasses.replace(self, page=check_page(self.page + 1, self.k))

    @property
    def first_rank(self) -> int:
        return self.page * self.k + 1


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity (Gradio hashes state values), arrays are not
class Paging:
    """A search the visitor can page on or refine: the query vector, the text used for choosing captions, the plan,
    and which calibrated confidence its hits get (a plain description's or a lone picture's)."""

    vector: np.ndarray
    text: str | None
    plan: Plan
    calibrated: str | None = None  # the calibration its hits get: "text", "image" (Query.calibrated_as) or none


def _blank(ch: str) -> bool:
    """A character read as a space: control characters (C0, C1, DEL), lone surrogates (no tokenizer can encode
    them) and the invisible spaces."""
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _INVISIBLE_SPACES


def clean_text(text) -> str:
    """A text query as the tokenizer gets it: control characters become spaces and runs of whitespace one space;
    everything else stays as typed, in any script (no case folding, no Unicode normalisation: the joiners of emoji
    sequences and of Persian and Indic words, right-to-left marks, combining marks and characters newer than this
    Python's Unicode tables all carry meaning). Text with nothing visible in it is a QueryError with a sentence."""
    if not isinstance(text, str):
        raise QueryError("The query must be text.")
    text = text[:4 * MAX_QUERY_CHARS]  # cut before any per-character work: a 10 MB query costs no more than 4 kB
    text = " ".join("".join(" " if _blank(ch) else ch for ch in text).split())
    if all(ch == " " or unicodedata.category(ch) == "Cf" for ch in text):  # empty, or format characters alone
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


def check_page(page, k: int) -> int:
    if page is None:
        return 0
    if isinstance(page, float) and page.is_integer():
        page = int(page)
    if not isinstance(page, (int, np.integer)) or isinstance(page, bool) or page < 0:
        raise QueryError("page must be a whole number, 0 for the first page.")
    if (page + 1) * k > MAX_DEPTH:
        raise QueryError(f"Results stop at {MAX_DEPTH}; refine the query instead of paging further.")
    return int(page)


def check_weights(query: Query) -> None:
    if not 0.0 <= float(query.image_weight) <= 1.0 or not 0.0 <= float(query.negative_weight) <= 2.0:
        raise QueryError("image_weight must be between 0 and 1, and negative_weight between 0 and 2.")
