"""Switching from pi-autoresearch (davebcn87/pi-autoresearch): its metric names (`METRIC total_µs=15200`,
its README's example) in real runs and in the CLI, and `status`/`log` on pi workspaces built here in pi's
own line format (../shared/reference/formats.md: ms timestamps, hook lines, a missing status read as
keep), with pi's rule for `.auto/log.jsonl` against a flat `autoresearch.jsonl`. Issue 13, items 13
and 14. Real git, real runs. About 10 s.

Run: /work/main/.venv/bin/python -m pytest tests/test_pi_compat.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ledger
from harness.metrics import is_metric_name, parse_metrics
from tests.toy import cli, cli_proc

REPO = Path(__file__).resolve().parents[1]

# pi's lines as pi writes them (PI:jsonl.ts, index.ts, hooks.ts): ms timestamps, a hook line, no status on run 3.
PI_LINES = [
    {"type": "config", "name": "speed up the parser", "metricName": "total_µs", "metricUnit": "µs",
     "bestDirection": "lower"},
    {"run": 1, "commit": "{c}", "metric": 15200, "metrics": {"compile_µs": 4200}, "status": "keep",
     "description": "baseline", "timestamp": 1763700000000, "segment": 0, "confidence": None},
    {"type": "hook", "stage": "after", "exit_code": 0, "duration_ms": 12, "stdout_bytes": 0, "timed_out": False},
    {"run": 2, "commit": "{c}", "metric": 16100, "metrics": {"compile_µs": 4300}, "status": "discard",
     "description": "unroll", "timestamp": 1763700060000, "segment": 0, "confidence": None,
     "asi": {"hypothesis": "fewer branches", "rollback_reason": "slower"}},
    {"run": 3, "commit": "{c}", "metric": 14000, "metrics": {"compile_µs": 4100}, "description": "cache tokens",
     "timestamp": 1763700120000, "segment": 0, "confidence": 2.1, "asi": {"hypothesis": "cache it"}},
]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def pi_workspace(root: Path, *, flat: bool = False, dot_auto: bool = True) -> Path:
    """A git repo as pi leaves it: commits kept, session files under .auto/ (gitignored), no autoresearch.toml."""
    root.mkdir(parents=True)
    git(root, "init", "-q")
    (root / "parser.ts").write_text("export const parse = () => 1\n")
    (root / ".gitignore").write_text(".auto/\nautoresearch.jsonl\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "parser")
    head = git(root, "rev-parse", "--short=7", "HEAD")
    text = "".join(json.dumps(obj, ensure_ascii=False).replace("{c}", head) + "\n" for obj in PI_LINES)
    if dot_auto:
        (root / ".auto").mkdir()
        (root / ".auto" / "log.jsonl").write_text(text, encoding="utf-8")
        (root / ".auto" / "prompt.md").write_text("# speed up the parser\n")
    if flat:  # a stale flat ledger from before pi 1.6, or another tool's
        (root / "autoresearch.jsonl").write_text(
            '{"type":"config","name":"old flat session","metricName":"wall_s","metricUnit":"s","bestDirection":"lower"}\n'
            '{"run":1,"commit":"0000000","metric":9,"status":"keep","description":"old","timestamp":1700000000}\n')
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


# ------------------------------------------------------------------------------- metric names (13)


def test_pis_metric_names_parse() -> None:
    text = "METRIC total_µs=15200\nMETRIC compile_µs=4200\nMETRIC p99.latency_ms=3.5\nMETRIC 2nd_pass=1\n"
    assert parse_metrics(text) == {"total_µs": 15200.0, "compile_µs": 4200.0, "p99.latency_ms": 3.5, "2nd_pass": 1.0}
    # pi's regex is [\w.µ]+ without the u flag: ASCII word characters, '.', and U+00B5 only
    assert not parse_metrics("METRIC total_μs=1\nMETRIC a-b=1\nMETRIC naïve=1\nMETRIC __proto__=1\n")
    assert is_metric_name("total_µs") and not is_metric_name("total_μs") and not is_metric_name("constructor")


def test_a_run_printing_total_us_is_measured_not_crashed(tmp_path: Path) -> None:
    """pi's documented example as a custom target's metric, through init and a real run."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text("N = 100\n")
    (root / "bench.py").write_text("import train\nprint(f'METRIC total_µs={train.N * 152}')\n"
                                   "print('METRIC compile.ms=4200   # secondary')\n")
    assert cli(root, "init", "--command", "python bench.py", "--metric", "total_µs", "--unit", "µs",
               "--direction", "lower", "--editable", "train.py", "--fixed", "bench.py", "--budget", "5",
               "--tag", "t") == 0
    res = cli_proc(root, "experiment", "-d", "baseline", "--json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    (r,) = ledger.load_state(root / "autoresearch.jsonl").runs
    assert (r.status, r.metric) == ("keep", 15200.0) and r.metrics.get("compile.ms") == 4200.0
    status = json.loads(cli_proc(root, "status", "--json").stdout)
    assert status["metric"]["name"] == "total_µs" and status["best"] == 15200.0


def test_init_refuses_a_metric_name_no_metric_line_can_carry(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text("N = 1\n")
    res = cli_proc(root, "init", "--command", "true", "--metric", "val-bpb", "--direction", "lower",
                   "--editable", "train.py")
    assert res.returncode == 2 and "METRIC line cannot carry" in res.stderr
    assert not (root / "autoresearch.toml").exists()


# ---------------------------------------------------------------------------- pi workspaces (14)


def test_status_works_read_only_in_a_pure_pi_workspace(tmp_path: Path) -> None:
    root = pi_workspace(tmp_path / "pi")
    before = snapshot(root)
    res = cli_proc(root, "status")
    assert res.returncode == 0, res.stderr
    assert "speed up the parser" in res.stdout and "total_µs (lower is better, µs)" in res.stdout
    assert "3: 2 kept, 1 discarded" in res.stdout  # run 3 has no status: pi reads it as keep
    assert "no autoresearch.toml here" in res.stdout
    d = json.loads(cli_proc(root, "status", "--json").stdout)
    assert (d["baseline"], d["best"], d["best_run"], d["ledger"]) == (15200.0, 14000.0, 3, ".auto/log.jsonl")
    assert d["consistency"].startswith("ok: HEAD descends from the last kept commit")
    for view in (["log"], ["log", "--json"], ["export", "--tsv", "-o", "-"]):
        assert cli_proc(root, *view).returncode == 0, view
    assert snapshot(root) == before and not (root / ".autoresearch").exists()  # nothing written


def test_both_ledgers_present_pi_rule_reads_dot_auto(tmp_path: Path) -> None:
    """pi (paths.ts sessionFilePath): with any .auto/ session file, .auto/ is read and flat legacy peers ignored."""
    root = pi_workspace(tmp_path / "both", flat=True)
    assert ledger.ledger_path(root) == root / ".auto" / "log.jsonl"
    assert ledger.ignored_peer(root) == root / "autoresearch.jsonl"
    res = cli_proc(root, "status")
    assert res.returncode == 0 and "speed up the parser" in res.stdout
    assert "autoresearch.jsonl beside it is not read" in res.stdout
    rows = json.loads(cli_proc(root, "log", "--json").stdout)
    assert [r["description"] for r in rows] == ["baseline", "unroll", "cache tokens"]
    # any .auto/ session file puts the workspace in pi's layout, as in pi
    (root / ".auto" / "log.jsonl").unlink()
    (root / ".auto" / "prompt.md").unlink()
    assert ledger.ledger_path(root) == root / "autoresearch.jsonl"
    (root / ".auto" / "ideas.md").write_text("- try a trie\n")
    assert ledger.ledger_path(root) == root / ".auto" / "log.jsonl"


def test_flat_only_is_read_as_the_seed_and_old_pi_write_it(tmp_path: Path) -> None:
    root = pi_workspace(tmp_path / "flat", flat=True, dot_auto=False)
    assert ledger.ledger_path(root) == root / "autoresearch.jsonl" and ledger.ignored_peer(root) is None
    res = cli_proc(root, "status")
    assert res.returncode == 0 and "old flat session" in res.stdout and "not read" not in res.stdout


@pytest.mark.parametrize("standalone", [False, True])
def test_log_experiment_appends_where_pi_reads(tmp_path: Path, standalone: bool) -> None:
    """Whoever writes (the harness, or the python3-only writer) writes the file pi and status read."""
    root = pi_workspace(tmp_path / "pi", flat=True)
    env = {"AUTORESEARCH_STANDALONE": "1"} if standalone else {}
    res = subprocess.run(["bash", str(REPO / "skills" / "autoresearch" / "scripts" / "log-experiment.sh"),
                          "--metric", "13000", "--status", "keep", "--description", "trie"],
                         cwd=root, capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **env,
                              **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
    assert res.returncode == 0, res.stderr
    st = ledger.load_state(root / ".auto" / "log.jsonl")
    assert [r.run for r in st.runs] == [1, 2, 3, 4] and st.runs[-1].metric == 13000.0
    assert st.chain.ok  # pi's unchained lines are a legacy prefix; ours chain from there
    assert len(ledger.load_state(root / "autoresearch.jsonl").runs) == 1  # the ignored flat file is untouched
