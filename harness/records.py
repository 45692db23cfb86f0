"""The writer side of the ledger schema: how a run line is built, and the running best and
"confidence after this run" that every writer and reader computes the same way.

`harness.ledger` reads lines and folds them into state. This module is what writers use to
make a line (the controller, `log-experiment`, the results.tsv import) and what the chart, the
report and the agent's digest use to say what the best was before and after each run:
- `run_line`: one run line, in the schema of README "The ledger format" (`agent_field` and
  `add_usage` make its `agent` field);
- `next_best` / `running_best`: a run moves the best when it counts as kept and beats it;
- `Standing` / `confidence_after`: the seed's MAD confidence once a run is appended, equal by
  construction to what the fold (`Segment.confidence`) says after that line is read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from harness.agents.base import Proposal
from harness.ledger import LedgerState, Segment, Status
from harness.secrets import scrub_obj
from harness.stats import Direction, is_better, mad_confidence

RESULT_STATUSES: tuple[Status, ...] = ("keep", "discard")  # the statuses whose metric is a result


def segment_index(state: LedgerState) -> int:
    """The segment a new run line belongs to: the current one (0 for an empty ledger)."""
    return max(len(state.segments) - 1, 0)


def run_line(
    *,
    run: int,
    commit: str,
    status: Status,
    description: str,
    metric: float | None,
    metrics: dict[str, float],
    timestamp: int,
    segment: int,
    confidence: float | None,
    asi: dict[str, Any],
    reason: str | None = None,
    duration_s: float | None = None,
    diff: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run line. `metric` None is written as 0, as the seed and pi-autoresearch write runs
    without a valid result (readers never take it as a result: `RunRecord.value`). A `reason`
    (the controller's decision) also becomes the ASI's `rollback_reason` of a run not kept,
    unless the ASI already has one."""
    asi = dict(asi)
    if reason is not None and status != "keep":
        asi.setdefault("rollback_reason", reason)
    rec: dict[str, Any] = {
        "run": run,
        "commit": commit,
        "metric": 0 if metric is None else metric,
        "metrics": metrics,
        "status": status,
        "description": description,
        "timestamp": timestamp,
        "segment": segment,
        "confidence": confidence,
        "asi": asi,
    }
    if reason is not None:
        rec["reason"] = reason
    if duration_s is not None:
        rec["duration_s"] = round(duration_s, 3)
    if diff is not None:
        rec["diff"] = diff
    if agent:
        rec["agent"] = agent
    if extra:
        rec.update(extra)
    # a secret that reached a run anyway (a file, an argument) and was printed never reaches the ledger,
    # nor what is made from it (the report, the agent's context)
    scrubbed: dict[str, Any] = scrub_obj(rec)  # type: ignore[assignment]
    return scrubbed


def agent_field(name: str | None, proposal: Proposal) -> dict[str, Any]:
    """The run line's `agent`: the proposal's usage (tokens, cost), its model, the agent's name."""
    info = dict(proposal.usage or {})
    if proposal.model:
        info["model"] = proposal.model
    if name is not None:
        info["name"] = name
    return info


def add_usage(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Usage of two requests together: numbers add up, the rest is taken from the later one."""
    out = {**a, **b}
    for k in a.keys() & b.keys():
        if isinstance(a[k], int | float) and isinstance(b[k], int | float) and not isinstance(a[k], bool):
            out[k] = a[k] + b[k]
    return out


# ------------------------------------------------------------------- the running best


def next_best(best: float | None, value: float | None, counts: bool, direction: Direction) -> float | None:
    """The running best after one run: its value when it counts as kept and beats `best`."""
    if counts and value is not None and is_better(value, best, direction):
        return value
    return best


class Step(NamedTuple):
    best_before: float | None  # the best kept value before the run (the baseline counts as kept)
    best_after: float | None


def running_best(seg: Segment) -> list[Step]:
    """The best before and after each run of the segment, oldest first (a pure fold)."""
    base = seg.baseline_run
    best: float | None = None
    out = []
    for r in seg.runs:
        before = best
        best = next_best(best, r.value, r is base or r.status == "keep", seg.direction)
        out.append(Step(before, best))
    return out


# ------------------------------------------------------------------------- confidence


@dataclass(frozen=True)
class Standing:
    """What a segment's confidence is computed from: its results so far, baseline and best."""

    values: tuple[float, ...] = ()
    baseline: float | None = None  # the first result
    best: float | None = None

    @classmethod
    def of(cls, seg: Segment | None) -> Standing:
        if seg is None:
            return cls()
        return cls(tuple(r.value for r in seg.runs if r.value is not None), seg.baseline, seg.best)

    def after(self, value: float | None, status: Status, direction: Direction) -> Standing:
        """The standing once a run with this status and value is appended. Only keeps and
        discards have a result; a crash or a checks_failed leaves the standing as it was."""
        if status not in RESULT_STATUSES or value is None:
            return self
        baseline = self.baseline if self.baseline is not None else value
        return Standing((*self.values, value), baseline, next_best(self.best, value, status == "keep", direction))

    @property
    def confidence(self) -> float | None:
        """|best - baseline| / MAD of the results; undefined cases as in `stats.mad_confidence`."""
        return mad_confidence(self.values, self.baseline, self.best)


def confidence_after(seg: Segment | None, value: float | None, status: Status) -> float | None:
    """The segment's confidence once a run (status, primary value) is appended to it."""
    direction: Direction = seg.direction if seg is not None else "lower"
    return Standing.of(seg).after(value, status, direction).confidence
