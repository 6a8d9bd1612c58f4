"""Tests proving testkit/hub works with the real huggingface_hub client (HfApi, snapshot/hf_hub_download)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

import httpx2  # the HTTP library huggingface_hub 2.x is built on (its exceptions surface for network errors)
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from testkit.hub import HubServer

TOKEN = "hf_test_write_token"
REPO = "tester/dataset"


@pytest.fixture(autouse=True)
def _hermetic(hermetic_hf):
    """Every test here runs the real client isolated from this machine (conftest.hermetic_hf)."""
    return hermetic_hf


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


def _read_snapshot(folder: str | Path) -> dict[str, bytes]:
    """{posix relative path: bytes} of every file under a snapshot folder (follows the cache symlinks)."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _download(hub: HubServer, cache: Path, **kwargs) -> str:
    return snapshot_download(REPO, repo_type="dataset", endpoint=hub.url, cache_dir=cache, **kwargs)


def _resolve_gets(hub: HubServer) -> list:
    return [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_create_commit_then_snapshot_download_roundtrip(hub, api, tmp_path):
    url = api.create_repo(REPO, repo_type="dataset")
    assert (url.repo_id, url.repo_type) == (REPO, "dataset")
    # A second create is a 409 that `exist_ok=True` swallows.
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_repo(REPO, repo_type="dataset")
    assert exc_info.value.response.status_code == 409
    api.create_repo(REPO, repo_type="dataset", exist_ok=True)

    files = {
        "README.md": b"# test dataset\n",  # README.md also exercises the client's /api/validate-yaml call
        "meta.json": b'{"rows": 3}',
        "data/train/shard-00000.bin": os.urandom(3 * 1024 * 1024),
    }
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=d) for p, d in files.items()]
    info = api.create_commit(REPO, ops, commit_message="add data", repo_type="dataset", parent_commit=None)

    assert re.fullmatch(r"[0-9a-f]{40}", info.oid)
    assert info.commit_url.endswith(f"/datasets/{REPO}/commit/{info.oid}")
    assert hub.head(REPO) == info.oid
    assert hub.commit_count(REPO) == 2  # the empty initial commit made by create_repo + ours
    assert hub.files(REPO) == files
    assert api.repo_info(REPO, repo_type="dataset").sha == info.oid

    cache = tmp_path / "cache"
    snapshot = _download(hub, cache)
    assert Path(snapshot).name == info.oid  # stored under the X-Repo-Commit sha
    assert _read_snapshot(snapshot) == files
    storage = cache / f"datasets--{REPO.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == info.oid
    # After the branch is resolved, files are requested at the commit sha, not at "main".
    assert {r.path for r in _resolve_gets(hub)} == {f"/datasets/{REPO}/resolve/{info.oid}/{p}" for p in files}

    # Metadata seen by the client: the commit, the git-blob ETag (= cache blob name) and the size.
    meta = get_hf_file_metadata(hf_hub_url(REPO, "meta.json", repo_type="dataset", endpoint=hub.url))
    assert meta.commit_hash == info.oid
    assert meta.etag == hashlib.sha1(b"blob 11\0" + files["meta.json"]).hexdigest()
    assert meta.size == len(files["meta.json"])
    assert (storage / "blobs" / meta.etag).read_bytes() == files["meta.json"]

    # An explicit commit revision resolves to the same snapshot.
    assert _download(hub, cache, revision=info.oid) == snapshot
    # Tree listing and the client's own checksum verification agree with the stored data.
    listed = {f.path for f in api.list_repo_tree(REPO, repo_type="dataset", recursive=True)}
    assert listed == set(files) | {"data", "data/train"}
    check = api.verify_repo_checksums(REPO, repo_type="dataset", cache_dir=cache)
    assert (check.checked_count, check.mismatches, check.missing_paths) == (3, [], [])


def test_parent_commit_is_enforced(hub, api):
    api.create_repo(REPO, repo_type="dataset")
    first = api.create_commit(
        REPO,
        [CommitOperationAdd("a.txt", b"v1"), CommitOperationAdd("b.txt", b"b")],
        commit_message="one",
        repo_type="dataset",
    )
    second = api.create_commit(
        REPO,
        [CommitOperationAdd("a.txt", b"v2"), CommitOperationDelete("b.txt")],
        commit_message="two",
        repo_type="dataset",
        parent_commit=first.oid,
    )
    assert hub.files(REPO) == {"a.txt": b"v2"}

    # Stale parent -> the server answers 412 (like the Hub); the client raises a plain HfHubHTTPError.
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_commit(
            REPO,
            [CommitOperationAdd("a.txt", b"v3")],
            commit_message="three",
            repo_type="dataset",
            parent_commit=first.oid,
        )
    err = exc_info.value
    assert type(err) is HfHubHTTPError
    assert err.response.status_code == 412
    assert "A commit has happened since" in str(err)
    assert hub.head(REPO) == second.oid
    assert hub.commit_count(REPO) == 3
    assert hub.files(REPO) == {"a.txt": b"v2"}


