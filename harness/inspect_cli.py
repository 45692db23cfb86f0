"""The inspection commands: plot, report, dashboard, export, import, finalize.

Each takes parsed arguments (flags: harness.cli) and returns an exit code. User mistakes raise
`UserError`; the errors in `USER_ERRORS` carry messages written for the user too. Relative
paths given to -o / --tsv are relative to -C DIR (as if started there, like git); outputs
default to the workspace.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from harness import chart, dashboard, finalize, ledger, points, report, tsv
from harness.cli_common import UserError, load_config, workspace_root

USER_ERRORS: tuple[type[Exception], ...] = (tsv.TSVError, finalize.FinalizeError)


# ---------------------------------------------------------------------- helpers


def _out_path(root: Path, given: str | None, default: str) -> Path:
    p = Path(given).expanduser() if given else Path(default)
    return p if p.is_absolute() else root / p


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_ledger(root: Path, *, allow_empty: bool = False) -> ledger.LedgerState:
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


def cmd_plot(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    out = _out_path(root, args.output, "progress.png")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UserError(f"-o {out.name}: the chart is written as .png, .svg or .pdf")
    state = load_ledger(root)
    t0 = time.perf_counter()
    _write(out, chart.chart_bytes(state, points.session_name(state, root.name), fmt))
    segs = sum(1 for s in state.segments if s.runs)
    n, k = len(state.runs), points.kept_improvements(state)
    print(f"wrote {out} ({n} run{'s' if n != 1 else ''}, {k} kept improvement{'s' if k != 1 else ''}, "
          f"{segs} segment{'s' if segs != 1 else ''}; {time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    out = _out_path(root, args.output, "report.html")
    state = load_ledger(root)
    t0 = time.perf_counter()
    page = report.report_html(state, root, points.session_name(state, root.name)).encode("utf-8")
    _write(out, page)
    print(f"wrote {out} ({len(page) / 1024:.0f} KB, {len(state.runs)} runs; {time.perf_counter() - t0:.1f}s): "
          "one file, no network needed")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    if not (0 <= args.port <= 65535):
        raise UserError("--port must be between 0 and 65535")
    if not ledger.ledger_path(root).exists() and not (root / "autoresearch.toml").exists():
        raise UserError(f"no ledger in {root} and no autoresearch.toml: not a workspace (pass -C DIR)")
    try:
        server, url = dashboard.make_server(root, args.port)
    except OSError as exc:
        if exc.filename:  # the ledger, read once before listening
            raise UserError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        hint = "; pass --port N, or --port 0 for a free one" if args.port else ""
        raise UserError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}{hint}") from None
    dashboard.serve(server, url)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    root = workspace_root(args)
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
    text = tsv.tsv_text([r for s in segs for r in s.runs], args.metric_column or "val_bpb")
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


def cmd_import(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    src = _out_path(root, args.tsv, "results.tsv")
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {src}: {getattr(exc, 'strerror', None) or exc}") from None
    metric, rows = tsv.parse_tsv(text, src.name)
    lpath = ledger.ledger_path(root)
    state = ledger.load_state(lpath)
    if state.runs and not args.append:
        raise UserError(f"{lpath.name} already has {len(state.runs)} runs: pass --append to add the import as a new "
                        "segment, or import into another directory with -C DIR")
    lines = tsv.import_lines(metric, rows, direction=args.direction, source=src.name, first_run=state.next_run,
                                segment=len(state.segments) if state.runs else max(len(state.segments) - 1, 0),
                                end_time=os.stat(src).st_mtime)
    for line in lines:
        ledger.append(lpath, line)
    counts = {s: sum(1 for ln in lines[1:] if ln["status"] == s) for s in ledger.STATUSES}
    print(f"imported {len(rows)} runs from {src.name} into {lpath}: {counts['keep']} kept, {counts['discard']} "
          f"discarded, {counts['crash']} crashed, {counts['checks_failed']} checks_failed "
          f"({metric}, {args.direction} is better; timestamps synthesized 5 minutes apart)")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    cfg = load_config(root)
    state = load_ledger(root)
    return finalize.run(root, cfg, state, base=args.base, dry_run=args.dry_run, force=args.force)
