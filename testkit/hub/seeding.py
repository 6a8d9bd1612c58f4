"""Seeding and inspecting the loopback Hub from a test, straight in storage (no HTTP, no token)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .protocol import normalize_repo_type, now, validate_path
from .storage import _PullRequest, _Storage


class Seeding:
    """HubServer's direct-storage helpers: repos, commits, tags and pull requests as a real repo has them, and what
    was stored or served. Uses its `storage`, `user` and `bytes_served`."""

    storage: _Storage
    user: str
    bytes_served: dict[tuple[str, str], int]

    def create_repo(
        self, repo_id: str, repo_type: str | None = "dataset", *, private: bool = False, exist_ok: bool = True
    ) -> None:
        """Create a repo directly in storage (no HTTP, no auth)."""
        repo_type = normalize_repo_type(repo_type)
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
        repo_type = normalize_repo_type(repo_type)
        with self.storage.lock:
            self.create_repo(repo_id, repo_type, private=private, exist_ok=True)
            repo = self.storage.get_repo(repo_type, repo_id)
            ops = [("add", p, bytes(d)) for p, d in files.items()] + [("delete", p, None) for p in delete]
            return self.storage.commit(repo, branch, ops, title=message).sha

    def create_tag(self, repo_id: str, tag: str, revision: str = "main", repo_type: str | None = "dataset") -> str:
        """Tag `revision` directly in storage. Returns the tagged commit sha."""
        with self.storage.lock:
            repo = self.storage.get_repo(normalize_repo_type(repo_type), repo_id)
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
        repo_type = normalize_repo_type(repo_type)
        with self.storage.lock:
            repo = self.storage.get_repo(repo_type, repo_id)
            parent = self.storage.resolve(repo, base)
            snapshot = dict(parent.files)
            for path, data in files.items():
                snapshot[validate_path(path)] = self.storage.add_blob(bytes(data))
            for path in delete:
                del snapshot[path]
            commit = self.storage.new_commit(repo, parent=parent.sha, files=snapshot, title=title, description="")
            if num is None:
                num = max(repo.pull_requests, default=0) + 1
            elif num in repo.pull_requests or num < 1:
                raise ValueError(f"pull request number {num} is taken or invalid")
            repo.pull_requests[num] = _PullRequest(num=num, title=title, author=author or self.user, status=status,
                                                   sha=commit.sha, created_at=now())
            return num, commit.sha

    def set_pull_request_status(self, repo_id: str, num: int, status: str, repo_type: str | None = "dataset"):
        """Close / reopen a pull request directly in storage (its ref stays readable, as on the Hub)."""
        with self.storage.lock:
            self.storage.get_repo(normalize_repo_type(repo_type), repo_id).pull_requests[num].status = status

    def downloaded(self, repo_id: str) -> dict[str, int]:
        """{file path: body bytes sent by /resolve GETs} for one repo, whatever the revision asked for."""
        with self.storage.lock:
            return {path: n for (repo, path), n in self.bytes_served.items() if repo == repo_id}

    def head(self, repo_id: str, repo_type: str | None = "dataset", revision: str = "main") -> str:
        """Commit sha that `revision` (branch, tag, sha) currently points to."""
        repo = self.storage.get_repo(normalize_repo_type(repo_type), repo_id)
        return self.storage.resolve(repo, revision).sha

    def files(self, repo_id: str, repo_type: str | None = "dataset", revision: str = "main") -> dict[str, bytes]:
        """Stored snapshot {path: bytes} at `revision` (the real content, ignoring `corrupt`)."""
        with self.storage.lock:
            repo = self.storage.get_repo(normalize_repo_type(repo_type), repo_id)
            commit = self.storage.resolve(repo, revision)
            return {p: self.storage.blobs[o] for p, o in commit.files.items()}

    def commit_count(self, repo_id: str, repo_type: str | None = "dataset", branch: str = "main") -> int:
        """Number of commits in the history of `branch`, including the initial commit made by repo creation."""
        with self.storage.lock:
            repo = self.storage.get_repo(normalize_repo_type(repo_type), repo_id)
            return len(self.storage.history(repo, self.storage.resolve(repo, branch)))
