"""`autoresearch finalize`: the noisy session branch as clean branches, one per logical change.

The session branch holds every experiment commit, the reverts of the ones not kept, and note
commits. Reviewers want the kept changes only. The kept experiment commits are grouped with
union-find so that two commits touching a common file land in the same group (groups never
share a file, so each can be reviewed and merged on its own, in any order). Each group becomes
`autoresearch/<tag>-final-<n>-<slug>`: one commit on the session's base whose files are the
group's files as they were after its last kept commit, with a message that lists the
experiments and the metric change. Before anything is written, the groups applied together
to the base must reproduce the session's final version of every file they or the editable set
cover; otherwise finalize refuses and names the commits that changed those files outside the
kept experiments.

Everything goes through a throwaway index (`GIT_INDEX_FILE`) and `commit-tree`/`update-ref`:
the work tree, the real index and the session branch are never touched. This follows
pi-autoresearch's finalize skill (groups of kept commits, one branch each, from the
merge-base), written for our ledger.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from harness.config import Config
from harness.ledger import LedgerState
from harness.points import Point, points, shorten
from harness.workspace import Workspace, WorkspaceError

SETUP_PREFIX = "autoresearch: session setup"
ZERO = "0" * 40


class FinalizeError(Exception):
    """finalize cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Keep:
    run: int
    commit: str  # full sha
    description: str
    files: tuple[str, ...]
    metric: str
    before: float  # the segment's best before this run
    value: float


@dataclass(frozen=True)
class Group:
    index: int  # 1-based
    keeps: tuple[Keep, ...]
    files: tuple[str, ...]
    branch: str
    message: str

    @property
    def last(self) -> str:
        return self.keeps[-1].commit


@dataclass(frozen=True)
class Plan:
    session_branch: str
    tip: str
    base: str
    base_why: str
    groups: tuple[Group, ...]
    checked: tuple[str, ...]  # files whose final version the groups must reproduce


# ------------------------------------------------------------------ pure parts


def group_by_files(items: Sequence[tuple[str, ...]]) -> list[list[int]]:
    """Union-find over items (each a tuple of files): items that share a file, directly or
    through others, end in one group. Groups are ordered by their first item; items keep
    their order inside a group. Items with no files form groups of their own."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, files in enumerate(items):
        for f in files:
            if f in owner:
                a, b = find(owner[f]), find(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[f] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    return [groups[k] for k in sorted(groups)]


def slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-") or "change"


def metric_change(keeps: Sequence[Keep]) -> list[str]:
    """`val_bpb 0.9979 -> 0.9712 (-2.68%)` per metric: from the best before the group's first
    keep, moved by the sum of the group's measured changes (each against the best at the time;
    with one group this is exactly baseline -> best)."""
    out = []
    for metric in dict.fromkeys(k.metric for k in keeps):
        ks = [k for k in keeps if k.metric == metric]
        start = ks[0].before
        end = start + sum(k.value - k.before for k in ks)
        pct = f" ({100 * (end - start) / abs(start):+.2f}%)" if start else ""
        out.append(f"{metric} {start:.6g} -> {end:.6g}{pct}")
    return out


def commit_message(keeps: Sequence[Keep], files: Sequence[str], session_branch: str, n_groups: int) -> str:
    # git's subject line: at most 72 characters, cut at a word (`points.shorten`), the count of
    # the other kept experiments always whole
    more = "" if len(keeps) == 1 else f" (+{len(keeps) - 1} more kept experiments)"
    title = shorten(keeps[0].description, 72 - len(more)) + more
    lines = [title, "", *metric_change(keeps), ""]
    if n_groups > 1:
        lines += ["(measured in sequence on the session branch, on top of the other groups'",
                  "earlier keeps; not in isolation)", ""]
    lines.append(f"Kept experiments squashed from {session_branch}:")
    for k in keeps:
        lines.append(f"- #{k.run} {k.commit[:7]} {k.description} ({k.metric} {k.before:.6g} -> {k.value:.6g}, "
                     f"{k.value - k.before:+.4g})")
    lines += ["", "Files: " + ", ".join(files)]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- git parts


def _find_base(ws: Workspace, tip: str, base: str | None) -> tuple[str, str]:
    if base is not None:
        full = ws.resolve(base)
        if full is None:
            raise FinalizeError(f"--base {base}: no such commit")
        if not ws.is_ancestor(full, tip):
            raise FinalizeError(f"--base {base} is not an ancestor of the session branch")
        return full, f"--base {base}"
    for line in ws.repo.git.log("--first-parent", "--format=%H %P%x09%s", tip).splitlines():
        shas, _, subject = line.partition("\t")
        sha, *parents = shas.split()
        if subject.startswith(SETUP_PREFIX):
            if not parents:
                raise FinalizeError("the session setup commit has no parent to start from: pass --base REV")
            return parents[0], "the parent of the session setup commit"
    raise FinalizeError("no `autoresearch: session setup` commit on the session branch: pass --base REV "
                        "(the commit the session started from)")


def _files_of(ws: Workspace, commits: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Files each commit changes relative to its first parent, in one git process."""
    out = ws.repo.git.show("--no-renames", "--name-only", "--format=%x00%H", *commits)
    files: dict[str, tuple[str, ...]] = {}
    for chunk in out.split("\0")[1:]:
        sha, *names = chunk.strip("\n").splitlines()
        files[sha] = tuple(n for n in names if n)
    return files


