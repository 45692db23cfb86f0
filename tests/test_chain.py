"""The ledger's hash chain (harness/chain.py, harness/ledger.py): every appended line carries `prev`,
the sha256 of the line before it; each kind of break is named at its line; a legacy prefix is
accepted; `resume --accept-ledger` reseals; run numbers are never reused, even one inside a line
that no longer parses; the loop refuses a broken chain (through the real controller); and
`log-experiment` appends under the workspace lock (a real second process holds it). About 6 s.

Run: /work/main/.venv/bin/python -m pytest tests/test_chain.py -q
"""

from __future__ import annotations

import hashlib
import io
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
from toy import cli, make_toy, runs, set_constant

from harness import commands, ledger
from harness import config as config_mod
from harness.agents.base import Proposal
from harness.chain import GENESIS, tail_hash
from harness.loop import Controller, ControllerError, StopRules

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def run_line(run: int, metric: float, status: str = "keep", **extra: Any) -> dict[str, Any]:
    return {"run": run, "commit": f"{run:07x}", "metric": metric, "metrics": {"score": metric}, "status": status,
            "description": f"experiment {run}", "timestamp": 1_763_700_000 + run, "segment": 0, "confidence": None,
            **extra}


HEADER = ledger.header_line("chain", "score", "", "higher")


def chained_ledger(tmp_path: Path, n_runs: int = 4) -> Path:
    """A ledger written as the controller writes it: header and runs, each through `ledger.append`."""
    path = tmp_path / "autoresearch.jsonl"
    ledger.append(path, HEADER)
    for i in range(1, n_runs + 1):
        ledger.append(path, run_line(i, 1.0 + i / 10))
    return path


def file_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines_: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines_))


# ---------------------------------------------------------------------------- the chain itself


def test_every_appended_line_names_the_hash_of_the_one_before(tmp_path) -> None:
    path = chained_ledger(tmp_path, 3)
    ledger.append(path, {"type": "learnings", "after_run": 3, "timestamp": 1})
    raw = file_lines(path)
    objs = [orjson.loads(x) for x in raw]
    assert objs[0]["prev"] == EMPTY_SHA == GENESIS  # the first line follows the empty ledger
    for before, line in zip(raw, objs[1:], strict=False):
        assert line["prev"] == hashlib.sha256(before).hexdigest()  # bytes as stored, without the newline
    assert list(objs[1])[-1] == "prev" and objs[1]["run"] == 1  # one more field at the end: pi reads the rest
    report = ledger.verify_chain(path.read_bytes())
    assert (report.ok, report.lines, report.legacy, report.chained, report.first_break) == (True, 5, 0, 5, None)
    assert report.summary() == "5 lines, chain intact"
    assert report.head == ledger.head_hash(path) == hashlib.sha256(raw[-1]).hexdigest()
    assert ledger.load_state(path).chain == report  # load_state carries it
    # a caller's own `prev` never survives: the chain is the ledger's to write
    ledger.append(path, {**run_line(4, 2.0), "prev": "0" * 64})
    assert ledger.verify_chain(path.read_bytes()).ok


def test_an_edited_line_breaks_the_chain_at_the_line_after_it(tmp_path) -> None:
    path = chained_ledger(tmp_path)
    raw = file_lines(path)
    raw[2] = raw[2].replace(b'"status":"keep"', b'"status":"discard"')  # line 3: run 2 rewritten
    write_lines(path, raw)
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.first_break) == (False, 4)
    assert r.why == ("line 4 does not follow line 3: its prev is not line 3's hash, so that line was edited, or lines "
                     "were inserted, deleted or reordered")
    assert [b.kind for b in r.breaks] == ["mismatch"]
    assert r.summary() == f"chain broken at line 4 ({r.why})"


def test_an_inserted_line_is_named_whether_or_not_it_carries_a_plausible_prev(tmp_path) -> None:
    path = chained_ledger(tmp_path)
    raw = file_lines(path)
    # a copy of line 2 put after it: its prev is line 1's hash, so it does not follow line 2
    write_lines(path, [*raw[:2], raw[1], *raw[2:]])
    r = ledger.verify_chain(path.read_bytes())
    assert (r.first_break, r.breaks[0].why[:30]) == (3, "line 3 does not follow line 2:")
    # a forged line that does follow line 2: then the next true line does not follow it
    forged = ledger.chained(run_line(9, 9.9), ledger.line_hash(raw[1]))[:-1]
    write_lines(path, [*raw[:2], forged, *raw[2:]])
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.first_break, len(r.breaks)) == (False, 4, 1)
    assert ledger.load_state(path).next_run == 10  # and its run number is never reused either


