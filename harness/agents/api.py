"""One Anthropic Messages API call with this harness's retry policy, usage accounting and key scrubbing.

Usable on its own (the agent's conversations, a judge): `MessagesClient(model=...).create(system,
messages, tools, usage)` returns the SDK's response and counts every HTTP attempt in `usage`.

Reliability: the SDK's own retries are off (`max_retries=0`) so that this module decides:
rate limits (429) and overload (529, 5xx, connection errors) are retried; a `retry-after`
header is obeyed exactly and such waits do not use up the backoff attempts, so a long limit
is waited out rather than failing the proposal; the total wait is capped by `max_wait_s`.
An `x-should-retry` header overrides the status. Any other API error raises `ProposalFailed`,
which carries the usage so far.

Until the API has answered once (any HTTP response), a connection error is most likely the
set-up (no network, a firewall, a wrong ANTHROPIC_BASE_URL), not a blip: it is retried only
`FIRST_CONTACT_WAITS_S` (1 + 2 + 4 s), a request that got no answer at all is not retried, and
then `APIUnreachable` (one line and exit 2 from the CLI, saying how to run offline) ends the
session; nothing was spent and nothing was edited yet, so nothing is lost. Once it has answered,
connection errors back off like overload, so an overnight session outlives a network blip.
Timeouts are explicit (`CONNECT_TIMEOUT_S`, `REQUEST_TIMEOUT_S`): the SDK's 10 minutes per
attempt, multiplied by its own retries, was a silent quarter of an hour.

Every wait is announced on stderr with its reason (a countdown on a terminal), and SIGINT and
SIGTERM end a wait or a retried request at once. Before the API has answered, nothing was spent or
edited: the command ends (`Interrupted`, a KeyboardInterrupt: exit 130), as it does for a first
request that hangs. After, the signal first goes to the handler that was there (the controller's,
which records the stop or the abort), and the proposal fails with its usage, so the controller logs
it with its cost, undoes its edits and stops. A first request after the API has answered runs under
the controller's handlers alone (a first Ctrl-C finishes the experiment, then stops).

The API key is read from the argument or ANTHROPIC_API_KEY, given to the client and never
written anywhere: error texts pass through `scrub`, which callers also apply to tool results.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from harness.agents.base import AgentError
from harness.agents.usage import Usage
from harness.cli_common import UserError

MAX_TOKENS = 16_000  # per response; room for adaptive thinking plus a whole-file write
# A non-streamed answer of MAX_TOKENS takes minutes (the SDK's own estimate: 450 s for 16k tokens), and
# nothing arrives before it is whole: the read timeout must cover that. A connection takes seconds.
REQUEST_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "AUTORESEARCH_API_TIMEOUT_S"  # overrides REQUEST_TIMEOUT_S (a slow proxy; tests)
FIRST_CONTACT_WAITS_S = (1.0, 2.0, 4.0)  # retries of a connection error before the API ever answered
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


class APIUnreachable(UserError):
    """The API never answered: no network, a firewall, a wrong ANTHROPIC_BASE_URL. It is a UserError, not
    an AgentError, so that it ends the session (one line, exit 2) instead of being logged as one more
    failed proposal per iteration: every later proposal would fail the same way."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM while waiting for the API. `passed`: the handler that was there has seen the signal
    (the controller's, which then stops the loop), so `create` turns this into a ProposalFailed that carries
    the usage; otherwise it ends the command (cli.main: `autoresearch: interrupted`, exit 130)."""

    def __init__(self, signum: int, *, passed: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.passed = passed


class MessagesClient:
    """An Anthropic client for one model, with the retry policy of the module docstring.

    `sleep` waits between attempts (default: a countdown on stderr when it is a terminal, else a plain
    sleep); `say` prints the one-line notice of each wait (default: stderr)."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        sleep: Callable[[float], None] | None = None,
        max_wait_s: float = 3600,
        say: Callable[[str], None] | None = None,
        request_timeout_s: float | None = None,
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
        self.sleep = sleep or countdown
        self.say = say or _to_stderr
        self.max_wait_s = max_wait_s
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.timeout_s = request_timeout_s or _timeout_from_env()
        self.client = anthropic.Anthropic(
            api_key=key, base_url=self.base_url, max_retries=0,
            timeout=anthropic.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s)),
        )
        self.answered = False  # any HTTP response from the API, this process: the network and URL work
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
        # Plain JSON-shaped dicts, not the SDK's TypedDicts: the request is what context.py builds.
        request: dict[str, Any] = {"model": self.model, "max_tokens": MAX_TOKENS, "system": system,
                                   "messages": messages, "tools": tools}
        return self.send(request, usage)

    def send(self, request: dict[str, Any], usage: Usage) -> Any:
        """Any Messages API request (the judge's: its own max_tokens, no tools), under the same retry policy,
        usage accounting, scrubbing and signal handling as the agent's `create`."""
        try:
            return self._create(request, usage)
        except Interrupted as exc:
            if not exc.passed:
                raise
            raise self.fail(f"interrupted ({signal.Signals(exc.signum).name}) while waiting for the Anthropic API",
                            usage) from None

    def _create(self, request: dict[str, Any], usage: Usage) -> Any:
        anthropic = self._anthropic
        backoffs = 0
        attempts = 0
        started = time.monotonic()
        while True:
            usage.requests += 1
            attempts += 1
            try:
                # signals end a first request only while the API has never answered (a hang costs nothing)
                with _signals_end_the_call(pass_on=self.answered, active=attempts > 1 or not self.answered):
                    resp = self.client.messages.create(**request)
                self.answered = True
                return resp
            except anthropic.APIStatusError as exc:
                self.answered = True
                status = exc.status_code
                kind = getattr(exc, "type", None) or _error_type(exc.body) or "error"
                detail = getattr(exc, "api_message", None) or _error_message(exc.body) or ""
                why = f"API error {status} ({kind}){': ' + detail if detail else ''}"
                should = exc.response.headers.get("x-should-retry")
                if should == "false" or (status not in RETRYABLE_STATUS and should != "true"):
                    raise self.fail(f"Anthropic {why}", usage) from None
                delay = _retry_after(exc.response.headers)
            except anthropic.APIConnectionError as exc:
                why, no_answer = self._connection_why(exc)
                delay = None
                if not self.answered:
                    retries = attempts - 1
                    if no_answer or retries >= len(FIRST_CONTACT_WAITS_S):
                        raise self._unreachable(why, attempts, time.monotonic() - started) from None
                    delay = FIRST_CONTACT_WAITS_S[retries]
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
            which = f"retry {attempts} of {len(FIRST_CONTACT_WAITS_S)}" if not self.answered else f"attempt {attempts + 1}"
            with _signals_end_the_call(pass_on=self.answered):  # before the notice, which says that Ctrl-C stops
                self.say(self.scrub(f"autoresearch: Anthropic {why}; retrying in {delay:.0f} s ({which}; Ctrl-C stops)"))
                self.sleep(delay)
            usage.retries += 1
            usage.wait_s += delay

    def _connection_why(self, exc: Exception) -> tuple[str, bool]:
        """What went wrong with the connection, in a few words, and whether the request was sent and got no
        answer at all (a read timeout: a retry would cost another `timeout_s`)."""
        cause = exc.__cause__
        name = type(cause).__name__ if cause is not None else ""
        if isinstance(exc, self._anthropic.APITimeoutError):
            if name == "ConnectTimeout":
                return f"connection timed out after {CONNECT_TIMEOUT_S:g} s", False
            return f"request timed out: no answer within {self.timeout_s:g} s", True
        detail = " ".join(str(cause).split()) if cause is not None else ""
        return f"connection error{': ' + detail if detail else ''}", False

    def _unreachable(self, why: str, attempts: int, elapsed_s: float) -> APIUnreachable:
        where = self.base_url or "https://api.anthropic.com"
        return APIUnreachable(self.scrub(
            f"the Anthropic API is unreachable at {where} ({why}; {attempts} attempt{'s' if attempts > 1 else ''} "
            f"in {elapsed_s:.0f} s): check the network and ANTHROPIC_BASE_URL, or run offline with "
            "`autoresearch run --agent mutate`"))


