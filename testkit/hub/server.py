"""HubServer: the loopback Hub's lifecycle (uvicorn in a background thread), request dispatch, auth and records."""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from .api import RepoApi
from .client import patch_client
from .downloads import Downloads
from .faults import DropIncompleteResponseLog, FaultInjection
from .protocol import URL_PREFIXES, _HubError
from .seeding import Seeding
from .storage import _Repo, _Storage
from .writes import RepoWrites

_LOG_FILTER = DropIncompleteResponseLog()


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



class HubServer(RepoApi, RepoWrites, Downloads, FaultInjection, Seeding):
    """Hugging Face Hub-compatible server on 127.0.0.1, for the real `huggingface_hub` client.

    Usage::

        with HubServer() as hub:
            api = HfApi(endpoint=hub.url, token="hf_test")
            ...
            snapshot_download(repo_id, repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)

    Storage survives `stop()`/`start()`; `start()` re-binds the previous port when it can. The handlers and test
    helpers come from the mixins: api.py and writes.py (/api), downloads.py (/resolve), faults.py, seeding.py.
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
        self._cut: dict[str, Any] | None = None
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
        logging.getLogger("uvicorn.error").addFilter(_LOG_FILTER)
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

    def patch_client(self, monkeypatch) -> None:
        """Make huggingface_hub calls WITHOUT `endpoint=` hit this server, for the test's duration (see client.py).
        Call it again after a restart that changed the port."""
        patch_client(self.url, monkeypatch)

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
        return f"{str(request.base_url).rstrip('/')}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"
