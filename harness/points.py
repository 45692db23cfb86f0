"""The per-run view the chart, the report and finalize share: each run with the segment's
running best around it (`records.running_best`), and the few text helpers they format with.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.ledger import LedgerState, RunRecord, Segment
from harness.records import running_best
from harness.stats import Direction, gain


@dataclass(frozen=True)
class Point:
    """One run as the chart and the table see it."""

    r: RunRecord
    best_before: float | None  # the segment's best kept value before this run (baseline included)
    best_after: float | None
    baseline: bool
    direction: Direction

    @property
    def delta(self) -> float | None:
        """Raw change against the best before it (None for the baseline and runs without a value)."""
        if self.baseline or self.r.value is None or self.best_before is None:
            return None
        return self.r.value - self.best_before

    @property
    def gain(self) -> float | None:
        """Improvement over the best before it, positive is better."""
        if self.baseline or self.r.value is None or self.best_before is None:
            return None
        return gain(self.r.value, self.best_before, self.direction)

    @property
    def kept(self) -> bool:
        return self.r.value is not None and (self.baseline or self.r.status == "keep")


def points(seg: Segment) -> list[Point]:
    """The segment's runs with the running best around each (`records.running_best`)."""
    base = seg.baseline_run
    return [Point(r, step.best_before, step.best_after, r is base, seg.direction)
            for r, step in zip(seg.runs, running_best(seg), strict=True)]


def all_points(state: LedgerState) -> list[Point]:
    return [p for s in state.segments for p in points(s)]


def fmt(v: float | None, digits: int = 6) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def shorten(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def kept_improvements(state: LedgerState) -> int:
    return sum(1 for s in state.segments for p in points(s) if p.kept and not p.baseline)


def session_name(state: LedgerState, fallback: str) -> str:
    names = [s.header.name for s in state.segments if s.header.name]
    return names[-1] if names else fallback
