"""`autoresearch init`: make (or adopt) a workspace for a target.

A workspace is a git repository holding the target's files, the rendered session files
(`session/` templates), `autoresearch.toml` and the ledger's config header, on a branch
`autoresearch/<tag>`. Init refuses rather than overwrites: an existing file with other
content, an existing branch (without --resume) or a dirty tree stop it with a message.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import harness
from harness import config as config_mod
from harness import ledger, resources
from harness.config import Config, ConfigError
from harness.journal import atomic_write
from harness.stats import Direction

# Target loading lives in harness/targets.py; these names stay importable from here.
from harness.targets import KIT, InitError, Target
from harness.targets import available_targets as available_targets
from harness.targets import load_target as load_target
from harness.workspace import Workspace, WorkspaceError, sha256_file, short, unsafe_paths

# The files init renders into a workspace (besides the target's own and autoresearch.toml)
SESSION_FILES = ("autoresearch.md", "autoresearch.ideas.md", "autoresearch.sh", "autoresearch.checks.sh",
                 config_mod.CONFIG_NAME, ".gitignore")
DEFAULT_DATA = "offline-math"  # what {data} in a post-training target's prepare command is without --data


def default_data(target: Target) -> str:
    """The data spec a session of `target` prepares when init has no --data: the target's own default
    ([target] data, e.g. the sft target's CPU-sized offline-math:levels=1), else DEFAULT_DATA."""
    return target.data or DEFAULT_DATA


def default_tag(now: dt.datetime) -> str:
    """karpathy's convention: the date, e.g. `nov21`."""
    return now.strftime("%b").lower() + str(now.day)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _template(name: str) -> str:
    try:
        return resources.session_template(name)
    except resources.MissingDataError as exc:
        raise InitError(str(exc)) from None


def _render(template: str, **values: str) -> str:
    return string.Template(_template(template)).substitute(values)


def _write_new(path: Path, content: str | bytes, executable: bool = False) -> None:
    """Write a file that init owns; refuse to clobber different content."""
    data = content.encode() if isinstance(content, str) else content
    if path.exists():
        if path.read_bytes() == data:
            return
        raise InitError(f"{path} already exists with other content; move it away or init another directory")
    path.write_bytes(data)
    if executable:
        path.chmod(0o755)


def _names(paths: list[str], limit: int = 8) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _adoptable(ws: Workspace, root: Path, *, own: tuple[str, ...], adopt: bool) -> list[str]:
    """Check an existing repository before init adopts it; returns the untracked files init leaves alone.

    Changes to tracked files stop init, named: the session's base commit must be what the user committed.
    Untracked files are the user's (karpathy's run.log and results.tsv, __pycache__/): never committed, never
    deleted. Those the session's .gitignore covers simply become ignored; others would be stashed by the
    loop's recovery and block its baseline (which runs on a clean tree), so they stop init, named, unless
    `adopt` lists them in .git/info/exclude (local to this clone, nothing committed)."""
    status = ws.repo.git.status("--porcelain=v1", "-z", "--untracked-files=all").split("\0")
    tracked = sorted({item[3:] for item in status if item and not item.startswith("??") and len(item) > 3})
    if tracked:
        raise InitError(f"{root} has uncommitted changes to tracked files: {_names(tracked)}; commit or stash them "
                        "first (init commits the session's files on top of what you committed)")
    untracked = [item[3:] for item in status if item.startswith("??")]
    if not untracked:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".gitignore", delete=False) as f:
        f.write(_template("gitignore"))
    try:  # what stays visible once the session's .gitignore is in place
        visible = ws.repo.git.ls_files("--others", "--exclude-standard", f"--exclude-from={f.name}", "-z").split("\0")
    finally:
        os.unlink(f.name)
    unrelated = sorted(p for p in visible if p and p not in own and p not in SESSION_FILES)
    if unrelated and not adopt:
        raise InitError(
            f"{root} has untracked files that are not the session's: {_names(unrelated)}. The loop runs each "
            "baseline on a clean tree and its recovery stashes what is uncommitted, so: commit them, move them "
            "away, or pass --adopt to leave them where they are, untracked (init lists them in .git/info/exclude; "
            "nothing is committed or deleted)")
    if unrelated:
        exclude = Path(ws.repo.git_dir) / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        have = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        add = [f"/{_glob_escape(p)}" for p in unrelated if f"/{_glob_escape(p)}" not in have.splitlines()]
        if add:
            sep = "\n" if have and not have.endswith("\n") else ""
            exclude.write_text(have + sep + "# left alone by autoresearch init --adopt\n" + "\n".join(add) + "\n",
                               encoding="utf-8")
    return sorted(p for p in untracked if p not in own and p not in SESSION_FILES)


