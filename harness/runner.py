"""Run one experiment command under a hard time limit, log all of it, and leave nothing behind.

The child runs `/bin/bash -c command` in its own session, so the terminal's Ctrl-C never reaches it
and the whole tree can be signalled at once. Its combined output goes to the log file as it arrives;
a bounded tail is kept for `run.log`. When the run ends (timeout, cancel, or a normal exit that left
background processes) every process of the run is stopped: SIGTERM, `grace_s`, SIGKILL.

What counts as "a process of the run" (Linux, via /proc):
* members of the run's process group (also without /proc: `killpg`);
* every process ever seen below the root by ppid links, remembered with its start time; the tree is
  snapshotted at each poll (5x/s), so a grandchild that setsid()s and is then orphaned is still known,
  and a recycled pid (different start time) is never signalled;
* every process whose environment carries this run's random AUTORESEARCH_RUN_TOKEN, searched in
  /proc/*/environ at cleanup: this catches double-forked daemons that reparented to init before any
  snapshot saw them.
Not caught: a process that escaped the group *and* lost its parent link within one poll interval
*and* exec'd with a cleaned environment (`env -i`); processes of another user; with no /proc (macOS)
only the process group is killed.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import re
import resource
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TextIO

POLL_S = 0.2  # timeout/cancel checks and /proc snapshots (~5x/s)
DRAW_S = 0.5  # progress redraw period (~2x/s)
CHUNK = 1 << 16  # pipe read size: memory is O(CHUNK + tail), whatever the run prints
MAX_LINE = 4000  # a longer tail line keeps only its end
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the processes to be gone
TOKEN_VAR = "AUTORESEARCH_RUN_TOKEN"
_HAVE_PROC = os.path.isdir("/proc/self")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_DEAD = frozenset("ZXx")  # zombie/dead: nothing left to kill, and os.kill(pid, 0) would lie
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x1f\x7f]")


class RunnerError(RuntimeError):
    """The command could not be started at all (missing cwd, unwritable log, no /bin/bash)."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when we killed it (timeout/cancel); -N if a signal from elsewhere did
    timed_out: bool
    cancelled: bool  # stopped by the cancel callback
    wall_s: float
    peak_rss_mb: float | None  # peak summed RSS of the process tree, MiB; None if unmeasurable
    tail: str  # last tail_lines lines of output, plus [runner] notes
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled


def default_timeout(budget_s: float) -> float:
    """Hard kill limit for a training budget: 2x the budget but at least budget + 5 min, since startup,
    compilation and the final eval are outside the budget (the seed kills a 5-minute run at 10)."""
    return max(2 * budget_s, budget_s + 300)


# ---- tail bookkeeping (pure) ----


def collapse_cr(line: str) -> str:
    """The latest version of a `\\r`-rewritten line: its last non-empty segment ("10%\\r20%" -> "20%";
    a CRLF ending "done\\r" stays "done")."""
    segments = [s for s in line.split("\r") if s]
    return segments[-1] if segments else ""


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE else "…" + line[-(MAX_LINE - 1) :]


class TailBuffer:
    """The last `max_lines` lines of text fed in arbitrary chunks, in bounded memory. A progress bar
    redrawn with `\\r` counts as one line (its latest version), so it cannot push real lines out."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._partial = ""  # the unfinished last line, already collapsed to its latest `\r` segment

    def feed(self, text: str) -> None:
        first, *rest = text.split("\n")
        partial = self._partial + first
        if rest:
            self._lines.append(_clip(collapse_cr(partial)))
            # only the last max_lines complete lines of a big chunk can survive; skip the others
            for line in rest[max(0, len(rest) - 1 - self.max_lines) : -1]:
                self._lines.append(_clip(collapse_cr(line)))
            partial = rest[-1]
        # keep from the last `\r` that has text after it ("a\rb\r" -> "b\r"): "b" is still the line
        # if "\n" follows, but text that follows instead overwrites it
        partial = partial[partial.rfind("\r", 0, len(partial.rstrip("\r"))) + 1 :]
        self._partial = partial if len(partial) <= 2 * MAX_LINE else "…" + partial[-MAX_LINE:]

    def note(self, line: str) -> None:
        """Append a line of our own after whatever the run printed."""
        if collapse_cr(self._partial):
            self.feed("\n")
        self._partial = ""
        self._lines.append(line)

    def last_line(self) -> str:
        """What the run is showing now: the unfinished line if it has text, else the last line."""
        return collapse_cr(self._partial) or (self._lines[-1] if self._lines else "")

    def text(self) -> str:
        lines = [*self._lines, collapse_cr(self._partial)]
        if not lines[-1]:
            lines.pop()
        return "\n".join(lines[-self.max_lines :] if self.max_lines else [])


# ---- /proc (parsing is pure; reading tolerates processes vanishing mid-scan) ----


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    state: str
    starttime: int  # clock ticks after boot; (pid, starttime) names one process, as pids are recycled
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/<pid>/stat. The name field may contain spaces and ')', so split after the last ')'.
    Fields per proc(5): state=3 ppid=4 pgrp=5 starttime=22 rss=24."""
    f = text[text.rindex(")") + 2 :].split()
    return ProcStat(int(text.split(" ", 1)[0]), int(f[1]), int(f[2]), f[0], int(f[19]), int(f[21]))


