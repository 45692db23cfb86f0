"""`autoresearch dashboard`: the report page served on 127.0.0.1, updated live.

A stdlib `ThreadingHTTPServer`, GET only. `/` is the report page with polling switched on;
`/api/update?v=VERSION&n=ROWS` answers what changed since the page's version: the new table
rows, and the summary, chart and kept diffs re-rendered. The ledger is read incrementally:
only bytes appended since the last look are parsed, and only complete lines (a line being
written is picked up on the next poll). A ledger that shrank or was replaced is read again
from the start and the page reloads itself.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness import ledger, points, report


class LiveLedger:
    """The ledger, re-read from the last offset whenever it grew."""

    def __init__(self, path: Path):
        self.path = path
        self.generation = 0  # bumps when the file is replaced or shrinks: clients must reload
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.lines = 0
        self.ident: tuple[int, int] | None = None
        self.mtime_ns = 0
        self.entries: list[ledger.Entry] = []
        self.bad: list[ledger.BadLine] = []
        self.state = ledger.fold(())

    @property
    def version(self) -> str:
        return f"{self.generation}-{self.offset}"

    def refresh(self) -> bool:
        """Read what was appended; True when the state changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.offset:
                self.generation += 1
                self._reset()
                return True
            return False
        ident = (st.st_dev, st.st_ino)
        rewritten = st.st_size == self.offset and st.st_mtime_ns != self.mtime_ns and self.offset > 0
        if self.ident is not None and (ident != self.ident or st.st_size < self.offset or rewritten):
            self.generation += 1
            self._reset()
        self.ident, self.mtime_ns = ident, st.st_mtime_ns
        if st.st_size == self.offset:
            return False
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        end = data.rfind(b"\n") + 1  # complete lines only
        if end == 0:
            return False
        parsed = ledger.parse_lines(data[:end])
        base = self.lines
        self.entries += [e._replace(lineno=e.lineno + base) if isinstance(e, ledger.RunRecord) else e
                         for e in parsed.entries]
        self.bad += [replace(b, lineno=b.lineno + base) for b in parsed.bad_lines]
        self.lines += data[:end].count(b"\n")
        self.offset += end
        self.state = points.clean_state(ledger.fold(self.entries, tuple(self.bad)))  # what views show
        return True


class Dashboard:
    """What the handler serves; one lock, so the chart is rendered once per ledger version."""

    def __init__(self, root: Path):
        self.root = root
        self.live = LiveLedger(ledger.ledger_path(root))
        self.lock = threading.Lock()
        self._rendered: dict[str, Any] = {}
        self._diffs: dict[str, str] = {}

    def _title(self) -> str:
        return points.session_name(self.live.state, self.root.name)

    def _parts(self) -> dict[str, Any]:
        """Summary, chart and diffs for the current version (cached; called under the lock)."""
        self.live.refresh()
        v = self.live.version
        if self._rendered.get("version") != v:
            state = self.live.state
            kept = [p.r.commit for p in points.all_points(state) if p.kept and not p.baseline]
            missing = [c for c in kept if c not in self._diffs]
            self._diffs.update(report.kept_diffs(self.root, missing))
            self._rendered = {
                "version": v,
                "summary": report.summary_html(state),
                "chart": report.chart_html(state, self._title()),
                "diffs": report.diffs_html(state, self._diffs),
            }
        return self._rendered

    def page(self) -> bytes:
        with self.lock:
            parts = self._parts()
            return report.page_html(self.live.state, self.root, title=self._title(), chart=parts["chart"],
                                    diffs=self._diffs, live_version=parts["version"]).encode("utf-8")

    def update(self, version: str, n_rows: int) -> dict[str, Any]:
        with self.lock:
            parts = self._parts()
            v = parts["version"]
            if v == version:
                return {"version": v}
            pts = points.all_points(self.live.state)
            if version.split("-")[0] != str(self.live.generation) or n_rows > len(pts):
                return {"version": v, "reload": True}
            return {"version": v, "rows": report.rows_html(pts[n_rows:]), "summary": parts["summary"],
                    "chart": parts["chart"], "diffs": parts["diffs"]}


def _handler(dash: Dashboard, hosts: set[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "autoresearch-dashboard"

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            # a page on another site that rebinds its DNS name to 127.0.0.1 must not read the ledger
            if self.headers.get("Host", next(iter(hosts))) not in hosts:
                self._send(403, b"forbidden: unexpected Host header\n", "text/plain")
                return
            url = urlsplit(self.path)
            if url.path in ("/", "/index.html"):
                self._send(200, dash.page(), "text/html; charset=utf-8")
            elif url.path == "/api/update":
                q = parse_qs(url.query)
                try:
                    n = int(q.get("n", ["0"])[0])
                except ValueError:
                    n = 0
                body = json.dumps(dash.update(q.get("v", [""])[0], n)).encode("utf-8")
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        do_HEAD = do_GET

        def _read_only(self) -> None:
            self._send(405, b"read-only: only GET\n", "text/plain")

        do_POST = do_PUT = do_DELETE = do_PATCH = _read_only

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # quiet: the terminal shows the URL, not every poll

    return Handler


def make_server(root: Path, port: int) -> tuple[ThreadingHTTPServer, str]:
    """Read the ledger once, then bind 127.0.0.1:port (0 picks a free port). Returns the server
    and its URL. Raises OSError for an unreadable ledger (with its filename) or a port in use."""
    dash = Dashboard(root)
    dash.live.refresh()
    hosts: set[str] = set()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(dash, hosts))
    real = server.server_address[1]
    hosts.update({f"127.0.0.1:{real}", f"localhost:{real}"})
    return server, f"http://127.0.0.1:{real}/"


def serve(server: ThreadingHTTPServer, url: str) -> None:
    """Serve until Ctrl-C, then close the socket."""
    print(f"dashboard: {url}  (read-only, updates every 2 s; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("\ndashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
