"""CLI wiring for the inspection commands (plot, report, dashboard, export, import, finalize).

`add_parsers(sub, add_dir)` registers the subcommands on cli.py's subparsers; `HANDLERS` maps
a subcommand name to its function (parsed args -> exit code). Raise `UserError` from
harness.commands for user mistakes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_parsers(sub: argparse._SubParsersAction, add_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the inspection subcommands."""
