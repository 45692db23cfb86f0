"""Parse what a run printed into metric values.

Two contracts are understood:
- `METRIC name=value` lines (pi-autoresearch and the seed's plugin);
- karpathy's summary block: a line `---` followed by `key:  value` lines.
Only finite numbers are accepted; on duplicates the last occurrence wins, and a METRIC
line beats a summary-block value of the same name regardless of order, because METRIC is
the explicit contract.
"""

from __future__ import annotations

import math
import re

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# Tolerant of leading whitespace and trailing spaces; strict about the name so both the
# pi-autoresearch and the seed's regexes would accept what we accept.
_METRIC_RE = re.compile(rf"^\s*METRIC\s+({NAME})=(\S+)\s*$")
_SUMMARY_RE = re.compile(rf"^({NAME}):\s+(\S+)\s*$")
_FORBIDDEN = {"__proto__", "constructor", "prototype"}  # pi-autoresearch rejects these names


def parse_number(text: str) -> float | None:
    """A finite float, or None (nan, inf, garbage)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_metric_lines(text: str) -> dict[str, float]:
    """`METRIC name=value` lines; last occurrence wins; non-finite values are ignored."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if not m or m.group(1) in _FORBIDDEN:
            continue
        value = parse_number(m.group(2))
        if value is not None:
            out[m.group(1)] = value
    return out


def parse_summary_block(text: str) -> dict[str, float]:
    """karpathy's `---` block: numeric `key: value` lines after the last `---` line.

    Lines that do not match end nothing (train.py may print warnings in between); the
    block is everything after the last `---`, so an earlier `---` in the log is ignored.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    out: dict[str, float] = {}
    for line in lines[starts[-1] + 1 :]:
        m = _SUMMARY_RE.match(line.strip())
        if not m:
            continue
        value = parse_number(m.group(2))
        if value is not None:
            out[m.group(1)] = value
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """All metrics a run reported: summary block first, METRIC lines override."""
    return {**parse_summary_block(text), **parse_metric_lines(text)}
