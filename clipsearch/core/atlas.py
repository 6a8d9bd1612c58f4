"""The atlas's geometry: its file, and placing a vector on the map among its nearest gallery neighbours."""

from __future__ import annotations

import numpy as np

ATLAS = "atlas.npy"  # float32 (N, 2) in [0, 1], row i = gallery row i; optional (builds before the atlas lack it)
NEIGHBOURS = 10  # a placed vector sits at the similarity-weighted mean of this many nearest gallery images
SHARPNESS = 50.0  # softmax temperature on cosine: the nearest neighbours dominate, outliers barely pull


def normalise(xy: np.ndarray) -> np.ndarray:
    """Scale a layout into [0, 1] on its longer side, centred on the shorter, keeping its aspect."""
    xy = np.asarray(xy, dtype=np.float64)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max()) or 1.0
    return ((xy - low) / span + (1 - (high - low) / span) / 2).astype(np.float32)


def weighted_position(scores: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The position of a vector whose nearest neighbours sit at `xy` with cosines `scores` (best first)."""
    weights = np.exp(SHARPNESS * (np.asarray(scores, np.float64) - float(np.max(scores))))
    return (weights[:, None] * xy).sum(axis=0) / weights.sum()


def place(vectors: np.ndarray, gallery: np.ndarray, xy: np.ndarray, block: int = 256) -> np.ndarray:
    """Positions for `vectors` (L2-normalised) on the map of `gallery` (its vectors and positions), each at the
    weighted mean of its NEIGHBOURS nearest gallery images (exact inner product, in blocks: 256 rows against
    COCO's 123k are 126 MB of scores)."""
    out = np.empty((len(vectors), 2), np.float32)
    k = min(NEIGHBOURS, len(gallery))
    for start in range(0, len(vectors), block):
        scores = vectors[start:start + block] @ gallery.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for i, rows in enumerate(top):
            out[start + i] = weighted_position(scores[i, rows], xy[rows])
    return out
