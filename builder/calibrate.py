"""Calibration stage: fit each build's confidence curve on its own captions (see clipsearch.core.calibration)."""

from __future__ import annotations

import logging

import numpy as np

from clipsearch.core.calibration import Calibration, expected_calibration_error, fit_logistic
from clipsearch.core.encoder import Encoder

from .evaluate import VAL_SPLIT, encode_captions

log = logging.getLogger(__name__)

IMAGES = 1000  # captioned images the fit uses (val2017 first): ~5,000 COCO captions to encode
DEPTH = 10  # each caption's top hits among those images: the pairs a visitor is shown
HELD_OUT = 0.2  # share of the images whose captions only measure the fit


def calibrate(encoder: Encoder, vectors: np.ndarray, captions: list[list[str]], splits: list[str],
              seed: int = 0) -> Calibration | None:
    """Each sampled caption queries the sampled images; a hit is a match when it is the caption's own image or has a
    caption as close to the query as the query's own image's other captions are (their median text similarity), so
    a second surfer counts as a match for "a man riding a wave" as a person would count it. Returns None (hits then
    carry no confidence) when the build has no text side or too few captions to tell matches from the rest."""
    if not encoder.info.has_text:
        return None
    rows = _sample_rows(captions, splits, seed)
    if len(rows) < 4:
        log.info("no confidence calibration: only %d captioned images", len(rows))
        return None
    texts, owner = [], []
    for local, row in enumerate(rows):
        texts.extend(captions[row])
        owner.extend([local] * len(captions[row]))
    owner = np.asarray(owner)
    text_vectors = encode_captions(encoder, texts)
    scores = text_vectors @ vectors[rows].T
    depth = min(DEPTH, len(rows))
    top = np.argsort(-scores, axis=1)[:, :depth]
    labels = _match_labels(texts, owner, text_vectors, top)
    pair_scores = np.take_along_axis(scores, top, axis=1)
    held = np.random.default_rng(seed).random(len(rows)) < HELD_OUT
    fit_mask, test_mask = ~held[owner], held[owner]
    if labels[fit_mask].min() == labels[fit_mask].max():
        log.info("no confidence calibration: the captions' top hits are all matches or all non-matches")
        return None
    slope, intercept = fit_logistic(pair_scores[fit_mask].ravel(), labels[fit_mask].ravel())
    calibration = Calibration(slope, intercept, "text")
    held_out = {"images": int(held.sum()), "captions": int(test_mask.sum()), "pairs": int(test_mask.sum() * depth)}
    if test_mask.any():
        probabilities = calibration.probability(pair_scores[test_mask].ravel())
        held_out["ece"] = round(expected_calibration_error(probabilities, labels[test_mask].ravel()), 4)
    fitted_on = {"images": int((~held).sum()), "captions": int(fit_mask.sum()), "pairs": int(fit_mask.sum() * depth),
                 "positives": int(labels[fit_mask].sum()), "depth": depth,
                 "matches": "own image, or a caption at least as close as the own image's other captions (median)"}
    log.info("confidence calibration: slope %.2f, intercept %.2f, held-out ECE %s over %d pairs", slope, intercept,
             held_out.get("ece"), held_out["pairs"])
    return Calibration(slope, intercept, "text", fitted_on, held_out)


def _sample_rows(captions: list[list[str]], splits: list[str], seed: int) -> list[int]:
    captioned = [row for row, texts in enumerate(captions) if texts]
    preferred = [row for row in captioned if splits[row] == VAL_SPLIT] or captioned
    if len(preferred) <= IMAGES:
        return preferred
    return sorted(np.random.default_rng(seed).choice(preferred, size=IMAGES, replace=False).tolist())


def _match_labels(texts: list[str], owner: np.ndarray, text_vectors: np.ndarray, top: np.ndarray) -> np.ndarray:
    """1 where hit top[q, r] matches caption q (see calibrate), else 0."""
    normal = [" ".join(t.lower().split()) for t in texts]
    by_image: dict[int, list[int]] = {}
    for index, image in enumerate(owner.tolist()):
        by_image.setdefault(image, []).append(index)
    labels = np.zeros(top.shape, dtype=np.float64)
    for q in range(len(texts)):
        similarity = text_vectors @ text_vectors[q]
        others = [c for c in by_image[int(owner[q])] if c != q and normal[c] != normal[q]]
        bar = float(np.median(similarity[others])) if others else None
        for r, image in enumerate(top[q].tolist()):
            own = by_image[image]
            labels[q, r] = image == owner[q] or any(normal[c] == normal[q] for c in own) or (
                bar is not None and float(similarity[own].max()) >= bar)
    return labels
