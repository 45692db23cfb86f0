"""The contract between the controller and whatever proposes experiments.

An agent edits the editable files of the workspace in place and returns what it did
(description + ASI). The controller owns everything else: validation, commit, run,
decision, ledger, revert. Agents are stateless between proposals: everything they may
know comes from the `ProposalContext`, which is rebuilt from the ledger each time, so a
crash or context reset loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Direction = Literal["lower", "higher"]
Status = Literal["keep", "discard", "crash", "checks_failed"]


@dataclass(frozen=True)
class PastRun:
    """One logged experiment as an agent sees it (a view of a ledger run line)."""

    run: int
    status: Status
    metric: float | None  # None for crashes
    description: str
    asi: dict[str, Any]
    segment: int


@dataclass(frozen=True)
class ProposalContext:
    root: Path  # workspace root; edit files here
    editable: tuple[str, ...]  # paths relative to root that may change
    metric_name: str
    direction: Direction
    run_number: int  # the number the proposal will get in the ledger
    history: tuple[PastRun, ...]  # current segment, oldest first
    best_metric: float | None  # best kept metric of the current segment
    baseline_metric: float | None
    time_budget_s: float
    seed: int  # for agents that randomize: derive from this and run_number, never the clock
    feedback: str | None = None  # why the previous proposal of this iteration was refused, if it was


@dataclass(frozen=True)
class Proposal:
    description: str
    asi: dict[str, Any] = field(default_factory=dict)  # must contain "hypothesis"
    usage: dict[str, Any] | None = None  # tokens / cost, for LLM agents
    model: str | None = None


class AgentError(Exception):
    """The agent could not propose anything (no constants to mutate, API failure, ...)."""


class Agent(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal: ...
