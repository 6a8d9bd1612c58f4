"""The JSON API under /api: account routes, repo creation, and the read-only repo routes (info, refs, tree, commits)."""

# * The first `build_hf_headers()` call of a process fetches `{constants.ENDPOINT}/api/agent-harnesses` (3 s timeout);
#   this server answers it with an empty registry (tests also pre-seed the client's registry, see tests/conftest.py).
# * Pull requests (seeded with `HubServer.create_pull_request`, never through the HTTP write API) are reachable as
#   the revision `refs/pr/<num>` (and by sha) for /resolve, /tree, /revision and /commits; `GET .../discussions`
#   lists them as the Hub does (one page, newest first, filters `type`, `status`, `author`) and
#   `list_repo_refs(include_pull_requests=True)` gets their refs (`GET .../refs?include_prs=1`). That is all
#   `transformers.safetensors_conversion` reads to find an SFconvertbot conversion PR.
# * Listings are single pages (no pagination `Link` header). Paginated calls (`list_repo_tree`, `list_repo_commits`)
#   and preupload go through `http_backoff`, which retries a ConnectError 5 times with 1+2+4+8+8 s sleeps: avoid
#   those against a stopped server.

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .protocol import API_TYPES, _HubError, iso, normalize_repo_type, truthy
from .storage import _Commit, _Repo, _Storage


class RepoApi:
    """HubServer's /api handlers. Uses its `storage`, `user`, the auth helpers (`_require_token`,
    `_readable_repo`, `_repo_url`) and the write handlers of writes.py (`_write_repo`, `_commit`)."""

    storage: _Storage
    user: str

    async def _api(self, request: Request, segments: list[str], token: str | None) -> Response:
        method = request.method
        if segments == ["repos", "create"] and method == "POST":
            return await self._create_repo(request, token)
        if segments == ["repos", "delete"] and method == "DELETE":
            self._require_token(token)
            payload = await request.json()
            repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
            self.storage.delete_repo(normalize_repo_type(payload.get("type")), repo_id)
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
        if len(segments) >= 3 and segments[0] in API_TYPES:
            repo_type, repo_id, rest = API_TYPES[segments[0]], f"{segments[1]}/{segments[2]}", segments[3:]
            return await self._repo_api(request, repo_type, repo_id, rest, token)
        raise _HubError(404, f"Not found: {method} /api/{'/'.join(segments)}")

    async def _create_repo(self, request: Request, token: str | None) -> Response:
        self._require_token(token)
        payload = await request.json()
        repo_type = normalize_repo_type(payload.get("type"))
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
        """`/api/{type}s/{namespace}/{name}/{action}/...`: `rest` is the path after the repo id."""
        response = await self._read_repo(request, repo_type, repo_id, rest, token)
        if response is None:
            response = await self._write_repo(request, repo_type, repo_id, rest, token)
        if response is None:
            raise _HubError(404, f"Not found: {request.method} {'/'.join(rest)} on {repo_type} {repo_id}")
        return response

    async def _read_repo(
        self, request: Request, repo_type: str, repo_id: str, rest: list[str], token: str | None
    ) -> Response | None:
        """Repo info, refs, discussions, tree, commits and paths-info; None when `rest` names none of them."""
        method, action = request.method, (rest[0] if rest else "")
        storage = self.storage
        params = request.query_params
        if method == "GET" and action in ("", "revision"):
            repo = self._readable_repo(repo_type, repo_id, token)
            revision = "/".join(rest[1:]) if action == "revision" else "main"
            commit = storage.resolve(repo, revision)
            return JSONResponse(self._repo_info(repo, commit, blobs=truthy(params.get("blobs"))))
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
                        if truthy(params.get("include_prs"))
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
                    repo, commit, path, recursive=truthy(params.get("recursive")), expand=truthy(params.get("expand"))
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
                            "date": iso(c.date),
                            "authors": [{"user": c.author}],
                        }
                        for c in storage.history(repo, commit)
                    ]
                )
        if method == "POST" and action == "paths-info" and len(rest) >= 2:
            repo = self._readable_repo(repo_type, repo_id, token)
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
            expand = truthy((form.get("expand") or ["false"])[0])
            with storage.lock:
                commit = storage.resolve(repo, rest[1])
                found = [
                    storage.entry(repo, commit, p.strip("/"), expand=expand)
                    for p in form.get("paths", [])
                    if p.strip("/") in commit.files or (p.strip("/") and storage.is_dir(commit, p.strip("/")))
                ]
            return JSONResponse(found)
        return None

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
                "createdAt": iso(pr.created_at),
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
                "lastModified": iso(commit.date),
                "createdAt": iso(repo.created_at),
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