def _read(path: str) -> bytes:
    """One small /proc file; raw os calls, as this runs for every process 5x/s (~10 us each)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat(pid: int | str) -> ProcStat | None:
    try:
        return parse_stat(_read(f"/proc/{pid}/stat").decode(errors="replace"))
    except (OSError, ValueError, IndexError):
        return None  # exited meanwhile


def read_procs() -> dict[int, ProcStat]:
    """All processes now, by pid; {} without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    stats = (_stat(name) for name in names if name.isdigit())
    return {st.pid: st for st in stats if st is not None}


def descendants(parents: Mapping[int, int], roots: Iterable[int]) -> set[int]:
    """The roots that exist and everything below them, given pid -> ppid."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    found: set[int] = set()
    stack = [r for r in roots if r in parents]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children[pid])
    return found


def _carries(entry: bytes, pid: int) -> bool:
    try:
        return entry in _read(f"/proc/{pid}/environ").split(b"\0")
    except OSError:
        return False  # another user's process, or gone


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, just not ours to signal
    return True


class _Tree:
    """Every live process of one run, as pid -> starttime, remembered across polls so an escapee is
    still found after its parent died."""

    def __init__(self, root: int, token: str) -> None:
        self.root = root
        self.entry = f"{TOKEN_VAR}={token}".encode()
        self.seen: dict[int, int] = {}
        self.peak_rss_bytes = 0

    def _update(self, procs: Mapping[int, ProcStat], extra: Iterable[int] = ()) -> set[int]:
        known = {p for p, st in self.seen.items() if p in procs and procs[p].starttime == st}
        group = {p for p, s in procs.items() if s.pgrp == self.root}
        tree = descendants({p: s.ppid for p, s in procs.items()}, {self.root, *known, *group, *extra})
        tree = {p for p in tree if procs[p].state not in _DEAD}
        self.seen = {p: procs[p].starttime for p in tree}
        return tree

    def sample(self) -> None:
        procs = read_procs()
        rss = sum(procs[p].rss_pages for p in self._update(procs)) * _PAGE
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)

    def live(self) -> dict[int, int]:
        """Running processes of the run now, the root included; starttime -1 = only known as a group."""
        if not _HAVE_PROC:
            return {self.root: -1} if _group_exists(self.root) else {}
        procs = read_procs()
        marked = [p for p, s in procs.items() if s.state not in _DEAD and _carries(self.entry, p)]
        self._update(procs, marked)
        return dict(self.seen)


def _signal(pgid: int, targets: Mapping[int, int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, start in targets.items():
        if (st := _stat(pid)) is not None and st.starttime == start:  # the same process, not a recycled pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _terminate(pgid: int, grace_s: float, find: Callable[[], dict[int, int]]) -> tuple[int, int, int]:
    """SIGTERM the group and `find()`'s processes, wait up to grace_s, then SIGKILL until `find()` is
    empty (a process may fork meanwhile; one exiting from a GPU or in D state can take seconds), for
    at most KILL_WAIT_S. Returns (processes found, how many needed SIGKILL, how many survived)."""
    targets = find()
    if not targets:
        return 0, 0, 0
    _signal(pgid, targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stubborn = len(left)
    deadline = time.monotonic() + KILL_WAIT_S
    while left and time.monotonic() < deadline:
        _signal(pgid, left, signal.SIGKILL)
        time.sleep(0.05)
        left = find()
    return len(targets), stubborn, len(left)


def kill_group(pgid: int, grace_s: float) -> int:
    """SIGTERM process group `pgid`, give it grace_s to exit, then SIGKILL it. Returns how many
    processes it had (without /proc: 1 if the group existed)."""

    def members() -> dict[int, int]:
        if not _HAVE_PROC:
            return {pgid: -1} if _group_exists(pgid) else {}
        return {p: s.starttime for p, s in read_procs().items() if s.pgrp == pgid and s.state not in _DEAD}

    return _terminate(pgid, grace_s, members)[0]


# ---- output and progress ----


class _Reader(threading.Thread):
    """Copies the child's output to the log as it arrives and keeps the tail. It waits on nothing but
    the pipe, so a slow terminal or a busy main loop never stalls the child."""

    def __init__(self, pipe: IO[bytes], log: IO[bytes], tail_lines: int) -> None:
        super().__init__(name="runner-output", daemon=True)
        self.fd, self.log = pipe.fileno(), log
        self.tail = TailBuffer(tail_lines)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ends_with_newline = True
        self.log_error: OSError | None = None

    def run(self) -> None:
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        poller = select.poll()  # not select.select: fds above 1024 are possible in a long-lived harness
        poller.register(self.fd, select.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            data = os.read(self.fd, CHUNK)
            if not data:
                break
            if self.log_error is None:  # a full disk must not stop us draining the pipe
                try:
                    self.log.write(data)
                    self.log.flush()
                except OSError as e:
                    self.log_error = e
            self.ends_with_newline = data.endswith(b"\n")
            text = decode(data)
            with self.lock:
                self.tail.feed(text)
        with self.lock:
            self.tail.feed(decode(b"", final=True))

    def finish(self, wait_s: float) -> bool:
        """Wait for EOF; give up after wait_s if a process we could not kill holds the pipe open."""
        self.join(wait_s)
        got_eof = not self.is_alive()
        self.stop.set()
        self.join()
        return got_eof

    def last_line(self) -> str:
        with self.lock:
            return self.tail.last_line()


def _clock(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def progress_line(
    label: str, elapsed_s: float, budget_s: float | None, timeout_s: float, last: str, width: int
) -> str:
    """One status line: label, elapsed, time left against the budget, the kill time, and the run's own
    latest line stripped of control codes, cut to the terminal width."""
    parts = [label] if label else []
    parts.append(_clock(elapsed_s))
    if budget_s is not None:
        left = budget_s - elapsed_s
        parts.append(
            f"{_clock(left)} left of {_clock(budget_s)}" if left >= 0 else f"{_clock(-left)} over budget"
        )
    parts.append(f"kill at {_clock(timeout_s)}")
    last = _CONTROL.sub("", last).strip()
    line = "  ".join(parts) + (f" | {last}" if last else "")
    return line[: max(width - 1, 0)]


class _Display:
    """Redraws one stderr line ~2x/s; `close` wipes it so the terminal is left clean."""

    def __init__(self, stream: TextIO | None, label: str, budget_s: float | None, timeout_s: float) -> None:
        self.stream, self.label, self.budget_s, self.timeout_s = stream, label, budget_s, timeout_s
        self.drawn_at: float | None = None

    def draw(self, elapsed_s: float, last: str) -> None:
        now = time.monotonic()
        if self.stream is None or (self.drawn_at is not None and now - self.drawn_at < DRAW_S):
            return
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80  # 0 on a pty never sized
        except (OSError, ValueError):
            width = 80
        line = progress_line(self.label, elapsed_s, self.budget_s, self.timeout_s, last, width)
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self.drawn_at = now

    def close(self) -> None:
        if self.stream is not None and self.drawn_at is not None:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


# ---- the runner ----


def describe_end(
    outcome: str, timeout_s: float, grace_s: float, found: int, stubborn: int, survived: int, got_eof: bool
) -> list[str]:
    """The `[runner]` lines that tell a reader of the log or run.log how the run ended."""

    def processes(n: int, kind: str = "") -> str:
        return f"{n} {kind}process" + ("" if n == 1 else "es")

    how = f" ({stubborn} needed SIGKILL after {grace_s:g} s)" if stubborn else ""
    notes = []
    if outcome != "exit":
        why = {"timeout": f"timed out after {timeout_s:g} s", "cancel": "cancelled"}.get(outcome, outcome)
        notes.append(f"{why}; killed {processes(found)}{how}")
    elif found:
        notes.append(f"killed {processes(found, 'leftover ')} after the command exited{how}")
    if survived:
        notes.append(f"{processes(survived)} still exiting {KILL_WAIT_S:g} s after SIGKILL")
    if not got_eof:
        notes.append("output pipe still held open by a process we could not find; stopped reading")
    return [f"[runner] {n}" for n in notes]


def _children_maxrss_bytes() -> int:
    """Largest RSS of any reaped descendant so far (KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _child_env(extra: Mapping[str, str], token: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra, TOKEN_VAR: token}
    # `python` in the command must be the harness's interpreter (its venv), not whatever PATH finds
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    return env


def _supervise(
    proc: subprocess.Popen[bytes],
    tree: _Tree,
    reader: _Reader,
    display: _Display,
    t0: float,
    timeout_s: float,
    cancel: Callable[[], bool] | None,
) -> str:
    """Poll until the command exits, times out or is cancelled; returns which ("exit"/"timeout"/"cancel")."""
    while True:
        tree.sample()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=POLL_S)  # returns at once on exit
        elapsed = time.monotonic() - t0
        if proc.returncode is not None:
            return "exit"
        if elapsed >= timeout_s:
            return "timeout"
        if cancel is not None and cancel():
            return "cancel"
        display.draw(elapsed, reader.last_line())


