"""Inspecting a session the morning after: karpathy's progress chart, a self-contained HTML
report, and the results.tsv bridge to his analysis notebook.

Everything is computed from the ledger fold (`harness.ledger`); which way is better comes
from `harness.stats`. The chart uses matplotlib's object API on an Agg canvas (never pyplot,
so no global backend or figure state is touched). The HTML loads nothing: CSS, script and
chart (inline SVG) are in the file, everything from the ledger is escaped (an LLM agent wrote
it), and a Content-Security-Policy with a per-page nonce stops anything else from running
or loading, as a second line of defence.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import math
import re
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from harness.ledger import STATUSES, LedgerState, RunRecord, Segment, Status, header_line
from harness.records import Standing, run_line, running_best
from harness.stats import Direction, confidence_band, gain, improvement_pct, mad

COLORS = {"keep": "#1a9850", "discard": "#a0a0a0", "crash": "#d73027", "checks_failed": "#8e44ad",
          "baseline": "#2166ac", "best": "#1a9850"}
MAX_LABELS = 40  # with more kept runs, only the biggest improvements are labelled
DIFF_MAX_LINES = 1500  # per kept run in the report


class TSVError(ValueError):
    """results.tsv cannot be read; the message names the line."""


# ------------------------------------------------------------------ per-run view


@dataclass(frozen=True)
class Point:
    """One run as the chart and the table see it."""

    r: RunRecord
    best_before: float | None  # the segment's best kept value before this run (baseline included)
    best_after: float | None
    baseline: bool
    direction: Direction

    @property
    def delta(self) -> float | None:
        """Raw change against the best before it (None for the baseline and runs without a value)."""
        if self.baseline or self.r.value is None or self.best_before is None:
            return None
        return self.r.value - self.best_before

    @property
    def gain(self) -> float | None:
        """Improvement over the best before it, positive is better."""
        if self.baseline or self.r.value is None or self.best_before is None:
            return None
        return gain(self.r.value, self.best_before, self.direction)

    @property
    def kept(self) -> bool:
        return self.r.value is not None and (self.baseline or self.r.status == "keep")


def points(seg: Segment) -> list[Point]:
    """The segment's runs with the running best around each (`records.running_best`)."""
    base = seg.baseline_run
    return [Point(r, step.best_before, step.best_after, r is base, seg.direction)
            for r, step in zip(seg.runs, running_best(seg), strict=True)]


def _fmt(v: float | None, digits: int = 6) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}%"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def shorten(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def kept_improvements(state: LedgerState) -> int:
    return sum(1 for s in state.segments for p in points(s) if p.kept and not p.baseline)


def session_name(state: LedgerState, fallback: str) -> str:
    names = [s.header.name for s in state.segments if s.header.name]
    return names[-1] if names else fallback


# ------------------------------------------------------------------------- chart


def _mpl() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _value(p: Point) -> float:
    """The result of a point that has one (kept, or a result not kept); NaN otherwise."""
    return p.r.value if p.r.value is not None else math.nan


