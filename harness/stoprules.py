"""When the loop stops: the user's rules (`run --max-iterations/--until/--max-hours/--max-cost/
--max-failure-streak`) and the user's Ctrl-C.

`should_stop` is a pure function of the rules, how many experiments this session did, when it
started, the time now, the ledger and the interrupts, so every rule is tested with literal
numbers and no clock.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.ledger import LedgerState

Printer = Callable[[str], None]


@dataclass(frozen=True)
class StopRules:
    max_iterations: int | None = None
    until: float | None = None  # epoch seconds
    max_hours: float | None = None
    max_failure_streak: int = 20
    max_cost_usd: float | None = None


def parse_until(text: str, now: dt.datetime) -> float:
    """`HH:MM` -> the next such local time after `now`, as epoch seconds."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"--until takes HH:MM (24-hour), not {text!r}")
    target = now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
    if target <= now:
        target += dt.timedelta(days=1)
    return target.timestamp()


@dataclass
class Interrupts:
    """SIGINT/SIGTERM bookkeeping: first Ctrl-C finishes the experiment, second aborts it."""

    stop_requested: bool = False
    abort_requested: bool = False
    _previous: dict[int, Any] = field(default_factory=dict)
    printer: Printer = print

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM or self.stop_requested:
            self.abort_requested = True
            self.printer("\nautoresearch: aborting the current experiment (it will be logged as a crash)")
        else:
            self.stop_requested = True
            self.printer("\nautoresearch: finishing the current experiment, then stopping (Ctrl-C again to abort it)")


def should_stop(rules: StopRules, *, done: int, started: float, now: float, state: LedgerState,
                interrupts: Interrupts) -> str | None:
    """Why the loop must stop before its next experiment, or None to go on."""
    if interrupts.stop_requested:
        return "stopped by the user (Ctrl-C)"
    if rules.max_iterations is not None and done >= rules.max_iterations:
        return f"reached --max-iterations {rules.max_iterations}"
    if rules.until is not None and now >= rules.until:
        return f"reached --until {dt.datetime.fromtimestamp(rules.until).strftime('%H:%M')}"
    if rules.max_hours is not None and now - started >= rules.max_hours * 3600:
        return f"reached --max-hours {rules.max_hours:g}"
    if rules.max_cost_usd is not None and state.cost_usd >= rules.max_cost_usd:
        return (f"reached --max-cost ${rules.max_cost_usd:g}: the agent has spent an estimated "
                f"${state.cost_usd:.2f} on this ledger")
    seg = state.current
    streak = seg.failure_streak() if seg else 0
    if streak >= rules.max_failure_streak:
        return (
            f"{streak} experiments in a row were not kept (limit {rules.max_failure_streak}); stopping so you "
            "can look at what is going wrong (`autoresearch log --last 20`). Raise --max-failure-streak to go on."
        )
    return None
