"""Agents that propose experiments. `make_agent` picks one by name."""

from __future__ import annotations

from harness.agents.base import Agent, AgentError


def make_agent(kind: str, *, seed: int = 42) -> Agent:
    """`auto` means the best agent this machine can run offline-safely: `mutate` for now."""
    if kind in ("auto", "mutate"):
        from harness.agents.mutate import MutateAgent

        return MutateAgent(rng_seed=seed)
    raise AgentError(f"unknown agent {kind!r}; available: auto, mutate")
