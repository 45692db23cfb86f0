"""The judge's decisions and statistics, as pure functions: parse a verdict, unswap it, combine the two
orders of a pair, and report a set of judged pairs (harness.judge does the calls).

The protocol is posttrain.md §5's "recommended protocol": MT-Bench's pairwise judge (FastChat
`llm_judge/common.py`, `show_result.py`; Zheng et al. 2023, arXiv 2306.05685) asked in both orders, with
two changes where FastChat is known to go wrong (posttrain.md §6, pitfall 23):
- the verdict is the *last* strict token `[[A]]`, `[[B]]` or `[[C]]`, not the first substring match
  (a judgment that quotes "[[A]]" while restating the format parses as A in FastChat); a judgment
  without one, or whose last verdict line names two different ones, is an *error*, never a tie;
- errors are excluded from n and counted (FastChat drops them silently; tinker-cookbook maps them to a tie).
A pair is a win only when both orders agree after unswapping; a tie or a disagreement is a tie (the
"conservative" rule of MT-Bench's paper, FastChat `show_result.py`). Identical answers are a tie without
a call (AlpacaEval forces them to 1.5).

Everything is from the point of view of answer `a` (the first file, e.g. the run) against `b` (e.g. the base).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Position = Literal["A", "B", "C"]  # what one judgment said: the answer shown first, second, or a tie
Side = Literal["a", "b", "tie"]  # a judgment unswapped back to the pair's own answers
Outcome = Literal["win", "loss", "tie", "error"]  # a pair, for answer a

_TOKEN = re.compile(r"\[\[([ABC])\]\]")


def parse_verdict(text: str) -> Position | None:
    """The last `[[A]]`/`[[B]]`/`[[C]]` in a judgment; None (an error) when there is none, or when the line
    holding the last one names two different verdicts ("[[A]] or [[B]]": no decision)."""
    found = list(_TOKEN.finditer(text))
    if not found:
        return None
    last = found[-1]
    start = text.rfind("\n", 0, last.start()) + 1
    end = text.find("\n", last.end())
    line = text[start:] if end < 0 else text[start:end]
    if len(set(_TOKEN.findall(line))) > 1:
        return None
    verdict: Position = last.group(1)  # type: ignore[assignment]  # the regex allows only A, B, C
    return verdict


def unswap(verdict: Position, *, swapped: bool) -> Side:
    """A judgment's verdict as the pair's own side. Order 1 shows a as A; order 2 (swapped) shows b as A."""
    if verdict == "C":
        return "tie"
    first: Side = "b" if swapped else "a"
    second: Side = "a" if swapped else "b"
    return first if verdict == "A" else second


def combine(first: Position | None, second: Position | None) -> Outcome:
    """The pair's outcome from its two judgments (`first`: a shown as A; `second`: b shown as A).
    Either unparseable: an error. Both orders name the same answer: it wins; anything else: a tie."""
    if first is None or second is None:
        return "error"
    s1, s2 = unswap(first, swapped=False), unswap(second, swapped=True)
    if s1 == s2 and s1 != "tie":
        return "win" if s1 == "a" else "loss"
    return "tie"


def normalize(answer: str) -> str:
    """Whitespace-insensitive form, for "identical answers are a tie without a call"."""
    return " ".join(answer.split())


@dataclass(frozen=True)
class Judged:
    """One pair's result. `first`/`second`: the parsed verdicts of the two orders (None: unparseable, or
    not asked when `identical`)."""

    id: str
    outcome: Outcome
    first: Position | None = None
    second: Position | None = None
    identical: bool = False


def judged(id: str, first: Position | None, second: Position | None) -> Judged:
    return Judged(id, combine(first, second), first, second)


def identical(id: str) -> Judged:
    return Judged(id, "tie", identical=True)


@dataclass(frozen=True)
class Report:
    """The statistics of a set of judged pairs, for answer a against answer b (README "The judge").

    n excludes errors (and pairs not judged at all, e.g. past --max-cost, which the caller lists).
    `win_rate_adjusted_se`: the standard error of the mean of the per-pair scores s = 1 (win), 0.5 (tie),
    0 (loss), sd(s, ddof=1)/sqrt(n), as tinker-cookbook's both-ways ComparisonEvaluator reports it
    (posttrain.md §5, TC: `stderr = std(ddof=1)/sqrt(n)`); None below 2 pairs.
    `inconsistency_rate`: of the pairs the judge was asked in both orders (errors and identical pairs
    excluded), the share whose two unswapped verdicts differ (MT-Bench's position consistency, complemented).
    `first_position_rate`: of the single judgments that chose an answer (ties excluded), the share that chose
    the one shown first (FastChat #3911's "the first-shown answer wins 52.6%"); 0.5 for a judge without
    position bias, 1.0 for one that always says A.
    `error_rate`: errors over all pairs with a result (n + errors)."""

    n: int
    wins: int
    ties: int
    losses: int
    errors: int
    identical: int
    win_rate: float | None
    tie_rate: float | None
    loss_rate: float | None
    win_rate_adjusted: float | None
    win_rate_adjusted_se: float | None
    inconsistency_rate: float | None
    first_position_rate: float | None
    error_rate: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def score(outcome: Outcome) -> float:
    """A pair's score for answer a: a win 1, a tie 0.5, a loss 0 (AlpacaEval's draw as half a win)."""
    return {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome]


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def report(results: Sequence[Judged]) -> Report:
    """The statistics of `results` (see `Report`)."""
    valid = [r for r in results if r.outcome != "error"]
    n = len(valid)
    count = {o: sum(r.outcome == o for r in valid) for o in ("win", "tie", "loss")}
    errors = len(results) - n
    scores = [score(r.outcome) for r in valid]
    se = statistics.stdev(scores) / math.sqrt(n) if n >= 2 else None
    asked = [r for r in valid if not r.identical]
    disagree = sum(unswap(r.first, swapped=False) != unswap(r.second, swapped=True)  # type: ignore[arg-type]
                   for r in asked)
    chosen = [v for r in asked for v in (r.first, r.second) if v != "C"]
    return Report(
        n=n, wins=count["win"], ties=count["tie"], losses=count["loss"], errors=errors,
        identical=sum(r.identical for r in valid),
        win_rate=_rate(count["win"], n), tie_rate=_rate(count["tie"], n), loss_rate=_rate(count["loss"], n),
        win_rate_adjusted=(count["win"] + count["tie"] / 2) / n if n else None, win_rate_adjusted_se=se,
        inconsistency_rate=_rate(disagree, len(asked)),
        first_position_rate=_rate(sum(v == "A" for v in chosen), len(chosen)),
        error_rate=_rate(errors, len(results)),
    )
