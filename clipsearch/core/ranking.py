"""Result shaping after the nearest-neighbour scan: near-duplicate collapse and maximal marginal relevance."""

from __future__ import annotations

import numpy as np

DUPLICATE_COSINE = 0.95  # two gallery images this close are the same shot for a visitor


def collapse(gallery, found: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Greedy: keep a hit unless it is a near-copy (cosine > DUPLICATE_COSINE) of a better one already kept."""
    kept, kept_vectors = [], []
    for score, row in found:
        vector = gallery.vector(row)
        if kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) > DUPLICATE_COSINE:
            continue
        kept.append((score, row))
        kept_vectors.append(vector)
    return kept


def mmr(gallery, found: list[tuple[float, int]], diversity: float, want: int) -> list[tuple[float, int]]:
    """Maximal marginal relevance: each next hit balances similarity to the query against the closest hit
    already chosen; scores stay the true cosine to the query."""
    if not found:
        return found
    vectors = np.stack([gallery.vector(row) for _, row in found])
    relevance = np.asarray([score for score, _ in found], np.float32)
    chosen: list[int] = [0]
    closest = vectors @ vectors[0]
    while len(chosen) < min(want, len(found)):
        value = (1.0 - diversity) * relevance - diversity * closest
        value[chosen] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        closest = np.maximum(closest, vectors @ vectors[pick])
    return [found[i] for i in chosen]
