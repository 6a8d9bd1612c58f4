"""Recall on the Karpathy 5k test split beside the published figures: the split loader (local file, loopback Hub,
unreachable Hub), the recall over the split's images and captions only, the comparison rule and where it is shown."""

from __future__ import annotations

import itertools
import re
import socket
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder import karpathy
from builder.build import summary
from builder.publish import dataset_card
from clipsearch.core import published
from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import EMBEDDINGS, METADATA, Manifest
from clipsearch.web.views import about_markdown
from testkit import HUB_TOKEN
from testkit.helpers import run_build
from testkit.models import COLORS, SHAPES, draw_shape

LABEL = f"{karpathy.NAME} (12 of 13 images, 61 captions)"  # the fixture build: every caption, as published
FAKE_PUBLISHED = dict(t2i_r1=90.0, t2i_r5=101.6, t2i_r10=100.0, i2t_r1=95.5, i2t_r5=100.0, i2t_r10=100.0)


def write_karpathy_parquet(path, images: list[tuple[int, list]], split: str = "test") -> None:
    """A file shaped like yerevann/coco-karpathy's data/test-00000-of-00001.parquet: one row per image with
    filepath, sentids, filename, imgid, split, sentences, cocoid, url."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {"filepath": [], "sentids": [], "filename": [], "imgid": [], "split": [], "sentences": [], "cocoid": [],
            "url": []}
    sentid = 770000
    for imgid, (cocoid, sentences) in enumerate(images):
        name = f"COCO_val2014_{cocoid:012d}.jpg"
        rows["filepath"].append("val2014")
        rows["sentids"].append(list(range(sentid, sentid + len(sentences))))
        rows["filename"].append(name)
        rows["imgid"].append(imgid)
        rows["split"].append(split)
        rows["sentences"].append(sentences)
        rows["cocoid"].append(cocoid)
        rows["url"].append(f"http://images.cocodataset.org/val2014/{name}")
        sentid += len(sentences)
    pq.write_table(pa.table(rows), path)


def karpathy_captions(cocoid: int, count: int = 5) -> list[str]:
    """Distinct captions in the tiny tokenizers' vocabulary (so distinct vectors), never the gallery's own, so the
    brute-force check can tell which captions were used."""
    combos = list(itertools.product(COLORS, SHAPES, ("with a light", "in the dark", "and the", "of that"), COLORS))
    return ["this image is the {} {} {} {}".format(*combos[(cocoid * 5 + n) % len(combos)]) for n in range(count)]


def listed(n: int) -> int:
    """Captions the fixture split lists for its n-th image: six for the first, five for the others."""
    return 6 if n == 0 else 5


@pytest.fixture(scope="module")
def karpathy_fixture(coco_dir, tmp_path_factory):
    """Six train2017 and six val2017 images of the synthetic COCO gallery as "test", plus one the gallery lacks
    (listed in the annotations, missing on disk); one image with six captions (all six are used)."""
    _, truth = coco_dir
    good = [i for i, t in sorted(truth.items()) if "bad" not in t]
    ids = [i for i in good if truth[i]["split"] == "train2017"][:6] + [i for i in good if truth[i]["split"] ==
                                                                        "val2017"][:6]
    absent = next(i for i, t in sorted(truth.items()) if t.get("bad") == "missing")
    images = [(cocoid, karpathy_captions(cocoid, listed(n))) for n, cocoid in enumerate(ids)]
    images.insert(3, (absent, karpathy_captions(absent)))
    path = tmp_path_factory.mktemp("karpathy") / karpathy.FILENAME
    write_karpathy_parquet(path, images)
    return path, ids, absent


@pytest.fixture(scope="module")
def karpathy_build(coco_dir, tiny_clip, karpathy_fixture, tmp_path_factory):
    """A build of the synthetic COCO gallery with the fixture split and a made-up published entry for the tiny
    model (its text->image R@5 is out of reach, so the build is always flagged)."""
    path, ids, absent = karpathy_fixture
    out = tmp_path_factory.mktemp("built-karpathy") / "artifacts"
    entry = published.PublishedRecall(str(tiny_clip), "tiny test model", "test table",
                                      "https://example.invalid/table.csv", **FAKE_PUBLISHED)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(karpathy.ENV, str(path))
        patch.setitem(published._BY_ID, str(tiny_clip).lower(), entry)
        assert run_build("--coco-dir", coco_dir[0], "--model", tiny_clip, "--out", out, "--batch-size", "16") == 0
    return out, ids, absent, path


def _as_built(out, model, texts: list[str]) -> np.ndarray:
    """The captions encoded as the build encoded them: its kept precision (int8 quantises activations per call, so a
    different arithmetic or batching can swap a near-tie), in the evaluation's own batches."""
    from builder.evaluate import encode_captions

    return encode_captions(Encoder.load(str(model), None, "cpu", precision=Manifest.read(out).precision), texts)


