"""Fit and finish of the command line (issue 13, items 4, 5, 6 and 10): a reader that goes away, a
failed baseline, the PATH hint of the scripts, help strings and one-line errors.

Real processes and real pipes where the behaviour is the process's (a broken pipe, an exit code);
the parser itself is walked in process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from toy import cli, make_toy, set_session

from harness import ledger, records
from harness.cli import build_parser
from harness.cli_common import UserError, check_segment, require_session

REPO = Path(__file__).resolve().parent.parent


def autoresearch(root: Path, *args: str, **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), *args], **kw)


@pytest.fixture(scope="module")
def long_session(tmp_path_factory) -> Path:
    """A toy session whose ledger prints far more than a pipe holds (64 KiB): 1,500 runs."""
    root = make_toy(tmp_path_factory.mktemp("long") / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    path = root / "autoresearch.jsonl"
    state = ledger.load_state(path)
    for i in range(state.next_run, state.next_run + 1500):
        ledger.append(path, records.run_line(
            run=i, commit="abcdef0", status="discard", description=f"experiment {i}: " + "a longer description " * 4,
            metric=-1.5 - i / 1e4, metrics={"score": -1.5 - i / 1e4}, timestamp=1_800_000_000 + i, segment=0,
            confidence=None, asi={"hypothesis": "it will not help"}, reason="worse"))
    return root


# ------------------------------------------------------------------ item 4: a reader that goes away


def test_log_into_head_reads_one_line_and_exits_quietly(long_session) -> None:
    proc = autoresearch(long_session, "log", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert b"run" in first and b"status" in first
    assert err == ""  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert rc == 141  # 128 + SIGPIPE, as git: a cut output is told from a complete one


@pytest.mark.parametrize("command", ["log", "status", "resume"])
def test_a_reader_gone_before_the_first_line_is_a_quiet_141(long_session, command) -> None:
    read, write = os.pipe()
    os.close(read)  # no reader at all: the command's first write fails
    try:
        proc = autoresearch(long_session, command, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=60)
    assert err.decode() == "" and proc.returncode == 141


def test_head_in_a_shell_pipeline(long_session) -> None:
    # the user's own line, through bash: one line out, nothing on the terminal, git's status under pipefail
    script = (f"set -o pipefail; {sys.executable} -m harness.cli -C {long_session} log | head -1; "
              "echo \"rc=${PIPESTATUS[0]}\"")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    out = res.stdout.splitlines()
    assert len(out) == 2 and "status" in out[0] and out[1] == "rc=141"
    assert res.stderr == ""


# ------------------------------------------------------------------ item 5: a failed baseline


def run_proc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), "run", "--agent", "mutate", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_crashing_baseline_is_a_failed_run_with_its_last_lines(tmp_path) -> None:
    crash = "print('loading the data')\nraise SystemExit('RuntimeError: CUDA out of memory (the real reason)')\n"
    root = make_toy(tmp_path / "ws", evaluate=crash)
    res = run_proc(root, "--max-iterations", "5")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "the baseline run failed (exit code 1)" in out
    assert "| RuntimeError: CUDA out of memory (the real reason)" in out and "| loading the data" in out
    assert "make `bash autoresearch.sh` work" in out  # here the command is what is broken
    assert "Traceback" not in res.stderr
    assert len(ledger.load_state(root / "autoresearch.jsonl").runs) == 1  # it stopped at the first failure


def test_an_external_agents_failed_baseline_is_a_failed_experiment(tmp_path) -> None:
    """`experiment -d baseline` (what SKILL.md starts with) exits 1 on a failed baseline, as `run` does."""
    root = make_toy(tmp_path / "ws", evaluate="raise SystemExit('broken target')\n")
    res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), "experiment", "-d", "baseline"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "the baseline run failed" in res.stdout and "Traceback" not in res.stderr


def test_a_baseline_refused_by_a_check_names_the_check_not_the_command(tmp_path) -> None:
    # the quickstart's case: the command works (by hand too), but the budget check refuses the result
    slow = "import time\ntime.sleep(1.0)\nprint('METRIC score=1.0')\n"
    root = make_toy(tmp_path / "ws", evaluate=slow)
    set_session(root, time_budget_s=0.2, startup_allowance_s=0.0, startup_allowance_frac=0.0, eval_allowance_s=0.0)
    res = run_proc(root, "--max-iterations", "5")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "the baseline ran, but a check refused its result" in out and "over the allowance" in out
    assert "work (" not in out and "make `" not in out  # not the wrong hint: the command works
    assert "autoresearch.toml" in out
    [only] = ledger.load_state(root / "autoresearch.jsonl").runs
    assert only.status == "checks_failed"


# ------------------------------------------------------------------ item 6: autoresearch on PATH


def fresh_shell(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """A new login-less shell as a new terminal has it: a bare PATH without the venv, nothing inherited."""
    return subprocess.run(["env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin", "bash", "--norc",
                           "--noprofile", "-c", script], capture_output=True, text=True, timeout=60)


def test_setup_says_how_to_get_autoresearch_on_path_and_each_way_works_in_a_new_shell(tmp_path) -> None:
    res = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--path-hint"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    hint = res.stdout.splitlines()
    exe = str(REPO / ".venv" / "bin" / "autoresearch")
    assert fresh_shell("command -v autoresearch", tmp_path).returncode != 0  # a new shell lacks it: the hint is needed
    activate = next(ln.strip() for ln in hint if ln.strip().startswith("source "))
    export = next(ln.strip() for ln in hint if "export PATH=" in ln).split("or: ", 1)[1].split(", e.g.")[0]
    assert exe in hint[0]
    for way in (activate, export):
        r = fresh_shell(f"{way} && command -v autoresearch && autoresearch --version", tmp_path)
        assert r.returncode == 0, (way, r.stderr)
        assert r.stdout.splitlines()[0] == exe and r.stdout.splitlines()[1].startswith("autoresearch ")


def test_the_quickstarts_next_line_works_in_a_new_shell(tmp_path) -> None:
    ws = tmp_path / "my runs" / "quickstart"  # a space in the path, which the line must quote
    res = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--hint"], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "DIR": str(ws)})
    assert res.returncode == 0, res.stderr
    nxt = res.stdout.splitlines()[-1]
    assert nxt.startswith("next: ")
    command = nxt.removeprefix("next: ")
    make_toy(ws)
    # the line exactly as printed, in a new shell; --help makes it parse its arguments and stop there
    r = fresh_shell(f"{command} --help", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: autoresearch run" in r.stdout and "--max-iterations" in r.stdout
    r = fresh_shell(command.replace(" run --max-iterations 20", " status"), tmp_path)  # and it reaches the workspace
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("session ") and "autoresearch/t" in r.stdout


def test_program_is_the_full_path_unless_path_finds_this_install(tmp_path) -> None:
    code = "from harness.cli_common import program; print(program())"
    venv_bin = REPO / ".venv" / "bin"
    bare = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert bare.stdout.strip() == str(Path(sys.executable).with_name("autoresearch"))
    r = fresh_shell(f"{bare.stdout.strip()} --version", tmp_path)  # what it prints runs in a new shell
    assert r.returncode == 0 and r.stdout.startswith("autoresearch ")
    on_path = subprocess.run(["env", "-i", f"PATH={venv_bin}:/usr/bin:/bin", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=30)
    assert on_path.stdout.strip() == "autoresearch"


def test_inits_next_line_works_in_a_new_shell(tmp_path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text("X = 1\n")
    git_env = {k: os.environ[k] for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "PYTHONPATH") if k in os.environ}
    res = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in git_env.items()),
                          str(Path(sys.executable).with_name("autoresearch")), "init", str(ws), "--command",
                          "python train.py", "--metric", "m", "--direction", "lower", "--editable", "train.py"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    nxt = next(ln for ln in res.stdout.splitlines() if ln.startswith("next: ")).removeprefix("next: ")
    r = fresh_shell(f"{nxt} --help", tmp_path)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ item 10: help and errors


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_and_every_flag_a_help_string() -> None:
    # walks the real parser, so a flag or command added later without help fails here
    parser = build_parser()
    missing = []
    for name, sub in _subparsers(parser).items():
        if not (sub.description or "").strip():
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help:
            missing.append(f"autoresearch {'/'.join(action.option_strings)}: no help")
    assert missing == []


def test_init_budget_help_gives_each_targets_defaults_without_importing_torch() -> None:
    code = ("import sys, contextlib, io\nfrom harness.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n    main(['init', '--help'])\n"
            "print(buf.getvalue()); print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # argparse wraps the help
    assert res.stdout.rstrip().endswith("no torch")
    for folder in sorted((REPO / "assets").glob("*/target.toml")):
        t = tomllib.loads(folder.read_text())["target"]
        expect = f"{folder.parent.name} {t['time_budget_s']:g} with a GPU"
        if "cpu_time_budget_s" in t:
            expect += f", {t['cpu_time_budget_s']:g} without"
        assert expect in text, expect
    assert "pretrain 300 with a GPU, 60 without" in text and "a custom target 300" in text


@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_log_last_must_be_a_positive_count(long_session, value) -> None:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(long_session), "log", "--last", value],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""  # no empty table
    assert res.stderr.splitlines()[-1].startswith("autoresearch log: error: argument --last:")


def test_check_segment_names_the_segments_the_ledger_has(long_session) -> None:
    state = ledger.load_state(long_session / "autoresearch.jsonl")
    check_segment(state, 0)
    check_segment(state, None)
    with pytest.raises(UserError, match=r"no segment 9 in the ledger \(it has only segment 0\)"):
        check_segment(state, 9)


def test_require_session_refuses_a_directory_that_is_no_workspace(tmp_path, long_session) -> None:
    require_session(long_session)
    with pytest.raises(UserError, match="not an autoresearch workspace"):
        require_session(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_log_of_a_segment_the_ledger_lacks_is_an_error(long_session) -> None:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(long_session), "log", "--segment", "9"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == "autoresearch: error: no segment 9 in the ledger (it has only segment 0)"


def test_log_experiment_outside_a_workspace_creates_nothing(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "harness.cli", "log-experiment", "--metric", "1.0", "--status", "keep",
                          "--description", "by hand"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "not an autoresearch workspace" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no ledger, no .autoresearch/


def test_a_failed_init_leaves_no_directory_behind(tmp_path) -> None:
    for args in (["--target", "no-such-target"],
                 ["--command", "python t.py", "--metric", "m", "--direction", "lower", "--editable", "missing.py"]):
        ws = tmp_path / "new" / "ws"
        res = subprocess.run([sys.executable, "-m", "harness.cli", "init", str(ws), *args], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("autoresearch: error:"), res.stderr
        assert not ws.exists()
