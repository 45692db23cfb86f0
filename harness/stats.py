"""Direction-aware comparison and the small statistics the loop needs.

Metric direction is encoded here once; nothing else in the harness branches on
"lower"/"higher". Every function is pure and its docstring names the undefined cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Direction = Literal["lower", "higher"]
Band = Literal["green", "yellow", "red", "none"]


def gain(candidate: float, reference: float, direction: Direction) -> float:
    """How much `candidate` improves on `reference`: positive is better, in metric units."""
    return reference - candidate if direction == "lower" else candidate - reference


def is_better(candidate: float, reference: float | None, direction: Direction, tolerance: float = 0.0) -> bool:
    """Strictly better by more than `tolerance`. Anything beats a missing reference."""
    if reference is None:
        return True
    return gain(candidate, reference, direction) > tolerance


def best_of(values: Sequence[float], direction: Direction) -> float | None:
    """The best value, or None for an empty sequence."""
    if not values:
        return None
    return min(values) if direction == "lower" else max(values)


def improvement_pct(best: float | None, baseline: float | None, direction: Direction) -> float | None:
    """Relative improvement of best over baseline in percent (positive = better).

    Undefined (None) without both values or with a zero baseline.
    """
    if best is None or baseline is None or baseline == 0:
        return None
    return 100.0 * gain(best, baseline, direction) / abs(baseline)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (raises ValueError when empty)."""
    if not values:
        raise ValueError("median of an empty sequence")
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median (raw, not scaled to sigma)."""
    m = median(values)
    return median([abs(v - m) for v in values])


def mad_sigma(values: Sequence[float]) -> float:
    """Robust estimate of a normal sigma: 1.4826 * MAD (Rousseeuw & Croux 1993)."""
    return 1.4826 * mad(values)


def mad_confidence(values: Sequence[float], baseline: float | None, best: float | None) -> float | None:
    """The seed's / pi-autoresearch's confidence: |best kept - baseline| / MAD.

    `values` are the segment's metric values with crashes excluded by the caller (by
    status). pi-autoresearch instead drops values <= 0 because its crash rows carry
    metric 0; we do not, so negative metrics (log-likelihoods, rewards) work.
    Non-finite values are ignored. Undefined (None) with fewer than 3 points, MAD 0,
    no baseline/best, or best == baseline.
    """
    if baseline is None or best is None or best == baseline:
        return None
    pts = [v for v in values if math.isfinite(v)]
    if len(pts) < 3:
        return None
    spread = mad(pts)
    if spread == 0:
        return None
    return abs(best - baseline) / spread


def confidence_band(confidence: float | None) -> Band:
    """>= 2: likely real (green); 1-2: marginal (yellow); < 1: within noise (red)."""
    if confidence is None:
        return "none"
    if confidence >= 2.0:
        return "green"
    if confidence >= 1.0:
        return "yellow"
    return "red"


def gate_threshold(sigma: float, n: int, m: int, min_effect: float) -> float:
    """Smallest mean gain that counts as real: `min_effect` standard errors of the difference
    between a candidate measured `n` times and a best measured `m` times, each sample with
    noise `sigma` (a two-sample z-test at z = min_effect, sigma known from calibration)."""
    return min_effect * sigma * math.sqrt(1.0 / n + 1.0 / m)


def z_score(mean_gain: float, sigma: float, n: int, m: int) -> float | None:
    """The gain in standard errors of the difference; None when sigma is 0 (no noise measured)."""
    if sigma <= 0:
        return None
    return mean_gain / (sigma * math.sqrt(1.0 / n + 1.0 / m))


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled within-group standard deviation and its degrees of freedom.

    Each group holds repeated measurements of one configuration (different seeds); groups
    of one carry no information about noise and are skipped. (0.0, 0) when there is none.
    """
    ss, df = 0.0, 0
    for g in groups:
        if len(g) < 2:
            continue
        mean = sum(g) / len(g)
        ss += sum((x - mean) ** 2 for x in g)
        df += len(g) - 1
    return (math.sqrt(ss / df), df) if df else (0.0, 0)
