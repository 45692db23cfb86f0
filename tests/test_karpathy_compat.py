"""Switching from karpathy/autoresearch: `export --tsv` as his analysis.ipynb reads it (its own
cells, vendored in tests/fixtures/karpathy_analysis_cells.txt, run on our export in a real
process), and `import --tsv` on the shapes of results.tsv found in public repositories.

Run: python -m pytest tests/test_karpathy_compat.py -q
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from toy import cli

from harness import ledger, tsv

CELLS = Path(__file__).parent / "fixtures" / "karpathy_analysis_cells.txt"


def notebook(cwd: Path, cells: tuple[int, ...] = (1, 2, 3, 5, 7, 9)) -> str:
    """Run analysis.ipynb's code cells, in order, in one Python process in `cwd` (where
    results.tsv is), as Jupyter would; its stdout."""
    parts = re.split(r"^# %% cell (\d+)\n", CELLS.read_text(encoding="utf-8"), flags=re.M)
    code = {int(n): body for n, body in zip(parts[1::2], parts[2::2], strict=True)}
    proc = subprocess.run([sys.executable, "-c", "\n".join(code[i] for i in cells)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _run(run: int, metric: float, status: str, description: str, **extra) -> dict:
    return {"run": run, "commit": f"{run:07x}", "metric": metric, "metrics": extra.pop("metrics", {}),
            "status": status, "description": description, "timestamp": 1_760_000_000 + 300 * run, "segment": 0,
            "confidence": None, **extra}


def _write(root: Path, lines: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ledger.LEDGER_NAME, "wb") as f:
        for line in lines:
            f.write(ledger.encode(line))
    return root


# A session whose first run crashed (the baseline is run 2), as a session that starts with a
# broken command, or a seed-plugin session whose first logged run is a crash, has.
LEADING_CRASH = [
    ledger.header_line("leading crash", "val_bpb", "", "lower"),
    _run(1, 0, "crash", "first try: typo in train.py", asi={"rollback_reason": "SyntaxError"}),
    _run(2, 1.0, "keep", "baseline", metrics={"peak_vram_mb": 45060.2}),
    _run(3, 1.01, "discard", "deeper model"),
    _run(4, 0.97, "keep", "raise LR", metrics={"peak_vram_mb": 46080.0}),
    _run(5, 0, "crash", "OOM"),
    _run(6, 0.95, "keep", "warmdown 0.5"),
]


def test_the_notebooks_summary_reads_our_baseline_first(tmp_path: Path) -> None:
    root = _write(tmp_path / "ws", LEADING_CRASH)
    assert cli(root, "export", "--tsv") == 0
    rows = (root / "results.tsv").read_text().splitlines()
    assert rows[1] == "0000002\t1.000000\t44.0\tkeep\tbaseline"  # the baseline first, then the rest in order
    assert [r.split("\t")[0] for r in rows[2:]] == ["0000001", "0000003", "0000004", "0000005", "0000006"]
    out = notebook(root)
    assert "Baseline val_bpb:  1.000000" in out, out
    assert "Best val_bpb:      0.950000" in out
    assert "Total improvement: 0.050000 (5.00%)" in out  # was "Baseline 0.000000", "-inf%"
    assert "Best experiment:   warmdown 0.5" in out
    assert re.search(r"\+0\.050000\s+TOTAL improvement over baseline", out)  # the top-hits cell: deltas from row 0
    assert (root / "progress.png").read_bytes()[:4] == b"\x89PNG"  # the chart cell ran on it too


def test_the_baseline_goes_first_in_each_exported_segment_and_survives_a_round_trip(tmp_path: Path) -> None:
    two = [*LEADING_CRASH, ledger.header_line("second", "val_bpb", "", "lower"),
           {**_run(7, 0, "crash", "new segment crash"), "segment": 1},
           {**_run(8, 0.99, "discard", "re-measured baseline"), "segment": 1},
           {**_run(9, 0.98, "keep", "a keep"), "segment": 1}]
    state = ledger.fold(ledger.parse_lines(b"".join(ledger.encode(x) for x in two)).entries)
    text = tsv.tsv_text(state.runs)
    assert [ln.split("\t")[0] for ln in text.splitlines()[1:]] == [
        "0000002", "0000001", "0000003", "0000004", "0000005", "0000006", "0000008", "0000007", "0000009"]
    # the second segment's baseline (a discard in the ledger) is written as keep: the notebook's kept rows
    assert text.splitlines()[7] == "0000008\t0.990000\t0.0\tkeep\tre-measured baseline"
    src = tmp_path / "results.tsv"
    src.write_text(tsv.tsv_text(state.segments[0].runs))
    dest = tmp_path / "imported"
    dest.mkdir()
    assert cli(dest, "import", "--tsv", str(src)) == 0
    runs = ledger.load_state(dest / ledger.LEDGER_NAME).runs
    assert runs[0].raw.get("baseline") and runs[0].value == 1.0 and runs[1].status == "crash"
    assert cli(dest, "export", "--tsv", "-o", "again.tsv") == 0
    assert (dest / "again.tsv").read_text() == src.read_text()


# ---------------------------------------------------------------- import: public shapes
# The shapes of results.tsv files in public repositories (values and descriptions made up here):
# karpathy's five columns (program.md's example); extra metric columns between memory_gb and
# status (a 20-minute RTX 5070 fork: mfu, tok_per_sec, num_steps, ...); a hypothesis column
# after status with the metric under another name and an empty holdout column (a fork with a
# "micro-manifold" program.md); a post-training fork's accuracy with crash rows of `-`.

KARPATHY = """\
commit\tval_bpb\tmemory_gb\tstatus\tdescription
a1b2c3d\t0.997900\t44.0\tkeep\tbaseline
b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04
c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation
d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)
"""

EXTRA_MIDDLE = """\
commit\tval_bpb\tmemory_gb\tmfu\ttok_per_sec\tnum_steps\tnum_params_M\tbatch_size\tfinal_loss\tstatus\tdescription
3087aeb\t2.335670\t5.5\t58.1\t37700\t180\t162.1\t4\t5.155\tkeep\tbaseline (SwiGLU d12)
81dd182\t2.494669\t5.5\t53.7\t33477\t167\t162.1\t4\t3.811\tdiscard\tconstant WD
8da6023\t2.141833\t5.5\t58.1\t36982\t180\t162.1\t4\t4.950\tKEEP\tno warmdown
7b1c5a1\t0.000000\t0.0\t0.0\t0\t0\t0.0\t0\t0.000\tcrash\tweight tying: loss stuck
"""

HYPOTHESIS_AFTER = """\
commit\tprimary\tholdout\tstatus\thypothesis\tdescription
a1b2c3d\t0.997900\t\tkeep\tbaseline run\tbaseline
b2c3d4e\t0.993200\t\tkeep\thigher LR converges faster\tLR 0.04
c3d4e5f\t1.005000\t\tdiscard\tGeLU may help\tGeLU worse
d4e5f6a\t\t\tcrash\twider is better\tOOM
"""

DASH_CRASHES = """\
commit\taccuracy\tcadence\ttest_nll\ttraining_records\tstatus\tdescription
a1b2c3d\t0.7080\t0:342,1:137\t0.109\t2301\tkeep\tv3 baseline
d4e5f6a\t0.0000\t-\t-\t-\tcrash\tmax_length OOM
e5f6a7b\t-\t-\t-\t-\tcrash\tno result at all
f6a7b8c\tnan\t\t\t\tcrash\tNaN loss
a7b8c9d\t\t\t\t\tcrash\tkilled, nothing logged
b8c9d0e\t0.8050\t0:300,1:160\t0.155\t500\tkeep\tsubsample 500 records
"""


@pytest.mark.parametrize(("text", "metric", "statuses", "values"), [
    (KARPATHY, "val_bpb", ["keep", "keep", "discard", "crash"], [0.9979, 0.9932, 1.005, None]),
    (EXTRA_MIDDLE, "val_bpb", ["keep", "discard", "keep", "crash"], [2.33567, 2.494669, 2.141833, None]),
    (HYPOTHESIS_AFTER, "primary", ["keep", "keep", "discard", "crash"], [0.9979, 0.9932, 1.005, None]),
    (DASH_CRASHES, "accuracy", ["keep", "crash", "crash", "crash", "crash", "keep"],
     [0.708, None, None, None, None, 0.805]),
], ids=["karpathy", "extra-columns-in-the-middle", "hypothesis-after-status", "dash-nan-empty-crashes"])
def test_import_reads_the_public_shapes(tmp_path: Path, text: str, metric: str, statuses: list[str],
                                        values: list[float | None]) -> None:
    (tmp_path / "results.tsv").write_text(text)
    dest = tmp_path / "ws"
    dest.mkdir()
    assert cli(dest, "import", "--tsv", str(tmp_path / "results.tsv"), "--direction",
               "higher" if metric == "accuracy" else "lower") == 0
    state = ledger.load_state(dest / ledger.LEDGER_NAME)
    assert state.segments[0].header.metric_name == metric and not state.bad_lines
    assert [r.status for r in state.runs] == statuses
    assert [r.value for r in state.runs] == values
    assert state.runs[0].raw.get("baseline")


def test_extra_columns_are_kept_in_the_record_and_memory_is_optional(tmp_path: Path) -> None:
    _, rows = tsv.parse_tsv(EXTRA_MIDDLE)
    assert rows[0].extra == {"mfu": "58.1", "tok_per_sec": "37700", "num_steps": "180", "num_params_M": "162.1",
                             "batch_size": "4", "final_loss": "5.155"}
    lines = tsv.import_lines("val_bpb", rows, direction="lower", source="results.tsv", first_run=1, segment=0,
                             end_time=2_000_000_000)
    assert lines[1]["asi"]["tsv_columns"]["tok_per_sec"] == "37700"
    assert lines[1]["metrics"] == {"val_bpb": 2.33567, "peak_vram_mb": 5632.0}
    _, rows = tsv.parse_tsv(HYPOTHESIS_AFTER)
    assert rows[1].memory_gb is None and rows[1].extra == {"hypothesis": "higher LR converges faster"}


def test_import_still_refuses_what_cannot_be_a_session() -> None:
    head = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    for text, msg in [
        ("commit\tval_bpb\tmemory_gb\tdescription\nabc\t1.0\t2.0\tx\n", "line 1 must be the header"),
        ("commit\tstatus\tdescription\nabc\tkeep\tx\n", "names no metric column"),
        (head + "abc\t-\t2.0\tkeep\tx\n", "line 2: a keep row needs a finite number in val_bpb, not '-'"),
        (head + "abc\tinf\t2.0\tdiscard\tx\n", "line 2: a discard row needs a finite number"),
        (head + "abc\t1.0\t2.0\tbaseline\tx\n", "line 2: status must be keep, discard or crash, not 'baseline'"),
        (head + "abc\t1.0\t2.0\tkeep\tx\ty\n", "line 2 has 6 tab-separated fields, the header 5"),
    ]:
        with pytest.raises(tsv.TSVError, match=re.escape(msg)):
            tsv.parse_tsv(text)


def test_the_notebook_reads_the_public_shapes_it_can_read(tmp_path: Path) -> None:
    """The fixtures are inputs the notebook itself accepts (its load and outcome cells), so
    import is held to what the notebook reads, not to a shape of our own."""
    for i, text in enumerate((KARPATHY, EXTRA_MIDDLE)):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "results.tsv").write_text(text)
        out = notebook(d, (1, 2))
        assert "Experiment outcomes:" in out and "CRASH" in out
