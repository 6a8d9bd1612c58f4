"""In-process Hugging Face Hub-compatible HTTP server for tests (FastAPI + uvicorn in a background thread)."""

# How to point the real `huggingface_hub` client (v2.4.0, checked against its source) at this server
# ------------------------------------------------------------------------------------------------
#
# * Environment variables are mostly read ONCE, at import time, in `huggingface_hub/constants.py`:
#     - `HF_ENDPOINT`        -> `constants.ENDPOINT` and `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by
#                               `hf_hub_url`), `constants.HF_URL_HOSTS` and `utils._http._HUB_ORIGINS`.
#     - `HF_HUB_DISABLE_XET` -> `constants.HF_HUB_DISABLE_XET`.
#     - `HF_HUB_OFFLINE`     -> `constants.HF_HUB_OFFLINE`; it is *checked* at request time through
#                               `constants.is_offline_mode()`, so patching the constant works.
#     - `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`, `HF_TOKEN_PATH`, `HF_HOME`, ... likewise.
#   Only `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` are read at call time (`utils/_auth.py`).
#   => `monkeypatch.setenv("HF_ENDPOINT", ...)` inside a test does NOTHING once huggingface_hub is imported.
#
# * The reliable way is to pass `endpoint=server.url` explicitly: `HfApi(endpoint=...)`,
#   `snapshot_download(..., endpoint=...)`, `hf_hub_download(..., endpoint=...)`. `HfApi.endpoint` is
#   captured at construction; `hf_hub_url` builds the URL from the import-time template and then swaps in
#   the explicit endpoint.
#
# * For code that does not take an `endpoint` argument, `HubServer.patch_client(monkeypatch)` patches
#   `constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE` and the module-level `HfApi` instance
#   behind `huggingface_hub.create_commit` & co. (`hf_api.api`, created at import time), plus the env var.
#
# * Xet: the server never advertises Xet (no `X-Xet-*` headers on /resolve, preupload always answers
#   "regular"), so the client never takes the Xet path whatever `HF_HUB_DISABLE_XET` says. Tests still
#   set it (env var + `constants.HF_HUB_DISABLE_XET`) to be explicit. Files are all "regular" git blobs
#   (the client itself assumes regular files are <= 5 MB, fine for tests), so there is no LFS either.
#
# * The first `build_hf_headers()` call of a process fetches `{constants.ENDPOINT}/api/agent-harnesses`
#   (3 s timeout) and caches it under HF_HOME; tests should pre-seed
#   `huggingface_hub.utils._detect_agent._registry` with an empty registry. The server also answers
#   that route with an empty registry.
#
# Client behaviour this server was checked against (see tests/test_hub_server.py for the proofs):
#
# * Errors go through `utils._http.hf_raise_for_status`, driven by the `X-Error-Code` header:
#   `RepoNotFound` -> RepositoryNotFoundError, `RevisionNotFound` -> RevisionNotFoundError,
#   `EntryNotFound` -> RemoteEntryNotFoundError; 400 -> BadRequestError; anything else (401, 409, 412,
#   500, ...) -> plain HfHubHTTPError (`err.response.status_code` tells them apart). The 401 ->
#   RepositoryNotFoundError shortcut only applies to https:// URLs, so here a missing token on a write
#   endpoint surfaces as HfHubHTTPError(401). A stale `parent_commit` surfaces as HfHubHTTPError(412).
# * `create_repo(exist_ok=True)` swallows a 409; a 409 whose body contains "another conflicting operation
#   is in progress" is retried forever by the client, so never send that text.
# * Downloads: HEAD /resolve (no retry) gives `X-Repo-Commit`, `ETag` (cache blob name) and
#   `Content-Length`; then a GET is streamed. On `RemoteProtocolError`/`ConnectError`/timeouts during the
#   GET, `http_get` sleeps 1 s and retries, with `Range: bytes=<written>-` (up to 5 attempts in a row
#   without progress). <written> only counts whole chunks: the body is read in
#   `constants.DOWNLOAD_CHUNK_SIZE` (10 MiB, read at call time) pieces and a partial chunk is dropped, so a
#   file < 10 MiB cut mid-way is re-downloaded from byte 0 WITHOUT a Range header; bigger files resume at
#   the last 10 MiB boundary. Error statuses on the GET (e.g. 500) are NOT retried: HfHubHTTPError at once.
#   A 5xx/429 on the metadata HEAD with nothing cached is retried (once, then with backoff).
#   Nothing verifies the content hash of a plain-HTTP download, only its size.
# * Hub unreachable: `snapshot_download` falls back to the cached snapshot of the ref (no error) when the
#   cache has it, and raises LocalEntryNotFoundError (chained from httpx2.ConnectError) when it does not.
#   Direct API calls (`HfApi.repo_info`, ...) raise `httpx2.ConnectError`. Paginated calls
#   (`list_repo_tree`, `list_repo_commits`) and preupload go through `http_backoff`, which retries a
#   ConnectError 5 times with 1+2+4+8+8 s sleeps: avoid those against a stopped server.
#
# * Pull requests (seeded with `HubServer.create_pull_request`, never through the HTTP write API): each is a
#   commit on top of its base, reachable as the revision `refs/pr/<num>` (and by its sha) for /resolve, /tree,
#   /revision and /commits; `GET /api/{type}s/{repo}/discussions` lists them as the Hub does (one page, newest
#   first, filters `type`, `status`, `author`) and `list_repo_refs(include_pull_requests=True)` returns their refs
#   (`GET .../refs?include_prs=1`). That is all `transformers.safetensors_conversion` reads to find an
#   SFconvertbot conversion PR.
# * Bytes: every request record carries `nbytes`, the body bytes sent for a /resolve GET; `bytes_served` sums
#   them per (repo_id, file path) and `downloaded(repo_id)` gives that per file of one repo.
#
# Limitations: repo ids must be namespaced ("user/name"); no LFS/Xet upload protocol, no pull requests through
# the write API (`create_pr` is refused), single page listings (no pagination `Link` header), everything is kept
# in memory.

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