def test_deleted_and_reordered_lines(tmp_path) -> None:
    path = chained_ledger(tmp_path)
    raw = file_lines(path)
    write_lines(path, [*raw[:2], *raw[3:]])  # line 3 deleted
    r = ledger.verify_chain(path.read_bytes())
    assert (r.first_break, len(r.breaks)) == (3, 1) and r.why.startswith("line 3 does not follow line 2")
    write_lines(path, raw[1:])  # the first line deleted
    r = ledger.verify_chain(path.read_bytes())
    assert r.first_break == 1 and "does not start the chain" in r.why
    write_lines(path, [*raw[:2], raw[3], raw[2], *raw[4:]])  # lines 3 and 4 swapped
    r = ledger.verify_chain(path.read_bytes())
    assert [b.lineno for b in r.breaks] == [3, 4, 5]  # each link that no longer holds


def test_a_corrupt_middle_line_is_a_break_and_a_torn_last_line_is_not(tmp_path) -> None:
    path = chained_ledger(tmp_path)
    raw = file_lines(path)
    write_lines(path, [*raw[:2], raw[2][:30], *raw[3:]])  # line 3 cut short, in the middle
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.first_break, r.breaks[0].kind) == (False, 3, "unparseable")
    assert r.why.startswith("line 3 does not parse: ")
    assert [b.lineno for b in r.breaks] == [3, 4]  # and line 4 follows the original, not the stub
    # a torn last line (a write cut short by a kill) is recovery's, not a break
    good = b"".join(x + b"\n" for x in raw)
    path.write_bytes(good + raw[3][:25])
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.lines) == (True, 5)
    assert ledger.set_aside_torn_tail(path, tmp_path / "state", "s") is not None
    assert path.read_bytes() == good and ledger.verify_chain(good).ok
    # a schema-bad line (valid JSON, not a ledger line) is unreadable too: it never reads as "intact"
    write_lines(path, [*raw, ledger.chained({"run": "7", "metric": 1}, ledger.line_hash(raw[-1]))[:-1], raw[0]])
    r = ledger.verify_chain(path.read_bytes())
    assert r.breaks[0].lineno == 6 and "run must be an integer" in r.why


def test_an_unchained_line_after_the_chain_began_is_a_break(tmp_path) -> None:
    path = chained_ledger(tmp_path, 2)
    with open(path, "ab") as f:  # what a tool that does not chain appends (a pi hook line)
        f.write(b'{"type":"hook","stage":"after","exit_code":0}\n')
    ledger.append(path, run_line(3, 1.0))
    r = ledger.verify_chain(path.read_bytes())
    assert (r.first_break, r.breaks[0].kind, len(r.breaks)) == (4, "unchained", 1)
    assert r.why == ("line 4 carries no hash of line 3, though the chain began at line 1: a tool that does not "
                     "chain wrote it, or a hand did")


def test_a_legacy_prefix_is_accepted_and_counted(tmp_path) -> None:
    # a pi-autoresearch ledger, then our appends: the chain starts at the first line we write
    path = tmp_path / "autoresearch.jsonl"
    pi = [orjson.dumps(o) for o in (HEADER, run_line(1, 1.0), run_line(2, 1.1))]
    write_lines(path, pi)
    assert ledger.verify_chain(path.read_bytes()).summary() == (
        "3 unchained lines written before the chain; the chain starts with the next line")
    ledger.append(path, run_line(3, 1.2))
    ledger.append(path, run_line(4, 1.3))
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.lines, r.legacy, r.chained) == (True, 5, 3, 2)
    assert r.summary() == "3 unchained lines written before the chain, 2 chained, intact"
    assert orjson.loads(file_lines(path)[3])["prev"] == hashlib.sha256(pi[2]).hexdigest()
    # the first chained line vouches for the last legacy line; the earlier ones are unverifiable
    raw = file_lines(path)
    write_lines(path, [raw[0], raw[1], raw[2].replace(b"1.1", b"1.9"), *raw[3:]])
    assert ledger.verify_chain(path.read_bytes()).first_break == 4


