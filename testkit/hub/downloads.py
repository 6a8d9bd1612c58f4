"""File downloads: `HEAD|GET [/{datasets,spaces}]/{repo}/resolve/{rev}/{path}` with Hub headers, ranges, byte counts."""

# What the real client does with these responses (huggingface_hub 2.4; proofs in tests/test_hub_server.py):
# * HEAD /resolve (no retry) gives `X-Repo-Commit`, `ETag` (cache blob name) and `Content-Length`; then a GET is
#   streamed. On `RemoteProtocolError`/`ConnectError`/timeouts during the GET, `http_get` sleeps 1 s and retries,
#   with `Range: bytes=<written>-` (up to 5 attempts in a row without progress). <written> only counts whole
#   chunks: the body is read in `constants.DOWNLOAD_CHUNK_SIZE` (10 MiB, read at call time) pieces and a partial
#   chunk is dropped, so a file < 10 MiB cut mid-way is re-downloaded from byte 0 WITHOUT a Range header; bigger
#   files resume at the last 10 MiB boundary. Error statuses on the GET (e.g. 500) are NOT retried: HfHubHTTPError
#   at once. A 5xx/429 on the metadata HEAD with nothing cached is retried (once, then with backoff).
#   Nothing verifies the content hash of a plain-HTTP download, only its size.
# * Xet: never advertised (no `X-Xet-*` headers here), so the client never takes the Xet path.
# * Hub unreachable: `snapshot_download` falls back to the cached snapshot of the ref (no error) when the cache has
#   it, and raises LocalEntryNotFoundError (chained from httpx2.ConnectError) when it does not.

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .faults import _CutResponse
from .protocol import RESOLVE_PREFIXES, _HubError


def _parse_range(header: str, total: int) -> tuple[int, int] | None:
    """Single `bytes=a-b` / `bytes=a-` / `bytes=-n` range -> inclusive (start, end); None = serve everything.

    Raises a 416 `_HubError` for unsatisfiable ranges.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unsupported (multi-range, other units): ignore the header, like many servers do
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            length = int(last)
            start, end = max(total - length, 0), total - 1
        else:
            start = int(first)
            end = min(int(last), total - 1) if last else total - 1
    except ValueError:
        return None
    if start >= total or start > end:
        raise _HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{total}"})
    return start, end


def _split_resolve_url(segments: list[str]) -> tuple[str, str, str, str]:
    """URL path segments -> (repo type, repo id, revision, file path); 404 when it is no /resolve URL."""
    if len(segments) >= 5 and segments[0] in RESOLVE_PREFIXES and segments[3] == "resolve":
        return RESOLVE_PREFIXES[segments[0]], "/".join(segments[1:3]), segments[4], "/".join(segments[5:])
    if len(segments) >= 4 and segments[2] == "resolve":
        return "model", "/".join(segments[:2]), segments[3], "/".join(segments[4:])
    raise _HubError(404, f"Not found: /{'/'.join(segments)}")


class Downloads:
    """HubServer's /resolve handler. Uses its `storage`, `bytes_served`, `_readable_repo` and `_take_fault`."""

    async def _resolve(self, request: Request, segments: list[str], token: str | None) -> Response:
        repo_type, repo_id, rev, path = _split_resolve_url(segments)
        if request.method not in ("GET", "HEAD"):
            raise _HubError(405, f"Method {request.method} not allowed on /resolve")

        with self.storage.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            commit = self.storage.resolve(repo, rev)
            commit_header = {"X-Repo-Commit": commit.sha}
            if path not in commit.files:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", headers=commit_header)
            oid = commit.files[path]
            data = self.storage.served_overrides.get((repo_type, repo_id, commit.sha, path), self.storage.blobs[oid])
            cut_bytes = self._take_fault(request.method, repo_id, path, commit_header)

        headers = {
            **commit_header,
            "ETag": f'"{oid}"',  # git blob sha1 of the ORIGINAL content, even when corrupted
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status = 200
        range_header = request.headers.get("range")
        if request.method == "GET" and range_header:
            total = len(data)
            byte_range = _parse_range(range_header, total)
            if byte_range is not None:
                start, end = byte_range
                data = data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{total}"
                status = 206
        if request.method == "GET":
            sent = len(data) if cut_bytes is None else min(cut_bytes, len(data))
            request.state.nbytes = sent
            with self.storage.lock:
                key = (repo_id, path)
                self.bytes_served[key] = self.bytes_served.get(key, 0) + sent
        if cut_bytes is not None:
            return _CutResponse(data, cut_bytes, status, headers)
        # For HEAD, uvicorn drops the body but keeps Content-Length.
        return Response(content=data, status_code=status, headers=headers)
