"""Fault injection on file downloads: error statuses, connections cut mid-body, and corrupted bytes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import Response

from .protocol import _HubError, normalize_repo_type
from .storage import _Storage

# Message uvicorn logs when a response is deliberately left incomplete by `cut_after` (filtered out).
INCOMPLETE_RESPONSE_MSG = "ASGI callable returned without completing response"


class _CutResponse(Response):
    """Advertises the full Content-Length, sends only `nbytes` of body, then drops the connection.

    Returning from the ASGI call without the final `more_body=False` message makes uvicorn close the transport
    (after flushing what was sent), which the client sees as `httpx2.RemoteProtocolError` ("peer closed
    connection without sending complete message body").
    """

    def __init__(self, content: bytes, nbytes: int, status_code: int, headers: Mapping[str, str]):
        super().__init__(content=content, status_code=status_code, headers=dict(headers))
        self.nbytes = nbytes

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.nbytes > 0:
            await send({"type": "http.response.body", "body": self.body[: self.nbytes], "more_body": True})
        # Deliberately no final body message: uvicorn closes the connection.


class DropIncompleteResponseLog(logging.Filter):
    """Keeps uvicorn's error log quiet about the responses `cut_after` leaves incomplete on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return INCOMPLETE_RESPONSE_MSG not in record.getMessage()


class FaultInjection:
    """HubServer's fault switches. Each is consumed only by the /resolve requests it matches (see downloads.py)."""

    storage: _Storage
    _fail: dict[str, Any] | None  # pending fail_next: remaining count, status, methods
    _cut: dict[str, Any] | None  # pending cut_after: nbytes, remaining count, once_per_file, files already cut

    def fail_next(self, n: int, status: int = 500, *, methods: Iterable[str] = ("GET",)) -> None:
        """The next `n` /resolve requests with one of `methods` (GET only by default, not the HEAD metadata
        call) answer `status` with an error body. Replaces any pending `fail_next`."""
        with self.storage.lock:
            self._fail = {"remaining": n, "status": status, "methods": {m.upper() for m in methods}}

    def cut_after(self, nbytes: int, times: int = 1, *, once_per_file: bool = False) -> None:
        """The next `times` /resolve GETs advertise the full length, send `nbytes` of body, then drop the
        connection; with `once_per_file`, a file's resumed GET is never cut again (whatever order the client
        fetches files in). Replaces any pending `cut_after`."""
        with self.storage.lock:
            self._cut = {"nbytes": nbytes, "remaining": times, "once_per_file": once_per_file, "cut": set()}

    def corrupt(self, repo_id: str, path: str, repo_type: str | None = "dataset", revision: str = "main") -> bytes:
        """From now on, serve `path` at `revision`'s commit with flipped bytes (same size), while ETag,
        X-Repo-Commit, tree oid and Content-Length still describe the original. Returns the corrupted bytes."""
        repo_type = normalize_repo_type(repo_type)
        with self.storage.lock:
            repo = self.storage.get_repo(repo_type, repo_id)
            commit = self.storage.resolve(repo, revision)
            if path not in commit.files:
                raise KeyError(f"{path!r} not in {repo_type} {repo_id}@{revision}")
            data = bytearray(self.storage.blobs[commit.files[path]])
            if not data:
                raise ValueError("cannot corrupt an empty file without changing its size")
            for i in {0, len(data) // 2, len(data) - 1}:
                data[i] ^= 0xFF
            self.storage.served_overrides[(repo_type, repo_id, commit.sha, path)] = bytes(data)
            return bytes(data)

    def reset_faults(self) -> None:
        """Cancel pending `fail_next` / `cut_after` and undo every `corrupt`."""
        with self.storage.lock:
            self._fail = self._cut = None
            self.storage.served_overrides.clear()

    def _take_fault(self, method: str, repo_id: str, path: str, headers: Mapping[str, str]) -> int | None:
        """Consume the pending fault this download matches (call with the storage lock held): raises the
        injected error status, or returns how many body bytes to send before cutting (None: no cut)."""
        fail = self._fail
        if fail is not None and method in fail["methods"] and fail["remaining"] > 0:
            fail["remaining"] -= 1
            raise _HubError(fail["status"], f"Injected failure (HTTP {fail['status']})", headers=headers)
        cut = self._cut
        if method == "GET" and cut is not None and cut["remaining"] > 0 \
                and not (cut["once_per_file"] and (repo_id, path) in cut["cut"]):
            cut["remaining"] -= 1
            cut["cut"].add((repo_id, path))
            return cut["nbytes"]
        return None
