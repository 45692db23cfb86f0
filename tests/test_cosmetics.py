"""The morning after (issue 13, items 21 and 22): the held-out metric in the report and the
chart, and the cosmetics: finalize's subject cut at a word, a legend of what occurs, crash marks
in a strip of their own, the lock's holder named, `resume` never "intact" beside skipped lines,
percentages of negative metrics in words, and no control character from an agent reaching the
terminal. Real ledgers, real processes for the lock, a real browser where Chromium exists.

Run: python -m pytest tests/test_cosmetics.py -q
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from test_browser import CDP, CHROMIUM, page  # noqa: F401 - page is the browser fixture
from test_report import run_line, small, write_ledger
from toy import cli, make_toy

from harness import chart, finalize, ledger, points, report, views
from harness.config import Config, MetricSpec
from harness.journal import LockedError, WorkspaceLock


def _state(lines: list[dict]) -> ledger.LedgerState:
    return ledger.fold(ledger.parse_lines(b"".join(ledger.encode(x) for x in lines)).entries)


# ------------------------------------------------------------------ 21: held-out in the report

def _with_heldout() -> list[dict]:
    lines = small()
    lines[1]["heldout"] = {"heldout_bpb": 1.02}
    lines[2]["heldout"] = {"heldout_bpb": 1.011}
    lines[7]["heldout"] = {"heldout_bpb": None, "error": "heldout.py exited 1"}
    return lines


def test_the_report_shows_the_heldout_metric_per_kept_run_and_in_the_chart(tmp_path: Path) -> None:
    state = _state(_with_heldout())
    page_html = report.report_html(state, tmp_path, "held-out")
    assert '<th title="the held-out metric, evaluated for kept runs; never used to decide">heldout_bpb</th>' in page_html
    assert '<td class="num" data-v="1.011" title="heldout_bpb">1.011</td>' in page_html  # run 2, kept
    assert 'title="heldout.py exited 1">error</td>' in page_html  # run 7: its evaluation failed
    summary = report.summary_html(state)
    assert "held-out" in summary and "1.02 → 1.011" not in summary  # best run is #7, whose evaluation failed
    assert "1.02 → -" in summary
    assert "held-out heldout_bpb 1.011" in report.diffs_html(state, {})
    fig = chart.draw_chart(state, "held-out")
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "held-out heldout_bpb"]
    assert len(twins) == 1 and [tuple(line.get_xdata()) for line in twins[0].lines] == [(1, 2)]
    assert "held-out heldout_bpb (kept runs, right axis)" in [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_heldout_column_in_a_browser(page: CDP, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "report.html"
    out.write_text(report.report_html(_state(_with_heldout()), tmp_path, "held-out"))
    page.open(out.as_uri())
    heads = page.js("Array.from(document.querySelectorAll('#runs th')).map(h => h.textContent)")
    col = heads.index("heldout_bpb")
    cells = page.js(f"Array.from(document.querySelectorAll('#runs tbody tr')).map(r => r.cells[{col}].textContent)")
    assert cells == ["1.02", "1.011", "", "", "", "", "error"]
    assert page.js("document.querySelector('#summary').textContent.includes('held-out')")


# ------------------------------------------------------------------ 22: cosmetics

def test_the_finalize_subject_is_cut_at_a_word_and_keeps_its_count() -> None:
    desc = "raise the matrix learning rate of the Muon optimizer and lengthen the warmdown to half of the run"
    k = finalize.Keep(3, "c" * 40, desc, ("train.py",), "val_bpb", 1.0, 0.99)
    subject = finalize.commit_message([k], ["train.py"], "autoresearch/t", 1).splitlines()[0]
    assert len(subject) <= 72 and subject.endswith("…")
    head = subject[:-1]
    assert desc.startswith(head) and desc[len(head)] == " "  # ends at a word, not inside "warmdown"
    two = finalize.commit_message([k, dataclasses.replace(k, run=4)], ["train.py"], "autoresearch/t", 1).splitlines()[0]
    assert len(two) <= 72 and two.endswith("… (+1 more kept experiments)")
    assert points.shorten("a" * 80, 20) == "a" * 19 + "…"  # one long word: cut inside it, no other way


def _legend(state: ledger.LedgerState) -> list[str]:
    return [t.get_text() for t in chart.draw_chart(state, "t").legends[0].get_texts()]


def test_the_chart_legend_lists_only_the_kinds_that_occur() -> None:
    clean = [ledger.header_line("t", "val_bpb", "", "lower"), run_line(1, 1.0, "keep"), run_line(2, 1.01, "discard"),
             run_line(3, 0.99, "keep")]
    assert _legend(_state(clean)) == ["discarded", "kept", "running best", "baseline"]
    assert _legend(_state(small())) == ["discarded", "kept", "running best", "baseline", "crash (no value)",
                                        "checks_failed (no value)", "off the chart"]
    only_base = [ledger.header_line("t", "val_bpb", "", "lower"), run_line(1, 1.0, "keep"), run_line(2, 0, "crash")]
    assert _legend(_state(only_base)) == ["running best", "baseline", "crash (no value)"]


def test_crash_marks_sit_in_a_strip_of_their_own_under_the_panel() -> None:
    fig = chart.draw_chart(_state(small()), "t")
    renderer = fig.canvas.get_renderer()
    crash = chart.COLORS["crash"]

    def has_crash(ax) -> bool:
        return any(to_hex(c) == crash for coll in ax.collections for c in coll.get_facecolors())

    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(panels) == 1 and not has_crash(panels[0])  # nothing at a y a value could have
    strips = [c for c in panels[0].child_axes if has_crash(c)]
    assert len(strips) == 1
    strip = strips[0]
    assert [t.get_text() for t in strip.get_yticklabels()] == ["no value"]
    assert strip.get_window_extent(renderer).y1 <= panels[0].get_window_extent(renderer).y0 + 1  # under it
    assert strip.get_xlim() == panels[0].get_xlim()  # on the panel's x-axis


HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    if sys.argv[2] != "never":
        time.sleep(float(sys.argv[2]))  # the gap between taking the lock and writing the pid, widened
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    sys.stdin.read()
""")


