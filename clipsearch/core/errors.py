"""The error types of the search core, each message a sentence for the person who can act on it, and first_line."""

from __future__ import annotations


class ArtifactError(ValueError):
    """Artifacts that must not be served; the message says what is wrong and what to do."""


class EncoderError(ValueError):
    """A model that cannot serve as an encoder; the message names the setting that fixes it."""


class ImageError(ValueError):
    """An image that cannot be used; the message is a sentence meant for the person who supplied it."""


class QueryError(ValueError):
    """A query that cannot be answered (bad text, k, filter...); the message is a sentence for its sender."""


class ThumbnailUnavailable(LookupError):
    """A thumbnail that cannot be served now (its pack failed its check, or is not local and cannot be fetched)."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an error's message (the class name when it has none), cut to `limit`."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