def _window(base: float, best: float, kept: Sequence[float], others: Sequence[float], noise: float,
            direction: Direction) -> tuple[float, float]:
    """The y-range worth looking at: every kept value, plus the other results inside Tukey's
    far-out fences (3 IQR beyond the quartiles) of how much worse than the best each result
    is, so that a few diverged runs do not flatten the chart (they are drawn as arrows at the
    edge instead). `bad(v)` is how much worse than the best v is, in metric units."""
    span = abs(best - base) or noise or abs(base) * 0.01 or 1.0

    def bad(v: float) -> float:
        return gain(best, v, direction)

    bads = sorted(bad(v) for v in (*kept, *others))
    q1, q3 = bads[len(bads) // 4], bads[(3 * len(bads)) // 4]
    worst = max(bad(base) + span, q3 + 3 * (q3 - q1))
    best_edge = min(-span, q1 - 3 * (q3 - q1))
    inside = list(kept) + [v for v in others if best_edge <= bad(v) <= worst]
    return min(inside), max(inside)


def draw_chart(state: LedgerState, title: str) -> Any:
    """karpathy's progress.png, one panel per segment: discarded runs as faint dots, kept runs
    as green dots labelled with their description, the running best as a step line, the
    baseline marked, crashes and checks_failed as x marks along the bottom."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    Figure, FigureCanvasAgg = _mpl()
    segs = [s for s in state.segments if s.runs]
    panel_h = 5.2 if len(segs) <= 2 else 4.2
    top_in, bottom_in, gap_in = 1.0, 0.55, 0.85
    height = top_in + bottom_in + len(segs) * panel_h + (len(segs) - 1) * gap_in
    fig = Figure(figsize=(14, height), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(segs), 1, squeeze=False, gridspec_kw={
        "left": 0.06, "right": 0.985, "top": 1 - top_in / height, "bottom": bottom_in / height,
        "hspace": gap_in / panel_h})[:, 0]
    n_runs = sum(len(s.runs) for s in segs)
    k = kept_improvements(state)
    fig.suptitle(f"{title}: {n_runs} experiment{'s' if n_runs != 1 else ''}, {k} kept improvement{'s' if k != 1 else ''}",
                 fontsize=15, fontweight="bold", x=0.06, ha="left", y=1 - 0.18 / height, parse_math=False)
    renderer = fig.canvas.get_renderer()
    for ax, seg in zip(axes, segs, strict=True):
        _draw_segment(ax, seg, renderer, blended_transform_factory(ax.transData, ax.transAxes))
    handles = [
        Line2D([], [], ls="", marker="o", ms=5, color=COLORS["discard"], alpha=0.6, label="discarded"),
        Line2D([], [], ls="", marker="o", ms=7, mfc=COLORS["keep"], mec="#0b5d2c", label="kept"),
        Line2D([], [], color=COLORS["best"], lw=2, label="running best"),
        Line2D([], [], ls="", marker="*", ms=12, color=COLORS["baseline"], label="baseline"),
        Line2D([], [], ls="", marker="x", ms=6, color=COLORS["crash"], label="crash (no value)"),
        Line2D([], [], ls="", marker="x", ms=6, color=COLORS["checks_failed"], label="checks_failed"),
        Line2D([], [], ls="", marker="^", ms=6, color=COLORS["discard"], label="off the chart"),
    ]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.985, 1 - 0.5 / height))
    return fig


def _draw_segment(ax: Any, seg: Segment, renderer: Any, strip: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    pts = points(seg)
    d = seg.direction
    up_is_better = gain(1.0, 0.0, d) > 0
    kept = [p for p in pts if p.kept]
    others = [p for p in pts if p.r.value is not None and not p.kept]
    failed = {s: [p.r.run for p in pts if p.r.status == s and p.r.value is None] for s in ("crash", "checks_failed")}
    c = seg.counts()
    head = (f"segment {seg.index}: {seg.header.metric_name} ({d} is better), {len(pts)} runs: {c['keep']} kept, "
            f"{c['discard']} discarded, {c['crash']} crashed, {c['checks_failed']} checks_failed")
    ax.set_title(head, loc="left", fontsize=10, parse_math=False)
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("experiment #", fontsize=9)
    ax.set_ylabel(seg.header.metric_name + (f" ({seg.header.metric_unit})" if seg.header.metric_unit else ""),
                  fontsize=9)
    ax.tick_params(labelsize=8)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs_all = [p.r.run for p in pts]
    ax.set_xlim(min(xs_all) - 0.5 - 0.01 * len(pts), max(xs_all) + 0.5 + 0.01 * len(pts))
    if not kept:  # only crashes so far
        ax.set_yticks([])
        for status, xs in failed.items():
            ax.scatter(xs, [0.04] * len(xs), transform=strip, marker="x", s=18, lw=0.9, color=COLORS[status])
        ax.text(0.5, 0.5, "no valid result yet", transform=ax.transAxes, ha="center", color="#777777")
        return
    base, best = seg.baseline, seg.best
    assert base is not None and best is not None
    values = [p.r.value for p in pts if p.r.value is not None]
    noise = mad(values) if len(values) >= 3 else 0.0
    lo, hi = _window(base, best, [_value(p) for p in kept], [_value(p) for p in others], noise, d)
    rng = (hi - lo) or abs(hi) * 0.02 or 1.0
    pad_better, pad_worse, pad_strip = 0.16 * rng, 0.06 * rng, 0.10 * rng
    pad_top, pad_bottom = (pad_better, pad_worse) if up_is_better else (pad_worse, pad_better)
    y0, y1 = lo - pad_bottom - pad_strip, hi + pad_top
    ax.set_ylim(y0, y1)

    # discarded (and any other non-kept result): faint dots; beyond the window, arrows at the edge
    inside = [p for p in others if y0 <= _value(p) <= y1]
    above = [p.r.run for p in others if _value(p) > y1]
    below = [p.r.run for p in others if _value(p) < y0]
    few = len(pts) <= 200  # bigger, darker dots when there are few of them
    ax.scatter([p.r.run for p in inside], [p.r.value for p in inside], s=22 if few else 11, color=COLORS["discard"],
               alpha=0.6 if few else 0.45, lw=0, zorder=2)
    ax.scatter(above, [0.985] * len(above), transform=strip, marker="^", s=16, color=COLORS["discard"],
               alpha=0.7, lw=0, zorder=2)
    ax.scatter(below, [0.12] * len(below), transform=strip, marker="v", s=16, color=COLORS["discard"],
               alpha=0.7, lw=0, zorder=2)
    for status, xs in failed.items():
        ax.scatter(xs, [0.04] * len(xs), transform=strip, marker="x", s=18, lw=0.9, color=COLORS[status], zorder=2)

    # running best as a step line to the last run; kept runs on top of it
    steps = [(p.r.run, p.best_after) for p in kept if p.best_after != p.best_before]
    xs = [x for x, _ in steps] + [max(xs_all)]
    ys = [y for _, y in steps] + [steps[-1][1]]
    ax.step(xs, ys, where="post", color=COLORS["best"], lw=1.8, alpha=0.9, zorder=3)
    ax.axhline(base, color=COLORS["baseline"], lw=0.8, ls=(0, (4, 4)), alpha=0.6, zorder=1)
    ax.scatter([p.r.run for p in kept if not p.baseline], [p.r.value for p in kept if not p.baseline], s=34,
               color=COLORS["keep"], edgecolors="#0b5d2c", linewidths=0.7, zorder=4)
    b = seg.baseline_run
    assert b is not None  # a segment with a kept result has a baseline
    ax.scatter([b.run], [b.value], marker="*", s=170, color=COLORS["baseline"], edgecolors="white",
               linewidths=0.6, zorder=5)
    imp = improvement_pct(best, base, d)
    conf = seg.confidence
    ax.set_title(f"baseline {_fmt(base)}  best {_fmt(best)}"
                 + ("" if imp is None else f"  ({abs(imp):.2f}% {'better' if imp >= 0 else 'worse'})")
                 + (f"  confidence {conf:.1f}x" if conf is not None else ""), loc="right", fontsize=10)
    _label_kept(ax, renderer, kept, up_is_better)


def _label_kept(ax: Any, renderer: Any, kept: list[Point], up_is_better: bool) -> None:
    """Label kept runs with their description, biggest improvements first, at the first of a
    few offsets that stays inside the axes and clear of labels and kept dots already there;
    a label that fits nowhere is skipped. The first choice is left of the dot on the better
    side: nothing earlier was better, so that corner is empty. Boxes are computed from the
    text's measured size, so only the chosen position becomes an artist."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.transforms import Bbox

    ranked = sorted((p for p in kept if not p.baseline), key=lambda p: -(p.gain or 0.0))[:MAX_LABELS]
    if kept[0].baseline:
        ranked.insert(0, kept[0])
    box = ax.get_window_extent(renderer)
    floor = box.y0 + 0.16 * box.height  # keep the crash strip and bottom arrows clear
    px = renderer.points_to_pixels(1.0)
    font = FontProperties(size=7.5)
    dots = [(p, ax.transData.transform((p.r.run, p.r.value))) for p in kept]
    placed: list[Any] = []
    s = 1 if up_is_better else -1
    va_better, va_worse = ("bottom", "top") if up_is_better else ("top", "bottom")
    offsets = [(-5, 5 * s, "right", va_better), (6, -5 * s, "left", va_worse), (6, 5 * s, "left", va_better),
               (-5, -5 * s, "right", va_worse), (-8, 18 * s, "right", va_better), (8, -18 * s, "left", va_worse),
               (8, 18 * s, "left", va_better), (-8, -18 * s, "right", va_worse), (-10, 32 * s, "right", va_better),
               (10, -32 * s, "left", va_worse)]
    for p in ranked:
        text = "baseline" if p.baseline else shorten(p.r.description, 42)
        w, h, _ = renderer.get_text_width_height_descent(text, font, ismath=False)
        w, h = w + 3 * px, h + 2 * px  # the white background box and a little air
        x, y = ax.transData.transform((p.r.run, p.r.value))
        near = [Bbox([[qx - 3.5 * px, qy - 3.5 * px], [qx + 3.5 * px, qy + 3.5 * px]])
                for q, (qx, qy) in dots if q is not p and abs(qx - x) < w + 40 * px]
        for dx, dy, ha, va in offsets:
            tx, ty = x + dx * px, y + dy * px
            x0 = tx - w if ha == "right" else tx
            y0 = ty - h if va == "top" else ty
            bb = Bbox([[x0, y0], [x0 + w, y0 + h]])
            if (bb.x0 < box.x0 or bb.x1 > box.x1 or bb.y0 < floor or bb.y1 > box.y1
                    or any(bb.overlaps(o) for o in placed) or any(bb.overlaps(o) for o in near)):
                continue
            placed.append(bb)
            ax.annotate(text, (p.r.run, p.r.value), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                        fontproperties=font, color=COLORS["baseline"] if p.baseline else "#1f3d2b",
                        parse_math=False, zorder=6, annotation_clip=False,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#888888", "shrinkA": 0,
                                    "shrinkB": 3} if abs(dy) > 10 else None)
            break


