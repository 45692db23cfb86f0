"""The git workspace: every git operation the controller performs, through GitPython.

The controller only ever moves the branch in three ways: commit an experiment, revert
(or reset) a non-keep, and stash what it found uncommitted. Nothing here deletes work
without saving it first: rejected proposals and discarded experiments are written to
`.autoresearch/patches/` before the tree is cleaned.

Other git processes share the repository: an editor or a shell runs `git status`, which
takes `.git/index.lock` for a moment. Every git write here waits such a lock out with
backoff. A lock is deleted only when no live process can own it (see `lock_owners`), so
a lock whose owner is alive is never deleted; one still held after `lock_wait_s` ends the
write with a `WorkspaceError` that names the owner.

Every git process starts in a process group of its own (`ShieldedGit`), so the terminal's Ctrl-C,
which goes to the controller's whole foreground process group, never reaches git: the controller
decides what a Ctrl-C means (harness.stoprules), and a git step it starts always completes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from harness.procgroup import HELPER_POPEN

STATE_DIR = ".autoresearch"
LOCK_WAIT_FIRST_S = 0.05  # first backoff step while another process holds .git/index.lock
LOCK_WAIT_STEP_MAX_S = 2.0
LOCK_WAIT_LIMIT_S = 30.0  # an editor's or a shell's git is done well within this
STALE_LOCK_AGE_S = 2.0  # an index.lock no live process can own, this old, was left by a killed git
LOCK_RETRIES = 10  # git writes that found the lock taken although our check had just found it free
_LOCK_TAKEN = "index.lock': File exists"  # git's "Unable to create '<path>/index.lock': File exists."


class WorkspaceError(Exception):
    """The git state is not what the controller can work with; the message says why."""


@dataclass(frozen=True)
class DiffStats:
    files: tuple[str, ...]
    added: int
    removed: int

    def as_dict(self) -> dict[str, object]:
        return {"files": list(self.files), "added": self.added, "removed": self.removed}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def short(sha: str) -> str:
    return sha[:7]


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ------------------------------------------------------------- index.lock owners


@dataclass(frozen=True)
class LockOwner:
    pid: int
    command: str
    how: str  # why it counts: it has the lock open, or it is a git process working in the repository


def lock_owners(lock: Path, root: Path) -> list[LockOwner] | None:
    """Live processes that may own git's `lock` of the work tree `root`.

    git's index.lock holds no pid. An owner is a process that has the file open, or a git
    process working in `root` (git moves to the top of the work tree): `git commit -a`
    closes the lock while its hooks or the message editor run, so an open file alone would
    miss it. Long-lived read-only git (GitPython's `git cat-file --batch`, ours or a
    dashboard's; the fsmonitor daemon) is not an owner. None when this cannot be judged: no
    /proc (not Linux), or another user made the lock, whose processes we may not see.
    Processes in another PID namespace (a container sharing the volume) are invisible.
    """
    try:
        st = lock.stat()
    except FileNotFoundError:
        return []
    if not Path("/proc/self/fd").is_dir() or (st.st_uid != os.getuid() and os.getuid() != 0):
        return None
    here = root.resolve()
    owners: list[LockOwner] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if _has_open(pid, st):
                owners.append(LockOwner(pid, _command(pid), "has it open"))
            elif (_read(pid, "comm") == "git" and _git_subcommand(pid) not in _READ_ONLY_GIT
                  and Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(here)):
                owners.append(LockOwner(pid, _command(pid), "is a git process working in this repository"))
        except OSError:  # it ended, or it is another user's and not ours to read
            continue
    return owners


_READ_ONLY_GIT = {"cat-file", "fsmonitor--daemon"}
_GIT_OPTIONS_WITH_VALUE = {"-c", "-C", "--git-dir", "--work-tree", "--namespace", "--config-env"}


def _git_subcommand(pid: int) -> str | None:
    args = _read(pid, "cmdline").split("\0")[1:]
    while args:
        a = args.pop(0)
        if a in _GIT_OPTIONS_WITH_VALUE:
            args = args[1:]
        elif not a.startswith("-"):
            return a
    return None


def _has_open(pid: int, st: os.stat_result) -> bool:
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if "index.lock" not in os.readlink(f"{fds}/{fd}"):
                continue
            other = os.stat(f"{fds}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _read(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().decode(errors="replace").strip()


def _command(pid: int) -> str:
    try:
        return " ".join(_read(pid, "cmdline").split("\0")).strip()[:120] or _read(pid, "comm")
    except OSError:
        return "?"


# Configuration that would run a program on our behalf, forced off for every git call the harness makes
# (README "The sandbox"): a planted .git/hooks/pre-commit, a core.hooksPath or core.fsmonitor written into
# .git/config would otherwise run inside the controller. GIT_CONFIG_COUNT (git >= 2.31) outranks every
# config file.
HARDENED_GIT_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
)


def hardened_git_env(environ: Mapping[str, str]) -> dict[str, str]:
    """GIT_CONFIG_COUNT/KEY/VALUE variables that add HARDENED_GIT_CONFIG after any the caller set."""
    try:
        start = max(0, int(environ.get("GIT_CONFIG_COUNT", "0")))
    except ValueError:
        start = 0
    env = {f"GIT_CONFIG_{kind}_{start + i}": v for i, (k, val) in enumerate(HARDENED_GIT_CONFIG)
           for kind, v in (("KEY", k), ("VALUE", val))}
    env["GIT_CONFIG_COUNT"] = str(start + len(HARDENED_GIT_CONFIG))
    return env


class ShieldedGit(git.Git):
    """GitPython's git, every process of which (the long-lived `cat-file --batch` ones too) runs in a
    process group of its own. A terminal sends Ctrl-C's SIGINT to its whole foreground process group:
    a git in the controller's group died of it mid-step, and the next git call failed with
    BrokenPipeError on its dead `cat-file`, a traceback instead of the clean stop the controller was
    making (README "Stopping")."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:  # all of GitPython's overloads, passed through
        return super().execute(*args, **{**HELPER_POPEN, **kwargs})


class ShieldedRepo(git.Repo):
    """A repository whose git commands are `ShieldedGit`'s (`Repo.init` and every command on the repository)."""

    GitCommandWrapperType = ShieldedGit


class Workspace:
    """A git work tree rooted at `root` (the session directory). Every git call runs with hooks and
    fsmonitor off (`hardened_git_env`)."""

    def __init__(
        self,
        root: Path,
        *,
        sleep: Callable[[float], None] = time.sleep,
        lock_wait_s: float = LOCK_WAIT_LIMIT_S,
        say: Callable[[str], None] = _note,
    ):
        self.root = root.resolve()
        self.sleep = sleep  # the index.lock backoff; tests pass a recorder
        self.lock_wait_s = lock_wait_s
        self.say = say  # where a removed stale lock is reported
        try:
            self.repo: git.Repo = ShieldedRepo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"{self.root} is not a git repository") from None
        if Path(self.repo.working_tree_dir or "").resolve() != self.root:
            raise WorkspaceError(
                f"{self.root} is inside the git repository {self.repo.working_tree_dir}; "
                "a workspace must be the top level of its own repository"
            )
        self.repo.git.update_environment(**hardened_git_env(os.environ))
        self._ensure_identity()

    # -------------------------------------------------------------- creation
    @classmethod
    def create_or_adopt(cls, root: Path) -> Workspace:
        root.mkdir(parents=True, exist_ok=True)
        try:
            enclosing = ShieldedRepo(root, search_parent_directories=True)
            top = Path(enclosing.working_tree_dir or "").resolve()
            if top != root.resolve():
                raise WorkspaceError(
                    f"{root} is inside the git repository {top}; run init at that repository's top "
                    "level or choose a directory outside it"
                )
        except git.InvalidGitRepositoryError:
            ShieldedRepo.init(root, initial_branch="main")
        return cls(root)

    def _ensure_identity(self) -> None:
        # Commits need an author; CI machines and fresh containers often have none set.
        reader = self.repo.config_reader()
        if not reader.has_option("user", "email") or not reader.has_option("user", "name"):
            self.repo.git.update_environment(
                GIT_AUTHOR_NAME=os.environ.get("GIT_AUTHOR_NAME", "autoresearch"),
                GIT_AUTHOR_EMAIL=os.environ.get("GIT_AUTHOR_EMAIL", "autoresearch@localhost"),
                GIT_COMMITTER_NAME=os.environ.get("GIT_COMMITTER_NAME", "autoresearch"),
                GIT_COMMITTER_EMAIL=os.environ.get("GIT_COMMITTER_EMAIL", "autoresearch@localhost"),
            )

    # ------------------------------------------------------------ inspection
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def has_commits(self) -> bool:
        try:
            self.repo.head.commit  # noqa: B018 - raises on an unborn branch
        except ValueError:
            return False
        return True

    def head(self) -> str:
        return self.repo.head.commit.hexsha

    def branch(self) -> str | None:
        return None if self.repo.head.is_detached else self.repo.active_branch.name

    def branch_exists(self, name: str) -> bool:
        return name in [h.name for h in self.repo.heads]

    def changed_paths(self) -> list[str]:
        """Paths that differ from HEAD: modified, staged, deleted, renamed, untracked (not ignored)."""
        out = self.repo.git.status("--porcelain=v1", "-z", "--untracked-files=all")
        paths: list[str] = []
        items = out.split("\0")
        i = 0
        while i < len(items):
            item = items[i]
            i += 1
            if not item:
                continue
            code, path = item[:2], item[3:]
            paths.append(path)
            if code[0] in "RC":  # a rename/copy is followed by its source path
                paths.append(items[i])
                i += 1
        return sorted(set(paths))

    def is_clean(self) -> bool:
        return not self.changed_paths()

    def commit_message(self, rev: str = "HEAD") -> str:
        return str(self.repo.commit(rev).message)

    def parent(self, rev: str = "HEAD") -> str | None:
        parents = self.repo.commit(rev).parents
        return parents[0].hexsha if parents else None

    def is_ancestor(self, ancestor: str, rev: str = "HEAD") -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, rev)
        except git.GitCommandError:
            return False
        return True

    def resolve(self, rev: str) -> str | None:
        try:
            return self.repo.commit(rev).hexsha
        except (git.BadName, ValueError, git.GitCommandError):
            return None

    def file_at(self, rev: str, path: str) -> bytes | None:
        try:
            return self.repo.git.show(f"{rev}:{path}", stdout_as_string=False)
        except git.GitCommandError:
            return None

    def working_diff(self) -> tuple[str, DiffStats]:
        """Diff of the whole work tree (untracked files included) against HEAD.

        Uses a throwaway index so the real one is untouched; binary-safe, so the patch can
        be re-applied with `git apply`.
        """
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.repo.git.read_tree("HEAD", env=env)
            self.repo.git.add("-A", env=env)
            patch = self.repo.git.diff("--cached", "--binary", "HEAD", env=env)
            stats = _numstat(self.repo.git.diff("--cached", "--numstat", "HEAD", env=env))
        return (patch + "\n" if patch else ""), stats

    def commit_patch(self, rev: str = "HEAD") -> str:
        return self.repo.git.show("--binary", "--format=%H%n%B", rev) + "\n"

    # -------------------------------------------------------------- mutation
    def commit_all(self, message: str, paths: list[str] | None = None, allow_empty: bool = False) -> str:
        if paths is None:
            self._git("add", "-A")
        else:
            self._git("add", "-A", "--", *paths)
        args = ["-q", "-m", message]
        if allow_empty:
            args.append("--allow-empty")
        self._git("commit", *args)
        return self.head()

    def create_branch(self, name: str) -> None:
        self._git("checkout", "-q", "-b", name)

    def checkout(self, name: str) -> None:
        self._git("checkout", "-q", name)

    def revert_head(self) -> str:
        self._git("revert", "--no-edit", "HEAD")
        return self.head()

    def reset_to(self, rev: str) -> str:
        """`git reset --hard rev`: only called on a clean tree (the caller stashes first)."""
        if not self.is_clean():
            raise WorkspaceError("refusing to reset a dirty tree (stash it first)")
        self._git("reset", "-q", "--hard", rev)
        return self.head()

    def stash(self, message: str) -> str | None:
        """Stash everything uncommitted (untracked files too); returns the stash commit."""
        if self.is_clean():
            return None
        self._git("stash", "push", "--include-untracked", "-m", message)
        return self.repo.git.rev_parse("stash@{0}")

    def discard_working_changes(self, paths: list[str]) -> None:
        """Restore HEAD's version of `paths`; delete those that HEAD does not have.

        The caller has saved the patch first: this is the 'undo' of a refused proposal.
        """
        if not paths:
            return
        tracked = set(self.repo.git.ls_tree("-r", "--name-only", "HEAD").splitlines())
        in_head = [p for p in paths if p in tracked]
        if in_head:
            self._git("reset", "-q", "HEAD", "--", *in_head)
            self._git("checkout", "HEAD", "--", *in_head)
        for p in paths:
            if p not in tracked:
                self._git("rm", "-q", "--cached", "--ignore-unmatch", "--", p)
                target = self.root / p
                if target.is_file() or target.is_symlink():
                    target.unlink()

    def finish_interrupted_git(self) -> list[str]:
        """Abort a revert/merge/cherry-pick left half-done by a kill; remove a stale index.lock.

        Called while the controller holds the workspace lock, so no git process of ours is
        running; an index.lock is another process's (waited out) or a killed git's (removed).
        """
        done: list[str] = []
        note = self._wait_for_index_lock()
        if note:
            done.append(note)
        gitdir = Path(self.repo.git_dir)
        if (gitdir / "REVERT_HEAD").exists() or (gitdir / "sequencer").exists():
            try:
                self._git("revert", "--abort")
            except git.GitCommandError:
                self._git("reset", "-q", "--merge")
            done.append("aborted a half-done git revert")
        if (gitdir / "MERGE_HEAD").exists() or (gitdir / "CHERRY_PICK_HEAD").exists():
            self._git("reset", "-q", "--merge")
            done.append("aborted a half-done merge")
        return done

    # ----------------------------------------------------------- index.lock
    def _git(self, command: str, *args: str, **kwargs: Any) -> str:
        """A git command that writes the index or HEAD, after waiting out another's index.lock.

        A lock taken between our check and git's own attempt fails git with "Unable to
        create ...index.lock': File exists"; that is waited out and the command run again.
        Single-step commands fail so before they change anything; `stash` and `revert` take
        the lock more than once, and a retry after a later step fails loudly or stashes twice.
        """
        for _ in range(LOCK_RETRIES):
            note = self._wait_for_index_lock()
            if note:
                self.say(note)
            try:
                return getattr(self.repo.git, command)(*args, **kwargs)
            except git.GitCommandError as exc:
                if _LOCK_TAKEN not in str(exc.stderr):
                    raise
        raise WorkspaceError(
            f"git {command} found .git/index.lock in {self.root} taken {LOCK_RETRIES} times in a row, each "
            "time just after it was free: another program runs git here without pause; stop it"
        )

    def _wait_for_index_lock(self) -> str | None:
        """Wait, with backoff, until .git/index.lock is gone; remove it if no live process can own it.

        Returns a note when a stale lock was removed. Raises WorkspaceError when a lock that
        may have a live owner is still there after `lock_wait_s`; such a lock is never deleted.
        """
        lock = Path(self.repo.git_dir) / "index.lock"
        waited, step = 0.0, LOCK_WAIT_FIRST_S
        while True:
            try:
                st = lock.stat()
            except FileNotFoundError:
                return None
            owners = lock_owners(lock, self.root)
            age = max(time.time() - st.st_mtime, waited)
            if owners == [] and (age >= STALE_LOCK_AGE_S or waited >= self.lock_wait_s):
                try:
                    same = lock.stat().st_ino == st.st_ino  # still the one judged, not a new git's
                except FileNotFoundError:
                    return None
                if not same:
                    continue
                lock.unlink(missing_ok=True)
                return (f"removed a stale .git/index.lock ({age:.0f}s old; no process had it open and no git "
                        "was working in this repository: a killed git left it)")
            if waited >= self.lock_wait_s:
                raise WorkspaceError(self._lock_held_message(owners, waited))
            self.sleep(step)
            waited += step
            step = min(2 * step, LOCK_WAIT_STEP_MAX_S)

    def _lock_held_message(self, owners: list[LockOwner] | None, waited: float) -> str:
        lock = Path(self.repo.git_dir) / "index.lock"
        if owners is None:
            return (f"{lock} is still there after {waited:.0f}s and its owner cannot be checked on this system "
                    "(no /proc, or another user made it); if no git process is working in this repository, "
                    "delete that file, then continue")
        who = "; ".join(f"pid {o.pid} ({o.command}) {o.how}" for o in owners[:3])
        return (f"{lock} is still held after {waited:.0f}s: {who}. Let that process finish or end it, then "
                "continue; the lock was left in place")


def _numstat(text: str) -> DiffStats:
    files, added, removed = [], 0, 0
    for line in text.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        a, r, path = parts
        files.append(path)
        added += int(a) if a.isdigit() else 0  # "-" for binary files
        removed += int(r) if r.isdigit() else 0
    return DiffStats(tuple(files), added, removed)


def unsafe_paths(root: Path, paths: tuple[str, ...] | list[str]) -> list[str]:
    """Editable or fixed paths that are symlinks, lie under a symlinked directory, or inside a git
    submodule or nested repository: their content is not what the diff, the audit and the hashes see."""
    problems = []
    for rel in paths:
        parts = Path(rel).parts
        for i in range(1, len(parts) + 1):
            p = root.joinpath(*parts[:i])
            if p.is_symlink():
                what = rel if i == len(parts) else f"{rel} (its directory {Path(*parts[:i])})"
                problems.append(f"{what} is a symbolic link")
                break
            if i < len(parts) and (p / ".git").exists():
                problems.append(f"{rel} is inside the git submodule or nested repository {Path(*parts[:i])}")
                break
    return problems

