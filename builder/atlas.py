"""Atlas stage: a 2-D layout of the image vectors that keeps neighbours together (openTSNE), for the app's map."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from openTSNE import TSNE

from clipsearch.core.atlas import ATLAS, normalise, place
from clipsearch.core.manifest import Manifest

log = logging.getLogger(__name__)

PCA_DIMS = 50  # t-SNE's usual first step: neighbours in 50 PCA dimensions are those of the full vectors, ~5x cheaper
SEED = 0  # a fixed seed: the same vectors give a byte-identical layout (resumed builds stay identical)
PLACE_SHARE = 0.1  # an --append adding at most this share of the base places new rows; more recomputes all
SMALL = 10_000  # below this many images: one thread, Barnes-Hut and fewer iterations (seconds, not minutes); a
# thread team and FFT's fixed grid cost more than they save on a small gallery, most of all on a busy machine


def layout(vectors: np.ndarray, threads: int = 0) -> np.ndarray:
    """float32 (N, 2) in [0, 1]: openTSNE (FFT-accelerated t-SNE, PCA initialisation) of the vectors' first 50
    principal components. Fewer than 10 images get their 2-D PCA (nothing for t-SNE to arrange)."""
    reduced = principal_components(vectors, PCA_DIMS)
    if len(vectors) < 10:
        return normalise(reduced[:, :2])
    small = len(vectors) < SMALL
    tsne = TSNE(perplexity=min(30.0, (len(vectors) - 1) / 3.0), n_jobs=1 if small else threads or -1,
                random_state=SEED, neighbors="exact" if len(vectors) < 1000 else "annoy",
                negative_gradient_method="bh" if small else "fft", early_exaggeration_iter=125 if small else 250,
                n_iter=250 if small else 500, verbose=False)
    return normalise(np.asarray(tsne.fit(reduced), dtype=np.float32))


def principal_components(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The vectors projected on their first `dims` principal axes (eigh of the covariance; signs pinned, so the
    result is deterministic)."""
    dims = min(dims, vectors.shape[1])
    mean = vectors.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((vectors.shape[1], vectors.shape[1]), np.float64)
    for start in range(0, len(vectors), 65536):  # chunked: 123k x 768 never needs a float64 copy
        block = vectors[start:start + 65536].astype(np.float64) - mean
        covariance += block.T @ block
    _, eigenvectors = np.linalg.eigh(covariance)
    axes = eigenvectors[:, ::-1][:, :dims]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(dims)])  # an eigenvector's sign is arbitrary
    return ((vectors - mean.astype(np.float32)) @ axes.astype(np.float32)).astype(np.float32)


def write_atlas(folder: Path, vectors: np.ndarray, base: Manifest | None = None,
                base_folder: Path | None = None) -> str:
    """Write atlas.npy into `folder` for all `vectors` and return its name. An --append whose base has an atlas and
    adds at most PLACE_SHARE new rows keeps every old position and places each new row among its nearest old
    neighbours (the map a visitor knows does not move); otherwise the layout is computed afresh."""
    old = None
    if base is not None and base_folder is not None and ATLAS in base.files and (base_folder / ATLAS).is_file():
        old = np.load(base_folder / ATLAS, allow_pickle=False)
    if old is not None and len(vectors) - len(old) <= PLACE_SHARE * len(old):
        added = vectors[len(old):]
        log.info("atlas: placing %d new images among their neighbours on the base build's map", len(added))
        xy = np.concatenate([old, place(added, vectors[:len(old)], old)]).astype(np.float32)
    else:
        log.info("atlas: laying out %d images (openTSNE)", len(vectors))
        xy = layout(vectors)
    np.save(folder / ATLAS, xy, allow_pickle=False)
    return ATLAS