def _holder(lock: Path, delay: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), delay], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _release(p: subprocess.Popen) -> None:
    assert p.stdin is not None
    p.stdin.close()
    p.wait(timeout=10)


def test_the_lock_race_names_the_pid_or_says_another_process(tmp_path: Path) -> None:
    state_dir = tmp_path / ".autoresearch"
    state_dir.mkdir()
    lock = state_dir / "lock"
    holder = _holder(lock, "0.2")  # took the lock, has not written its pid yet
    try:
        with pytest.raises(LockedError) as exc, WorkspaceLock(state_dir):
            pass
        assert f"(pid {holder.pid})" in str(exc.value) and exc.value.who == f"pid {holder.pid}"
    finally:
        _release(holder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a dead earlier holder's pid, and a holder that writes none
    holder = _holder(lock, "never")
    try:
        with pytest.raises(LockedError) as exc, WorkspaceLock(state_dir):
            pass
        assert "(another process)" in str(exc.value) and "?" not in str(exc.value)
        assert dead.stdout.strip() not in str(exc.value)
    finally:
        _release(holder)
    with WorkspaceLock(state_dir):  # free again; our pid is what the file says now
        assert lock.read_text().strip() == str(os.getpid())


def test_resume_never_calls_the_ledger_intact_beside_skipped_lines(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    with open(root / ledger.LEDGER_NAME, "ab") as f:
        f.write(b"not json at all\n")
    assert cli(root, "resume", "--accept-ledger") == 0
    capsys.readouterr()
    assert cli(root, "resume") == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("ledger:"))
    assert "intact" not in line and "1 line skipped as unreadable (line 3" in line, line
    assert "ledger warning" in out  # the status below names why
    clean = make_toy(tmp_path / "clean")
    assert cli(clean, "experiment", "-d", "baseline") == 0 and cli(clean, "resume") == 0
    assert "chain intact" in capsys.readouterr().out  # without skipped lines it says so, as before


def _cfg(direction: str) -> Config:
    return Config(name="neg", command="", metric=MetricSpec("loglik", "", direction), editable=())  # type: ignore[arg-type]


def test_a_negative_metrics_improvement_is_in_words_relative_to_its_magnitude(tmp_path: Path) -> None:
    lines = [ledger.header_line("neg", "loglik", "", "higher"), run_line(1, -0.14, "keep"),
             run_line(2, -0.0001, "keep")]
    state = _state(lines)
    d = views.status_data(_cfg("higher"), state, branch="b", head="h", consistency="ok")
    out = io.StringIO()
    views.render_status(d, out)
    text = out.getvalue()
    assert "99.93% better than the baseline" in text and "+99.9" not in text
    assert "99.93% better" in report.summary_html(state) and "+99.9" not in report.summary_html(state)
    titles = [ax.get_title(loc="right") for ax in chart.draw_chart(state, "t").axes]
    assert any("(99.93% better)" in t for t in titles)
    assert points.pct_text(points.pct(-0.0001, -0.14, "lower")) == "99.93% worse"
    assert d["improvement_pct"] == pytest.approx(99.9286, abs=1e-3)  # --json keeps the number, positive = better


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


EVIL = "warmup\x1b[2J\x1b]0;owned\x07 \x9b31m\u202eevil\ttabbed\nnext"


def test_control_characters_from_an_agent_never_reach_the_terminal(tmp_path: Path) -> None:
    lines = small()
    lines[2]["description"] = EVIL
    lines[2]["asi"] = {"hypothesis": EVIL}
    lines[7]["description"] = EVIL
    root = write_ledger(tmp_path / "ws", lines)
    state = ledger.load_state(root / ledger.LEDGER_NAME)
    assert state.runs[1].description == EVIL  # the ledger keeps the text as written
    cfg = Config(name="x", command="", metric=MetricSpec("val_bpb", "", "lower"), editable=())
    for out in (io.StringIO(), _Tty()):  # plain text, and rich on a terminal
        views.render_status(views.status_data(cfg, state, branch="b", head="h", consistency="ok"), out)
        views.render_log(views.log_data(state), "val_bpb", out)
        text = out.getvalue()
        # rich styles with ESC itself; what the agent wrote never arrives as raw control characters
        assert not any(c in text for c in ("\x1b[2J", "\x1b]", "\x07", "\x9b", "\u202e", "\t")), repr(text[:400])
        assert "warmup\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m\\u202eevil tabbed next" in text.replace("\n", "")
    html = report.report_html(state, root, "x")  # the report and the dashboard's page
    assert "\x1b" not in html and "\x9b" not in html and "warmup\\x1b[2J" in html
