"""COCO as it really is on the Hub, on the loopback Hub: make_coco draws the rows, publish_coco puts the repos up."""

# The loopback repos copy the real layouts (dataset cards and file listings checked with the search tool):
# - `BrandonLSX/coco-2017`: README `configs` with `data/train-*`, `data/validation-*`, `data/test-*`; shards
#   `data/<split>-NNNNN-of-MMMMM.parquet` written by `datasets` (`push_to_hub`); columns image (Image: struct of
#   bytes + path), image_id int64, file_name string, width int32, height int32, annotations struct of lists
#   (id int64, category_id int32, category_name string, bbox list of 4 float32, area float64, iscrowd int32).
# - `phiyodr/coco2017`: no `configs`; `data/train-00000-of-00001-<hash>.parquet`,
#   `data/validation-00000-of-00001-<hash>.parquet`; columns license, file_name, coco_url, height, width,
#   date_captured, flickr_url, image_id, ids (list int64), captions (list string).
# Rows are in COCO's annotation-file order (not sorted by id), as a conversion from the official JSON leaves them.

from __future__ import annotations

import io
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from .galleries import SHAPE_CATEGORY_IDS
from .models import COLORS, SHAPES, caption_for, draw_shape

IMAGES_REPO = "BrandonLSX/coco-2017"
CAPTIONS_REPO = "phiyodr/coco2017"
COMBOS = [(c, s) for c in COLORS for s in SHAPES]

IMAGE_FEATURES = datasets.Features({
    "image": datasets.Image(),
    "image_id": datasets.Value("int64"),
    "file_name": datasets.Value("string"),
    "width": datasets.Value("int32"),
    "height": datasets.Value("int32"),
    "annotations": {
        "id": datasets.List(datasets.Value("int64")),
        "category_id": datasets.List(datasets.Value("int32")),
        "category_name": datasets.List(datasets.Value("string")),
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "area": datasets.List(datasets.Value("float64")),
        "iscrowd": datasets.List(datasets.Value("int32")),
    },
})

IMAGES_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
dataset_info:
  features:
  - name: image
    dtype: image
  - name: image_id
    dtype: int64
  - name: file_name
    dtype: string
  - name: width
    dtype: int32
  - name: height
    dtype: int32
  - name: annotations
    struct:
    - name: id
      list: int64
    - name: category_id
      list: int32
    - name: category_name
      list: string
    - name: bbox
      list:
        list: float32
        length: 4
    - name: area
      list: float64
    - name: iscrowd
      list: int32
---
"""

CAPTIONS_README = """---
language:
- en
pretty_name: COCO2017
dataset_info:
  features:
  - name: license
    dtype: int64
  - name: file_name
    dtype: string
  - name: coco_url
    dtype: string
  - name: height
    dtype: int64
  - name: width
    dtype: int64
  - name: date_captured
    dtype: string
  - name: flickr_url
    dtype: string
  - name: image_id
    dtype: int64
  - name: ids
    sequence: int64
  - name: captions
    sequence: string
