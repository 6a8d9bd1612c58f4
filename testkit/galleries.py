"""Synthetic galleries on disk: a folder of shape pictures with captions, and COCO's official folder layout."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import ImageDraw

from .models import COLORS, SHAPES, caption_for, draw_shape
from .models.shapes import draw_scene

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


SMALL_SIDE = 12  # the little dot in each scene's corner: a true instance box below the builder's cut-off


def scene_category(color: str, shape: str) -> str:
    """The category name of a shape in the scenes world: "red circle"."""
    return f"{color} {shape}"


def write_scene_coco(root: Path, counts: dict[str, int], size: int = 192, per_scene: int = 3,
                     seed: int = 0, first_id: int = 5000) -> dict[int, dict]:
    """The scenes world in COCO's folder layout: each picture holds `per_scene` shapes of different classes (one
    category per colour and shape, "red circle") with their true boxes in instances_<split>.json (COCO's
    [x, y, w, h]), plus a small dot in a corner whose box is below the object cut-off; one caption per shape. Returns
    {image_id: {"split", "file_name", "objects": [(category, [x0, y0, x1, y1]), ...]}} (the dot not included)."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    categories = {scene_category(c, s): number for number, (c, s) in enumerate(combos, start=1)}
    rng = random.Random(seed)
    truth, image_id = {}, first_id
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, captions, instances = [], [], []
        for _ in range(count):
            image_id += 3
            chosen = rng.sample(combos, per_scene)
            picture, boxes = draw_scene(chosen, size=size, seed=image_id)
            dot = rng.choice(combos)
            ImageDraw.Draw(picture).ellipse([1, 1, SMALL_SIDE, SMALL_SIDE], fill=COLORS[dot[0]])
            name = f"{image_id:012d}.jpg"
            picture.save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size,
                           "coco_url": f"http://images.cocodataset.org/{split}/{name}"})
            for color, shape in chosen:
                captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": caption_for(color, shape)})
            for (color, shape), (x0, y0, x1, y1) in [*zip(chosen, boxes), (dot, (1, 1, SMALL_SIDE, SMALL_SIDE))]:
                instances.append({"id": len(instances) + 1, "image_id": image_id, "iscrowd": 0,
                                  "category_id": categories[scene_category(color, shape)],
                                  "bbox": [x0, y0, round(x1 - x0, 1), round(y1 - y0, 1)],
                                  "area": round((x1 - x0) * (y1 - y0), 1)})
            truth[image_id] = {"split": split, "file_name": name,
                               "objects": [(scene_category(c, s), box) for (c, s), box in zip(chosen, boxes)]}
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": images, "annotations": instances,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in categories.items()]}))
    return truth


def iou(a, b) -> float:
    """Intersection over union of two boxes [x0, y0, x1, y1]."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
