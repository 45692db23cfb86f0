"""One Anthropic Messages API call with this harness's retry policy, usage accounting and key scrubbing.

Usable on its own (the agent's conversations, a judge): `MessagesClient(model=...).create(system,
messages, tools, usage)` returns the SDK's response and counts every HTTP attempt in `usage`.

Reliability: the SDK's own retries are off (`max_retries=0`) so that this module decides:
rate limits (429) and overload (529, 5xx, connection errors) are retried; a `retry-after`
header is obeyed exactly and such waits do not use up the backoff attempts, so a long limit
is waited out rather than failing the proposal; the total wait is capped by `max_wait_s`.
An `x-should-retry` header overrides the status. Any other API error raises `ProposalFailed`,
which carries the usage so far.

The API key is read from the argument or ANTHROPIC_API_KEY, given to the client and never
written anywhere: error texts pass through `scrub`, which callers also apply to tool results.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any

from harness.agents.base import AgentError
from harness.agents.usage import Usage

MAX_TOKENS = 16_000  # per response; room for adaptive thinking plus a whole-file write
REQUEST_TIMEOUT_S = 600.0
BACKOFF_FIRST_S = 5.0
BACKOFF_CAP_S = 300.0
MAX_BACKOFF_ATTEMPTS = 8  # retries without a retry-after header
MAX_ATTEMPTS = 100  # all retries, retry-after included (with max_wait_s, bounds a misbehaving server)
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")


class ProposalFailed(AgentError):
    """The API or the model did not produce a proposal. `usage` is what was spent on the attempt."""

    def __init__(self, message: str, usage: dict[str, Any], model: str):
        super().__init__(message)
        self.usage = usage
        self.model = model


class MessagesClient:
    """An Anthropic client for one model, with the retry policy of the module docstring."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float = 3600,
    ):
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise AgentError(
                "ANTHROPIC_API_KEY is not set: export it to use the claude agent, "
                "or run offline with --agent mutate"
            )
        import anthropic  # imported here: the offline agents never pay for it

        self._anthropic = anthropic
        self._key = key
        self.model = model
        self.sleep = sleep
        self.max_wait_s = max_wait_s
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.client = anthropic.Anthropic(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        self._rng = random.Random()

    def __repr__(self) -> str:  # never show the key
        return f"MessagesClient(model={self.model!r})"

    def scrub(self, text: str) -> str:
        """Remove the API key (and anything shaped like an Anthropic key) from a text."""
        if self._key:
            text = text.replace(self._key, "[redacted]")
        return _KEY_PATTERN.sub("sk-ant-[redacted]", text)

    def fail(self, message: str, usage: Usage) -> ProposalFailed:
        return ProposalFailed(self.scrub(message), usage.as_dict(), self.model)

    def create(self, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[dict[str, Any]],
               usage: Usage) -> Any:
        """One Messages API call with this module's retry policy (see the module docstring)."""
        anthropic = self._anthropic
        # Plain JSON-shaped dicts, not the SDK's TypedDicts: the request is what context.py builds.
        request: dict[str, Any] = {"model": self.model, "max_tokens": MAX_TOKENS, "system": system,
                                   "messages": messages, "tools": tools}
        backoffs = 0
        attempts = 0
        while True:
            usage.requests += 1
            attempts += 1
            try:
                return self.client.messages.create(**request)
            except anthropic.APIStatusError as exc:
                status = exc.status_code
                kind = getattr(exc, "type", None) or _error_type(exc.body) or "error"
                detail = getattr(exc, "api_message", None) or _error_message(exc.body) or ""
                why = f"API error {status} ({kind}){': ' + detail if detail else ''}"
                should = exc.response.headers.get("x-should-retry")
                if should == "false" or (status not in RETRYABLE_STATUS and should != "true"):
                    raise self.fail(f"Anthropic {why}", usage) from None
                delay = _retry_after(exc.response.headers)
            except anthropic.APIConnectionError as exc:
                why = "request timed out" if isinstance(exc, anthropic.APITimeoutError) else "connection error"
                delay = None
            except anthropic.APIError as exc:
                raise self.fail(f"Anthropic API error: {type(exc).__name__}: {exc}", usage) from None
            if delay is None:
                if backoffs >= MAX_BACKOFF_ATTEMPTS:
                    raise self.fail(f"Anthropic {why}; gave up after {backoffs} retries", usage)
                delay = min(BACKOFF_FIRST_S * 2**backoffs, BACKOFF_CAP_S) * self._rng.uniform(0.8, 1.0)
                backoffs += 1
            delay = max(delay, 0.5)
            if attempts >= MAX_ATTEMPTS or usage.wait_s + delay > self.max_wait_s:
                raise self.fail(
                    f"Anthropic {why}; gave up after waiting {usage.wait_s:.0f}s over {attempts} attempts "
                    f"(next wait {delay:.0f}s would pass the {self.max_wait_s:g}s limit)", usage)
            self.sleep(delay)
            usage.retries += 1
            usage.wait_s += delay


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `retry-after` in seconds."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            v = float(raw) * scale
        except ValueError:
            continue
        if math.isfinite(v) and v >= 0:
            return v
    return None


def _error_type(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("type") if isinstance(err, dict) else None


def _error_message(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("message") if isinstance(err, dict) else None
