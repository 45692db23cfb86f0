"""Tests for harness/ledger.py: parsing real files, the fold, append and torn-tail recovery,
concurrent appends from real processes, and hypothesis properties of the fold. About 2 s.

Run: /work/main/.venv/bin/python -m pytest tests/test_ledger.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import ledger
from harness.ledger import (
    STATUSES,
    RunRecord,
    SessionHeader,
    append,
    chained,
    encode,
    fold,
    header_line,
    iter_runs,
    ledger_path,
    line_hash,
    load_state,
    parse_lines,
    read_ledger,
    set_aside_torn_tail,
)

TS_MS = 1_700_000_000_000  # pi-autoresearch writes Date.now()


def run_line(run: int, metric: float, status: str | None = "keep", **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "run": run,
        "commit": f"{run:07x}",
        "metric": metric,
        "metrics": {"peak_vram_mb": 1000.0 + run},
        "description": f"experiment {run}",
        "timestamp": TS_MS + run * 1000,
        "segment": 0,
        "confidence": None,
    }
    if status is not None:
        rec["status"] = status
    rec.update(extra)
    return rec


def dump(*objs: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


HEADER = header_line("nanochat speedrun", "val_bpb", "bpb", "lower")

# ------------------------------------------------------------------ parsing


def mixed_file() -> bytes:
    """A ledger as a real session leaves it: hook lines, a foreign note, one corrupt line,
    and a last write cut short."""
    return (
        dump(HEADER, run_line(1, 1.00), run_line(2, 0.98, "discard"))
        + b'{"type":"hook","stage":"after","exit_code":0,"duration_ms":12,"stdout_bytes":0,"timed_out":false}\n'
        + b'{"note":"calibration, no run field"}\n'
        + b'{"run": 3, "metric": 0.97, "status": "ke\n'  # corrupt line in the middle (line 6)
        + b"\n"  # blank lines are skipped silently
        + dump(run_line(3, 0.96))
        + b'{"run":4,"commit":"abc1234","met'  # torn: no trailing newline (line 9)
    )


def test_parse_realistic_mixed_file():
    data = mixed_file()
    lf = parse_lines(data)
    assert [type(e) for e in lf.entries] == [SessionHeader, RunRecord, RunRecord, RunRecord]
    assert [e.run for e in lf.entries if isinstance(e, RunRecord)] == [1, 2, 3]
    assert [b.lineno for b in lf.bad_lines] == [6, 9]
    assert [b.torn for b in lf.bad_lines] == [False, True]
    assert lf.bad_lines[0].text.startswith('{"run": 3')
    assert lf.bad_lines[1].reason  # says why
    assert lf.torn_offset == data.rindex(b"\n") + 1
    assert data[lf.torn_offset :] == b'{"run":4,"commit":"abc1234","met'
    header = lf.entries[0]
    assert isinstance(header, SessionHeader)
    assert (header.name, header.metric_name, header.metric_unit, header.direction) == (
        "nanochat speedrun",
        "val_bpb",
        "bpb",
        "lower",
    )
    r1 = lf.entries[1]
    assert isinstance(r1, RunRecord)
    assert r1.lineno == 2 and r1.commit == "0000001" and r1.metrics == {"peak_vram_mb": 1001.0}


def test_no_torn_flag_when_the_file_ends_with_a_newline(tmp_path):
    path = tmp_path / "autoresearch.jsonl"
    path.write_bytes(dump(HEADER, run_line(1, 1.0)) + b"{broken\n")
    lf = read_ledger(path)
    assert lf.torn_offset is None
    assert [(b.lineno, b.torn) for b in lf.bad_lines] == [(3, False)]


def test_missing_file_is_an_empty_ledger(tmp_path):
    lf = read_ledger(tmp_path / "nope.jsonl")
    assert (lf.entries, lf.bad_lines, lf.torn_offset) == ((), (), None)
    assert load_state(tmp_path / "nope.jsonl").segments == ()


def test_timestamps_ms_and_seconds_both_read_as_seconds():
    lf = parse_lines(
        dump(
            {"run": 1, "metric": 1.0, "timestamp": TS_MS},
            {"run": 2, "metric": 1.0, "timestamp": 1_700_000_000},
        )
    )
    assert [e.timestamp for e in lf.entries] == [1_700_000_000.0, 1_700_000_000.0]


def test_missing_or_unknown_status_reads_as_keep():
    lf = parse_lines(
        dump(run_line(1, 1.0, status=None), run_line(2, 1.0, status="weird"), run_line(3, 1.0, "crash"))
    )
    assert [e.status for e in lf.entries] == ["keep", "keep", "crash"]


def test_malformed_run_lines_are_bad_lines_not_errors():
    lf = parse_lines(
        dump(
            {"run": "1", "metric": 1.0},  # run not an int
            {"run": True, "metric": 1.0},  # bool is not a run number
            {"run": 2, "metric": "fast"},  # metric not a number
            {"run": 3, "metric": 1.0, "metrics": [1, 2]},  # metrics not an object
            {"type": "config", "bestDirection": "sideways"},
        )
        + b"[1, 2]\n"
        + b"null\n"
    )
    assert lf.entries == ()
    assert [b.lineno for b in lf.bad_lines] == [1, 2, 3, 4, 5, 6, 7]
    assert "sideways" in lf.bad_lines[4].reason


def test_crash_rows_have_no_value():
    lf = parse_lines(
        dump(run_line(1, 0, "crash"), run_line(2, 0.9, "checks_failed"), run_line(3, 0.9, "discard"))
    )
    assert [e.value for e in lf.entries] == [None, None, 0.9]


# ------------------------------------------------------------------ the fold


def test_segments_from_position():
    data = dump(
        header_line("a", "m", "", "higher"),
        header_line("b", "val_bpb", "bpb", "lower"),  # before any run: replaces the header
        run_line(1, 1.0, segment=7),  # the written segment is ignored: position decides
        run_line(2, 0.9),
        header_line("c", "loss", "", "higher"),  # after runs: a new segment
        header_line("d", "loss", "", "higher"),  # the new segment has no runs yet: replaces
        run_line(3, 5.0, segment=0),
        run_line(4, 6.0),
    )
    state = fold(parse_lines(data).entries)
    assert len(state.segments) == 2
    s0, s1 = state.segments
    assert (s0.index, s0.header.name, s0.direction) == (0, "b", "lower")
    assert (s1.index, s1.header.name, s1.direction) == (1, "d", "higher")
    assert [r.segment for r in state.runs] == [0, 0, 1, 1]
    assert [r.run for r in s1.runs] == [3, 4]
    assert state.current is s1
    assert state.next_run == 5
    assert state.last_run().run == 4
    assert state.find(2).metric == 0.9 and state.find(99) is None
    assert [r.run for r in iter_runs(state, segment=1)] == [3, 4]
    assert [r.run for r in iter_runs(state, status="keep", segment=0)] == [1, 2]


def test_runs_before_any_header_get_a_default_lower_segment():
    state = fold(parse_lines(dump(run_line(1, 1.0), run_line(2, 0.5))).entries)
    assert len(state.segments) == 1
    assert state.current.direction == "lower"
    assert state.current.best == 0.5


def test_empty_header_only_ledger():
    state = fold(parse_lines(dump(HEADER)).entries)
    seg = state.current
    assert seg is not None and seg.runs == ()
    assert (seg.baseline, seg.best, seg.confidence, seg.failure_streak()) == (None, None, None, 0)
    assert state.last_run() is None and state.next_run == 1


def test_baseline_is_the_first_valid_result():
    data = dump(
        HEADER, run_line(1, 0, "crash"), run_line(2, 0.9, "checks_failed"), run_line(3, 1.1), run_line(4, 1.0)
    )
    seg = fold(parse_lines(data).entries).current
    assert seg.baseline_run.run == 3
    assert seg.baseline == 1.1
    assert seg.best == 1.0


def test_best_per_direction():
    runs = [
        run_line(1, 1.0),
        run_line(2, 0.8),
        run_line(3, 0.5, "discard"),
        run_line(4, 1.3),
        run_line(5, 0, "crash"),
    ]
    lower = fold(parse_lines(dump(header_line("s", "m", "", "lower"), *runs)).entries).current
    higher = fold(parse_lines(dump(header_line("s", "m", "", "higher"), *runs)).entries).current
    # discards and crashes never count as best, even when their number would win
    assert (lower.best, lower.best_run.run) == (0.8, 2)
    assert (higher.best, higher.best_run.run) == (1.3, 4)
    assert lower.baseline == higher.baseline == 1.0


def test_best_falls_back_to_a_non_keep_baseline():
    seg = fold(
        parse_lines(dump(HEADER, run_line(1, 1.0, "discard"), run_line(2, 0.5, "discard"))).entries
    ).current
    assert seg.best == 1.0 and seg.best_run.run == 1


def test_counts_and_failure_streak():
    statuses = ["keep", "discard", "keep", "crash", "discard", "checks_failed", "discard"]
    data = dump(HEADER, *[run_line(i + 1, 1.0 - 0.01 * i, s) for i, s in enumerate(statuses)])
    seg = fold(parse_lines(data).entries).current
    assert seg.counts() == {"keep": 2, "discard": 3, "crash": 1, "checks_failed": 1}
    assert seg.failure_streak() == 4  # everything after the last keep
    seg2 = fold(parse_lines(data + dump(run_line(8, 0.5))).entries).current
    assert seg2.failure_streak() == 0


def test_failure_streak_is_per_segment():
    data = dump(HEADER, run_line(1, 1.0), run_line(2, 2.0, "discard"), HEADER, run_line(3, 1.0, "crash"))
    state = fold(parse_lines(data).entries)
    assert state.segments[0].failure_streak() == 1
    assert state.current.failure_streak() == 1


def test_confidence_through_segment():
    # values (crash excluded by status): 1.00 .98 .97 .99 .95 -> MAD .01; best kept .95 vs baseline 1.00
    data = dump(
        HEADER,
        run_line(1, 1.00),
        run_line(2, 0.98),
        run_line(3, 0.97, "discard"),
        run_line(4, 0, "crash"),
        run_line(5, 0.99, "discard"),
        run_line(6, 0.95),
    )
    seg = fold(parse_lines(data).entries).current
    assert seg.confidence == pytest.approx(5.0)


def test_confidence_with_negative_metrics():
    data = dump(
        header_line("rl", "reward", "", "higher"), run_line(1, -3.0), run_line(2, -2.0), run_line(3, -1.0)
    )
    assert fold(parse_lines(data).entries).current.confidence == pytest.approx(2.0)


def test_confidence_undefined_with_two_points():
    data = dump(HEADER, run_line(1, 1.0), run_line(2, 0.9))
    assert fold(parse_lines(data).entries).current.confidence is None


# ------------------------------------------------------------------ ledger_path


def test_ledger_path_follows_pis_rule(tmp_path):
    """pi's sessionFilePath: any .auto/ session file means .auto/log.jsonl, even beside a flat ledger."""
    assert ledger_path(tmp_path) == tmp_path / "autoresearch.jsonl"  # neither exists: ours
    (tmp_path / ".auto").mkdir()
    (tmp_path / ".auto" / "log.jsonl").write_bytes(dump(HEADER))
    assert ledger_path(tmp_path) == tmp_path / ".auto" / "log.jsonl"
    (tmp_path / "autoresearch.jsonl").write_bytes(dump(HEADER))
    assert ledger_path(tmp_path) == tmp_path / ".auto" / "log.jsonl"