def chart_bytes(state: LedgerState, title: str, fmt: str = "png") -> bytes:
    """The chart as PNG, SVG or PDF bytes. SVG text stays text (crisp, searchable, small)."""
    import matplotlib

    fig = draw_chart(state, title)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "autoresearch"}):
        fig.savefig(buf, format=fmt, dpi=120 if fmt == "png" else None,
                    metadata={"Date": None} if fmt == "svg" else None)  # no date: the same ledger, the same SVG
    return buf.getvalue()


def chart_svg(state: LedgerState, title: str) -> str:
    """The chart as an inline `<svg>` element (the XML prolog and doctype dropped)."""
    svg = chart_bytes(state, title, "svg").decode("utf-8")
    return svg[svg.index("<svg"):]


# -------------------------------------------------------------------------- HTML


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num_attr(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))


def _asi_html(r: RunRecord) -> str:
    items: list[tuple[str, Any]] = list(r.asi.items())
    if r.metrics:
        items.append(("metrics", ", ".join(f"{k}={v:.6g}" for k, v in r.metrics.items())))
    if r.diff:
        files = r.diff.get("files") or []
        items.append(("diff", f"{', '.join(map(str, files))} (+{r.diff.get('added', 0)} -{r.diff.get('removed', 0)})"))
    if r.agent:
        items.append(("agent", ", ".join(f"{k}={v}" for k, v in r.agent.items())))
    reason = r.raw.get("reason")
    if reason and reason != r.asi.get("rollback_reason"):
        items.append(("reason", reason))
    out = []
    for k, v in items:
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str, separators=(", ", ": "))
        out.append(f"<dt>{esc(k)}</dt><dd>{esc(text)}</dd>")
    return "<dl>" + "".join(out) + "</dl>"