def test_blank_lines_are_skipped_and_the_tail_is_read_from_the_end(tmp_path) -> None:
    path = chained_ledger(tmp_path, 1)
    with open(path, "ab") as f:
        f.write(b"\n  \n")
    ledger.append(path, run_line(2, 1.0, asi={"tail": "x" * 30_000}))  # longer than tail_hash's first window
    ledger.append(path, run_line(3, 1.0))
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.lines) == (True, 4)
    with open(path, "rb") as f:
        assert tail_hash(f, 0) == GENESIS
    assert ledger.head_hash(tmp_path / "missing.jsonl") == GENESIS


# ------------------------------------------------------------------------- acknowledging a break


def test_a_reseal_acknowledges_the_breaks_it_lists_and_no_other(tmp_path) -> None:
    path = chained_ledger(tmp_path, 6)
    raw = file_lines(path)
    raw[2] = raw[2].replace(b"1.2", b"9.2")  # break at line 4
    write_lines(path, raw)
    broken = ledger.verify_chain(path.read_bytes())
    line = ledger.reseal_line(broken, 1_800_000_000)
    assert line == {"type": "reseal", "broken_at": 4, "breaks": [4], "why": broken.why, "timestamp": 1_800_000_000}
    ledger.append(path, line)
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.first_break, r.reseals) == (True, None, (8,))
    assert [b.lineno for b in r.acknowledged] == [4]
    assert r.summary().startswith("8 lines, chain intact after the reseal at line 8 (accepted break at line 4: line 4 ")
    assert ledger.chain_problem(ledger.load_state(path)) is None
    assert ledger.load_state(path).runs[-1].run == 6  # the fold skips the reseal line
    # a later edit of another line before the reseal is a new break: the reseal did not list it
    raw = file_lines(path)
    write_lines(path, [*raw[:5], raw[5].replace(b"1.5", b"0.5"), *raw[6:]])
    r = ledger.verify_chain(path.read_bytes())
    assert (r.ok, r.first_break) == (False, 7)


def test_a_reseal_that_does_not_chain_acknowledges_nothing(tmp_path) -> None:
    path = chained_ledger(tmp_path)
    raw = file_lines(path)
    raw[2] = raw[2].replace(b"1.2", b"9.2")
    forged = orjson.dumps({"type": "reseal", "broken_at": 4, "breaks": [4], "why": "", "timestamp": 1,
                           "prev": "f" * 64})
    write_lines(path, [*raw, forged])
    r = ledger.verify_chain(path.read_bytes())
    assert [b.lineno for b in r.breaks] == [4, 6] and r.acknowledged == () and r.reseals == ()


def test_resume_names_the_break_exits_1_and_accept_ledger_reseals(tmp_path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "log-experiment", "--metric", "1.0", "--status", "keep", "--description", "a") == 0
    assert cli(root, "log-experiment", "--metric", "1.2", "--status", "keep", "--description", "b") == 0
    capsys.readouterr()
    assert cli(root, "resume") == 0
    out = capsys.readouterr().out
    assert "ledger: 3 lines, chain intact" in out and "recovery: nothing to do" in out and "intact)" not in out

    lpath = root / "autoresearch.jsonl"
    raw = file_lines(lpath)
    write_lines(lpath, [raw[0], raw[1].replace(b'"metric":1.0', b'"metric":2.0'), raw[2]])  # run 1 inflated
    assert cli(root, "resume") == 1
    out = capsys.readouterr().out
    assert "ledger: chain broken at line 3 (line 3 does not follow line 2: " in out
    assert "intact" not in out
    assert out.rstrip().endswith("`status` keeps naming it)") and "--accept-ledger" in out
    assert len(file_lines(lpath)) == 3  # nothing appended without the flag
    status = json.loads(_cli_out(root, capsys, "status", "--json"))
    assert status["consistency"].startswith("warning: ledger chain broken at line 3 (line 3 does not follow line 2")

    assert cli(root, "resume", "--accept-ledger") == 0
    out = capsys.readouterr().out
    assert out.index("ledger: chain broken at line 3") < out.index("accepted: appended a reseal line (line 4)")
    reseal = orjson.loads(file_lines(lpath)[3])
    assert (reseal["type"], reseal["broken_at"], reseal["breaks"]) == ("reseal", 3, [3])
    assert reseal["prev"] == hashlib.sha256(file_lines(lpath)[2]).hexdigest()  # chained to the actual last line
    assert cli(root, "resume") == 0
    out = capsys.readouterr().out
    assert "ledger: 4 lines, chain intact after the reseal at line 4 (accepted break at line 3: " in out
    status = json.loads(_cli_out(root, capsys, "status", "--json"))
    assert status["consistency"].startswith("ok: ")
    assert "; ledger: 4 lines, chain intact after the reseal at line 4 (accepted break at line 3: " in (
        status["consistency"])  # status still names it
    assert cli(root, "resume", "--accept-ledger") == 0
    assert "nothing to accept" in capsys.readouterr().out and len(file_lines(lpath)) == 4


