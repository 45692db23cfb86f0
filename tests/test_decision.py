"""Tests for harness/decision.py: every rule and guard with literal numbers (milliseconds).

Run: /work/main/.venv/bin/python -m pytest tests/test_decision.py -q
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from harness.config import Guard
from harness.decision import Decision, decide, guard_violation


def run(value: float | None, best: float | None = 1.0, direction: str = "lower", **kw: Any) -> Decision:
    metrics = {} if value is None else {"val_bpb": value}
    metrics.update(kw.pop("extra", {}))
    kw.setdefault("failure", None)
    kw.setdefault("checks_failure", None)
    kw.setdefault("best_metrics", {})
    return decide(metric_name="val_bpb", metrics=metrics, best=best, direction=direction, **kw)


# ------------------------------------------------------------------ rules


def test_crash_on_failure_even_with_a_metric():
    d = run(0.5, failure="exit code 1")
    assert (d.status, d.reason, d.gain) == ("crash", "exit code 1", None)
    assert run(0.5, failure="timed out after 600 s", checks_failure="tests failed").status == "crash"


def test_crash_on_missing_metric():
    d = run(None, extra={"other": 1.0})
    assert d.status == "crash"
    assert "METRIC val_bpb=" in d.reason
    assert run(None, best=None).status == "crash"  # also for a would-be baseline


def test_checks_failed():
    d = run(0.5, checks_failure="pytest: 2 failed")
    assert (d.status, d.reason) == ("checks_failed", "pytest: 2 failed")


def test_baseline_keep():
    d = run(3.0, best=None)
    assert (d.status, d.reason) == ("keep", "baseline")


def test_keep_beyond_tolerance_lower():
    d = run(0.98, best=1.0, tolerance=0.01)
    assert d.status == "keep"
    assert d.gain == pytest.approx(0.02)


def test_keep_beyond_tolerance_higher():
    d = run(0.83, best=0.80, direction="higher", tolerance=0.02)
    assert d.status == "keep"
    assert d.gain == pytest.approx(0.03)


def test_discard_within_tolerance():
    d = run(0.995, best=1.0, tolerance=0.01)
    assert d.status == "discard"
    assert "equal" in d.reason
    assert d.gain == pytest.approx(0.005)
    assert run(0.805, best=0.80, direction="higher", tolerance=0.01).status == "discard"
    # exactly equal with zero tolerance: not an improvement
    assert run(1.0, best=1.0).status == "discard"


def test_simplicity_keep_equal_and_net_deletion():
    d = run(1.004, best=1.0, tolerance=0.01, lines_added=3, lines_removed=10)
    assert d.status == "keep"
    assert "7 lines simpler" in d.reason
    assert run(0.796, best=0.80, direction="higher", tolerance=0.01, lines_removed=5).status == "keep"
    # equal but not simpler: discard
    assert run(1.0, best=1.0, lines_added=5, lines_removed=5).status == "discard"
    assert run(1.0, best=1.0, lines_added=6, lines_removed=5).status == "discard"
    # exactly equal with zero tolerance and a deletion: simpler is progress
    assert run(1.0, best=1.0, lines_removed=1).status == "keep"


def test_simplicity_does_not_rescue_a_worse_result():
    d = run(1.05, best=1.0, tolerance=0.01, lines_removed=100)
    assert d.status == "discard"
    assert "worse" in d.reason


def test_discard_when_worse_both_directions():
    d = run(1.02, best=1.0)
    assert (d.status, d.gain) == ("discard", pytest.approx(-0.02))
    assert "worse by 0.02" in d.reason
    d = run(0.78, best=0.80, direction="higher")
    assert (d.status, d.gain) == ("discard", pytest.approx(-0.02))


def test_negative_metric_values():
    # a reward (higher is better) below zero
    assert run(-1.5, best=-2.0, direction="higher").status == "keep"
    assert run(-2.5, best=-2.0, direction="higher").status == "discard"
    # a log-loss written as a negative log-likelihood (lower is better)
    assert run(-3.0, best=-2.0, direction="lower").status == "keep"


# ------------------------------------------------------------------ guards

VRAM = Guard(metric="peak_vram_mb", max_worse_pct=20.0, unless_gain=0.002)


def test_guard_vetoes_a_small_gain_with_a_big_memory_increase():
    d = run(
        0.999,
        best=1.0,
        extra={"peak_vram_mb": 13000.0},
        best_metrics={"peak_vram_mb": 10000.0},
        guards=[VRAM],
    )
    assert d.status == "discard"
    assert d.gain == pytest.approx(0.001)
    assert "peak_vram_mb worsened 30.0%" in d.reason


def test_guard_allows_a_small_memory_increase():
    d = run(
        0.999,
        best=1.0,
        extra={"peak_vram_mb": 11000.0},
        best_metrics={"peak_vram_mb": 10000.0},
        guards=[VRAM],
    )
    assert d.status == "keep"  # 10% is within the 20% allowed


def test_guard_allows_a_big_increase_for_a_big_enough_gain():
    kw = {"extra": {"peak_vram_mb": 20000.0}, "best_metrics": {"peak_vram_mb": 10000.0}, "guards": [VRAM]}
    assert run(0.99, best=1.0, **kw).status == "keep"  # gain 0.01 >= 0.002
    assert (
        run(0.998, best=1.0, **kw).status == "keep"
    )  # gain 0.002 (a hair over in floats); exact equality below
    assert guard_violation([VRAM], {"peak_vram_mb": 2e4}, {"peak_vram_mb": 1e4}, primary_gain=0.002) is None


def test_guard_without_unless_gain_always_applies():
    strict = Guard(metric="peak_vram_mb", max_worse_pct=5.0)
    assert strict.unless_gain == math.inf
    d = run(
        0.5, best=1.0, extra={"peak_vram_mb": 2000.0}, best_metrics={"peak_vram_mb": 1000.0}, guards=[strict]
    )
    assert d.status == "discard"


def test_guard_skipped_when_metric_missing_or_reference_zero():
    assert run(0.999, best=1.0, best_metrics={"peak_vram_mb": 10000.0}, guards=[VRAM]).status == "keep"
    assert run(0.999, best=1.0, extra={"peak_vram_mb": 13000.0}, guards=[VRAM]).status == "keep"
    assert (
        run(
            0.999,
            best=1.0,
            extra={"peak_vram_mb": 13000.0},
            best_metrics={"peak_vram_mb": 0.0},
            guards=[VRAM],
        ).status
        == "keep"
    )


def test_guard_higher_is_better_secondary_metric():
    mfu = Guard(metric="mfu_percent", max_worse_pct=10.0, unless_gain=0.01, direction="higher")
    best = {"mfu_percent": 40.0}
    # MFU dropping 25% is worse for a higher-is-better metric: vetoed
    d = run(0.999, best=1.0, extra={"mfu_percent": 30.0}, best_metrics=best, guards=[mfu])
    assert d.status == "discard" and "mfu_percent worsened 25.0%" in d.reason
    # MFU rising is fine, however much
    assert run(0.999, best=1.0, extra={"mfu_percent": 60.0}, best_metrics=best, guards=[mfu]).status == "keep"
    # a 5% drop is within the 10% allowed
    assert run(0.999, best=1.0, extra={"mfu_percent": 38.0}, best_metrics=best, guards=[mfu]).status == "keep"


def test_guard_with_a_higher_is_better_primary():
    d = run(
        0.801,
        best=0.80,
        direction="higher",
        extra={"peak_vram_mb": 1500.0},
        best_metrics={"peak_vram_mb": 1000.0},
        guards=[VRAM],
    )
    assert d.status == "discard"


def test_first_violated_guard_is_reported():
    g1 = Guard(metric="a", max_worse_pct=50.0)
    g2 = Guard(metric="b", max_worse_pct=1.0)
    g3 = Guard(metric="c", max_worse_pct=1.0)
    why = guard_violation([g1, g2, g3], {"a": 1.1, "b": 2.0, "c": 9.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.0)
    assert why is not None and why.startswith("b worsened 100.0%")


def test_guards_do_not_affect_baseline_or_crash():
    kw = {"extra": {"peak_vram_mb": 1e9}, "best_metrics": {"peak_vram_mb": 1.0}, "guards": [VRAM]}
    assert run(1.0, best=None, **kw).status == "keep"
    assert run(None, **kw).status == "crash"