def rows_html(pts: Iterable[Point]) -> str:
    """Table rows; every value from the ledger escaped. Numeric cells carry data-v for sorting."""
    out = []
    for p in pts:
        r = p.r
        v, delta, g = r.value, p.delta, p.gain
        cls = "" if g is None else (" good" if g > 0 else " bad" if g < 0 else "")
        note = r.asi.get("hypothesis") if r.status == "keep" else (r.asi.get("rollback_reason") or r.asi.get("hypothesis"))
        note = shorten(str(note or ""), 160)
        status = r.status
        desc = esc(r.description) or "<i>(no description)</i>"
        out.append(
            f'<tr data-status="{status}" data-seg="{r.segment}">'
            f'<td class="num" data-v="{r.run}">{r.run}</td>'
            f'<td class="num" data-v="{r.segment}">{r.segment}</td>'
            f'<td><span class="st {status}">{status}{" ★" if p.baseline else ""}</span></td>'
            f'<td class="num" data-v="{_num_attr(v)}">{_fmt(v)}</td>'
            f'<td class="num{cls}" data-v="{_num_attr(delta)}">{"" if delta is None else f"{delta:+.4g}"}</td>'
            f'<td class="num" data-v="{_num_attr(r.confidence)}">{"" if r.confidence is None else f"{r.confidence:.2f}"}</td>'
            f'<td class="desc"><details><summary>{desc}</summary>{_asi_html(r)}</details></td>'
            f'<td class="note" title="{esc(note)}">{esc(note)}</td>'
            f'<td class="mono">{esc(r.commit)}</td>'
            f'<td data-v="{_num_attr(r.timestamp)}">{_when(r.timestamp)}</td>'
            f'<td class="num" data-v="{_num_attr(r.duration_s)}">{"" if r.duration_s is None else f"{r.duration_s:.0f}s"}</td>'
            "</tr>\n"
        )
    return "".join(out)


def all_points(state: LedgerState) -> list[Point]:
    return [p for s in state.segments for p in points(s)]


