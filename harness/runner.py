"""Run one experiment command under a hard time limit, log all of it, and leave nothing behind.

The child runs `/bin/bash -c command` (or the caller's argv, e.g. bwrap around it) in its own session,
so the terminal's Ctrl-C never reaches it and the whole tree can be signalled at once. Its combined
output is read as it arrives by one thread that scrubs secret values, writes it to the log (up to a
cap; the pipe is drained regardless), keeps a bounded tail for `run.log` and parses the metrics
(`harness.metrics.MetricScanner`): the controller's memory stays constant whatever the run prints,
and nobody reads the log back. When the run ends (timeout, cancel, or a normal exit that left
background processes) every process of the run is stopped: SIGTERM, `grace_s`, SIGKILL. What counts
as a process of the run, and how it is found, is `harness.procgroup`; the live progress line on
stderr is `harness.progress`.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import resource
import secrets
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from harness.contention import GpuWatch
from harness.metrics import MetricScanner
from harness.procgroup import KILL_WAIT_S, TOKEN_VAR, RunTree, terminate, with_parent_death
from harness.progress import Display
from harness.secrets import StreamScrubber

POLL_S = 0.2  # timeout/cancel checks and /proc snapshots (~5x/s)
CHUNK = 1 << 16  # pipe read size: memory is O(CHUNK + tail), whatever the run prints
MAX_LINE = 4000  # a longer tail line keeps only its end


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
    metrics: dict[str, float] = field(default_factory=dict)  # metrics.parse_metrics of all the output
    # every distinct value each METRIC name was printed with, in order (at most metrics.MAX_VALUES)
    metric_values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # CPU seconds (user + system) the run's process tree used: the rusage of the reaped children, taken
    # around the run (harness.contention divides it by wall_s); None when not measured
    cpu_s: float | None = None
    gpu_others: tuple[str, ...] = ()  # "pid name" of processes outside the run that used the GPU during it

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


# ---- output ----


def _size(n: int) -> str:
    """A byte count for a reader: 64 MiB, 1.7 MiB, 256 KiB, 12 B."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"


