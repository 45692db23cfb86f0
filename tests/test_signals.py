"""Stopping the controller with real signals, sent the way they come (README "Stopping").

A terminal's Ctrl-C is SIGINT to its whole foreground process group: each test starts the CLI as a
terminal starts a job, in a process group of its own with SIGINT at its default, and signals the whole
group with `os.killpg`. The experiment in flight is one that is not kept (its eval.py scores any change
below the baseline, after sleeping), so the revert runs after the signal: that is where a git helper
that got the signal too used to fail the next git step with BrokenPipeError, a traceback and exit 1.
SIGHUP comes from a shell forwarding it (killpg) and from a real pseudo-terminal closing; `run
--detach` is started as a user would and stopped with `kill -TERM $(cat pidfile)` from a shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from toy import TRAIN, cli, git, make_toy, runs

from harness.journal import WorkspaceLock

STARTED = "experiment started"


def slow_eval(seconds: float) -> str:
    """eval.py: the committed train.py scores 1 at once (the baseline); any change prints STARTED, sleeps
    `seconds` and scores 0, so it is never kept."""
    return (f"import time\nif open('train.py').read() == {TRAIN!r}:\n    print('METRIC score=1')\nelse:\n"
            f"    print({STARTED!r}, flush=True)\n    time.sleep({seconds})\n    print('METRIC score=0')\n")


def as_terminal_job() -> None:
    """In the child before exec: SIGINT at its default, as a terminal's job has it (a suite run in the
    background, `cmd &`, ignores it, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The CLI as a terminal's foreground job: a new session and process group (pgid = its pid)."""
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=as_terminal_job,
                            env={**os.environ, **(env or {})})


def wait_for(what: str, ok: object, proc: subprocess.Popen[str] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ok) and ok():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def in_flight(root: Path, run: int) -> bool:
    """Run #`run` is executing: its log holds eval.py's STARTED line."""
    log = root / ".autoresearch" / "runs" / f"{run}.log"
    return log.exists() and STARTED in log.read_text(errors="replace")


def assert_clean_stop(root: Path, err: str, run: int, status: str) -> None:
    """No traceback; run #`run` is in the ledger with `status`; the tree is back at the kept files."""
    assert "Traceback" not in err, err
    assert "BrokenPipe" not in err, err
    last = runs(root)[-1]
    assert (last.run, last.status) == (run, status), (last.run, last.status, last.raw.get("reason"))
    assert git(root, "status", "--porcelain") == ""
    assert (root / "train.py").read_text() == TRAIN
    assert not (root / ".autoresearch" / "state.json").exists()


def toy_with_baseline(tmp_path: Path, seconds: float) -> Path:
    """A toy workspace whose baseline is logged, with an edit in the tree that the next experiment runs."""
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(seconds))
    assert cli(root, "experiment", "-d", "baseline") == 0
    (root / "train.py").write_text(TRAIN.replace("LR = 0.01", "LR = 0.9"))
    return root


EXPERIMENT = ("experiment", "-d", "LR 0.9", "--asi", '{"hypothesis": "h"}')
RUN = ("run", "--agent", "mutate", "--max-iterations", "50")


# ---------------------------------------------------------------- Ctrl-C: one, then two