def summary_html(state: LedgerState) -> str:
    seg = next((s for s in reversed(state.segments) if s.runs), None)
    if seg is None:
        return '<p class="empty">No runs yet: the first result appears here as soon as it is logged.</p>'
    c = seg.counts()
    best_run = seg.best_run
    base, best, d = seg.baseline, seg.best, seg.direction
    imp = improvement_pct(best, base, d)
    conf = seg.confidence
    band = confidence_band(conf)
    values = [r.value for r in seg.runs if r.value is not None]
    noise = mad(values) if len(values) >= 3 else None
    band_text = {"green": "likely real", "yellow": "marginal, could be noise", "red": "within noise",
                 "none": "undefined (under 3 results, zero spread or no improvement)"}[band]
    cost = state.cost_usd
    kept_imp = sum(1 for p in points(seg) if p.kept and not p.baseline)
    total_s = sum(r.duration_s or 0 for r in seg.runs)
    stamps = [r.timestamp for r in seg.runs if r.timestamp]
    unit = f" {seg.header.metric_unit}" if seg.header.metric_unit else ""
    cards = [
        ("baseline", f"{_fmt(base)}{unit}", f"run #{seg.baseline_run.run}" if seg.baseline_run else ""),
        ("best", f"{_fmt(best)}{unit}",
         "" if best_run is None else "the baseline" if best_run is seg.baseline_run
         else f"run #{best_run.run} · {best_run.commit}"),
        ("improvement", _pct(imp), f"{seg.header.metric_name}, {d} is better"),
        ("confidence", "-" if conf is None else f"{conf:.2f}×",
         f"{band_text}; noise floor (MAD) {_fmt(noise, 3)}"),
        ("runs", str(len(seg.runs)),
         f"{c['keep']} kept · {c['discard']} discarded · {c['crash']} crashed · {c['checks_failed']} checks_failed"),
        ("keep rate", f"{100 * kept_imp / max(len(seg.runs) - 1, 1):.0f}%", f"{kept_imp} kept improvement{'s' if kept_imp != 1 else ''}"),
        ("time", _duration(total_s) if total_s else "-",
         f"{_when(min(stamps))} → {_when(max(stamps))}" if stamps else ""),
    ]
    if cost:
        per = f"${cost / kept_imp:.2f} per kept improvement" if kept_imp else "no kept improvement yet"
        cards.append(("agent cost", f"${cost:.2f}", per))
    body = "".join(
        f'<div class="card{" band-" + band if k == "confidence" else ""}"><div class="k">{esc(k)}</div>'
        f'<div class="v">{esc(v)}</div><div class="s">{esc(s)}</div></div>'
        for k, v, s in cards)
    title = f"segment {seg.index} of {len(state.segments)}" if len(state.segments) > 1 else "session"
    return f'<h2>Summary <span class="muted">({esc(title)})</span></h2><div class="cards">{body}</div>' + _segments_table(state)


def _segments_table(state: LedgerState) -> str:
    segs = [s for s in state.segments if s.runs]
    if len(segs) < 2:
        return ""
    rows = []
    for s in segs:
        c = s.counts()
        conf = s.confidence
        rows.append(
            f"<tr><td>{s.index}</td><td>{esc(s.header.metric_name)} ({s.direction})</td><td>{len(s.runs)}</td>"
            f"<td>{c['keep']}/{c['discard']}/{c['crash']}/{c['checks_failed']}</td><td>{_fmt(s.baseline)}</td>"
            f"<td>{_fmt(s.best)}</td><td>{_pct(improvement_pct(s.best, s.baseline, s.direction))}</td>"
            f"<td>{'-' if conf is None else f'{conf:.2f}×'}</td></tr>")
    return ('<table class="segs"><thead><tr><th>segment</th><th>metric</th><th>runs</th>'
            "<th>keep/discard/crash/checks_failed</th><th>baseline</th><th>best</th><th>improvement</th>"
            "<th>confidence</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def kept_diffs(root: Path, commits: Sequence[str]) -> dict[str, str]:
    """`git show` of the given commits in one git process, keyed by the commit as given.
    Unknown commits (an imported session, a rewritten branch) are left out, never an error."""
    wanted = [c for c in dict.fromkeys(commits) if c and re.fullmatch(r"[0-9a-fA-F]{4,40}", c)]
    if not wanted:
        return {}
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "log", "--no-walk=unsorted", "--ignore-missing", "--no-color", "-p",
             "--format=%x00%H%x01", *wanted],
            capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    by_sha = {}
    for chunk in proc.stdout.decode("utf-8", errors="replace").split("\0")[1:]:
        sha, _, patch = chunk.partition("\x01")
        by_sha[sha] = patch.strip("\n")
    return {c: p for c in wanted for sha, p in by_sha.items() if sha.startswith(c.lower())}


def _diff_html(patch: str) -> str:
    lines = patch.splitlines()
    more = len(lines) - DIFF_MAX_LINES
    out = []
    for line in lines[:DIFF_MAX_LINES]:
        if line.startswith(("+++", "---", "diff --git", "index ")):
            cls = "m"
        elif line.startswith("+"):
            cls = "a"
        elif line.startswith("-"):
            cls = "d"
        elif line.startswith("@@"):
            cls = "h"
        else:
            out.append(esc(line) + "\n")
            continue
        out.append(f'<span class="{cls}">{esc(line)}</span>\n')
    if more > 0:
        out.append(f'<span class="m">… {more} more lines (git show)</span>\n')
    return "".join(out)