def test_tag_pins_a_snapshot_after_main_moves(hub, api, tmp_path):
    api.create_repo(REPO, repo_type="dataset")
    v1 = api.create_commit(REPO, [CommitOperationAdd("x.txt", b"one")], commit_message="v1", repo_type="dataset")
    api.create_tag(REPO, tag="v1.0", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_tag(REPO, tag="v1.0", repo_type="dataset")
    assert exc_info.value.response.status_code == 409
    api.create_tag(REPO, tag="v1.0", repo_type="dataset", exist_ok=True)

    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", v1.oid)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", v1.oid)]

    v2 = api.create_commit(
        REPO,
        [CommitOperationAdd("x.txt", b"two"), CommitOperationAdd("y.txt", b"new")],
        commit_message="v2",
        repo_type="dataset",
    )
    cache = tmp_path / "cache"
    tagged = _download(hub, cache, revision="v1.0")
    latest = _download(hub, cache)
    assert Path(tagged).name == v1.oid and Path(latest).name == v2.oid
    assert _read_snapshot(tagged) == {"x.txt": b"one"}
    assert _read_snapshot(latest) == {"x.txt": b"two", "y.txt": b"new"}
    assert api.list_repo_refs(REPO, repo_type="dataset").tags[0].target_commit == v1.oid


