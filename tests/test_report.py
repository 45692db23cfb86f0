"""plot, report, export/import and the dashboard's server: literal ledgers, a synthetic
1,000-run session (scripts/bench_report.py), a real toy session for diffs.

Run: python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from matplotlib.text import Text
from toy import cli, make_toy, set_constant

from harness import chart, ledger, points, tsv
from harness.dashboard import LiveLedger, make_server

_spec = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[1] / "scripts" / "bench_report.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def run_line(run: int, metric: float, status: str, description: str = "", **extra) -> dict:
    return {"run": run, "commit": f"{run:07x}", "metric": metric, "metrics": extra.pop("metrics", {}),
            "status": status, "description": description or f"change {run}", "timestamp": 1_760_000_000 + 300 * run,
            "segment": 0, "confidence": None, **extra}


def write_ledger(root: Path, lines: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / ledger.LEDGER_NAME
    with open(path, "wb") as f:
        for line in lines:
            f.write(ledger.encode(line))
    return root


def small(direction: str = "lower", metric: str = "val_bpb") -> list[dict]:
    sign = 1 if direction == "lower" else -1
    return [
        ledger.header_line("tiny", metric, "", direction),
        run_line(1, 1.0, "keep", "baseline", metrics={metric: 1.0, "peak_vram_mb": 45060.2}),
        run_line(2, 1.0 - sign * 0.01, "keep", "raise LR", metrics={"peak_vram_mb": 46080.0},
                 asi={"hypothesis": "faster"}),
        run_line(3, 1.0 + sign * 0.02, "discard", "deeper\tmodel", metrics={"peak_rss_mb": 2048.0},
                 asi={"rollback_reason": "worse"}),
        run_line(4, 0, "crash", "OOM", asi={"rollback_reason": "CUDA out of memory"}),
        run_line(5, 0, "checks_failed", "touch eval", asi={"rollback_reason": "fixed files changed"}),
        run_line(6, 1.0 + sign * 5.0, "discard", "diverged"),
        run_line(7, 1.0 - sign * 0.03, "keep", "warmdown 0.5"),
    ]


# ---------------------------------------------------------------- pure parts


def test_points_track_the_running_best_in_both_directions() -> None:
    for direction in ("lower", "higher"):
        state = ledger.fold(ledger.parse_lines(b"".join(ledger.encode(x) for x in small(direction))).entries)
        pts = points.points(state.segments[0])
        assert [p.baseline for p in pts] == [True] + [False] * 6
        assert [p.kept for p in pts] == [True, True, False, False, False, False, True]
        assert pts[1].gain == pytest.approx(0.01) and pts[2].gain == pytest.approx(-0.03)
        assert pts[6].best_before == pytest.approx(pts[1].r.value)
        assert pts[6].best_after == pytest.approx(pts[6].r.value)
        assert pts[3].delta is None and pts[0].delta is None


def test_window_leaves_out_diverged_runs_but_keeps_every_kept_value() -> None:
    lo, hi = chart._window(1.0, 0.95, [1.0, 0.97, 0.95], [1.01, 0.99, 1.02, 1.005, 6.0], 0.01, "lower")
    assert lo == 0.95 and 1.01 <= hi < 6.0
    lo, hi = chart._window(1.0, 1.05, [1.0, 1.05], [0.99, 0.98, -4.0, 0.97], 0.01, "higher")
    assert hi == 1.05 and -4.0 < lo <= 0.98


def test_tsv_is_karpathys_format_exactly() -> None:
    state = ledger.fold(ledger.parse_lines(b"".join(ledger.encode(x) for x in small())).entries)
    assert tsv.tsv_text(state.runs) == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "0000001\t1.000000\t44.0\tkeep\tbaseline\n"
        "0000002\t0.990000\t45.0\tkeep\traise LR\n"
        "0000003\t1.020000\t2.0\tdiscard\tdeeper model\n"  # rss when there is no VRAM; the tab is gone
        "0000004\t0.000000\t0.0\tcrash\tOOM\n"
        "0000005\t0.000000\t0.0\tcrash\tchecks_failed: touch eval\n"
        "0000006\t6.000000\t0.0\tdiscard\tdiverged\n"
        "0000007\t0.970000\t0.0\tkeep\twarmdown 0.5\n"
    )


def test_tsv_parse_errors_name_the_line() -> None:
    head = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    for text, msg in [
        ("", "is empty"),
        ("commit,val_bpb\n", "line 1 must be the header"),
        (head, "no rows"),
        (head + "abc\t1.0\t2.0\tkept\tx\n", "line 2: status must be"),
        (head + "abc\tnan?\t2.0\tkeep\tx\n", "line 2: a keep row needs a finite number in val_bpb"),
        (head + "\nabc\t1.0\t2.0\tkeep\tx\ty\n", "line 3 has 6 tab-separated fields"),
    ]:
        with pytest.raises(tsv.TSVError, match=re.escape(msg)):
            tsv.parse_tsv(text)


# ------------------------------------------------------------------ commands


def test_plot_writes_png_svg_pdf_for_both_directions(tmp_path: Path, capsys) -> None:
    for direction in ("lower", "higher"):
        root = write_ledger(tmp_path / direction, small(direction))
        assert cli(root, "plot") == 0
        assert (root / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert cli(root, "plot", "-o", "chart.svg") == 0
        svg = (root / "chart.svg").read_text()
        assert "<svg" in svg and "raise LR" in svg and "<script" not in svg
        assert cli(root, "plot", "-o", "chart.pdf") == 0
        assert (root / "chart.pdf").read_bytes()[:4] == b"%PDF"
    assert "(7 runs, 2 kept improvements, 1 segment;" in capsys.readouterr().out


def test_chart_with_1000_runs_labels_at_most_40_per_panel_without_overlaps(tmp_path: Path) -> None:
    state = ledger.fold(ledger.parse_lines(b"".join(ledger.encode(x) for x in bench.synthetic_lines(1000))).entries)
    fig = chart.draw_chart(state, "bench")
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(panels) == 3
    for ax in panels:
        labels = ax.texts
        assert 10 <= len(labels) <= chart.MAX_LABELS + 1  # + the baseline
        for t in labels:
            t.update_positions(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its leader line
        inside = ax.get_window_extent(renderer)
        for i, a in enumerate(boxes):
            assert inside.x0 - 1 <= a.x0 and a.x1 <= inside.x1 + 1
            assert not any(a.overlaps(b) for b in boxes[i + 1:]), labels[i].get_text()
    # descriptions with $...$ are text, not mathtext
    assert any("$x^2$" in t.get_text() for ax in panels for t in ax.texts)


def test_report_is_self_contained_escaped_and_has_everything(tmp_path: Path) -> None:
    lines = small()
    lines[0]["name"] = f"session {XSS}"
    lines[2]["description"] = f"raise LR {XSS}"
    lines[2]["asi"] = {"hypothesis": XSS, XSS: "key too", "nested": {"a": [1, XSS]}}
    lines[3]["agent"] = {"name": "claude", "cost_usd": 0.25}
    lines[4]["description"] = "{{ROWS}} {{DIFFS}}"  # template placeholders in ledger text stay text
    root = write_ledger(tmp_path / "ws", lines)
    assert cli(root, "report") == 0
    page = (root / "report.html").read_text()
    assert "window.__xss" in page  # the payload is there, as text
    assert "<script>window" not in page and "<img src=x" not in page
    assert page.count("<script") == 1 and re.search(r'<script nonce="[\w-]{20,}">', page)
    assert not re.search(r'(src|href)\s*=\s*"?(https?:|//)', page) and "@import" not in page
    assert "script-src 'nonce-" in page  # the CSP: nothing without the nonce runs
    assert page.count("<tr data-status=") == 7 and "{{ROWS}} {{DIFFS}}" in page
    assert "<svg" in page and "$0.25" in page and "baseline" in page
    for text in ("improvement", "confidence", "noise floor", "3 kept"):
        assert text in page


def test_report_shows_the_diff_of_each_kept_run(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.03")
    cli(root, "experiment", "-d", "LR up", "--asi", '{"hypothesis": "closer"}')
    set_constant(root, "LR", "0.9")
    cli(root, "experiment", "-d", "LR way up", "--asi", '{"hypothesis": "more"}')
    assert cli(root, "report", "-o", str(tmp_path / "r.html")) == 0
    page = (tmp_path / "r.html").read_text()
    assert '<span class="a">+LR = 0.03' in page and '<span class="d">-LR = 0.01' in page
    assert "LR = 0.9" not in page.split('id="diffs"')[1]  # only kept runs' diffs


def test_export_import_round_trip_and_refusals(tmp_path: Path, capsys) -> None:
    root = write_ledger(tmp_path / "ws", small())
    assert cli(root, "export", "--tsv") == 0
    tsv = (root / "results.tsv").read_text()
    assert capsys.readouterr().err == ""  # val_bpb, lower: nothing to warn about
    dest = tmp_path / "imported"
    dest.mkdir()
    assert cli(dest, "import", "--tsv", str(root / "results.tsv")) == 0
    runs = ledger.load_state(dest / ledger.LEDGER_NAME).runs
    assert [r.status for r in runs] == ["keep", "keep", "discard", "crash", "checks_failed", "discard", "keep"]
    assert runs[0].raw["baseline"] and runs[0].asi["imported_from"] == "results.tsv"
    assert runs[-1].timestamp - runs[0].timestamp == 6 * 300
    assert cli(dest, "export", "--tsv", "-o", "again.tsv") == 0
    assert (dest / "again.tsv").read_text() == tsv
    # a second import refuses, --append makes a new segment
    assert cli(dest, "import", "--tsv", str(root / "results.tsv")) == 2
    assert "--append" in capsys.readouterr().err
    assert cli(dest, "import", "--tsv", str(root / "results.tsv"), "--append") == 0
    state = ledger.load_state(dest / ledger.LEDGER_NAME)
    assert len(state.segments) == 2 and [r.run for r in state.segments[1].runs][0] == 8
    capsys.readouterr()
    assert cli(dest, "export", "--tsv", "-o", "-") == 0
    assert capsys.readouterr().out.count("\n") == 8  # the current segment only, by default
    # a broken file is one line on stderr
    (tmp_path / "bad.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\tx\t1\tkeep\td\n")
    assert cli(tmp_path / "ws", "import", "--tsv", str(tmp_path / "bad.tsv")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2" in err


def test_export_warns_when_the_metric_is_not_val_bpb(tmp_path: Path, capsys) -> None:
    root = write_ledger(tmp_path / "ws", small("higher", "accuracy"))
    assert cli(root, "export", "--tsv", "-o", "-") == 0
    out, err = capsys.readouterr()
    assert out.startswith("commit\tval_bpb\t") and "accuracy (higher is better)" in err and "--metric-column" in err
    assert cli(root, "export", "--tsv", "-o", "-", "--metric-column", "accuracy") == 0
    out, err = capsys.readouterr()
    assert out.startswith("commit\taccuracy\t") and err == ""


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    only_header = write_ledger(tmp_path / "hdr", [ledger.header_line("x", "m", "", "lower")])
    ok = write_ledger(tmp_path / "ok", small())
    cases = [
        (empty, ["plot"], "no ledger"),
        (only_header, ["report"], "no runs yet"),
        (ok, ["plot", "-o", str(tmp_path / "missing" / "p.png")], "cannot write"),
        (ok, ["report", "-o", str(tmp_path)], "cannot write"),
        (ok, ["plot", "-o", "p.jpg"], ".png, .svg or .pdf"),
        (ok, ["export", "--tsv", "--segment", "7"], "no segment 7"),
        (ok, ["import", "--tsv", "nope.tsv"], "cannot read"),
        (ok, ["dashboard", "--port", "70000"], "--port"),
        (empty, ["dashboard"], "not a workspace"),
        (ok, ["finalize"], "autoresearch.toml"),
    ]
    for root, argv, msg in cases:
        assert cli(root, *argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


# ------------------------------------------------------------------ dashboard


def test_live_ledger_reads_only_complete_appended_lines(tmp_path: Path) -> None:
    root = write_ledger(tmp_path / "ws", small()[:3])
    path = root / ledger.LEDGER_NAME
    live = LiveLedger(path)
    assert live.refresh() and len(live.state.runs) == 2
    assert not live.refresh()
    line = ledger.encode(run_line(3, 0.9, "keep", "next"))
    with open(path, "ab") as f:
        f.write(line[:20])  # a line being written
    assert not live.refresh() and len(live.state.runs) == 2
    with open(path, "ab") as f:
        f.write(line[20:])
    assert live.refresh() and [r.run for r in live.state.runs] == [1, 2, 3]
    assert live.state.runs[-1].lineno == 4
    gen = live.generation
    path.write_bytes(b"".join(ledger.encode(x) for x in small()[:2]))  # replaced by a shorter file
    assert live.refresh() and live.generation == gen + 1 and len(live.state.runs) == 1


def test_dashboard_serves_page_and_updates_read_only(tmp_path: Path) -> None:
    root = write_ledger(tmp_path / "ws", small()[:3])
    server, url = make_server(root, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        version = re.search(r'data-version="([^"]+)"', page).group(1)
        assert 'data-live="1"' in page and page.count("<tr data-status=") == 2

        def update(v: str, n: int) -> dict:
            return json.loads(urllib.request.urlopen(f"{url}api/update?v={v}&n={n}", timeout=10).read())

        assert update(version, 2) == {"version": version}
        ledger.append(root / ledger.LEDGER_NAME, run_line(3, 0.9, "keep", "fresh <b>row</b>"))
        d = update(version, 2)
        assert d["version"] != version and d["rows"].count("<tr") == 1 and "fresh &lt;b&gt;row" in d["rows"]
        assert "<svg" in d["chart"] and "0.9" in d["summary"]
        assert update("99-0", 2)["reload"]
        for method in ("POST", "PUT", "DELETE"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, method=method, data=b""), timeout=10)
            assert e.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Host": "evil.example:80"}), timeout=10)
        assert e.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "../autoresearch.jsonl", timeout=10)
        assert e.value.code == 404
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_dashboard_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    root = write_ledger(tmp_path / "ws", small())
    # as from a terminal: a test suite started in the background (`cmd &`) ignores SIGINT, and its children
    # would inherit that
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), "dashboard", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", first).group(0)
        assert urllib.request.urlopen(url, timeout=10).status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "dashboard stopped" in err and "Traceback" not in err