def diffs_html(state: LedgerState, diffs: dict[str, str]) -> str:
    kept = [p for p in all_points(state) if p.kept and not p.baseline]
    if not kept:
        return "<p class=\"empty\">No kept change yet.</p>"
    out = []
    for p in kept:
        r = p.r
        patch = diffs.get(r.commit)
        stats = f" · +{r.diff.get('added', 0)} −{r.diff.get('removed', 0)}" if r.diff else ""
        body = (f'<pre class="diff">{_diff_html(patch)}</pre>' if patch is not None
                else f'<p class="muted">commit {esc(r.commit)} is not in this repository</p>')
        out.append(
            f'<details class="kd"><summary><b>#{r.run}</b> {esc(r.description)} <span class="muted">· '
            f'{_fmt(r.value)} ({"" if p.delta is None else f"{p.delta:+.4g}"}) · {esc(r.commit)}{stats}</span>'
            f"</summary>{body}</details>")
    return "".join(out)


def page_html(state: LedgerState, root: Path, *, title: str, chart: str, diffs: dict[str, str],
              live_version: str | None = None) -> str:
    """The whole report page. With `live_version` the page polls the dashboard for new lines."""
    nonce = secrets.token_urlsafe(16)
    segs = sorted({r.segment for r in state.runs})
    seg_filter = ""
    if len(segs) > 1:
        seg_filter = ('<select id="seg"><option value="">all segments</option>'
                      + "".join(f'<option value="{s}">segment {s}</option>' for s in segs) + "</select>")
    status_filter = "".join(
        f'<label class="st {s}"><input type="checkbox" class="f-status" value="{s}" checked> {s}</label>'
        for s in STATUSES)
    live = ' data-live="1" data-version="' + esc(live_version) + '"' if live_version is not None else ""
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src 'nonce-{nonce}'; connect-src 'self'; base-uri 'none'; form-action 'none'")
    parts = {
        "CSP": csp, "NONCE": nonce, "TITLE": esc(title), "LIVE": live, "CSS": _CSS, "JS": _JS,
        "WHERE": esc(f"{root} · generated {generated}"), "STATUS_FILTER": status_filter, "SEG_FILTER": seg_filter,
        "SUMMARY": summary_html(state), "CHART": chart, "ROWS": rows_html(all_points(state)),
        "DIFFS": diffs_html(state, diffs),
    }
    # one pass: a "{{ROWS}}" inside a description is text, never a placeholder
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], _PAGE)


def chart_html(state: LedgerState, title: str) -> str:
    if not any(r.value is not None or r.status in ("crash", "checks_failed") for r in state.runs):
        return '<p class="empty">The chart appears with the first result.</p>'
    return chart_svg(state, title)


def report_html(state: LedgerState, root: Path, title: str) -> str:
    kept = [p.r.commit for p in all_points(state) if p.kept and not p.baseline]
    return page_html(state, root, title=title, chart=chart_html(state, title), diffs=kept_diffs(root, kept))


_CSS = """
:root{--keep:#1a9850;--discard:#8a8a8a;--crash:#d73027;--checks_failed:#8e44ad;--fg:#1d2330;--muted:#6b7280;
--line:#e5e7eb;--bg:#fafafa}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}main{max-width:1500px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:22px;margin:0}h2{font-size:17px;margin:28px 0 10px}.muted{color:var(--muted);font-weight:normal}
header{display:flex;justify-content:space-between;align-items:baseline;gap:12px;flex-wrap:wrap}
#live{font-size:12px;padding:2px 8px;border-radius:10px;background:#e8f5e9;color:#1b5e20}
#live.off{background:#fdecea;color:#b71c1c}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin:2px 0}.card .s{font-size:12px;color:var(--muted)}
.band-green .v{color:var(--keep)}.band-yellow .v{color:#b7791f}.band-red .v{color:var(--crash)}
table{border-collapse:collapse;background:#fff}table.segs{margin-top:12px}
.segs td,.segs th{border:1px solid var(--line);padding:4px 8px;font-size:13px}
#chart svg{width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:8px}
.filters{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin:6px 0 10px}
.filters input[type=search]{padding:5px 8px;min-width:320px;border:1px solid #ccc;border-radius:6px}
#runs{width:100%;font-size:13px}#runs th{position:sticky;top:0;background:#f3f4f6;cursor:pointer;
text-align:left;padding:6px;border-bottom:2px solid var(--line);white-space:nowrap;user-select:none}
#runs th[aria-sort=ascending]::after{content:" ▲"}#runs th[aria-sort=descending]::after{content:" ▼"}
#runs td{padding:4px 6px;border-bottom:1px solid var(--line);vertical-align:top}
#runs tr:hover td{background:#f9fafb}.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.good{color:var(--keep)}.bad{color:var(--crash)}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}
.note{color:var(--muted);max-width:360px}.desc{max-width:520px}.desc summary{cursor:pointer}
dl{margin:6px 0 2px;display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;font-size:12px}
dt{color:var(--muted)}dd{margin:0;white-space:pre-wrap;word-break:break-word}
.st{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px;white-space:nowrap}
.st.keep{background:#e6f4ea;color:#13653a}.st.discard{background:#eee;color:#555}
.st.crash{background:#fdecea;color:#a3221a}.st.checks_failed{background:#f3e8fa;color:#6c2d8f}
label.st{padding:2px 8px;cursor:pointer}
.kd{background:#fff;border:1px solid var(--line);border-radius:6px;margin:6px 0;padding:6px 10px}
.kd summary{cursor:pointer}pre.diff{font:12px/1.4 ui-monospace,Menlo,monospace;overflow:auto;max-height:600px;
margin:8px 0 2px;padding:8px;background:#fbfbfb}pre.diff .a{color:#116329;background:#e6ffec}
pre.diff .d{color:#82071e;background:#ffebe9}pre.diff .h{color:#0550ae}pre.diff .m{color:#6b7280}
.empty{color:var(--muted);font-style:italic}
"""

