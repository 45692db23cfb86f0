"""Tests for harness/runner.py: pure helpers on literal text, then real tiny subprocesses (no mocks).

Run:  .venv/bin/python -m pytest tests/test_runner.py -q      (about 10 s on 2 cores)

Process-escape tests read /proc and are skipped without it. A killed process counts as dead when it
is gone or a zombie: zombies are reaped by PID 1, which in some containers never does it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from harness.metrics import parse_metrics
from harness.procgroup import descendants, kill_group, parse_stat, with_parent_death
from harness.progress import progress_line
from harness.runner import (
    MAX_LINE,
    RunnerError,
    TailBuffer,
    collapse_cr,
    default_timeout,
    describe_end,
    run_command,
)

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def run(cmd: str, tmp_path: Path, **kw):
    kw.setdefault("env", {})
    kw.setdefault("timeout_s", 20.0)
    kw.setdefault("grace_s", 0.5)
    kw.setdefault("progress", False)
    return run_command(cmd, tmp_path, log_path=tmp_path / "logs" / "1.log", **kw)


def script(tmp_path: Path, source: str) -> str:
    path = tmp_path / "child.py"
    path.write_text(source)
    return f"python {path}"


def running(pid: int) -> bool:
    """Alive and not a zombie (os.kill(pid, 0) also succeeds on zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZXx"
    except FileNotFoundError:
        return False


def pids(tail: str, tag: str) -> list[int]:
    match = re.search(rf"^{tag} ([\d ]+)$", tail, re.M)
    assert match, tail
    return [int(p) for p in match.group(1).split()]


# ---- pure helpers ----


def test_default_timeout():
    assert default_timeout(300) == 600
    assert default_timeout(10) == 310
    assert default_timeout(3600) == 7200


def test_collapse_cr():
    assert collapse_cr("10%\r20%\r30%") == "30%"
    assert collapse_cr("done\r") == "done"  # CRLF line ending
    assert collapse_cr("\r\r") == ""
    assert collapse_cr("plain") == "plain"


def test_tail_keeps_last_lines_across_chunks():
    tail = TailBuffer(3)
    for chunk in ["a\nb", "c\nd\ne\nf", "g"]:
        tail.feed(chunk)
    assert tail.text() == "d\ne\nfg"  # "b" + "c" and "f" + "g" were each one line
    assert tail.last_line() == "fg"
    tail.feed("\n")
    assert tail.text() == "d\ne\nfg"
    assert tail.last_line() == "fg"
    tail.feed("h\n")
    assert tail.text() == "e\nfg\nh"
    assert TailBuffer(5).text() == "" and TailBuffer(0).text() == ""


def test_tail_cr_rewrites_count_once():
    tail = TailBuffer(2)
    tail.feed("start\n")
    for i in range(100):
        tail.feed(f"\rstep {i}")
    assert tail.text() == "start\nstep 99"
    tail.feed("\r")  # a trailing `\r` keeps the line until something overwrites it
    assert tail.last_line() == "step 99"
    tail.feed("over\r\ndone\n")  # CRLF split from its line, then a normal line
    assert tail.text() == "over\ndone"


def test_tail_long_line_is_bounded():
    tail = TailBuffer(2)
    for _ in range(100):
        tail.feed("x" * 1000)
    assert len(tail.last_line()) <= 2 * MAX_LINE + 1
    tail.feed("\n" + "y" * (3 * MAX_LINE) + "\n")
    lines = tail.text().split("\n")
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE] and lines[0].startswith("…x")


def test_tail_note_ends_partial_line():
    tail = TailBuffer(5)
    tail.feed("no newline")
    tail.note("[runner] note")
    assert tail.text() == "no newline\n[runner] note"


def test_parse_stat_literal():
    text = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 10000000 2560 18446744073709551615"
    st = parse_stat(text)
    assert (st.pid, st.ppid, st.pgrp, st.state, st.starttime, st.rss_pages) == (
        4242,
        17,
        4242,
        "S",
        987654,
        2560,
    )