__all__ = ["HubServer", "RequestRecord"]

# URL segment <-> repo type. Models have no prefix in /resolve URLs but use "models" under /api.
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}

# Message uvicorn logs when a response is deliberately left incomplete by `cut_after` (filtered out).
_INCOMPLETE_RESPONSE_MSG = "ASGI callable returned without completing response"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    """Hub date format, the only one `huggingface_hub.utils.parse_datetime` accepts."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _git_blob_oid(data: bytes) -> str:
    """Git blob sha1, as the Hub uses for regular (non-LFS) files (ETag, tree `oid`, preupload `oid`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _normalize_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in _URL_PREFIXES:
        raise ValueError(f"Unsupported repo_type {repo_type!r}; expected one of {sorted(_URL_PREFIXES)}")
    return repo_type


def _validate_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _truthy(value: str | None) -> bool:
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
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # additional JSON body fields

    def response(self) -> JSONResponse:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return JSONResponse({"error": self.message, **self.extra}, status_code=self.status, headers=headers)


# ----------------------------------------------------------------------------------------------------------
# Storage: git-like history, fully in memory
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    description: str
    files: dict[str, str]  # full snapshot: path -> blob oid
    date: datetime
    author: str


@dataclass
class _PullRequest:
    num: int
    title: str
    author: str
    status: str  # "open" | "closed" | "merged" | "draft"
    sha: str  # head commit of refs/pr/<num>
    created_at: datetime


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    sdk: str | None = None
    pull_requests: dict[int, _PullRequest] = field(default_factory=dict)  # num -> PR (ref refs/pr/<num>)


class _Storage:
    """Repos keyed by (repo_type, repo_id); content-addressed blobs shared by all repos. Thread-safe."""

    def __init__(self, user: str):
        self.user = user
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git blob oid -> content
        self.sha256_index: dict[str, str] = {}  # sha256 hex -> git blob oid (for `lfsFile` copies)
        # Bytes served instead of the real content (see HubServer.corrupt): (type, id, commit, path) -> bytes
        self.served_overrides: dict[tuple[str, str, str, str], bytes] = {}
        self._counter = 0

    # -- repos --------------------------------------------------------------------------------------------

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False, sdk: str | None = None) -> _Repo:
        """Create a repo with an empty initial commit on `main` (the real Hub always has one); 409 if it exists."""
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise _HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now(), sdk=sdk)
            self.repos[key] = repo
            initial = self._new_commit(repo, parent=None, files={}, title="initial commit", description="")
            repo.branches["main"] = initial.sha
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise _HubError(404, "Repository not found", "RepoNotFound")

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                raise _HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
            return repo

    # -- revisions ----------------------------------------------------------------------------------------

    def resolve(self, repo: _Repo, revision: str) -> _Commit:
        """Branch, tag, refs/heads/*, refs/tags/*, full sha or unique sha prefix (>= 7 chars) -> commit."""
        with self.lock:
            sha: str | None = None
            if revision.startswith("refs/pr/") and revision[len("refs/pr/") :].isdigit():
                pr = repo.pull_requests.get(int(revision[len("refs/pr/") :]))
                sha = pr.sha if pr is not None else None
            elif revision.startswith("refs/heads/"):
                sha = repo.branches.get(revision[len("refs/heads/") :])
            elif revision.startswith("refs/tags/"):
                sha = repo.tags.get(revision[len("refs/tags/") :])
            elif revision in repo.branches:
                sha = repo.branches[revision]
            elif revision in repo.tags:
                sha = repo.tags[revision]
            elif revision.lower() in repo.commits:
                sha = revision.lower()
            elif len(revision) >= 7:
                matches = [s for s in repo.commits if s.startswith(revision.lower())]
                sha = matches[0] if len(matches) == 1 else None
            if sha is None:
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[sha]

    def history(self, repo: _Repo, commit: _Commit) -> list[_Commit]:
        """`commit` and its ancestors, newest first."""
        with self.lock:
            out = [commit]
            while out[-1].parent is not None:
                out.append(repo.commits[out[-1].parent])
            return out

    # -- commits ------------------------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        with self.lock:
            oid = _git_blob_oid(data)
            self.blobs[oid] = data
            self.sha256_index[hashlib.sha256(data).hexdigest()] = oid
            return oid

    def _new_commit(self, repo: _Repo, *, parent: str | None, files: dict[str, str], title: str, description: str):
        self._counter += 1
        seed = json.dumps([self._counter, repo.repo_type, repo.repo_id, parent, sorted(files.items()), title])
        commit = _Commit(
            sha=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            title=title,
            description=description,
            files=files,
            date=_now(),
            author=self.user,
        )
        repo.commits[commit.sha] = commit
        return commit

    def commit(
        self,
        repo: _Repo,
        branch: str,
        operations: Iterable[tuple[str, str, bytes | None]],
        *,
        title: str,
        description: str = "",
        parent_commit: str | None = None,
    ) -> _Commit:
        """Apply ("add", path, data) / ("delete", path, None) / ("delete_folder", path, None) on `branch`.

        `parent_commit`, when given, must match the branch head (full sha or prefix), else HTTP 412 like the Hub.
        """
        with self.lock:
            if branch.startswith("refs/heads/"):
                branch = branch[len("refs/heads/") :]
            if branch not in repo.branches:
                if branch in repo.tags or branch.lower() in repo.commits:
                    raise _HubError(400, f"Cannot commit to {branch!r}: not a branch")
                raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.branches[branch]
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                raise _HubError(
                    412,
                    "A commit has happened since. Please refresh and try again. "
                    f"(parentCommit {parent_commit} is not the head of {branch!r}: {head})",
                )
            files = dict(repo.commits[head].files)
            for kind, path, data in operations:
                path = _validate_path(path.strip("/") if kind == "delete_folder" else path)
                if kind == "add":
                    assert data is not None
                    files[path] = self.add_blob(data)
                elif kind == "delete":
                    if files.pop(path, None) is None:
                        raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif kind == "delete_folder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:  # pragma: no cover - internal misuse
                    raise ValueError(kind)
            commit = self._new_commit(repo, parent=head, files=files, title=title, description=description)
            repo.branches[branch] = commit.sha
            return commit

    # -- tree helpers -------------------------------------------------------------------------------------

    def is_dir(self, commit: _Commit, path: str) -> bool:
        return path == "" or any(p.startswith(path + "/") for p in commit.files)

    def dir_oid(self, commit: _Commit, path: str) -> str:
        # Content-addressed on paths relative to the folder, so identical subtrees share an oid (like git).
        prefix = path + "/" if path else ""
        listing = sorted((p[len(prefix) :], o) for p, o in commit.files.items() if p.startswith(prefix))
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()

    def _state(self, commit: _Commit, path: str) -> str | None:
        """What `path` looks like in `commit` (file oid, dir content hash or None); used for `lastCommit`."""
        if path in commit.files:
            return "f:" + commit.files[path]
        if path and self.is_dir(commit, path):
            return "d:" + self.dir_oid(commit, path)
        return None

    def last_commit(self, repo: _Repo, commit: _Commit, path: str) -> _Commit:
        """Oldest ancestor of `commit` from which `path` is unchanged, i.e. the commit that last touched it."""
        state = self._state(commit, path)
        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if self._state(parent, path) != state:
                break
            current = parent
        return current

    def entry(self, repo: _Repo, commit: _Commit, path: str, *, expand: bool) -> dict[str, Any]:
        """Tree / paths-info entry in the Hub JSON format (`RepoFile` / `RepoFolder` kwargs)."""
        if path in commit.files:
            oid = commit.files[path]
            item: dict[str, Any] = {"type": "file", "oid": oid, "size": len(self.blobs[oid]), "path": path}
        else:
            item = {"type": "directory", "oid": self.dir_oid(commit, path), "path": path}
        if expand:
            last = self.last_commit(repo, commit, path)
            item["lastCommit"] = {"id": last.sha, "title": last.title, "date": _iso(last.date)}
        return item

    def tree(self, repo: _Repo, commit: _Commit, path: str, *, recursive: bool, expand: bool) -> list[dict]:
        path = path.strip("/")
        if path and not self.is_dir(commit, path):
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = path + "/" if path else ""
        dirs: set[str] = set()
        files: list[str] = []
        for file_path in commit.files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            if recursive:
                files.append(file_path)
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            elif len(parts) == 1:
                files.append(file_path)
            else:
                dirs.add(prefix + parts[0])
        # Like the Hub: folders first, then files, each sorted by path.
        return [self.entry(repo, commit, p, expand=expand) for p in sorted(dirs) + sorted(files)]