@pytest.mark.parametrize("attempt", range(5))
def test_ctrl_c_in_experiment_finishes_the_run_logs_reverts_and_exits_130(tmp_path: Path, attempt: int) -> None:
    root = toy_with_baseline(tmp_path, seconds=0.5)
    proc = start(root, *EXPERIMENT)
    wait_for("the experiment to run", lambda: in_flight(root, 2), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert_clean_stop(root, err, 2, "discard")
    assert "#2" in out and "discard" in out  # the result line, as without a Ctrl-C


@pytest.mark.parametrize("attempt", range(5))
def test_ctrl_c_in_run_finishes_the_run_logs_reverts_and_exits_130(tmp_path: Path, attempt: int) -> None:
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(0.5))
    proc = start(root, *RUN)
    wait_for("experiment #2 to run", lambda: in_flight(root, 2), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert_clean_stop(root, err, 2, "discard")
    assert "stopped: stopped by the user (Ctrl-C)" in out
    assert len(runs(root)) == 2


@pytest.mark.parametrize("command", ["experiment", "run"])
def test_second_ctrl_c_abandons_the_run_at_once(tmp_path: Path, command: str) -> None:
    if command == "experiment":
        root, args = toy_with_baseline(tmp_path, seconds=60), EXPERIMENT
    else:
        root, args = make_toy(tmp_path / "ws", evaluate=slow_eval(60)), RUN
    proc = start(root, *args)
    wait_for("the experiment to run", lambda: in_flight(root, 2), proc)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 130, (out, err)
    assert took < 15, took  # the run would have slept 60 s
    assert_clean_stop(root, err, 2, "crash")
    assert "aborted by the user" in runs(root)[-1].raw["asi"]["rollback_reason"]


# ---------------------------------------------------------------- Ctrl-C while git works


def slow_git(tmp_path: Path, step: str, seconds: float) -> tuple[dict[str, str], Path]:
    """A `git` first on PATH that, for the git `step` (a subcommand), touches a marker and sleeps before
    running the real git: the Ctrl-C can land while that git step runs."""
    real = shutil.which("git")
    assert real is not None
    bindir, mark = tmp_path / "slowgit", tmp_path / "git-step-started"
    bindir.mkdir()
    (bindir / "git").write_text(f'#!/bin/bash\nfor a in "$@"; do\n  if [ "$a" = {step} ]; then\n'
                                f'    : > {mark}; sleep {seconds}; break\n  fi\ndone\nexec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, mark


@pytest.mark.parametrize("command", ["experiment", "run"])
def test_ctrl_c_while_git_reverts_lets_git_finish(tmp_path: Path, command: str) -> None:
    if command == "experiment":
        root, args = toy_with_baseline(tmp_path, seconds=0), EXPERIMENT
    else:
        root, args = make_toy(tmp_path / "ws", evaluate=slow_eval(0)), RUN
    env, mark = slow_git(tmp_path, "revert", 1.5)
    proc = start(root, *args, env=env)
    wait_for("git revert to start", mark.exists, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert_clean_stop(root, err, 2, "discard")
    assert git(root, "log", "-1", "--format=%s").startswith("Revert")  # the revert the Ctrl-C came during


# ---------------------------------------------------------------- SIGHUP


def test_sighup_from_the_shell_abandons_the_run_logs_reverts_and_exits_129(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(60))
    proc = start(root, *RUN)
    wait_for("experiment #2 to run", lambda: in_flight(root, 2), proc)
    os.killpg(proc.pid, signal.SIGHUP)  # what bash does to its jobs when its terminal goes away
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, (out, err)
    assert_clean_stop(root, err, 2, "crash")
    assert "stopped: aborted by the user" in out


def test_closing_the_terminal_abandons_the_run_and_writes_the_rest_to_the_loop_log(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(60))
    master, slave = pty.openpty()

    def controlling_terminal() -> None:  # after setsid: the pty on fd 0 becomes this session's terminal
        as_terminal_job()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), *RUN], stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    os.set_blocking(master, False)
    shown: list[bytes] = []

    def drained_until_in_flight() -> bool:  # what the terminal shows, read as it comes: a full pty would block
        with contextlib.suppress(BlockingIOError):
            while data := os.read(master, 4096):
                shown.append(data)
        return in_flight(root, 2)

    wait_for("experiment #2 to run", drained_until_in_flight, proc)
    os.close(master)  # the terminal window closes: the kernel hangs up the pty and sends SIGHUP
    assert proc.wait(timeout=60) == 129
    log = (root / ".autoresearch" / "loop.log").read_text()
    terminal = b"".join(shown).decode(errors="replace")
    assert "Traceback" not in terminal + log, terminal + log
    assert "stopped: aborted by the user" in log  # written after the hangup: not lost, in the loop log
    assert_clean_stop(root, "", 2, "crash")


# ---------------------------------------------------------------- run --detach


def alive(pid: int) -> bool:
    """A process that has not exited (a zombie has: nobody may reap an orphan here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_detach_runs_in_the_background_and_kill_term_of_its_pid_file_stops_it(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(60))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), *RUN, "--detach"],
                         capture_output=True, text=True, timeout=60, preexec_fn=as_terminal_job)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 20
    pidfile, log = root / ".autoresearch" / "loop.pid", root / ".autoresearch" / "loop.log"
    pid = int(pidfile.read_text())
    assert str(pidfile) in res.stdout and str(log) in res.stdout
    try:
        assert alive(pid)
        assert os.getsid(pid) == pid  # a session of its own: a closing terminal does not reach it
        wait_for("experiment #2 to run", lambda: in_flight(root, 2))
        assert "agent mutate" in log.read_text()  # the loop's output goes to the log, as it comes (-u)
        subprocess.run(["bash", "-c", "kill -TERM $(cat .autoresearch/loop.pid)"], cwd=root, check=True)
        wait_for("the detached loop to exit", lambda: not alive(pid))
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert "stopped: aborted by the user" in text and "Traceback" not in text, text
    assert not pidfile.exists()
    assert_clean_stop(root, "", 2, "crash")


def test_detach_started_with_sigint_ignored_still_stops_on_kill_int(tmp_path: Path) -> None:
    # `nohup autoresearch run --detach &` from a script: SIGINT is ignored, and inherited so
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(0.5))
    res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), *RUN, "--detach"],
                         capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert res.returncode == 0, res.stderr
    pid = int((root / ".autoresearch" / "loop.pid").read_text())
    try:
        wait_for("experiment #2 to run", lambda: in_flight(root, 2))
        os.kill(pid, signal.SIGINT)
        wait_for("the detached loop to exit", lambda: not alive(pid))
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert "stopped: stopped by the user (Ctrl-C)" in (root / ".autoresearch" / "loop.log").read_text()
    assert_clean_stop(root, "", 2, "discard")


def test_the_detached_controller_takes_sigint_back(tmp_path: Path) -> None:
    # before its loop installs its handlers (recovery can run an evaluation), kill -INT must work too
    code = ("import signal, sys\nfrom pathlib import Path\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "from harness.commands import _as_detached\n_as_detached(Path(sys.argv[1]))\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() == "True", res.stderr


def test_detach_refuses_at_once_when_a_controller_works_there(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", evaluate=slow_eval(0))
    with WorkspaceLock(root / ".autoresearch"):
        res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), *RUN, "--detach"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "another autoresearch controller" in res.stderr, res.stderr
    assert not (root / ".autoresearch" / "loop.pid").exists()