_JS = r"""
(() => {
  const $ = (s) => document.querySelector(s);
  const table = $('#runs'), tbody = table.tBodies[0], heads = Array.from(table.tHead.rows[0].cells);
  let sortCol = -1, sortDir = 1;
  const key = (tr, i) => {
    const c = tr.cells[i];
    if (c.dataset.v !== undefined) return c.dataset.v === '' ? null : parseFloat(c.dataset.v);
    return c.textContent.trim().toLowerCase();
  };
  function sortRows() {
    if (sortCol < 0) return;
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = key(a, sortCol), y = key(b, sortCol);
      if (x === null || y === null) return (x === null) - (y === null);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    const f = document.createDocumentFragment();
    rows.forEach((r) => f.appendChild(r));
    tbody.appendChild(f);
  }
  heads.forEach((th, i) => th.addEventListener('click', () => {
    sortDir = sortCol === i ? -sortDir : 1; sortCol = i;
    heads.forEach((h) => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', sortDir > 0 ? 'ascending' : 'descending');
    sortRows();
  }));
  function applyFilter() {
    const on = new Set(Array.from(document.querySelectorAll('.f-status:checked')).map((c) => c.value));
    const q = $('#q').value.trim().toLowerCase(), seg = $('#seg') ? $('#seg').value : '';
    let shown = 0;
    for (const tr of tbody.rows) {
      if (tr._text === undefined) tr._text = tr.textContent.toLowerCase();
      const ok = on.has(tr.dataset.status) && (!seg || tr.dataset.seg === seg) && (!q || tr._text.includes(q));
      tr.hidden = !ok; shown += ok;
    }
    $('#shown').textContent = shown + ' of ' + tbody.rows.length + ' runs';
  }
  document.querySelectorAll('.f-status, #seg').forEach((el) => el.addEventListener('change', applyFilter));
  $('#q').addEventListener('input', applyFilter);
  applyFilter();
  if (document.body.dataset.live !== '1') return;
  let version = document.body.dataset.version;
  const badge = $('#live');
  badge.hidden = false;
  async function poll() {
    try {
      const r = await fetch('api/update?v=' + encodeURIComponent(version) + '&n=' + tbody.rows.length,
                            {cache: 'no-store'});
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const d = await r.json();
      if (d.reload) { location.reload(); return; }
      if (d.version !== version) {
        version = d.version;
        if (d.rows) tbody.insertAdjacentHTML('beforeend', d.rows);
        for (const k of ['summary', 'chart', 'diffs']) if (d[k] !== undefined) $('#' + k).innerHTML = d[k];
        sortRows(); applyFilter();
      }
      badge.className = ''; badge.textContent = 'live · checked ' + new Date().toLocaleTimeString();
    } catch (e) {
      badge.className = 'off'; badge.textContent = 'dashboard unreachable (' + e.message + '), retrying';
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{CSP}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}} · autoresearch</title><style>{{CSS}}</style></head>
<body{{LIVE}}><main>
<header><h1>{{TITLE}}</h1><span class="muted">{{WHERE}} <span id="live" hidden>live</span></span></header>
<section id="summary">{{SUMMARY}}</section>
<h2>Progress</h2><section id="chart">{{CHART}}</section>
<h2>Runs</h2>
<div class="filters">{{STATUS_FILTER}}{{SEG_FILTER}}
<input id="q" type="search" placeholder="filter: description, hypothesis, ASI, commit…">
<span id="shown" class="muted"></span></div>
<table id="runs"><thead><tr><th>#</th><th>seg</th><th>status</th><th>metric</th><th>Δ best</th><th>conf</th>
<th>description (click for ASI)</th><th>hypothesis / reason</th><th>commit</th><th>time</th><th>took</th></tr></thead>
<tbody>{{ROWS}}</tbody></table>
<h2>Kept changes</h2><section id="diffs">{{DIFFS}}</section>
</main><script nonce="{{NONCE}}">{{JS}}</script></body></html>
"""


