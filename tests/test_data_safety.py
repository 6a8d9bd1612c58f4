"""A user's files are never deleted, overwritten, listed in a manifest, pushed or downloaded by accident."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi

from builder.publish import new_tag, push
from clipsearch.core.manifest import MANIFEST, Manifest
from clipsearch.serve.download import download
from testkit import HUB_TOKEN
from testkit.helpers import run_build

REPO = "tester/safe-index"
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_out_folder_with_a_users_document_is_refused_untouched(tmp_path, tiny_clip, shapes_folder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"four years of work")
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "4") == 2
    error = capsys.readouterr().err
    assert "holds files this builder did not write (thesis.docx)" in error and "--out" in error
    assert _tree(out) == {"thesis.docx": b"four years of work"}


def test_a_folder_indexed_into_itself_is_refused_and_keeps_every_picture(tmp_path, tiny_clip, shapes_folder, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(shapes_folder[0].iterdir())[:6]:
        (photos / path.name).write_bytes(path.read_bytes())
    before = _tree(photos)
    assert run_build("--images", photos, "--model", tiny_clip, "--out", photos) == 2
    assert "is the --images folder itself" in capsys.readouterr().err
    assert _tree(photos) == before


def test_an_index_inside_the_image_folder_works_and_a_rebuild_keeps_every_picture(tmp_path, tiny_clip,
                                                                                  shapes_folder):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(shapes_folder[0].glob("*.png"))[:6]:
        (photos / path.name).write_bytes(path.read_bytes())
    before = _tree(photos)
    out = photos / "index"
    for _ in range(2):  # the second build replaces its own files and indexes the same six pictures
        assert run_build("--images", photos, "--model", tiny_clip, "--out", out) == 0
        manifest = Manifest.read(out)
        assert manifest.count == 6
    assert {name: data for name, data in _tree(photos).items() if not name.startswith("index/")} == before
    serving = manifest.serving.files if manifest.serving else []  # int8 copy and image graph, where made here
    assert set(manifest.files) == {"index.faiss", "embeddings.npy", "metadata.parquet", "atlas.npy",
                                   *manifest.thumbnails.files, *serving}


def test_a_rebuild_replaces_only_its_own_files(tmp_path, tiny_clip, shapes_folder, capsys):
    out = tmp_path / "out"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "5") == 0
    (out / "notes.txt").write_text("mine")
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "5",
                     "--fresh") == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / MANIFEST).is_file()  # the old build still stands
    (out / "notes.txt").unlink()
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "3",
                     "--fresh") == 0
    assert Manifest.read(out).count == 3


def test_a_file_with_an_artifact_name_but_no_build_is_not_ours(tmp_path, tiny_clip, shapes_folder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.faiss").write_bytes(b"someone else's index")
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", out, "--limit", "4") == 2
    assert "no build of ours" in capsys.readouterr().err
    assert (out / "index.faiss").read_bytes() == b"someone else's index"


def test_private_reaches_the_hub(hub, monkeypatch, tmp_path, tiny_clip, shapes_folder):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", tmp_path / "out", "--limit", "3",
                     "--push", "tester/secret-index", "--private") == 0
    assert hub.storage.get_repo("dataset", "tester/secret-index").private is True
    assert HfApi(endpoint=hub.url, token=HUB_TOKEN).dataset_info("tester/secret-index").private is True


def test_tag_format_is_the_one_the_readme_documents():
    documented = re.search(r"`(build-YYYYMMDD-HHMMSS-ffffff)`", README).group(1)
    pattern = documented.replace("YYYYMMDD", r"\d{8}").replace("HHMMSS", r"\d{6}").replace("ffffff", r"\d{6}")
    tags = [new_tag() for _ in range(50)]
    assert all(re.fullmatch(pattern, tag) for tag in tags)
    assert tags == sorted(tags)


def test_a_push_deletes_only_the_previous_builds_files_and_keeps_the_owners(hub, tmp_path, tiny_clip,
                                                                            shapes_folder):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    hub.put_files(REPO, {"README.md": b"# My index\nwritten by hand", "data/mine.csv": b"a,b\n1,2\n"})
    old = tmp_path / "old"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", old, "--limit", "4") == 0
    # The previous build had one more thumbnail pack than the next will have.
    manifest = Manifest.read(old)
    (old / "thumbs-00001.bin").write_bytes(b"an older build's second pack")
    from clipsearch.core.manifest import hash_files, write_manifest

    manifest.files = hash_files(old, [*manifest.files, "thumbs-00001.bin"])
    write_manifest(old, manifest)
    push(old, manifest, REPO, api=api)
    assert "thumbs-00001.bin" in hub.files(REPO)
    new = tmp_path / "new"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", new, "--limit", "3") == 0
    push(new, Manifest.read(new), REPO, api=api)
    files = hub.files(REPO)
    assert "thumbs-00001.bin" not in files  # the old build's own file, listed in its manifest
    assert files["data/mine.csv"] == b"a,b\n1,2\n"  # the owner's
    assert files["README.md"] == b"# My index\nwritten by hand"  # the owner's card is not replaced


def test_the_app_downloads_only_the_files_the_manifest_lists(hub, tmp_path, shapes_artifacts):
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    push(shapes_artifacts, Manifest.read(shapes_artifacts), REPO, api=api)
    hub.put_files(REPO, {"big-extra.bin": b"x" * 200_000, "nested/other.parquet": b"y" * 1000})
    hub.requests.clear()
    source = download(REPO, None, endpoint=hub.url, cache_dir=tmp_path / "cache")
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    # all it lists but the torch image tower its graph replaces, fetched only where that graph fails its check
    listed = Manifest.read(shapes_artifacts)
    assert fetched == set(listed.files) - set(listed.serving.towers) | {MANIFEST} and listed.serving.towers
    assert not (source.folder / "big-extra.bin").exists() and not (source.folder / "README.md").exists()


def test_append_base_downloads_only_listed_files(hub, monkeypatch, tmp_path, tiny_clip, shapes_folder):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    base = tmp_path / "base"
    assert run_build("--images", shapes_folder[0], "--model", tiny_clip, "--out", base, "--limit", "4") == 0
    push(base, Manifest.read(base), REPO, api=api)
    hub.put_files(REPO, {"owner-notes.txt": b"not part of a build"})
    out = tmp_path / "appended"
    assert run_build("--append", "--base", REPO, "--images", shapes_folder[0], "--model", tiny_clip,
                     "--out", out) == 0
    assert not (out / "owner-notes.txt").exists() and not (out / "README.md").exists()
    assert Manifest.read(out).count == len(shapes_folder[1])
