"""In-memory repos with git-like history: snapshot commits, branches, tags, pull-request refs, tree listings."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .protocol import _HubError, git_blob_oid, iso, now, validate_path


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
        self._counter = 0  # commits made so far: keeps two identical commits' shas apart

    # -- repos --------------------------------------------------------------------------------------------

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False, sdk: str | None = None) -> _Repo:
        """Create a repo with an empty initial commit on `main` (the real Hub always has one); 409 if it exists."""
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise _HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now(), sdk=sdk)
            self.repos[key] = repo
            initial = self.new_commit(repo, parent=None, files={}, title="initial commit", description="")
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
            oid = git_blob_oid(data)
            self.blobs[oid] = data
            self.sha256_index[hashlib.sha256(data).hexdigest()] = oid
            return oid

    def new_commit(self, repo: _Repo, *, parent: str | None, files: dict[str, str], title: str, description: str):
        """Record a commit (no branch moves); its sha is unique per server, as a real sha is per repo."""
        self._counter += 1
        seed = json.dumps([self._counter, repo.repo_type, repo.repo_id, parent, sorted(files.items()), title])
        commit = _Commit(
            sha=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            title=title,
            description=description,
            files=files,
            date=now(),
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
                path = validate_path(path.strip("/") if kind == "delete_folder" else path)
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
            commit = self.new_commit(repo, parent=head, files=files, title=title, description=description)
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
            item["lastCommit"] = {"id": last.sha, "title": last.title, "date": iso(last.date)}
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
