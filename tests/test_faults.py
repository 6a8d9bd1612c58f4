"""Faults: startup downloads cut off, artifacts corrupted in the cache, a full disk during a build, pushes that fail
or are cut off half-way. The Hub being down and tampered artifacts at startup are in test_app."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from huggingface_hub import HfApi

from builder.publish import PublishError, push
from clipsearch.core.manifest import EMBEDDINGS, MANIFEST, ArtifactError, Manifest
from clipsearch.serve.download import latest_tag, open_gallery
from testkit import HUB_TOKEN
from testkit.helpers import app_env, publish_artifacts, run_build, start_app, stop_app

REPO = "tester/reliable-index"


def test_an_interrupted_startup_download_is_retried_and_the_app_starts(hub, tmp_path, shapes_artifacts):
    published = publish_artifacts(hub, shapes_artifacts, REPO)
    hub.cut_after(64, times=3)  # the first three file downloads break off after 64 bytes
    process, url = start_app(app_env(hub, tmp_path, REPO), tmp_path / "cut.log")
    try:
        assert url.startswith("http"), url
        gets = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        names = [r.path.rsplit("/", 1)[-1] for r in gets]
        assert len(gets) >= len(set(names)) + 3  # three of them fetched again
        assert f"downloading {REPO} at {published.tag}" in (tmp_path / "cut.log").read_text()
        _, hits = Client(url, verbose=False).predict("a red circle", 2, api_name="/search_text")
        assert len(hits) == 2
    finally:
        stop_app(process)


def test_a_big_artifact_cut_mid_way_resumes_from_the_last_whole_chunk(hub, tmp_path, monkeypatch, shapes_artifacts):
    from huggingface_hub import constants

    publish_artifacts(hub, shapes_artifacts, REPO)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # files > 1 KB are "big" here
    size = (shapes_artifacts / "thumbs-00000.bin").stat().st_size
    assert size > 8 * 1024
    # Each file's first GET breaks off after 4 KB + 100 bytes. The count only caps the cuts (once_per_file cuts a file
    # once): with one file's worth of slack, any other GET to the Hub could leave the last file fetched uncut.
    hub.cut_after(4 * 1024 + 100, times=2 * len(hub.files(REPO)), once_per_file=True)
    gallery, source = open_gallery(index_dir=None, repo_id=REPO, revision=None, endpoint=hub.url,
                                   cache_dir=tmp_path / "hf", work_dir=tmp_path / "work")
    resumed = {r.path.rsplit("/", 1)[-1]: r.range for r in hub.requests if r.method == "GET" and r.range}
    assert resumed.get("thumbs-00000.bin") == "bytes=4096-", resumed  # the whole 1 KB chunks were kept
    assert len(gallery) == Manifest.read(shapes_artifacts).count  # and everything verified


def test_artifacts_corrupted_in_the_cache_are_refused_and_the_advice_works(hub, tmp_path, shapes_artifacts):
    publish_artifacts(hub, shapes_artifacts, REPO)
    env = app_env(hub, tmp_path, REPO)
    process, url = start_app(env, tmp_path / "good.log")
    assert url.startswith("http"), url
    stop_app(process)
    snapshot = next((tmp_path / "hf").glob(f"datasets--{REPO.replace('/', '--')}/snapshots/*"))
    blob = (snapshot / EMBEDDINGS).resolve()
    assert blob != snapshot / EMBEDDINGS  # the snapshot holds a link; the bytes are in blobs/
    with open(blob, "r+b") as handle:  # bit rot: same size, a few bytes flipped
        handle.seek(blob.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))

    process, message = start_app(env, tmp_path / "corrupt.log")
    assert process.returncode not in (0, None), message
    assert "embeddings.npy" in message and "does not match the sha256 in the manifest" in message
    assert "Traceback" not in message
    repo_cache = snapshot.parent.parent
    assert re.search(re.escape(f"deleting {repo_cache}") + r"(?!/)", message), message  # the folder with blobs/
    shutil.rmtree(snapshot)  # deleting just the snapshot folder is not enough: it links the same damaged blob again
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        open_gallery(index_dir=None, repo_id=REPO, revision=None, endpoint=hub.url, cache_dir=tmp_path / "hf",
                     work_dir=tmp_path / "app-cache")
    shutil.rmtree(repo_cache)  # ... what the message says does bring the app back
    process, url = start_app(env, tmp_path / "recovered.log")
    try:
        assert url.startswith("http"), url
    finally:
        stop_app(process)


def _raise(error: BaseException):
    raise error


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_when(predicate, real):
    def wrapper(*args, **kwargs):
        if predicate(args):
            _raise_enospc()
        return real(*args, **kwargs)
    return wrapper


DISK_FULL = {
    # where the disk fills up -> (target, how to fail there)
    "embedding-shard": ("numpy.save", lambda real: _fail_when(lambda a: Path(a[0]).name == "vectors.npy"
                                                             and "00002" in str(a[0]), real)),
    "embeddings.npy": ("numpy.save", lambda real: _fail_when(lambda a: Path(a[0]).name == EMBEDDINGS, real)),
    "thumbnail-pack": ("builder.pack.open", lambda real: _fail_when(lambda a: "thumbs-" in str(a[0]), real)),
    "manifest": ("pathlib.Path.write_text", lambda real: _fail_when(lambda a: MANIFEST in Path(a[0]).name, real)),
}


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory, tiny_clip, shapes_folder) -> tuple[list[str], Path]:
    args = ["--images", str(shapes_folder[0]), "--model", str(tiny_clip), "--batch-size", "8", "--shard-size", "8",
            "--eval", "none"]
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_build(*args, "--out", out) == 0
    return args, out


@pytest.mark.parametrize("where", sorted(DISK_FULL))
def test_a_full_disk_during_a_build_fails_cleanly_and_the_rerun_resumes(tmp_path, monkeypatch, capfd, where,
                                                                          reference_build):
    import builtins
    import importlib

    args, reference = reference_build
    out = tmp_path / "out"
    target, make = DISK_FULL[where]
    module_name, attribute = target.rsplit(".", 1)
    owner = importlib.import_module(module_name) if module_name != "pathlib.Path" else Path
    if target == "builder.pack.open":
        monkeypatch.setattr(owner, attribute, make(builtins.open), raising=False)
    else:
        monkeypatch.setattr(owner, attribute, make(getattr(owner, attribute)))
    code = run_build(*args, "--out", out)
    monkeypatch.undo()
    err = capfd.readouterr().err
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "re-run" in lines[0], err
    assert "Traceback" not in err
    assert not (out / MANIFEST).exists()  # never passes as complete
    with pytest.raises(ArtifactError, match="not a finished build"):
        open_gallery(index_dir=str(out), repo_id="unused/unused", revision=None, work_dir=tmp_path / "work")

    assert run_build(*args, "--out", out) == 0  # space freed: the same command finishes the build
    if where != "embedding-shard":
        assert json.loads((out / MANIFEST).read_text())["images_per_second"] == 0.0  # nothing embedded twice
    names = sorted(p.name for p in reference.iterdir() if p.is_file() and p.name != MANIFEST)
    assert names == sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _break_commits(hub, monkeypatch, mode: str) -> None:
    """The commit POST fails on the Hub side: a 500, or the connection drops before or after it is applied.
    (HubServer.fail_next only covers /resolve downloads, so the commit handler itself is wrapped.)"""
    from testkit.hub import _CutResponse, _HubError

    real = hub._commit

    async def failing(request, *args):
        if mode == "500":
            raise _HubError(500, "Internal Error")
        if mode == "dropped-before":
            await request.body()
            return _CutResponse(b"{}" * 64, 0, 200, {"Content-Type": "application/json"})
        response = await real(request, *args)  # "dropped-after": applied, but the answer never arrives
        return _CutResponse(response.body, 0, 200, {"Content-Type": "application/json"})

    monkeypatch.setattr(hub, "_commit", failing)


@pytest.mark.parametrize("mode", ["500", "dropped-before", "dropped-after", "tag-lost"])
def test_an_interrupted_push_keeps_a_complete_set_and_says_so(hub, monkeypatch, tmp_path, shapes_artifacts,
                                                             tiny_clip, shapes_folder, mode):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    old = publish_artifacts(hub, shapes_artifacts, REPO)
    old_files, old_head = hub.files(REPO), hub.head(REPO)
    rebuilt = tmp_path / "rebuilt"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", rebuilt, "--limit", "5",
                     "--eval", "none") == 0
    if mode == "tag-lost":  # the commit lands, then the connection breaks while tagging it
        monkeypatch.setattr(api, "create_tag", lambda *a, **k: _raise(ConnectionResetError(104, "Connection reset")))
    else:
        _break_commits(hub, monkeypatch, mode)
    monkeypatch.setattr("builder.publish.new_tag", lambda: "build-29990101-000000")
    with pytest.raises(PublishError) as failed:
        push(rebuilt, Manifest.read(rebuilt), REPO, api=api)
    message = str(failed.value)
    assert message.startswith(f"--push {REPO}:") and "\n" not in message and "Traceback" not in message
    assert latest_tag(api, REPO) == old.tag  # the app keeps serving the previous build
    if mode in ("dropped-after", "tag-lost"):  # the commit landed whole, untagged; the message says so
        assert ("connection" in message and "re-run" in message.lower() if mode == "dropped-after" else
                "holds the complete build, but tagging it build-29990101-000000 failed" in message)
        files = hub.files(REPO)
        assert files[MANIFEST] == (rebuilt / MANIFEST).read_bytes()
        assert all(files[name] == (rebuilt / name).read_bytes() for name in Manifest.read(rebuilt).files)
    else:
        assert hub.head(REPO) == old_head and hub.files(REPO) == old_files
        assert "re-run" in message.lower() or "refused" in message


def test_a_build_whose_push_is_cut_off_exits_with_one_line(hub, monkeypatch, tmp_path, capfd, tiny_clip,
                                                          shapes_folder):
    _break_commits(hub, monkeypatch, "dropped-before")
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    out = tmp_path / "out"
    code = run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "5", "--eval",
                     "none", "--push", "someone/cut-index")
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--push someone/cut-index" in errors[0] and "connection" in errors[0], err
    assert (out / MANIFEST).exists()  # the local build is complete; only publishing has to be re-run
    assert "build-" not in " ".join(t for t in hub.storage.repos[("dataset", "someone/cut-index")].tags)

