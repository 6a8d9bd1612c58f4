"""Index stage: a FAISS inner-product index over the L2-normalised vectors, with recall@5 measured against exact."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from clipsearch.manifest import IndexInfo

log = logging.getLogger(__name__)

EXACT = "Flat"
RECALL_SAMPLE = 1000


class IndexBuildError(ValueError):
    """A FAISS factory string or parameter that cannot be used; names --index / --index-params."""


def build_index(vectors: np.ndarray, factory: str = EXACT, params: str = "",
                seed: int = 0) -> tuple[faiss.Index, IndexInfo]:
    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexBuildError(f"--index {factory!r} is not a FAISS factory string FAISS accepts ({_first(error)}).") \
            from None
    if not index.is_trained:
        log.info("training %s on %d vectors", factory, len(vectors))
        try:
            index.train(vectors)
        except RuntimeError as error:
            raise IndexBuildError(f"--index {factory!r} could not be trained on {len(vectors)} vectors "
                              f"({_first(error)}); use fewer lists or the exact index.") from None
    index.add(vectors)
    if params:
        apply_params(index, params)
    info = IndexInfo(factory=factory, faiss_type=type(faiss.downcast_index(index)).__name__, search_params=params)
    if factory != EXACT:
        info.recall_at_5, info.recall_sample = recall_at_5(index, vectors, seed=seed)
        log.info("%s recall@5 against exact search: %.4f on %d queries", factory, info.recall_at_5,
                 info.recall_sample)
    return index, info


def apply_params(index: faiss.Index, params: str) -> None:
    """Search-time knobs such as 'nprobe=32' or 'efSearch=128' (not stored in the index file by FAISS)."""
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as error:
        raise IndexBuildError(f"--index-params {params!r} do not apply to this index ({_first(error)}).") from None


def recall_at_5(index: faiss.Index, vectors: np.ndarray, k: int = 5, seed: int = 0) -> tuple[float, int]:
    """Mean |approx top-k ∩ exact top-k| / k over a seeded sample of gallery vectors used as queries."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), size=min(RECALL_SAMPLE, len(vectors)), replace=False)
    queries = vectors[np.sort(sample)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist()))
    return round(hits / (k * len(queries)), 4), len(queries)


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or ["error"])[-1][:200]