def _glob_escape(path: str) -> str:
    """A path as a literal gitignore pattern."""
    return re.sub(r"([*?\[\\!#])", r"\\\1", path)


def init_workspace(
    root: Path,
    target: Target,
    *,
    tag: str | None = None,
    resume: bool = False,
    budget_s: float | None = None,
    timeout_s: float | None = None,
    checks: str | None = None,
    revert: str = "revert",
    agent: str = "auto",
    model: str | None = None,
    dataset: str | None = None,
    data: str | None = None,
    name: str | None = None,
    now: dt.datetime | None = None,
    overrides: dict[str, Any] | None = None,
    generated: dict[str, bytes] | None = None,
    after_copy: Callable[[Path], list[str]] | None = None,
    adopt: bool = False,
) -> tuple[Config, list[str]]:
    """Create or adopt the workspace; returns the config and what was done.

    `generated`: fixed files init writes from what the caller resolved (a post-training target's base.json and
    base_model.py, its advice.json), committed and hashed with the target's files. `after_copy(root)` runs once the
    target's files are in place and before they are committed (it may rewrite an editable default, e.g. the
    advised learning rate); it returns what it did, for init's report. `adopt`: untracked files of an adopted
    repository that are not the session's are left alone even where the session's .gitignore does not cover them
    (they go to .git/info/exclude); without it they stop init, named."""
    now = now or dt.datetime.now()
    left_alone: list[str] = []
    tag = tag or default_tag(now)
    branch = f"autoresearch/{tag}"
    done: list[str] = []
    root = root.resolve()
    try:
        ws = Workspace.create_or_adopt(root)
    except WorkspaceError as exc:
        raise InitError(str(exc)) from None

    if ws.has_commits() and ws.branch_exists(branch):
        if not resume:
            raise InitError(
                f"branch {branch} already exists in {root}; use --resume to continue that session, "
                "or --tag NAME for a new one"
            )
        if not ws.is_clean():
            raise InitError(f"{root} has uncommitted changes; commit or stash them before switching to {branch}")
        ws.checkout(branch)
        if not (root / config_mod.CONFIG_NAME).exists():
            raise InitError(
                f"branch {branch} has no {config_mod.CONFIG_NAME} (an init that did not finish?); delete the branch "
                f"(`git branch -D {branch}` from another branch) and run init again"
            )
        cfg = config_mod.load(root)
        return cfg, [f"switched to the existing session branch {branch}"]
    if ws.has_commits():  # adopting a repository (a karpathy working copy): name what blocks, adopt what may stay
        left_alone = _adoptable(ws, root, own=(*target.editable, *target.fixed_files, *(generated or {})),
                                adopt=adopt)

    # Render and validate everything before touching git, so a bad flag or template fails
    # with nothing half-done.
    # Only targets with CPU-specific settings pay for importing torch to look for CUDA.
    on_cpu = (target.cpu_time_budget_s is not None or bool(target.cpu_settings)) and not cuda_available()
    cpu_budget = on_cpu and target.cpu_time_budget_s is not None and budget_s is None
    budget = budget_s or (target.cpu_time_budget_s if cpu_budget else target.time_budget_s) or 300.0
    prepare = (target.prepare.replace("{dataset}", dataset or "local").replace("{data}", data or default_data(target))
               if target.prepare else None)
    generated = dict(generated or {})
    clash = sorted(set(generated) & {*target.editable, *target.fixed_files})
    if clash:
        raise InitError(f"{', '.join(clash)}: written by init for this target, but also one of its own files")
    # Precedence: the harness's defaults < the target's [session] settings < flags given to init.
    cfg = Config(
        **{
            "name": f"autoresearch {target.name} {tag}",
            "command": "bash autoresearch.sh",
            "metric": target.metric,
            "editable": target.editable,
            "fixed": (*target.fixed_files, *generated),
            "target": target.name,
            "agent": agent,
            "revert": revert,
            **target.settings,
            **(target.cpu_settings if on_cpu else {}),
            "time_budget_s": float(budget),
            "checks_command": "bash autoresearch.checks.sh" if checks else None,
            "prepare_command": prepare,
            "branch": branch,
        }
    )
    cfg = config_mod.with_overrides(cfg, name=name, timeout_s=timeout_s, model=model, **(overrides or {}))
    config_mod.validate(cfg)
    direction: Direction = target.metric.direction
    session_files: dict[str, str] = {
        "autoresearch.md": _render(
            "autoresearch.md",
            title=cfg.name,
            goal=target.description or f"{'Minimize' if direction == 'lower' else 'Maximize'} {target.metric.name}.",
            metric=target.metric.name,
            unit_text=f"unit: {target.metric.unit}" if target.metric.unit else "no unit",
            direction=direction,
            budget=f"{budget:g}",
            timeout=f"{cfg.effective_timeout_s:g}",
            editable_list="\n".join(f"- `{p}`" for p in target.editable),
            fixed_list="\n".join(f"- `{p}` (fixed: hashed, any change is refused)" for p in (*target.fixed_files, *generated))
            or "- (none)",
        ),
        "autoresearch.ideas.md": _template("autoresearch.ideas.md"),
        "autoresearch.sh": _render("autoresearch.sh", command=target.command),
    }
    if checks:
        session_files["autoresearch.checks.sh"] = _render("autoresearch.checks.sh", checks=checks)
    for rel, content in session_files.items():
        if (root / rel).exists() and (root / rel).read_text(encoding="utf-8", errors="replace") != content:
            raise InitError(f"{root / rel} already exists with other content; move it away or init another directory")
    sources = target.sources()
    for rel, src in sources.items():
        dst = root / rel
        if dst.exists() and dst.read_bytes() != src.read_bytes():
            raise InitError(f"{dst} exists and differs from the {target.name} target's; init into a new directory")
    if target.source_dir is None:
        missing = [p for p in (*target.editable, *target.fixed) if not (root / p).is_file()]
        if missing:
            raise InitError(f"missing in {root}: {', '.join(missing)} (create them first, or use --target)")
    for rel, blob in generated.items():
        if (root / rel).exists() and (root / rel).read_bytes() != blob:
            raise InitError(f"{root / rel} exists with other content than init writes there; init into a new directory")
    linked = unsafe_paths(root, (*target.editable, *target.fixed))
    if linked:
        raise InitError("; ".join(linked) + ": the editable and fixed files must be plain files of this repository, "
                        "so that the audit and the hashes see what runs (copy the real file in instead)")

    # 1. the target's files and the .gitignore on the current branch: the session's base
    for rel, src in sources.items():
        dst = root / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            what = ("(the fixed kit)" if rel == KIT else "(a shared kit module)" if rel in target.kit_modules
                    else f"from the {target.name} target")
            done.append(f"copied {rel} {what}")
    for rel, blob in generated.items():
        if not (root / rel).exists():
            _write_new(root / rel, blob)
            done.append(f"wrote {rel} (fixed)")
    if after_copy is not None:
        done.extend(after_copy(root))
    gitignore = root / ".gitignore"
    wanted = _template("gitignore")
    have = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
    lines_missing = [ln for ln in wanted.splitlines() if ln and not ln.startswith("#") and ln not in have.splitlines()]
    if lines_missing:
        gitignore.write_text(have + ("\n" if have and not have.endswith("\n") else "") + wanted, encoding="utf-8")
        done.append("added autoresearch.jsonl, run.log and .autoresearch/ to .gitignore")
    if left_alone:
        done.append(f"left alone (untracked, not committed, now ignored): {_names(left_alone)}"
                    + (" (each run writes its output there, as karpathy's loop does)" if "run.log" in left_alone else ""))
    base_paths = [".gitignore", *target.fixed_files, *generated, *target.editable]
    if not ws.has_commits() or any(p in ws.changed_paths() for p in base_paths):
        ws.commit_all(f"autoresearch: {target.name} target files", paths=base_paths)
        done.append("committed the target's files")

    # 2. the session branch and its files
    ws.create_branch(branch)
    done.append(f"created branch {branch}")
    if cpu_budget:
        done.append(f"no CUDA device found: using the target's CPU time budget of {budget:g} s")
    for rel, content in session_files.items():
        _write_new(root / rel, content, executable=rel.endswith(".sh"))
    measured = [*target.fixed_files, *generated, "autoresearch.sh", *(["autoresearch.checks.sh"] if checks else [])]
    cfg = config_mod.with_overrides(cfg, fixed_hashes={p: sha256_file(root / p) for p in measured})
    config_mod.save(root, cfg)
    ws.commit_all(f"autoresearch: session setup ({target.name}, {branch})")
    done.append(f"wrote {', '.join(session_files)} and autoresearch.toml, and committed them")

    lpath = ledger.ledger_path(root)
    state = ledger.load_state(lpath)
    if state.current is None or state.current.runs:
        # provenance: which harness and which kit the session's metric depends on
        kit: dict[str, Any] = {"kit_sha256": cfg.fixed_hashes[KIT]} if target.kit is not None else {}
        if target.kit_modules:
            kit["kit_modules"] = {m: cfg.fixed_hashes[m] for m in target.kit_modules}
        ledger.append(
            lpath,
            ledger.header_line(cfg.name, target.metric.name, target.metric.unit, direction, target=target.name,
                               branch=branch, time_budget_s=budget, harness_version=harness.__version__, **kit),
        )
        done.append(f"started the ledger {lpath.name}")
    return cfg, done



