"""karpathy's progress chart (progress.png) from the ledger fold.

It uses matplotlib's object API on an Agg canvas (never pyplot, so no global backend or
figure state is touched); which way is better comes from `harness.stats`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from harness.ledger import LedgerState, Segment
from harness.points import (
    Point,
    clean_state,
    fmt,
    heldout_name,
    heldout_value,
    kept_improvements,
    number,
    pct,
    pct_text,
    points,
    printable,
    shorten,
)
from harness.stats import Direction, gain, mad

COLORS = {"keep": "#1a9850", "discard": "#a0a0a0", "crash": "#d73027", "checks_failed": "#8e44ad",
          "baseline": "#2166ac", "best": "#1a9850", "heldout": "#e08214"}
MAX_LABELS = 40  # with more kept runs, only the biggest improvements are labelled
STRIP_IN = 0.38  # height of the "no value" strip under a panel with crashes, in inches


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
    baseline marked, the held-out metric of kept runs on a right-hand axis, crashes and
    checks_failed as x marks in a strip of their own under the panel ("no value": below the
    best line they would read as values). The legend lists only what was drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    Figure, FigureCanvasAgg = _mpl()
    state = clean_state(state)
    segs = [s for s in state.segments if s.runs]
    panel_h = 5.2 if len(segs) <= 2 else 4.2
    stripped = [any(r.value is None and r.status in ("crash", "checks_failed") for r in s.runs) for s in segs]
    extra = STRIP_IN if any(stripped) else 0.0  # room for the strips under the panels
    top_in, bottom_in, gap_in = 1.0, 0.55 + extra, 0.85 + extra
    height = top_in + bottom_in + len(segs) * panel_h + (len(segs) - 1) * gap_in
    fig = Figure(figsize=(14, height), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(segs), 1, squeeze=False, gridspec_kw={
        "left": 0.06, "right": 0.94 if heldout_name(state.runs) else 0.985, "top": 1 - top_in / height,
        "bottom": bottom_in / height, "hspace": gap_in / panel_h})[:, 0]
    n_runs = sum(len(s.runs) for s in segs)
    k = kept_improvements(state)
    fig.suptitle(f"{title}: {n_runs} experiment{'s' if n_runs != 1 else ''}, {k} kept improvement{'s' if k != 1 else ''}",
                 fontsize=15, fontweight="bold", x=0.06, ha="left", y=1 - 0.18 / height, parse_math=False)
    renderer = fig.canvas.get_renderer()
    drawn: set[str] = set()
    for ax, seg, has_strip in zip(axes, segs, stripped, strict=True):
        # the strip is the panel's own inset, just under it, on its x-axis
        h = STRIP_IN / (ax.get_position().height * height)
        strip = ax.inset_axes((0.0, -h, 1.0, h), sharex=ax) if has_strip else None
        drawn |= _draw_segment(ax, strip, seg, renderer, blended_transform_factory(ax.transData, ax.transAxes))
    name = heldout_name(state.runs)
    handles = [h for kind, h in [
        ("discarded", Line2D([], [], ls="", marker="o", ms=5, color=COLORS["discard"], alpha=0.6, label="discarded")),
        ("kept", Line2D([], [], ls="", marker="o", ms=7, mfc=COLORS["keep"], mec="#0b5d2c", label="kept")),
        ("best", Line2D([], [], color=COLORS["best"], lw=2, label="running best")),
        ("baseline", Line2D([], [], ls="", marker="*", ms=12, color=COLORS["baseline"], label="baseline")),
        ("heldout", Line2D([], [], ls="--", lw=1, marker="D", ms=5, color=COLORS["heldout"],
                           label=f"held-out {name} (kept runs, right axis)")),
        ("crash", Line2D([], [], ls="", marker="x", ms=6, color=COLORS["crash"], label="crash (no value)")),
        ("checks_failed", Line2D([], [], ls="", marker="x", ms=6, color=COLORS["checks_failed"],
                                 label="checks_failed (no value)")),
        ("off", Line2D([], [], ls="", marker="^", ms=6, color=COLORS["discard"], label="off the chart")),
    ] if kind in drawn]
    fig.legend(handles=handles, loc="upper right", ncol=max(len(handles), 1), fontsize=9, frameon=False,
               bbox_to_anchor=(0.985, 1 - 0.5 / height))
    return fig


def _draw_failed(strip: Any, failed: dict[str, list[int]]) -> set[str]:
    """Runs without a value as x marks in the strip under the panel, on the panel's x-axis: a
    band of its own, labelled, so that no mark sits at a y a value could have."""
    strip.set_ylim(0, 1)
    strip.set_yticks([0.5], ["no value"])
    strip.set_facecolor("#f7f7f7")
    strip.tick_params(labelsize=8, length=0, axis="y")
    strip.tick_params(labelsize=8, axis="x")
    strip.grid(True, axis="x", color="#dddddd", lw=0.6)
    for status, xs in failed.items():
        strip.scatter(xs, [0.5] * len(xs), marker="x", s=18, lw=0.9, color=COLORS[status], zorder=2)
    return {s for s, xs in failed.items() if xs}


def _draw_heldout(ax: Any, kept: list[Point], name: str | None) -> set[str]:
    """The held-out metric of the kept runs (evaluated for keeps only, never used to decide) on
    a right-hand axis of its own: it may be on another scale, and its trend against the
    selection metric's is the overfitting signal."""
    pts = [(p.r.run, v) for p in kept if name and (v := heldout_value(p.r, name)) is not None]
    if not pts:
        return set()
    ax2 = ax.twinx()
    xs, ys = zip(*pts, strict=True)
    ax2.plot(xs, ys, ls="--", lw=1, marker="D", ms=4.5, color=COLORS["heldout"], alpha=0.9, zorder=3)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.25 or abs(hi) * 0.02 or 1.0
    ax2.set_ylim(lo - pad, hi + pad)
    ax2.set_ylabel(f"held-out {name}", fontsize=9, color=COLORS["heldout"])
    ax2.tick_params(labelsize=8, colors=COLORS["heldout"])
    ax2.ticklabel_format(axis="y", useOffset=False, style="plain")
    return {"heldout"}


