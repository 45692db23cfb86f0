"""Tests for harness/stats.py: pure functions on literal lists (milliseconds).

Run: /work/main/.venv/bin/python -m pytest tests/test_stats.py -q
"""

from __future__ import annotations

import math

import pytest

from harness.stats import (
    best_of,
    confidence_band,
    gain,
    improvement_pct,
    is_better,
    mad,
    mad_confidence,
    mad_sigma,
    median,
)

# ------------------------------------------------------------------ direction


def test_gain_is_positive_when_better_in_both_directions():
    assert gain(0.98, 1.00, "lower") == pytest.approx(0.02)
    assert gain(1.02, 1.00, "lower") == pytest.approx(-0.02)
    assert gain(0.82, 0.80, "higher") == pytest.approx(0.02)
    assert gain(0.78, 0.80, "higher") == pytest.approx(-0.02)


def test_is_better_lower():
    assert is_better(0.99, 1.00, "lower")
    assert not is_better(1.00, 1.00, "lower")  # strictly better
    assert not is_better(1.01, 1.00, "lower")


def test_is_better_higher():
    assert is_better(0.81, 0.80, "higher")
    assert not is_better(0.80, 0.80, "higher")
    assert not is_better(0.79, 0.80, "higher")


def test_is_better_needs_more_than_tolerance():
    # gain 0.01: not more than a tolerance of 0.01 (allowing float slack), more than 0.005
    assert not is_better(0.99, 1.00, "lower", tolerance=0.0101)
    assert is_better(0.99, 1.00, "lower", tolerance=0.005)
    assert not is_better(0.81, 0.80, "higher", tolerance=0.02)
    assert is_better(0.81, 0.80, "higher", tolerance=0.005)
    assert not is_better(1.0, 1.0, "lower", tolerance=0.0)


def test_anything_beats_a_missing_reference():
    assert is_better(123.0, None, "lower")
    assert is_better(-5.0, None, "higher", tolerance=10.0)


def test_best_of():
    assert best_of([3.0, 1.0, 2.0], "lower") == 1.0
    assert best_of([3.0, 1.0, 2.0], "higher") == 3.0
    assert best_of([-3.0, -1.0], "lower") == -3.0
    assert best_of([-3.0, -1.0], "higher") == -1.0
    assert best_of([], "lower") is None
    assert best_of([], "higher") is None


def test_improvement_pct():
    assert improvement_pct(0.9, 1.0, "lower") == pytest.approx(10.0)
    assert improvement_pct(1.1, 1.0, "lower") == pytest.approx(-10.0)
    assert improvement_pct(0.55, 0.5, "higher") == pytest.approx(10.0)
    # a negative baseline: relative to |baseline|, sign still means "better"
    assert improvement_pct(-2.2, -2.0, "lower") == pytest.approx(10.0)
    assert improvement_pct(-1.8, -2.0, "higher") == pytest.approx(10.0)


def test_improvement_pct_undefined_cases():
    assert improvement_pct(1.0, 0.0, "lower") is None
    assert improvement_pct(1.0, 0, "higher") is None
    assert improvement_pct(None, 1.0, "lower") is None
    assert improvement_pct(1.0, None, "lower") is None


# ------------------------------------------------------------------ robust statistics


def test_median():
    assert median([3.0]) == 3.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([-1.0, -5.0, -3.0]) == -3.0
    with pytest.raises(ValueError):
        median([])


def test_mad_and_mad_sigma():
    # median 3; |x - 3| = 2, 1, 0, 1, 97 -> median 1 (the outlier does not move it)
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert mad(values) == 1.0
    assert mad_sigma(values) == pytest.approx(1.4826)
    assert mad([5.0, 5.0, 5.0]) == 0.0
    # even count: median 2.5; deviations 1.5, 0.5, 0.5, 1.5 -> median 1.0
    assert mad([1.0, 2.0, 3.0, 4.0]) == 1.0


# ------------------------------------------------------------------ confidence


def test_mad_confidence_worked_example():
    # median 0.98; deviations .02 .00 .01 .01 .03 -> MAD 0.01; |0.95 - 1.00| / 0.01 = 5
    values = [1.00, 0.98, 0.97, 0.99, 0.95]
    assert mad_confidence(values, baseline=1.00, best=0.95) == pytest.approx(5.0)


def test_mad_confidence_negative_metrics():
    # log-likelihoods / rewards: the same example shifted below zero gives the same answer
    values = [v - 10.0 for v in [1.00, 0.98, 0.97, 0.99, 0.95]]
    assert mad_confidence(values, baseline=-9.00, best=-9.05) == pytest.approx(5.0)
    assert mad_confidence([-3.0, -2.0, -1.0], baseline=-3.0, best=-1.0) == pytest.approx(2.0)


def test_mad_confidence_undefined_cases():
    assert mad_confidence([1.0, 0.9], baseline=1.0, best=0.9) is None  # fewer than 3 points
    assert mad_confidence([], baseline=1.0, best=0.9) is None
    assert mad_confidence([1.0, 1.0, 1.0, 0.9], baseline=1.0, best=0.9) is None  # MAD 0
    assert mad_confidence([1.0, 0.9, 0.8], baseline=0.9, best=0.9) is None  # best == baseline
    assert mad_confidence([1.0, 0.9, 0.8], baseline=None, best=0.8) is None
    assert mad_confidence([1.0, 0.9, 0.8], baseline=1.0, best=None) is None


def test_mad_confidence_ignores_non_finite_values():
    # two finite points left: fewer than 3
    assert mad_confidence([1.0, math.nan, 0.9, math.inf], baseline=1.0, best=0.9) is None
    assert mad_confidence([1.0, math.nan, 0.9, 0.8], baseline=1.0, best=0.8) == pytest.approx(2.0)


def test_confidence_band_thresholds():
    assert confidence_band(None) == "none"
    assert confidence_band(5.0) == "green"
    assert confidence_band(2.0) == "green"
    assert confidence_band(1.999) == "yellow"
    assert confidence_band(1.0) == "yellow"
    assert confidence_band(0.999) == "red"
    assert confidence_band(0.0) == "red"
