"""Evaluation stage: caption Recall@1/5/10 both ways (Karpathy 5k test split beside the published figures, COCO
val2017, full gallery) and image->image by category."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from clipsearch.core.encoder import Encoder
from clipsearch.core.published import compare, published_for

from . import karpathy

log = logging.getLogger(__name__)

KS = (1, 5, 10)
VAL_SPLIT = "val2017"
SAMPLE = 5000  # the COCO 5k protocol; galleries without val2017 are sampled to this size (seeded)


def encode_captions(encoder: Encoder, captions: list[str], batch_size: int = 256) -> np.ndarray:
    blocks = []
    for start in tqdm(range(0, len(captions), batch_size), desc="captions", unit="batch", mininterval=2,
                      dynamic_ncols=True, disable=len(captions) <= batch_size):
        blocks.append(encoder.encode_texts(captions[start:start + batch_size]))
    return np.concatenate(blocks) if blocks else np.zeros((0, encoder.info.dim), np.float32)


def _ranks(queries: np.ndarray, keys: np.ndarray, positives) -> np.ndarray:
    """For each query, the 0-based rank of its best-ranked positive key (exact, chunked matrix products)."""
    keys_t = torch.from_numpy(np.ascontiguousarray(keys)).T
    chunk = max(16, 2**26 // max(1, len(keys)))  # about 256 MB of scores at a time
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk])) @ keys_t
        for offset, row in enumerate(scores):
            good = positives(start + offset)
            best = row[good].max()
            ranks[start + offset] = int((row > best).sum())
    return ranks


def _recall(ranks: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": round(float((ranks < k).mean()) * 100, 2) for k in KS}


def category_precision(vectors: np.ndarray, categories: list[list[str]], splits: list[str], seed: int = 0) -> dict:
    """Image->image precision@1/5/10 and mAP with COCO categories as relevance (a hit is relevant when it shares at
    least one category with the query), each val image querying the other val images."""
    labelled = [row for row, names in enumerate(categories) if names]
    rows = [row for row in labelled if splits[row] == VAL_SPLIT] or sorted(
        np.random.default_rng(seed).choice(labelled, size=min(SAMPLE, len(labelled)), replace=False).tolist()
        if labelled else [])
    if len(rows) < 2:
        return {}
    names = sorted({name for row in rows for name in categories[row]})
    onehot = np.zeros((len(rows), len(names)), np.float32)
    for i, row in enumerate(rows):
        onehot[i, [names.index(n) for n in categories[row]]] = 1
    keys = torch.from_numpy(np.ascontiguousarray(vectors[rows]))
    labels = torch.from_numpy(onehot)
    precision = {k: 0.0 for k in KS}
    average_precision = 0.0
    for start in range(0, len(rows), 512):
        scores = keys[start:start + 512] @ keys.T
        idx = torch.arange(start, min(start + 512, len(rows)))
        scores[torch.arange(len(idx)), idx] = -torch.inf  # a query never retrieves itself
        order = torch.argsort(scores, dim=1, descending=True)[:, :-1]
        relevant = ((labels[start:start + 512] @ labels.T) > 0).float()
        relevant[torch.arange(len(idx)), idx] = 0
        ranked = torch.gather(relevant, 1, order)
        for k in KS:
            precision[k] += float(ranked[:, :k].mean(dim=1).sum())
        hits = ranked.cumsum(dim=1)
        positions = torch.arange(1, ranked.shape[1] + 1, dtype=torch.float32)
        totals = ranked.sum(dim=1).clamp(min=1)
        average_precision += float(((hits / positions) * ranked).sum(dim=1).div(totals).sum())
    name = VAL_SPLIT if splits[rows[0]] == VAL_SPLIT else "sample"
    return {"images": len(rows), "queries_from": name,
            **{f"P@{k}": round(precision[k] / len(rows) * 100, 2) for k in KS},
            "mAP": round(average_precision / len(rows) * 100, 2)}


def evaluate(encoder: Encoder, vectors: np.ndarray, captions: list[list[str]], splits: list[str],
             mode: str = "val", seed: int = 0, categories: list[list[str]] | None = None,
             image_ids: list[int] | None = None, karpathy_source: str | None = None) -> dict:
    """Recall on the Karpathy 5k test split when `image_ids` (COCO ids, row by row) are given, set beside the
    published figures of the model; recall on the val set (val2017, else a seeded 5k sample of captioned rows)
    and, in 'full' mode, with the same caption queries against the whole gallery and the val images against every
    gallery caption; plus image->image precision by COCO category where the gallery has categories."""
    if mode == "none":
        return {}
    results = {}
    if image_ids is not None and encoder.info.has_text:
        results[karpathy.NAME] = karpathy_recall(encoder, vectors, image_ids, karpathy_source)
    by_category = category_precision(vectors, categories, splits, seed) if categories else {}
    if by_category:
        results["image_to_image_by_category"] = by_category
    if not encoder.info.has_text:
        log.info("image-only model: no caption recall (it cannot embed the captions)")
        return results
    captioned = [row for row, texts in enumerate(captions) if texts]
    if not captioned:
        return results
    val_rows = [row for row in captioned if splits[row] == VAL_SPLIT]
    if not val_rows:
        rng = np.random.default_rng(seed)
        val_rows = sorted(rng.choice(captioned, size=min(SAMPLE, len(captioned)), replace=False).tolist())
    name = VAL_SPLIT if splits[val_rows[0]] == VAL_SPLIT else "sample"
    texts, owner = _flatten(captions, val_rows)
    log.info("evaluating recall: %d images, %d captions (%s)", len(val_rows), len(texts), name)
    text_vectors = encode_captions(encoder, texts)
    image_vectors = vectors[val_rows]
    local_owner = np.searchsorted(np.asarray(val_rows), owner)
    firsts = np.searchsorted(local_owner, np.arange(len(val_rows)))
    lasts = np.searchsorted(local_owner, np.arange(len(val_rows)), side="right")
    label = (f"val2017 ({len(val_rows):,} images with all {len(texts):,} of their captions; no paper reports this "
             "split)" if name == VAL_SPLIT else
             f"sample ({len(val_rows):,} captioned gallery images drawn with seed {seed}, {len(texts):,} captions; "
             "not a published split)")
    results[name] = {
        "label": label, "images": len(val_rows), "captions": len(texts),
        "text_to_image": _recall(_ranks(text_vectors, image_vectors, lambda q: [int(local_owner[q])])),
        "image_to_text": _recall(_ranks(image_vectors, text_vectors, lambda q: slice(firsts[q], lasts[q]))),
    }
    if mode == "full" and len(captioned) > len(val_rows):
        results["full_gallery"] = _full_gallery_recall(encoder, vectors, captions, captioned, val_rows, name,
                                                       text_vectors, owner)
    return results


def _full_gallery_recall(encoder: Encoder, vectors: np.ndarray, captions: list[list[str]], captioned: list[int],
                         val_rows: list[int], name: str, text_vectors: np.ndarray, owner: np.ndarray) -> dict:
    """The val set's caption queries against the whole gallery, and its images against every gallery caption."""
    all_texts, all_owner = _flatten(captions, captioned)
    log.info("evaluating recall on the full gallery: %d images, %d captions", len(vectors), len(all_texts))
    all_text_vectors = encode_captions(encoder, all_texts)
    starts = np.searchsorted(all_owner, np.asarray(val_rows))
    ends = np.searchsorted(all_owner, np.asarray(val_rows), side="right")
    image_vectors = vectors[val_rows]
    return {
        "label": f"full gallery ({len(vectors):,} images, {len(all_texts):,} captions; queries from {name})",
        "images": len(vectors), "captions": len(all_texts), "queries_from": name,
        "text_to_image": _recall(_ranks(text_vectors, vectors, lambda q: [int(owner[q])])),
        "image_to_text": _recall(_ranks(image_vectors, all_text_vectors, lambda q: slice(starts[q], ends[q]))),
    }