def _cli_out(root: Path, capsys, *args: str) -> str:
    assert cli(root, *args) == 0
    return capsys.readouterr().out


# --------------------------------------------------------------- run numbers and the real loop


def test_next_run_exceeds_a_run_number_inside_a_corrupt_line() -> None:
    good = ledger.chain([HEADER, run_line(1, 1.0), run_line(2, 1.1)])
    data = good + b'{"asi":{"hypothesis":"x"},"run": 7, "metric": 1.3, "sta\n' + b"{not json at all}\n"
    state = state_of(data)
    assert [b.run for b in state.bad_lines] == [7, None]
    assert state.next_run == 8
    assert state_of(good + b'{"run": 5, "me').next_run == 6  # a torn last line's, until recovery sets it aside
    assert state_of(good).next_run == 3


def state_of(data: bytes) -> ledger.LedgerState:
    lf = ledger.parse_lines(data)
    return ledger.fold(lf.entries, lf.bad_lines, lf.chain)


class LRAgent:
    """Sets LR to the next scripted value."""

    name = "scripted"

    def __init__(self, values: list[str]):
        self.values = list(values)

    def propose(self, ctx):
        v = self.values.pop(0)
        set_constant(ctx.root, "LR", v)
        return Proposal(f"LR {v}", {"hypothesis": "scripted"})


def test_a_corrupt_middle_line_stops_the_loop_and_its_run_number_is_never_reused(
        tmp_path, fake_executor, fake_clock) -> None:
    """Issue 10, break 11: the kept best's line is corrupted with a line after it. Before the chain
    the ledger read "intact", run 3's number was handed out again and a regression from 1.5 was
    kept against the older best 1.0."""
    root = make_toy(tmp_path / "ws")
    executor = fake_executor(root, [1.0, 0.8, 1.5, 1.3, 1.3])
    ctl = Controller(root, config_mod.load(root), executor=executor, clock=fake_clock, printer=[].append,
                     progress=False)
    agent = LRAgent(["0.02", "0.03", "0.04", "0.05"])
    ctl.run_loop(agent, StopRules(max_iterations=3))
    assert [(r.run, r.status) for r in runs(root)] == [(1, "keep"), (2, "discard"), (3, "keep")]
    lpath = root / "autoresearch.jsonl"
    ledger.append(lpath, {"type": "learnings", "after_run": 3, "timestamp": 1})  # a line after the best's
    raw = file_lines(lpath)
    at = next(i for i, x in enumerate(raw) if x.startswith(b'{"run":3,'))
    raw[at] = raw[at][:60]  # the best's line no longer parses
    write_lines(lpath, raw)

    state = ctl.load_ledger()
    assert state.current.best == 1.0 and state.next_run == 4  # the best is lost; its number is not
    with pytest.raises(ControllerError) as err:
        ctl.verify()
    assert str(err.value) == ledger.chain_problem(state)
    assert str(err.value).startswith(f"the ledger's hash chain is broken at line {at + 1} (1 more break after it): "
                                     f"line {at + 1} does not parse: ")
    assert "`autoresearch resume --accept-ledger`" in str(err.value)
    with pytest.raises(ControllerError):
        ctl.run_loop(agent, StopRules(max_iterations=1))  # nothing runs on a broken chain
    assert len(executor.calls) == 3

    assert cli(root, "resume", "--accept-ledger") == 0  # the user looked, and accepts the ledger as it is
    ctl.run_loop(agent, StopRules(max_iterations=1))
    assert len(executor.calls) == 4
    state = ctl.load_ledger()
    assert [r.run for r in state.runs] == [1, 2, 4] and [b.run for b in state.bad_lines] == [3]  # 3 stays the lost line's
    assert ledger.verify_chain(lpath.read_bytes()).ok