# --------------------------------------------------------------------------- TSV

TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")


def _tsv_field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def memory_gb(r: RunRecord) -> float:
    """karpathy's memory_gb: peak_vram_mb / 1024; peak_rss_mb where no VRAM was measured."""
    mb = r.metrics.get("peak_vram_mb", r.metrics.get("peak_rss_mb"))
    return 0.0 if mb is None or not math.isfinite(mb) else mb / 1024


def tsv_text(runs: Iterable[RunRecord], metric_column: str = "val_bpb") -> str:
    """karpathy's results.tsv: one row per run. Runs without a value (crash, checks_failed) are
    written as crash rows with 0.000000 and 0.0; checks_failed says so in its description."""
    lines = ["\t".join(("commit", _tsv_field(metric_column), "memory_gb", "status", "description"))]
    for r in runs:
        v = r.value
        status = r.status if v is not None else "crash"
        if status not in ("keep", "discard", "crash"):
            status = "discard"
        desc = _tsv_field(r.description)
        if r.status == "checks_failed":
            desc = f"checks_failed: {desc}"
        value, mem = (f"{v:.6f}", f"{memory_gb(r):.1f}") if v is not None else ("0.000000", "0.0")
        lines.append("\t".join((_tsv_field(r.commit), value, mem, status, desc)))
    return "\n".join(lines) + "\n"


def parse_tsv(text: str, source: str = "results.tsv") -> tuple[str, list[tuple[str, float, float, str, str]]]:
    """Parse karpathy's results.tsv -> (metric column name, rows). Raises TSVError naming the line."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise TSVError(f"{source} is empty")
    head = [h.strip() for h in lines[0].split("\t")]
    if len(head) != 5 or head[0] != "commit" or head[2:] != ["memory_gb", "status", "description"]:
        raise TSVError(f"{source}: line 1 must be the header {' '.join(TSV_COLUMNS)} (tab-separated), "
                       f"not {lines[0][:120]!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 5:
            raise TSVError(f"{source}: line {i} has {len(f)} tab-separated fields, expected 5 "
                           "(a tab inside the description?)")
        commit, val, mem, status, desc = (x.strip() for x in f)
        status = status.lower()
        if status not in ("keep", "discard", "crash"):
            raise TSVError(f"{source}: line {i}: status must be keep, discard or crash, not {status!r}")
        try:
            value, gb = float(val), float(mem)
        except ValueError:
            raise TSVError(f"{source}: line {i}: {head[1]} and memory_gb must be numbers, not {val!r}, {mem!r}") from None
        if not (math.isfinite(value) and math.isfinite(gb)):
            raise TSVError(f"{source}: line {i}: {head[1]} and memory_gb must be finite")
        rows.append((commit, value, gb, status, desc))
    if not rows:
        raise TSVError(f"{source} has a header but no rows")
    return head[1], rows


def import_lines(metric: str, rows: Sequence[tuple[str, float, float, str, str]], *, direction: Direction,
                 source: str, first_run: int, segment: int, end_time: float, spacing_s: float = 300.0) -> list[dict[str, Any]]:
    """Ledger lines for a karpathy session: a config header, then one run line per row.

    Row 1 is the baseline (kept when it has a value). Timestamps are synthesized `spacing_s`
    apart ending at `end_time` (karpathy's runs take ~5 minutes) and marked in asi, as is the
    origin. `crash` rows whose description starts with "checks_failed: " (how `export` writes
    them) come back as checks_failed.
    """
    out: list[dict[str, Any]] = [header_line(f"imported from {source}", metric, "", direction, imported_from=source)]
    standing = Standing()
    for i, (commit, value, gb, status, desc) in enumerate(rows):
        if status == "crash" and desc.startswith("checks_failed: "):
            status, desc = "checks_failed", desc[len("checks_failed: "):]
        has_value = status != "crash" and status != "checks_failed"
        first = i == 0 and has_value
        if first:
            status = "keep"
        kind = cast(Status, status)  # parse_tsv admits keep, discard and crash only
        standing = standing.after(value if has_value else None, kind, direction)
        out.append(run_line(
            run=first_run + i, commit=commit, status=kind, description=desc,
            metric=value if has_value else None,
            metrics={metric: value, "peak_vram_mb": round(gb * 1024, 1)} if has_value else {},
            timestamp=int(end_time - (len(rows) - 1 - i) * spacing_s), segment=segment,
            confidence=standing.confidence if has_value else None,
            asi={"imported_from": source, "timestamp_synthesized": True}, extra={"baseline": True} if first else None,
        ))
    return out
