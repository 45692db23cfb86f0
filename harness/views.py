"""What `status` and `log` show: data assembled by pure functions, rendered with rich on a
terminal and as plain aligned text otherwise (pipes, files, CI logs). Text from the ledger
(an agent wrote it) is printed through `points.printable`: its control characters are shown as
escapes, never sent to the terminal."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import asdict
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from harness.chain import ChainReport
from harness.config import Config
from harness.ledger import BadLine, LedgerState, RunRecord, Segment
from harness.points import clean_state, number, pct, pct_text, printable
from harness.stats import confidence_band

BAND_STYLE = {"green": "green", "yellow": "yellow", "red": "red", "none": "dim"}
STATUS_STYLE = {"keep": "green", "discard": "dim", "crash": "red", "checks_failed": "magenta"}


def status_data(cfg: Config, state: LedgerState, *, branch: str | None, head: str | None,
                consistency: str, goal: str | None = None) -> dict[str, Any]:
    """Everything `status` says, as plain data (this is `status --json`)."""
    state = clean_state(state)
    seg = state.current
    runs = seg.runs if seg else ()
    counts = seg.counts() if seg else {"keep": 0, "discard": 0, "crash": 0, "checks_failed": 0}
    best_run = seg.best_run if seg else None
    last = state.last_run()
    conf = number(seg.confidence) if seg else None  # a spread near 0 makes it overflow
    direction = cfg.metric.direction
    cost = state.cost_usd
    return {
        "name": cfg.name,
        "goal": goal,
        "metric": {"name": cfg.metric.name, "unit": cfg.metric.unit, "direction": direction},
        "segment": seg.index if seg else 0,
        "segments": len(state.segments),
        "runs": len(runs),
        "runs_total": len(state.runs),
        "counts": counts,
        "baseline": seg.baseline if seg else None,
        "best": seg.best if seg else None,
        "best_run": best_run.run if best_run else None,
        "best_commit": best_run.commit if best_run else None,
        "improvement_pct": pct(seg.best if seg else None, seg.baseline if seg else None, direction),
        "confidence": conf,
        "confidence_band": confidence_band(conf),
        "failure_streak": seg.failure_streak() if seg else 0,
        # runs the machine, not the code, made (harness.contention): re-run, or logged and never kept
        "contended": sum(1 for r in runs if r.raw.get("contended")),
        "last_run": _run_dict(last) if last else None,
        "branch": branch,
        "head": head,
        "consistency": consistency,
        "bad_lines": [asdict(b) for b in state.bad_lines],
        "noise": _noise(seg),
        "heldout": _heldout(seg, cfg),
        "cost_usd": round(cost, 4) if cost else 0.0,
        "kept_improvements": max(counts["keep"] - 1, 0),
    }


def _noise(seg: Segment | None) -> dict[str, Any]:
    """How the keep decision is protected against noise in this segment."""
    if seg is None or seg.calibration is None:
        return {"calibrated": False, "method": "MAD confidence over the segment's results (no calibration)"}
    c = seg.calibration
    return {"calibrated": True, "sigma": c.sigma, "n": c.n, "method": c.raw.get("method", "")}


def _heldout(seg: Segment | None, cfg: Config) -> dict[str, Any] | None:
    """The held-out metric of the baseline and of the best run, when the target has one."""
    name = cfg.heldout_metric
    if not name or seg is None:
        return None

    def value(r: RunRecord | None) -> float | None:
        h = r.raw.get("heldout") if r else None
        return h.get(name) if isinstance(h, dict) else None

    return {"name": name, "baseline": value(seg.baseline_run), "best": value(seg.best_run)}


def _run_dict(r: RunRecord) -> dict[str, Any]:
    return {
        "run": r.run,
        "commit": r.commit,
        "metric": r.value,
        "metrics": r.metrics,
        "status": r.status,
        "description": r.description,
        "timestamp": r.timestamp,
        "segment": r.segment,
        "confidence": r.confidence,
        "asi": r.asi,
        "duration_s": r.duration_s,
        "diff": r.diff,
        "agent": r.agent,
        "samples": r.raw.get("samples"),
        "evidence": r.raw.get("evidence"),
        "heldout": r.raw.get("heldout"),
        "contended": r.raw.get("contended"),
    }


def log_data(state: LedgerState, *, last: int | None = None, status: str | None = None,
             segment: int | None = None) -> list[dict[str, Any]]:
    runs = [r for r in clean_state(state).runs if (status is None or r.status == status) and (segment is None or r.segment == segment)]
    if last is not None:
        runs = runs[-last:] if last > 0 else []
    measured = {s.index for s in clean_state(state).segments if s.calibration is not None}
    # the confidence of a segment without calibration is the seed's MAD rule: the noise was not measured
    return [{**_run_dict(r), "noise_measured": r.segment in measured} for r in runs]


def _fmt(v: float | None, digits: int = 6) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def render_status(d: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up now, not at import: a redirected stdout (tests, callers) is honoured
    con = Console(file=out, highlight=False, soft_wrap=True)
    plain = not con.is_terminal
    m = d["metric"]
    c = d["counts"]
    measured = d["noise"]["calibrated"]
    band = d["confidence_band"] if measured else "none"  # a colour, and the words, only for measured noise
    conf = "-" if d["confidence"] is None else f"{d['confidence']:.2f}x"
    # the gain in the metric's direction over |baseline| (`points.pct_text`): never a bare "+99.93%"
    imp = "-" if d["improvement_pct"] is None else f"{pct_text(d['improvement_pct'])} than the baseline"
    lines = [
        ("session", d["name"]),
        ("goal", d["goal"] or "-"),
        ("metric", f"{m['name']} ({m['direction']} is better{', ' + m['unit'] if m['unit'] else ''})"),
        ("segment", f"{d['segment']} of {d['segments']}" if d["segments"] else "-"),
        ("runs", f"{d['runs']}: {c['keep']} kept, {c['discard']} discarded, {c['crash']} crashed, "
                 f"{c['checks_failed']} checks_failed"),
        ("baseline", _fmt(d["baseline"])),
        ("best", f"{_fmt(d['best'])}" + (f" (run #{d['best_run']}, {d['best_commit']})" if d["best_run"] else "")),
        ("improvement", imp),
        ("confidence", f"{conf} ({band}: " + {
            "green": "likely real", "yellow": "marginal, could be noise", "red": "within noise",
            "none": "undefined: under 3 results, zero spread or no improvement"}[band] + ")" if measured
         else f"{conf} (the seed's MAD rule; noise not measured)"),
    ]
    if d.get("contended"):
        lines.append(("contended", f"{d['contended']} run(s) got a share of the machine off the baseline's: "
                                   "re-run, or logged and not kept (README \"Noise-aware keeps\")"))
    nz = d["noise"]
    lines.append(("noise", f"sigma {nz['sigma']:.4g} from {nz['n']} baseline runs (calibrated; keeps must clear the gate)"
                  if nz["calibrated"] else "not calibrated: the confidence above is the seed's MAD rule "
                  "(`run --calibrate R` when a segment starts)"))
    ho = d["heldout"]
    if ho:
        lines.append(("held-out", f"{ho['name']}: baseline {_fmt(ho['baseline'])}, best run {_fmt(ho['best'])} "
                                  "(never used to decide: overfitting to the selection split shows here)"))
    if d["cost_usd"]:
        per = d["cost_usd"] / d["kept_improvements"] if d["kept_improvements"] else None
        lines.append(("agent cost", f"${d['cost_usd']:.2f}" + (f" (${per:.2f} per kept improvement)" if per else "")))
    last = d["last_run"]
    if last:
        lines.append(("last run", f"#{last['run']} {last['status']} {_fmt(last['metric'])} "
                                  f"{last['description']} ({_when(last['timestamp'])})"))
    if d["failure_streak"]:
        lines.append(("not kept in a row", str(d["failure_streak"])))
    if d.get("runs_in"):
        lines.append(("sandbox", d["runs_in"]))
    if d.get("metric_from"):
        lines.append(("metric from", d["metric_from"]))
    lines.append(("branch", f"{d['branch'] or '(detached)'} @ {(d['head'] or '')[:7]}"))
    lines.append(("consistency", d["consistency"]))
    for b in d["bad_lines"]:
        lines.append(("ledger warning", f"line {b['lineno']}: {b['reason']}{' (torn write)' if b['torn'] else ''}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        v = printable(v)
        if plain:
            out.write(f"{k:<{width}}  {v}\n")
        else:
            style = BAND_STYLE[band] if k == "confidence" else ("yellow" if "warning" in k else "")
            con.print(f"[bold]{k:<{width}}[/bold]  ", end="")
            con.print(v, style=style or None, markup=False)


def render_log(rows: list[dict[str, Any]], metric_name: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    con = Console(file=out, highlight=False)
    heldout = next((k for r in rows for k in (r.get("heldout") or {}) if k != "error"), None)
    unmeasured = sum(1 for r in rows if not r.get("noise_measured", True))
    conf_head = ("conf" if not unmeasured else "MAD conf (noise not measured)" if unmeasured == len(rows)
                 else "conf (MAD where noise not measured)")
    headers = ["run", "status", metric_name, "n", *([heldout] if heldout else []), conf_head, "time", "description",
               "hypothesis / reason"]

    def cells(r: dict[str, Any]) -> list[str]:
        asi = r["asi"] or {}
        note = asi.get("rollback_reason") if r["status"] != "keep" else asi.get("hypothesis")
        note = note or asi.get("hypothesis") or ""
        ho = (r.get("heldout") or {}).get(heldout) if heldout else None
        return [
            str(r["run"]), printable(r["status"]), _fmt(r["metric"]), str(len(r["samples"] or ()) or 1),
            *([_fmt(ho)] if heldout else []),
            "-" if r["confidence"] is None else f"{r['confidence']:.1f}",
            _when(r["timestamp"]), printable(r["description"]), printable(note)[:120],
        ]

    if not con.is_terminal:
        table = [headers] + [cells(r) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
        for row in table:
            out.write("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1] + "\n")
        return
    t = Table(show_lines=False, header_style="bold")
    for h in headers:
        t.add_column(h, overflow="fold", no_wrap=h in ("run", "status", "time"))
    for r in rows:
        t.add_row(*cells(r), style=STATUS_STYLE.get(r["status"]))
    con.print(t)


def ledger_line(chain: ChainReport, bad: tuple[BadLine, ...]) -> str:
    """`resume`'s one line on the ledger. With lines skipped as unreadable it never calls the
    ledger intact, even where its hash chain is whole (a reseal accepted the break, or the lines
    were written before the chain): the runs on those lines are missing from every view."""
    if not bad:
        return f"ledger: {chain.summary()}"
    k = len(bad)
    where = ", ".join(str(b.lineno) for b in bad[:5]) + (" ..." if k > 5 else "")
    skipped = (f"incomplete: {k} line{'s' if k != 1 else ''} skipped as unreadable (line{'s' if k != 1 else ''} "
               f"{where}; the ledger warnings below say why), the runs on {'them' if k != 1 else 'it'} are left out "
               "of every view")
    if not chain.ok:
        return f"ledger: {skipped}; {chain.summary()}"
    accepted = (f", its break at line {', '.join(str(b.lineno) for b in chain.acknowledged)} accepted by the reseal at "
                f"line {chain.reseals[-1]}" if chain.acknowledged else "")
    return f"ledger: {skipped}; {chain.lines} lines, the hash chain unbroken{accepted}"
