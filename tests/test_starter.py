"""A newcomer's first `python app.py`: the default index repo is not published yet, so a starter index is built
from COCO val2017 with the default model (the real Hub layouts, on the loopback Hub) and served with a notice."""

from __future__ import annotations

import pytest

from clipsearch.core.encoder import DEFAULT_MODEL
from clipsearch.core.manifest import DEFAULT_INDEX_REPO, ArtifactError, Manifest
from clipsearch.serve.service import Settings, start
from clipsearch.serve.starter import starter_folder
from testkit.coco import make_coco, publish_coco
from testkit.models import save_tiny_clip

# The files the default model's repo really holds, besides the ones transformers loads (see test_model_layouts).
# google/siglip2-base-patch16-224 (as its siblings at 256 and 512), fixed resolution: model_type "siglip" with a
# GemmaTokenizer.
MODEL_FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
               "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]


@pytest.fixture
def newcomer_hub(hub, tmp_path, monkeypatch):
    """COCO (train + a 12-image validation split) and the default model on a Hub where the default index is absent."""
    coco = make_coco({"train": 8, "validation": 12})
    publish_coco(hub, coco, train_shards=1)
    model = save_tiny_clip(tmp_path / "model", "siglip2-fixres")
    hub.put_files(DEFAULT_MODEL, {name: (model / name).read_bytes() for name in MODEL_FILES}
                  | {"README.md": b"never fetched"}, repo_type="model")
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "app-cache"))
    return hub, coco


def test_the_default_index_missing_builds_and_serves_a_starter_index(newcomer_hub, tmp_path, caplog):
    hub, coco = newcomer_hub
    env = {"HF_ENDPOINT": hub.url}
    service = start(Settings.from_env(env))
    gallery = service.searcher.gallery
    validation = {row["image_id"] for row in coco["validation"]}
    assert len(gallery) == len(validation) and set(gallery._image_ids.tolist()) == validation
    assert "starter index" in service.source.notice and DEFAULT_INDEX_REPO in service.source.notice
    assert service.source.folder == starter_folder(tmp_path / "app-cache")
    manifest = Manifest.read(service.source.folder)
    assert manifest.model["model_id"] == DEFAULT_MODEL and manifest.sources[0].splits == ["val2017"]
    hits = service.searcher.search_text("a red circle", 5)
    assert len(hits) == 5 and {hit.image_id for hit in hits} <= validation
    # The default model came from its real layout, and only the files transformers loads were downloaded.
    assert set(hub.downloaded(DEFAULT_MODEL)) == set(MODEL_FILES)
    # The second start reuses it: nothing is built again.
    caplog.clear()
    again = start(Settings.from_env(env))
    assert again.source.folder == service.source.folder and "built before" in caplog.text
    assert "starter" in again.source.notice


def test_an_explicit_index_repo_that_is_missing_stays_an_error(newcomer_hub, tmp_path):
    hub, _ = newcomer_hub
    with pytest.raises(ArtifactError, match="INDEX_REPO=someone/missing-index: no such dataset repo"):
        start(Settings.from_env({"HF_ENDPOINT": hub.url, "INDEX_REPO": "someone/missing-index"}))
    assert not starter_folder(tmp_path / "app-cache").exists()
