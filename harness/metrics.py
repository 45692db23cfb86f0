"""Parse what a run printed into metric values, in one pass and bounded memory.

Two contracts are understood:
- `METRIC name=value` lines (pi-autoresearch and the seed's plugin): names in pi's set (`METRIC_NAME`:
  letters, digits, `_`, `.`, `µ`), an optional `# comment` after the value;
- karpathy's summary block: a line `---` followed by `key:  value` lines.
On duplicates the last occurrence wins, and a METRIC line beats a summary-block value of the same
name regardless of order, because METRIC is the explicit contract.

A value is a plain ASCII decimal number (`parse_number`): finite and |x| < MAX_ABS. Python's float()
also takes `1_000`, Arabic-Indic or fullwidth digits, `nan` and `1e308`; none of those is a metric a
run meant to report, and a value near float overflow turns every mean, difference and percentage
computed from it into inf.

`MetricScanner` is the parser: the runner feeds it the output as it streams, so the controller never
holds the whole log; `parse_metrics(text)` is the same scanner fed once, so both agree by
construction. Lines are split where `str.splitlines` splits (`\\n`, `\\r`, ...). A line longer than
MAX_LINE_CHARS is skipped without being held: no real metric line is that long.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

NAME = r"[A-Za-z_][A-Za-z0-9_]*"  # a summary-block key (karpathy's train.py prints identifiers)
# A METRIC name: pi-autoresearch's set, `[\w.µ]+` in a JavaScript regex without the u flag, so ASCII word
# characters, `.` and the micro sign U+00B5 (pi: extensions/pi-autoresearch/index.ts `parseMetricLines`; its
# documented example is `METRIC total_µs=15200`). A superset of the seed plugin's `[a-zA-Z_][a-zA-Z0-9_]*`.
METRIC_NAME = "[A-Za-z0-9_.\u00b5]+"
MAX_ABS = 1e15  # no real metric reaches it, and it is far from float overflow (1.8e308)
MAX_LINE_CHARS = 4096  # a longer line is never a metric line nor a `---`, and is not held
MAX_NAMES = 256  # per contract: a run printing millions of distinct names cannot grow our memory
MAX_VALUES = 8  # distinct values remembered per METRIC name, enough to see "printed twice, differently"
_FORBIDDEN = {"__proto__", "constructor", "prototype"}  # pi-autoresearch rejects these names

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The characters str.splitlines splits on (\r\n counts as two breaks here, which only adds an empty
# line: empty lines match nothing). Inside a chunk they become "\n" so one re.M pattern finds lines.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_TO_NEWLINE = str.maketrans(dict.fromkeys(_BREAKS[1:], "\n"))
_RARE_BREAKS = re.compile(f"[{_BREAKS[1:]}]")
_SP = r"[^\S\n]"  # whitespace within a line (\s would run on into the next line)
# Tolerant of surrounding whitespace and of a trailing `# comment` after whitespace (the seed's SKILL.md
# documents `METRIC total_ms=4230        # primary`), strict about the name (pi's set) and the value.
# METRIC and `---` lines are found with str.find (fast: most output is neither), summary lines with one
# regex over the text after the last `---` only.
_METRIC_LINE = re.compile(rf"{_SP}*METRIC{_SP}+({METRIC_NAME})=(\S+)(?:{_SP}+#[^\n]*)?{_SP}*")
_METRIC_NAME_RE = re.compile(METRIC_NAME)
_DASHES_LINE = re.compile(rf"{_SP}*---{_SP}*")
_SUMMARY_LINES = re.compile(rf"^{_SP}*({NAME}):{_SP}+(\S+){_SP}*$", re.MULTILINE)


def is_metric_name(name: str) -> bool:
    """Whether `METRIC name=value` can carry this name: pi's set, and not one pi refuses as an object key."""
    return bool(_METRIC_NAME_RE.fullmatch(name)) and name not in _FORBIDDEN


def parse_number(text: str) -> float | None:
    """A metric value: ASCII digits, optional sign, point and exponent, finite, |x| < MAX_ABS; else
    None (nan, inf, 1e308, 1_000, non-ASCII digits, whitespace, garbage)."""
    if not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text)
    return value if abs(value) < MAX_ABS else None  # abs(inf) fails it too