def _brute_force_recall(scores: np.ndarray, positives: list[list[int]]) -> dict[str, float]:
    ranks = np.array([int((row > row[good].max()).sum()) for row, good in zip(scores, positives)])
    return {f"R@{k}": round(float((ranks < k).mean()) * 100, 2) for k in (1, 5, 10)}


def test_build_records_recall_over_the_karpathy_images_and_captions_only(karpathy_build, tiny_clip):
    out, ids, absent, path = karpathy_build
    manifest = Manifest.read(out)
    result = manifest.evaluation[karpathy.NAME]
    # exactly what was evaluated: 12 of the split's 13 images with every caption they list (61: one image has
    # six), of the 66 the split lists
    assert result["label"] == LABEL
    assert (result["images"], result["split_images"], result["captions"], result["complete"]) == (12, 13, 61, False)
    assert (result["captions_listed"], result["captions_per_image"], result["split_captions"]) == (61, None, 66)
    assert result["source"] == {"path": str(path)}
    # Brute force: the split's images' vectors by COCO id from the built vectors, every caption of the split's.
    vectors = np.load(out / EMBEDDINGS)
    row_of = {image_id: row for row, image_id in enumerate(pq.read_table(out / METADATA)["image_id"].to_pylist())}
    assert absent not in row_of
    images = vectors[[row_of[i] for i in ids]]
    texts = [caption for n, i in enumerate(ids) for caption in karpathy_captions(i, listed(n))]
    owner = [n for n, _ in enumerate(ids) for _ in range(listed(n))]
    gallery_captions = {c for cs in pq.read_table(out / METADATA)["captions"].to_pylist() for c in cs}
    assert len(set(texts)) == len(texts) and not set(texts) & gallery_captions
    captions = _as_built(out, tiny_clip, texts)
    assert len(np.unique(captions.round(5), axis=0)) == len(texts)  # the captions are told apart
    scores = captions @ images.T
    assert result["text_to_image"] == _brute_force_recall(scores, [[o] for o in owner])
    assert result["image_to_text"] == _brute_force_recall(
        scores.T, [[t for t, o in enumerate(owner) if o == n] for n in range(len(ids))])
    # val2017 stays, named for what it is.
    val = manifest.evaluation["val2017"]
    assert val["label"] == "val2017 (20 images with all 40 of their captions; no paper reports this split)"
    # The published figures sit beside ours; the made-up R@5 of 101.6 is always more than 1.5 points above.
    comparison = result["published"]
    assert comparison["text_to_image"] == {"R@1": 90.0, "R@5": 101.6, "R@10": 100.0}
    assert comparison["compared"] == "text_to_image R@5" and comparison["flagged"] is True
    assert comparison["difference"] == round(result["text_to_image"]["R@5"] - 101.6, 2)
    assert "preprocessing or tokenisation differs" in comparison["note"]
    assert "12 of the 13 test images" in comparison["note"]


def test_an_append_records_karpathy_recall_over_the_whole_gallery(coco_dir, tiny_clip, karpathy_fixture, tmp_path):
    """Built from train2017 alone, the gallery holds 6 of the 13 test images; appending val2017 brings 12, and the
    appended build's recall is over all 12, like a fresh build's."""
    path, ids, _ = karpathy_fixture
    out = tmp_path / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(karpathy.ENV, str(path))
        assert run_build("--coco-dir", coco_dir[0], "--splits", "train2017", "--model", tiny_clip, "--out", out,
                         "--batch-size", "16") == 0
        first = Manifest.read(out).evaluation[karpathy.NAME]
        assert (first["images"], first["split_images"]) == (6, 13)
        assert run_build("--append", "--coco-dir", coco_dir[0], "--splits", "val2017", "--out", out) == 0
    result = Manifest.read(out).evaluation[karpathy.NAME]
    assert result["label"] == LABEL
    assert (result["images"], result["split_images"], result["captions"]) == (12, 13, 61)
    vectors = np.load(out / EMBEDDINGS)
    row_of = {image_id: row for row, image_id in enumerate(pq.read_table(out / METADATA)["image_id"].to_pylist())}
    texts = [caption for n, i in enumerate(ids) for caption in karpathy_captions(i, listed(n))]
    owner = [n for n, _ in enumerate(ids) for _ in range(listed(n))]
    scores = _as_built(out, tiny_clip, texts) @ vectors[[row_of[i] for i in ids]].T
    assert result["text_to_image"] == _brute_force_recall(scores, [[o] for o in owner])


