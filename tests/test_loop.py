"""The controller end to end: real git repos in tmp dirs, real subprocess targets.

Run: python -m pytest tests/test_loop.py -q
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import TRAIN, cli, cli_proc, git, lines, make_toy, runs, set_constant, set_session

from harness import config as config_mod
from harness.loop import WorkspaceLock, normalized_diff_hash, parse_until


def test_mutate_run_ends_with_best_file_at_head(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "5") == 0
    rs = runs(root)
    assert [r.run for r in rs] == [1, 2, 3, 4, 5]
    assert rs[0].description == "baseline" and rs[0].status == "keep"
    kept = [r for r in rs if r.status == "keep"]
    best = max(kept, key=lambda r: r.metric)
    # the best-known file is at HEAD, and the tree is clean
    assert git(root, "show", f"{best.commit}:train.py") == (root / "train.py").read_text().rstrip("\n")
    assert git(root, "status", "--porcelain") == ""
    for r in rs:
        assert r.asi.get("hypothesis"), r
        assert r.duration_s is not None and r.duration_s >= 0
        if r.status == "discard":
            assert (root / ".autoresearch" / "patches" / f"{r.run}.diff").exists()
            assert (root / ".autoresearch" / "runs" / f"{r.run}.log").exists()
    # the budget and seed reached the run
    assert "budget 5 seed 42" in (root / ".autoresearch" / "runs" / "1.log").read_text()
    assert "METRIC score=" in (root / "run.log").read_text()
    # karpathy's summary block is parsed too
    assert rs[0].metrics["width"] == 8


def test_experiment_mode_keep_discard_and_revert(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    set_constant(root, "LR", "0.03")
    assert cli(root, "experiment", "-d", "LR up", "--asi", '{"hypothesis": "closer to the optimum"}') == 0
    set_constant(root, "LR", "0.3")
    assert cli(root, "experiment", "-d", "LR way up", "--asi", '{"hypothesis": "even more"}') == 0
    rs = runs(root)
    assert [r.status for r in rs] == ["keep", "keep", "discard"]
    assert rs[2].asi["rollback_reason"].startswith("worse by")
    assert "LR = 0.03" in (root / "train.py").read_text()
    log = git(root, "log", "--format=%s")
    assert 'Revert "experiment #3: LR way up"' in log
    assert rs[1].diff == {"files": ["train.py"], "added": 1, "removed": 1, "sha": rs[1].diff["sha"]}
    # Confidence after each run, by hand: |best kept - baseline| / MAD of the results so far.
    # After two results it is undefined (under 3 points); after the third it is defined.
    assert rs[1].confidence is None
    values = [r.metric for r in rs]
    spread = statistics.median(abs(v - statistics.median(values)) for v in values)
    assert rs[2].confidence == pytest.approx(abs(rs[1].metric - rs[0].metric) / spread)
    assert rs[2].confidence == pytest.approx(1.0, abs=1e-3)  # the baseline is the median: MAD is the kept gain


def test_nothing_to_evaluate_and_dirty_baseline_are_clear_errors(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    set_constant(root, "LR", "0.02")
    assert cli(root, "experiment", "-d", "x") == 2
    assert "no baseline yet" in capsys.readouterr().err
    git(root, "checkout", "train.py")
    assert cli(root, "experiment", "-d", "baseline") == 0
    assert cli(root, "experiment", "-d", "nothing") == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli(root, "experiment", "-d", "x", "--asi", "[1]") == 2
    assert "--asi must be a JSON object" in capsys.readouterr().err


def test_scope_violations_are_refused_before_running(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    head = git(root, "rev-parse", "HEAD")
    # a change to the fixed evaluation
    (root / "eval.py").write_text((root / "eval.py").read_text().replace("score = ", "score = 100 + "))
    assert cli(root, "experiment", "-d", "cheat") == 0
    # a new file outside the editable set
    (root / "helper.py").write_text("X = 1\n")
    set_constant(root, "LR", "0.02")
    assert cli(root, "experiment", "-d", "new file") == 0
    rs = runs(root)
    assert [r.status for r in rs[1:]] == ["checks_failed", "checks_failed"]
    assert "eval.py" in rs[1].asi["rollback_reason"]
    assert "helper.py" in rs[2].asi["rollback_reason"]
    assert git(root, "rev-parse", "HEAD") == head  # nothing was committed
    assert git(root, "status", "--porcelain") == ""  # and the tree is restored
    assert not (root / ".autoresearch" / "runs" / "2.log").exists()  # never run
    patch = (root / ".autoresearch" / "patches" / "3.diff").read_text()
    assert "helper.py" in patch and "LR = 0.02" in patch  # the refused edit is saved, not lost


def test_duplicate_change_is_refused(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.5")
    cli(root, "experiment", "-d", "LR 0.5", "--asi", '{"hypothesis": "h"}')
    set_constant(root, "LR", "0.5")
    cli(root, "experiment", "-d", "LR 0.5 again", "--asi", '{"hypothesis": "h"}')
    rs = runs(root)
    assert rs[1].status == "discard"
    assert rs[2].status == "discard"  # a repeat is not an integrity failure, and is never run
    assert rs[2].asi["rollback_reason"].startswith("duplicate: the same change as experiment #2")
    assert not (root / ".autoresearch" / "runs" / "3.log").exists()


def test_normalized_diff_hash_ignores_line_numbers() -> None:
    a = "diff --git a/t b/t\nindex 1..2\n@@ -1,3 +1,3 @@\n-LR = 1\n+LR = 2\n"
    b = "diff --git a/t b/t\nindex 3..4\n@@ -7,3 +7,3 @@\n-LR = 1\n+LR = 2  \n"
    assert normalized_diff_hash(a) == normalized_diff_hash(b)
    assert normalized_diff_hash(a) != normalized_diff_hash(a.replace("+LR = 2", "+LR = 3"))


def test_crash_and_missing_metric_are_crashes_and_reverted(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.0")  # log10(0) -> ValueError -> exit 1
    cli(root, "experiment", "-d", "LR zero", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    assert r.status == "crash" and r.metric == 0 and r.value is None
    assert "exit code 1" in r.asi["rollback_reason"]
    assert "ValueError" in r.asi["tail"]
    assert "LR = 0.01" in (root / "train.py").read_text()


def test_timeout_kills_the_run_and_logs_a_crash(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    cfg = config_mod.load(root)
    config_mod.save(root, config_mod.with_overrides(cfg, timeout_s=1.5))
    git(root, "commit", "-qam", "shorter timeout")
    (root / "train.py").write_text(TRAIN + "import time\ntime.sleep(30)\n")
    t0 = time.monotonic()
    cli(root, "experiment", "-d", "sleepy", "--asi", '{"hypothesis": "h"}')
    assert time.monotonic() - t0 < 15
    r = runs(root)[-1]
    assert r.status == "crash" and "timed out" in r.asi["rollback_reason"]


def test_checks_failed_is_never_kept(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", extra_init=["--checks", "python -c \"import train, sys; sys.exit(train.LR > 0.02)\""])
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.03")  # better score, but the checks refuse LR > 0.02
    cli(root, "experiment", "-d", "LR 0.03", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    assert r.status == "checks_failed" and "checks failed" in r.asi["rollback_reason"]
    assert r.metrics["score"] > runs(root)[0].metrics["score"]
    assert "LR = 0.01" in (root / "train.py").read_text()


def test_reset_mode_moves_the_branch_back(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws", extra_init=["--discard", "reset"])
    cli(root, "experiment", "-d", "baseline")
    head = git(root, "rev-parse", "HEAD")
    set_constant(root, "LR", "0.9")
    cli(root, "experiment", "-d", "worse", "--asi", '{"hypothesis": "h"}')
    assert runs(root)[-1].status == "discard"
    assert git(root, "rev-parse", "HEAD") == head
    assert "LR = 0.9" in (root / ".autoresearch" / "patches" / "2.diff").read_text()


def test_notes_edits_survive_a_discard(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    with open(root / "autoresearch.md", "a") as f:
        f.write("\n- learned: LR above 0.1 diverges\n")
    set_constant(root, "LR", "0.9")
    cli(root, "experiment", "-d", "worse", "--asi", '{"hypothesis": "h"}')
    assert runs(root)[-1].status == "checks_failed" or runs(root)[-1].status == "discard"
    assert runs(root)[-1].status == "discard"
    assert "LR above 0.1 diverges" in (root / "autoresearch.md").read_text()
    assert "update notes before experiment #2" in git(root, "log", "--format=%s")


@pytest.mark.parametrize("sandbox", ["auto", "checkout", "off"])
def test_run_modifying_a_fixed_file_never_counts(tmp_path: Path, sandbox: str) -> None:
    root = make_toy(tmp_path / "ws")
    set_session(root, sandbox=sandbox)
    cli(root, "experiment", "-d", "baseline")
    (root / "train.py").write_text(TRAIN.replace("0.01", "0.02") + "open(__file__.replace('train.py', 'eval.py'), 'a').write('#')\n")
    cli(root, "experiment", "-d", "tamper", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    if sandbox == "auto":  # under bubblewrap the fixed files of the run's checkout are read-only: the write fails
        assert r.status == "crash" and "Read-only file system" in r.asi["tail"]
    else:  # without it the write lands in the run's own checkout (or the workspace), and is seen
        assert r.status == "checks_failed" and "eval.py" in r.asi["rollback_reason"]
    assert "#" not in (root / "eval.py").read_text()


def test_failure_streak_stops_the_loop(tmp_path: Path, capsys) -> None:
    # every change crashes: eval.py refuses anything but the original constants
    evaluate = "import sys\nsrc = open('train.py').read()\nsys.exit(0 if 'LR = 0.01 ' in src and 'WIDTH = 8 ' in src " \
               "and 'USE_BIAS = False ' in src and print('METRIC score=1') is None else 1)\n"
    root = make_toy(tmp_path / "ws", evaluate=evaluate)
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "10", "--max-failure-streak", "3") == 0
    out = capsys.readouterr().out
    assert "3 experiments in a row were not kept" in out
    assert [r.status for r in runs(root)] == ["keep", "crash", "crash", "crash"]


def test_baseline_crash_stops_with_advice(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws", evaluate="print('no metric here')\n")
    assert cli(root, "run", "--max-iterations", "5") == 1  # a failed baseline is a failed run (exit 1)
    out = capsys.readouterr().out
    assert "the baseline run failed" in out
    assert len(runs(root)) == 1


def test_second_controller_is_refused(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    with WorkspaceLock(root / ".autoresearch"):
        assert cli_proc(root, "run", "--max-iterations", "1").returncode == 2
    # and the message names the holder (this process)
    res = None
    with WorkspaceLock(root / ".autoresearch"):
        res = cli_proc(root, "experiment", "-d", "baseline")
    assert "another autoresearch controller" in res.stderr


def test_parse_until_wraps_to_tomorrow() -> None:
    import datetime as dt

    now = dt.datetime(2026, 11, 21, 23, 0)
    assert dt.datetime.fromtimestamp(parse_until("07:30", now)) == dt.datetime(2026, 11, 22, 7, 30)
    assert dt.datetime.fromtimestamp(parse_until("23:30", now)) == dt.datetime(2026, 11, 21, 23, 30)
    with pytest.raises(ValueError):
        parse_until("25:00", now)


def wait_for_running(root: Path, limit_s: float = 60.0) -> None:
    """Until the journal says a run is in flight (state.json, phase running)."""
    state = root / ".autoresearch" / "state.json"
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if json.loads(state.read_text()).get("phase") == "running":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the run never started")


def test_sigint_finishes_the_current_experiment_then_stops(tmp_path: Path) -> None:
    slow = "import time\ntime.sleep(1.5)\n" + (Path(__file__).parent / "toy.py").read_text().split('EVAL = """\\\n')[1].split('"""')[0]
    root = make_toy(tmp_path / "ws", evaluate=slow)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), "run", "--max-iterations", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_running(root)  # inside the baseline run (not a fixed sleep: a loaded machine starts slowly)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "stopped by the user" in out
    rs = runs(root)
    assert len(rs) == 1 and rs[0].status == "keep"  # the baseline finished and was logged normally


def test_second_sigint_aborts_as_crash(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    (root / "train.py").write_text(TRAIN + "import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "-C", str(root), "experiment", "-d", "slow",
                             "--asi", '{"hypothesis": "h"}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_running(root)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    r = runs(root)[-1]
    assert r.status == "crash" and "aborted by the user" in r.asi["rollback_reason"]
    assert git(root, "status", "--porcelain") == ""
    assert "time.sleep" not in (root / "train.py").read_text()


FAULT_POINTS = ["after_propose", "after_state_committing", "after_commit", "after_state_running", "after_run",
                "after_append", "after_revert"]


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_at_every_step_then_resume_is_consistent(tmp_path: Path, point: str) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.9")  # a discard, so the revert steps are exercised too
    res = cli_proc(root, "experiment", "-d", "LR 0.9", "--asi", '{"hypothesis": "h"}', env={"AUTORESEARCH_FAULT": point})
    assert res.returncode == -signal.SIGKILL, res.stderr
    res = cli_proc(root, "resume")
    assert res.returncode == 0, res.stderr
    _assert_consistent(root)
    rs = runs(root)
    if point in ("after_propose", "after_state_committing"):
        assert len(rs) == 1  # nothing was run: the edit is stashed, not lost
        assert "LR = 0.9" in git(root, "stash", "show", "-p", "stash@{0}")
    else:
        assert len(rs) == 2
        expected = "discard" if point in ("after_append", "after_revert") else "crash"
        assert rs[1].status == expected
        if expected == "crash":
            assert "interrupted" in rs[1].asi["rollback_reason"]
    # and the loop goes on from there
    assert cli(root, "run", "--max-iterations", "2") == 0
    _assert_consistent(root)


def test_kill_during_the_run_then_resume(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    # without bubblewrap, and given the controller's pid, a run can kill the controller (under bubblewrap it
    # cannot: tests/test_adversarial.py)
    set_session(root, sandbox="checkout", env=("CTL_PID",))
    cli(root, "experiment", "-d", "baseline")
    # the experiment's command kills the controller (its grandparent through bash) mid-run
    (root / "train.py").write_text(TRAIN.replace("0.01", "0.02") + "import os, signal\nos.kill(int(os.environ['CTL_PID']), signal.SIGKILL)\n")
    proc = subprocess.Popen([sys.executable, "-c", (
        "import os, sys; os.environ['CTL_PID'] = str(os.getpid()); from harness.cli import main; "
        f"sys.exit(main(['-C', {str(root)!r}, 'experiment', '-d', 'killer', '--asi', '{{\"hypothesis\": \"h\"}}']))")])
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert (root / ".autoresearch" / "state.json").exists()
    assert cli_proc(root, "resume").returncode == 0
    _assert_consistent(root)
    r = runs(root)[-1]
    assert r.status == "crash" and "interrupted" in r.asi["rollback_reason"]
    assert "os.kill" not in (root / "train.py").read_text()


def test_torn_ledger_line_is_set_aside(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    with open(root / "autoresearch.jsonl", "ab") as f:
        f.write(b'{"run":2,"commit":"abc","met')
    res = cli_proc(root, "resume")
    assert "torn" in res.stdout
    aside = list((root / ".autoresearch").glob("torn-line-*.jsonl"))
    assert len(aside) == 1 and aside[0].read_bytes() == b'{"run":2,"commit":"abc","met'
    assert all(json.loads(x) for x in (root / "autoresearch.jsonl").read_text().splitlines())
    assert cli(root, "run", "--max-iterations", "1") == 0
    assert [r.run for r in runs(root)] == [1, 2]


def test_resume_reverts_a_logged_discard_left_at_head(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.9")
    cli_proc(root, "experiment", "-d", "worse", "--asi", '{"hypothesis": "h"}', env={"AUTORESEARCH_FAULT": "after_append"})
    (root / ".autoresearch" / "state.json").unlink()  # as if the state were already cleared
    res = cli_proc(root, "resume")
    assert "still at HEAD: reverted it" in res.stdout
    _assert_consistent(root)


def _assert_consistent(root: Path) -> None:
    state_file = root / ".autoresearch" / "state.json"
    assert not state_file.exists()
    text = (root / "autoresearch.jsonl").read_text()
    assert text.endswith("\n")
    nums = [d["run"] for d in lines(root) if "run" in d]
    assert nums == sorted(set(nums)), nums
    assert git(root, "status", "--porcelain") == ""
    res = cli_proc(root, "status", "--json")
    assert json.loads(res.stdout)["consistency"].startswith("ok"), res.stdout


class ScriptedAgent:
    """Applies a scripted list of LR values; records the feedback it was given."""

    name = "scripted"

    def __init__(self, values: list[str | Exception]):
        self.values = values
        self.feedback: list[str | None] = []

    def propose(self, ctx):
        from harness.agents.base import Proposal

        self.feedback.append(ctx.feedback)
        v = self.values.pop(0)
        if isinstance(v, Exception):
            raise v
        set_constant(ctx.root, "LR", v)
        return Proposal(f"LR {v}", {"hypothesis": "scripted"}, usage={"input_tokens": 10, "cost_usd": 0.01}, model="m1")


def _controller(root: Path):
    from harness.loop import Controller

    return Controller(root, config_mod.load(root), printer=lambda s: None, progress=False)


def test_duplicate_goes_back_to_the_agent_once_then_is_logged(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    ctl = _controller(root)
    agent = ScriptedAgent(["0.5", "0.5", "0.02", "0.5", "0.5", "0.5"])
    ctl.iterate(agent)  # baseline
    assert ctl.iterate(agent).decision.status == "discard"  # 0.5: worse
    res = ctl.iterate(agent)  # 0.5 again -> told, then 0.02 -> runs
    assert agent.feedback[-1] and "duplicate" in agent.feedback[-1]
    assert res.record["description"] == "LR 0.02" and res.decision.status == "keep"
    assert res.record["agent"]["input_tokens"] == 20 and res.record["agent"]["cost_usd"] == 0.02  # both requests
    assert ctl.iterate(agent).decision.reason.startswith("worse")  # 0.5 from the new base is a new diff
    res = ctl.iterate(agent)  # 0.5 twice in a row -> logged as a duplicate discard, never run
    assert res.decision.status == "discard" and res.decision.reason.startswith("duplicate")
    assert not (root / ".autoresearch" / "runs" / f"{res.record['run']}.log").exists()
    assert git(root, "status", "--porcelain") == ""


def test_a_failed_proposal_with_usage_is_logged_and_the_loop_goes_on(tmp_path: Path) -> None:
    from harness.agents.base import AgentError

    class Failed(AgentError):
        usage = {"input_tokens": 5, "cost_usd": 0.003}

    root = make_toy(tmp_path / "ws")
    ctl = _controller(root)
    agent = ScriptedAgent(["0.02", Failed("the model never submitted within 12 turns"), "0.03"])
    from harness.loop import StopRules

    why = ctl.run_loop(agent, StopRules(max_iterations=4))
    assert "max-iterations" in why
    rs = runs(root)
    assert [r.status for r in rs] == ["keep", "keep", "crash", "keep"]
    assert rs[2].description == "(proposal failed)" and "never submitted" in rs[2].asi["rollback_reason"]
    assert rs[2].agent["cost_usd"] == 0.003
    assert rs[1].agent == {"input_tokens": 10, "cost_usd": 0.01, "model": "m1", "name": "scripted"}


def test_an_agent_that_cannot_propose_stops_the_loop(tmp_path: Path) -> None:
    from harness.agents.base import AgentError
    from harness.loop import StopRules

    root = make_toy(tmp_path / "ws")
    why = _controller(root).run_loop(ScriptedAgent([AgentError("nothing left to try")]), StopRules(max_iterations=3))
    assert "could not propose" in why and "nothing left to try" in why
    assert len(runs(root)) == 1  # the baseline ran; nothing else was logged


def test_inspection_outputs_do_not_trip_the_scope_check(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    for name in ("progress.png", "report.html", "results.tsv"):
        (root / name).write_text("output")
    set_constant(root, "LR", "0.02")
    cli(root, "experiment", "-d", "LR 0.02", "--asi", '{"hypothesis": "h"}')
    assert runs(root)[-1].status == "keep"


def test_run_deleting_a_tracked_file_is_checks_failed(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    set_session(root, sandbox="off")  # in the workspace itself; a sandboxed run deletes only its own copy (below)
    cli(root, "experiment", "-d", "baseline")
    (root / "notes.txt").write_text("tracked\n")
    git(root, "add", "notes.txt")
    git(root, "commit", "-qm", "a tracked file")
    (root / "train.py").write_text(TRAIN.replace("0.01", "0.02") + "import os\nos.remove('notes.txt')\n")
    cli(root, "experiment", "-d", "deletes a file", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    assert r.status == "checks_failed" and "notes.txt" in r.asi["rollback_reason"]
    assert (root / "notes.txt").read_text() == "tracked\n"  # restored; the run's deletion went to a stash
    assert git(root, "status", "--porcelain") == ""


def test_a_sandboxed_run_deleting_a_tracked_file_deletes_only_its_own_copy(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    (root / "notes.txt").write_text("tracked\n")
    git(root, "add", "notes.txt")
    git(root, "commit", "-qm", "a tracked file")
    (root / "train.py").write_text(TRAIN.replace("0.01", "0.0316") + "import os\nos.remove('notes.txt')\n")
    cli(root, "experiment", "-d", "deletes a file", "--asi", '{"hypothesis": "h"}')
    assert runs(root)[-1].status == "keep"  # judged on its metric: the workspace never saw the deletion
    assert (root / "notes.txt").read_text() == "tracked\n"
    assert git(root, "status", "--porcelain") == ""
