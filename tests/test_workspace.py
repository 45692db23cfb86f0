"""The git workspace against other git processes: real repositories, real processes.

An editor's or a shell's git takes `.git/index.lock` for a moment; the workspace waits it
out, never deletes a lock whose owner is alive, and removes one that a killed git left.
The lock holders are tiny Python processes that open the file as git does (O_EXCL) and
report whether it was still theirs when they let go. Linux only (owners are found in /proc).

Run: /work/main/.venv/bin/python -m pytest tests/test_workspace.py -q   (about 5 s)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import workspace
from harness.workspace import Workspace, WorkspaceError

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lock owners are found in /proc (Linux)")

# Opens the lock as git does, holds it `hold_s`, then, like git, removes it: but only if it
# is still the file it made. Prints "ready" once it holds it, then "intact" or "deleted".
HOLDER = """\
import os, sys, time
path, hold_s = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
os.write(fd, b"held")
ino = os.fstat(fd).st_ino
print("ready", flush=True)
time.sleep(hold_s)
try:
    intact = os.stat(path).st_ino == ino
except FileNotFoundError:
    intact = False
print("intact" if intact else "deleted", flush=True)
if intact:
    os.unlink(path)
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "f.txt").write_text("1\n")
    git(root, "add", "f.txt")
    git(root, "commit", "-qm", "one")
    return root


def lock_of(root: Path) -> Path:
    return root / ".git" / "index.lock"


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def hold(procs: list[subprocess.Popen[str]], lock: Path, hold_s: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(hold_s)], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


