"""Index stage: a FAISS inner-product index over the L2-normalised vectors, with recall@5 measured against exact."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from clipsearch.manifest import IndexInfo

log = logging.getLogger(__name__)

EXACT = "Flat"
AUTO = "auto"
RECALL_SAMPLE = 1000
# Automatic choice (choose_index), from measurements on a 2-core CPU (AMD EPYC, AVX512, shared): one query
# against an exact index costs about 0.5 ms at 10k x 512 float32, 1.5-4 ms at 20k, 7-13 ms at 50k and 13-24 ms at
# COCO's 123k (memory bandwidth). Up to FLAT_MAX_FLOATS (20k vectors at CLIP's 512 dims, 40 MB) exact search stays
# within ~2 ms; above it, HNSW32 answers in 0.1-0.8 ms. At 123k clustered 512-d vectors HNSW32 (efConstruction 80)
# measured recall@5 against exact 0.975 / 0.997 / 1.0 / 1.0 at efSearch 16 / 32 / 64 / 128 (efConstruction 40:
# 0.86 / 0.95 / 0.988 / 0.996); on looser clusters 0.994 / 0.9998 / 0.9998 at efSearch 32 / 64 / 128. The graph
# stores its vectors as fp16 (SQfp16): 152 MB instead of 286 MB in memory at COCO size, the same speed, and recall@5
# 0.9994 (gallery vectors as queries) / 0.9987 (perturbed ones) on the looser clusters; SQ8 (92 MB) drops to 0.990.
# Scores come back accurate to ~1e-4; the exact vectors stay in embeddings.npy.
FLAT_MAX_FLOATS = 20_000 * 512
ANN_FACTORY = "HNSW32_SQfp16"
ANN_PARAMS = "efSearch=128"
HNSW_EF_CONSTRUCTION = 80  # FAISS's default 40 builds a noticeably worse graph; build time is about linear in it


class IndexBuildError(ValueError):
    """A FAISS factory string or parameter that cannot be used; names --index / --index-params."""


def choose_index(count: int, dim: int = 512) -> tuple[str, str]:
    """(factory, search_params) for a gallery of `count` vectors of `dim` floats: exact while one exact search
    stays within ~2 ms on a 2-core CPU, HNSW32 over fp16 vectors with efSearch 128 above that (its recall@5
    against exact is measured by build_index and recorded in the manifest)."""
    if count * dim <= FLAT_MAX_FLOATS:
        return EXACT, ""
    return ANN_FACTORY, ANN_PARAMS


def build_index(vectors: np.ndarray, factory: str = EXACT, params: str = "",
                seed: int = 0) -> tuple[faiss.Index, IndexInfo]:
    """Build `factory` over `vectors` ("auto": choose_index's pick for their count and width, with its search
    parameters unless `params` overrides them); recall@5 against exact search is measured for non-exact indexes."""
    dim = vectors.shape[1]
    if factory == AUTO:
        factory, chosen_params = choose_index(len(vectors), dim)
        params = params or chosen_params
        log.info("index auto: %s %s for %d x %d vectors", factory, params, len(vectors), dim)
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
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None and hnsw.efConstruction < HNSW_EF_CONSTRUCTION:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
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