def test_tokens_and_private_repos(hub, api, tmp_path):
    api.create_repo(REPO, repo_type="dataset")
    anonymous = HfApi(endpoint=hub.url, token=False)  # token=False: never send the (absent) stored token

    # Writes without a token: 401 -> plain HfHubHTTPError (the 401->RepositoryNotFoundError shortcut of
    # hf_raise_for_status only matches https:// URLs). It fails at preupload, before any commit is sent.
    with pytest.raises(HfHubHTTPError) as exc_info:
        anonymous.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="x", repo_type="dataset")
    assert type(exc_info.value) is HfHubHTTPError
    assert exc_info.value.response.status_code == 401
    assert "Authorization" in str(exc_info.value)
    assert hub.commit_count(REPO) == 1
    with pytest.raises(HfHubHTTPError) as exc_info:
        anonymous.create_repo("tester/other", repo_type="dataset")
    assert exc_info.value.response.status_code == 401
    assert set(hub.tokens_seen) == {TOKEN}

    # Private repo: invisible without a token (401 + X-Error-Code RepoNotFound), readable with one.
    hub.put_files("tester/secret", {"s.txt": b"secret"}, private=True)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.repo_info("tester/secret", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(
            "tester/secret", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "c1", token=False
        )
    path = snapshot_download("tester/secret", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert _read_snapshot(path) == {"s.txt": b"secret"}


def test_valid_tokens_rejects_unknown_tokens(tmp_path):
    with HubServer(valid_tokens={"good"}) as server:
        server.put_files(REPO, {"a.txt": b"a"})
        with pytest.raises(HfHubHTTPError) as exc_info:
            HfApi(endpoint=server.url, token="bad").repo_info(REPO, repo_type="dataset")
        assert exc_info.value.response.status_code == 401
        assert not isinstance(exc_info.value, RepositoryNotFoundError)
        assert HfApi(endpoint=server.url, token="good").repo_info(REPO, repo_type="dataset").sha


def test_not_found_errors_map_to_client_exceptions(hub, tmp_path):
    hub.put_files(REPO, {"a.txt": b"a"})
    kwargs = {"repo_type": "dataset", "endpoint": hub.url, "cache_dir": tmp_path}
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "a.txt", revision="no-such-branch", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/nothing", "a.txt", **kwargs)


def test_hub_unreachable_after_stop_then_restart(hub, tmp_path):
    files = {"a.txt": b"alpha", "nested/b.bin": os.urandom(1000)}
    sha = hub.put_files(REPO, files)
    cache = tmp_path / "cache"
    snapshot = _download(hub, cache)
    port = hub.port

    hub.stop()
    assert not hub.running
    with pytest.raises(ConnectionRefusedError):  # the port is really closed
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    # Cache-only access works.
    assert _download(hub, cache, local_files_only=True) == snapshot
    # Online call with a populated cache: the client's repo_info gets httpx2.ConnectError and snapshot_download
    # silently falls back to the cached snapshot of the ref (no exception).
    assert _download(hub, cache) == snapshot
    assert _read_snapshot(snapshot) == files
    # Empty cache: snapshot_download raises LocalEntryNotFoundError, chained from httpx2.ConnectError.
    with pytest.raises(LocalEntryNotFoundError) as exc_info:
        _download(hub, tmp_path / "empty")
    assert isinstance(exc_info.value.__cause__, httpx2.ConnectError)
    # Direct API calls surface the raw httpx2.ConnectError (repo_info does not retry).
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=hub.url, token=TOKEN).repo_info(REPO, repo_type="dataset")
    # NOT exercised (too slow): hf_hub_download with nothing cached re-tries the HEAD with backoff
    # (1+2+4+8+8 s) before raising LocalEntryNotFoundError.

    hub.start()  # same storage, same port
    assert hub.port == port
    fresh = _download(hub, tmp_path / "fresh")
    assert Path(fresh).name == sha and _read_snapshot(fresh) == files


def test_interrupted_download_is_retried_from_last_whole_chunk(hub, monkeypatch, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    hub.put_files(REPO, {"big.bin": data})
    kwargs = {"repo_type": "dataset", "endpoint": hub.url}

    # The connection drops after 1 MB: the client's http_get catches httpx2.RemoteProtocolError (peer closed
    # before Content-Length bytes), sleeps 1 s and retries. It reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB)
    # pieces and drops a partial piece, so for this 3 MiB file nothing was written yet: the retry is a plain
    # GET from byte 0, without a Range header. The file still ends up complete and correct.
    hub.cut_after(1_000_000)
    path = hf_hub_download(REPO, "big.bin", cache_dir=tmp_path / "c1", **kwargs)
    assert Path(path).read_bytes() == data
    assert [(g.status, g.range) for g in _resolve_gets(hub)] == [(200, None), (200, None)]

    # With smaller chunks (the constant is read at call time) whole chunks are kept and the retry resumes
    # with "Range: bytes=<bytes written>-" at the last chunk boundary (3 * 256 KiB <= 1 MB); the server answers 206.
    hub.requests.clear()
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    hub.cut_after(1_000_000)
    path = hf_hub_download(REPO, "big.bin", cache_dir=tmp_path / "c2", **kwargs)
    assert Path(path).read_bytes() == data
    assert [(g.status, g.range) for g in _resolve_gets(hub)] == [(200, None), (206, f"bytes={3 * 256 * 1024}-")]
    assert not list(tmp_path.rglob("*.incomplete"))


def test_server_errors_on_get_are_not_retried_but_head_errors_are(hub, tmp_path):
    hub.put_files(REPO, {"a.txt": b"payload"})
    kwargs = {"repo_type": "dataset", "endpoint": hub.url}

    # A 5xx on the download GET is raised at once (http_get only retries 408/429 and network errors).
    hub.fail_next(1, status=500)
    with pytest.raises(HfHubHTTPError) as exc_info:
        hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c1", **kwargs)
    assert exc_info.value.response.status_code == 500
    assert Path(hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c1", **kwargs)).read_bytes() == b"payload"

    # A 5xx on the metadata HEAD with nothing cached: the client retries the HEAD once more, immediately.
    hub.fail_next(1, status=503, methods=("HEAD",))
    assert Path(hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c2", **kwargs)).read_bytes() == b"payload"
    heads = [r.status for r in hub.requests if r.method == "HEAD"]
    assert heads[-2:] == [503, 200]


def test_corruption_is_invisible_to_the_client_but_caught_by_checksums(hub, api, tmp_path):
    original = os.urandom(4096)
    hub.put_files(REPO, {"w.bin": original})
    corrupted = hub.corrupt(REPO, "w.bin")
    assert corrupted != original and len(corrupted) == len(original)

    path = hf_hub_download(REPO, "w.bin", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == corrupted  # accepted: plain HTTP downloads are only size-checked
    assert Path(path).resolve().name == hashlib.sha1(b"blob 4096\0" + original).hexdigest()  # ETag unchanged
    check = api.verify_repo_checksums(REPO, repo_type="dataset", cache_dir=tmp_path)
    assert [m["path"] for m in check.mismatches] == ["w.bin"]  # Mismatch is a TypedDict

    hub.reset_faults()
    fresh = hf_hub_download(REPO, "w.bin", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "c2")
    assert Path(fresh).read_bytes() == original


def test_model_and_space_repos_and_patch_client(hub, monkeypatch, tmp_path):
    import huggingface_hub

    hub.put_files("tester/model", {"config.json": b"{}", "w/model.bin": b"\x00\x01"}, repo_type="model")
    hub.put_files("tester/space", {"app.py": b"print(1)"}, repo_type="space")

    # Models use /{repo}/resolve/... (no prefix), spaces /spaces/{repo}/resolve/...
    model = snapshot_download("tester/model", endpoint=hub.url, cache_dir=tmp_path / "m")
    assert _read_snapshot(model) == {"config.json": b"{}", "w/model.bin": b"\x00\x01"}
    space = snapshot_download("tester/space", repo_type="space", endpoint=hub.url, cache_dir=tmp_path / "s")
    assert _read_snapshot(space) == {"app.py": b"print(1)"}
    assert {r.path.split("/resolve/")[0] for r in _resolve_gets(hub)} == {"/tester/model", "/spaces/tester/space"}

    # Without endpoint=: only works once the import-time constants are patched.
    hub.patch_client(monkeypatch)
    path = huggingface_hub.hf_hub_download("tester/model", "config.json", cache_dir=tmp_path / "p")
    assert Path(path).read_bytes() == b"{}"
    assert huggingface_hub.repo_info("tester/model").sha == hub.head("tester/model", "model")
