"""Synthetic galleries on disk: a folder of shape pictures with captions, and COCO's official folder layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .models import COLORS, SHAPES, caption_for, draw_shape

SHAPE_CATEGORY_IDS = {shape: number for number, shape in enumerate(SHAPES, start=1)}


def write_shapes_folder(root: Path, per_combo: int = 2, seed: int = 5000, size: int = 64) -> list[dict]:
    """A plain image folder with metadata.jsonl captions; returns one dict per image in sorted-path order."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(root / "metadata.jsonl", "w") as sidecar:
        for color in COLORS:
            for shape in SHAPES:
                for k in range(per_combo):
                    # PNG: the same pixels the shapes model was trained on (no JPEG artifacts at 64 px)
                    name = f"{color}-{shape}-{k}.png"
                    draw_shape(color, shape, size=size, seed=seed + len(rows)).save(root / name)
                    sidecar.write(json.dumps({"file_name": name, "caption": caption_for(color, shape)}) + "\n")
                    rows.append({"file_name": name, "color": color, "shape": shape})
    return sorted(rows, key=lambda r: r["file_name"])


def write_coco_dir(root: Path, counts: dict[str, int], size: int = 64, bad: bool = True) -> dict[int, dict]:
    """Official COCO layout with captions_*.json and instances_*.json; a few broken files when `bad`."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    truth, next_id = {}, 1000
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        images, captions, instances = [], [], []
        for k in range(count):
            color, shape = combos[k % len(combos)]
            image_id, next_id = next_id, next_id + 7
            name = f"{image_id:012d}.jpg"
            draw_shape(color, shape, size=size, seed=image_id).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size,
                           "coco_url": f"http://images.cocodataset.org/{split}/{name}"})
            for n in range(2):
                captions.append({"id": len(captions) + 1, "image_id": image_id,
                                 "caption": caption_for(color, shape, seed=n)})
            instances.append({"id": len(instances) + 1, "image_id": image_id,
                              "category_id": SHAPE_CATEGORY_IDS[shape]})
            truth[image_id] = {"split": split, "color": color, "shape": shape, "file_name": name}
        if bad:
            broken = {"truncated": truncated_jpeg(), "empty": b"", "not-an-image": b"hello, I am text\n" * 20}
            for label, payload in broken.items():
                image_id, next_id = next_id, next_id + 7
                name = f"{image_id:012d}.jpg"
                (root / split / name).write_bytes(payload)
                images.append({"id": image_id, "file_name": name, "width": size, "height": size, "coco_url": ""})
                truth[image_id] = {"split": split, "bad": label, "file_name": name}
            image_id, next_id = next_id, next_id + 7  # listed in the annotations, missing on disk
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 1, "height": 1})
            truth[image_id] = {"split": split, "bad": "missing", "file_name": f"{image_id:012d}.jpg"}
        categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in SHAPE_CATEGORY_IDS.items()]
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": instances, "categories": categories}))
    return truth


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    draw_shape("red", "circle", size=64, seed=1).save(buffer, format="JPEG")
    return buffer.getvalue()[:300]
