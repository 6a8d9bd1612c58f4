"""Automatic index choice: exact for small galleries, an ANN above the threshold that keeps recall@5 >= 0.98."""

from __future__ import annotations

import numpy as np

from builder.index import AUTO, EXACT, FLAT_MAX_FLOATS, build_index, choose_index, recall_at_5


def clustered_vectors(count: int, dim: int, seed: int = 0, per_topic: int = 120, subtopics: int = 8,
                      noise: float = 1.0) -> np.ndarray:
    """L2-normalised vectors shaped like CLIP embeddings: a shared direction, topics, sub-topics and noise.

    With noise 1.0 at 50k x 64 the neighbourhoods are loose enough that the search effort matters: HNSW32 measured
    recall@5 0.95 / 0.97 / 0.98 / 0.994 at efSearch 8 / 32 / 64 / 128."""
    rng = np.random.default_rng(seed)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    topics = max(1, count // per_topic)
    common = unit(rng.standard_normal(dim))
    centres = unit(rng.standard_normal((topics, dim)))
    sub_centres = unit(rng.standard_normal((topics * subtopics, dim)))
    sub = rng.integers(0, topics * subtopics, count)
    jitter = rng.standard_normal((count, dim)) / np.sqrt(dim)
    vectors = 0.5 * common + 0.6 * centres[sub // subtopics] + 0.45 * sub_centres[sub] + noise * jitter
    return np.ascontiguousarray(unit(vectors), dtype=np.float32)


def test_small_galleries_get_the_exact_index():
    assert choose_index(1) == (EXACT, "")
    assert choose_index(20_000) == (EXACT, "")  # CLIP's 512 dims: an exact search is still ~1-2 ms
    assert choose_index(FLAT_MAX_FLOATS // 1024, dim=1024) == (EXACT, "")
    factory, params = choose_index(123_287)  # COCO: exact search would cost 13+ ms per query
    assert factory != EXACT and params


def test_the_chosen_ann_index_keeps_recall_at_5_above_0_98():
    vectors = clustered_vectors(50_000, 64, seed=7)
    factory, params = choose_index(len(vectors))  # the size, as a 512-dim gallery: the ANN path
    assert factory != EXACT
    index, info = build_index(vectors, factory, params)
    assert info.factory == factory and info.search_params == params and info.faiss_type.startswith("IndexHNSW")
    assert info.recall_at_5 >= 0.98 and info.recall_sample == 1000
    recall, _ = recall_at_5(index, vectors, seed=123)  # another sample of queries
    assert recall >= 0.98
    # queries that are not gallery vectors (as a text or an uploaded picture is not): perturbed gallery points
    noise = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    queries = vectors[::250] + 0.05 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    _, found = index.search(queries, 5)
    assert np.mean([len(set(e) & set(f)) / 5 for e, f in zip(exact.tolist(), found.tolist())]) >= 0.98


def test_auto_resolves_to_the_chosen_factory_and_records_it():
    vectors = clustered_vectors(2_000, 32, seed=1)
    _, info = build_index(vectors, AUTO)
    assert (info.factory, info.search_params, info.recall_at_5) == (EXACT, "", 1.0)