# ----------------------------------------------------------------------------------------------------------
# HTTP layer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request seen by the server (for assertions in tests)."""

    method: str
    path: str  # percent-decoded path, without query string
    query: str
    status: int
    range: str | None  # the `Range` request header, if any
    token: str | None  # bearer token, if any
    nbytes: int = 0  # body bytes sent (file content of a /resolve GET; 0 for HEAD, errors and API calls)


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


class _DropIncompleteResponseLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _INCOMPLETE_RESPONSE_MSG not in record.getMessage()


_log_filter = _DropIncompleteResponseLog()


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


class HubServer:
    """Hugging Face Hub-compatible server on 127.0.0.1, for the real `huggingface_hub` client.

    Usage::

        with HubServer() as hub:
            api = HfApi(endpoint=hub.url, token="hf_test")
            ...
            snapshot_download(repo_id, repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)

    Storage survives `stop()`/`start()`; `start()` re-binds the previous port when it can.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        valid_tokens: Iterable[str] | None = None,
        user: str = "test-user",
        private_by_default: Iterable[str] = (),
    ):
        """`port=0` picks a free port. `valid_tokens`: if given, any other bearer token gets a 401
        "Invalid credentials in Authorization header"; by default any non-empty token is accepted.
        `user` is the namespace used by `create_repo` without an organization and reported by whoami.
        `private_by_default`: namespaces whose new repos are private when the create request carries no visibility
        (an organisation's "private by default" setting); a mutable set, also after start."""
        self.host = host
        self._port = port
        self.valid_tokens = set(valid_tokens) if valid_tokens is not None else None
        self.user = user
        self.private_by_default: set[str] = set(private_by_default)
        self.create_requests: list[dict] = []  # the JSON body of every POST /api/repos/create, in order
        self.storage = _Storage(user)
        self.tokens_seen: list[str] = []  # bearer token of every request that carried one, in order
        self.requests: list[RequestRecord] = []
        # Body bytes sent by /resolve GETs, per (repo_id, file path in the repo), whatever the revision.
        self.bytes_served: dict[tuple[str, str], int] = {}
        self._fail: dict[str, Any] | None = None
        self._cut: dict[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.app = self._build_app()

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("HubServer has not been started yet (no port assigned)")
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _bind(self) -> socket.socket:
        """Bind the previous port if any (retrying briefly), else a free one."""
        deadline = time.monotonic() + 2.0
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self._port))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    warnings.warn(f"HubServer: port {self._port} is taken, restarting on a new port", stacklevel=3)
                    self._port = 0
                else:
                    time.sleep(0.05)
        self._port = sock.getsockname()[1]
        return sock

    def start(self) -> HubServer:
        if self.running:
            return self
        logging.getLogger("uvicorn.error").addFilter(_log_filter)
        self._socket = self._bind()
        config = uvicorn.Config(
            self.app,
            log_config=None,  # leave logging configuration to pytest
            access_log=False,
            http="h11",
            ws="none",
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"HubServer:{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("HubServer failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving: closes the listening socket and open connections; later connections are refused."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"HubServer({self.host}:{self._port}, {state}, {len(self.storage.repos)} repos)"

    # -- test helpers: seeding & inspection -------------------------------------------------------------

    def create_repo(
        self, repo_id: str, repo_type: str | None = "dataset", *, private: bool = False, exist_ok: bool = True
    ) -> None:
        """Create a repo directly in storage (no HTTP, no auth)."""
        repo_type = _normalize_repo_type(repo_type)
        with self.storage.lock:
            if exist_ok and (repo_type, repo_id) in self.storage.repos:
                return
            self.storage.create_repo(repo_type, repo_id, private=private)

    def put_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        repo_type: str | None = "dataset",
        message: str = "Upload files",
        *,
        branch: str = "main",
        delete: Iterable[str] = (),
        private: bool = False,
    ) -> str:
        """Commit `files` (and delete `delete` paths) on `branch`, creating the repo if needed. Returns the sha."""
        repo_type = _normalize_repo_type(repo_type)
        with self.storage.lock:
            self.create_repo(repo_id, repo_type, private=private, exist_ok=True)
            repo = self.storage.get_repo(repo_type, repo_id)
            ops = [("add", p, bytes(d)) for p, d in files.items()] + [("delete", p, None) for p in delete]
            return self.storage.commit(repo, branch, ops, title=message).sha

    def create_tag(self, repo_id: str, tag: str, revision: str = "main", repo_type: str | None = "dataset") -> str:
        """Tag `revision` directly in storage. Returns the tagged commit sha."""
        with self.storage.lock:
            repo = self.storage.get_repo(_normalize_repo_type(repo_type), repo_id)
            repo.tags[tag] = self.storage.resolve(repo, revision).sha
            return repo.tags[tag]

    def create_pull_request(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        repo_type: str | None = "dataset",
        *,
        title: str = "Upload files",
        author: str | None = None,
        base: str = "main",
        status: str = "open",
        delete: Iterable[str] = (),
        num: int | None = None,
    ) -> tuple[int, str]:
        """Open pull request: one commit adding `files` (and deleting `delete`) on top of `base`, reachable as
        `refs/pr/<num>`; no branch moves. Numbers follow the Hub (one counter per repo, from 1) unless `num` is
        given (to replay a real repo's numbering). Returns (num, head commit sha)."""
        if status not in ("open", "closed", "merged", "draft"):
            raise ValueError(f"status {status!r}: expected open, closed, merged or draft")
        repo_type = _normalize_repo_type(repo_type)
        with self.storage.lock:
            repo = self.storage.get_repo(repo_type, repo_id)
            parent = self.storage.resolve(repo, base)
            snapshot = dict(parent.files)
            for path, data in files.items():
                snapshot[_validate_path(path)] = self.storage.add_blob(bytes(data))
            for path in delete:
                del snapshot[path]
            commit = self.storage._new_commit(repo, parent=parent.sha, files=snapshot, title=title, description="")
            if num is None:
                num = max(repo.pull_requests, default=0) + 1
            elif num in repo.pull_requests or num < 1:
                raise ValueError(f"pull request number {num} is taken or invalid")
            repo.pull_requests[num] = _PullRequest(num=num, title=title, author=author or self.user, status=status,
                                                   sha=commit.sha, created_at=_now())
            return num, commit.sha

    def set_pull_request_status(self, repo_id: str, num: int, status: str, repo_type: str | None = "dataset"):
        """Close / reopen a pull request directly in storage (its ref stays readable, as on the Hub)."""
        with self.storage.lock:
            self.storage.get_repo(_normalize_repo_type(repo_type), repo_id).pull_requests[num].status = status

    def downloaded(self, repo_id: str) -> dict[str, int]:
        """{file path: body bytes sent by /resolve GETs} for one repo, whatever the revision asked for."""
        with self.storage.lock:
            return {path: n for (repo, path), n in self.bytes_served.items() if repo == repo_id}

    def head(self, repo_id: str, repo_type: str | None = "dataset", revision: str = "main") -> str:
        """Commit sha that `revision` (branch, tag, sha) currently points to."""
        repo = self.storage.get_repo(_normalize_repo_type(repo_type), repo_id)
        return self.storage.resolve(repo, revision).sha

    def files(self, repo_id: str, repo_type: str | None = "dataset", revision: str = "main") -> dict[str, bytes]:
        """Stored snapshot {path: bytes} at `revision` (the real content, ignoring `corrupt`)."""
        with self.storage.lock:
            repo = self.storage.get_repo(_normalize_repo_type(repo_type), repo_id)
            commit = self.storage.resolve(repo, revision)
            return {p: self.storage.blobs[o] for p, o in commit.files.items()}

    def commit_count(self, repo_id: str, repo_type: str | None = "dataset", branch: str = "main") -> int:
        """Number of commits in the history of `branch`, including the initial commit made by repo creation."""
        with self.storage.lock:
            repo = self.storage.get_repo(_normalize_repo_type(repo_type), repo_id)
            return len(self.storage.history(repo, self.storage.resolve(repo, branch)))

    # -- test helpers: fault injection -----------------------------------------------------------------

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
        repo_type = _normalize_repo_type(repo_type)
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

    def patch_client(self, monkeypatch) -> None:
        """Make huggingface_hub calls WITHOUT `endpoint=` hit this server, for the test's duration.

        Patches the import-time constants (see module header) and the module-level `HfApi` instance. Call it
        again after a restart that changed the port.
        """
        from huggingface_hub import constants, hf_api

        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        # A single catch-all route: the Hub URL space (model repos without prefix, "%2F"-encoded revisions,
        # file paths with slashes) is easier to parse by hand from the raw path than with path templates.
        @app.api_route("/{full_path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
        async def dispatch(request: Request) -> Response:
            return await self._dispatch(request)

        return app

    async def _dispatch(self, request: Request) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        segments = [unquote(s) for s in raw_path.decode("latin-1").split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        token = self._bearer_token(request)
        if token is not None:
            self.tokens_seen.append(token)
        try:
            if self.valid_tokens is not None and token is not None and token not in self.valid_tokens:
                raise _HubError(401, "Invalid credentials in Authorization header")
            if segments[:1] == ["api"]:
                response = await self._api(request, segments[1:], token)
            else:
                response = await self._resolve(request, segments, token)
        except _HubError as err:
            response = err.response()
        except (ValueError, KeyError, TypeError) as err:  # malformed JSON / NDJSON / missing payload fields
            response = _HubError(400, f"Bad request: {err!r}").response()
        self.requests.append(
            RequestRecord(
                method=request.method,
                path=unquote(raw_path.decode("latin-1")),
                query=request.url.query,
                status=response.status_code,
                range=request.headers.get("range"),
                token=token,
                nbytes=getattr(request.state, "nbytes", 0),
            )
        )
        return response

    @staticmethod
    def _bearer_token(request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None

    def _readable_repo(self, repo_type: str, repo_id: str, token: str | None) -> _Repo:
        """Repo for a read; a private repo without token looks missing (401 + RepoNotFound, like the Hub)."""
        repo = self.storage.get_repo(repo_type, repo_id)
        if repo.private and token is None:
            raise _HubError(401, f"Repository not found: {repo_id} is private", "RepoNotFound")
        return repo

    @staticmethod
    def _require_token(token: str | None) -> None:
        if token is None:
            raise _HubError(401, "Unauthorized: this endpoint needs an 'Authorization: Bearer <token>' header")

    def _repo_url(self, request: Request, repo: _Repo) -> str:
        # Built from the Host the client used, so `RepoUrl(..., endpoint=...)` recognizes it.
        return f"{str(request.base_url).rstrip('/')}/{_URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    async def _api(self, request: Request, segments: list[str], token: str | None) -> Response:
        method = request.method
        if segments == ["repos", "create"] and method == "POST":
            return await self._create_repo(request, token)
        if segments == ["repos", "delete"] and method == "DELETE":
            self._require_token(token)
            payload = await request.json()
            repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
            self.storage.delete_repo(_normalize_repo_type(payload.get("type")), repo_id)
            return JSONResponse({})
        if segments == ["validate-yaml"] and method == "POST":
            return JSONResponse({"errors": [], "warnings": []})
        if segments == ["whoami-v2"] and method == "GET":
            self._require_token(token)
            return JSONResponse(
                {"type": "user", "name": self.user, "orgs": [], "auth": {"accessToken": {"role": "write"}}}
            )
        if segments == ["agent-harnesses"] and method == "GET":
            return JSONResponse({"standardEnvVars": [], "harnesses": {}})
        if len(segments) >= 3 and segments[0] in _API_TYPES:
            repo_type, repo_id, rest = _API_TYPES[segments[0]], f"{segments[1]}/{segments[2]}", segments[3:]
            return await self._repo_api(request, repo_type, repo_id, rest, token)
        raise _HubError(404, f"Not found: {method} /api/{'/'.join(segments)}")

    async def _create_repo(self, request: Request, token: str | None) -> Response:
        self._require_token(token)
        payload = await request.json()
        repo_type = _normalize_repo_type(payload.get("type"))
        self.create_requests.append(dict(payload))
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload['name']}"
        if "visibility" in payload or "private" in payload:
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
        else:  # no visibility asked for: the namespace's default, like the Hub
            private = namespace in self.private_by_default
        try:
            repo = self.storage.create_repo(repo_type, repo_id, private=private, sdk=payload.get("sdk"))
        except _HubError as err:
            # `create_repo(exist_ok=True)` swallows the 409 and then still reads `url` from the body.
            if err.status == 409:
                err.extra["url"] = self._repo_url(request, self.storage.get_repo(repo_type, repo_id))
            raise
        return JSONResponse({"url": self._repo_url(request, repo), "name": repo_id, "id": repo_id})

    async def _repo_api(
        self, request: Request, repo_type: str, repo_id: str, rest: list[str], token: str | None
    ) -> Response:
        method, action = request.method, (rest[0] if rest else "")
        storage = self.storage
        params = request.query_params

        # ---- reads ----
        if method == "GET" and action in ("", "revision"):
            repo = self._readable_repo(repo_type, repo_id, token)
            revision = "/".join(rest[1:]) if action == "revision" else "main"
            commit = storage.resolve(repo, revision)
            return JSONResponse(self._repo_info(repo, commit, blobs=_truthy(params.get("blobs"))))
        if method == "GET" and action == "refs":
            repo = self._readable_repo(repo_type, repo_id, token)
            with storage.lock:
                return JSONResponse(
                    {
                        "branches": [
                            {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()
                        ],
                        "converts": [],
                        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()],
                        "pullRequests": [
                            {"name": str(n), "ref": f"refs/pr/{n}", "targetCommit": pr.sha}
                            for n, pr in sorted(repo.pull_requests.items())
                        ]
                        if _truthy(params.get("include_prs"))
                        else [],
                    }
                )
        if method == "GET" and action == "discussions" and len(rest) == 1:
            repo = self._readable_repo(repo_type, repo_id, token)
            return JSONResponse(self._discussions(repo, params))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            repo = self._readable_repo(repo_type, repo_id, token)
            with storage.lock:
                commit = storage.resolve(repo, rest[1])
                path = "/".join(rest[2:])
                entries = storage.tree(
                    repo, commit, path, recursive=_truthy(params.get("recursive")), expand=_truthy(params.get("expand"))
                )
            return JSONResponse(entries)
        if method == "GET" and action == "commits":
            repo = self._readable_repo(repo_type, repo_id, token)
            with storage.lock:
                commit = storage.resolve(repo, "/".join(rest[1:]) or "main")
                return JSONResponse(
                    [
                        {
                            "id": c.sha,
                            "title": c.title,
                            "message": c.description,
                            "date": _iso(c.date),
                            "authors": [{"user": c.author}],
                        }
                        for c in storage.history(repo, commit)
                    ]
                )
        if method == "POST" and action == "paths-info" and len(rest) >= 2:
            repo = self._readable_repo(repo_type, repo_id, token)
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
            expand = _truthy((form.get("expand") or ["false"])[0])
            with storage.lock:
                commit = storage.resolve(repo, rest[1])
                found = [
                    storage.entry(repo, commit, p.strip("/"), expand=expand)
                    for p in form.get("paths", [])
                    if p.strip("/") in commit.files or (p.strip("/") and storage.is_dir(commit, p.strip("/")))
                ]
            return JSONResponse(found)

        # ---- writes (token required, checked before the repo lookup) ----
        if method == "POST" and action == "preupload" and len(rest) >= 2:
            self._require_token(token)
            repo = storage.get_repo(repo_type, repo_id)
            payload = await request.json()
            with storage.lock:
                commit = storage.resolve(repo, rest[1])
                files = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",  # never "lfs": no LFS/Xet upload protocol here
                        "shouldIgnore": False,
                        "oid": commit.files.get(f["path"]),  # lets the client skip unchanged files
                    }
                    for f in payload.get("files", [])
                ]
            return JSONResponse({"files": files, "commitOid": commit.sha})
        if method == "POST" and action == "commit" and len(rest) >= 2:
            return await self._commit(request, repo_type, repo_id, rest[1], token)
        if action == "tag" and len(rest) >= 2 and method in ("POST", "DELETE"):
            self._require_token(token)
            repo = storage.get_repo(repo_type, repo_id)
            with storage.lock:
                if method == "DELETE":
                    if repo.tags.pop(rest[1], None) is None:
                        raise _HubError(404, f"Tag not found: {rest[1]}", "RevisionNotFound")
                    return JSONResponse({})
                payload = await request.json()
                tag = payload["tag"]
                if tag in repo.tags:
                    raise _HubError(409, f"Tag {tag} already exists")
                repo.tags[tag] = storage.resolve(repo, rest[1]).sha
            return JSONResponse({})
        if action == "settings" and method == "PUT":  # update_repo_settings: gated and visibility
            self._require_token(token)
            repo = storage.get_repo(repo_type, repo_id)
            payload = json.loads(await request.body() or b"{}")
            if "visibility" in payload or "private" in payload:
                repo.private = payload.get("visibility") == "private" or bool(payload.get("private"))
            return JSONResponse({})
        if action == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
            self._require_token(token)
            repo = storage.get_repo(repo_type, repo_id)
            branch = "/".join(rest[1:])
            with storage.lock:
                if method == "DELETE":
                    if branch == "main" or repo.branches.pop(branch, None) is None:
                        raise _HubError(400 if branch == "main" else 404, f"Cannot delete branch {branch}")
                    return JSONResponse({})
                if branch.startswith("refs/"):
                    raise _HubError(400, f"Invalid reference for a branch: {branch}")
                if branch in repo.branches:
                    raise _HubError(409, f"Branch {branch} already exists")
                payload = json.loads(await request.body() or b"{}")
                repo.branches[branch] = storage.resolve(repo, payload.get("startingPoint") or "main").sha
            return JSONResponse({})
        raise _HubError(404, f"Not found: {method} {'/'.join(rest)} on {repo_type} {repo_id}")

    def _discussions(self, repo: _Repo, params) -> dict[str, Any]:
        """One page of the Hub's discussion listing: pull requests only here (this server has no plain
        discussions), newest first, with the `type`, `status` and `author` filters the client sends."""
        kind, status, author = params.get("type"), params.get("status"), params.get("author")
        with self.storage.lock:
            prs = sorted(repo.pull_requests.values(), key=lambda pr: pr.num, reverse=True)
        if kind == "discussion":
            prs = []
        if status in ("open", "closed"):
            prs = [pr for pr in prs if (pr.status in ("open", "draft")) == (status == "open")]
        if author:
            prs = [pr for pr in prs if pr.author == author]
        items = [
            {
                "num": pr.num,
                "title": pr.title,
                "status": pr.status,
                "author": {"name": pr.author},
                "createdAt": _iso(pr.created_at),
                "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "isPullRequest": True,
                "pinned": False,
                "numComments": 1,
            }
            for pr in prs
        ]
        return {"discussions": items, "count": len(items), "start": 0, "numClosedDiscussions": 0}

    def _repo_info(self, repo: _Repo, commit: _Commit, *, blobs: bool) -> dict[str, Any]:
        with self.storage.lock:
            siblings = []
            for path in sorted(commit.files):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(self.storage.blobs[commit.files[path]]), blobId=commit.files[path])
                siblings.append(sibling)
            info: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(self.storage.blobs[o]) for o in set(commit.files.values())),
            }
            if repo.repo_type == "space":
                info["sdk"] = repo.sdk
            return info

    async def _commit(self, request: Request, repo_type: str, repo_id: str, revision: str, token: str | None):
        self._require_token(token)
        repo = self.storage.get_repo(repo_type, repo_id)
        if _truthy(request.query_params.get("create_pr")):
            raise _HubError(400, "Pull requests are not supported by the test Hub server")
        header: dict[str, Any] | None = None
        operations: list[tuple[str, str, bytes | None]] = []
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                operations.append(("add", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                # Only possible for copies of files already stored here (we never ask for LFS uploads).
                oid = self.storage.sha256_index.get(value.get("oid", ""))
                if oid is None:
                    raise _HubError(400, f"LFS upload is not supported; unknown LFS oid for {value.get('path')}")
                operations.append(("add", value["path"], self.storage.blobs[oid]))
            elif key == "deletedFile":
                operations.append(("delete", value["path"], None))
            elif key == "deletedFolder":
                operations.append(("delete_folder", value["path"], None))
            else:
                raise _HubError(400, f"Unknown commit operation key {key!r}")
        if header is None or not header.get("summary"):
            raise _HubError(400, "Commit payload must start with a header containing a summary")
        commit = self.storage.commit(
            repo,
            revision,
            operations,
            title=header["summary"],
            description=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
        )
        return JSONResponse(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self._repo_url(request, repo)}/commit/{commit.sha}",
                "pullRequestUrl": None,
            }
        )

    async def _resolve(self, request: Request, segments: list[str], token: str | None) -> Response:
        """`[/{datasets,spaces}]/{namespace}/{name}/resolve/{revision}/{path...}` (HEAD and GET)."""
        if len(segments) >= 5 and segments[0] in _RESOLVE_PREFIXES and segments[3] == "resolve":
            repo_type, repo_id = _RESOLVE_PREFIXES[segments[0]], "/".join(segments[1:3])
            rev, path_parts = segments[4], segments[5:]
        elif len(segments) >= 4 and segments[2] == "resolve":
            repo_type, repo_id = "model", "/".join(segments[:2])
            rev, path_parts = segments[3], segments[4:]
        else:
            raise _HubError(404, f"Not found: /{'/'.join(segments)}")
        if request.method not in ("GET", "HEAD"):
            raise _HubError(405, f"Method {request.method} not allowed on /resolve")
        path = "/".join(path_parts)

        with self.storage.lock:
            repo = self._readable_repo(repo_type, repo_id, token)
            commit = self.storage.resolve(repo, rev)
            commit_header = {"X-Repo-Commit": commit.sha}
            if path not in commit.files:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", headers=commit_header)
            oid = commit.files[path]
            data = self.storage.served_overrides.get((repo_type, repo_id, commit.sha, path), self.storage.blobs[oid])

            # Fault injection, consumed only by matching requests.
            fail = self._fail
            if fail is not None and request.method in fail["methods"] and fail["remaining"] > 0:
                fail["remaining"] -= 1
                raise _HubError(fail["status"], f"Injected failure (HTTP {fail['status']})", headers=commit_header)
            cut_bytes: int | None = None
            cut = self._cut
            if request.method == "GET" and cut is not None and cut["remaining"] > 0 \
                    and not (cut["once_per_file"] and (repo_id, path) in cut["cut"]):
                cut["remaining"] -= 1
                cut["cut"].add((repo_id, path))
                cut_bytes = cut["nbytes"]

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
