"""Keep, discard, crash or checks_failed: one pure function of what a run produced.

Rules (README "How the loop decides": the seed plugin's rules plus a secondary-metric guard):
1. the run failed (non-zero exit, timeout, cancelled) or printed no primary metric -> crash;
2. the checks failed -> checks_failed;
3. no best yet in the segment -> keep (this is the baseline);
4. better than the best by more than `tolerance` -> keep, unless a guard vetoes it;
5. equal within `tolerance` and the change deletes more lines than it adds -> keep
   (the simplicity criterion: simpler code for the same result is progress);
6. otherwise -> discard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.config import Guard
from harness.stats import Direction, gain

Status = Literal["keep", "discard", "crash", "checks_failed"]


@dataclass(frozen=True)
class Decision:
    status: Status
    reason: str
    gain: float | None = None  # improvement over the best, in metric units (positive = better)


def guard_violation(
    guards: Sequence[Guard], metrics: Mapping[str, float], best_metrics: Mapping[str, float], primary_gain: float
) -> str | None:
    """The first guard the candidate breaks, as a sentence; None if all hold.

    A guard whose metric is missing on either side cannot be judged and is skipped; so is
    one whose reference value is 0 (a relative change is undefined there).
    """
    for g in guards:
        new, old = metrics.get(g.metric), best_metrics.get(g.metric)
        if new is None or old is None or old == 0 or primary_gain >= g.unless_gain:
            continue
        worse_pct = 100.0 * -gain(new, old, g.direction) / abs(old)
        if worse_pct > g.max_worse_pct:
            return (
                f"{g.metric} worsened {worse_pct:.1f}% ({old:g} -> {new:g}), over the {g.max_worse_pct:g}% "
                f"allowed for a gain under {g.unless_gain:g}"
            )
    return None


def decide(
    *,
    metric_name: str,
    metrics: Mapping[str, float],
    failure: str | None,
    checks_failure: str | None,
    best: float | None,
    best_metrics: Mapping[str, float],
    direction: Direction,
    tolerance: float = 0.0,
    lines_added: int = 0,
    lines_removed: int = 0,
    guards: Sequence[Guard] = (),
) -> Decision:
    """Decide one experiment. `failure` describes a failed run (exit code, timeout)."""
    if failure is not None:
        return Decision("crash", failure)
    value = metrics.get(metric_name)
    if value is None:
        return Decision("crash", f"no METRIC {metric_name}=<number> in the output")
    if checks_failure is not None:
        return Decision("checks_failed", checks_failure)
    if best is None:
        return Decision("keep", "baseline")
    g = gain(value, best, direction)
    if g > tolerance:
        veto = guard_violation(guards, metrics, best_metrics, g)
        if veto:
            return Decision("discard", veto, g)
        return Decision("keep", f"improved by {g:.6g} over {best:.6g}", g)
    if abs(g) <= tolerance and lines_removed > lines_added:
        return Decision("keep", f"equal within {tolerance:g} and {lines_removed - lines_added} lines simpler", g)
    if abs(g) <= tolerance:
        return Decision("discard", f"equal to the best ({best:.6g}) within {tolerance:g}", g)
    return Decision("discard", f"worse by {-g:.6g} than the best ({best:.6g})", g)
