"""Agents that propose experiments. `make_agent` picks one by name."""

from __future__ import annotations

import os

from harness.agents.base import Agent, AgentError


def make_agent(kind: str, *, seed: int = 42, model: str | None = None) -> Agent:
    """`auto` is `claude` when ANTHROPIC_API_KEY is set, else the offline `mutate`."""
    if kind == "auto":
        kind = "claude" if os.environ.get("ANTHROPIC_API_KEY") else "mutate"
    if kind == "mutate":
        from harness.agents.mutate import MutateAgent

        return MutateAgent(rng_seed=seed)
    if kind == "claude":
        from harness.agents.claude import DEFAULT_MODEL, ClaudeAgent

        return ClaudeAgent(model=model or DEFAULT_MODEL)
    raise AgentError(f"unknown agent {kind!r}; available: auto, mutate, claude")
