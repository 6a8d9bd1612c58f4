"""COCO as it really is on the Hub: sharded parquet read in place, trials that download in proportion to --limit.

The loopback repos copy the real layouts of `BrandonLSX/coco-2017` and `phiyodr/coco2017`: coco_fixtures.py
builds them and describes them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from testkit.coco import CAPTIONS_REPO, IMAGES_REPO, dataset_of, make_coco, publish_coco
from testkit.galleries import SHAPE_CATEGORY_IDS
from testkit.helpers import run_build
from testkit.models import caption_for


def write_coco_dir(root: Path, coco: dict[str, list[dict]]) -> None:
    """The same images and annotations in the official layout, for --coco-dir."""
    categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in SHAPE_CATEGORY_IDS.items()]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for hub_split, split in (("train", "train2017"), ("validation", "val2017")):
        (root / split).mkdir(exist_ok=True)
        images, captions, instances = [], [], []
        for row in coco[hub_split]:
            (root / split / row["file_name"]).write_bytes(row["image"]["bytes"])
            images.append({"id": row["image_id"], "file_name": row["file_name"], "width": row["width"],
                           "height": row["height"],
                           "coco_url": f"http://images.cocodataset.org/{hub_split}/{row['file_name']}"})
            captions += [{"id": len(captions) + 1, "image_id": row["image_id"],
                          "caption": caption_for(row["color"], row["shape"], seed=n)} for n in range(3)]
            instances += [{"id": a, "image_id": row["image_id"], "category_id": c}
                          for a, c in zip(row["annotations"]["id"], row["annotations"]["category_id"])]
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": instances, "categories": categories}))


def expected_rows(coco: dict[str, list[dict]], rows: dict[str, list[dict]] | None = None) -> list[dict]:
    """What metadata.parquet must hold: splits in --splits order, then the repo's own row order (shard by shard, as
    publish_coco wrote them); bad images skipped."""
    out = []
    for hub_split, split in (("train", "train2017"), ("validation", "val2017")):
        for row in (rows or coco)[hub_split]:
            if row.get("bad"):
                continue
            out.append({
                "image_id": row["image_id"], "split": split, "file_name": row["file_name"],
                "width": row["width"], "height": row["height"],
                "captions": [caption_for(row["color"], row["shape"], seed=n) for n in range(3)],
                "categories": sorted(set(row["annotations"]["category_name"])),
                "url": f"http://images.cocodataset.org/{hub_split}/{row['file_name']}",
            })
    return out


def built_rows(out: Path) -> list[dict]:
    keys = ("image_id", "split", "file_name", "width", "height", "captions", "categories", "url")
    return [{k: r[k] for k in keys} for r in pq.read_table(out / "metadata.parquet").to_pylist()]


def arrow_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*.arrow")]


@pytest.fixture
def coco_hub(hub, monkeypatch, tmp_path):
    """The two repos on the loopback Hub (train: 3 shards of 40 rows, validation: 2 shards of 6 rows), with the
    datasets cache pointed into tmp_path so that any Arrow copy would be seen."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    coco = make_coco({"train": 120, "validation": 12}, bad=4)
    files = publish_coco(hub, coco)
    return hub, coco, files


FOOTER_READ = 64 * 1024  # pyarrow reads a parquet file's last 64 KiB (or the whole file) to find its footer,
# then the whole footer again when it is longer than that
HOLE = 8 * 1024  # pyarrow's pre-buffering reads over gaps up to this size between the column chunks it wants


def shard_layout(data: bytes) -> dict:
    """Sizes inside one shard, from pyarrow's metadata: the whole file, each row group's column chunks (the image
    column's among them), and the tail pyarrow reads for the footer."""
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
    image = next(c for c in range(metadata.num_columns) if metadata.schema.column(c).path == "image.bytes")
    return {"size": len(data), "rows": [g.num_rows for g in groups],
            "group_bytes": [sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups],
            "image_bytes": [g.column(image).total_compressed_size for g in groups],
            "holes": sum(g.column(image).total_compressed_size for g in groups[1:]
                         if g.column(image).total_compressed_size <= HOLE),
            "footer_read": min(len(data), FOOTER_READ) + (metadata.serialized_size
                                                          if metadata.serialized_size + 8 > FOOTER_READ else 0)}


