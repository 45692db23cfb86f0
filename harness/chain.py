"""The ledger's hash chain: every line carries `prev`, the sha256 of the line before it.

Why: the ledger decides what is kept, so a line that was edited, inserted, deleted or moved
must not read as history. As in BOLDT's event log, each line names the hash of the previous
line's bytes exactly as stored (without the newline); the first line names sha256(b"").
Editing a line changes its hash, so the line after it no longer follows: the break is found
at the first line whose `prev` does not match, and named ("line 12 does not follow line 11").

The rules, applied by `ChainWalker` one line at a time (harness.ledger feeds it while it parses,
so verifying costs one sha256 per line and no second pass):
- blank lines are skipped: they carry nothing and no writer here makes them;
- lines without `prev` before the first chained line are a legacy prefix (older sessions,
  imported pi-autoresearch or karpathy ledgers): accepted and counted, never verified;
- a break is a complete line that does not parse, a `prev` that does not match, or a line
  without `prev` after the chain began; a torn last line (a write cut short, no newline) is
  not a break: recovery sets it aside (`ledger.set_aside_torn_tail`);
- a `reseal` line (`autoresearch resume --accept-ledger`), chained like any other, acknowledges
  the breaks before it that it lists: they stay in the report, and no longer stop the loop.

What a chain cannot show: an edit of the very last line (nothing follows it yet), or a ledger
rewritten whole with fresh hashes. Keeping the experiment from writing the ledger at all is the
sandbox's job; the chain makes any other writer's edit visible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

_sha256 = hashlib.sha256
GENESIS = _sha256(b"").hexdigest()  # the `prev` of a ledger's first line
BreakKind = Literal["unparseable", "mismatch", "unchained"]


def line_hash(line: bytes) -> str:
    """What the next line's `prev` must be: sha256 hex of a line as stored, without its newline."""
    return _sha256(line).hexdigest()


@dataclass(frozen=True)
class Break:
    lineno: int  # 1-based line of the file where the chain breaks
    kind: BreakKind
    why: str  # one clause, e.g. "line 12 does not follow line 11 (...)"


@dataclass(frozen=True)
class ChainReport:
    """What verifying a ledger found. `ok` decides whether the loop may run: no break that a
    reseal has not acknowledged. `first_break` and `why` describe the first such break."""

    ok: bool
    lines: int  # complete non-blank lines (a torn last line is not counted)
    legacy: int  # unchained lines before the first chained one
    first_break: int | None  # 1-based line number of the first unacknowledged break
    why: str  # that break in one clause; "" when ok
    chained: int = 0  # lines that carry `prev`
    breaks: tuple[Break, ...] = ()  # unacknowledged, in file order
    acknowledged: tuple[Break, ...] = field(default=(), compare=False)  # listed by a reseal after them
    reseals: tuple[int, ...] = ()  # line numbers of the reseal lines that chain
    head: str = GENESIS  # hash of the last complete line: the next line's `prev`

    def summary(self) -> str:
        """One line for `resume` and `status`: "41 lines, chain intact", "chain broken at line 12 (...)"."""
        if not self.ok:
            more = len(self.breaks) - 1
            return f"chain broken at line {self.first_break} ({self.why})" + (
                f"; {_n(more, 'more break')} after it" if more else "")
        if self.lines == 0:
            return "empty"
        if self.legacy and not self.chained:
            return f"{_n(self.legacy, 'unchained line')} written before the chain; the chain starts with the next line"
        text = (f"{_n(self.legacy, 'unchained line')} written before the chain, {self.chained} chained, intact"
                if self.legacy else f"{_n(self.lines, 'line')}, chain intact")
        if self.acknowledged:
            where = ", ".join(str(b.lineno) for b in self.acknowledged)
            text += (f" after the reseal at line {self.reseals[-1]} (accepted break{'s' if len(self.acknowledged) > 1 else ''} "
                     f"at line {where}: {self.acknowledged[0].why})")
        return text


EMPTY = ChainReport(ok=True, lines=0, legacy=0, first_break=None, why="")


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


