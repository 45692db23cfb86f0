"""A self-contained HTML report of a session, and the parts the live dashboard updates.

Everything is computed from the ledger fold (`harness.ledger`). The HTML loads nothing: CSS,
script and chart (inline SVG, `harness.chart`) are in the file, everything from the ledger is
escaped (an LLM agent wrote it), and a Content-Security-Policy with a per-page nonce stops
anything else from running or loading, as a second line of defence.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.chart import chart_svg
from harness.ledger import STATUSES, LedgerState, RunRecord
from harness.points import (
    Point,
    all_points,
    clean_state,
    fmt,
    heldout_name,
    heldout_value,
    number,
    pct,
    pct_text,
    points,
    shorten,
)
from harness.stats import confidence_band, mad

DIFF_MAX_LINES = 1500  # per kept run in the report
# control characters other than tab, newline and CR: not allowed in HTML, and an agent may write them
_HTML_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _pct(v: float | None) -> str:
    return pct_text(v)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def esc(x: Any) -> str:
    """HTML-escaped, with control characters shown as visible escapes (ESC as "\\x1b")."""
    text = _HTML_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(x))
    return html.escape(text, quote=True)


def _heldout_cell(r: RunRecord) -> str:
    """The run's held-out metric (kept runs are evaluated on it), or its evaluation's error."""
    h = r.raw.get("heldout")
    if not isinstance(h, dict):
        return '<td class="num" data-v=""></td>'
    name = next((k for k in h if k != "error"), "")
    v = heldout_value(r, name)
    if v is None and h.get("error"):
        return f'<td class="num bad" data-v="" title="{esc(h["error"])}">error</td>'
    return f'<td class="num" data-v="{_num_attr(v)}" title="{esc(name)}">{fmt(v)}</td>'


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
            f'<td class="num" data-v="{_num_attr(v)}">{fmt(v)}</td>'
            f'<td class="num{cls}" data-v="{_num_attr(delta)}">{"" if delta is None else f"{delta:+.4g}"}</td>'
            f'<td class="num" data-v="{_num_attr(r.confidence)}">{"" if r.confidence is None else f"{r.confidence:.2f}"}</td>'
            f"{_heldout_cell(r)}"
            f'<td class="desc"><details><summary>{desc}</summary>{_asi_html(r)}</details></td>'
            f'<td class="note" title="{esc(note)}">{esc(note)}</td>'
            f'<td class="mono">{esc(r.commit)}</td>'
            f'<td data-v="{_num_attr(r.timestamp)}">{_when(r.timestamp)}</td>'
            f'<td class="num" data-v="{_num_attr(r.duration_s)}">{"" if r.duration_s is None else f"{r.duration_s:.0f}s"}</td>'
            "</tr>\n"
        )
    return "".join(out)


def summary_html(state: LedgerState) -> str:
    seg = next((s for s in reversed(state.segments) if s.runs), None)
    if seg is None:
        return '<p class="empty">No runs yet: the first result appears here as soon as it is logged.</p>'
    c = seg.counts()
    best_run = seg.best_run
    base, best, d = seg.baseline, seg.best, seg.direction
    imp = pct(best, base, d)
    conf = number(seg.confidence)
    # the band's colour and words only where the noise was measured (a calibrated segment)
    band = confidence_band(conf) if seg.calibration is not None else "none"
    values = [r.value for r in seg.runs if r.value is not None]
    noise = mad(values) if len(values) >= 3 else None
    band_text = {"green": "likely real", "yellow": "marginal, could be noise", "red": "within noise",
                 "none": "undefined (under 3 results, zero spread or no improvement)"}[band]
    if seg.calibration is None:
        band_text = "the seed's MAD rule; noise not measured"
    cost = state.cost_usd
    kept_imp = sum(1 for p in points(seg) if p.kept and not p.baseline)
    total_s = sum(r.duration_s or 0 for r in seg.runs)
    stamps = [r.timestamp for r in seg.runs if r.timestamp]
    unit = f" {seg.header.metric_unit}" if seg.header.metric_unit else ""
    cards = [
        ("baseline", f"{fmt(base)}{unit}", f"run #{seg.baseline_run.run}" if seg.baseline_run else ""),
        ("best", f"{fmt(best)}{unit}",
         "" if best_run is None else "the baseline" if best_run is seg.baseline_run
         else f"run #{best_run.run} · {best_run.commit}"),
        ("improvement", _pct(imp), f"{seg.header.metric_name}, {d} is better; the gain over the baseline divided by "
                                   "|baseline|"),
        ("confidence", "-" if conf is None else f"{conf:.2f}×",
         f"{band_text}; noise floor (MAD) {fmt(noise, 3)}"),
        ("runs", str(len(seg.runs)),
         f"{c['keep']} kept · {c['discard']} discarded · {c['crash']} crashed · {c['checks_failed']} checks_failed"),
        ("keep rate", f"{100 * kept_imp / max(len(seg.runs) - 1, 1):.0f}%", f"{kept_imp} kept improvement{'s' if kept_imp != 1 else ''}"),
        ("time", _duration(total_s) if total_s else "-",
         f"{_when(min(stamps))} → {_when(max(stamps))}" if stamps else ""),
    ]
    name = heldout_name(seg.runs)
    if name:
        hb = heldout_value(seg.baseline_run, name) if seg.baseline_run else None
        hk = heldout_value(best_run, name) if best_run else None
        cards.insert(2, ("held-out", f"{fmt(hb)} → {fmt(hk)}",
                         f"{name}: baseline → best run; never used to decide (overfitting to the selection "
                         "split shows here)"))
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
        conf = number(s.confidence)
        rows.append(
            f"<tr><td>{s.index}</td><td>{esc(s.header.metric_name)} ({s.direction})</td><td>{len(s.runs)}</td>"
            f"<td>{c['keep']}/{c['discard']}/{c['crash']}/{c['checks_failed']}</td><td>{fmt(s.baseline)}</td>"
            f"<td>{fmt(s.best)}</td><td>{_pct(pct(s.best, s.baseline, s.direction))}</td>"
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
        name = heldout_name([r])
        if name:
            stats += f" · held-out {esc(name)} {fmt(heldout_value(r, name))}"
        body = (f'<pre class="diff">{_diff_html(patch)}</pre>' if patch is not None
                else f'<p class="muted">commit {esc(r.commit)} is not in this repository</p>')
        out.append(
            f'<details class="kd"><summary><b>#{r.run}</b> {esc(r.description)} <span class="muted">· '
            f'{fmt(r.value)} ({"" if p.delta is None else f"{p.delta:+.4g}"}) · {esc(r.commit)}{stats}</span>'
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
        "DIFFS": diffs_html(state, diffs), "HELDOUT": esc(heldout_name(state.runs) or "held-out"),
    }
    # one pass: a "{{ROWS}}" inside a description is text, never a placeholder
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], _PAGE)


def chart_html(state: LedgerState, title: str) -> str:
    if not any(r.value is not None or r.status in ("crash", "checks_failed") for r in state.runs):
        return '<p class="empty">The chart appears with the first result.</p>'
    return chart_svg(state, title)


def report_html(state: LedgerState, root: Path, title: str) -> str:
    state = clean_state(state)  # the values every view shows (harness.points)
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
<th title="the held-out metric, evaluated for kept runs; never used to decide">{{HELDOUT}}</th><th>description (click for ASI)</th><th>hypothesis / reason</th><th>commit</th><th>time</th><th>took</th></tr></thead>
<tbody>{{ROWS}}</tbody></table>
<h2>Kept changes</h2><section id="diffs">{{DIFFS}}</section>
</main><script nonce="{{NONCE}}">{{JS}}</script></body></html>
"""
