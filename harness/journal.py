"""The crash journal: what lets a kill at any instant end in a consistent ledger and branch.

The ledger line is the commit point of an experiment (README "Crash safety"). Before it,
`.autoresearch/state.json` (written atomically) names the run in flight and its commit; after
it, the remaining steps (revert, clear the state) are idempotent, and `recover` redoes whichever
did not happen:
- a run in flight with no ledger line is logged as a crash ("interrupted", or the environment
  error that stopped it) and its commit is undone;
- a logged non-keep whose commit is still HEAD is undone;
- uncommitted edits are stashed, never destroyed; a torn last ledger line is set aside.
Undoing a commit saves its patch first, so nothing an agent wrote is lost.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from harness import ledger, records
from harness.config import Config
from harness.workspace import Workspace, short

Printer = Callable[[str], None]
INTERRUPTED = "interrupted: the controller stopped while the experiment was running"


class ControllerError(Exception):
    """The controller cannot go on; the message tells the user what to do."""


class LockedError(ControllerError):
    """Another controller is working in the workspace; `holder` is its pid as the lock file says
    ("" when it could not be read: a holder that writes none)."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder

    @property
    def who(self) -> str:
        """"pid 1234", or "another process" when the pid is unknown: never "pid ?"."""
        return f"pid {self.holder}" if self.holder else "another process"