class _Reader(threading.Thread):
    """Copies the child's output to the log as it arrives, keeps the tail and parses the metrics. It
    waits on nothing but the pipe, so a slow terminal or a busy main loop never stalls the child."""

    def __init__(
        self,
        pipe: IO[bytes],
        log: IO[bytes],
        tail_lines: int,
        cap: int | None,
        scrubber: StreamScrubber | None,
    ) -> None:
        super().__init__(name="runner-output", daemon=True)
        self.fd, self.log, self.cap, self.scrubber = pipe.fileno(), log, cap, scrubber
        self.tail = TailBuffer(tail_lines)
        self.scanner = MetricScanner()  # only this thread touches it until finish()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ends_with_newline = True  # of what the log holds
        self.log_error: OSError | None = None
        self.written = 0  # output bytes in the log
        self.dropped = 0  # output bytes read past the cap
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode

    def run(self) -> None:
        poller = select.poll()  # not select.select: fds above 1024 are possible in a long-lived harness
        poller.register(self.fd, select.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            data = os.read(self.fd, CHUNK)
            if not data:
                break
            self._take(self.scrubber.feed(data) if self.scrubber else data)
        if self.scrubber:
            self._take(self.scrubber.flush())
        text = self._decode(b"", final=True)
        self.scanner.feed(text).close()
        with self.lock:
            self.tail.feed(text)

    def _take(self, data: bytes) -> None:
        if not data:
            return
        room = len(data) if self.cap is None else max(0, min(len(data), self.cap - self.written))
        if room and self.log_error is None:  # a full disk must not stop us draining the pipe
            try:
                self.log.write(data[:room] if room < len(data) else data)
                self.log.flush()
                self.ends_with_newline = data[room - 1 : room] == b"\n"
            except OSError as e:
                self.log_error = e
        self.written += room
        self.dropped += len(data) - room
        text = self._decode(data)
        self.scanner.feed(text)
        with self.lock:
            self.tail.feed(text)

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

    def notes(self) -> list[str]:
        notes = []
        if self.dropped:
            notes.append(
                f"[runner] log capped at {_size(self.written)}; the rest of the output ({_size(self.dropped)}) "
                "was read but not written"
            )
        if self.log_error is not None:
            notes.append(f"[runner] writing the log failed, it is incomplete ({self.log_error})")
        return notes


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


def _children_cpu_s() -> float:
    """CPU seconds used so far by every reaped descendant (and theirs): the run's share is the difference
    around it. Only the run is reaped meanwhile: the controller runs one command at a time."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _carries_token(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


def _child_env(extra: Mapping[str, str], token: str, inherit: bool) -> dict[str, str]:
    if not inherit:  # the caller's allowlist, PATH included (the sandbox computes it)
        return {"PYTHONUNBUFFERED": "1", **extra, TOKEN_VAR: token}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra, TOKEN_VAR: token}
    # `python` in the command must be the harness's interpreter (its venv), not whatever PATH finds
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    return env


def _supervise(
    proc: subprocess.Popen[bytes],
    tree: RunTree,
    reader: _Reader,
    display: Display,
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
    argv: Sequence[str] | None = None,
    inherit_env: bool = True,
    parent_death: bool = False,
    log_cap_bytes: int | None = None,
    redact: Mapping[str, str] | None = None,
) -> RunResult:
    """Run `command` with bash in `cwd`; see the module docstring for how the run is contained.
    Raises RunnerError only if it cannot start; any exit status (127 for a missing program) is a result.

    argv: run this instead of `/bin/bash -c command` (`command` still names the run in the log).
    inherit_env: False gives the child exactly `env`, plus PYTHONUNBUFFERED=1 and the run token: no
      variable of ours, and PATH as `env` has it (True: ours, `env` over it, our interpreter first on PATH).
    parent_death: the child gets SIGKILL if the controller dies (Linux; `procgroup.with_parent_death`).
      Linux sends it when the forking *thread* exits: we Popen from the calling thread, which waits here.
    log_cap_bytes: the log stops growing after this much output, with a note; the pipe is still
      drained, and the tail and the metrics still see all of it.
    redact: {secret value: variable name}, masked in the log, the tail and what the metrics see."""
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
        display = Display(sys.stderr if show else None, label, budget_s, timeout_s)
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
        cpu_before = _children_cpu_s()
        t0 = time.monotonic()
        child_env = _child_env(env, token, inherit_env)
        args = ["/bin/bash", "-c", command] if argv is None else list(argv)
        if parent_death:
            if (
                shutil.which(args[0], path=child_env.get("PATH", os.defpath)) is None
            ):  # the helper would exit 127
                raise RunnerError(f"cannot start {command!r}: {args[0]} not found")
            args = with_parent_death(args, child_env)
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise RunnerError(f"cannot start {command!r} in {cwd}: {e}") from e
        assert proc.stdout is not None
        tree = RunTree(proc.pid, token)
        scrubber = StreamScrubber(redact) if redact else None
        reader = _Reader(proc.stdout, log, tail_lines, log_cap_bytes, scrubber)
        reader.start()
        entry = f"{TOKEN_VAR}={token}".encode()
        gpu = GpuWatch(lambda pid: pid in tree.seen or _carries_token(pid, entry))
        gpu.start()

        def find() -> dict[int, int]:
            proc.poll()  # reap the root early; pids are allocated cyclically, so its pgid is not reused
            return tree.live()

        outcome = "interrupted"  # kept if the harness itself is interrupted (Ctrl-C, a raising cancel)
        try:
            outcome = _supervise(proc, tree, reader, display, t0, timeout_s, cancel)
        finally:  # whatever happened, nothing of the run outlives this call
            display.close()
            found, stubborn, survived = terminate(proc.pid, grace_s, find)
            code = proc.wait()
            wall_s = time.monotonic() - t0
            cpu_s = _children_cpu_s() - cpu_before
            gpu_others = gpu.finish()
            got_eof = reader.finish(wait_s=2.0)
            proc.stdout.close()
            notes = describe_end(outcome, timeout_s, grace_s, found, stubborn, survived, got_eof)
            notes += reader.notes()
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
        exit_code,
        outcome == "timeout",
        outcome == "cancel",
        wall_s,
        peak_rss_mb,
        tail,
        log_path,
        reader.scanner.result(),
        reader.scanner.metric_values(),
        cpu_s,
        gpu_others,
    )
