"""The per-run view the chart, the report and finalize share: each run with the segment's
running best around it (`records.running_best`), the few text helpers they format with, and
`clean_state`: the ledger as the views show it.

A ledger written by an older version, another tool or by hand may hold values no run could
report today (1e308, a huge int, a negative duration, a string where a list belongs). Every view
(status, log, report, plot, dashboard, export) reads the state through `clean_state`, which
applies the rule of `metrics.parse_number` once: a number is finite with |x| < MAX_ABS, else the
run has no value for it; so a view never meets a number whose difference, mean or percentage
overflows, and never a field of the wrong type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from harness.ledger import Calibration, LedgerState, RunRecord, Segment
from harness.metrics import MAX_ABS
from harness.records import running_best
from harness.stats import Direction, gain, improvement_pct

_TS_MAX = 253_402_128_000.0  # 9999-12-29: datetime's range, with room for any time zone


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
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def shorten(text: str, n: int) -> str:
    """`text` on one line in at most `n` characters: cut at the last word boundary that keeps
    at least half of it (mid-word only for a word longer than that), then "…"."""
    text = " ".join(text.split())
    if len(text) <= n:
        return text
    cut = text[: n - 1]
    space = cut.rfind(" ")
    if space >= (n - 1) // 2 and text[n - 1] != " ":
        cut = cut[:space]
    return cut.rstrip(" ,;:-–—(") + "…"


def pct_text(imp: float | None) -> str:
    """An improvement in percent (`pct`) as words: "2.68% better", "0.50% worse", "-" when
    undefined. The number is the gain in the metric's direction divided by |baseline|
    (`stats.improvement_pct`), so a negative metric reads right: -0.14 -> -0.0001 with higher
    is better is "99.93% better", with lower is better "99.93% worse"; never a bare "+99.93%"
    that reads as the value's own change."""
    if imp is None:
        return "-"
    return f"{abs(imp):.2f}% {'better' if imp >= 0 else 'worse'}"


# C0 and C1 control characters and DEL, and the bidirectional overrides and isolates (text that
# reorders what follows it on screen). Tab and newline are spacing, and become a space.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """`text` safe to print on a terminal: an agent's description or ASI may hold raw escape
    sequences (colours, cursor moves, a terminal title, OSC 52 clipboard writes), so every
    control character is shown as a visible escape (ESC as "\\x1b") and tab and newline as a
    space. The ledger keeps the text as written; this is for display only."""
    s = str(text)
    if s.isprintable():  # the common case, in C
        return s
    s = s.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


def heldout_value(r: RunRecord, name: str) -> float | None:
    """The run's held-out metric `name` (evaluated for kept runs only), or None."""
    h = r.raw.get("heldout")
    return number(h.get(name)) if isinstance(h, dict) else None


def heldout_name(runs: Iterable[RunRecord]) -> str | None:
    """The held-out metric's name, from the first run that has one (the ledger records it per
    kept run; the config is not needed to show it)."""
    for r in runs:
        h = r.raw.get("heldout")
        if isinstance(h, dict):
            name = next((k for k in h if k != "error"), None)
            if name is not None:
                return str(name)
    return None


def kept_improvements(state: LedgerState) -> int:
    return sum(1 for s in clean_state(state).segments for p in points(s) if p.kept and not p.baseline)


def session_name(state: LedgerState, fallback: str) -> str:
    names = [s.header.name for s in state.segments if s.header.name]
    return names[-1] if names else fallback


# ---- the ledger as the views show it ----


def number(x: object) -> float | None:
    """`x` as a number a view can show and compute with: an int or float (not a bool), finite,
    |x| < MAX_ABS (`metrics.parse_number`'s rule); None otherwise."""
    if type(x) is not float and type(x) is not int:
        return None
    v = float(x)
    return v if -MAX_ABS < v < MAX_ABS else None  # NaN fails both comparisons


def pct(best: float | None, baseline: float | None, direction: Direction) -> float | None:
    """`stats.improvement_pct`, or None where it is not a number worth printing (a near-zero
    baseline makes it overflow)."""
    return number(improvement_pct(best, baseline, direction))


def _count(x: object) -> bool:
    return type(x) is int and 0 <= x < MAX_ABS


def _clean_agent(agent: dict[str, Any] | None) -> dict[str, Any] | None:
    """`cost_usd` a number >= 0, or left out (the ledger's cost sums it)."""
    if agent is None or "cost_usd" not in agent:
        return agent
    cost = number(agent["cost_usd"])
    if cost is not None and cost >= 0:
        return agent
    return {k: v for k, v in agent.items() if k != "cost_usd"}


