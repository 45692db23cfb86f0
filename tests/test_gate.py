"""The noise gate's rules with a scripted sampler: no processes, literal numbers.

Run: python -m pytest tests/test_gate.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.decision import Decision
from harness.gate import GateRules, Sample, calibrate, confirm
from harness.ledger import Calibration
from harness.runner import RunResult

RES = RunResult(0, False, False, 1.0, None, "", Path("x.log"))


def s(seed: int, value: float | None, failure: str | None = None) -> Sample:
    return Sample(seed, RES, {} if value is None else {"m": value}, failure, None, {})


def scripted(values: dict[int, float | None]):
    return lambda i: s(42 + i, values[i])


RULES = GateRules(min_effect_sigma=1.5, confirm=3, tolerance=0.0, direction="higher")
CAL = Calibration(sigma=0.1, n=4, raw={"values": [1.0, 1.1, 0.9, 1.0]})


def test_calibrate_logs_a_robust_sigma() -> None:
    samples, d, entry = calibrate(s(42, 1.0), scripted({1: 1.2, 2: 0.8, 3: 1.0}), runs=4, metric="m", say=print)
    assert d.status == "keep" and len(samples) == 4
    assert entry["seeds"] == [42, 43, 44, 45] and entry["median"] == 1.0
    assert entry["sigma"] == pytest.approx(1.4826 * 0.1)  # MAD of [1.0, 1.2, 0.8, 1.0] is 0.1


def test_a_failed_calibration_run_makes_the_baseline_a_crash() -> None:
    samples, d, entry = calibrate(s(42, 1.0), scripted({1: None}), runs=3, metric="m", say=print)
    assert d.status == "crash" and "calibration run 2" in d.reason and entry is None


def _confirm(first: float, rest: dict[int, float | None], best: float = 1.0, best_n: int = 4):
    return confirm(s(42, first), Decision("keep", "better", first - best), scripted(rest), rules=RULES, metric="m",
                   best=best, best_n=best_n, calibration=CAL, replicates=[[1.0, 1.1, 0.9, 1.0]], first_seed=42,
                   say=print)


def test_a_real_gain_is_kept_on_its_second_run() -> None:
    samples, d, ev = _confirm(1.5, {1: 1.5})
    assert d.status == "keep" and ev["n"] == 2 and len(samples) == 2
    # sigma is the larger of the calibration's 0.1 and the pooled SD of every repeat
    assert ev["sigma"] == max(0.1, ev["sigma_pooled"])
    assert ev["gain"] == pytest.approx(0.5) and ev["gain"] >= ev["threshold"]


def test_a_lucky_first_run_is_not_kept() -> None:
    samples, d, ev = _confirm(1.3, {1: 0.7})  # the second run brings the mean back to the best: stop there
    assert d.status == "discard" and "not confirmed" in d.reason and ev["n"] == 2 and len(samples) == 2


def test_a_small_gain_gets_up_to_confirm_reruns() -> None:
    samples, d, ev = _confirm(1.12, {1: 1.08, 2: 1.1, 3: 1.09})
    assert len(samples) == 4 and ev["n"] == 4
    # By hand: the pooled SD of the calibration [1.0, 1.1, 0.9, 1.0] (SS 0.02) and the four runs (mean
    # 1.0975, SS 0.00087) is sqrt(0.02087 / 6) = 0.059 < 0.1, so sigma is the calibration's 0.1. After
    # 4 runs against a best of 4: threshold 1.5 * 0.1 * sqrt(1/4 + 1/4) = 0.1061 > gain 0.0975. The
    # earlier steps (gain 0.1 against 0.1299 and 0.1146) were under it too: a discard after all reruns.
    assert ev["sigma"] == pytest.approx(0.1)
    assert ev["gain"] == pytest.approx(0.0975)
    assert ev["threshold"] == pytest.approx(1.5 * 0.1 * math.sqrt(0.5))
    assert d.status == "discard" and d.reason.startswith("not confirmed: mean gain 0.0975 over 4 run(s)")


def test_the_same_small_gain_is_kept_with_a_looser_threshold() -> None:
    # min_effect 1.0: threshold after 2 runs is 0.1 * sqrt(1/2 + 1/4) = 0.0866 < gain 0.10
    rules = GateRules(min_effect_sigma=1.0, confirm=3, tolerance=0.0, direction="higher")
    samples, d, ev = confirm(s(42, 1.12), Decision("keep", "better", 0.12), scripted({1: 1.08, 2: 1.1, 3: 1.09}),
                             rules=rules, metric="m", best=1.0, best_n=4, calibration=CAL,
                             replicates=[[1.0, 1.1, 0.9, 1.0]], first_seed=42, say=print)
    assert d.status == "keep" and len(samples) == 2
    assert ev["threshold"] == pytest.approx(0.1 * math.sqrt(0.75)) and ev["gain"] == pytest.approx(0.10)


def test_a_failing_confirmation_run_is_a_discard() -> None:
    samples, d, _ = _confirm(1.5, {1: None})
    assert d.status == "discard" and "confirmation run 2 failed" in d.reason


def test_no_noise_means_one_run_is_the_truth() -> None:
    samples, d, ev = confirm(s(42, 1.01), Decision("keep", "better", 0.01), scripted({}), rules=RULES, metric="m",
                             best=1.0, best_n=1, calibration=Calibration(0.0, 3, {"values": [1.0, 1.0, 1.0]}),
                             replicates=[[1.0, 1.0, 1.0]], first_seed=42, say=print)
    assert d.status == "keep" and len(samples) == 1 and ev["sigma"] == 0
