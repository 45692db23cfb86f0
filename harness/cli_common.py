"""What every command handler shares: the one user-error type, the workspace root, its config,
JSON-object flags, and how a command ends when its reader goes away (a broken pipe).

The command modules (harness.commands, harness.inspect_cli) import this module and never each
other; harness.cli imports neither of them until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import config as config_mod

if TYPE_CHECKING:
    from harness.ledger import LedgerState


class UserError(Exception):
    """A mistake the user can fix; cli.main prints the message as one line and exits 2."""


# 128 + SIGPIPE: what `git log | head -1` exits with (git, cat and any tool SIGPIPE ends). Not 0: a
# `set -o pipefail` script sees a cut output as it sees git's, and a complete one is told from it.
BROKEN_PIPE_EXIT = 141


def after_broken_pipe() -> int:
    """The reader of stdout went away (`autoresearch log | head -1`): stop quietly, as git does, with no
    traceback. stdout is pointed at /dev/null so that the interpreter's last flush of what is still
    buffered does not fail a second time ("Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture): nothing to flush there
        pass
    return BROKEN_PIPE_EXIT


def workspace_root(args: argparse.Namespace) -> Path:
    """The directory given by -C DIR (default: the current one), which must exist."""
    root = Path(getattr(args, "directory", Path("."))).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    return root.resolve()


def load_config(root: Path) -> config_mod.Config:
    try:
        return config_mod.load(root)
    except config_mod.ConfigError as exc:
        raise UserError(str(exc)) from None


def json_object(text: str, flag: str) -> dict[str, Any]:
    """Parse a flag's value as a JSON object (`--asi '{"hypothesis": "..."}'`)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag} must be a JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{flag} must be a JSON object, not {type(obj).__name__}")
    return obj


def require_session(root: Path) -> None:
    """A command that appends to a session's ledger (log-experiment's run line) must find one: outside a
    workspace it would start a ledger in whatever directory it was run from."""
    from harness import ledger  # here: cli_common is imported for `--help`, which must stay instant

    if not (root / config_mod.CONFIG_NAME).exists() and not ledger.ledger_path(root).exists():
        raise UserError(f"{root} is not an autoresearch workspace (no {config_mod.CONFIG_NAME}, no "
                        f"{ledger.LEDGER_NAME}): run it in one, or give -C DIR; `autoresearch init` makes one, "
                        "`log-experiment --config` starts a ledger")


def check_segment(state: LedgerState, segment: int | None) -> None:
    """`--segment N` names a segment the ledger has; else the view would be an empty table that looks like
    a session without runs."""
    if segment is None:
        return
    known = sorted({s.index for s in state.segments} | {r.segment for r in state.runs})
    if segment not in known:
        if not known:
            has = "no segments"
        elif len(known) == 1:
            has = f"only segment {known[0]}"
        else:
            has = "segments " + (", ".join(map(str, known)) if len(known) < 6 else f"{known[0]} to {known[-1]}")
        raise UserError(f"no segment {segment} in the ledger (it has {has})")


def target_budgets(assets: Path | None = None) -> list[tuple[str, float, float | None]]:
    """(name, budget with a GPU, budget without) of each built-in target, from its target.toml, for
    `init --budget`'s help: read when the parser is built, so only tomllib (already loaded by the config)
    and no target module. A target.toml that does not read is left out: `init` itself says what is wrong."""
    from harness import resources

    root = assets if assets is not None else resources.assets_dir()
    out = []
    for path in sorted(root.glob("*/target.toml")):
        try:
            t = tomllib.loads(path.read_text(encoding="utf-8")).get("target", {})
            gpu = float(t.get("time_budget_s", 300))
            cpu = float(t["cpu_time_budget_s"]) if "cpu_time_budget_s" in t else None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError):
            continue
        out.append((path.parent.name, gpu, cpu))
    return out


def budget_help(budgets: list[tuple[str, float, float | None]]) -> str:
    per = "; ".join(f"{name} {gpu:g} with a GPU" + ("" if cpu is None else f", {cpu:g} without") for name, gpu, cpu in budgets)
    return ("training time budget per experiment, in seconds (default: the target's" + (f": {per}" if per else "")
            + "; a custom target 300)")


def program() -> str:
    """How a printed "next:" command should name this program: `autoresearch` when PATH finds this same
    install, else its full path (a .venv/bin that a new shell lacks on PATH: `command not found` there)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    mine = argv0 if argv0 is not None and argv0.name == "autoresearch" else Path(sys.executable).with_name("autoresearch")
    found = shutil.which("autoresearch")
    if found and mine.exists() and Path(found).resolve() == mine.resolve():
        return "autoresearch"
    return shlex.quote(str(mine.absolute())) if mine.is_file() else "autoresearch"