def _diff_is_clean(d: dict[str, Any] | None) -> bool:
    if d is None:
        return True
    files = d.get("files", ())
    return (type(files) is list and all(type(f) is str for f in files)) and _count(d.get("added", 0)) and _count(
        d.get("removed", 0))


def _clean_diff(diff: dict[str, Any] | None) -> dict[str, Any] | None:
    """`files` a list of names, `added` and `removed` counts."""
    if _diff_is_clean(diff):
        return diff
    assert diff is not None
    files = diff.get("files")
    names = [str(f) for f in files] if isinstance(files, list) else [files] if isinstance(files, str) else []
    count = {k: int(v) if (v := number(diff.get(k))) is not None and v >= 0 else 0 for k in ("added", "removed")}
    return {**diff, "files": names, **count}


def _raw_is_clean(raw: dict[str, Any]) -> bool:
    s, h = raw.get("samples"), raw.get("heldout")
    return (s is None or isinstance(s, list)) and (h is None or (isinstance(h, dict) and all(
        number(v) is not None if k != "error" else isinstance(v, str) for k, v in h.items())))


def _clean_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """The decoded line's fields the views read beyond the record's own: `samples` a list or
    none, `heldout` {name: number} (its `error` as text)."""
    if _raw_is_clean(raw):
        return raw
    out = dict(raw)
    if not isinstance(out.get("samples", []), list):
        out["samples"] = None
    h = out.get("heldout")
    if h is not None:
        clean = {k: v for k, v in h.items() if k != "error" and number(v) is not None} if isinstance(h, dict) else {}
        if isinstance(h, dict) and h.get("error") is not None:
            clean["error"] = str(h["error"])
        out["heldout"] = clean or None
    return out


def _duration(d: float | None) -> float | None:
    return d if (v := number(d)) is not None and v >= 0 else None


def _is_clean(r: RunRecord) -> bool:
    """`clean_run` would change nothing: written out for speed (status reads 100,000-run ledgers).
    The ledger's parse already gives floats (or None) for the record's numeric fields."""
    lim = MAX_ABS
    m, d, c, agent, diff, raw = r.metric, r.duration_s, r.confidence, r.agent, r.diff, r.raw
    # m != m: a NaN metric is already no value
    if not ((-lim < m < lim or m != m) and 0 <= r.timestamp <= _TS_MAX and (d is None or 0 <= d < lim)
            and (c is None or -lim < c < lim) and all(-lim < v < lim for v in r.metrics.values())):
        return False
    if agent is not None and "cost_usd" in agent:
        cost = agent["cost_usd"]
        if not (type(cost) in (float, int) and 0 <= cost < lim):  # type(): a bool is no cost
            return False
    return _diff_is_clean(diff) and ("samples" not in raw and "heldout" not in raw or _raw_is_clean(raw))


def clean_run(r: RunRecord) -> RunRecord:
    """The run as the views show it: a primary metric out of range is no value (NaN, as a
    non-finite metric already is), other numbers out of range are dropped, a timestamp out of
    datetime's range is none (0), a negative duration none, junk where a list or a mapping
    belongs removed. The record itself when it is already clean (the common case: no copy)."""
    if _is_clean(r):
        return r
    ts, d, c = r.timestamp, r.duration_s, r.confidence
    return r._replace(
        metric=r.metric if number(r.metric) is not None else math.nan,
        metrics={k: v for k, v in r.metrics.items() if number(v) is not None},
        timestamp=ts if 0 <= ts <= _TS_MAX else 0.0,
        duration_s=_duration(d),
        confidence=number(c),
        agent=_clean_agent(r.agent),
        diff=_clean_diff(r.diff),
        raw=_clean_raw(r.raw),
    )


def _clean_calibration(c: Calibration | None) -> Calibration | None:
    """No calibration where its sigma is out of range: the views then say "not calibrated"."""
    return c if c is None or number(c.sigma) is not None else None


def _clean_segment(s: Segment) -> Segment:
    runs = tuple(clean_run(r) for r in s.runs)
    cal = _clean_calibration(s.calibration)
    if cal is s.calibration and all(a is b for a, b in zip(runs, s.runs, strict=True)):
        return s
    return replace(s, runs=runs, calibration=cal)


def clean_state(state: LedgerState) -> LedgerState:
    """The ledger as every view shows it (`clean_run` per run; calibrations and the agents' costs
    the same way). Idempotent, and the state itself when nothing needed cleaning."""
    segments = tuple(_clean_segment(s) for s in state.segments)
    notes = tuple(n if (a := _clean_agent(n.agent)) is n.agent else n._replace(agent=a) for n in state.notes)
    if all(a is b for a, b in zip(segments, state.segments, strict=True)) and all(
            a is b for a, b in zip(notes, state.notes, strict=True)):
        return state
    return replace(state, segments=segments, notes=notes)