class MetricScanner:
    """Metrics of a text fed in arbitrary chunks (split lines, `\\r`, huge lines), in bounded memory:
    the unfinished last line (at most MAX_LINE_CHARS) and at most MAX_NAMES values per contract."""

    def __init__(self) -> None:
        self.metric_lines: dict[str, float] = {}  # METRIC name=value, last wins
        self.summary: dict[str, float] = {}  # the block after the last `---` so far
        self.values: dict[str, list[float]] = {}  # distinct METRIC values per name, first seen first
        self._in_block = False  # seen a `---` line
        self._partial = ""  # the unfinished last line
        self._skipping = False  # inside an overlong line: drop text until its end

    def feed(self, text: str) -> MetricScanner:
        if self._skipping:
            end = _first_break(text)
            if end < 0:
                return self
            text, self._skipping = text[end:], False
        end = _last_break(text)
        if end < 0:
            self._hold(self._partial + text)
            return self
        self._scan(self._partial + text[: end + 1])
        self._hold(text[end + 1 :])
        return self

    def close(self) -> MetricScanner:
        """End of output: the unfinished last line counts too."""
        if self._partial:
            self._scan(self._partial)
        self._partial, self._skipping = "", False
        return self

    def result(self) -> dict[str, float]:
        """All metrics so far, the unfinished line included: summary block first, METRIC lines override."""
        if not self._partial:
            return {**self.summary, **self.metric_lines}
        ahead = MetricScanner()  # scan the unfinished line on a copy: more of it may still come
        ahead.summary, ahead.metric_lines, ahead._in_block = (
            dict(self.summary),
            dict(self.metric_lines),
            self._in_block,
        )
        ahead._scan(self._partial)
        return {**ahead.summary, **ahead.metric_lines}

    def metric_values(self) -> dict[str, tuple[float, ...]]:
        return {name: tuple(vs) for name, vs in self.values.items()}

    def _hold(self, rest: str) -> None:
        if len(rest) > MAX_LINE_CHARS:
            self._partial, self._skipping = "", True
        else:
            self._partial = rest

    def _scan(self, text: str) -> None:
        """Complete lines (the last one may lack its break)."""
        if _RARE_BREAKS.search(text):
            text = text.translate(_TO_NEWLINE)
        for start, end in _lines_with(text, "METRIC"):
            if end - start <= MAX_LINE_CHARS and (m := _METRIC_LINE.fullmatch(text, start, end)):
                self._metric(m.group(1), m.group(2))
        dashes = [
            end
            for start, end in _lines_with(text, "---")
            if end - start <= MAX_LINE_CHARS and _DASHES_LINE.fullmatch(text, start, end)
        ]
        if dashes:  # a new block starts: only what follows the last `---` counts
            self.summary, self._in_block = {}, True
        if not self._in_block:
            return
        for m in _SUMMARY_LINES.finditer(text, dashes[-1] + 1 if dashes else 0):
            if m.end() - m.start() <= MAX_LINE_CHARS and (value := parse_number(m.group(2))) is not None:
                _put(self.summary, m.group(1), value)

    def _metric(self, name: str, raw: str) -> None:
        if name in _FORBIDDEN or (value := parse_number(raw)) is None:
            return
        _put(self.metric_lines, name, value)
        seen = self.values.get(name)
        if seen is None and len(self.values) < MAX_NAMES:
            self.values[name] = [value]
        elif seen is not None and value not in seen and len(seen) < MAX_VALUES:
            seen.append(value)


def _lines_with(text: str, word: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each line of `text` ("\n"-separated) that contains `word`, in order."""
    i = text.find(word)
    while i >= 0:
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        yield text.rfind("\n", 0, i) + 1, end
        i = text.find(word, end)


def _put(out: dict[str, float], name: str, value: float) -> None:
    if name in out or len(out) < MAX_NAMES:
        out[name] = value


def _first_break(text: str) -> int:
    found = [i for c in _BREAKS if (i := text.find(c)) >= 0]
    return min(found, default=-1)


def _last_break(text: str) -> int:
    return max(text.rfind(c) for c in _BREAKS)


def parse_metric_lines(text: str) -> dict[str, float]:
    """`METRIC name=value` lines; last occurrence wins; values `parse_number` refuses are ignored."""
    return MetricScanner().feed(text).close().metric_lines


def parse_summary_block(text: str) -> dict[str, float]:
    """karpathy's `---` block: numeric `key: value` lines after the last `---` line.

    Lines that do not match end nothing (train.py may print warnings in between); the
    block is everything after the last `---`, so an earlier `---` in the log is ignored.
    """
    return MetricScanner().feed(text).close().summary


def parse_metrics(text: str) -> dict[str, float]:
    """All metrics a run reported: summary block first, METRIC lines override."""
    return MetricScanner().feed(text).close().result()
