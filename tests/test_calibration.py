"""Calibrated confidence: the fit recovers a known curve at any cosine scale, never rises with rank, and says how well
it held on data it was not fitted on."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.core.calibration import Calibration, expected_calibration_error, fit_logistic


def _pairs(slope: float, intercept: float, n: int = 20000, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, n)
    labels = rng.random(n) < 1 / (1 + np.exp(-(slope * scores + intercept)))
    return scores * scale, labels.astype(float)


def test_the_fit_recovers_a_known_curve():
    scores, labels = _pairs(8.0, -2.0)
    slope, intercept = fit_logistic(scores, labels)
    assert slope == pytest.approx(8.0, rel=0.08) and intercept == pytest.approx(-2.0, abs=0.15)


@pytest.mark.parametrize("scale", [0.3, 0.05])
def test_the_same_matches_get_the_same_confidence_whatever_the_cosine_scale(scale):
    """A model whose matches score near 0.3 and one near 0.9 must say the same about the same pairs."""
    scores, labels = _pairs(8.0, -2.0)
    wide = Calibration(*fit_logistic(scores, labels))
    narrow = Calibration(*fit_logistic(scores * scale, labels))
    probe = np.linspace(-1, 1, 21)
    assert np.allclose(wide.probability(probe), narrow.probability(probe * scale), atol=1e-6)


def test_a_separable_fit_stays_finite_and_orders_pairs():
    scores = np.repeat([0.1, 0.2, 0.25, 0.8, 0.85, 0.9], 50)  # a small build: 300 pairs, none ambiguous
    labels = np.repeat([0, 0, 0, 1, 1, 1.0], 50)
    calibration = Calibration(*fit_logistic(scores, labels))
    assert np.isfinite(calibration.slope)
    low, high = calibration.probability([0.2, 0.85])
    assert low < 0.1 and high > 0.9


def test_confidence_never_rises_with_rank():
    calibration = Calibration(slope=10.0, intercept=-5.0)
    ranked = [0.7, 0.4, 0.65, 0.3]  # variety re-ranking put a closer image third
    values = calibration.confidences(ranked)
    assert values == sorted(values, reverse=True)
    assert values[2] == values[1]  # held down to the hit above it, not raised
    assert calibration.confidences([]) == []


def test_one_kind_of_pair_cannot_be_calibrated():
    with pytest.raises(ValueError, match="both matching and non-matching"):
        fit_logistic(np.array([0.1, 0.2]), np.array([1.0, 1.0]))


def test_expected_calibration_error_tells_a_good_fit_from_a_bad_one():
    scores, labels = _pairs(8.0, -2.0, seed=1)
    good = Calibration(8.0, -2.0).probability(scores)
    bad = Calibration(8.0, 2.0).probability(scores)
    assert expected_calibration_error(good, labels) < 0.02
    assert expected_calibration_error(bad, labels) > 0.15
