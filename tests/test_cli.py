"""The CLI as a user runs it: init, status, log, log-experiment and the seed's shell scripts.

Run: python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import importlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from toy import cli, cli_proc, git, lines, make_toy, runs

from harness import cli as cli_mod

REPO = Path(__file__).resolve().parent.parent


def test_init_makes_branch_session_files_and_header(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    assert git(root, "branch", "--show-current") == "autoresearch/t"
    for f in ("autoresearch.md", "autoresearch.ideas.md", "autoresearch.sh", "autoresearch.toml"):
        assert f in git(root, "ls-files")
    assert "autoresearch.jsonl" in (root / ".gitignore").read_text()
    header = lines(root)[0]
    assert header["type"] == "config" and header["metricName"] == "score" and header["bestDirection"] == "higher"
    md = (root / "autoresearch.md").read_text()
    assert "`train.py`" in md and "eval.py" in md and "## Learnings" in md
    # the base commit holds the target's files, on main; the session setup is on the branch
    assert "autoresearch: custom target files" in git(root, "log", "--format=%s", "main")
    toml = (root / "autoresearch.toml").read_text()
    assert '"eval.py" = "' in toml and '"autoresearch.sh" = "' in toml


def test_init_refuses_an_existing_branch_and_resume_switches(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    git(root, "checkout", "-q", "main")
    args = ["init", "--command", "python eval.py", "--metric", "score", "--direction", "higher",
            "--editable", "train.py", "--tag", "t"]
    assert cli(root, *args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(root, *args, "--resume") == 0
    assert git(root, "branch", "--show-current") == "autoresearch/t"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "unknown target 'nope'"),
        (["--command", "x"], "give --target NAME"),
        (["--target", "pretrain", "--metric", "x"], "exclude each other"),
        (["--command", "python e.py", "--metric", "m", "--direction", "lower", "--editable", "missing.py"], "missing in"),
        (["--command", "c", "--metric", "m", "--direction", "lower", "--editable", "a.py", "--fixed", "a.py"],
         "both editable and fixed"),
    ],
)
def test_init_errors_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    assert cli(tmp_path, "init", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_init_inside_another_repo_is_refused(tmp_path: Path, capsys) -> None:
    git(tmp_path, "init", "-q")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "t.py").write_text("A = 1\n")
    assert cli(sub, "init", "--command", "c", "--metric", "m", "--direction", "lower", "--editable", "t.py") == 2
    assert "inside the git repository" in capsys.readouterr().err


def test_commands_outside_a_workspace_say_so(tmp_path: Path) -> None:
    for args in (["status"], ["run"], ["resume"], ["experiment", "-d", "x"]):
        res = cli_proc(tmp_path, *args)
        assert res.returncode == 2 and "not an autoresearch workspace" in res.stderr, args
        assert "Traceback" not in res.stderr
    res = cli_proc(tmp_path / "nope", "status")
    assert res.returncode == 2 and "is not a directory" in res.stderr


def test_status_and_log(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--max-iterations", "6") == 0
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    rs = runs(root)
    assert st["runs"] == 6 and sum(st["counts"].values()) == 6
    assert st["baseline"] == rs[0].metric
    assert st["best"] == max(r.metric for r in rs if r.status == "keep")
    assert st["consistency"].startswith("ok")
    assert st["branch"] == "autoresearch/t"
    assert st["goal"] == "Maximize score."
    text = cli_proc(root, "status").stdout
    assert "baseline" in text and "confidence" in text and re.search(r"^consistency +ok", text, re.M)

    res = cli_proc(root, "log", "--json", "--status", "keep")
    kept = json.loads(res.stdout)
    assert kept and all(r["status"] == "keep" for r in kept)
    assert len(json.loads(cli_proc(root, "log", "--json", "--last", "2").stdout)) == 2
    table = cli_proc(root, "log", "--last", "3").stdout.splitlines()
    assert table[0].split()[:3] == ["run", "status", "score"] and len(table) == 4
    missing = cli_proc(root, "log", "--json", "--segment", "1")  # no such segment: an error, not an empty table
    assert missing.returncode == 2 and missing.stdout == "" and "segment" in missing.stderr


def test_status_reports_inconsistent_head(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    (root / "train.py").write_text("LR = 5\nWIDTH = 8\nUSE_BIAS = False\n")
    git(root, "commit", "-qam", "a manual edit behind the controller's back")
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    assert st["consistency"].startswith("warning") and "train.py" in st["consistency"]


def test_status_and_log_survive_bad_lines(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    with open(root / "autoresearch.jsonl", "a") as f:
        f.write("not json\n")
        f.write('{"type":"hook","stage":"before","exit_code":0}\n')
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    assert st["runs"] == 1 and st["bad_lines"][0]["lineno"] == 3
    res = cli_proc(root, "log")
    assert res.returncode == 0 and "line 3 skipped" in res.stderr


def test_reads_pi_autoresearch_layout_with_ms_timestamps(tmp_path: Path) -> None:
    (tmp_path / ".auto").mkdir()
    (tmp_path / ".auto" / "log.jsonl").write_text(
        '{"type":"config","name":"pi","metricName":"total_ms","metricUnit":"ms","bestDirection":"lower"}\n'
        '{"run":1,"commit":"aaaaaaa","metric":100,"metrics":{},"status":"keep","description":"baseline",'
        '"timestamp":1763700000000,"segment":0,"confidence":null}\n'
        '{"run":2,"commit":"bbbbbbb","metric":90,"metrics":{},"description":"faster","timestamp":1763700060000,'
        '"segment":0,"confidence":null,"asi":{"hypothesis":"cache it"}}\n'
    )
    rows = json.loads(cli_proc(tmp_path, "log", "--json").stdout)
    assert [r["status"] for r in rows] == ["keep", "keep"]  # a missing status reads as keep, as in pi
    assert rows[1]["timestamp"] == 1763700060.0


def test_log_experiment_and_seed_scripts(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "parse-metrics.sh"), "score"],
        input="x\nMETRIC score=1.5\nMETRIC score=2.5\n", capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == "2.5"
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "log-experiment.sh"), "--metric", "1.5", "--status", "keep",
         "--description", "baseline by hand", "--asi", '{"hypothesis": "seed style"}'],
        cwd=root, capture_output=True, text=True, env={"PATH": env_path, "HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "log-experiment.sh"), "--run", "2", "--commit", "abc1234", "--metric", "2.0",
         "--status", "keep", "--description", "better", "--metrics", '{"mem_mb": 3}', "--segment", "0"],
        cwd=root, capture_output=True, text=True, env={"PATH": env_path, "HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    rs = runs(root)
    assert [(r.run, r.metric, r.status) for r in rs] == [(1, 1.5, "keep"), (2, 2.0, "keep")]
    assert rs[0].commit == git(root, "rev-parse", "--short=7", "HEAD")
    assert rs[1].commit == "abc1234" and rs[1].metrics == {"mem_mb": 3.0}
    bad = cli_proc(root, "log-experiment", "--metric", "1", "--status", "keep", "--description", "x", "--asi", "nope")
    assert bad.returncode == 2 and "--asi must be a JSON object" in bad.stderr


def test_log_experiment_fills_the_confidence_after_the_line(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    for metric, status in (("1.0", "keep"), ("1.1", "discard"), ("2.0", "keep"), ("1.5", "discard"), ("0", "crash")):
        assert cli(root, "log-experiment", "--metric", metric, "--status", status, "--description", status) == 0
    conf = [line["confidence"] for line in lines(root) if "run" in line]
    # by hand: after 3 results [1.0, 1.1, 2.0] the median is 1.1 and the MAD 0.1, |2.0 - 1.0| / 0.1 = 10;
    # after [1.0, 1.1, 2.0, 1.5] the median is 1.3 and the MAD 0.25, so 4; a crash line carries none
    assert conf[:2] == [None, None]
    assert conf[2] == pytest.approx(10.0) and conf[3] == pytest.approx(4.0) and conf[4] is None


def test_run_flag_validation(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    for args, msg in ((["--until", "7pm"], "HH:MM"), (["--max-iterations", "0"], "at least 1"),
                      (["--max-hours", "-1"], "positive")):
        res = cli_proc(root, "run", *args)
        assert res.returncode == 2 and msg in res.stderr, (args, res.stderr)


def test_help_explains_every_command() -> None:
    for cmd in ("init", "run", "experiment", "resume", "status", "log"):
        proc = cli_proc(Path("."), cmd, "--help")
        assert proc.returncode == 0 and "-C DIR" in proc.stdout, cmd


def test_one_command_table_lists_each_command_once_and_every_handler_exists() -> None:
    top = cli_proc(Path("."), "--help").stdout
    listed = re.findall(r"^    (\S+)", top.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0], re.M)
    assert listed == list(cli_mod.COMMANDS)
    for name, cmd in cli_mod.COMMANDS.items():
        module, _, function = cmd.handler.partition(":")
        mod = importlib.import_module(f"harness.{module}")
        assert callable(getattr(mod, function)), name
        assert all(issubclass(e, Exception) for e in mod.USER_ERRORS), name


def test_dashboard_words_its_os_errors_as_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "autoresearch.toml").write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli(tmp_path, "dashboard", "--port", str(port)) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err and err.count("\n") == 1
    (tmp_path / "autoresearch.jsonl").mkdir()  # a ledger that cannot be read
    assert cli(tmp_path, "dashboard", "--port", "0") == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "autoresearch.jsonl" in err and err.count("\n") == 1


def test_pretrain_init_carries_the_targets_session_settings(tmp_path: Path) -> None:
    # CI has no CUDA: the [session_cpu] values apply over [session]; init's own flags win over both.
    assert cli(tmp_path, "init", "ws", "--target", "pretrain", "--budget", "7", "--calibrate", "3") == 0
    from harness import config as config_mod

    cfg = config_mod.load(tmp_path / "ws")
    assert cfg.metric_source == "result_file" and cfg.heldout_metric == "heldout_bpb"
    assert (cfg.startup_allowance_s, cfg.startup_allowance_frac) == (15, 0.1)
    assert cfg.evaluate == "python prepare.py --evaluate"
    assert cfg.time_budget_s == 7 and cfg.calibrate == 3
    assert cfg.prepare_command == "python prepare.py --dataset local"
    assert set(cfg.fixed_hashes) == {"prepare.py", "arkit.py", "autoresearch.sh"}  # the kit is fixed too
