"""The Hub's wire conventions: URL prefixes per repo type, date and blob-id formats, and Hub-style error responses."""

# How the real client (huggingface_hub 2.4, checked against its source and tests/test_hub_server.py) reads errors:
# `utils._http.hf_raise_for_status` is driven by the `X-Error-Code` header: `RepoNotFound` -> RepositoryNotFoundError,
# `RevisionNotFound` -> RevisionNotFoundError, `EntryNotFound` -> RemoteEntryNotFoundError; 400 -> BadRequestError;
# anything else (401, 409, 412, 500, ...) -> plain HfHubHTTPError (`err.response.status_code` tells them apart).
# The 401 -> RepositoryNotFoundError shortcut only applies to https:// URLs, so here a missing token on a write
# endpoint surfaces as HfHubHTTPError(401). A stale `parent_commit` surfaces as HfHubHTTPError(412).
# `create_repo(exist_ok=True)` swallows a 409; a 409 whose body contains "another conflicting operation is in
# progress" is retried forever by the client, so never send that text.

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse

# URL segment <-> repo type. Models have no prefix in /resolve URLs but use "models" under /api.
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}


def now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Hub date format, the only one `huggingface_hub.utils.parse_datetime` accepts."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1, as the Hub uses for regular (non-LFS) files (ETag, tree `oid`, preupload `oid`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def normalize_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in URL_PREFIXES:
        raise ValueError(f"Unsupported repo_type {repo_type!r}; expected one of {sorted(URL_PREFIXES)}")
    return repo_type


def validate_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


def truthy(value: str | None) -> bool:
    """A query or form flag as the client sends it ("1", "true", ...)."""
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class _HubError(Exception):
    """Raised by handlers; turned into a Hub-style error response (JSON body + X-Error-* headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code  # X-Error-Code: what the client turns into a specific exception class
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # additional JSON body fields

    def response(self) -> JSONResponse:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return JSONResponse({"error": self.message, **self.extra}, status_code=self.status, headers=headers)
