"""Cold start: the app serves once the manifest, index and metadata are down and verified; thumbnail packs follow in
the background (range requests meanwhile), each verified when complete; a tampered pack is refused; a restart with
a complete cache downloads nothing. Loopback Hub (testkit/hub) with the real huggingface_hub client."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi

import clipsearch.serve.download as hub_module
from builder.publish import push
from clipsearch.core.atlas import ATLAS
from clipsearch.core.gallery import LOCAL, PLACEHOLDER, REFUSED, REMOTE, Gallery
from clipsearch.core.manifest import (
    EMBEDDINGS,
    IMAGE_GRAPH,
    IMAGE_TOWER_FILE,
    INDEX,
    MANIFEST,
    METADATA,
    SERVING_MODEL,
    Manifest,
    _read_stamps,
)
from clipsearch.serve.download import RemotePacks, open_gallery
from testkit import HUB_TOKEN
from testkit.helpers import run_build

REPO = "tester/cold-start"


@pytest.fixture(scope="module")
def packed_artifacts(tmp_path_factory, shapes_folder) -> Path:
    """A finished build of the shapes folder whose thumbnails are spread over several small packs (the builder's
    own pack writer with an 8 KB pack size instead of 512 MB), with the real tiny CLIP: four or more packs."""
    import builder.pack
    from testkit.models import save_tiny_clip

    model = save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", "clip")
    out = tmp_path_factory.mktemp("packed") / "artifacts"
    real = builder.pack.PACK_BYTES
    builder.pack.PACK_BYTES = 8 * 1024
    try:
        assert run_build("--images", shapes_folder[0], "--model", model, "--out", out) == 0
    finally:
        builder.pack.PACK_BYTES = real
    assert len(Manifest.read(out).thumbnails.files) >= 4
    return out


@pytest.fixture
def published(hub, packed_artifacts, monkeypatch):
    """The build on the loopback Hub; deferral forced (EAGER_BYTES=0) since test packs are tiny; the background
    pack fetcher held until the test releases it, so 'ready' can be observed before any pack is downloaded."""
    push(packed_artifacts, Manifest.read(packed_artifacts), REPO, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setattr(hub_module, "EAGER_BYTES", 0)
    held = []
    monkeypatch.setattr(RemotePacks, "start", lambda self, store, stamp_dir: held.append((self, store, stamp_dir)))
    hub.requests.clear()
    hub.bytes_served.clear()
    return held


def _open(hub, tmp_path):
    return open_gallery(index_dir=None, repo_id=REPO, revision=None, endpoint=hub.url, cache_dir=tmp_path / "hf",
                        work_dir=tmp_path / "work")


def _release(held) -> RemotePacks:
    remote, store, stamp_dir = held.pop()
    RemotePacks._run(remote, store, stamp_dir)  # the background thread's work, here on the test's thread
    assert remote.done.is_set()
    return remote


def _builder_thumbnail(artifacts: Path, gallery: Gallery, row: int) -> bytes:
    import pyarrow.parquet as pq

    table = pq.read_table(artifacts / METADATA, columns=["thumb_shard", "thumb_offset", "thumb_size"])
    shard, offset, size = (table.column(c)[row].as_py() for c in ("thumb_shard", "thumb_offset", "thumb_size"))
    data = (artifacts / gallery.manifest.thumbnails.files[shard]).read_bytes()
    return data[offset:offset + size]


def _rows_of(gallery: Gallery, pack: int) -> list[int]:
    return [row for row in range(len(gallery)) if gallery.thumbnails.pack_of(row) == pack]


def test_the_app_is_ready_with_only_manifest_index_and_metadata_downloaded(hub, published, packed_artifacts,
                                                                           tmp_path):
    gallery, source = _open(hub, tmp_path)
    manifest = Manifest.read(packed_artifacts)
    fetched = hub.downloaded(REPO)
    # The index is flat: it stores the vectors, so embeddings.npy is not needed at all; the packs come later. The
    # atlas (the Map tab's positions, 8 bytes an image: ~1 MB for COCO, ~10 ms at 100 MB/s) comes with the index,
    # and so does the encoder's int8 serving copy, which the app loads instead of the model's checkpoint, with its
    # image tower's ONNX graph, which embeds the pictures of queries (the torch image tower it replaces, kept apart,
    # stays on the Hub).
    assert set(fetched) == {MANIFEST, INDEX, METADATA, ATLAS, SERVING_MODEL, IMAGE_GRAPH}, fetched
    assert fetched[INDEX] == manifest.files[INDEX].size and fetched[METADATA] == manifest.files[METADATA].size
    assert all(r.range is None for r in hub.requests if "/resolve/" in r.path)  # whole files, each fetched once
    assert not (source.folder / EMBEDDINGS).exists()
    assert all(gallery.thumbnails.state(n) == REMOTE for n in range(len(manifest.thumbnails.files)))
    # Vectors stored once: 'more like this' reads the index's own vectors, equal to embeddings.npy.
    stored = np.load(packed_artifacts / EMBEDDINGS)
    assert np.array_equal(np.asarray(gallery.vectors, np.float32), stored)
    scores, rows = gallery.nearest(stored[3], 5)
    assert rows[0] == 3 and scores[0] == pytest.approx(1.0, abs=1e-5)
    # The index and metadata were hashed once, while downloading, and stamped: opening them did not hash again.
    stamps = _read_stamps(tmp_path / "work")
    assert {manifest.files[INDEX].sha256, manifest.files[METADATA].sha256} <= set(stamps.values())


def test_a_thumbnail_of_a_pack_not_yet_local_is_one_range_request_of_exactly_its_bytes(hub, published,
                                                                                       packed_artifacts, tmp_path):
    gallery, _ = _open(hub, tmp_path)
    row = _rows_of(gallery, 2)[1]
    expected = _builder_thumbnail(packed_artifacts, gallery, row)
    hub.requests.clear()
    path = gallery.thumbnails.path(row)
    assert path.read_bytes() == expected and path.name == f"{row}.jpg"
    ranged = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert len(ranged) == 1 and ranged[0].path.endswith(gallery.manifest.thumbnails.files[2])
    start = int(gallery.thumbnails._offset[row])
    assert ranged[0].range == f"bytes={start}-{start + len(expected) - 1}" and ranged[0].status == 206
    assert ranged[0].nbytes == len(expected)
    assert gallery.thumbnails.path(row) == path
    assert len([r for r in hub.requests if "/resolve/" in r.path]) == 1  # materialised once, not fetched again
    assert hub.downloaded(REPO)[gallery.manifest.thumbnails.files[2]] == len(expected)


def test_the_first_answer_fetches_its_thumbnails_together(hub, published, packed_artifacts, tmp_path):
    """Before the packs are local, one answer's thumbnails are range requests in flight at the same time: each fetch
    here waits until all five have started, so thumbnails fetched one after another would all time out (and be
    served as placeholders)."""
    from clipsearch.core.encoder import Encoder
    from clipsearch.core.search import Searcher

    gallery, _ = _open(hub, tmp_path)
    store = gallery.thumbnails
    together = threading.Barrier(5, timeout=20)
    real = store._fetch_range
    store._fetch_range = lambda *args: (together.wait(), real(*args))[1]
    searcher = Searcher(gallery, Encoder.load(gallery.manifest.model["model_id"], None, "cpu"))
    hits = searcher.search_similar(gallery.rows([7])[0].image_id, 5)
    assert [hit.thumbnail for hit in hits] == [str(store.cache_dir / f"{hit.row}.jpg") for hit in hits]
    for hit in hits:
        assert Path(hit.thumbnail).read_bytes() == _builder_thumbnail(packed_artifacts, gallery, hit.row)
    assert {store.state(store.pack_of(hit.row)) for hit in hits} == {REMOTE}  # all five came by range


def test_background_completion_verifies_each_pack_then_serves_from_disk(hub, published, packed_artifacts,
                                                                       tmp_path, caplog):
    gallery, _ = _open(hub, tmp_path)
    manifest = gallery.manifest
    with caplog.at_level(logging.INFO, logger="clipsearch.serve.download"):
        _release(published)
    for number, name in enumerate(manifest.thumbnails.files):
        assert gallery.thumbnails.state(number) == LOCAL
        assert f"thumbnail pack {name} downloaded and verified" in caplog.text
    assert set(manifest.files[n].sha256 for n in manifest.thumbnails.files) <= set(
        _read_stamps(tmp_path / "work").values())
    hub.requests.clear()
    row = _rows_of(gallery, 3)[0]
    assert gallery.thumbnails.path(row).read_bytes() == _builder_thumbnail(packed_artifacts, gallery, row)
    assert not hub.requests  # from the verified pack on disk
    assert EMBEDDINGS not in hub.downloaded(REPO)  # never needed, never fetched


def test_a_tampered_pack_is_refused_and_search_keeps_working(hub, published, packed_artifacts, tmp_path, caplog):
    hub.corrupt(REPO, "thumbs-00001.bin")
    gallery, source = _open(hub, tmp_path)
    bad_rows = _rows_of(gallery, 1)
    early = gallery.thumbnails.path(bad_rows[0])  # fetched by range before the pack could be checked
    assert early.name == f"{bad_rows[0]}.jpg"
    with caplog.at_level(logging.INFO, logger="clipsearch.serve.download"):
        remote = _release(published)
    assert remote.refused == ["thumbs-00001.bin"]
    assert gallery.thumbnails.state(1) == REFUSED
    assert "thumbnail pack thumbs-00001.bin" in caplog.text
    assert "does not match the sha256 in the manifest" in caplog.text
    assert "will not be served" in caplog.text and "search keeps working" in caplog.text
    assert not early.exists()  # what was served from the unverified pack is withdrawn
    for row in bad_rows:
        assert gallery.thumbnails.path(row).name == PLACEHOLDER
    assert not (source.folder / "thumbs-00001.bin").exists()  # the bad copy is gone: the next start refetches it
    good = _rows_of(gallery, 2)[0]
    assert gallery.thumbnails.path(good).read_bytes() == _builder_thumbnail(packed_artifacts, gallery, good)
    scores, rows = gallery.nearest(np.asarray(gallery.vectors[bad_rows[0]], np.float32), 3)
    assert rows[0] == bad_rows[0]  # search is unaffected: its thumbnail is the placeholder


def test_a_restart_with_a_complete_cache_downloads_nothing_and_works_offline(hub, published, packed_artifacts,
                                                                            tmp_path):
    _open(hub, tmp_path)
    _release(published)
    hub.requests.clear()
    hub.bytes_served.clear()
    gallery, source = _open(hub, tmp_path)
    assert hub.downloaded(REPO) == {}
    assert source.remote is None and not published  # nothing left to fetch
    assert all(gallery.thumbnails.state(n) == LOCAL for n in range(len(gallery.manifest.thumbnails.files)))
    hub.stop()
    gallery, source = _open(hub, tmp_path)
    assert source.notice and "serving the cached copy" in source.notice
    row = _rows_of(gallery, 3)[0]
    assert gallery.thumbnails.path(row).read_bytes() == _builder_thumbnail(packed_artifacts, gallery, row)


def test_offline_with_packs_never_downloaded_serves_search_with_placeholders(hub, published, packed_artifacts,
                                                                           tmp_path, caplog):
    _open(hub, tmp_path)  # packs held back: the process 'stopped' before they were downloaded
    hub.stop()
    with caplog.at_level(logging.WARNING, logger="clipsearch.serve.download"):
        gallery, source = _open(hub, tmp_path)
    assert source.notice and "never downloaded" in caplog.text
    assert gallery.thumbnails.path(0).name == PLACEHOLDER
    assert gallery.nearest(np.asarray(gallery.vectors[5], np.float32), 1)[1][0] == 5


def test_small_sets_are_still_fetched_whole_before_serving(hub, packed_artifacts, tmp_path):
    push(packed_artifacts, Manifest.read(packed_artifacts), REPO, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    hub.bytes_served.clear()
    gallery, source = _open(hub, tmp_path)  # EAGER_BYTES as shipped: a few hundred KB are fetched at once
    # all but the torch image tower its graph replaces (fetched only where that graph fails its check)
    assert set(hub.downloaded(REPO)) == set(Manifest.read(packed_artifacts).files) - {IMAGE_TOWER_FILE} | {MANIFEST}
    assert source.remote is None
    assert all(gallery.thumbnails.state(n) == LOCAL for n in range(len(gallery.manifest.thumbnails.files)))
    assert isinstance(gallery.vectors, np.memmap)  # embeddings.npy, as before


def test_the_app_starts_the_background_fetch_once_its_model_is_loaded(hub, packed_artifacts, monkeypatch, tmp_path):
    from clipsearch.serve.service import Settings, start

    push(packed_artifacts, Manifest.read(packed_artifacts), REPO, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setattr(hub_module, "EAGER_BYTES", 0)
    monkeypatch.setattr(hub_module, "PACKS_WAIT_SECONDS", 3600)  # only resume() can start it within the test
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    service = start(Settings(index_dir=None, index_repo=REPO, index_revision=None, endpoint=hub.url, token=None))
    remote = service.source.remote
    assert remote is not None and remote.go.is_set()
    assert remote.done.wait(60) and not remote.refused
    gallery = service.searcher.gallery
    assert all(gallery.thumbnails.state(n) == LOCAL for n in range(len(gallery.manifest.thumbnails.files)))
    hits = service.searcher.search_text("a red circle", 3)
    assert len(hits) == 3 and all(Path(hit.thumbnail).name != PLACEHOLDER for hit in hits)


def test_a_hub_that_ignores_the_range_header_is_not_read_whole(hub, published, packed_artifacts, tmp_path,
                                                               monkeypatch, caplog):
    import testkit.hub.downloads as hub_server

    gallery, _ = _open(hub, tmp_path)
    monkeypatch.setattr(hub_server, "_parse_range", lambda header, total: None)  # 200 with the whole pack
    row = _rows_of(gallery, 1)[0]
    with caplog.at_level(logging.WARNING, logger="clipsearch.core.gallery"):
        assert gallery.thumbnails.path(row).name == PLACEHOLDER
    assert "not 206" in caplog.text
    assert not (gallery.thumbnails.cache_dir / f"{row}.jpg").exists()


@pytest.mark.parametrize("precision", ["auto", "int8", "fp32"])
def test_the_prefetch_fetches_artifacts_and_model_once_and_start_then_downloads_nothing(hub, packed_artifacts,
                                                                                       tmp_path, monkeypatch,
                                                                                       precision):
    """app.py starts the downloads before importing torch and Gradio (clipsearch.serve.prefetch): every file the
    start needs arrives once, the model's as soon as the manifest names it, and start() then fetches nothing more.
    With the build's serving copy (precision auto) the model's checkpoint is never fetched, only its configs; an app
    that must load the checkpoint (CLIPSEARCH_PRECISION=fp32) fetches it, and not the serving copy; one held to
    torch's int8 (CLIPSEARCH_PRECISION=int8) fetches the serving copy with its torch image tower and not its ONNX
    image graph, and the default app (auto) the graph and not that tower."""
    import dataclasses
    import shutil

    from clipsearch.core.manifest import write_manifest
    from clipsearch.serve import prefetch
    from clipsearch.serve.service import start
    from clipsearch.serve.settings import Settings

    model_repo = "tester/tiny-clip"
    manifest = Manifest.read(packed_artifacts)
    model_files = {p.name: p.read_bytes() for p in Path(manifest.model["model_id"]).iterdir() if p.is_file()}
    sha = hub.put_files(model_repo, model_files, "model", "Initial commit")
    served = tmp_path / "artifacts"
    shutil.copytree(packed_artifacts, served)
    write_manifest(served, dataclasses.replace(manifest, model={**manifest.model, "model_id": model_repo,
                                                                "revision": sha}))
    push(served, Manifest.read(served), REPO, api=HfApi(endpoint=hub.url, token=HUB_TOKEN))
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    settings = Settings.from_env({"INDEX_REPO": REPO, "HF_ENDPOINT": hub.url, "CLIPSEARCH_PRECISION": precision})
    hub.bytes_served.clear()

    threads = prefetch.begin(settings)
    while any(thread.is_alive() for thread in threads):  # the model's thread joins the list once the manifest is in
        for thread in list(threads):
            thread.join(60)
    assert [thread.name for thread in threads] == ["prefetch-artifacts", "prefetch-model"]
    artifacts = {name: entry.size for name, entry in Manifest.read(served).files.items()
                 if name not in {"auto": {IMAGE_TOWER_FILE}, "int8": {IMAGE_GRAPH},
                                 "fp32": {SERVING_MODEL, IMAGE_GRAPH, IMAGE_TOWER_FILE}}[precision]}
    assert {k: v for k, v in hub.downloaded(REPO).items() if k != MANIFEST} == artifacts  # each file once, whole
    fetched = hub.downloaded(model_repo)
    assert "config.json" in fetched and "tokenizer_config.json" in fetched
    assert ("model.safetensors" in fetched) == (precision == "fp32")
    assert all(fetched[name] == len(model_files[name]) for name in fetched)

    before = dict(hub.bytes_served)
    service = start(settings)
    assert dict(hub.bytes_served) == before  # start() found every file in the cache
    assert service.searcher.gallery.manifest.model["model_id"] == model_repo
    assert service.searcher.encoder.precision == ("fp32" if precision == "fp32" else "int8")
    assert (service.searcher.encoder.image_graph is not None) == (precision == "auto")
    assert len(service.searcher.search_text("a red circle", 3)) == 3


def test_the_prefetch_leaves_failures_to_start_and_skips_local_folders(hub, tmp_path, monkeypatch):
    from clipsearch.serve import prefetch
    from clipsearch.serve.settings import Settings

    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "work"))
    assert prefetch.begin(Settings.from_env({"INDEX_DIR": str(tmp_path)})) == []
    threads = prefetch.begin(Settings.from_env({"INDEX_REPO": "tester/missing", "HF_ENDPOINT": hub.url}))
    for thread in threads:
        thread.join(30)
    assert [t.name for t in threads] == ["prefetch-artifacts"] and not threads[0].is_alive()  # no model: no manifest
