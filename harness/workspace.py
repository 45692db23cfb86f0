"""The git workspace: every git operation the controller performs, through GitPython.

The controller only ever moves the branch in three ways: commit an experiment, revert
(or reset) a non-keep, and stash what it found uncommitted. Nothing here deletes work
without saving it first: rejected proposals and discarded experiments are written to
`.autoresearch/patches/` before the tree is cleaned.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

STATE_DIR = ".autoresearch"


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


class Workspace:
    """A git work tree rooted at `root` (the session directory)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        try:
            self.repo = git.Repo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"{self.root} is not a git repository") from None
        if Path(self.repo.working_tree_dir or "").resolve() != self.root:
            raise WorkspaceError(
                f"{self.root} is inside the git repository {self.repo.working_tree_dir}; "
                "a workspace must be the top level of its own repository"
            )
        self._ensure_identity()

    # -------------------------------------------------------------- creation
    @classmethod
    def create_or_adopt(cls, root: Path) -> Workspace:
        root.mkdir(parents=True, exist_ok=True)
        try:
            enclosing = git.Repo(root, search_parent_directories=True)
            top = Path(enclosing.working_tree_dir or "").resolve()
            if top != root.resolve():
                raise WorkspaceError(
                    f"{root} is inside the git repository {top}; run init at that repository's top "
                    "level or choose a directory outside it"
                )
        except git.InvalidGitRepositoryError:
            git.Repo.init(root, initial_branch="main")
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
            self.repo.git.add("-A")
        else:
            self.repo.git.add("-A", "--", *paths)
        args = ["-q", "-m", message]
        if allow_empty:
            args.append("--allow-empty")
        self.repo.git.commit(*args)
        return self.head()

    def create_branch(self, name: str) -> None:
        self.repo.git.checkout("-q", "-b", name)

    def checkout(self, name: str) -> None:
        self.repo.git.checkout("-q", name)

    def revert_head(self) -> str:
        self.repo.git.revert("--no-edit", "HEAD")
        return self.head()

    def reset_to(self, rev: str) -> str:
        """`git reset --hard rev`: only called on a clean tree (the caller stashes first)."""
        if not self.is_clean():
            raise WorkspaceError("refusing to reset a dirty tree (stash it first)")
        self.repo.git.reset("-q", "--hard", rev)
        return self.head()

    def stash(self, message: str) -> str | None:
        """Stash everything uncommitted (untracked files too); returns the stash commit."""
        if self.is_clean():
            return None
        self.repo.git.stash("push", "--include-untracked", "-m", message)
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
            self.repo.git.reset("-q", "HEAD", "--", *in_head)
            self.repo.git.checkout("HEAD", "--", *in_head)
        for p in paths:
            if p not in tracked:
                self.repo.git.rm("-q", "--cached", "--ignore-unmatch", "--", p)
                target = self.root / p
                if target.is_file() or target.is_symlink():
                    target.unlink()

    def finish_interrupted_git(self) -> list[str]:
        """Abort a revert/merge/cherry-pick left half-done by a kill; remove a stale index.lock.

        Only called while the controller holds the workspace lock, so no git process of
        ours can be running: an index.lock is a leftover of a killed one.
        """
        done: list[str] = []
        gitdir = Path(self.repo.git_dir)
        lock = gitdir / "index.lock"
        if lock.exists():
            lock.unlink()
            done.append("removed a stale .git/index.lock")
        if (gitdir / "REVERT_HEAD").exists() or (gitdir / "sequencer").exists():
            try:
                self.repo.git.revert("--abort")
            except git.GitCommandError:
                self.repo.git.reset("-q", "--merge")
            done.append("aborted a half-done git revert")
        if (gitdir / "MERGE_HEAD").exists() or (gitdir / "CHERRY_PICK_HEAD").exists():
            self.repo.git.reset("-q", "--merge")
            done.append("aborted a half-done merge")
        return done


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