class Sleeps:
    """The workspace's sleep: records each step and really sleeps it (the holders are real)."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def __call__(self, s: float) -> None:
        self.steps.append(s)
        time.sleep(s)


def new_file(root: Path, name: str = "new.txt") -> None:
    (root / name).write_text("x\n")


# ---------------------------------------------------------------- a live lock


def test_a_lock_held_by_a_live_process_is_waited_out_with_backoff_and_never_deleted(repo, holders,
                                                                                      monkeypatch) -> None:
    monkeypatch.setattr(workspace, "STALE_LOCK_AGE_S", 0.1)  # only its owner keeps it from being removed
    holder = hold(holders, lock_of(repo), 0.5)
    sleeps, notes = Sleeps(), list[str]()
    ws = Workspace(repo, sleep=sleeps, lock_wait_s=10, say=notes.append)
    new_file(repo)
    ws.commit_all("two")
    assert ws.commit_message().strip() == "two" and ws.is_clean()
    out, _ = holder.communicate(timeout=10)
    assert out.strip() == "intact"  # the holder's own file to the end: we never deleted it
    assert sleeps.steps[:3] == [0.05, 0.1, 0.2] and sum(sleeps.steps) >= 0.4
    assert notes == []


def test_a_lock_held_past_the_limit_is_never_deleted_and_ends_with_a_clear_error(repo, holders) -> None:
    holder = hold(holders, lock_of(repo), 60)
    ws = Workspace(repo, sleep=Sleeps(), lock_wait_s=0.5)
    new_file(repo)
    with pytest.raises(WorkspaceError) as info:
        ws.commit_all("two")
    msg = str(info.value)
    assert f"pid {holder.pid} (" in msg and "has it open" in msg and "still held after" in msg
    assert "let that process finish or end it" in msg.lower() and "left in place" in msg
    assert lock_of(repo).exists() and holder.poll() is None
    holder.kill()
    assert git(repo, "log", "--format=%s") == "one"


def test_a_git_commit_running_its_hook_with_the_lock_closed_is_an_owner(repo, monkeypatch) -> None:
    # `git commit -a` closes index.lock while its pre-commit hook (or the editor) runs: no
    # process has it open, yet its owner is alive and renames it into place afterwards.
    monkeypatch.setattr(workspace, "STALE_LOCK_AGE_S", 0.2)
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nsleep 0.8\n")
    hook.chmod(0o755)
    (repo / "f.txt").write_text("2\n")
    theirs = subprocess.Popen(["git", "commit", "-qam", "theirs"], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while not lock_of(repo).exists():
            assert time.monotonic() < deadline and theirs.poll() is None
            time.sleep(0.01)
        time.sleep(0.1)  # into the hook: the lock is closed now
        ws = Workspace(repo, sleep=Sleeps(), lock_wait_s=10)
        new_file(repo, "ours.txt")
        ws.commit_all("ours")
        out, _ = theirs.communicate(timeout=10)
    finally:
        if theirs.poll() is None:
            theirs.kill()
    assert theirs.returncode == 0, out
    assert git(repo, "log", "--format=%s").splitlines() == ["ours", "theirs", "one"]


def test_a_lock_taken_between_our_check_and_gits_attempt_is_waited_out_and_retried(repo, holders, tmp_path) -> None:
    # A `git` first on PATH that, on the first commit only, lets a holder take the lock just
    # before the real git runs: git fails with "Unable to create ... index.lock': File exists".
    # The holder gets none of the wrapper's pipes, or GitPython would wait for it to exit.
    real = shutil.which("git")
    assert real
    bin_dir, out = tmp_path / "bin", tmp_path / "holder.out"
    bin_dir.mkdir()
    (tmp_path / "holder.py").write_text(HOLDER)
    wrapper = bin_dir / "git"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = commit ] && [ ! -e "{tmp_path}/taken" ]; then\n'
        f'  : > "{tmp_path}/taken"\n'
        f'  "{sys.executable}" "{tmp_path}/holder.py" "{lock_of(repo)}" 0.4 > "{out}" 2>/dev/null </dev/null &\n'
        f'  while [ ! -e "{lock_of(repo)}" ]; do sleep 0.01; done\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    sleeps = Sleeps()
    ws = Workspace(repo, sleep=sleeps, lock_wait_s=10)
    ws.repo.git.update_environment(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    new_file(repo)
    ws.commit_all("two")
    assert (tmp_path / "taken").exists()  # the race did happen
    assert sum(sleeps.steps) >= 0.3  # and was waited out, not retried in a tight loop
    assert ws.commit_message().strip() == "two"
    assert out.read_text().split() == ["ready", "intact"]


# --------------------------------------------------------------- a stale lock


def test_a_stale_lock_is_removed_with_a_note_and_the_commit_goes_on(repo) -> None:
    lock = lock_of(repo)
    lock.write_bytes(b"left by a killed git")
    os.utime(lock, (time.time() - 600, time.time() - 600))
    # read-only git running in the repository (a dashboard's GitPython) does not own it
    reader = subprocess.Popen(["git", "cat-file", "--batch"], cwd=repo, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    try:
        sleeps, notes = Sleeps(), list[str]()
        ws = Workspace(repo, sleep=sleeps, lock_wait_s=10, say=notes.append)
        ws.commit_message()  # starts our own persistent `git cat-file`
        new_file(repo)
        ws.commit_all("two")
    finally:
        reader.kill()
        reader.wait()
    assert ws.commit_message().strip() == "two"
    assert len(notes) == 1 and "removed a stale .git/index.lock" in notes[0] and "600s old" in notes[0]
    assert sleeps.steps == []  # an old lock nobody can own needs no waiting


def test_a_fresh_lock_nobody_owns_is_removed_once_it_has_outlived_a_git_write(repo) -> None:
    lock_of(repo).write_bytes(b"")
    sleeps, notes = list[float](), list[str]()
    ws = Workspace(repo, sleep=sleeps.append, lock_wait_s=30, say=notes.append)  # no real sleeping
    new_file(repo)
    ws.commit_all("two")
    assert ws.commit_message().strip() == "two" and len(notes) == 1
    assert workspace.STALE_LOCK_AGE_S <= sum(sleeps) < workspace.STALE_LOCK_AGE_S + 2.1


# ------------------------------------------------------- finish_interrupted_git


def test_finish_interrupted_git_removes_a_stale_lock_and_says_so(repo) -> None:
    lock_of(repo).write_bytes(b"")
    os.utime(lock_of(repo), (time.time() - 60, time.time() - 60))
    done = Workspace(repo, sleep=Sleeps()).finish_interrupted_git()
    assert len(done) == 1 and done[0].startswith("removed a stale .git/index.lock")
    assert not lock_of(repo).exists()


def test_finish_interrupted_git_waits_out_a_live_lock_instead_of_deleting_it(repo, holders, monkeypatch) -> None:
    monkeypatch.setattr(workspace, "STALE_LOCK_AGE_S", 0.1)
    holder = hold(holders, lock_of(repo), 0.3)
    done = Workspace(repo, sleep=Sleeps(), lock_wait_s=10).finish_interrupted_git()
    assert not lock_of(repo).exists()  # it returned once the holder had let go
    out, _ = holder.communicate(timeout=10)
    assert done == [] and out.strip() == "intact"


def test_finish_interrupted_git_aborts_a_half_done_revert(repo) -> None:
    for v in ("2", "3"):
        (repo / "f.txt").write_text(v + "\n")
        git(repo, "commit", "-qam", v)
    head = git(repo, "rev-parse", "HEAD")
    assert subprocess.run(["git", "revert", "--no-edit", "HEAD~1"], cwd=repo, capture_output=True).returncode != 0
    assert (repo / ".git" / "REVERT_HEAD").exists()  # stopped on the conflict, as a kill would leave it
    ws = Workspace(repo)
    assert ws.finish_interrupted_git() == ["aborted a half-done git revert"]
    assert ws.head() == head and ws.is_clean() and not (repo / ".git" / "REVERT_HEAD").exists()
    assert ws.finish_interrupted_git() == []  # idempotent


def test_finish_interrupted_git_aborts_a_half_done_merge(repo) -> None:
    git(repo, "checkout", "-qb", "other")
    (repo / "f.txt").write_text("other\n")
    git(repo, "commit", "-qam", "other")
    git(repo, "checkout", "-q", "-")
    (repo / "f.txt").write_text("main\n")
    git(repo, "commit", "-qam", "main")
    head = git(repo, "rev-parse", "HEAD")
    assert subprocess.run(["git", "merge", "other"], cwd=repo, capture_output=True).returncode != 0
    ws = Workspace(repo)
    assert ws.finish_interrupted_git() == ["aborted a half-done merge"]
    assert ws.head() == head and ws.is_clean() and not (repo / ".git" / "MERGE_HEAD").exists()


# ---- git hardening (issue 10, break 4): nothing in .git runs code inside the controller


def plant_hooks(root: Path) -> tuple[Path, Path]:
    hook_out, fsmonitor_out = root / "hook.out", root / "fsmonitor.out"
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\necho injected >> '{hook_out}'\n")
    hook.chmod(0o755)
    git(root, "config", "core.fsmonitor", f"touch '{fsmonitor_out}'; false")
    return hook_out, fsmonitor_out


def test_a_planted_pre_commit_hook_and_fsmonitor_never_run_on_controller_git_calls(repo) -> None:
    hook_out, fsmonitor_out = plant_hooks(repo)
    ws = Workspace(repo)
    new_file(repo)
    ws.commit_all("experiment #1: x")
    assert ws.is_clean() and ws.changed_paths() == []
    assert not hook_out.exists() and not fsmonitor_out.exists()


def test_without_the_hardening_the_planted_hook_would_run(repo, monkeypatch) -> None:
    # the control for the test above: the same repository with the override switched off
    monkeypatch.setattr(workspace, "HARDENED_GIT_CONFIG", ())
    hook_out, _ = plant_hooks(repo)
    ws = Workspace(repo)
    new_file(repo)
    ws.commit_all("experiment #1: x")
    assert hook_out.exists()


def test_hardening_keeps_git_config_count_set_by_the_caller() -> None:
    env = workspace.hardened_git_env({"GIT_CONFIG_COUNT": "1"})
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_1"] == "core.hooksPath" and env["GIT_CONFIG_KEY_2"] == "core.fsmonitor"
