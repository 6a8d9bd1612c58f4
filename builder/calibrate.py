"""Calibration stage: fit each build's confidence curves, for descriptions and for pictures, on its own captions."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from clipsearch.core.calibration import Calibration, expected_calibration_error, fit_logistic
from clipsearch.core.encoder import Encoder

from .evaluate import VAL_SPLIT, encode_captions

log = logging.getLogger(__name__)

IMAGES = 1000  # captioned images the fit uses (val2017 first): ~5,000 COCO captions to encode
DEPTH = 10  # each caption's top hits among those images: the pairs a visitor is shown
HELD_OUT = 0.2  # share of the images whose captions only measure the fit


@dataclass(frozen=True)
class CaptionSample:
    """The captioned images a calibration uses (rows of the gallery) and their captions, encoded once for both fits."""

    rows: list[int]
    texts: list[str]  # every caption of those images, image after image
    owner: np.ndarray  # the sampled image (index into rows) of each caption
    text_vectors: np.ndarray
    held: np.ndarray  # per sampled image: held out, its queries only measure the fit


def caption_sample(encoder: Encoder, captions: list[list[str]], splits: list[str],
                   seed: int = 0) -> CaptionSample | None:
    """Up to IMAGES captioned images (val2017 first) with their captions encoded; None (hits then carry no
    confidence) when the build has no text side or too few captions to tell matches from the rest."""
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
    held = np.random.default_rng(seed).random(len(rows)) < HELD_OUT
    return CaptionSample(rows, texts, np.asarray(owner), encode_captions(encoder, texts), held)


def calibrate(sample: CaptionSample | None, vectors: np.ndarray) -> Calibration | None:
    """Descriptions: each sampled caption queries the sampled images; a hit is a match when it is the caption's own
    image or has a caption as close to the query as the query's own image's other captions are (their median text
    similarity), so a second surfer counts as a match for "a man riding a wave" as a person would count it."""
    if sample is None:
        return None
    scores = sample.text_vectors @ vectors[sample.rows].T
    depth = min(DEPTH, len(sample.rows))
    top = np.argsort(-scores, axis=1)[:, :depth]
    labels = _match_labels(sample, top)
    return _fit("text", "captions", np.take_along_axis(scores, top, axis=1), labels, sample, sample.held[sample.owner],
                depth, "own image, or a caption at least as close as the own image's other captions (median)")


def calibrate_pictures(sample: CaptionSample | None, vectors: np.ndarray) -> Calibration | None:
    """Pictures, with the same meaning: each sampled image queries the other sampled images, and a hit is a match
    when it would be one for any of the query image's own captions (calibrate's rule). So a person shown the query
    picture and the hit would call them the same thing as its captions describe it."""
    if sample is None:
        return None
    picked = vectors[sample.rows]
    scores = picked @ picked.T
    np.fill_diagonal(scores, -np.inf)  # a picture is not its own hit: the gallery answers with the others
    depth = min(DEPTH, len(sample.rows) - 1)
    top = np.argsort(-scores, axis=1)[:, :depth]
    by_caption = _match_labels(sample, top[sample.owner])  # each caption judges its own image's hits
    labels = np.zeros(top.shape)
    np.maximum.at(labels, sample.owner, by_caption)
    return _fit("image", "pictures", np.take_along_axis(scores, top, axis=1), labels, sample, sample.held, depth,
                "a hit that any of the query image's captions would call a match (as for descriptions)")


def _fit(queries: str, unit: str, pair_scores: np.ndarray, labels: np.ndarray, sample: CaptionSample,
         held: np.ndarray, depth: int, matches: str) -> Calibration | None:
    """The logistic fit on the queries (`unit`, one row of pair_scores each) not held out, and its expected
    calibration error on the held-out ones."""
    fit_mask, test_mask = ~held, held
    if not fit_mask.any() or labels[fit_mask].min() == labels[fit_mask].max():
        log.info("no %s confidence calibration: the top hits are all matches or all non-matches", queries)
        return None
    slope, intercept = fit_logistic(pair_scores[fit_mask].ravel(), labels[fit_mask].ravel())
    calibration = Calibration(slope, intercept, queries)
    held_out = {"images": int(sample.held.sum()), unit: int(test_mask.sum()), "pairs": int(test_mask.sum() * depth)}
    if test_mask.any():
        probabilities = calibration.probability(pair_scores[test_mask].ravel())
        held_out["ece"] = round(expected_calibration_error(probabilities, labels[test_mask].ravel()), 4)
    fitted_on = {"images": int((~sample.held).sum()), unit: int(fit_mask.sum()), "pairs": int(fit_mask.sum() * depth),
                 "positives": int(labels[fit_mask].sum()), "depth": depth, "matches": matches}
    log.info("%s confidence calibration: slope %.2f, intercept %.2f, held-out ECE %s over %d pairs", queries, slope,
             intercept, held_out.get("ece"), held_out["pairs"])
    return Calibration(slope, intercept, queries, fitted_on, held_out)


def _sample_rows(captions: list[list[str]], splits: list[str], seed: int) -> list[int]:
    captioned = [row for row, texts in enumerate(captions) if texts]
    preferred = [row for row in captioned if splits[row] == VAL_SPLIT] or captioned
    if len(preferred) <= IMAGES:
        return preferred
    return sorted(np.random.default_rng(seed).choice(preferred, size=IMAGES, replace=False).tolist())


def _match_labels(sample: CaptionSample, top: np.ndarray) -> np.ndarray:
    """1 where hit top[q, r] (a sampled image) matches caption q (see calibrate), else 0."""
    texts, owner, text_vectors = sample.texts, sample.owner, sample.text_vectors
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