---
"""


def _jpeg(color: str, shape: str, seed: int, size: int) -> bytes:
    buffer = io.BytesIO()
    draw_shape(color, shape, size=size, seed=seed).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_coco(counts: dict[str, int], seed: int = 7, size: int = 64, bad: int | None = None) -> dict[str, list[dict]]:
    """Per Hub split, rows in annotation-file order: distinct COCO-like ids, not sorted; `bad` makes that row of
    the validation split carry bytes that are not an image."""
    rng = random.Random(seed)
    ids = rng.sample(range(1, 600_000), sum(counts.values()))
    out, used = {}, 0
    for split, count in counts.items():
        rows = []
        for k in range(count):
            image_id = ids[used + k]
            color, shape = COMBOS[image_id % len(COMBOS)]
            extra = SHAPES[(image_id // 7) % len(SHAPES)]
            names = [shape, extra, shape]  # a category repeats: one name per annotation, like COCO
            rows.append({
                "image": {"bytes": _jpeg(color, shape, image_id, size), "path": None},
                "image_id": image_id, "file_name": f"{image_id:012d}.jpg", "width": size, "height": size,
                "annotations": {
                    "id": [image_id * 10 + n for n in range(3)],
                    "category_id": [SHAPE_CATEGORY_IDS[n] for n in names],
                    "category_name": names,
                    "bbox": [[1.0, 2.0, 10.0, 12.0]] * 3, "area": [120.0] * 3, "iscrowd": [0, 0, 0],
                },
                "color": color, "shape": shape, "split": split,
            })
        used += count
        out[split] = rows
    if bad is not None:
        out["validation"][bad]["image"] = {"bytes": b"hello, I am text\n" * 20, "path": None}
        out["validation"][bad]["bad"] = True
    return out


def dataset_of(rows: list[dict]) -> datasets.Dataset:
    columns = {name: [row[name] for row in rows] for name in IMAGE_FEATURES}
    return datasets.Dataset.from_dict(columns, features=IMAGE_FEATURES)


def image_shards(rows: list[dict], split: str, shards: int, rows_per_group: int, *, writer: str) -> dict[str, bytes]:
    """The split as `datasets` pushes it: contiguous shards named <split>-NNNNN-of-MMMMM.parquet.

    writer="datasets": datasets' own ParquetWriter (offset index + content-defined pages, as datasets >= 4.x);
    writer="plain": pyarrow defaults with datasets' schema metadata (no offset index, one page per column chunk,
    as older writers left them)."""
    files, per = {}, -(-len(rows) // shards)
    for n in range(shards):
        part = dataset_of(rows[n * per:(n + 1) * per])
        buffer = io.BytesIO()
        if writer == "datasets":
            part.to_parquet(buffer, batch_size=rows_per_group)
        else:
            pq.write_table(part.data.table, buffer, row_group_size=rows_per_group)
        files[f"data/{split}-{n:05d}-of-{shards:05d}.parquet"] = buffer.getvalue()
    return files


def captions_file(rows: list[dict]) -> bytes:
    ordered = sorted(rows, key=lambda r: (r["image_id"] * 7919) % 1000)  # another order: joined by id
    table = pa.table({
        "license": pa.array([3] * len(ordered), pa.int64()),
        "file_name": [r["file_name"] for r in ordered],
        "coco_url": [f"http://images.cocodataset.org/{r['split']}/{r['file_name']}" for r in ordered],
        "height": pa.array([r["height"] for r in ordered], pa.int64()),
        "width": pa.array([r["width"] for r in ordered], pa.int64()),
        "date_captured": ["2013-11-14 16:28:13"] * len(ordered),
        "flickr_url": [f"http://farm4.staticflickr.com/{r['image_id']}.jpg" for r in ordered],
        "image_id": pa.array([r["image_id"] for r in ordered], pa.int64()),
        "ids": pa.array([[r["image_id"] * 10 + n for n in range(3)] for r in ordered], pa.list_(pa.int64())),
        "captions": [[caption_for(r["color"], r["shape"], seed=n) for n in range(3)] for r in ordered],
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def publish_coco(hub, coco: dict[str, list[dict]], *, train_shards: int = 3, rows_per_group: int = 4) -> dict:
    """Both repos on the loopback Hub; returns {path: bytes} of the images repo."""
    files = {"README.md": IMAGES_README.encode()}
    files.update(image_shards(coco["train"], "train", train_shards, rows_per_group, writer="datasets"))
    files.update(image_shards(coco["validation"], "validation", 2, rows_per_group, writer="plain"))
    hub.put_files(IMAGES_REPO, files, message="Upload dataset")
    hub.put_files(CAPTIONS_REPO, {
        "README.md": CAPTIONS_README.encode(),
        "data/train-00000-of-00001-0084e041f1902997.parquet": captions_file(coco["train"]),
        "data/validation-00000-of-00001-e3c37e369512a3aa.parquet": captions_file(coco["validation"]),
    }, message="Upload data")
    return files
