"""The claude agent without a reachable API (issue 13, item 3): `run` fails fast, says so in one line
with the offline way (`--agent mutate`), exits non-zero, honours signals while it retries, and loses
nothing (the ledger is whole, nothing is in flight, the tree is clean).

Real processes and the real `anthropic` client: against 127.0.0.1 on a port that refuses connections
(a socket bound but not listening), and against the local fake server (tests/fake_anthropic.py) made
to hang (it accepts the request and never answers). No network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, error, message, tool_use
from toy import TRAIN, cli, git, lines, make_toy

from harness import ledger
from harness.agents import api
from harness.agents.api import FIRST_CONTACT_WAITS_S, MAX_BACKOFF_ATTEMPTS, APIUnreachable, MessagesClient
from harness.agents.usage import Usage

KEY = "sk-ant-test-offline-0123456789abcdef"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it) but not listening."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = make_toy(tmp_path_factory.mktemp("tpl") / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0  # the baseline is logged: the next `run` proposes
    return root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "ws", symlinks=True))


def start_run(root: Path, base_url: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "-C", str(root), "run", "--agent", "claude", "--max-iterations", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": base_url, **env},
        # a shell's foreground job: SIGINT at its default, whatever the test runner's own disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Its output once it exits; a run still going after `timeout` is killed and fails the test."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running after {timeout:g} s") from None


def assert_nothing_lost(root: Path, before: list[dict[str, Any]]) -> None:
    """The ledger is what it was (whole, chained), no run is in flight, the tree is clean."""
    assert lines(root) == before
    assert ledger.load_state(root / "autoresearch.jsonl").chain.ok
    assert not (root / ".autoresearch" / "state.json").exists()
    assert git(root, "status", "--porcelain") == ""


def test_refused_connections_end_the_run_fast_with_one_line_and_the_offline_hint(ws, refusing_port) -> None:
    before = lines(ws)
    t0 = time.monotonic()
    proc = start_run(ws, f"http://127.0.0.1:{refusing_port}")
    out, err = finish(proc, 60)
    took = time.monotonic() - t0
    assert proc.returncode == 2, err
    assert took < sum(FIRST_CONTACT_WAITS_S) + 15, took  # the waits, start-up and the baseline's log; not minutes
    errors = [ln for ln in err.splitlines() if ln.startswith("autoresearch: error:")]
    assert len(errors) == 1 and errors == err.splitlines()[-1:]
    assert "unreachable" in errors[0] and f"127.0.0.1:{refusing_port}" in errors[0] and "--agent mutate" in errors[0]
    assert "Connection refused" in errors[0] and "4 attempts" in errors[0]
    notices = [ln for ln in err.splitlines() if "retrying in" in ln]  # the visible countdown, one line per wait
    assert [n.split("retrying in ")[1].split(" s")[0] for n in notices] == ["1", "2", "4"]
    assert "Traceback" not in err and KEY not in out + err
    assert_nothing_lost(ws, before)


def test_a_server_that_never_answers_ends_the_run_after_one_bounded_attempt(ws) -> None:
    release = threading.Event()
    before = lines(ws)
    with FakeAnthropic() as fake:
        # accepts and reads the request, then never answers (until the test ends)
        fake.push(*[lambda req: (release.wait(60), error(529, "overloaded_error", "released"))[1]] * 4)
        try:
            t0 = time.monotonic()
            proc = start_run(ws, fake.url, AUTORESEARCH_API_TIMEOUT_S="1.5")
            out, err = finish(proc, 60)
            took = time.monotonic() - t0
        finally:
            release.set()
        assert len(fake.requests) == 1  # a request sent and never answered is not sent again
    assert proc.returncode == 2, err
    assert took < 15, took
    last = err.splitlines()[-1]
    assert last.startswith("autoresearch: error: the Anthropic API is unreachable")
    assert "no answer within 1.5 s" in last and "--agent mutate" in last
    assert "Traceback" not in err
    assert_nothing_lost(ws, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_retry_wait_ends_the_run_at_once(ws, refusing_port, sig) -> None:
    before = lines(ws)
    proc = start_run(ws, f"http://127.0.0.1:{refusing_port}")
    assert proc.stderr is not None
    seen = []
    watchdog = threading.Timer(60, proc.kill)  # a run that never says it waits would block the loop below
    watchdog.start()
    for line in proc.stderr:  # wait for the third notice: the run now sleeps 4 s before its last attempt
        seen.append(line)
        if "retrying in 4 s" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(sig)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=20)
    took = time.monotonic() - t0
    watchdog.cancel()
    # it stopped when told, within the wait it was in, before giving up on its own (which says "unreachable")
    assert "unreachable" not in rest and took < 4.0, (took, seen, rest)
    assert rc == 130, "".join(seen) + rest
    assert "autoresearch: interrupted" in rest and "Traceback" not in rest
    assert_nothing_lost(ws, before)


def test_a_signal_while_retrying_mid_session_logs_the_proposal_with_its_cost_and_stops(ws) -> None:
    # the API has answered (one turn, which edited train.py), then is overloaded: SIGTERM during the backoff
    # goes to the controller (abort) and the proposal fails with its usage: logged, its edit saved and undone
    with FakeAnthropic() as fake:
        edit = tool_use("write_file", {"path": "train.py", "content": TRAIN.replace("0.01", "0.02")})
        # retry-after 30 s: the wait is long, so "ended at once" is unambiguous on a loaded machine too
        fake.push(message(edit), *[error(529, "overloaded_error", "Overloaded", {"retry-after": "30"})] * 8)
        proc = start_run(ws, fake.url)
        assert proc.stderr is not None
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        for line in proc.stderr:
            if "retrying in" in line:
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc, 30)
        took = time.monotonic() - t0
        watchdog.cancel()
    assert took < 15.0, (took, err)  # the backoff was 30 s
    assert proc.returncode in (0, 143), (out, err)  # a loop the user stopped with SIGTERM (143 since issue 13 item 1)
    assert "aborted by the user" in out and "Traceback" not in err
    last = lines(ws)[-1]
    assert last["status"] == "crash" and "interrupted (SIGTERM) while waiting for the Anthropic API" in last["reason"]
    assert last["agent"]["turns"] == 1 and last["agent"]["input_tokens"] == 1000 and last["agent"]["cost_usd"] > 0
    assert "0.02" in (ws / ".autoresearch" / "patches" / f"{last['run']}.diff").read_text()
    assert git(ws, "status", "--porcelain") == "" and "LR = 0.01" in (ws / "train.py").read_text()
    assert ledger.load_state(ws / "autoresearch.jsonl").chain.ok
    assert not (ws / ".autoresearch" / "state.json").exists()


# ------------------------------------------------------------------ the policy, in process


def _client(port: int, slept: list[float]) -> MessagesClient:
    return MessagesClient(model="claude-sonnet-5-5", api_key=KEY, base_url=f"http://127.0.0.1:{port}",
                          sleep=slept.append, say=lambda line: None)


def test_before_the_api_ever_answered_a_connection_error_gets_the_short_retry(refusing_port) -> None:
    slept: list[float] = []
    with pytest.raises(APIUnreachable, match="unreachable.*--agent mutate"):
        _client(refusing_port, slept).create([], [{"role": "user", "content": "hi"}], [], Usage("m"))
    assert slept == list(FIRST_CONTACT_WAITS_S)


def test_once_the_api_has_answered_a_connection_error_is_a_blip_and_backs_off(refusing_port) -> None:
    # an overnight session that lost the network for a minute goes on: the long backoff, then the
    # proposal fails (a crash line with its usage) without ending the session
    slept: list[float] = []
    client = _client(refusing_port, slept)
    client.answered = True
    with pytest.raises(api.ProposalFailed, match="connection error.*gave up") as info:
        client.create([], [{"role": "user", "content": "hi"}], [], Usage("m"))
    assert not isinstance(info.value, APIUnreachable)
    assert len(slept) == MAX_BACKOFF_ATTEMPTS and slept[0] >= 4.0


def test_explicit_timeouts_not_the_sdks_ten_minutes_to_connect() -> None:
    client = MessagesClient(model="m", api_key=KEY, base_url="http://127.0.0.1:1")
    timeout = client.client.timeout
    assert timeout.connect == api.CONNECT_TIMEOUT_S and timeout.read == api.REQUEST_TIMEOUT_S
    assert client.client.max_retries == 0  # the SDK's own retries would multiply every timeout


def test_a_bad_timeout_setting_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv(api.TIMEOUT_ENV, "soon")
    with pytest.raises(api.UserError, match="AUTORESEARCH_API_TIMEOUT_S must be a positive number"):
        MessagesClient(model="m", api_key=KEY)