class ChainWalker:
    """Verifies a ledger line by line, in file order; `report()` at the end. Feed it every complete
    non-blank line: `good` for one that parsed (with its decoded object), `bad` for one that did not."""

    def __init__(self) -> None:
        self.prev, self.prev_lineno = GENESIS, 0
        self.lines = self.legacy = self.chained = 0
        self.first_chained: int | None = None
        self.breaks: list[Break] = []
        self.acknowledged: list[Break] = []
        self.reseals: list[int] = []

    def good(self, lineno: int, line: bytes, obj: dict[str, Any]) -> None:
        prev = obj.get("prev")
        if prev is not None and prev == self.prev:  # the common case, kept short: it runs once per line
            self.chained += 1
            if self.first_chained is None:
                self.first_chained = lineno
            if obj.get("type") == "reseal":
                self._reseal(lineno, obj)
        elif "prev" in obj:
            self.chained += 1
            if self.first_chained is None:
                self.first_chained = lineno
            self.breaks.append(Break(lineno, "mismatch", self._mismatch(lineno, prev)))
        elif self.first_chained is None:
            self.legacy += 1
        else:
            self.breaks.append(Break(lineno, "unchained", (
                f"line {lineno} carries no hash of line {self.prev_lineno}, though the chain began at line "
                f"{self.first_chained}: a tool that does not chain wrote it, or a hand did")))
        self.lines += 1
        self.prev, self.prev_lineno = _sha256(line).hexdigest(), lineno

    def bad(self, lineno: int, line: bytes, reason: str) -> None:
        self.breaks.append(Break(lineno, "unparseable", f"line {lineno} does not parse: {reason}"))
        self.lines += 1
        self.prev, self.prev_lineno = line_hash(line), lineno

    def report(self) -> ChainReport:
        first = self.breaks[0] if self.breaks else None
        return ChainReport(
            ok=first is None, lines=self.lines, legacy=self.legacy, chained=self.chained,
            first_break=first.lineno if first else None, why=first.why if first else "",
            breaks=tuple(self.breaks), acknowledged=tuple(self.acknowledged), reseals=tuple(self.reseals),
            head=self.prev,
        )

    def _mismatch(self, lineno: int, prev: object) -> str:
        if not isinstance(prev, str):
            return f"line {lineno}'s prev is not a hash ({str(prev)[:40]!r})"
        if self.prev_lineno == 0:
            return f"line {lineno} does not start the chain: its prev is not the empty ledger's hash, so lines before it were deleted"
        return (f"line {lineno} does not follow line {self.prev_lineno}: its prev is not line {self.prev_lineno}'s "
                "hash, so that line was edited, or lines were inserted, deleted or reordered")

    def _reseal(self, lineno: int, obj: dict[str, Any]) -> None:
        """A reseal acknowledges the breaks it lists (`breaks`, and `broken_at`), not any break before
        it: a line edited after the user accepted the ledger is a new break, and stops the loop again."""
        listed = {n for n in (obj.get("breaks") or []) if type(n) is int}
        if type(obj.get("broken_at")) is int:
            listed.add(obj["broken_at"])
        self.acknowledged += [b for b in self.breaks if b.lineno in listed]
        self.breaks = [b for b in self.breaks if b.lineno not in listed]
        self.reseals.append(lineno)


def reseal_line(report: ChainReport, timestamp: int) -> dict[str, Any]:
    """The line `resume --accept-ledger` appends: which breaks the user saw and accepted, and when.
    pi-autoresearch skips it (no `run`); our fold skips it (an unknown type)."""
    assert report.first_break is not None, "only a broken chain is resealed"
    return {"type": "reseal", "broken_at": report.first_break, "breaks": [b.lineno for b in report.breaks],
            "why": report.why, "timestamp": timestamp}


def tail_hash(f: BinaryIO, size: int) -> str:
    """`line_hash` of the last non-blank line of a file of `size` bytes, GENESIS if there is none.

    Reads only the tail: 8 KiB, more only for a longer line, so an append costs the same on a
    100,000-line ledger as on an empty one. The last line counts as stored even when it has no
    newline (a torn write): the line appended after it then follows it, and the torn text is
    reported as the one line that does not parse.
    """
    window = 8192
    while True:
        start = max(0, size - window)
        f.seek(start)
        parts = f.read(size - start).split(b"\n")
        lowest = 0 if start == 0 else 1  # parts[0] may begin before the window: not a whole line
        for j in range(len(parts) - 1, lowest - 1, -1):
            if parts[j].strip():
                return line_hash(parts[j])
        if start == 0:
            return GENESIS
        window *= 4
