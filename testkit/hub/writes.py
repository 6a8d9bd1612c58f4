"""The write routes of the JSON API: preupload, NDJSON commits, tags and branches (all need a bearer token)."""

# Uploads: the server never asks for LFS or Xet (preupload always answers "regular"), so every file travels base64
# inside the commit NDJSON (the client itself assumes regular files are <= 5 MB, fine for tests). Pull requests are
# refused through this API (`create_pr`); seed them with HubServer.create_pull_request instead.

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .protocol import _HubError, truthy
from .storage import _Storage


class RepoWrites:
    """HubServer's write handlers. Uses its `storage`, `_require_token` and `_repo_url`."""

    storage: _Storage

    async def _write_repo(
        self, request: Request, repo_type: str, repo_id: str, rest: list[str], token: str | None
    ) -> Response | None:
        """Preupload, commit, tag and branch (token required, checked before the repo lookup); None when `rest`
        names none of them."""
        method, action = request.method, (rest[0] if rest else "")
        storage = self.storage
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
        return None


    async def _commit(self, request: Request, repo_type: str, repo_id: str, revision: str, token: str | None):
        self._require_token(token)
        repo = self.storage.get_repo(repo_type, repo_id)
        if truthy(request.query_params.get("create_pr")):
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