def test_summary_card_and_about_show_both_numbers_and_the_flag(karpathy_build):
    out = karpathy_build[0]
    manifest = Manifest.read(out)
    ours = manifest.evaluation[karpathy.NAME]["text_to_image"]["R@5"]
    text = summary(manifest, out, {"images": manifest.count, "images_per_second": 10.0})
    lines = text.splitlines()
    first = next(n for n, line in enumerate(lines) if "recall (" in line)
    assert lines[first].startswith(f"  recall ({LABEL}): text->image R@1 ")
    assert f"R@5 {ours:.1f}" in lines[first]
    assert "published (test table, tiny test model): text->image R@1 90.0 R@5 101.6 R@10 100.0" in lines[first + 1]
    assert lines[first + 2].startswith("    FLAGGED: text → image R@5") and "points below the published 101.6" in text
    assert "recall (val2017 (20 images with all 40 of their captions; no paper reports this split))" in text

    card = dataset_card(manifest, "someone/index", "build-1", None)
    assert f"recall on {LABEL}:" in card and "101.6" in card and "⚠️" in card

    service = SimpleNamespace(searcher=SimpleNamespace(gallery=SimpleNamespace(manifest=manifest), has_text=True),
                              source=SimpleNamespace(repo_id=None, folder=str(out), notice=None))
    about = about_markdown(service)
    assert about.index(f"Recall on {LABEL}") < about.index("Recall on val2017")
    assert re.search(rf"\| text → image, this build \| [\d.]+ \| {ours:.1f} \| [\d.]+ \|", about)
    assert "| text → image, published | 90.0 | 101.6 | 100.0 |" in about
    assert "| image → text, published | 95.5 | 100.0 | 100.0 |" in about
    assert "⚠️ text → image R@5" in about and "preprocessing or tokenisation differs" in about


def test_about_reads_an_old_manifest_without_karpathy_or_labels(karpathy_build):
    out = karpathy_build[0]
    manifest = Manifest.read(out)
    val = {k: v for k, v in manifest.evaluation["val2017"].items() if k != "label"}
    manifest.evaluation = {"val2017": val}
    service = SimpleNamespace(searcher=SimpleNamespace(gallery=SimpleNamespace(manifest=manifest), has_text=True),
                              source=SimpleNamespace(repo_id=None, folder=str(out), notice=None))
    about = about_markdown(service)
    assert "Recall on val2017 (20 images, 40 captions; no paper reports this split)" in about
    assert "published" not in about and "Karpathy" not in about