def _flatten(captions: list[list[str]], rows: list[int]) -> tuple[list[str], np.ndarray]:
    texts, owner = [], []
    for row in rows:
        texts.extend(captions[row])
        owner.extend([row] * len(captions[row]))
    return texts, np.asarray(owner, dtype=np.int64)


def karpathy_recall(encoder: Encoder, vectors: np.ndarray, image_ids: list[int], location: str | None = None) -> dict:
    """Recall both ways over the Karpathy test images present in the gallery (their vectors taken from the built
    ones by COCO image id) with the Karpathy captions; the published figures beside it where the model has some.
    Never raises for the split's sake: an unreadable or unreachable split gives {"skipped": reason}."""
    try:
        split = karpathy.load_split(location)
    except karpathy.KarpathyUnavailable as error:
        source = karpathy.requested_source(location)
        log.warning("Karpathy 5k test evaluation skipped: %s", error)
        return {"skipped": str(error), **({"source": source} if source else {})}
    row_of: dict[int, int] = {}
    for row, image_id in enumerate(image_ids):
        row_of.setdefault(int(image_id), row)
    present = [i for i, image_id in enumerate(split.image_ids) if image_id in row_of]
    total = len(split.image_ids)
    if not present:
        reason = f"none of the {total:,} Karpathy test images is in this gallery"
        log.warning("Karpathy 5k test evaluation skipped: %s", reason)
        return {"skipped": reason, "source": split.source}
    rows = [row_of[split.image_ids[i]] for i in present]
    texts, owner = [], []
    for local, i in enumerate(present):
        texts.extend(split.captions[i])
        owner.extend([local] * len(split.captions[i]))
    owner = np.asarray(owner, dtype=np.int64)
    firsts = np.searchsorted(owner, np.arange(len(rows)))
    lasts = np.searchsorted(owner, np.arange(len(rows)), side="right")
    log.info("evaluating recall on the Karpathy test split: %d of %d images, %d captions", len(rows), total,
             len(texts))
    text_vectors = encode_captions(encoder, texts)
    image_vectors = vectors[rows]
    complete = len(rows) == total
    listed = sum(split.listed[i] for i in present)
    result = {
        "label": karpathy_label(len(rows), total, len(texts), listed),
        "images": len(rows), "captions": len(texts), "captions_listed": listed,
        "captions_per_image": karpathy.CAPTIONS_PER_IMAGE, "split_images": total,
        "split_captions": sum(split.listed), "complete": complete,
        "text_to_image": _recall(_ranks(text_vectors, image_vectors, lambda q: [int(owner[q])])),
        "image_to_text": _recall(_ranks(image_vectors, text_vectors, lambda q: slice(firsts[q], lasts[q]))),
        "source": split.source,
    }
    if entry := published_for(encoder.info.model_id):
        result["published"] = compare(result, entry)
        log.log(logging.WARNING if result["published"]["flagged"] else logging.INFO, "Karpathy 5k test: %s",
                result["published"]["note"])
    return result


def karpathy_label(images: int, split_images: int, captions: int, listed: int,
                   per_image: int | None = karpathy.CAPTIONS_PER_IMAGE) -> str:
    """What the Karpathy recall was measured on, exactly: the images, and the captions used of those listed."""
    where = f"{images:,} images" if images == split_images else f"{images:,} of {split_images:,} images"
    if captions == listed:
        return f"{karpathy.NAME} ({where}, {captions:,} captions)"
    of = "the split's" if images == split_images else "their"
    return f"{karpathy.NAME} ({where}; {captions:,} captions, the first {per_image} per image of {of} {listed:,})"
