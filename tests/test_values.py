"""Views never crash on any value in the ledger: hostile ledgers through the real CLI.

A ledger written by an older version, by another tool or by hand may hold 1e308, huge ints,
strings where numbers belong, nested junk, a bare NaN token, negative durations, a metric of 0
for every run, a single run... For each such ledger `report`, `plot`, `log`, `status`,
`export --tsv` and the dashboard's page and update run on a real toy workspace; each must exit
0 and print nothing that says inf or nan, and no traceback.

Run: .venv/bin/python -m pytest tests/test_values.py -q      (about 20 s)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from toy import make_toy

from harness import ledger, points
from harness.cli import main
from harness.dashboard import Dashboard

T0 = 1_760_000_000
HEADER = {"type": "config", "name": "hostile", "metricName": "score", "metricUnit": "", "bestDirection": "higher"}


def run(n: int, metric: object, status: str = "keep", **extra: object) -> dict:
    return {"run": n, "commit": f"{n:07x}", "metric": metric, "metrics": {"score": metric}, "status": status,
            "description": f"change {n}", "timestamp": T0 + 300 * n, "segment": 0, "confidence": None, **extra}


def five(values: list[object], **extra: object) -> list[dict]:
    """A session of len(values) runs: the first the baseline, the others keeps and discards."""
    return [HEADER, *(run(i + 1, v, "keep" if i % 2 == 0 else "discard", **extra) for i, v in enumerate(values))]


JUNK = {"a": {"b": [1, {"c": None}]}, "s": "text", "t": True, "l": [1, 2], "n": None, "big": 1e308}
CASES: dict[str, list[dict | str]] = {
    "1e308": five([1.0, 1e308, 0.5, -1e308, 2.0]),
    "-1e308 baseline": five([-1e308, 1.0, 2.0]),
    "max float both ways": five([1.7976931348623157e308, -1.7976931348623157e308, 1.0]),
    "huge ints": five([2**64 - 1, 2**63, -(2**63), 1]),
    # percentages against a near-zero baseline, and a confidence over a near-zero spread, overflow
    "tiny baseline": five([1e-300, 0.5, 1e14, 2.0]),
    "tiny spread": five([5e-324, 0.0, 1e-323, 5e-324, 1e14]),
    "zero for every run": five([0, 0, 0, 0, 0.0]),
    "single run": [HEADER, run(1, 0.5)],
    "single crash": [HEADER, run(1, 0, "crash")],
    "strings for numbers": [HEADER, run(1, 1.0), run(2, "0.5"), {**run(3, 2.0), "duration_s": "long",
                            "timestamp": "yesterday", "confidence": "high", "metrics": {"score": "2", "x": "nan"}}],
    "nested junk in metrics": [HEADER, {**run(1, 1.0), "metrics": JUNK}, {**run(2, 2.0), "metrics": [1, 2]},
                               {**run(3, 3.0), "metrics": "junk"}],
    "bare NaN and Infinity tokens": [HEADER, run(1, 1.0), '{"run": 2, "metric": NaN, "status": "keep"}',
                                     '{"run": 3, "metric": Infinity, "status": "keep"}',
                                     '{"run": 4, "metric": -Infinity}', '{"run": 5, "metric": 1e400}', run(6, 2.0)],
    "negative and huge durations": five([1.0, 2.0, 3.0], duration_s=-500.0)
    + [run(9, 4.0, duration_s=1e308), run(10, 5.0, duration_s=1.7e308), run(11, 6.0, duration_s=2**64 - 1)],
    "timestamps out of range": [HEADER, {**run(1, 1.0), "timestamp": 1e308}, {**run(2, 2.0), "timestamp": -1e18},
                                {**run(3, 3.0), "timestamp": 2**64 - 1}, {**run(4, 4.0), "timestamp": -1},
                                {**run(5, 5.0), "timestamp": 253402300800}],
    "confidence extremes": [HEADER, run(1, 1.0), run(2, 2.0, confidence=1e308), run(3, 3.0, confidence=-1e308),
                            run(4, 4.0, confidence=2**64 - 1)],
    "junk asi, diff, agent": [HEADER, run(1, 1.0, asi="a string", diff={"files": 5, "added": "x", "removed": [1]},
                                      agent={"cost_usd": 1e308, "model": {"x": 1}}),
                              run(2, 2.0, asi={"hypothesis": {"nested": [1e308]}, "rollback_reason": 7},
                                  diff={"files": "train.py", "added": 1e308}, agent={"cost_usd": "$5"}),
                              run(3, 3.0, asi=[1, 2], diff=[1], agent=[2], reason={"x": 1}),
                              run(4, 4.0, agent={"cost_usd": 1.7e308}), run(5, 5.0, agent={"cost_usd": -1e308})],
    "junk samples, heldout, evidence": [
        HEADER, run(1, 1.0, samples=5, heldout=[1], evidence="e"),
        run(2, 2.0, samples=[{"x": 1}, "y"], heldout={"score": "high", "error": {"x": 1}}, evidence={"a": 1e308}),
        run(3, 3.0, samples=[], heldout={"score": 1e308}), run(4, 4.0, heldout={"score": [1]})],
    "run numbers": [HEADER, run(2**64 - 1, 1.0), run(-5, 2.0), run(0, 3.0), run(0, 4.0), run(2**63, 5.0)],
    "calibration junk": [HEADER, {"type": "calibration", "sigma": 1e308, "n": 3, "values": [1e308]}, run(1, 1.0),
                         run(2, 2.0), {"type": "calibration", "sigma": 0, "n": "x", "method": {"m": 1}}, run(3, 3.0)],
    "header junk": [{"type": "config", "name": {"n": 1}, "metricName": ["score"], "metricUnit": 1e308,
                     "bestDirection": "lower"}, run(1, 1e308), run(2, 1.0), run(3, 0.5)],
    "commits and descriptions": [HEADER, {**run(1, 1.0), "commit": "--version", "description": ["list"]},
                                 {**run(2, 2.0), "commit": 12345, "description": None},
                                 {**run(3, 3.0), "commit": "deadbeef" * 10, "description": "x" * 100_000},
                                 {**run(4, 4.0), "commit": "HEAD~1", "description": "{{ROWS}} \x00 \u2028 nul"}],
    "statuses": [HEADER, run(1, 1.0, "weird"), run(2, 2.0, None), run(3, 1e308, "crash"), run(4, 2.0, "checks_failed"),
                 run(5, -1e308, "discard")],
    "all crashes then 1e308": [HEADER, run(1, 0, "crash"), run(2, 0, "checks_failed"), run(3, 1e308)],
    "segments": [HEADER, run(1, 1.0), run(2, 2.0), {**HEADER, "bestDirection": "lower"}, run(3, 1e308),
                 {**HEADER, "metricName": "other"}, run(4, 0), run(5, 0)],
    "only junk lines": [HEADER, "not json", "[1, 2]", '"a string"', "{}", '{"run": "x"}', run(1, 1.0)],
}
COMMANDS = [["report"], ["plot"], ["log"], ["log", "--json"], ["status"], ["status", "--json"],
            ["export", "--tsv", "-o", "-", "--segment", "all"]]
# what a view must never show: a non-finite number (inf, nan, 1.#INF, Infinity) or a traceback
BAD = re.compile(r"(?<![\w.])[-+]?(?:inf(?:inity)?|nan)(?![\w])|Traceback", re.IGNORECASE)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy(tmp_path_factory.mktemp("values") / "ws")


def write(root: Path, lines: list[dict | str]) -> None:
    # json, not orjson: it writes ints beyond 64 bits, as another tool might
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (root / ledger.LEDGER_NAME).write_text(text)


def visible(text: str) -> str:
    """A page without its script and style, whose code may say isNaN."""
    return re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.S | re.I)


def check(text: str, what: str) -> None:
    # the warnings about lines that do not parse quote the line and the JSON parser ("number is infinity")
    text = "\n".join(line for line in text.splitlines() if not re.search(r"ledger (line|warning)", line))
    bad = BAD.search(text)
    assert bad is None, f"{what}: {text[max(0, bad.start() - 200):bad.end() + 100]!r}"


@pytest.mark.parametrize("case", list(CASES))
def test_views_survive_hostile_ledgers(case: str, workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workspace, CASES[case])
    for argv in COMMANDS:
        rc = main(["-C", str(workspace), *argv])
        out, err = capsys.readouterr()
        assert rc == 0, f"{argv}: exit {rc}\n{err}"
        if "--json" in argv:
            data = json.loads(out, parse_constant=lambda c, a=argv: pytest.fail(f"{a}: {c} in the JSON"))
            if isinstance(data, dict):
                data.pop("bad_lines")  # quoted as they are, see check()
            out = json.dumps(data)
        check(out + err, " ".join(argv))
    check(visible((workspace / "report.html").read_text()), "report.html")
    assert (workspace / "progress.png").read_bytes().startswith(b"\x89PNG")
    dash = Dashboard(workspace)
    check(visible(dash.page().decode()), "dashboard page")
    check(json.dumps(dash.update("", 0)), "dashboard update")


def test_a_chained_hostile_ledger_is_read_like_a_hand_written_one(workspace: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # the views must not depend on the chain: the same values, appended by the controller's own writer
    lines = [HEADER, run(1, 1.0), run(2, 1e308), run(3, 2.0), run(4, 1e20)]  # all kept
    (workspace / ledger.LEDGER_NAME).write_bytes(ledger.chain(lines))
    assert main(["-C", str(workspace), "status"]) == 0
    out = capsys.readouterr().out
    check(out, "status")
    assert re.search(r"best\s+2\b", out), out  # 1e308 is no result: the best is the largest sane value


def test_clean_state_is_the_identity_on_a_sane_ledger() -> None:
    lines = five([1.0, 2.0, 0.5, 3.0], duration_s=12.5, agent={"cost_usd": 0.25})
    state = ledger.fold(ledger.parse_lines(b"".join(orjson.dumps(x) + b"\n" for x in lines)).entries)
    clean = points.clean_state(state)
    assert [r is c for r, c in zip(state.runs, clean.runs, strict=True)] == [True] * 4
    assert clean.cost_usd == state.cost_usd == 1.0