def _timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return REQUEST_TIMEOUT_S
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return v


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def countdown(seconds: float, stream: TextIO | None = None) -> None:
    """Sleep `seconds`; on a terminal, show the seconds left, rewritten in place every second."""
    out = stream or sys.stderr
    if not out.isatty():
        time.sleep(seconds)
        return
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            out.write(f"\r  retrying in {math.ceil(left):>3d} s ")
            out.flush()
            time.sleep(min(1.0, left - math.floor(left) or 1.0, left))
    finally:
        out.write("\r" + " " * 22 + "\r")
        out.flush()


@contextlib.contextmanager
def _signals_end_the_call(*, pass_on: bool, active: bool = True) -> Iterator[None]:
    """While an API call or a wait between attempts blocks, SIGINT and SIGTERM end it by raising `Interrupted`.
    With `pass_on`, the handler that was there sees the signal first (the controller's records the stop or
    the abort). Handlers can only be set from the main thread; elsewhere, or not `active`, this does nothing."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if None in previous.values():  # a handler set outside Python: it cannot be put back, so leave it
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        before = previous[signum]
        if before == signal.SIG_IGN:
            return
        if pass_on and callable(before):
            before(signum, frame)  # may raise KeyboardInterrupt itself (Python's default SIGINT handler)
            raise Interrupted(signum, passed=True)
        raise Interrupted(signum)

    for s in previous:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