_PID_WIDTH = 20  # the pid is written padded to this width in one pwrite: a reader never sees a part of it
HOLDER_PATIENCE_S = 0.5  # how long a reader waits for a holder that just took the lock to write its pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def read_holder(fd: int, patience_s: float = HOLDER_PATIENCE_S) -> str:
    """The pid of the lock's holder as the lock file says, "" when unknown. A holder writes its
    pid just after it takes the lock, so an empty file, or the pid of a dead earlier holder
    still there, is read again for up to `patience_s` before giving up."""
    deadline = time.monotonic() + patience_s
    while True:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text.isdigit() and _alive(int(text)):
            return text
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.01)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so a reader sees the old content or the new, never a part: tmp, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class WorkspaceLock:
    """An exclusive flock on `.autoresearch/lock`; released by the kernel on death.

    `run`, `experiment` and `resume` take it without waiting: a second controller is a mistake to
    report at once. `log-experiment` waits up to `wait_s` (saying so once through `on_wait`), since
    its holder may be a short `experiment` about to append its own line.
    """

    def __init__(self, state_dir: Path, *, wait_s: float = 0.0, on_wait: Printer | None = None):
        self.path = state_dir / "lock"
        self.fd: int | None = None
        self.wait_s, self.on_wait = wait_s, on_wait

    def __enter__(self) -> WorkspaceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = read_holder(fd)
                    os.close(fd)
                    who = f"pid {holder}" if holder else "another process"
                    raise LockedError(
                        f"another autoresearch controller ({who}) is working in {self.path.parent.parent}; "
                        "wait for it or stop it (Ctrl-C) first", holder) from None
                if not told and self.on_wait is not None:
                    holder = read_holder(fd)
                    self.on_wait(f"waiting up to {self.wait_s:g} s for the workspace lock, held by "
                                 f"{f'pid {holder}' if holder else 'another process'}")
                    told = True
                time.sleep(0.05)
        # one write that covers whatever an earlier holder left, never an empty file in between
        os.pwrite(fd, str(os.getpid()).encode().ljust(_PID_WIDTH), 0)
        os.ftruncate(fd, _PID_WIDTH)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Journal:
    """The state file of one workspace, and recovery from whatever a kill left behind."""

    def __init__(self, ws: Workspace, cfg: Config, ledger_path: Path, *, clock: Callable[[], float], say: Printer):
        self.ws, self.cfg, self.ledger_path, self.clock, self.say = ws, cfg, ledger_path, clock, say
        self.state_dir = ws.state_dir
        self.state_file = self.state_dir / "state.json"

    # ------------------------------------------------------------------ the state file
    def read(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = orjson.loads(self.state_file.read_bytes())
            return state
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            # atomic_write never leaves a partial file; a corrupt one was edited by hand.
            aside = self.state_dir / f"state-corrupt-{int(self.clock())}.json"
            self.state_file.replace(aside)
            self.say(f"warning: {self.state_file} was unreadable; moved to {aside}")
            return None

    def write(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_file, orjson.dumps(state))

    def clear(self) -> None:
        self.state_file.unlink(missing_ok=True)

    def save_patch(self, run: int, patch: str) -> None:
        atomic_write(self.state_dir / "patches" / f"{run}.diff", patch.encode())

    # ---------------------------------------------------------------------- recovery
    def recover(self, *, stash_uncommitted: bool = True, cause: str | None = None) -> list[str]:
        """Bring ledger and branch back to a consistent state after any interruption.

        `cause` is why the run in flight stopped when it is known (an environment error the
        loop caught); a run in flight is then logged with it, even one stopped before its
        commit. Returns what was found and done, one sentence each. Idempotent.
        """
        done = self.ws.finish_interrupted_git()
        stamp = dt.datetime.fromtimestamp(self.clock()).strftime("%Y%m%d-%H%M%S")
        aside = ledger.set_aside_torn_tail(self.ledger_path, self.state_dir, stamp)
        if aside:
            done.append(f"warning: the ledger's last line was torn (a write cut short); moved it to {aside}")
        state = self.read()
        if state is not None:
            done += self._recover_in_flight(state, cause)
        else:
            done += self._recover_unreverted()
        if stash_uncommitted and not self.ws.is_clean():
            changed = self.ws.changed_paths()
            ref = self.ws.stash(f"autoresearch: uncommitted changes found by recovery at {stamp}")
            done.append(
                f"stashed uncommitted changes to {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
                f"as {short(ref or '')} (`git stash list`; nothing was deleted)"
            )
        return done

    def _recover_in_flight(self, state: dict[str, Any], cause: str | None) -> list[str]:
        run = int(state["run"])
        commit = state.get("commit")
        if state.get("phase") == "committing":
            if (self.ws.head() != state["parent"] and self.ws.parent() == state["parent"]
                    and self.ws.commit_message().startswith(f"experiment #{run}:")):
                commit = self.ws.head()  # the commit happened; the state update did not
            elif cause is None:
                self.clear()
                return [f"experiment #{run} was interrupted before its commit; its edits (if any) are left uncommitted"]
            else:  # an error stopped it before the commit: logged, and nothing to undo
                state = {**state, "committed": False}
        done: list[str] = []
        existing = ledger.load_state(self.ledger_path).find(run)
        if existing is None:
            ledger.append(self.ledger_path, self.crash_line(state, commit or self.ws.head(), cause))
            why = "interrupted" if cause is None else cause
            done.append(f"experiment #{run} was in flight when the controller stopped: logged as crash ({why})")
            status = "crash"
        else:
            status = existing.status
        if status != "keep" and state.get("committed") and commit and self.ws.head() == commit:
            self.undo_commit(run, commit)
            done.append(f"reverted experiment #{run} ({short(commit)}), logged as {status}")
        self.clear()
        return done

    def crash_line(self, state: dict[str, Any], commit: str, cause: str | None) -> dict[str, Any]:
        """The ledger line of a run in flight that stopped without one: a crash, with why."""
        reason = INTERRUPTED if cause is None else f"environment error: {cause}"
        rollback = "interrupted (controller killed or machine stopped)" if cause is None else reason
        now = self.clock()
        return records.run_line(
            run=int(state["run"]), commit=short(commit), status="crash", description=state.get("description", ""),
            metric=None, metrics={}, timestamp=int(now),
            segment=records.segment_index(ledger.load_state(self.ledger_path)), confidence=None,
            asi={**state.get("asi", {}), "rollback_reason": rollback}, reason=reason,
            duration_s=now - state.get("started", now), diff=state.get("diff"), agent=state.get("agent"),
            extra={"baseline": True} if state.get("baseline") else None,
        )

    def _recover_unreverted(self) -> list[str]:
        last = ledger.load_state(self.ledger_path).last_run()
        if last is None or last.status == "keep" or not last.commit:
            return []
        head = self.ws.head()
        if head.startswith(last.commit) and self.ws.commit_message().startswith(f"experiment #{last.run}:"):
            self.undo_commit(last.run, head)
            return [f"experiment #{last.run} was logged as {last.status} but still at HEAD: reverted it"]
        return []

    def undo_commit(self, run: int, commit: str) -> None:
        """Save the experiment's patch, then revert (or reset) it. The caller checked HEAD == commit."""
        patch = self.state_dir / "patches" / f"{run}.diff"
        if not patch.exists():
            atomic_write(patch, self.ws.commit_patch(commit).encode())
        if not self.ws.is_clean():  # the run left edits behind; keep them, out of the way
            self.ws.stash(f"autoresearch: changes left by the run of experiment #{run}")
        if self.cfg.revert == "reset":
            parent = self.ws.parent(commit)
            assert parent is not None, "an experiment commit always has a parent"
            self.ws.reset_to(parent)
        else:
            self.ws.revert_head()
