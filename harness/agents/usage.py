"""What an Anthropic API conversation cost: the price table, per-request cost, summed usage.

Tokens of every response are summed and priced per request from `PRICES` (a model priced by prompt
length is priced by each request's own prompt). A model without a known price gets `cost_usd: None`,
never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """USD per million tokens. `cache_write` is the 5-minute write, the TTL this agent uses."""

    input: float
    output: float
    cache_write: float
    cache_read: float


# Source: platform.claude.com/docs/en/about-claude/pricing and the model pages
# (platform.claude.com/docs/en/models/<model>/overview), read 2026-11-21. Prices change:
# a model missing here is recorded with cost_usd null, never guessed.
PRICES: dict[str, Price] = {
    "claude-fable-5-2": Price(8.0, 40.0, 10.0, 0.20),  # released 2026-11-09
    "claude-mythos-5-2": Price(8.0, 40.0, 10.0, 0.20),
    "claude-fable-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-mythos-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-fable-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-mythos-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-opus-5-5": Price(4.0, 20.0, 5.0, 0.20),
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.10),  # cache reads 0.20 -> 0.10 on 2026-10-07
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),  # prompts up to 100k tokens; see LONG_PROMPT
    "claude-opus-4-8": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-sonnet-4-6": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4-5": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
}
# Models priced by prompt length: (threshold in prompt tokens, price for every token of a longer request)
LONG_PROMPT: dict[str, tuple[int, Price]] = {
    "claude-haiku-5-5": (100_000, Price(0.50, 2.50, 0.625, 0.05)),
}


def _price_key(model: str) -> str:
    """`claude-haiku-4-5-20251001` and `claude-opus-5-5[1m]` price as their base model."""
    base = re.sub(r"\[.*\]$", "", model)
    return re.sub(r"-\d{8}$", "", base)


def estimate_cost_usd(model: str, usage: dict[str, Any]) -> float | None:
    """Estimated USD cost of one request's usage (token counts as the API reports them).

    None when the model has no known price. For models priced by prompt length the tier is
    chosen from this usage's prompt size, so pass one request's usage, not a sum.
    """
    key = _price_key(model)
    price = PRICES.get(key)
    if price is None:
        return None
    tokens = {k: int(usage.get(k) or 0) for k in
              ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    if key in LONG_PROMPT:
        threshold, long_price = LONG_PROMPT[key]
        prompt = tokens["input_tokens"] + tokens["cache_creation_input_tokens"] + tokens["cache_read_input_tokens"]
        if prompt > threshold:
            price = long_price
    return (
        tokens["input_tokens"] * price.input
        + tokens["output_tokens"] * price.output
        + tokens["cache_creation_input_tokens"] * price.cache_write
        + tokens["cache_read_input_tokens"] * price.cache_read
    ) / 1e6


# ------------------------------------------------------------------------------ usage


@dataclass
class Usage:
    """What one proposal cost, summed over its requests."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float | None = 0.0
    turns: int = 0  # model responses
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    wait_s: float = 0.0  # time spent waiting out rate limits and overload
    tool_errors: int = 0  # tool calls answered with is_error
    refused_edits: int = 0  # edits of files outside the editable set

    def add_response(self, usage: Any) -> None:
        counts = {
            "input_tokens": getattr(usage, "input_tokens", 0) or 0,
            "output_tokens": getattr(usage, "output_tokens", 0) or 0,
            "cache_read_input_tokens": getattr(usage, "cache_read_input_tokens", 0) or 0,
            "cache_creation_input_tokens": getattr(usage, "cache_creation_input_tokens", 0) or 0,
        }
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + int(v))
        cost = estimate_cost_usd(self.model, counts)
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        self.turns += 1

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "turns": self.turns,
            "requests": self.requests,
        }
        if self.cost_usd is None:
            d["cost_note"] = f"no price known for model {self.model}; cost not estimated"
        for k in ("retries", "tool_errors", "refused_edits"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.wait_s:
            d["wait_s"] = round(self.wait_s, 1)
        return d
