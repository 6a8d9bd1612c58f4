"""Calibrated confidence: the chance that a person would call a hit a match, from a fit on the build's own captions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WEAK = 0.5  # below this the top hit is not a good match: the UI says so and marks the hits as weak


@dataclass(frozen=True)
class Calibration:
    """P(match | cosine) = sigmoid(slope * cosine + intercept), fitted per build (each model and collection has its
    own cosine scale), with how it was fitted and how well it held on captions it was not fitted on."""

    slope: float
    intercept: float
    queries: str = "text"  # the kind of query it was fitted on
    fitted_on: dict = field(default_factory=dict)  # images, captions, pairs, positives, how matches were labelled
    held_out: dict = field(default_factory=dict)  # expected calibration error and counts on held-out captions

    def probability(self, scores) -> np.ndarray:
        z = self.slope * np.asarray(scores, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def confidences(self, ranked_scores) -> list[float]:
        """One confidence per hit in rank order; it never rises with rank (re-ranking for variety or paging can put
        a higher cosine below a lower one, and a later hit must not look surer than an earlier one)."""
        values = np.minimum.accumulate(self.probability(ranked_scores)) if len(ranked_scores) else []
        return [round(float(v), 4) for v in values]


def fit_logistic(scores: np.ndarray, labels: np.ndarray, ridge: float = 1.0, steps: int = 50) -> tuple[float, float]:
    """Maximum-likelihood logistic fit of labels (0/1) on one feature, by Newton's method. The score is standardised
    first, so the small ridge that keeps a separable fit finite weighs the same whatever the model's cosine scale."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if len(scores) == 0 or labels.min() == labels.max():
        raise ValueError("a calibration needs both matching and non-matching pairs")
    mean, spread = scores.mean(), scores.std() or 1.0
    x = np.stack([(scores - mean) / spread, np.ones_like(scores)], axis=1)
    w = np.zeros(2)
    penalty = np.diag([ridge, 0.0])  # a fixed total: negligible beside thousands of pairs
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        gradient = x.T @ (p - labels) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    slope = w[0] / spread
    return float(slope), float(w[1] - slope * mean)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| match rate over equal-width probability bins, weighted by pairs per bin."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.float64)
    if len(probabilities) == 0:
        return 0.0
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.sum() * abs(probabilities[mask].mean() - labels[mask].mean())
    return float(error / len(probabilities))
