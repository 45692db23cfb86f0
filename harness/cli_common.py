"""What every command handler shares: the one user-error type, the workspace root, its config,
JSON-object flags, and how a command ends when its reader goes away (a broken pipe).

The command modules (harness.commands, harness.inspect_cli) import this module and never each
other; harness.cli imports neither of them until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness import config as config_mod


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
