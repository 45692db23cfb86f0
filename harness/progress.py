"""The live progress line of a running experiment on stderr: elapsed, budget left, kill time, its last line."""

from __future__ import annotations

import os
import re
import time
from typing import TextIO

DRAW_S = 0.5  # progress redraw period (~2x/s)
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x1f\x7f]")


def _clock(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def progress_line(
    label: str, elapsed_s: float, budget_s: float | None, timeout_s: float, last: str, width: int
) -> str:
    """One status line: label, elapsed, time left against the budget, the kill time, and the run's own
    latest line stripped of control codes, cut to the terminal width."""
    parts = [label] if label else []
    parts.append(_clock(elapsed_s))
    if budget_s is not None:
        left = budget_s - elapsed_s
        parts.append(
            f"{_clock(left)} left of {_clock(budget_s)}" if left >= 0 else f"{_clock(-left)} over budget"
        )
    parts.append(f"kill at {_clock(timeout_s)}")
    last = _CONTROL.sub("", last).strip()
    line = "  ".join(parts) + (f" | {last}" if last else "")
    return line[: max(width - 1, 0)]


class Display:
    """Redraws one stderr line ~2x/s; `close` wipes it so the terminal is left clean."""

    def __init__(self, stream: TextIO | None, label: str, budget_s: float | None, timeout_s: float) -> None:
        self.stream, self.label, self.budget_s, self.timeout_s = stream, label, budget_s, timeout_s
        self.drawn_at: float | None = None

    def draw(self, elapsed_s: float, last: str) -> None:
        now = time.monotonic()
        if self.stream is None or (self.drawn_at is not None and now - self.drawn_at < DRAW_S):
            return
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80  # 0 on a pty never sized
        except (OSError, ValueError):
            width = 80
        line = progress_line(self.label, elapsed_s, self.budget_s, self.timeout_s, last, width)
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self.drawn_at = now

    def close(self) -> None:
        if self.stream is not None and self.drawn_at is not None:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