# ------------------------------------------------------------------ writing


def test_encode_one_line_and_drops_empty_asi():
    line = encode(run_line(1, 1.0, asi={}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert "asi" not in json.loads(line)
    assert json.loads(encode(run_line(1, 1.0, asi={"hypothesis": "wider"})))["asi"] == {"hypothesis": "wider"}
    # None values inside asi are dropped (docstring contract); all-None asi is omitted; order kept
    line = encode({"run": 1, "asi": {"hypothesis": "h", "next_action_hint": None}, "status": "keep"})
    assert line == b'{"run":1,"asi":{"hypothesis":"h"},"status":"keep"}\n'
    assert encode({"run": 1, "asi": {"rollback_reason": None}}) == b'{"run":1}\n'
    assert encode({"run": 1, "asi": None}) == b'{"run":1}\n'
    # a description with a newline stays on one line
    assert encode({"run": 1, "description": "a\nb"}).count(b"\n") == 1


def test_append_creates_file_and_reads_back(tmp_path):
    path = tmp_path / "sub" / "autoresearch.jsonl"
    append(path, HEADER)
    append(path, run_line(1, 1.0, asi={"hypothesis": "baseline"}))
    data = path.read_bytes()
    assert data.count(b"\n") == 2 and data.endswith(b"\n")
    state = load_state(path)
    assert state.current.header.metric_name == "val_bpb"
    assert state.runs[0].asi == {"hypothesis": "baseline"}


def test_append_after_torn_tail_never_fuses_lines(tmp_path):
    path = tmp_path / "autoresearch.jsonl"
    torn = b'{"run":2,"metric":0.9'
    path.write_bytes(dump(HEADER, run_line(1, 1.0)) + torn)
    append(path, run_line(2, 0.95))
    data = path.read_bytes()
    assert data.endswith(torn + b"\n" + chained(run_line(2, 0.95), line_hash(torn)))  # it follows the torn text
    lf = parse_lines(data)
    assert [e.run for e in lf.entries if isinstance(e, RunRecord)] == [1, 2]
    assert [(b.lineno, b.torn) for b in lf.bad_lines] == [(3, False)]  # reported, not lost
    assert lf.torn_offset is None
    assert (lf.chain.ok, lf.chain.first_break, lf.chain.legacy) == (False, 3, 2)  # the torn text is mid-file now


def test_set_aside_torn_tail_moves_only_the_torn_bytes(tmp_path):
    path = tmp_path / "autoresearch.jsonl"
    good = dump(HEADER, run_line(1, 1.0)) + b"{corrupt middle line}\n" + dump(run_line(2, 0.9))
    torn = b'{"run":3,"commit":"abc'
    path.write_bytes(good + torn)
    dest = set_aside_torn_tail(path, tmp_path / "state", "20240101-000000")
    assert dest == tmp_path / "state" / "torn-line-20240101-000000.jsonl"
    assert dest.read_bytes() == torn
    assert path.read_bytes() == good  # valid lines (and the reported corrupt one) untouched
    assert read_ledger(path).torn_offset is None
    # idempotent: nothing left to set aside
    assert set_aside_torn_tail(path, tmp_path / "state", "20240101-000001") is None
    assert path.read_bytes() == good


def test_set_aside_leaves_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "autoresearch.jsonl"
    data = dump(HEADER) + orjson.dumps(run_line(1, 1.0))  # valid JSON, only the newline missing
    path.write_bytes(data)
    assert set_aside_torn_tail(path, tmp_path / "state", "x") is None
    assert path.read_bytes() == data
    assert not (tmp_path / "state").exists()


def test_set_aside_sees_an_append_made_while_it_waits_for_the_lock(tmp_path):
    """An append that lands while recovery waits for the lock must survive: the torn offset
    has to be computed under the lock, not before it (else the truncate cuts the new line)."""
    path = tmp_path / "autoresearch.jsonl"
    torn = b'{"run":2,"met'
    path.write_bytes(dump(HEADER, run_line(1, 1.0)) + torn)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import fcntl, os, sys
                fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
                fcntl.flock(fd, fcntl.LOCK_EX)
                print("locked", flush=True)
                sys.stdin.readline()
                os.write(fd, b"\\n" + sys.argv[2].encode() + b"\\n")  # what append does after a torn tail
                os.fsync(fd)
                fcntl.flock(fd, fcntl.LOCK_UN)
                """
            ),
            str(path),
            orjson.dumps(run_line(2, 0.9)).decode(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result: list[Path | None] = []
        t = threading.Thread(target=lambda: result.append(set_aside_torn_tail(path, tmp_path / "state", "s")))
        t.start()
        time.sleep(0.3)  # let set_aside get as far as it can before the append lands
        holder.stdin.write("go\n")
        holder.stdin.flush()
        t.join(10)
        assert not t.is_alive()
    finally:
        holder.stdin.close()
        holder.wait(10)
    lf = read_ledger(path)
    assert [e.run for e in lf.entries if isinstance(e, RunRecord)] == [1, 2]
    assert lf.torn_offset is None
    assert result == [None]  # the torn text is now a middle line: reported, nothing to move


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.ledger import append
    path, who, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        append(path, {"run": who * 1000 + i, "metric": 1.0, "status": "keep",
                      "description": "x" * (who * 500 + i % 97), "asi": {"who": who, "i": i}})
    """
)


def test_concurrent_appends_from_real_processes(tmp_path):
    path = tmp_path / "autoresearch.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "200"]) for w in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 800
    objs = [orjson.loads(line) for line in lines]  # every line parses: nothing interleaved
    for o in objs:
        assert len(o["description"]) == o["asi"]["who"] * 500 + o["asi"]["i"] % 97
    for w in range(4):  # each writer's lines in its own order
        assert [o["asi"]["i"] for o in objs if o["asi"]["who"] == w] == list(range(200))
    lf = parse_lines(data)
    assert lf.bad_lines == () and len(lf.entries) == 800
    # each writer read the tail under the lock it wrote under: one chain, whatever the interleaving
    assert (lf.chain.ok, lf.chain.chained, lf.chain.legacy) == (True, 800, 0)


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fold_never_raises_on_byte_soup(data):
    lf = parse_lines(data)
    state = fold(lf.entries, lf.bad_lines)
    for seg in state.segments:
        seg.counts(), seg.confidence, seg.best, seg.failure_streak()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "type",
    "run",
    "metric",
    "metrics",
    "status",
    "timestamp",
    "asi",
    "confidence",
    "bestDirection",
    "diff",
]
line_objs = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(lambda d: {"run": 1, **d}),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(lambda d: {**d, "type": "config"}),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(line_objs, max_size=8))
def test_fold_never_raises_on_arbitrary_json_lines(objs):
    data = b"".join(json.dumps(o).encode() + b"\n" for o in objs)
    lf = parse_lines(data)
    assert len(lf.entries) + len(lf.bad_lines) <= len(objs)
    assert lf.torn_offset is None
    state = fold(lf.entries, lf.bad_lines)
    for seg in state.segments:
        seg.counts(), seg.confidence, seg.best, seg.baseline, seg.failure_streak()