# ------------------------------------------------------------------ config changes (`autoresearch config`)

ConfigHow = Literal["config", "hand edit"]
EDIT_ASIDE = "config-edit.toml"  # in .autoresearch/: a hand edit held out of recovery's way while it runs


@dataclass(frozen=True)
class ConfigChange:
    """A committed change of autoresearch.toml, as the ledger records it."""

    changes: dict[str, tuple[Any, Any]]  # key -> (old, new), JSON values
    new_segment: bool  # it changed what the metric means: the runs before it are another segment
    commit: str  # the session-config commit (short)
    how: ConfigHow

    def describe(self) -> str:
        shown = describe_changes(self.changes)
        return shown + (" (a new segment starts: the metric means something else now, so the next run is its "
                        "baseline)" if self.new_segment else "")


def describe_changes(changes: dict[str, Any]) -> str:
    """`key old -> new; ...`; for the fixed files' hashes, which files were hashed again."""
    out = []
    for k, (a, b) in changes.items():
        if k == "fixed_hashes" and isinstance(a, dict) and isinstance(b, dict):
            again = sorted(p for p in b if a.get(p) != b[p])
            out.append(f"hashed again: {', '.join(again)}" if again else "fixed files removed from the hashes")
        else:
            out.append(f"{k} {short_value(a)} -> {short_value(b)}")
    return "; ".join(out)


