"""Publishing to a Hub dataset repo (loopback server, real client): one atomic commit, tags, pinned readers."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, snapshot_download

from builder.publish import PublishError, push
from clipsearch.core.manifest import MANIFEST, Manifest, verify_files
from clipsearch.serve.download import latest_tag
from testkit import HUB_TOKEN
from testkit.helpers import run_build

REPO = "tester/coco-index"


def _snapshot(folder) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_is_one_commit_with_every_file_then_tagged(hub, monkeypatch, tmp_path, shapes_artifacts):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    manifest = Manifest.read(shapes_artifacts)
    first = push(shapes_artifacts, manifest, REPO, api=api)
    assert hub.commit_count(REPO) == 2  # the repo's empty initial commit + exactly one for the build
    files = hub.files(REPO, revision=first.commit)
    assert set(files) == set(manifest.files) | {MANIFEST, "README.md"}
    for name in manifest.files:
        assert files[name] == (shapes_artifacts / name).read_bytes()
    assert latest_tag(api, REPO) == first.tag and hub.head(REPO, revision=first.tag) == first.commit
    assert first.tag in files["README.md"].decode()
    downloaded = snapshot_download(REPO, repo_type="dataset", revision=first.tag, endpoint=hub.url,
                                   cache_dir=tmp_path / "reader")
    verify_files(Path(downloaded), Manifest.read(Path(downloaded)))
    assert HUB_TOKEN in hub.tokens_seen


def test_a_repush_is_a_new_commit_and_pinned_readers_keep_their_set(hub, monkeypatch, tmp_path, shapes_artifacts,
                                                                      tiny_clip, shapes_folder):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    old = push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    rebuilt = tmp_path / "rebuilt"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", rebuilt, "--limit", "7") == 0
    hub.put_files(REPO, {"notes/owner.txt": b"the repo owner's own file"})
    monkeypatch.setattr("builder.publish.new_tag", lambda: "build-29990101-000000")
    new = push(rebuilt, Manifest.read(rebuilt), REPO, api=api)
    assert new.commit != old.commit and hub.commit_count(REPO) == 4
    files = hub.files(REPO, revision=new.commit)
    assert files["notes/owner.txt"] == b"the repo owner's own file"  # not ours: a push never deletes it
    assert set(files) - {"notes/owner.txt", ".gitattributes"} == set(Manifest.read(rebuilt).files) | {MANIFEST,
                                                                                                     "README.md"}
    for commit, folder in ((old.commit, shapes_artifacts), (new.commit, rebuilt)):
        snapshot = _snapshot(snapshot_download(REPO, repo_type="dataset", revision=commit, endpoint=hub.url,
                                               cache_dir=tmp_path / "reader"))
        assert snapshot[MANIFEST] == (folder / MANIFEST).read_bytes()
        manifest = Manifest.read(folder)
        assert all(snapshot[name] == (folder / name).read_bytes() for name in manifest.files)
    assert latest_tag(api, REPO) == "build-29990101-000000"


def test_a_push_that_loses_a_race_changes_nothing_and_says_so(hub, monkeypatch, shapes_artifacts):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    real_info = api.dataset_info

    def info_then_someone_else_pushes(*args, **kwargs):
        info = real_info(*args, **kwargs)
        hub.put_files(REPO, {"other.txt": b"another maintainer's push"})
        return info

    monkeypatch.setattr(api, "dataset_info", info_then_someone_else_pushes)
    winner_files = None
    with pytest.raises(PublishError, match="another push won the race"):
        winner_files = hub.files(REPO)
        push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    assert winner_files is not None
    files = hub.files(REPO)
    assert files["other.txt"] == b"another maintainer's push"  # the winner's commit stands, untouched
    assert hub.commit_count(REPO) == 3  # initial, first push, the winner: the loser added nothing


def test_an_identical_repush_is_still_a_new_tagged_commit(hub, shapes_artifacts):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    first = push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    import builder.publish as publish

    second_tag = "build-29990101-000001"
    original, publish.new_tag = publish.new_tag, lambda: second_tag
    try:
        second = push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    finally:
        publish.new_tag = original
    assert second.commit != first.commit and hub.head(REPO, revision=second_tag) == second.commit


def test_build_with_push_publishes_to_the_named_repo(hub, monkeypatch, tmp_path, tiny_clip, shapes_folder, capsys):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    out = tmp_path / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "6",
                     "--push", "someone/pushed-index") == 0
    assert "published someone/pushed-index" in capsys.readouterr().out
    files = hub.files("someone/pushed-index")
    assert files[MANIFEST] == (out / MANIFEST).read_bytes() and "README.md" in files
    assert HUB_TOKEN not in (out / MANIFEST).read_text()
