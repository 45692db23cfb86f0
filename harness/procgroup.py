"""Every process of one run, found and stopped: the process group, the tree below it, and escapees.

What counts as "a process of the run" (Linux, via /proc):
* members of the run's process group (also without /proc: `killpg`);
* every process ever seen below the root by ppid links, remembered with its start time; the tree is
  snapshotted at each poll (5x/s), so a grandchild that setsid()s and is then orphaned is still known,
  and a recycled pid (different start time) is never signalled;
* every process whose environment carries this run's random AUTORESEARCH_RUN_TOKEN, searched in
  /proc/*/environ at cleanup: this catches double-forked daemons that reparented to init before any
  snapshot saw them.
If the controller itself is SIGKILLed, nothing above runs; `with_parent_death` makes the run's root
die with it (Linux `PR_SET_PDEATHSIG`), and the sandbox's PID namespace takes the rest.
Not caught: a process that escaped the group *and* lost its parent link within one poll interval
*and* exec'd with a cleaned environment (`env -i`); processes of another user; with no /proc (macOS)
only the process group is killed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# Popen keyword arguments for a helper process of the controller (git, a probe; not the experiment, which
# the runner starts in a session of its own): a process group of its own, in the same session. A terminal
# sends Ctrl-C's SIGINT to its foreground process group, which is the controller's: a helper in it died
# of the signal mid-step. Outside that group it always completes, and the controller alone decides what the
# Ctrl-C means (finish the run, or abandon it at a second one).
HELPER_GROUP = 0  # process_group=0: a group of its own, whose id is its pid
HELPER_POPEN: Mapping[str, int] = {"process_group": HELPER_GROUP}
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the processes to be gone
TOKEN_VAR = "AUTORESEARCH_RUN_TOKEN"
_HAVE_PROC = os.path.isdir("/proc/self")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_DEAD = frozenset("ZXx")  # zombie/dead: nothing left to kill, and os.kill(pid, 0) would lie


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


class RunTree:
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


def terminate(pgid: int, grace_s: float, find: Callable[[], dict[int, int]]) -> tuple[int, int, int]:
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

    return terminate(pgid, grace_s, members)[0]


# ---- dying with the controller ----

# Run as `python -I -S -c HELPER PARENT_PID LC_CTYPE ARGV...`: set PR_SET_PDEATHSIG (1) to SIGKILL (9)
# on ourselves, then exec ARGV, which keeps it (exec only clears it for set-uid programs). A helper and
# not Popen's preexec_fn, which can deadlock when the controller has other threads. If the controller
# died between fork and prctl, no signal will ever come: getppid() is then no longer it, so exit at
# once. LC_CTYPE is "=" + the caller's value or "-" for none: Python's C-locale coercion (PEP 538, not
# disabled by -I) sets LC_CTYPE=C.UTF-8 in our environment, and the run must get exactly its own.
_PDEATHSIG_HELPER = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0) != 0:
    print("[runner] prctl(PR_SET_PDEATHSIG):", os.strerror(ctypes.get_errno()), file=sys.stderr)
    os._exit(126)
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
if sys.argv[2] == "-":
    os.environ.pop("LC_CTYPE", None)
else:
    os.environ["LC_CTYPE"] = sys.argv[2][1:]
try:
    os.execvp(sys.argv[3], sys.argv[3:])
except OSError as e:
    print(f"{sys.argv[3]}: {e.strerror}", file=sys.stderr)
    os._exit(127)
"""


def with_parent_death(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """`argv`, run so that it gets SIGKILL when the process that starts it dies (Linux; elsewhere
    `argv` unchanged); `env` is the environment it will be started with. Linux sends the signal when the *thread* that forked exits, so start it with
    Popen from a thread that outlives the child (the runner Popens from its caller's thread, which
    waits for the run). Only the root gets it: a run's other processes die with it only inside a PID
    namespace (the sandbox's), whose processes all die with its first one."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    lc_ctype = "-" if "LC_CTYPE" not in env else "=" + env["LC_CTYPE"]
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_HELPER, str(os.getpid()), lc_ctype, *argv]
