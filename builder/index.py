"""Index stage: a FAISS inner-product index over the L2-normalised vectors, with recall@5 measured against exact."""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from clipsearch.core.manifest import IndexInfo

log = logging.getLogger(__name__)

EXACT = "Flat"
AUTO = "auto"
RECALL_SAMPLE = 1000
# choose_index's thresholds are measured (docs/decisions/0007-index-choice.md): exact search stays within ~2 ms
# per query up to 20k x 512 on 2 cores, HNSW32 over fp16 keeps recall@5 up to 500k vectors, 8-bit IVF lists beyond.
FLAT_MAX_FLOATS = 20_000 * 512
ANN_FACTORY = "HNSW32_SQfp16"
ANN_PARAMS = "efSearch=128"
HNSW_MAX_COUNT = 500_000
IVF_MAX_LISTS = 4096  # capped so the coarse quantizer stays exact
HNSW_EF_CONSTRUCTION = 80  # FAISS's default 40 builds a noticeably worse graph; build time is about linear in it
# --index auto raises the search effort along these ladders until recall@5 on perturbed gallery queries reaches
# TUNE_TARGET (a margin over the 0.98 promise: other queries vary a little), starting from the chosen parameters.
TUNE_TARGET = 0.985
KNOB_LADDERS = {"efSearch": (16, 32, 64, 128, 192, 256, 384, 512),
                "nprobe": (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)}
QUERY_NOISE = 0.3  # perturbed queries sit at cosine ~0.96 from a gallery vector: a new photo of a familiar scene


class IndexBuildError(ValueError):
    """A FAISS factory string or parameter that cannot be used; names --index / --index-params."""


def choose_index(count: int, dim: int = 512) -> tuple[str, str]:
    """(factory, search_params) for a gallery of `count` vectors of `dim` floats: exact while one exact search
    stays within ~2 ms on a 2-core CPU; HNSW32 over fp16 vectors with efSearch 128 up to HNSW_MAX_COUNT; inverted
    lists with 8-bit codes above. build_index(..., "auto") then tunes the search parameter to the measured recall."""
    if count * dim <= FLAT_MAX_FLOATS:
        return EXACT, ""
    if count <= HNSW_MAX_COUNT:
        return ANN_FACTORY, ANN_PARAMS
    return f"IVF{ivf_lists(count)},SQ8", "nprobe=6"


def ivf_lists(count: int) -> int:
    """About 4 * sqrt(count) inverted lists, a power of two, at most IVF_MAX_LISTS (~250-2,500 vectors per list)."""
    return int(min(IVF_MAX_LISTS, max(64, 2 ** round(math.log2(4 * math.sqrt(count))))))


def build_index(vectors: np.ndarray, factory: str = EXACT, params: str = "",
                seed: int = 0) -> tuple[faiss.Index, IndexInfo]:
    """Build `factory` over `vectors`; recall@5 against exact search is measured for non-exact indexes.

    "auto" (without `params`): choose_index's pick for their count and width, its search effort tuned to
    TUNE_TARGET; where even the top of the ladder falls short (coarse codes cannot rank near-ties, or the
    neighbours are spread over too many lists), the next stronger index is built instead (stronger_index), down
    to exact search: auto never settles below the target."""
    dim = vectors.shape[1]
    tune = factory == AUTO and not params
    if factory == AUTO:
        factory, chosen_params = choose_index(len(vectors), dim)
        params = params or chosen_params
        log.info("index auto: %s %s for %d x %d vectors", factory, params, len(vectors), dim)
    queries = truth = None
    while True:
        index = _build(vectors, factory)
        if params:
            apply_params(index, params)
        info = IndexInfo(factory=factory, faiss_type=type(faiss.downcast_index(index)).__name__,
                         search_params=params)
        if factory == EXACT:
            return index, info
        if queries is None:
            queries, truth = perturbed_queries(vectors, seed=seed)
        if tune:
            info.search_params = tune_params(index, params, queries, truth)
        info.recall_at_5, info.recall_sample = recall(index.search(queries, truth.shape[1])[1], truth), len(queries)
        log.info("%s %s recall@5 against exact search: %.4f on %d queries", factory, info.search_params,
                 info.recall_at_5, info.recall_sample)
        stronger = stronger_index(factory) if tune and info.recall_at_5 < TUNE_TARGET else None
        if stronger is None:
            return index, info
        log.warning("index auto: %s cannot reach recall@5 %.3f on these vectors; building %s", factory,
                    TUNE_TARGET, stronger)
        factory, params = stronger, params if stronger != EXACT else ""


def stronger_index(factory: str) -> str | None:
    """The next index to try when `factory` misses the target: the same structure with more exact vectors
    (IVF: SQ8 -> SQfp16 -> full; HNSW: SQfp16 -> full), then exact search; None after exact."""
    for weaker, stronger in ((",SQ8", ",SQfp16"), (",SQfp16", ",Flat"), ("_SQfp16", "")):
        if factory.endswith(weaker):
            return factory[:-len(weaker)] + stronger
    return None if factory == EXACT else EXACT


def _build(vectors: np.ndarray, factory: str) -> faiss.Index:
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
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
    return index


def apply_params(index: faiss.Index, params: str) -> None:
    """Search-time knobs such as 'nprobe=32' or 'efSearch=128' (not stored in the index file by FAISS)."""
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as error:
        raise IndexBuildError(f"--index-params {params!r} do not apply to this index ({_first(error)}).") from None


def perturbed_queries(vectors: np.ndarray, k: int = 5, seed: int = 0,
                      count: int = RECALL_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of gallery vectors, each nudged by noise and renormalised (queries are never exactly a
    gallery vector: a text, a new photo), with their exact top-k over the whole gallery, computed in chunks so a
    large memory-mapped gallery is never copied whole."""
    k = min(k, len(vectors))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
    queries = vectors[sample] + QUERY_NOISE / math.sqrt(vectors.shape[1]) * rng.standard_normal(
        (len(sample), vectors.shape[1])).astype(np.float32)
    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), 262_144):
        scores = queries @ np.asarray(vectors[start:start + 262_144], np.float32).T
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]  # this chunk's best k, unsorted
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_rows = np.take_along_axis(merged_scores, keep, 1), np.take_along_axis(merged_rows, keep, 1)
    return queries, best_rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist()))
    return round(hits / truth.size, 4)


def tune_params(index: faiss.Index, params: str, queries: np.ndarray, truth: np.ndarray) -> str:
    """The smallest search effort on the knob's ladder, from the chosen one up, whose recall@5 on the queries
    reaches TUNE_TARGET (the top of the ladder if none does); other parameters are kept as given."""
    settings = dict(part.split("=", 1) for part in params.split(",") if "=" in part)
    knob = next((name for name in KNOB_LADDERS if name in settings), None)
    if knob is None:
        return params
    for value in (v for v in KNOB_LADDERS[knob] if v >= int(settings[knob])):
        settings[knob] = str(value)
        candidate = ",".join(f"{name}={setting}" for name, setting in settings.items())
        apply_params(index, candidate)
        reached = recall(index.search(queries, truth.shape[1])[1], truth)
        log.info("index auto: %s gives recall@5 %.4f", candidate, reached)
        if reached >= TUNE_TARGET:
            break
    return candidate


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or ["error"])[-1][:200]
