"""The report and the live dashboard in a real browser: headless Chromium driven over the
Chrome DevTools Protocol by a small websocket client (stdlib only, below). Skips where
Chromium is not installed (CI installs Debian's `chromium`).

Run: python -m pytest tests/test_browser.py -q
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_report import XSS, run_line, small, write_ledger

from harness import ledger, report
from harness.dashboard import make_server

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class CDP:
    """Just enough of a websocket client (RFC 6455) to call DevTools methods on one page."""

    def __init__(self, ws_url: str):
        u = urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("devtools closed the connection")
            buf += chunk
        return buf

    def _send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        head = bytearray([0x81])  # FIN + text frame; client frames are masked
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            payload = self._exact(n)
            op = b0 & 0x0F
            if op == 8:
                raise ConnectionError("devtools closed the connection")
            if op in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._recv())
            if msg.get("id") == self.next_id:  # events in between are not needed here
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 15.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!document.querySelector('#runs')")


@pytest.fixture(scope="module")
def page() -> Iterator[CDP]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = _devtools_port(proc)
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank",
                                                           method="PUT"), timeout=30) as r:
            target = json.loads(r.read())
        cdp = CDP(target["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        yield cdp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # chromium and its helpers, all started by this fixture
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen) -> int:
    """Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...` on stderr once it is ready."""
    found: list[int] = []

    def read() -> None:
        for line in proc.stderr:
            m = re.search(r"DevTools listening on ws://[\d.]+:(\d+)/", line)
            if m and not found:
                found.append(int(m.group(1)))
        # keep draining so chromium never blocks on a full pipe

    threading.Thread(target=read, daemon=True).start()
    end = time.monotonic() + 30
    while not found and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
    if not found:
        pytest.fail("chromium did not start its DevTools endpoint")
    return found[0]


def test_report_renders_sorts_filters_and_runs_nothing_injected(page: CDP, tmp_path: Path) -> None:
    lines = small()
    lines[2]["description"] = f"raise LR {XSS}"
    lines[2]["asi"] = {"hypothesis": XSS}
    root = write_ledger(tmp_path / "ws", lines)
    state = ledger.load_state(root / ledger.LEDGER_NAME)
    out = tmp_path / "report.html"
    out.write_text(report.report_html(state, root, "browser test"))
    page.open(out.as_uri())
    assert page.js("document.querySelectorAll('#runs tbody tr').length") == 7
    # the chart is an inline SVG with a real size and drawn content
    assert page.js("document.querySelector('#chart svg').getBoundingClientRect().width") > 600
    assert page.js("document.querySelectorAll('#chart svg path').length") > 20
    assert page.js("document.querySelector('#summary').textContent.includes('improvement')")
    # nothing injected ran, nothing was loaded
    assert page.js("window.__xss === undefined")
    assert page.js("performance.getEntriesByType('resource').length") == 0
    assert "<script>window.__xss=1</script>" in page.js("document.querySelector('#runs').textContent")
    # sort by the metric column, descending on the second click
    page.js("document.querySelectorAll('#runs th')[3].click()")
    page.js("document.querySelectorAll('#runs th')[3].click()")
    firsts = page.js("Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells[0].textContent)")
    assert firsts[0] == "6" and firsts[-2:] == ["4", "5"]  # highest first; runs without a value last
    # filters: status checkboxes and free text (which searches the ASI too)
    page.js("document.querySelector('.f-status[value=discard]').click()")
    assert page.js("document.querySelectorAll('#runs tbody tr:not([hidden])').length") == 5
    page.js("const q = document.querySelector('#q'); q.value = 'cuda out of'; q.dispatchEvent(new Event('input'))")
    assert page.js("Array.from(document.querySelectorAll('#runs tbody tr:not([hidden])')).map(r => r.cells[0]"
                   ".textContent)") == ["4"]
    assert page.js("document.querySelector('#shown').textContent") == "1 of 7 runs"


def test_dashboard_shows_a_new_ledger_line_without_a_reload(page: CDP, tmp_path: Path) -> None:
    root = write_ledger(tmp_path / "ws", small()[:4])
    server, url = make_server(root, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.open(url)
        assert page.js("document.querySelectorAll('#runs tbody tr').length") == 3
        assert page.js("!!document.querySelector('#chart svg')")
        page.js("window.__sameDocument = true")
        ledger.append(root / ledger.LEDGER_NAME, run_line(4, 0.95, "keep", "a line written while we watch"))
        page.wait("document.querySelectorAll('#runs tbody tr').length === 4")
        assert page.js("window.__sameDocument") is True  # appended in place, not reloaded
        assert "a line written while we watch" in page.js("document.querySelector('#runs tbody').textContent")
        assert page.wait("document.querySelector('#chart svg').textContent.includes('a line written')")
        assert "0.95" in page.js("document.querySelector('#summary').textContent")
        assert page.js("document.querySelector('#live').textContent").startswith("live")
    finally:
        server.shutdown()
        server.server_close()
