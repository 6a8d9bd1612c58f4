"""Object index stage: FAISS over the box crops' vectors, and category precision@5 of object vs whole-image queries."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import OBJECTS_INDEX, ObjectsInfo

from .index import build_index
from .pack import PackedObjects

log = logging.getLogger("builder")

PROMPT = "a photo of a {}"  # the object queries of the evaluation: one per category
EVAL_K = 5


def index_objects(objects: PackedObjects, folder: Path, factory: str, params: str, encoder: Encoder,
                  image_index: faiss.Index, image_categories: list[list[str]]) -> ObjectsInfo:
    """Write objects.faiss into `folder` (chosen like the image index: exact while small, quantised when large) and
    describe the object index for the manifest, with its evaluation."""
    log.info("objects: %s over %d box vectors", factory, len(objects.vectors))
    index, info = build_index(objects.vectors, factory, params)
    faiss.write_index(index, str(folder / OBJECTS_INDEX))
    evaluation = category_precision(encoder, index, objects.table.column("category").to_pylist(), image_index,
                                    image_categories)
    return ObjectsInfo(count=len(objects.vectors), boxes_total=objects.boxes_total, boxes_kept=objects.boxes_kept,
                       min_side=objects.min_side, context=objects.context, index=info, evaluation=evaluation)


def category_precision(encoder: Encoder, object_index: faiss.Index, object_categories: list[str],
                       image_index: faiss.Index, image_categories: list[list[str]]) -> dict:
    """For each category, the query "a photo of a {category}": the share of its top-5 objects of that category,
    beside the share of its top-5 whole images that contain one; averaged over categories. {} for a model without
    text."""
    if not encoder.info.has_text or not object_categories:
        return {}
    names = sorted(set(object_categories))
    queries = np.concatenate([encoder.encode_texts([PROMPT.format(n) for n in names[i:i + 64]])
                              for i in range(0, len(names), 64)]).astype(np.float32)
    _, object_rows = object_index.search(queries, min(EVAL_K, object_index.ntotal))
    _, image_rows = image_index.search(queries, min(EVAL_K, image_index.ntotal))
    kinds = np.asarray(object_categories, dtype=object)
    objects = [float(np.mean([kinds[r] == name for r in rows if r >= 0])) for name, rows in zip(names, object_rows)]
    images = [float(np.mean([name in image_categories[r] for r in rows if r >= 0]))
              for name, rows in zip(names, image_rows)]
    result = {"queries": len(names), "prompt": PROMPT, "k": EVAL_K,
              "objects_precision_at_5": round(float(np.mean(objects)), 4),
              "images_precision_at_5": round(float(np.mean(images)), 4)}
    log.info("objects: category precision@5 %.3f for object queries, %.3f for whole images (%d categories)",
             result["objects_precision_at_5"], result["images_precision_at_5"], len(names))
    return result