runs_strategy = st.lists(
    st.tuples(
        st.sampled_from(STATUSES),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.booleans(),  # a config header before this run?
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(runs_strategy, st.sampled_from(["lower", "higher"]))
def test_fold_counts_equal_a_direct_count(spec, direction):
    objs: list[dict[str, Any]] = [header_line("s", "m", "", direction)]
    for i, (status, metric, new_header) in enumerate(spec):
        if new_header:
            objs.append(header_line("s", "m", "", direction))
        objs.append(run_line(i + 1, 0 if status == "crash" else metric, status))
    state = fold(parse_lines(dump(*objs)).entries)
    assert len(state.runs) == len(spec)
    total = {s: sum(seg.counts()[s] for seg in state.segments) for s in STATUSES}
    assert total == {s: sum(1 for st_, _, _ in spec if st_ == s) for s in STATUSES}
    # a new segment begins at every header that follows at least one run
    expected_segments = 1 + sum(1 for i, (_, _, h) in enumerate(spec) if h and i > 0)
    assert len(state.segments) == expected_segments
    for seg in state.segments:
        kept = [r.metric for r in seg.runs if r.status == "keep"]
        valid = [r.metric for r in seg.runs if r.status in ("keep", "discard")]
        assert seg.baseline == (valid[0] if valid else None)
        if kept:
            assert seg.best == (min(kept) if direction == "lower" else max(kept))
        trailing = 0
        for r in reversed(seg.runs):
            if r.status == "keep":
                break
            trailing += 1
        assert seg.failure_streak() == trailing


def test_a_metric_beyond_the_metric_bound_is_no_result_for_the_fold(tmp_path) -> None:
    # a hand-written or legacy line with 1e308 must not become the best the loop decides against
    lines = [
        {"type": "config", "name": "s", "metricName": "loss", "metricUnit": "", "bestDirection": "lower"},
        {"run": 1, "commit": "a", "metric": 2.0, "metrics": {"loss": 2.0}, "status": "keep", "description": "base",
         "timestamp": 1, "segment": 0, "confidence": None, "asi": {}},
        {"run": 2, "commit": "b", "metric": -1e308, "metrics": {"loss": -1e308, "ok": 3.0, "big": 1e20},
         "status": "keep", "description": "forged", "timestamp": 2, "segment": 0, "confidence": None, "asi": {}},
    ]
    path = tmp_path / "autoresearch.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    seg = ledger.load_state(path).current
    assert seg is not None and seg.best == 2.0 and seg.best_run is not None and seg.best_run.run == 1
    assert ledger.load_state(path).runs[1].metrics == {"ok": 3.0}
