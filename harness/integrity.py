"""Metric integrity: catching an agent that games the benchmark instead of improving the model.

Threat model (README "Metric integrity"): an LLM agent under pressure to improve a number,
that may take the shortest path to it: print a better number, change or bypass the
evaluation, train past the budget, peek at the validation data. It is not a human attacker
who studies this file to slip past it. Everything here is a pure function; the loop applies
them before a run (the static audit, `harness.audit`, re-exported here) and after it (budget,
result channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from harness.audit import RULES, Finding, Rule, added_lines, audit_patch, audit_workspace, fixed_names
from harness.metrics import parse_number

__all__ = [
    "ANSWERS_ENV", "RESULT_ENV", "RULES", "ChannelVerdict", "Finding", "Rule", "added_lines", "allowance_s", "apply_channel",
    "audit_patch", "audit_workspace", "fixed_names", "over_budget", "read_results",
]

RESULT_ENV = "AUTORESEARCH_RESULT_FILE"  # the harness-controlled channel; the fixed evaluation writes it
# Where the fixed evaluation may leave its answers (answers.jsonl, base_answers.jsonl) for the controller's judge:
# a directory only the evaluation is given; the controller keeps its files in .autoresearch/answers/<key>/.
ANSWERS_ENV = "AUTORESEARCH_ANSWERS_DIR"


def allowance_s(budget_s: float, startup_s: float, frac: float, eval_s: float | None = None) -> float:
    """The time a valid run may take (README "Metric integrity", the budget rule): the training budget,
    plus a start-up allowance that grows with the budget (`startup_s + frac * budget_s`: compilation and
    data loading are fixed costs, but a longer run also checkpoints and logs more), plus, only when the
    evaluation runs inside the run's own process (stdout targets), `eval_s` for it."""
    return budget_s + startup_s + frac * budget_s + (eval_s or 0.0)


def over_budget(train_s: float, budget_s: float, startup_s: float, frac: float,
                eval_s: float | None = None) -> str | None:
    """None when the run trained within its allowance, else the checks_failed reason.

    `train_s` is the training time: with a separate evaluation process, the run's own wall time (it
    ends before the evaluation starts), so a slow evaluation on a loaded machine never counts; for a
    stdout target, the whole run, with `eval_s` allowed for its in-process evaluation."""
    limit = allowance_s(budget_s, startup_s, frac, eval_s)
    if train_s <= limit:
        return None
    parts = f"budget {budget_s:g} + start-up {startup_s:g} + {frac:g} x budget" + (
        f" + evaluation {eval_s:g}" if eval_s else "")
    what = "the run took" if eval_s is not None else "training took"
    return (f"{what} {train_s:.0f}s, over the allowance of {limit:g}s ({parts}): training past the budget "
            "is not a valid result")


def read_results(path: Path) -> tuple[list[tuple[str, float]], list[str]]:
    """(name, value) pairs the fixed evaluation reported, in order, and problems with the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    out: list[tuple[str, float]] = []
    problems: list[str] = []
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            value = parse_number(repr(obj["value"])) if isinstance(obj.get("value"), int | float) else None
            name = obj["name"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            problems.append(f"line {i} of the result file is not a result")
            continue
        if not isinstance(name, str) or value is None:
            problems.append(f"line {i} of the result file has no finite value")
            continue
        out.append((name, value))
    return out, problems


@dataclass(frozen=True)
class ChannelVerdict:
    metrics: dict[str, float]  # the run's metrics with the primary one taken from the channel
    failure: str | None  # checks_failed reason
    notes: dict[str, object]  # for the ASI


def apply_channel(metric: str, printed: dict[str, float], reported: list[tuple[str, float]],
                  problems: list[str]) -> ChannelVerdict:
    """Take the primary metric from the fixed evaluation's channel, never from stdout.

    - no report: the primary metric is removed (the run becomes a crash: no metric);
    - reported more than once: checks_failed (several evaluations, i.e. selection on validation);
    - a printed METRIC line for the primary metric that disagrees: ignored and flagged in the ASI.
    """
    metrics = dict(printed)
    notes: dict[str, object] = {}
    values = [v for n, v in reported if n == metric]
    for n, v in reported:
        if n != metric:
            metrics[n] = v
    if problems:
        notes["result_file_problems"] = problems
    printed_value = printed.get(metric)
    if not values:
        metrics.pop(metric, None)
        if printed_value is not None:
            notes["ignored_printed_metric"] = (
                f"{metric}={printed_value:g} was printed, but the fixed evaluation reported nothing: not accepted")
        return ChannelVerdict(metrics, None, notes)
    metrics[metric] = values[-1]
    if printed_value is not None and abs(printed_value - values[-1]) > 1e-6 * max(1.0, abs(values[-1])):
        notes["ignored_printed_metric"] = (
            f"{metric}={printed_value:g} was printed, but the fixed evaluation reported {values[-1]:g}; "
            "the evaluation's value is used")
    if len(values) > 1:
        return ChannelVerdict(metrics, f"the fixed evaluation ran {len(values)} times; the metric must come from "
                                       "one evaluation (several are a selection on the validation split)", notes)
    return ChannelVerdict(metrics, None, notes)
