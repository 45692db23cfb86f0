"""CLI wiring for the inspection commands (plot, report, dashboard, export, import, finalize).

`add_parsers(sub, add_dir)` registers the subcommands on cli.py's subparsers; `HANDLERS` maps
a subcommand name to its function (parsed args -> exit code). User mistakes raise
`UserError` from harness.commands. Relative paths given to -o / --tsv are relative to -C DIR
(as if started there, like git); outputs default to the workspace.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import ledger

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _handler(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        HANDLERS[name] = fn
        return fn

    return register


def add_parsers(sub: argparse._SubParsersAction, add_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the inspection subcommands."""
    p = sub.add_parser("plot", help="karpathy's progress chart of the session (progress.png)",
                       description="Discarded runs as faint dots, kept runs labelled with their description, the "
                       "running best as a step line, the baseline marked, crashes as x marks along the bottom; "
                       "one panel per segment.")
    add_dir(p)
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it: .png, .svg or .pdf "
                   "(default: progress.png in the workspace)")

    p = sub.add_parser("report", help="one self-contained HTML report of the session (report.html)",
                       description="Summary, chart, a sortable and filterable table of every run with its ASI, and "
                       "the diff of every kept run, in one HTML file that loads nothing from the network.")
    add_dir(p)
    p.add_argument("-o", "--output", metavar="FILE", help="default: report.html in the workspace")

    p = sub.add_parser("dashboard", help="serve the report on 127.0.0.1, updated live while a session runs",
                       description="A read-only web server on 127.0.0.1: the report page, which polls every 2 s "
                       "and appends new ledger lines without a reload. Ctrl-C stops it.")
    add_dir(p)
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")

    p = sub.add_parser("export", help="write karpathy's results.tsv (for his analysis notebook)",
                       description="Columns commit, val_bpb, memory_gb, status, description. memory_gb is "
                       "peak_vram_mb/1024, or peak_rss_mb/1024 when the run measured no VRAM (CPU runs), 0.0 "
                       "without either. Runs without a result are crash rows (0.000000, 0.0); checks_failed "
                       "rows say so in their description. The session's primary metric goes in the val_bpb "
                       "column whatever its name (a warning says so; --metric-column names the column).")
    add_dir(p)
    p.add_argument("--tsv", action="store_true", required=True, help="the format (the only one so far)")
    p.add_argument("-o", "--output", metavar="FILE", help="default: results.tsv in the workspace; - for stdout")
    p.add_argument("--metric-column", metavar="NAME",
                   help="header of the metric column (default val_bpb, which analysis.ipynb reads)")
    p.add_argument("--segment", metavar="N|all", help="which segment (default: the current one)")

    p = sub.add_parser("import", help="turn karpathy's results.tsv into a ledger",
                       description="Rows become run lines (row 1 is the kept baseline), with the TSV's commits, "
                       "timestamps synthesized 5 minutes apart, and asi.imported_from set.")
    add_dir(p)
    p.add_argument("--tsv", required=True, metavar="FILE", help="the results.tsv to read")
    p.add_argument("--direction", choices=["lower", "higher"], default="lower",
                   help="which way the metric is better (default lower, as val_bpb)")
    p.add_argument("--append", action="store_true",
                   help="the ledger has runs: add these as a new segment instead of refusing")

    p = sub.add_parser("finalize", help="turn the session branch into clean review branches, one per change",
                       description="Groups the kept experiments by the files they touch (groups never share a "
                       "file) and creates one branch per group from the session's base, each with a single "
                       "commit whose message carries the metric change. Checks that the groups together "
                       "reproduce the session's final files. Never touches the session branch or the tree.")
    add_dir(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--base", metavar="REV", help="base commit (default: the parent of the session setup commit)")
    p.add_argument("--force", action="store_true", help="move final branches that already exist")


# ---------------------------------------------------------------------- helpers


def _common() -> tuple[type[Exception], Callable[[argparse.Namespace], Path]]:
    from harness.commands import UserError, _root

    return UserError, _root


def _out_path(root: Path, given: str | None, default: str) -> Path:
    p = Path(given).expanduser() if given else Path(default)
    return p if p.is_absolute() else root / p


def _write(path: Path, data: bytes) -> None:
    UserError, _ = _common()
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_ledger(root: Path, *, allow_empty: bool = False) -> ledger.LedgerState:
    UserError, _ = _common()
    path = ledger.ledger_path(root)
    if not path.exists():
        raise UserError(f"no ledger in {root} (expected {ledger.LEDGER_NAME} or .auto/log.jsonl): start a session "
                        "with `autoresearch init`, or import one with `autoresearch import --tsv results.tsv`")
    state = ledger.load_state(path)
    for b in state.bad_lines:
        print(f"warning: ledger line {b.lineno} skipped: {b.reason}{' (torn write)' if b.torn else ''}",
              file=sys.stderr)
    if not state.runs and not allow_empty:
        raise UserError(f"{path.name} has no runs yet: nothing to show until the first experiment is logged")
    return state


# --------------------------------------------------------------------- commands


@_handler("plot")
def cmd_plot(args: argparse.Namespace) -> int:
    from harness import report

    UserError, _root = _common()
    root = _root(args)
    out = _out_path(root, args.output, "progress.png")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UserError(f"-o {out.name}: the chart is written as .png, .svg or .pdf")
    state = load_ledger(root)
    t0 = time.perf_counter()
    _write(out, report.chart_bytes(state, report.session_name(state, root.name), fmt))
    segs = sum(1 for s in state.segments if s.runs)
    n, k = len(state.runs), report.kept_improvements(state)
    print(f"wrote {out} ({n} run{'s' if n != 1 else ''}, {k} kept improvement{'s' if k != 1 else ''}, "
          f"{segs} segment{'s' if segs != 1 else ''}; {time.perf_counter() - t0:.1f}s)")
    return 0


@_handler("report")
def cmd_report(args: argparse.Namespace) -> int:
    from harness import report

    _, _root = _common()
    root = _root(args)
    out = _out_path(root, args.output, "report.html")
    state = load_ledger(root)
    t0 = time.perf_counter()
    page = report.report_html(state, root, report.session_name(state, root.name)).encode("utf-8")
    _write(out, page)
    print(f"wrote {out} ({len(page) / 1024:.0f} KB, {len(state.runs)} runs; {time.perf_counter() - t0:.1f}s): "
          "one file, no network needed")
    return 0


@_handler("dashboard")
def cmd_dashboard(args: argparse.Namespace) -> int:
    from harness import dashboard

    UserError, _root = _common()
    root = _root(args)
    if not (0 <= args.port <= 65535):
        raise UserError("--port must be between 0 and 65535")
    if not ledger.ledger_path(root).exists() and not (root / "autoresearch.toml").exists():
        raise UserError(f"no ledger in {root} and no autoresearch.toml: not a workspace (pass -C DIR)")
    return dashboard.serve(root, args.port)


@_handler("export")
def cmd_export(args: argparse.Namespace) -> int:
    from harness import report

    UserError, _root = _common()
    root = _root(args)
    state = load_ledger(root)
    with_runs = [s for s in state.segments if s.runs]
    if args.segment in (None, "all"):
        segs = with_runs if args.segment == "all" else with_runs[-1:]
    else:
        try:
            wanted = int(args.segment)
        except ValueError:
            raise UserError(f"--segment must be a number or all, not {args.segment!r}") from None
        segs = [s for s in with_runs if s.index == wanted]
        if not segs:
            raise UserError(f"no segment {wanted} with runs (segments: {', '.join(str(s.index) for s in with_runs)})")
    seg = segs[-1]
    metric = seg.header.metric_name
    if args.metric_column is None and (metric != "val_bpb" or seg.direction != "lower"):
        print(f"warning: this session's metric is {metric} ({seg.direction} is better); it is written in the val_bpb "
              f"column so analysis.ipynb reads it{', which assumes lower is better' if seg.direction != 'lower' else ''}"
              f". Pass --metric-column {metric} to name the column after it, or --metric-column val_bpb to "
              "silence this", file=sys.stderr)
    text = report.tsv_text([r for s in segs for r in s.runs], args.metric_column or "val_bpb")
    n = sum(len(s.runs) for s in segs)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = _out_path(root, args.output, "results.tsv")
    _write(out, text.encode("utf-8"))
    left = len(with_runs) - len(segs)
    which = "all segments" if args.segment == "all" else f"segment {seg.index}"
    print(f"wrote {out}: {n} runs ({which}" + (f"; {left} other segment(s) left out, --segment all for every run"
                                                if left else "") + ")")
    return 0


@_handler("import")
def cmd_import(args: argparse.Namespace) -> int:
    from harness import report

    UserError, _root = _common()
    root = _root(args)
    src = _out_path(root, args.tsv, "results.tsv")
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {src}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        metric, rows = report.parse_tsv(text, src.name)
    except report.TSVError as exc:
        raise UserError(str(exc)) from None
    lpath = ledger.ledger_path(root)
    state = ledger.load_state(lpath)
    if state.runs and not args.append:
        raise UserError(f"{lpath.name} already has {len(state.runs)} runs: pass --append to add the import as a new "
                        "segment, or import into another directory with -C DIR")
    lines = report.import_lines(metric, rows, direction=args.direction, source=src.name, first_run=state.next_run,
                                segment=len(state.segments) if state.runs else max(len(state.segments) - 1, 0),
                                end_time=os.stat(src).st_mtime)
    for line in lines:
        ledger.append(lpath, line)
    counts = {s: sum(1 for ln in lines[1:] if ln["status"] == s) for s in ledger.STATUSES}
    print(f"imported {len(rows)} runs from {src.name} into {lpath}: {counts['keep']} kept, {counts['discard']} "
          f"discarded, {counts['crash']} crashed, {counts['checks_failed']} checks_failed "
          f"({metric}, {args.direction} is better; timestamps synthesized 5 minutes apart)")
    return 0


@_handler("finalize")
def cmd_finalize(args: argparse.Namespace) -> int:
    from harness.commands import _config

    UserError, _root = _common()
    root = _root(args)
    cfg = _config(root)
    from harness import finalize
    state = load_ledger(root)
    try:
        return finalize.run(root, cfg, state, base=args.base, dry_run=args.dry_run, force=args.force)
    except finalize.FinalizeError as exc:
        raise UserError(str(exc)) from None
