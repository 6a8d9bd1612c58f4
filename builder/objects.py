"""Object index stage: FAISS over the box crops' vectors, and category precision@5 of object vs whole-image queries."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from clipsearch.core.calibration import Calibration, expected_calibration_error, fit_logistic
from clipsearch.core.encoder import Encoder
from clipsearch.core.manifest import OBJECTS_INDEX, ObjectsInfo

from .index import build_index
from .pack import PackedObjects

log = logging.getLogger("builder")

PROMPT = "a photo of a {}"  # the object queries of the evaluation: one per category
EVAL_K = 5
CALIBRATION_DEPTH = 50  # object hits per category query that the confidence is fitted on


def index_objects(objects: PackedObjects, folder: Path, factory: str, params: str, encoder: Encoder,
                  image_index: faiss.Index, image_categories: list[list[str]]) -> ObjectsInfo:
    """Write objects.faiss into `folder` (chosen like the image index: exact while small, quantised when large) and
    describe the object index for the manifest, with its evaluation."""
    log.info("objects: %s over %d box vectors", factory, len(objects.vectors))
    index, info = build_index(objects.vectors, factory, params)
    faiss.write_index(index, str(folder / OBJECTS_INDEX))
    categories = objects.table.column("category").to_pylist()
    names = sorted(set(categories))
    # one query per category, "a photo of a {category}", for the evaluation and the calibration alike
    queries = _category_queries(encoder, names) if encoder.info.has_text and names else None
    evaluation = category_precision(queries, names, index, categories, image_index, image_categories)
    return ObjectsInfo(count=len(objects.vectors), boxes_total=objects.boxes_total, boxes_kept=objects.boxes_kept,
                       min_side=objects.min_side, context=objects.context, index=info, evaluation=evaluation,
                       calibration=calibrate_objects(queries, names, index, categories))


def _category_queries(encoder: Encoder, names: list[str]) -> np.ndarray:
    return np.concatenate([encoder.encode_texts([PROMPT.format(n) for n in names[i:i + 64]])
                           for i in range(0, len(names), 64)]).astype(np.float32)


def calibrate_objects(queries: np.ndarray | None, names: list[str], object_index: faiss.Index,
                      object_categories: list[str], seed: int = 0) -> Calibration | None:
    """P(match | cosine) for object hits, fitted on the build's own labels: each category's query "a photo of a
    {category}" (`queries`, row i for names[i]) against its top CALIBRATION_DEPTH objects, a hit matching when it is
    of that category. A fifth of the categories (seeded) are held out to measure the expected calibration error.
    None without a text side (no queries), with fewer than 5 categories, or when no fit is possible (all hits right,
    or all wrong)."""
    if queries is None or len(names) < 5:
        return None
    held = set(np.random.default_rng(seed).choice(names, size=max(1, len(names) // 5), replace=False).tolist())
    depth = min(CALIBRATION_DEPTH, object_index.ntotal)
    scores, rows = object_index.search(queries, depth)
    kinds = np.asarray(object_categories, dtype=object)
    labels = np.array([[r >= 0 and kinds[r] == name for r in found] for name, found in zip(names, rows)], float)
    fit = np.array([name not in held for name in names])
    try:
        slope, intercept = fit_logistic(scores[fit].ravel(), labels[fit].ravel())
    except ValueError:
        return None
    calibration = Calibration(slope, intercept, "object-text")
    held_scores, held_labels = scores[~fit].ravel(), labels[~fit].ravel()
    return Calibration(slope, intercept, "object-text",
                       {"categories": int(fit.sum()), "depth": depth, "pairs": int(labels[fit].size),
                        "positives": int(labels[fit].sum()), "labels": "the hit is of the category asked"},
                       {"categories": int((~fit).sum()), "pairs": int(held_labels.size),
                        "ece": round(expected_calibration_error(calibration.probability(held_scores), held_labels),
                                     4)})


def category_precision(queries: np.ndarray | None, names: list[str], object_index: faiss.Index,
                       object_categories: list[str], image_index: faiss.Index,
                       image_categories: list[list[str]]) -> dict:
    """For each category, the query "a photo of a {category}" (`queries`, row i for names[i]): the share of its
    top-5 objects of that category, beside the share of its top-5 whole images that contain one; averaged over
    categories. {} for a model without text (no queries)."""
    if queries is None:
        return {}
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