def _keeps(ws: Workspace, state: LedgerState, base: str, tip: str, base_why: str) -> list[Keep]:
    """Kept runs (not baselines) whose commit is on the session branch after the base, in order."""
    cands: list[tuple[Point, float, float]] = []  # the point, the best before it, its value
    for seg in state.segments:
        for p in points(seg):
            if p.kept and not p.baseline and p.r.commit and p.best_before is not None and p.r.value is not None:
                cands.append((p, p.best_before, p.r.value))
    in_range = set(ws.repo.git.rev_list(f"{base}..{tip}").split())
    keeps: list[tuple[Point, str, float, float]] = []
    seen: set[str] = set()
    missing = []
    for p, before, value in cands:
        full = ws.resolve(p.r.commit)
        if full is None or full not in in_range:
            missing.append(f"#{p.r.run} {p.r.commit}")
            continue
        if full in seen:
            continue
        seen.add(full)
        keeps.append((p, full, before, value))
    if missing:
        raise FinalizeError(f"kept run(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} are not "
                            f"commits between the base ({base_why}) and the session branch: an earlier base, or "
                            "the ledger of another branch (imported, or history rewritten)?")
    files = _files_of(ws, [full for _, full, _, _ in keeps]) if keeps else {}
    return [Keep(p.r.run, full, p.r.description, files.get(full, ()), _metric_name(state, p.r.segment), before, value)
            for p, full, before, value in keeps]


def _metric_name(state: LedgerState, segment: int) -> str:
    return state.segments[segment].header.metric_name


def make_plan(ws: Workspace, cfg: Config, state: LedgerState, *, base: str | None = None) -> Plan:
    session = cfg.branch or ws.branch() or ""
    tip = ws.resolve(session) if session else None
    if tip is None:
        raise FinalizeError(f"the session branch {session or '(unknown)'} does not exist in this repository")
    base_sha, why = _find_base(ws, tip, base)
    keeps = _keeps(ws, state, base_sha, tip, why)
    if not keeps:
        raise FinalizeError("nothing to finalize: no kept experiment after the baseline")
    tag = session.removeprefix("autoresearch/").replace("/", "-")
    idx = group_by_files([k.files for k in keeps])
    groups = []
    for n, members in enumerate(idx, start=1):
        ks = tuple(keeps[i] for i in members)
        files = tuple(sorted({f for k in ks for f in k.files}))
        groups.append(Group(n, ks, files, f"autoresearch/{tag}-final-{n}-{slug(ks[0].description)}",
                            commit_message(ks, files, session, len(idx))))
    checked = tuple(sorted(set(cfg.editable) | {f for g in groups for f in g.files}))
    return Plan(session, tip, base_sha, why, tuple(groups), checked)


class _Index:
    """A throwaway git index: read a tree, set some paths, write a tree. The real index and the
    work tree are never touched."""

    def __init__(self, ws: Workspace, tmp: Path, name: str):
        self.ws = ws
        self.env = {"GIT_INDEX_FILE": str(tmp / name)}

    def read(self, rev: str) -> None:
        self.ws.repo.git.read_tree(rev, env=self.env)

    def take(self, rev: str, paths: Sequence[str]) -> None:
        """Set `paths` to their version at `rev` (removing those `rev` does not have)."""
        listed = self.ws.repo.git.ls_tree("-r", "--full-tree", rev, "--", *paths)
        present = set()
        for line in listed.splitlines():
            meta, path = line.split("\t", 1)
            mode, _, sha = meta.split()
            self.ws.repo.git.update_index("--add", "--cacheinfo", f"{mode},{sha},{path}", env=self.env)
            present.add(path)
        gone = [p for p in paths if p not in present]
        if gone:
            self.ws.repo.git.update_index("--force-remove", "--", *gone, env=self.env)

    def write(self) -> str:
        return self.ws.repo.git.write_tree(env=self.env)


