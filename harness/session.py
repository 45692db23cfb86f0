"""`autoresearch init`: make (or adopt) a workspace for a target.

A workspace is a git repository holding the target's files, the rendered session files
(`session/` templates), `autoresearch.toml` and the ledger's config header, on a branch
`autoresearch/<tag>`. Init refuses rather than overwrites: an existing file with other
content, an existing branch (without --resume) or a dirty tree stop it with a message.
"""

from __future__ import annotations

import datetime as dt
import shutil
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
from harness import config as config_mod
from harness import ledger, resources
from harness.config import Config
from harness.stats import Direction

# Target loading lives in harness/targets.py; these names stay importable from here.
from harness.targets import KIT, InitError, Target
from harness.targets import available_targets as available_targets
from harness.targets import load_target as load_target
from harness.workspace import Workspace, WorkspaceError, sha256_file, unsafe_paths

DEFAULT_DATA = "offline-math"  # what {data} in a post-training target's prepare command is without --data


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
) -> tuple[Config, list[str]]:
    """Create or adopt the workspace; returns the config and what was done.

    `generated`: fixed files init writes from what the caller resolved (a post-training target's base.json and
    base_model.py, its advice.json), committed and hashed with the target's files. `after_copy(root)` runs once the
    target's files are in place and before they are committed (it may rewrite an editable default, e.g. the
    advised learning rate); it returns what it did, for init's report."""
    now = now or dt.datetime.now()
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
    if ws.has_commits() and not ws.is_clean():
        raise InitError(f"{root} has uncommitted changes; commit or stash them first")

    # Render and validate everything before touching git, so a bad flag or template fails
    # with nothing half-done.
    # Only targets with CPU-specific settings pay for importing torch to look for CUDA.
    on_cpu = (target.cpu_time_budget_s is not None or bool(target.cpu_settings)) and not cuda_available()
    cpu_budget = on_cpu and target.cpu_time_budget_s is not None and budget_s is None
    budget = budget_s or (target.cpu_time_budget_s if cpu_budget else target.time_budget_s) or 300.0
    prepare = (target.prepare.replace("{dataset}", dataset or "local").replace("{data}", data or DEFAULT_DATA)
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