@needs_proc
def test_parse_stat_self():
    st = parse_stat(Path("/proc/self/stat").read_text())
    assert (st.pid, st.ppid, st.pgrp) == (os.getpid(), os.getppid(), os.getpgrp())


def test_descendants():
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 20: 1, 30: 99}
    assert descendants(parents, [10]) == {10, 11, 12}
    assert descendants(parents, [10, 30, 404]) == {10, 11, 12, 30}


def test_progress_line():
    line = progress_line("run #12", 72, 300, 600, "\x1b[32mstep 5\x1b[0m loss 3.1\r", 200)
    assert line == "run #12  01:12  03:48 left of 05:00  kill at 10:00 | step 5 loss 3.1"
    assert "over budget" in progress_line("", 310, 300, 600, "", 200)
    assert len(progress_line("x", 1, None, 600, "y" * 500, 40)) == 39


def test_describe_end():
    assert describe_end("exit", 600, 5, 0, 0, 0, True) == []
    assert describe_end("exit", 600, 5, 2, 1, 0, True) == [
        "[runner] killed 2 leftover processes after the command exited (1 needed SIGKILL after 5 s)"
    ]
    assert describe_end("timeout", 600, 5, 1, 0, 0, True) == [
        "[runner] timed out after 600 s; killed 1 process"
    ]
    assert describe_end("cancel", 600, 5, 1, 1, 1, False) == [
        "[runner] cancelled; killed 1 process (1 needed SIGKILL after 5 s)",
        "[runner] 1 process still exiting 5 s after SIGKILL",
        "[runner] output pipe still held open by a process we could not find; stopped reading",
    ]


# ---- real subprocesses ----


def test_normal_exit_output_and_tail_file(tmp_path):
    tail_path = tmp_path / "ws" / "run.log"
    r = run(
        "for i in $(seq 1 100); do echo line $i; done; echo err >&2",
        tmp_path,
        tail_path=tail_path,
        tail_lines=5,
    )
    assert r.ok and r.exit_code == 0 and not r.timed_out and not r.cancelled
    assert r.tail == "line 97\nline 98\nline 99\nline 100\nerr"
    assert tail_path.read_text() == r.tail + "\n"
    log = r.log_path.read_text()
    assert log.startswith("[runner] command: for i in")
    assert "line 1\n" in log and "err\n" in log and "[runner] exit_code: 0" in log


def test_nonzero_exit_and_missing_command(tmp_path):
    r = run("echo bad; exit 3", tmp_path)
    assert r.exit_code == 3 and not r.ok and r.tail == "bad"
    r = run("no-such-program-xyz", tmp_path)
    assert r.exit_code == 127 and "not found" in r.tail


def test_missing_cwd_raises(tmp_path):
    with pytest.raises(RunnerError, match="does not exist"):
        run_command("true", tmp_path / "nope", env={}, timeout_s=5, log_path=tmp_path / "x.log")


def test_timeout_busy_loop(tmp_path):
    r = run('python -c "while True: pass"', tmp_path, timeout_s=1.0)
    assert r.timed_out and r.exit_code is None and not r.ok
    assert 1.0 <= r.wall_s < 3.0
    assert "[runner] timed out after 1 s" in r.tail and "timed_out: True" in r.log_path.read_text()


@needs_proc
def test_sigterm_ignoring_child_and_grandchild_are_killed(tmp_path):
    cmd = script(
        tmp_path,
        """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
gc = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print("pids", os.getpid(), gc.pid, flush=True)
while True:
    time.sleep(0.1)
""",
    )
    r = run(cmd, tmp_path, timeout_s=1.5, grace_s=0.5)
    assert r.timed_out and r.exit_code is None
    assert r.wall_s >= 2.0  # the grace period was honoured before SIGKILL
    assert "2 needed SIGKILL" in r.tail
    assert not any(running(p) for p in pids(r.tail, "pids"))


