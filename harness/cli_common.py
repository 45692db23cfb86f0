"""What every command handler shares: the one user-error type, the workspace root, its config,
and JSON-object flags.

The command modules (harness.commands, harness.inspect_cli) import this module and never each
other; harness.cli imports neither of them until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness import config as config_mod


class UserError(Exception):
    """A mistake the user can fix; cli.main prints the message as one line and exits 2."""


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