def _draw_segment(ax: Any, strip: Any, seg: Segment, renderer: Any, edge: Any) -> set[str]:
    """One panel; `strip` (an axes under it, or None when every run has a value) takes the runs
    without a value. Returns the kinds drawn, for the legend."""
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
    drawn = _draw_failed(strip, failed) if strip is not None else set()
    # with a strip, its tick labels are the panel's, and the label goes under both
    ax.set_xlabel("experiment #", fontsize=9, labelpad=4 if strip is None else STRIP_IN * 72 + 14)
    if strip is not None:
        ax.tick_params(labelbottom=False)
    ax.set_ylabel(seg.header.metric_name + (f" ({seg.header.metric_unit})" if seg.header.metric_unit else ""),
                  fontsize=9)
    ax.tick_params(labelsize=8)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs_all = [p.r.run for p in pts]
    ax.set_xlim(min(xs_all) - 0.5 - 0.01 * len(pts), max(xs_all) + 0.5 + 0.01 * len(pts))
    if not kept:  # only crashes so far
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no valid result yet", transform=ax.transAxes, ha="center", color="#777777")
        return drawn
    base, best = seg.baseline, seg.best
    assert base is not None and best is not None
    values = [p.r.value for p in pts if p.r.value is not None]
    noise = mad(values) if len(values) >= 3 else 0.0
    lo, hi = _window(base, best, [_value(p) for p in kept], [_value(p) for p in others], noise, d)
    rng = (hi - lo) or abs(hi) * 0.02 or 1.0
    pad_better, pad_worse, pad_strip = 0.16 * rng, 0.06 * rng, 0.04 * rng  # pad_strip: room for the arrows
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
    ax.scatter(above, [0.985] * len(above), transform=edge, marker="^", s=16, color=COLORS["discard"],
               alpha=0.7, lw=0, zorder=2)
    ax.scatter(below, [0.025] * len(below), transform=edge, marker="v", s=16, color=COLORS["discard"],
               alpha=0.7, lw=0, zorder=2)
    drawn |= {"discarded"} if inside else set()
    drawn |= {"off"} if above or below else set()

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
    imp = pct(best, base, d)
    conf = number(seg.confidence)
    ax.set_title(f"baseline {fmt(base)}  best {fmt(best)}"
                 + ("" if imp is None else f"  ({pct_text(imp)})")
                 + (f"  confidence {conf:.1f}x" if conf is not None else ""), loc="right", fontsize=10)
    _label_kept(ax, renderer, kept, up_is_better)
    drawn |= {"best", "baseline"} | ({"kept"} if any(not p.baseline for p in kept) else set())
    return drawn | _draw_heldout(ax, kept, heldout_name(seg.runs))


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
    floor = box.y0 + 0.08 * box.height  # keep the bottom arrows clear
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
        text = "baseline" if p.baseline else shorten(printable(p.r.description), 42)
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
