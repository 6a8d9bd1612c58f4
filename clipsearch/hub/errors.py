"""Reading huggingface_hub's errors: whether the Hub was simply out of reach, or answered no."""

from __future__ import annotations

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def hub_unreachable(error: BaseException) -> bool:
    """True for 'the Hub cannot be reached now' (no network, offline mode, a dropped connection, a 5xx or 429), as
    opposed to an answer saying that what was asked for does not exist or is refused."""
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)) or \
        type(error).__module__.startswith(("httpx", "httpcore", "requests", "urllib3"))