@needs_proc
def test_setsid_escapee_with_clean_env_is_killed_after_its_parent_exits(tmp_path):
    # Only the /proc ppid snapshots can find this one: new session, no token in its environment,
    # and orphaned (reparented) when the command exits normally.
    cmd = script(
        tmp_path,
        """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"], {})
while os.getsid(pid) != pid or open(f"/proc/{pid}/environ", "rb").read():
    time.sleep(0.01)  # until it has its own session and an empty environment
print("pids", pid, os.getsid(pid), flush=True)
time.sleep(0.5)  # long enough for a couple of the runner's /proc snapshots
""",
    )
    r = run(cmd, tmp_path)
    gc, sid = pids(r.tail, "pids")
    assert sid == gc  # it really left our session
    assert r.ok and "killed 1 leftover process" in r.tail
    assert not running(gc)


@needs_proc
def test_double_forked_daemon_is_killed(tmp_path):
    # Reparents to init at once, possibly before any snapshot: found by the run token in its environment.
    cmd = script(
        tmp_path,
        """
import os, signal, time
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = os.fork()
    if pid:
        print("pids", pid, flush=True)
        os._exit(0)
    time.sleep(60)
    os._exit(0)
os.wait()
""",
    )
    r = run(cmd, tmp_path)
    (daemon,) = pids(r.tail, "pids")
    assert r.ok and "killed 1 leftover process" in r.tail and "1 needed SIGKILL" in r.tail
    assert not running(daemon)


@needs_proc
def test_background_leftover_killed_after_normal_exit(tmp_path):
    r = run("sleep 60 & echo pids $!", tmp_path)
    assert r.ok and r.wall_s < 3.0
    assert "[runner] killed 1 leftover process" in r.tail
    assert not running(pids(r.tail, "pids")[0])


def test_cancel_callback(tmp_path):
    t0 = time.monotonic()
    r = run('python -c "while True: pass"', tmp_path, cancel=lambda: time.monotonic() - t0 > 0.5)
    assert r.cancelled and not r.timed_out and r.exit_code is None and not r.ok
    assert r.wall_s < 3.0 and "[runner] cancelled" in r.tail


@needs_proc
def test_harness_interrupted_still_kills_the_run(tmp_path):
    t0 = time.monotonic()

    def cancel() -> bool:  # stands in for Ctrl-C arriving while the runner polls
        if time.monotonic() - t0 > 0.5:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        run("echo pids $$; exec sleep 60", tmp_path, cancel=cancel)
    log = (tmp_path / "logs" / "1.log").read_text()
    assert "[runner] interrupted; killed 1 process" in log
    assert not running(pids(log, "pids")[0])


def test_env_and_python_resolution(tmp_path):
    cmd = "command -v python; python -c \"import os, sys; print(sys.executable); print(os.environ['AUTORESEARCH_SEED'], os.environ['PYTHONUNBUFFERED'])\""
    r = run(cmd, tmp_path, env={"AUTORESEARCH_SEED": "7"})
    found, executable, values = r.tail.split("\n")
    assert found == os.path.join(os.path.dirname(sys.executable), "python")
    assert executable == sys.executable and values == "7 1"


def test_non_utf8_output(tmp_path):
    r = run(r"printf 'ok \xff\xfe bad\n'", tmp_path)
    assert r.ok and r.tail == "ok \ufffd\ufffd bad"
    assert b"ok \xff\xfe bad\n" in r.log_path.read_bytes()


def test_cr_progress_lines_in_tail(tmp_path):
    cmd = "python -c \"import time\nfor i in range(30): print(f'\\rstep {i}', end='', flush=True); time.sleep(0.005)\nprint()\nprint('done')\""
    r = run(cmd, tmp_path, tail_lines=3)
    assert r.tail == "step 29\ndone"


