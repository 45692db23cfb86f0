"""The session notes (`autoresearch.md`, `autoresearch.ideas.md`): learnings, not experiments.

Edits to them are committed on their own, before the experiment they came with, so reverting
the experiment never loses them. And every `learn_every` experiments an agent that can (the LLM
agent, `update_learnings`) rewrites their "What's been tried" and "Learnings" sections: a notes
commit, logged as a `learnings` line with its cost. A failed update is reported and never stops
the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import ledger, records
from harness.agents.base import Agent, AgentError, Proposal, ProposalContext
from harness.workspace import Workspace, short

NOTES_FILES = ("autoresearch.md", "autoresearch.ideas.md")  # session notes: committed, never reverted


def commit_notes(ws: Workspace, message: str) -> str | None:
    """Commit the notes' uncommitted edits (only them); returns the commit, None when there were none."""
    changed = [p for p in ws.changed_paths() if p in NOTES_FILES]
    return ws.commit_all(message, paths=changed) if changed else None


def learnings_due(agent: Agent, learn_every: int, record: dict[str, Any]) -> bool:
    """Whether the learnings are rewritten after this run line: an agent that can, every
    `learn_every` experiments (0 = never), never after a baseline."""
    can = getattr(agent, "update_learnings", None) is not None
    return can and bool(learn_every) and not record.get("baseline") and record["run"] % learn_every == 0


def update_learnings(agent: Agent, ctx: ProposalContext, ws: Workspace, ledger_path: Path, *, after_run: int,
                     clock: Callable[[], float], say: Callable[[str], None]) -> None:
    """Ask the agent to rewrite the notes; commit what it changed in them and undo anything else."""
    try:
        proposal: Proposal | None = agent.update_learnings(ctx)  # type: ignore[attr-defined]
    except AgentError as exc:
        say(f"note: updating the learnings failed: {exc}")
        usage = getattr(exc, "usage", None)
        if usage:
            ledger.append(ledger_path, {"type": "learnings", "after_run": after_run, "timestamp": int(clock()),
                                        "status": "failed", "reason": str(exc), "agent": usage})
        return
    changed = [p for p in ws.changed_paths() if p in NOTES_FILES]
    ws.discard_working_changes([p for p in ws.changed_paths() if p not in NOTES_FILES])
    if proposal is None or not changed:
        return
    commit = ws.commit_all(f"autoresearch: learnings after experiment #{after_run}", paths=changed)
    ledger.append(ledger_path, {
        "type": "learnings", "after_run": after_run, "timestamp": int(clock()), "commit": short(commit),
        "description": proposal.description, "agent": records.agent_field(agent.name, proposal),
    })
    say(f"       notes updated after experiment #{after_run} ({short(commit)})")