# ------------------------------------------------------------------------- log-experiment's lock

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.journal import WorkspaceLock
    with WorkspaceLock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def _hold_lock(root: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root / ".autoresearch")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _release(holder: subprocess.Popen) -> None:
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.close()
    holder.wait(10)


def test_log_experiment_waits_for_the_workspace_lock_then_fails_naming_the_holder(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    root = make_toy(tmp_path / "ws")
    before = (root / "autoresearch.jsonl").read_bytes()
    monkeypatch.setattr(commands, "LOG_LOCK_WAIT_S", 0.5)
    holder = _hold_lock(root)
    try:
        t = time.monotonic()
        rc = cli(root, "log-experiment", "--metric", "1.0", "--status", "keep", "--description", "blocked")
        waited = time.monotonic() - t
    finally:
        _release(holder)
    err = capsys.readouterr().err
    assert rc == 2 and 0.5 <= waited < 5
    assert f"log-experiment: waiting up to 0.5 s for the workspace lock, held by pid {holder.pid}" in err
    assert f"autoresearch: error: the workspace is locked by pid {holder.pid} (an autoresearch controller)" in err
    assert len(err.strip().splitlines()) == 2
    assert (root / "autoresearch.jsonl").read_bytes() == before  # nothing written


def test_log_experiment_appends_once_the_holder_lets_go_and_its_lines_chain(tmp_path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    capsys.readouterr()
    holder = _hold_lock(root)
    threading.Timer(0.4, _release, [holder]).start()
    t = time.monotonic()
    assert cli(root, "log-experiment", "--metric", "1.0", "--status", "keep", "--description", "after") == 0
    assert time.monotonic() - t >= 0.3
    out, err = capsys.readouterr()
    assert "waiting up to 10 s for the workspace lock" in err
    stored = out.strip()
    assert (root / "autoresearch.jsonl").read_text().splitlines()[-1] == stored  # it prints the line as stored
    assert cli(root, "log-experiment", "--metric", "1.1", "--status", "discard", "--description", "two") == 0
    r = ledger.verify_chain((root / "autoresearch.jsonl").read_bytes())
    assert (r.ok, r.chained, r.legacy) == (True, 3, 0)
    # run numbers are never handed out twice, by hand either
    capsys.readouterr()
    assert cli(root, "log-experiment", "--run", "2", "--metric", "1", "--status", "keep", "--description", "x") == 2
    assert "run 2 is taken" in capsys.readouterr().err


# ------------------------------------------------------------------------------- 100,000 lines


def test_a_100k_line_ledger_verifies_and_appends_quickly(tmp_path) -> None:
    path = tmp_path / "autoresearch.jsonl"
    objs = (run_line(i, 1.0 + (i % 13) / 100, "keep" if i == 1 else "discard",
                     asi={"hypothesis": "a synthetic line", "rollback_reason": "worse"}) for i in range(1, 100_001))
    path.write_bytes(ledger.chain([HEADER, *objs]))
    t = time.perf_counter()
    state = ledger.load_state(path)
    read_s = time.perf_counter() - t
    assert state.chain.ok and state.chain.lines == 100_001 and state.next_run == 100_001
    t = time.perf_counter()
    ledger.append(path, run_line(100_001, 1.0))
    append_s = time.perf_counter() - t
    assert ledger.verify_chain(path.read_bytes()).ok
    assert read_s < 20 and append_s < 1.0, (read_s, append_s)  # generous: measured 0.8 s and 0.2 ms here


def test_tail_hash_reads_only_the_tail(tmp_path) -> None:
    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    data = ledger.chain([HEADER, *(run_line(i, 1.0) for i in range(1, 5001))])
    f = Counting(data)
    assert tail_hash(f, len(data)) == ledger.verify_chain(data).head
    assert Counting.read_bytes <= 8192  # of ~1 MB