def test_large_output_is_streamed_not_held(tmp_path):
    n = 200_000  # 20 MB
    cmd = f"python -c \"import sys; w = sys.stdout.buffer.write\nfor _ in range({n // 1000}): w((b'x' * 99 + b'\\n') * 1000)\""
    tracemalloc.start()
    r = run(cmd, tmp_path, tail_lines=10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.ok and r.tail == "\n".join(["x" * 99] * 10)
    assert peak < 5 * 2**20, f"runner held {peak / 2**20:.1f} MiB"
    assert r.log_path.read_bytes().count(b"x" * 99 + b"\n") == n


def test_peak_rss_of_child(tmp_path):
    r = run("python -c \"import time; b = b'x' * (200 * 2**20); time.sleep(0.6)\"", tmp_path)
    assert r.ok and r.peak_rss_mb is not None
    assert 150 <= r.peak_rss_mb < 1000


def test_progress_on_non_tty(tmp_path, capfd):
    r = run("echo step 1; sleep 0.8", tmp_path, progress=True, label="run #3", budget_s=5)
    assert r.ok
    err = capfd.readouterr().err
    assert "run #3" in err and "| step 1" in err and err.endswith("\r\x1b[2K")
    run("echo hi", tmp_path, progress=None)  # auto: stderr is not a TTY under pytest
    assert capfd.readouterr().err == ""


@needs_proc
def test_kill_group(tmp_path):
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert kill_group(proc.pid, 0.5) == 1
    assert proc.wait(timeout=5) == -15
    assert kill_group(proc.pid, 0.5) == 0


# ---- bounded output, metrics from the stream, redaction, environment, parent death ----


def test_argv_replaces_bash_and_command_names_the_run(tmp_path):
    r = run("the label", tmp_path, argv=["/bin/echo", "METRIC x=2"])
    assert r.ok and r.tail == "METRIC x=2" and r.metrics == {"x": 2.0}
    assert r.log_path.read_text().startswith("[runner] command: the label\n")


def test_metrics_parsed_from_the_stream_like_the_whole_log(tmp_path):
    r = run(
        "printf 'METRIC loss=3\\n---\\nval_bpb: 0.9\\ndepth: 4\\nMETRIC loss=2\\nMETRIC loss=3\\nMETRIC val_bpb=0.5'",
        tmp_path,
    )
    assert r.metrics == {"val_bpb": 0.5, "depth": 4.0, "loss": 3.0}  # the unfinished last line counts
    assert r.metric_values == {"loss": (3.0, 2.0), "val_bpb": (0.5,)}
    assert r.metrics == parse_metrics(r.log_path.read_text())


def test_metrics_split_across_chunk_boundaries(tmp_path):
    # each piece is its own write, 50 ms apart, so the reader sees them as separate chunks
    pieces = ["METR", "IC a=1", ".5\n--", "-\r", "b:  ", "7\nMETRIC c=", "2\n"]
    cmd = script(
        tmp_path,
        f"import sys, time\nfor p in {pieces!r}:\n    sys.stdout.write(p); sys.stdout.flush(); time.sleep(0.05)\n",
    )
    r = run(cmd, tmp_path)
    assert r.metrics == {"a": 1.5, "b": 7.0, "c": 2.0}


def test_log_cap_is_honoured_and_noted_and_metrics_are_parsed_past_it(tmp_path):
    cap = 256 * 2**10
    cmd = script(
        tmp_path,
        "import sys\nw = sys.stdout.buffer.write\nw(b'METRIC early=1\\n')\n"
        "for _ in range(2000): w(b'y' * 999 + b'\\n')\nw(b'---\\nval_bpb: 0.75\\nMETRIC late=2\\n')\n",
    )
    r = run(cmd, tmp_path, log_cap_bytes=cap, tail_lines=3)
    log = r.log_path.read_bytes()
    header = log.index(b"METRIC early=1")
    notes = log.index(b"\n[runner] log capped") + 1
    assert notes - header <= cap + 1  # the output part of the log (plus the newline before the note)
    assert len(log) < cap + 2000
    assert (
        log.count(
            b"[runner] log capped at 256 KiB; the rest of the output (1.7 MiB) was read but not written"
        )
        == 1
    )
    assert b"METRIC late=2" not in log
    assert r.metrics == {"early": 1.0, "val_bpb": 0.75, "late": 2.0}
    assert r.tail.split("\n") == ["val_bpb: 0.75", "METRIC late=2", log.decode().splitlines()[-2]]
    assert "log capped" in r.tail


def test_huge_line_without_newline_does_not_blow_memory(tmp_path):
    cmd = script(
        tmp_path,
        "import sys\nw = sys.stdout.buffer.write\nfor _ in range(50): w(b'z' * 2**20)\nw(b'\\nMETRIC after=1\\n')\n",
    )
    tracemalloc.start()
    r = run(cmd, tmp_path, log_cap_bytes=2**20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert r.ok and r.metrics == {"after": 1.0}
    assert peak < 5 * 2**20, f"runner held {peak / 2**20:.1f} MiB"
    assert r.log_path.stat().st_size < 2**20 + 2000


def test_redaction_across_chunk_boundaries_in_log_and_tail(tmp_path):
    secret = "sk-abcdefghijklmnop0123456789"
    pieces = [f"key={secret[:9]}", f"{secret[9:]}\nagain {secret}", "\n"]
    cmd = script(
        tmp_path,
        f"import sys, time\nfor p in {pieces!r}:\n    sys.stdout.write(p); sys.stdout.flush(); time.sleep(0.05)\n",
    )
    r = run(cmd, tmp_path, redact={secret: "ANTHROPIC_API_KEY"})
    log = r.log_path.read_text()
    assert secret not in log and secret[:9] + "\n" not in log and secret not in r.tail
    assert r.tail == "key=[redacted ANTHROPIC_API_KEY]\nagain [redacted ANTHROPIC_API_KEY]"
    assert log.count("[redacted ANTHROPIC_API_KEY]") == 2


def test_inherit_env_false_leaks_no_parent_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TEST_LEAK", "leaked")
    r = run("env", tmp_path, env={"PATH": "/usr/bin:/bin", "MINE": "1"}, inherit_env=False, parent_death=True)
    names = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in r.tail.split("\n")}
    assert set(names) - {"PWD", "SHLVL", "_"} == {
        "PATH",
        "MINE",
        "PYTHONUNBUFFERED",
        "AUTORESEARCH_RUN_TOKEN",
    }
    assert names["PATH"] == "/usr/bin:/bin"  # not rewritten: the caller computed it
    r = run("env", tmp_path, env={"MINE": "1"})  # the default still inherits
    assert "AUTORESEARCH_TEST_LEAK=leaked" in r.tail


def _processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and running(int(name)):
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


@needs_proc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("parent_death", [True, False])
def test_run_dies_with_a_sigkilled_controller(tmp_path, parent_death):
    marker = f"autoresearch-test-pdeath-{os.getpid()}-{parent_death}"
    controller = tmp_path / "controller.py"
    controller.write_text(
        "import sys\nfrom pathlib import Path\nfrom harness.runner import run_command\n"
        f"run_command('exec -a {marker} sleep 60', Path({str(tmp_path)!r}), env={{}}, timeout_s=60,\n"
        f"            log_path=Path({str(tmp_path / 'c.log')!r}), progress=False, parent_death={parent_death})\n"
    )
    proc = subprocess.Popen([sys.executable, str(controller)], cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 10
    while not (found := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert found, "the run never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + (2 if parent_death else 0.5)  # the signal is at once; 2 s for a loaded CI
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = _processes_with(marker)
    for pid in left:  # the control case: without parent death the run is orphaned
        os.kill(pid, 9)
    assert bool(left) is not parent_death


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_parent_death_helper_exits_if_its_parent_is_already_gone(tmp_path):
    marker = tmp_path / "ran"
    argv = with_parent_death(["touch", str(marker)], {})
    argv[argv.index(str(os.getpid()))] = "1"  # as if the controller had died before prctl
    assert subprocess.run(argv).returncode == 137 and not marker.exists()
    argv = with_parent_death(["touch", str(marker)], {})
    assert subprocess.run(argv).returncode == 0 and marker.exists()


def test_parent_death_missing_program_is_a_runner_error(tmp_path):
    with pytest.raises(RunnerError, match="not found"):
        run("x", tmp_path, argv=["no-such-program-xyz"], parent_death=True)