def short_value(v: Any, limit: int = 60) -> str:
    text = "none" if v is None else config_mod.show(tuple(v) if isinstance(v, list) else v) \
        if not isinstance(v, dict) else f"{{{len(v)} entries}}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def committed_config(ws: Workspace, rev: str = "HEAD") -> Config | None:
    """autoresearch.toml as committed at `rev`; None where it has none (a workspace older than its config)."""
    blob = ws.file_at(rev, config_mod.CONFIG_NAME)
    if blob is None:
        return None
    return config_mod.loads(blob.decode("utf-8", errors="replace"), f"{config_mod.CONFIG_NAME} at {rev}")


def config_edit(root: Path) -> str | None:
    """The hand edit of autoresearch.toml not committed yet: the tree's text where it differs from HEAD's, else
    one an interrupted start set aside; validated (ConfigError names the problem). None when there is none."""
    aside = root / ".autoresearch" / EDIT_ASIDE
    path = root / config_mod.CONFIG_NAME
    try:
        ws = Workspace(root)
        head = ws.file_at("HEAD", config_mod.CONFIG_NAME)
    except (WorkspaceError, ValueError):
        return None
    if head is None or not path.exists():
        return None
    if config_mod.CONFIG_NAME in ws.changed_paths():
        text = path.read_bytes()
    elif aside.exists() and aside.read_bytes().rstrip(b"\n") != head.rstrip(b"\n"):  # git show drops the last newline
        text = aside.read_bytes()
    else:
        aside.unlink(missing_ok=True)
        return None
    edit = text.decode("utf-8", errors="replace")
    new = config_mod.loads(edit, f"{path} (your uncommitted edit)")
    old = config_mod.loads(head.decode("utf-8", errors="replace"), f"{config_mod.CONFIG_NAME} at HEAD")
    if new.fixed_hashes != old.fixed_hashes:
        raise ConfigError(
            f"{path} (your uncommitted edit): fixed_hashes is written by autoresearch, not by hand; set the fixed "
            f"files with `autoresearch config fixed {' '.join(new.fixed) or 'FILE ...'}`, which hashes them again as "
            "they are now (and starts a new segment)")
    return edit


def set_aside_config_edit(root: Path, edit: str) -> None:
    """Hold a hand edit out of recovery's way (recovery stashes uncommitted edits): saved under .autoresearch/
    first, then autoresearch.toml goes back to HEAD's. `commit_config` writes it back and commits it."""
    atomic_write(root / ".autoresearch" / EDIT_ASIDE, edit.encode())
    Workspace(root).repo.git.checkout("HEAD", "--", config_mod.CONFIG_NAME)


