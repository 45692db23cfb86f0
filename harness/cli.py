"""Command-line interface: argument parsing and thin dispatch, nothing else.

Every command takes `-C DIR` (like git) to act on a workspace other than the current
directory. User mistakes end with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import __version__

EPILOG = """\
typical session:
  autoresearch init my-run --target pretrain     # workspace + branch autoresearch/<date>
  cd my-run && autoresearch run --max-hours 8    # the loop; Ctrl-C finishes the current run
  autoresearch status                            # the morning after
  autoresearch log --status keep

external agent (Claude Code, Codex): edit the editable files, then
  autoresearch experiment -d "raise LR to 0.05" --asi '{"hypothesis": "..."}'
"""


def _add_dir(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    p.add_argument(
        "-C", dest="directory", metavar="DIR", type=Path,
        default=Path(".") if top else argparse.SUPPRESS,
        help="run as if started in DIR (default: the current directory)",
    )


def _add_noise_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("noise-aware keeps (README: Noise-aware keeps)")
    g.add_argument("--calibrate", type=int, metavar="R",
                   help="run each segment's baseline R >= 2 times with different seeds to measure the noise floor")
    g.add_argument("--confirm", type=int, metavar="N",
                   help="with a noise floor, re-run a candidate up to N >= 1 times with other seeds (default 3)")
    g.add_argument("--min-effect", type=float, metavar="K", dest="min_effect",
                   help="a mean gain must exceed K standard errors of the difference to be kept (default 1.5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="Let an agent run ML experiments overnight: edit, commit, train under a fixed budget, "
        "keep or revert, and log every result to autoresearch.jsonl.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    _add_dir(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="create or adopt a workspace for a target",
                       description="Create (or adopt) a git workspace: copy the target's files, render the session "
                       "files, write autoresearch.toml, commit, and create branch autoresearch/<tag>.")
    _add_dir(p)
    p.add_argument("path", type=Path, nargs="?", default=None, help="workspace directory (default: -C DIR or .)")
    p.add_argument("--target", help="a built-in target (e.g. pretrain); omit for a custom target described by flags")
    p.add_argument("--command", dest="run_command", help="custom target: the command that runs one experiment")
    p.add_argument("--metric", help="custom target: the primary metric's name (printed as METRIC name=value)")
    p.add_argument("--unit", default="", help="custom target: the metric's unit")
    p.add_argument("--direction", choices=["lower", "higher"], help="custom target: which way is better")
    p.add_argument("--editable", nargs="+", metavar="FILE", help="custom target: files the agent may change")
    p.add_argument("--fixed", nargs="*", default=[], metavar="FILE", help="custom target: files that define the evaluation")
    p.add_argument("--prepare", help="custom target: one-time preparation command")
    p.add_argument("--tag", help="branch autoresearch/<tag> (default: the date, e.g. nov21)")
    p.add_argument("--resume", action="store_true", help="the branch exists: switch to it and continue that session")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="training time budget per experiment")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="hard kill (default max(2x budget, budget+300))")
    p.add_argument("--checks", metavar="CMD", help="correctness checks to run after each experiment")
    p.add_argument("--discard", choices=["revert", "reset"], default="revert",
                   help="how non-keeps are undone: git revert (default, keeps history) or reset (karpathy style)")
    p.add_argument("--dataset", help="pretrain: local (offline default), climbmix, an owner/name hub repo, or a DIR")
    p.add_argument("--name", help="a title for the session")
    _add_noise_flags(p)

    p = sub.add_parser("run", help="run the experiment loop",
                       description="Recover from any interruption, then loop: propose, commit, run, decide, log, "
                       "revert what is not kept. First Ctrl-C finishes the current experiment; a second aborts it.")
    _add_dir(p)
    p.add_argument("--agent", choices=["auto", "mutate", "claude"],
                   help="who proposes experiments: claude (Anthropic API, needs ANTHROPIC_API_KEY), mutate (offline), "
                   "auto = claude when ANTHROPIC_API_KEY is set, else mutate (default: autoresearch.toml)")
    p.add_argument("--model", help="the claude agent's model (default: autoresearch.toml, else the built-in default)")
    p.add_argument("--max-cost", type=float, metavar="USD", help="stop once the agent's estimated spend reaches USD")
    p.add_argument("--learn-every", type=int, metavar="N",
                   help="the claude agent updates the learnings in autoresearch.md every N experiments (0 = never)")
    p.add_argument("--max-iterations", type=int, metavar="N", help="stop after N experiments")
    p.add_argument("--until", metavar="HH:MM", help="stop at this local time")
    p.add_argument("--max-hours", type=float, metavar="H", help="stop after H hours")
    p.add_argument("--max-failure-streak", type=int, metavar="N",
                   help="stop after N experiments in a row that were not kept (default 20)")
    p.add_argument("--discard", choices=["revert", "reset"], help="override how non-keeps are undone")
    _add_noise_flags(p)

    p = sub.add_parser("experiment", help="evaluate the edits in the tree once (external agent mode)",
                       description="Validate, commit, run, decide and log the uncommitted edits, then revert them "
                       "unless kept. With a clean tree and no baseline yet, runs the baseline.")
    _add_dir(p)
    p.add_argument("-d", "--description", required=True, help="what this experiment changes, in a few words")
    p.add_argument("--asi", default="{}", help='JSON object of side information, e.g. \'{"hypothesis": "..."}\'')
    p.add_argument("--json", action="store_true", help="print the ledger line as JSON")

    p = sub.add_parser("resume", help="recover after a crash, kill or context reset, and show where things stand",
                       description="Logs an interrupted run as a crash and reverts it, reverts a logged non-keep left "
                       "at HEAD, stashes (never deletes) uncommitted edits, sets a torn ledger line aside.")
    _add_dir(p)

    p = sub.add_parser("status", help="summary of the session")
    _add_dir(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("log", help="the ledger as a table")
    _add_dir(p)
    p.add_argument("--last", type=int, metavar="N", help="only the last N runs")
    p.add_argument("--status", choices=["keep", "discard", "crash", "checks_failed"])
    p.add_argument("--segment", type=int, metavar="N")
    p.add_argument("--json", action="store_true", help="the fold's records as a JSON array")

    p = sub.add_parser("log-experiment", help="append one run line by hand (seed-compatible; used by scripts/)")
    _add_dir(p)
    p.add_argument("--run", type=int)
    p.add_argument("--commit")
    p.add_argument("--metric", type=float, required=True)
    p.add_argument("--status", choices=["keep", "discard", "crash", "checks_failed"], required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--metrics", default="{}")
    p.add_argument("--segment", type=int)
    p.add_argument("--confidence", type=float)
    p.add_argument("--asi", default="{}")

    from harness import inspect_cli

    inspect_cli.add_parsers(sub, _add_dir)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from harness import commands  # imported late: --help stays instant

    try:
        return commands.dispatch(args)
    except commands.UserError as exc:
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