def test_a_limit_trial_fetches_only_the_first_row_groups_of_the_first_shard(coco_hub, tmp_path, tiny_clip):
    hub, coco, files = coco_hub
    out = tmp_path / "out"
    assert run_build("--hf-images", IMAGES_REPO, "--hf-captions", CAPTIONS_REPO, "--limit", "10",
                     "--model", tiny_clip, "--out", out, "--num-workers", "2") == 0  # forked workers read row groups
    first = coco["train"][:10]  # the first 10 rows of train-00000-of-00003, in the repo's own order
    assert built_rows(out) == expected_rows(coco, {"train": first, "validation": []})

    served = hub.downloaded(IMAGES_REPO)
    shards = {path: shard_layout(data) for path, data in files.items() if path.endswith(".parquet")}
    first_shard = "data/train-00000-of-00003.parquet"
    layout = shards[first_shard]
    assert layout["rows"][:3] == [4, 4, 4] and len(layout["rows"]) == 10  # rows 0-9: row groups 0-2 of 10
    bound = layout["footer_read"] + sum(layout["group_bytes"][:3])
    # everything fetched is the footer and the first three row groups (metadata columns, then the image column)
    assert served[first_shard] <= bound
    assert all(served.get(path, 0) == 0 for path in shards if path != first_shard)  # not even their footers
    train = sum(s["size"] for p, s in shards.items() if "/train-" in p)
    print(f"\n--limit 10 fetched {served[first_shard]:,} bytes (bound {bound:,}: footer read "
          f"{layout['footer_read']:,} + row groups 0-2 {sum(layout['group_bytes'][:3]):,}) of {train:,} in the "
          f"train shards ({served[first_shard] / train:.1%})")
    assert not arrow_files(tmp_path)


def test_a_full_build_reads_every_image_in_place_and_equals_coco_dir(coco_hub, tmp_path, tiny_clip, hermetic_hf):
    import numpy as np

    from clipsearch.core.manifest import Manifest

    hub, coco, files = coco_hub
    out = tmp_path / "out"
    # fp32: the --coco-dir build below orders rows by id, so its batches differ, and only fp32 vectors do not
    # depend on their batch-mates
    assert run_build("--hf-images", IMAGES_REPO, "--hf-captions", CAPTIONS_REPO, "--model", tiny_clip,
                     "--out", out, "--batch-size", "16", "--precision", "fp32") == 0
    rows = built_rows(out)
    assert rows == expected_rows(coco)
    manifest = Manifest.read(out)
    bad = next(r for r in coco["validation"] if r.get("bad"))
    assert [s.path for s in manifest.skipped] == [f"val2017/{bad['file_name']}"]
    assert manifest.sources[0].revision == hub.head(IMAGES_REPO)
    assert manifest.sources[1].revision == hub.head(CAPTIONS_REPO)

    # every shard came down whole, once, at the pinned commit; nothing was converted to a second copy
    for path in files:
        if path.endswith(".parquet"):
            whole = [r for r in hub.requests if r.method == "GET" and r.path.endswith(path) and r.range is None]
            assert len(whole) == 1 and hub.head(IMAGES_REPO) in whole[0].path, path
    cached = list(hermetic_hf.rglob("*.parquet"))
    assert sorted(p.name for p in cached if "coco-2017" in str(p)) == sorted(
        Path(p).name for p in files if p.endswith(".parquet"))
    assert not arrow_files(tmp_path)
    served, parquet = hub.downloaded(IMAGES_REPO), {p: len(d) for p, d in files.items() if p.endswith(".parquet")}
    print(f"\nfull build fetched {sum(served[p] for p in parquet):,} bytes for {sum(parquet.values()):,} bytes of "
          "image shards (listing by range, then each shard whole)")
    for path, size in parquet.items():  # the listing read the footer and the metadata columns, nothing more
        layout = shard_layout(files[path])  # (but small image chunks between them, which pyarrow reads over)
        listing = layout["footer_read"] + sum(layout["group_bytes"]) - sum(layout["image_bytes"]) + layout["holes"]
        assert size <= served[path] <= size + listing, path
    blobs = sum(p.stat().st_size for p in hermetic_hf.rglob("*") if p.is_file() and "blobs" in p.parts
                and "coco-2017" in str(p))
    # one copy of the parquet shards (and the card, read for its split patterns)
    assert blobs == sum(len(d) for p, d in files.items() if p.endswith(".parquet")) + len(files["README.md"])

    # the same images through --coco-dir give the same gallery
    coco_root = tmp_path / "coco"
    write_coco_dir(coco_root, coco)
    other = tmp_path / "from-coco-dir"
    assert run_build("--coco-dir", coco_root, "--model", tiny_clip, "--out", other, "--batch-size", "16",
                     "--precision", "fp32") == 0
    by_id = lambda rows: sorted(rows, key=lambda r: (r["split"] != "train2017", r["image_id"]))  # noqa: E731
    assert built_rows(other) == by_id(rows)  # --coco-dir keeps id order; the Hub source its files' order
    ours = {r["image_id"]: v for r, v in zip(rows, np.load(out / "embeddings.npy"))}
    theirs = {r["image_id"]: v for r, v in zip(built_rows(other), np.load(other / "embeddings.npy"))}
    assert ours.keys() == theirs.keys() and all(np.allclose(ours[i], theirs[i], atol=1e-6) for i in ours)


