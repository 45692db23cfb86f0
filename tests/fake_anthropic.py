"""A scripted fake of the Anthropic Messages API, for tests: real HTTP on 127.0.0.1, no network.

The real `anthropic` client talks to it (point `base_url` or ANTHROPIC_BASE_URL at
`server.url`). Each POST /v1/messages pops the next scripted reply: a message (`message`),
an HTTP error (`error`), or a function of the request that returns either. Every request
is recorded (headers, raw body, decoded JSON) so tests can assert on what was sent.
When the script runs out the server answers 400, which the agent does not retry.

Not a test file: imported by tests/test_claude.py and scripts/bench_context.py.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Script = Reply | Callable[[dict[str, Any]], Reply]
_ids = itertools.count(1)


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def tool_use(name: str, tool_input: Any, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def thinking(s: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": s, "signature": "sig-" + str(next(_ids))}


def message(
    *content: dict[str, Any],
    stop_reason: str | None = None,
    input_tokens: int = 1000,
    output_tokens: int = 200,
    cache_read: int = 0,
    cache_write: int = 0,
    model: str | None = None,
) -> Script:
    """A 200 reply. stop_reason defaults to tool_use when a tool_use block is present."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"

    def reply(req: dict[str, Any]) -> Reply:
        return Reply(200, {
            "id": f"msg_{next(_ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": model or req.get("model", "claude-test"),
            "content": list(content),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
            },
        })

    return reply


def error(status: int, kind: str, msg: str, headers: dict[str, str] | None = None) -> Reply:
    """An API error as the real API shapes it: {"type": "error", "error": {"type", "message"}}."""
    return Reply(status, {"type": "error", "error": {"type": kind, "message": msg}}, headers or {})


class FakeAnthropic:
    """Use as a context manager; `push` replies, read `requests` afterwards."""

    def __init__(self) -> None:
        self.script: list[Script] = []
        self.requests: list[Recorded] = []
        self.default: Script | None = None  # the reply once the script is empty (None: the 400 below)
        self.in_flight = 0  # requests being answered now, and the most at once (a client's concurrency)
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    obj = json.loads(body)
                except json.JSONDecodeError:
                    obj = {}
                with fake._lock:
                    fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body, obj))
                    item = fake.script.pop(0) if fake.script else fake.default
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._answer(item, obj)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _answer(self, item: Script | None, obj: dict[str, Any]) -> None:
                if item is None:
                    reply = error(400, "invalid_request_error", "fake server: no scripted reply left")
                elif self.path.split("?")[0] != "/v1/messages":
                    reply = error(404, "not_found_error", f"fake server: no route {self.path}")
                else:
                    reply = item(obj) if callable(item) else item
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{len(fake.requests)}")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def always(self, item: Script) -> None:
        """Answer every request the script does not with `item` (e.g. a function of the request)."""
        self.default = item

    def push(self, *items: Script) -> None:
        with self._lock:
            self.script.extend(items)

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
