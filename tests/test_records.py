"""The writer side of the ledger schema: run lines, the running best, confidence after a run.
Pure functions, literal numbers.

Run: python -m pytest tests/test_records.py -q
"""

from __future__ import annotations

from typing import Any

import pytest

from harness import ledger
from harness.agents.base import Proposal
from harness.records import Standing, add_usage, agent_field, confidence_after, run_line, running_best


def _line(run: int, status: str, metric: float | None, **extra: Any) -> dict[str, Any]:
    return run_line(run=run, commit=f"{run:07x}", status=status, description=f"run {run}",  # type: ignore[arg-type]
                    metric=metric, metrics={} if metric is None else {"m": metric}, timestamp=1_700_000_000 + run,
                    segment=0, confidence=None, asi={"hypothesis": "h"}, **extra)


def _segment(lines: list[dict[str, Any]], direction: str = "higher") -> ledger.Segment:
    header = ledger.SessionHeader("t", "m", "", direction)  # type: ignore[arg-type]
    seg = ledger.fold([header, *(ledger.parse_entry(x) for x in lines)]).current  # type: ignore[misc]
    assert seg is not None
    return seg


def test_run_line_fields() -> None:
    rec = _line(3, "crash", None, reason="exit code 1", duration_s=1.23456, agent={"cost_usd": 0.1})
    assert rec == {"run": 3, "commit": "0000003", "metric": 0, "metrics": {}, "status": "crash",
                   "description": "run 3", "timestamp": 1_700_000_003, "segment": 0, "confidence": None,
                   "asi": {"hypothesis": "h", "rollback_reason": "exit code 1"}, "reason": "exit code 1",
                   "duration_s": 1.235, "agent": {"cost_usd": 0.1}}
    keep = _line(4, "keep", 1.5, reason="improved")
    assert "rollback_reason" not in keep["asi"] and keep["metric"] == 1.5
    mine = run_line(run=5, commit="c", status="discard", description="d", metric=1.0, metrics={}, timestamp=0,
                    segment=0, confidence=None, asi={"rollback_reason": "the agent's own words"}, reason="worse")
    assert mine["asi"]["rollback_reason"] == "the agent's own words"
    bare = _line(6, "discard", 1.0)  # a seed-style line: no reason, durations, diff or agent
    assert set(bare) == {"run", "commit", "metric", "metrics", "status", "description", "timestamp", "segment",
                         "confidence", "asi"}


def test_running_best_counts_the_baseline_and_keeps_only() -> None:
    seg = _segment([_line(1, "keep", 1.0), _line(2, "discard", 3.0), _line(3, "keep", 1.5), _line(4, "crash", None),
                    _line(5, "keep", 1.2)])  # a simplicity keep below the best does not lower it
    assert [tuple(s) for s in running_best(seg)] == [(None, 1.0), (1.0, 1.0), (1.0, 1.5), (1.5, 1.5), (1.5, 1.5)]
    low = _segment([_line(1, "keep", 2.0), _line(2, "keep", 1.5)], direction="lower")
    assert [s.best_after for s in running_best(low)] == [2.0, 1.5]


def test_confidence_after_by_hand() -> None:
    seg = _segment([_line(1, "keep", 1.0), _line(2, "discard", 0.8)])
    # a keep of 1.3: results [1.0, 0.8, 1.3], median 1.0, MAD median(0, 0.2, 0.3) = 0.2; |1.3 - 1.0| / 0.2
    assert confidence_after(seg, 1.3, "keep") == pytest.approx(1.5)
    # a discard of 1.3 moves the spread but not the best (1.0 = baseline): undefined
    assert confidence_after(seg, 1.3, "discard") is None
    assert confidence_after(seg, None, "crash") is None and confidence_after(None, 1.0, "keep") is None


def test_confidence_after_is_what_the_fold_says_once_the_line_is_appended() -> None:
    lines = [_line(1, "keep", 1.0), _line(2, "discard", 0.8), _line(3, "keep", 1.3), _line(4, "discard", 0.9)]
    for status, value in (("keep", 1.4), ("keep", 1.1), ("discard", 2.0), ("crash", None), ("checks_failed", None)):
        before = _segment(lines)
        after = _segment([*lines, _line(5, status, value)])
        assert confidence_after(before, value, status) == pytest.approx(after.confidence), status  # type: ignore[arg-type]
    assert Standing.of(_segment(lines)).confidence == _segment(lines).confidence


def test_agent_field_and_usage() -> None:
    p = Proposal("d", usage={"input_tokens": 10, "cost_usd": 0.01}, model="m1")
    assert agent_field("claude", p) == {"input_tokens": 10, "cost_usd": 0.01, "model": "m1", "name": "claude"}
    assert agent_field(None, Proposal("baseline")) == {}
    assert add_usage({"input_tokens": 10, "cost_usd": 0.01, "model": "a"}, {"input_tokens": 5, "model": "b"}) == \
        {"input_tokens": 15, "cost_usd": 0.01, "model": "b"}


def test_a_secret_value_in_a_run_line_is_redacted(monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef")
    rec = run_line(run=3, commit="abc1234", status="crash", description="printed sk-ant-test-0123456789abcdef",
                   metric=None, metrics={}, timestamp=1, segment=0, confidence=None,
                   asi={"tail": "env: ANTHROPIC_API_KEY=sk-ant-test-0123456789abcdef\nTraceback"}, reason="exit 1")
    text = repr(rec)
    assert "sk-ant-test-0123456789abcdef" not in text
    assert rec["asi"]["tail"].startswith("env: ANTHROPIC_API_KEY=[redacted ANTHROPIC_API_KEY]")