def verify(ws: Workspace, plan: Plan, tmp: Path) -> list[str]:
    """Files whose version differs between (base + every group) and the session branch's tip."""
    idx = _Index(ws, tmp, "union")
    idx.read(plan.base)
    for g in plan.groups:
        idx.take(g.last, g.files)
    union = idx.write()
    out = ws.repo.git.diff("--name-only", union, plan.tip, "--", *plan.checked)
    return [line for line in out.splitlines() if line]


def _explain(ws: Workspace, plan: Plan, differ: Sequence[str]) -> str:
    kept = {k.commit for g in plan.groups for k in g.keeps}
    log = ws.repo.git.log("--format=%H %s", f"{plan.base}..{plan.tip}", "--", *differ).splitlines()
    other = [f"{sha[:7]} {subj}" for sha, _, subj in (ln.partition(" ") for ln in log)
             if sha not in kept and not subj.startswith(("experiment #", 'Revert "experiment #'))]
    why = ("; changed outside the kept experiments by: " + "; ".join(other[:5])) if other else (
        "; a discarded experiment's revert may be missing")
    return (f"the kept experiments do not reproduce {', '.join(differ)} as on {plan.session_branch}{why}. Record "
            "such a change as an experiment (autoresearch experiment) or revert it; nothing was changed")


def create(ws: Workspace, plan: Plan, tmp: Path, *, force: bool) -> list[tuple[str, str]]:
    existing = [g.branch for g in plan.groups if ws.branch_exists(g.branch)]
    if existing and not force:
        raise FinalizeError(f"branch(es) already exist: {', '.join(existing)}. Delete them (git branch -D) or pass "
                            "--force to move them")
    made = []
    for g in plan.groups:
        idx = _Index(ws, tmp, f"group-{g.index}")
        idx.read(plan.base)
        idx.take(g.last, g.files)
        tree = idx.write()
        commit = ws.repo.git.commit_tree(tree, "-p", plan.base, "-m", g.message)
        old = ws.resolve(f"refs/heads/{g.branch}") if force else None
        ws.repo.git.update_ref("-m", "autoresearch finalize", f"refs/heads/{g.branch}", commit, old or ZERO)
        made.append((g.branch, commit))
    return made


# ----------------------------------------------------------------------- command


def _print_plan(plan: Plan, editable: Sequence[str]) -> None:
    n_keeps = sum(len(g.keeps) for g in plan.groups)
    print(f"finalize: {n_keeps} kept experiment(s) on {plan.session_branch} ({plan.tip[:7]}), base {plan.base[:7]} "
          f"({plan.base_why})")
    if len(plan.groups) == 1 and len(editable) == 1:
        print(f"one editable file ({editable[0]}): all kept experiments form one group, since groups may not "
              "share files")
    elif len(plan.groups) == 1:
        print("the kept experiments all share files (directly or through each other): one group")
    for g in plan.groups:
        print(f"\ngroup {g.index}: {g.branch}\n  files: {', '.join(g.files)}")
        for line in g.message.rstrip("\n").splitlines():
            print(f"  | {line}")


def run(root: Path, cfg: Config, state: LedgerState, *, base: str | None, dry_run: bool, force: bool) -> int:
    try:
        ws = Workspace(root)
    except WorkspaceError as exc:
        raise FinalizeError(str(exc)) from None
    # untracked files are not part of any branch finalize writes; tracked edits mean HEAD is not the session
    dirty = ws.repo.git.status("--porcelain", "--untracked-files=no")
    if dirty:
        raise FinalizeError("the tree has uncommitted changes to tracked files: commit or stash them first "
                            f"({', '.join(ln[3:] for ln in dirty.splitlines()[:5])})")
    try:
        plan = make_plan(ws, cfg, state, base=base)
        _print_plan(plan, cfg.editable)
        with tempfile.TemporaryDirectory(prefix="autoresearch-finalize-") as tmp:
            differ = verify(ws, plan, Path(tmp))
            if differ:
                raise FinalizeError(_explain(ws, plan, differ))
            print(f"\nverified: the {len(plan.groups)} group(s) applied to the base reproduce "
                  f"{', '.join(plan.checked)} as on {plan.session_branch}")
            if dry_run:
                print("dry run: nothing was changed")
                return 0
            made = create(ws, plan, Path(tmp), force=force)
    except git.GitCommandError as exc:
        raise FinalizeError(f"git failed: {' '.join(map(str, exc.command[:3]))}: "
                            f"{(exc.stderr or '').strip().splitlines()[-1:] or exc}") from None
    for branch, commit in made:
        print(f"created {branch} ({commit[:7]})")
    print(f"review: git log --stat {plan.base[:7]}..<branch>; the session branch {plan.session_branch} is unchanged")
    return 0