def test_compare_flags_more_than_one_and_a_half_points_below():
    entry = published.published_for("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert entry.text_to_image == {"R@1": 39.34, "R@5": 65.43, "R@10": 75.61}
    assert entry.image_to_text == {"R@1": 56.32, "R@5": 79.84, "R@10": 87.12}
    result = {"text_to_image": {"R@1": 37.0, "R@5": 63.43, "R@10": 74.0}, "images": 5000, "split_images": 5000}
    two_below = published.compare(result, entry)
    assert two_below["flagged"] is True and two_below["difference"] == -2.0
    assert two_below["note"].startswith("text → image R@5 63.4 is 2.0 points below the published 65.4 (open_clip")
    assert "preprocessing or tokenisation differs from the reference" in two_below["note"]
    one_below = published.compare({**result, "text_to_image": {"R@5": 64.43}}, entry)
    assert one_below["flagged"] is False and "within 1.5 points" in one_below["note"]
    above = published.compare({**result, "text_to_image": {"R@5": 66.0}}, entry)
    assert above["flagged"] is False and "differs" not in above["note"]


def test_siglip2_compares_r1_with_the_same_rule():
    entry = published.published_for("Google/SigLIP2-Base-Patch16-224")  # Hub ids are case-insensitive
    assert entry.text_to_image == {"R@1": 52.1} and entry.image_to_text == {"R@1": 68.9}
    assert entry.source_url.endswith("README_siglip2.md")
    flagged = published.compare({"text_to_image": {"R@1": 50.1, "R@5": 80.0}}, entry)
    assert flagged["flagged"] is True and flagged["compared"] == "text_to_image R@1"
    assert "Only R@1 is published for this model, so R@1 is compared" in flagged["note"]
    assert published.compare({"text_to_image": {"R@1": 51.1, "R@5": 80.0}}, entry)["flagged"] is False


def test_published_table_holds_source_figures_only():
    documented = ["laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "openai/clip-vit-base-patch32",
                  "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14", "google/siglip-base-patch16-224",
                  "google/siglip2-base-patch16-224", "google/siglip2-base-patch16-256",
                  "google/siglip2-base-patch32-256"]
    assert all(published.published_for(model) for model in documented)
    assert published.published_for("/tmp/some/local/folder") is None and published.published_for(None) is None
    assert len({entry.model_id.lower() for entry in published.TABLE}) == len(published.TABLE)
    for entry in published.TABLE:
        assert re.search(r"/blob/[0-9a-f]{40}/", entry.source_url), entry
        for recall in (entry.text_to_image, entry.image_to_text):
            values = list(recall.values())
            assert values and values == sorted(values) and all(0 < v < 100 for v in values), entry
    assert published.published_for("openai/clip-vit-base-patch32").text_to_image["R@5"] == 55.94


def test_unreachable_hub_skips_with_a_reason_and_the_build_succeeds(coco_dir, tiny_clip, hermetic_hf, monkeypatch,
                                                                    tmp_path, capsys):
    from huggingface_hub import constants

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.delenv(karpathy.ENV, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    started = time.perf_counter()
    with pytest.raises(karpathy.KarpathyUnavailable, match="could not be downloaded"):
        karpathy.load_split()
    assert time.perf_counter() - started < 5  # one request, no back-off
    out = tmp_path / "out"
    assert run_build("--coco-dir", coco_dir[0], "--splits", "val2017", "--model", tiny_clip, "--out", out) == 0
    evaluation = Manifest.read(out).evaluation
    skipped = evaluation[karpathy.NAME]
    assert "could not be downloaded" in skipped["skipped"] and "text_to_image" not in skipped
    assert skipped["source"] == karpathy.default_source()
    assert "text_to_image" in evaluation["val2017"]
    assert f"recall ({karpathy.NAME}): skipped: {karpathy.REPO}@{karpathy.REVISION[:12]}" in capsys.readouterr().out


def test_split_downloads_from_a_pinned_hub_revision_then_from_the_cache(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    local = tmp_path / "split.parquet"
    write_karpathy_parquet(local, [(11, karpathy_captions(11)), (12, karpathy_captions(12))])
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    api.create_repo(karpathy.REPO, repo_type="dataset")
    commit = api.create_commit(karpathy.REPO, [CommitOperationAdd(karpathy.FILENAME, str(local))],
                               commit_message="split", repo_type="dataset").oid
    split = karpathy.load_split(f"{karpathy.REPO}@{commit}")
    assert split.image_ids == [11, 12] and split.captions[1] == karpathy_captions(12)
    assert split.source == {"repo": karpathy.REPO, "revision": commit, "file": karpathy.FILENAME}
    hub.stop()  # pinned and cached: no network needed any more
    assert karpathy.load_split(f"{karpathy.REPO}@{commit}").image_ids == [11, 12]
    with pytest.raises(karpathy.KarpathyUnavailable, match="could not be downloaded"):
        karpathy.load_split(f"{karpathy.REPO}@{'0' * 40}")


def test_the_label_says_which_captions_of_the_split_were_used():
    from builder.evaluate import karpathy_label

    assert karpathy_label(5000, 5000, 25010, 25010) == f"{karpathy.NAME} (5,000 images, 25,010 captions)"
    assert karpathy_label(5000, 5000, 25000, 25010, per_image=5) == (
        f"{karpathy.NAME} (5,000 images; 25,000 captions, the first 5 per image of the split's 25,010)")
    assert karpathy_label(12, 13, 60, 60) == f"{karpathy.NAME} (12 of 13 images, 60 captions)"


def test_reader_takes_karpathy_records_five_captions_and_test_rows(tmp_path):
    path = tmp_path / "records.parquet"
    sentences = [{"tokens": ["a", "dog"], "raw": f"A dog {n}.", "imgid": 0, "sentid": n} for n in range(7)]
    table = pa.table({"split": ["test", "val", "test"], "cocoid": [5, 6, 5],
                      "sentences": [sentences, sentences[:5], sentences[:5]]})
    pq.write_table(table, path)
    split = karpathy.load_split(str(path))
    assert split.image_ids == [5] and split.captions == [[f"A dog {n}." for n in range(7)]]  # all, as published
    assert split.listed == [7]
    with pytest.raises(karpathy.KarpathyUnavailable, match="switched off"):
        karpathy.load_split("off")
    pq.write_table(pa.table({"cocoid": [1]}), path)
    with pytest.raises(karpathy.KarpathyUnavailable, match="no column sentences"):
        karpathy.load_split(str(path))


def test_folder_galleries_are_not_matched_by_number(tmp_path, tiny_clip, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(4):
        draw_shape("red", "circle", size=32, seed=n).save(folder / f"{n}.png")
    split = tmp_path / "split.parquet"
    write_karpathy_parquet(split, [(n, karpathy_captions(n)) for n in range(4)])
    monkeypatch.setenv(karpathy.ENV, str(split))
    assert run_build("--images", folder, "--model", tiny_clip, "--out", tmp_path / "out") == 0
    assert karpathy.NAME not in Manifest.read(tmp_path / "out").evaluation