def _renewed_hashes(root: Path, old: Config, new: Config, again: bool) -> dict[str, str]:
    """fixed_hashes for `new`: the measurement scripts' as they were, each fixed file's (hashed now where it is
    new to the list, or every one when `again`: the user accepts the fixed files as they now are)."""
    hashes = {p: h for p, h in old.fixed_hashes.items() if p not in old.fixed or p in new.fixed}
    for p in new.fixed:
        if again or p not in hashes:
            if not (root / p).is_file():
                raise ConfigError(f"fixed: {p} is not a file of the workspace")
            hashes[p] = sha256_file(root / p)
    return hashes


def commit_config(root: Path, old: Config, new: Config, *, how: ConfigHow, text: str | None = None,
                  rehash: bool = False, now: float | None = None) -> ConfigChange | None:
    """Make `new` the session's configuration: validated, written, committed as a session-config commit (with any
    fixed file it hashes again), and recorded in the ledger: a change of what the metric means as a config header
    (a new segment), any other as a `config_change` line. `text` is the hand edit as written (kept, comments and
    all, unless the hashes had to change); `rehash`: `fixed` was set, hash every fixed file again.
    Returns None when nothing changed (a hand edit of comments alone is committed, and not logged)."""
    ws = Workspace(root)
    aside = root / ".autoresearch" / EDIT_ASIDE
    hashes = _renewed_hashes(root, old, new, rehash)
    if hashes != new.fixed_hashes:
        new, text = replace(new, fixed_hashes=hashes), None
    config_mod.validate(new)
    changed = config_mod.changes(old, new)
    if text is not None:
        (root / config_mod.CONFIG_NAME).write_text(text, encoding="utf-8")
    else:
        config_mod.save(root, new)
    dirty = set(ws.changed_paths())
    paths = [config_mod.CONFIG_NAME, *(p for p in new.fixed if p in dirty and "fixed_hashes" in changed)]
    if config_mod.CONFIG_NAME not in dirty:
        aside.unlink(missing_ok=True)
        return None
    new_segment = config_mod.changes_meaning(changed)
    subject = f"{CONFIG_SUBJECT}{how}): {describe_changes(changed) or 'comments only'}"
    if len(subject) > 100:  # cut at a word, the whole list goes in the body
        subject = subject[:99].rsplit(" ", 1)[0] + "…\n\n" + describe_changes(changed)
    sha = ws.commit_all(subject, paths=paths)
    aside.unlink(missing_ok=True)
    if not changed:
        return None
    change = ConfigChange(changed, new_segment, short(sha), how)
    _log_change(root, new, change, now)
    return change


CONFIG_SUBJECT = "autoresearch: session config ("


def config_commit_at_head(root: Path) -> bool:
    """HEAD is a session-config commit (one git call: its subject)."""
    try:
        return Workspace(root).commit_message().startswith(CONFIG_SUBJECT)
    except (WorkspaceError, ValueError):
        return False


def log_unlogged_change(root: Path) -> ConfigChange | None:
    """A session-config commit at HEAD that the ledger does not record (stopped between the commit and the
    ledger line): recorded now, from the configs at HEAD~1 and HEAD. The caller holds the workspace lock."""
    try:
        ws = Workspace(root)
        if not ws.has_commits() or not ws.commit_message().startswith(CONFIG_SUBJECT):
            return None
        sha = short(ws.head())
        if any(c.commit == sha for c in ledger.load_state(ledger.ledger_path(root)).config_changes):
            return None
        old, new = committed_config(ws, "HEAD~1"), committed_config(ws)
    except (WorkspaceError, ValueError, ConfigError):
        return None
    if old is None or new is None or not (changed := config_mod.changes(old, new)):
        return None
    how: ConfigHow = "hand edit" if ws.commit_message().startswith(CONFIG_SUBJECT + "hand edit)") else "config"
    change = ConfigChange(changed, config_mod.changes_meaning(changed), sha, how)
    _log_change(root, new, change, None)
    return change


def _log_change(root: Path, new: Config, change: ConfigChange, now: float | None) -> None:
    """The ledger's record of a change: a new segment's config header when it changes what the metric means."""
    payload = {"changes": {k: [a, b] for k, (a, b) in change.changes.items()}, "how": change.how,
               "commit": change.commit, "timestamp": int(dt.datetime.now().timestamp() if now is None else now)}
    lpath = ledger.ledger_path(root)
    if change.new_segment:
        current = ledger.load_state(lpath).current
        line = ledger.header_line(new.name, new.metric.name, new.metric.unit, new.metric.direction,
                                  **ledger.carried(current.header if current else None),
                                  time_budget_s=new.time_budget_s, config_change=payload)
    else:
        line = {"type": "config_change", **payload}
    ledger.append(lpath, line)
