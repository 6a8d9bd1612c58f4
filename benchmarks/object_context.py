"""How much context should an object crop carry? Object search by text and by region at each context, on scenes.

    python -m benchmarks.object_context                     # contexts 0, 0.1, 0.25, 0.5; 120 indexed scenes
    python -m benchmarks.object_context --quick             # 40 scenes

The world: scenes of three coloured shapes each (testkit.galleries.write_scene_coco, one category per colour and
shape, true boxes in COCO's instances json), embedded with the tiny shapes CLIP of testkit (trained on single shapes
at 32 px). For each context the builder indexes the train2017 scenes (`--object-context C`) and then:
- text: for each of the 20 categories, "a {category}" -> top-5 objects; a hit counts when its category is right and
  its box overlaps a true box of that category with IoU >= 0.5 (object P@5); beside it, whole-image search's top-5
  images that contain the category at all (image P@5, the same at every context);
- region: every shape of the held-out val2017 scenes, cut from its picture with the same context
  (Searcher.search_region), must find its category first (region top-1), and among its top 5 (region P@5).
A last row repeats the chosen context with every box cut from the picture as decoded for the whole image (JPEG draft
at the model's input size) instead of a decode that keeps the smallest box at input size.
Writes benchmarks/results/object_context.md. The COCO-scale figures (boxes kept, index sizes) are estimates from the
instance statistics in docs/decisions/0029-object-index.md, not measured here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import builder.embed
from clipsearch.core.encoder import Encoder
from clipsearch.core.gallery import Gallery
from clipsearch.core.objects import CONTEXT
from clipsearch.core.search import Searcher
from clipsearch.serve.download import IndexSource
from clipsearch.serve.service import attach_objects
from testkit.galleries import iou, write_scene_coco
from testkit.helpers import run_build
from testkit.models import cached_shapes_clip

from .common import Report, arguments

CONTEXTS = (0.0, 0.1, 0.25, 0.5)


def measure(folder: Path, truth: dict, root: Path) -> dict:
    gallery = Gallery.open(folder)
    model = gallery.manifest.model
    searcher = Searcher(gallery, Encoder.load(model["model_id"], model["revision"], "cpu"))
    attach_objects(searcher, IndexSource(folder=folder, repo_id=None, revision=None, ref=None), None)
    indexed = {i: t for i, t in truth.items() if t["split"] == "train2017"}
    categories = sorted({c for t in indexed.values() for c, _ in t["objects"]})
    objects = images = r_precision = 0.0
    for category in categories:
        instances = sum(c == category for t in indexed.values() for c, _ in t["objects"])
        r_precision += sum(hit.category == category for hit in searcher.search_objects(f"a {category}", instances)
                           ) / instances / len(categories)
        objects += sum(hit.category == category and any(c == category and iou(hit.box, box) >= 0.5
                                                        for c, box in indexed[hit.image_id]["objects"])
                       for hit in searcher.search_objects(f"a {category}", 5))
        images += sum(any(c == category for c, _ in indexed[hit.image_id]["objects"])
                      for hit in searcher.search_text(f"a {category}", 5))
    right = tried = region_p5 = 0
    for t in truth.values():
        if t["split"] != "val2017":
            continue
        for category, box in t["objects"]:
            hits = searcher.search_region(str(root / "val2017" / t["file_name"]), json.dumps(box), 5)
            right += hits[0].category == category
            region_p5 += sum(hit.category == category for hit in hits) / 5
            tried += 1
    asked = 5 * len(categories)
    return {"objects": objects / asked, "images": images / asked, "region": right / tried, "regions": tried,
            "r_precision": r_precision, "region_p5": region_p5 / tried,
            "count": len(searcher.objects)}


def main() -> None:
    args = arguments(__doc__, quick="40 indexed scenes instead of 120").parse_args()
    report = Report.start("object_context", "Context around object crops: object search by text and by region")
    model = cached_shapes_clip()
    scenes = 40 if args.quick else 120
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "coco"
        truth = write_scene_coco(root, {"train2017": scenes, "val2017": 20}, seed=11)
        for context in CONTEXTS:
            out = Path(scratch) / f"out-{context}"
            assert run_build("--coco-dir", root, "--splits", "train2017", "--model", model, "--out", out,
                             "--eval", "none", "--object-context", str(context), "-q") == 0
            rows.append((f"{context:g}", measure(out, truth, root)))
            print(context, rows[-1][1])
        # The same at the chosen context, but every box cut from the picture as decoded for the whole image (JPEG
        # draft mode at the model's input size): what keeping the smallest box at input size is worth.
        plain = builder.embed.DecodeDataset._draft_size
        builder.embed.DecodeDataset._draft_size = lambda self, record: self.draft_size
        try:
            out = Path(scratch) / "out-draft"
            assert run_build("--coco-dir", root, "--splits", "train2017", "--model", model, "--out", out,
                             "--eval", "none", "-q") == 0
            rows.append((f"{CONTEXT:g}, boxes cut from the model-size draft", measure(out, truth, root)))
        finally:
            builder.embed.DecodeDataset._draft_size = plain
    lines = [f"{scenes} indexed scenes ({rows[0][1]['count']} boxes), {rows[0][1]['regions']} held-out regions; "
             "tiny shapes CLIP (32 px input).", "",
             "| context | object P@5 (right category, IoU >= 0.5) | object R-precision | whole-image P@5 (contains it) "
             "| region top-1 | region P@5 |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c} | {r['objects']:.3f} | {r['r_precision']:.3f} | {r['images']:.3f} | {r['region']:.3f} | "
              f"{r['region_p5']:.3f} |" for c, r in rows]
    lines += ["", "R-precision: the top R objects for a category with R instances in the index, the share of the right "
              "category (harder than P@5: it reaches the least typical instances)."]
    report.write("\n".join(lines), args.results)


if __name__ == "__main__":
    main()