def run_command(
    command: str,
    cwd: Path,
    *,
    env: Mapping[str, str],
    timeout_s: float,
    log_path: Path,
    tail_path: Path | None = None,
    tail_lines: int = 80,
    grace_s: float = 5.0,
    budget_s: float | None = None,
    progress: bool | None = None,
    cancel: Callable[[], bool] | None = None,
    label: str = "",
) -> RunResult:
    """Run `command` with bash in `cwd`; see the module docstring for how the run is contained.
    Raises RunnerError only if it cannot start; any exit status (127 for a missing program) is a result."""
    cwd, log_path = Path(cwd), Path(log_path)
    if not cwd.is_dir():
        raise RunnerError(f"cannot run {command!r}: working directory {cwd} does not exist")
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")  # noqa: SIM115 - closed below, after the reader thread is done
    except OSError as e:
        raise RunnerError(f"cannot open log {log_path}: {e}") from e
    with log:
        show = sys.stderr.isatty() if progress is None else progress
        display = _Display(sys.stderr if show else None, label, budget_s, timeout_s)
        header = [
            f"command: {command}",
            f"cwd: {cwd}",
            f"started: {datetime.now().isoformat(timespec='seconds')}",
            f"timeout_s: {timeout_s:g}  grace_s: {grace_s:g}  budget_s: {budget_s}",
        ]
        log.write("".join(f"[runner] {h}\n" for h in header).encode())
        log.flush()
        token = secrets.token_hex(8)
        maxrss_before = _children_maxrss_bytes()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", command],
                cwd=cwd,
                env=_child_env(env, token),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise RunnerError(f"cannot start {command!r} in {cwd}: {e}") from e
        assert proc.stdout is not None
        tree = _Tree(proc.pid, token)
        reader = _Reader(proc.stdout, log, tail_lines)
        reader.start()

        def find() -> dict[int, int]:
            proc.poll()  # reap the root early; pids are allocated cyclically, so its pgid is not reused
            return tree.live()

        outcome = "interrupted"  # kept if the harness itself is interrupted (Ctrl-C, a raising cancel)
        try:
            outcome = _supervise(proc, tree, reader, display, t0, timeout_s, cancel)
        finally:  # whatever happened, nothing of the run outlives this call
            display.close()
            found, stubborn, survived = _terminate(proc.pid, grace_s, find)
            code = proc.wait()
            wall_s = time.monotonic() - t0
            got_eof = reader.finish(wait_s=2.0)
            proc.stdout.close()
            notes = describe_end(outcome, timeout_s, grace_s, found, stubborn, survived, got_eof)
            if reader.log_error is not None:
                notes.append(f"[runner] writing the log failed, it is incomplete ({reader.log_error})")
            for note in notes:
                reader.tail.note(note)
            newline = "" if reader.ends_with_newline else "\n"
            with contextlib.suppress(OSError):  # a full disk must not turn a finished run into a crash
                log.write("".join([newline, *(f"{n}\n" for n in notes)]).encode())

        exit_code = code if outcome == "exit" else None
        rusage_peak = _children_maxrss_bytes()  # a lower bound that also sees peaks between two samples
        peak = max(tree.peak_rss_bytes, rusage_peak if rusage_peak > maxrss_before else 0)
        peak_rss_mb = peak / 2**20 if peak else None
        footer = (
            f"[runner] exit_code: {exit_code}  timed_out: {outcome == 'timeout'}  cancelled: "
            f"{outcome == 'cancel'}  wall_s: {wall_s:.2f}  peak_rss_mb: "
            f"{'n/a' if peak_rss_mb is None else f'{peak_rss_mb:.1f}'}\n"
        )
        with contextlib.suppress(OSError):
            log.write(footer.encode())
    tail = reader.tail.text()
    if tail_path is not None:
        Path(tail_path).parent.mkdir(parents=True, exist_ok=True)
        Path(tail_path).write_text(tail + "\n" if tail else "", encoding="utf-8")
    return RunResult(
        exit_code, outcome == "timeout", outcome == "cancel", wall_s, peak_rss_mb, tail, log_path
    )