def test_records_and_bytes_are_the_same_whatever_is_cached(coco_hub, hermetic_hf):
    """The record list (ids, order, metadata) and every image's bytes, read by range, from the downloaded shard,
    or from a trial's fetched row groups, equal what the parquet holds."""
    from builder.hubcoco import HubCocoSource
    from builder.sources import estimate_line, human_bytes

    hub, coco, files = coco_hub
    truth = {r["image_id"]: r["image"]["bytes"] for rows in coco.values() for r in rows}

    by_range = HubCocoSource(IMAGES_REPO, CAPTIONS_REPO, ["train2017", "val2017"])
    records = by_range.records
    assert [(r.split, r.image_id) for r in records] == [("train2017", r["image_id"]) for r in coco["train"]] + [
        ("val2017", r["image_id"]) for r in coco["validation"]]  # the repo's own order
    for record in records[::7]:
        assert by_range.read(record) == truth[record.image_id]  # row group by row group, over HTTP Range
    # the instance boxes of annotations.bbox (COCO's [x, y, w, h]) reach the object index as [x0, y0, x1, y1]
    first = coco["train"][0]["annotations"]
    assert records[0].boxes == [[x, y, x + w, y + h, name] for (x, y, w, h), name in zip(first["bbox"],
                                                                                         first["category_name"])]

    trial = HubCocoSource(IMAGES_REPO, CAPTIONS_REPO, ["val2017", "train2017"])
    trial.limit(15)  # all 12 validation rows, then the first 3 of train
    fetched, cached, how = trial.download_estimate()
    assert fetched > 0 and cached == 0 and "by range" in how and "2 of 5 parquet shards whole" in how
    line = estimate_line(trial, 512)
    assert line.startswith(f"plan: download ~{human_bytes(fetched)} (") and "for 15 images" in line
    trial.fetch(progress=False)
    assert [r.split for r in trial.records] == ["val2017"] * 12 + ["train2017"] * 3
    assert {r.image_id for r in trial.records[12:]} == {r["image_id"] for r in coco["train"][:3]}
    before = sum(hub.downloaded(IMAGES_REPO).values())
    for record in trial.records:
        assert trial.read(record) == truth[record.image_id]
    assert sum(hub.downloaded(IMAGES_REPO).values()) == before  # read from the fetched row groups, no request

    # the trial needed every validation row: those two shards came whole, into the Hub cache
    sizes = {p: len(d) for p, d in files.items() if p.endswith(".parquet")}
    validation = sum(n for p, n in sizes.items() if "/validation-" in p)
    downloaded = HubCocoSource(IMAGES_REPO, CAPTIONS_REPO, ["train2017", "val2017"])
    assert downloaded.download_estimate()[:2] == (sum(sizes.values()) - validation, validation)
    downloaded.fetch(progress=False)  # the train shards too
    again = HubCocoSource(IMAGES_REPO, CAPTIONS_REPO, ["train2017", "val2017"])
    assert again.download_estimate()[:2] == (0, sum(sizes.values()))
    assert [vars(r) for r in again.records] == [vars(r) for r in records]
    assert again.fingerprint() == by_range.fingerprint()
    before = sum(hub.downloaded(IMAGES_REPO).values())
    for record in again.records:
        assert again.read(record) == truth[record.image_id]  # from the local shards
    assert sum(hub.downloaded(IMAGES_REPO).values()) == before


@pytest.mark.parametrize("args, message", [
    (["--splits", "unlabeled2017"], "--hf-images BrandonLSX/coco-2017: no split for unlabeled2017 (it has test, "
                                    "train, validation); check --splits."),
    (["--splits", "test2017"], "--hf-images BrandonLSX/coco-2017: split test has no files; check --splits."),
    (["--hf-images", "nobody/nothing"], "--hf-images nobody/nothing: "),
    (["--hf-captions", "nobody/nothing"], "--hf-captions nobody/nothing: "),
])
def test_hub_errors_are_one_sentence_naming_the_flag(coco_hub, tmp_path, tiny_clip, capsys, args, message):
    base = ["--hf-images", IMAGES_REPO, "--hf-captions", CAPTIONS_REPO]
    assert run_build(*base, *args, "--model", tiny_clip, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_local_folder_in_hub_layout_is_read_the_same_way(tmp_path):
    """A folder laid out like a Hub repo is read in place with pyarrow, whatever encoding its writer chose (here
    DELTA_BYTE_ARRAY); nothing to download."""
    from builder.hubcoco import HubCocoSource

    coco = make_coco({"train": 9, "validation": 3})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    for split, rows in coco.items():
        pq.write_table(dataset_of(rows).data.table, tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet",
                       use_dictionary=False, column_encoding={"image.bytes": "DELTA_BYTE_ARRAY"}, row_group_size=4)
    source = HubCocoSource(str(tmp_path / "repo"), None, ["train2017", "val2017"])
    assert source.download_estimate() == (0, sum(p.stat().st_size for p in (tmp_path / "repo").rglob("*.parquet")),
                                          "")
    truth = {r["image_id"]: r["image"]["bytes"] for rows in coco.values() for r in rows}
    assert [r.image_id for r in source.records] == [r["image_id"] for r in coco["train"] + coco["validation"]]
    assert all(source.read(r) == truth[r.image_id] for r in source.records)
    assert source.infos[0].revision is None and source.infos[0].location == str((tmp_path / "repo").resolve())
