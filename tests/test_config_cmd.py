"""`autoresearch config` and hand edits of autoresearch.toml (issue 13, item 7): a change is validated,
committed as a session-config commit and logged; one that changes what the metric means starts a new
segment; a hand edit found when `run`/`experiment` starts is treated the same way and never stashed.

Everything goes through the real CLI on the toy workspace (tests/toy.py): real git, real runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from toy import cli, cli_proc, git, lines, make_toy, runs

from harness import config as config_mod
from harness import ledger
from harness.journal import WorkspaceLock


def budgets(root: Path) -> dict[int, str]:
    """The AUTORESEARCH_TIME_BUDGET each run saw, from its log (the toy's eval.py prints it)."""
    out = {}
    for log in (root / ".autoresearch" / "runs").glob("*.log"):
        said = next(ln for ln in log.read_text().splitlines() if ln.startswith("budget "))  # "budget 5 seed 42"
        out[int(log.stem.split(".")[0])] = said.split()[1]
    return out


def config_lines(root: Path) -> list[dict]:
    return [x for x in lines(root) if x.get("type") == "config_change" or "config_change" in x]


def head_config(root: Path) -> config_mod.Config:
    return config_mod.loads(git(root, "show", "HEAD:autoresearch.toml"))


def test_config_lists_every_key_and_prints_one(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    capsys.readouterr()
    assert cli(root, "config") == 0
    listed = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert set(listed) == set(config_mod.KEYS)
    assert listed["time_budget_s"] == "5.0" and listed["metric.direction"] == '"higher"'
    assert listed["capacity"] == '"warn"' and listed["timeout_s"] == "none"
    assert cli(root, "config", "-v") == 0
    assert "the training time budget per run" in capsys.readouterr().out
    assert cli(root, "config", "editable") == 0
    assert capsys.readouterr().out.strip() == '["train.py"]'


def test_a_meaning_change_is_committed_logged_and_starts_a_segment(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "2") == 0
    before = git(root, "rev-parse", "HEAD")
    capsys.readouterr()

    assert cli(root, "config", "time_budget_s", "7") == 0
    out = capsys.readouterr().out
    assert "time_budget_s 5.0 -> 7.0" in out and "new segment" in out
    assert git(root, "rev-parse", "HEAD~1") == before  # one commit, on top of the session
    assert git(root, "log", "-1", "--format=%s").startswith("autoresearch: session config (config): time_budget_s")
    assert git(root, "status", "--porcelain") == ""
    assert head_config(root).time_budget_s == 7.0
    (change,) = config_lines(root)
    assert change["type"] == "config" and change["config_change"]["changes"] == {"time_budget_s": [5.0, 7.0]}
    assert change["time_budget_s"] == 7.0 and change["config_change"]["commit"] == git(root, "rev-parse", "--short=7",
                                                                                       "HEAD")
    state = ledger.load_state(root / "autoresearch.jsonl")
    assert len(state.segments) == 2 and not state.current.runs

    # the next run is the new segment's baseline, and the change holds for every later run
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "2") == 0
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    later = [r for r in runs(root) if r.segment == 1]
    assert len(later) == 3 and later[0].raw.get("baseline") is True
    assert {budgets(root)[r.run] for r in later} == {"7"}
    assert {budgets(root)[r.run] for r in runs(root) if r.segment == 0} == {"5"}

    assert cli(root, "status") == 0
    status = capsys.readouterr().out
    assert "config change (1):" in status and "new segment 1, by autoresearch config: time_budget_s 5.0 -> 7.0" in status
    assert cli(root, "status", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config_changes"][0]["changes"] == {"time_budget_s": [5.0, 7.0]} and d["config_changes"][0]["new_segment"]


def test_other_changes_are_logged_in_the_same_segment(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert cli(root, "config", "tolerance", "0.001") == 0
    assert cli(root, "config", "env", "FOO,BAR") == 0
    assert cli(root, "config", "timeout_s", "60") == 0
    assert cli(root, "config", "timeout_s", "none") == 0
    cfg = head_config(root)
    assert (cfg.tolerance, cfg.env, cfg.timeout_s) == (0.001, ("FOO", "BAR"), None)
    changes = config_lines(root)
    assert [c["type"] for c in changes] == ["config_change"] * 4
    assert [c["changes"] for c in changes] == [{"tolerance": [0.0, 0.001]}, {"env": [[], ["FOO", "BAR"]]},
                                               {"timeout_s": [None, 60.0]}, {"timeout_s": [60.0, None]}]
    assert len(ledger.load_state(root / "autoresearch.jsonl").segments) == 1
    capsys.readouterr()
    assert cli(root, "config", "tolerance", "0.001") == 0  # the same value: nothing committed, nothing logged
    assert "nothing changed" in capsys.readouterr().out and len(config_lines(root)) == 4


def test_keys_that_go_together_change_in_one_commit(tmp_path, capsys):
    """heldout_metric and heldout_command are validated together, so `config` takes several KEY VALUE pairs:
    one at a time each would be refused; together they are one config commit and one ledger line."""
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    capsys.readouterr()
    assert cli(root, "config", "heldout_metric", "score_test") == 2  # alone: refused, nothing changed
    assert "go together" in capsys.readouterr().err and config_lines(root) == []
    assert cli(root, "config", "heldout_metric", "score_test", "heldout_command", "python eval.py") == 0
    cfg = head_config(root)
    assert (cfg.heldout_metric, cfg.heldout_command) == ("score_test", "python eval.py")
    assert [c["changes"] for c in config_lines(root)] == [
        {"heldout_metric": [None, "score_test"], "heldout_command": [None, "python eval.py"]}]
    assert cli(root, "config", "heldout_metric", "none", "heldout_command") == 2  # a key without its value
    assert "has no value" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "said"), [
    ("time_budget_s", "soon", "time_budget_s must be a number"),
    ("metric.direction", "sideways", "metric.direction must be lower or higher"),
    ("time_budget_s", "-3", "time_budget_s must be > 0"),
    ("env", "ANTHROPIC_API_KEY", "looks like a secret"),
    ("editable", "eval.py", "files both editable and fixed"),
    ("budgett", "5", "unknown key 'budgett'"),
    ("fixed_hashes", "x", "fixed_hashes is written by autoresearch"),
])
def test_a_bad_change_is_refused_and_nothing_changes(tmp_path, capsys, key, value, said):
    root = make_toy(tmp_path / "ws")
    head, ledger_before = git(root, "rev-parse", "HEAD"), (root / "autoresearch.jsonl").read_bytes()
    capsys.readouterr()
    assert cli(root, "config", key, value) == 2
    assert said in capsys.readouterr().err
    assert git(root, "rev-parse", "HEAD") == head and git(root, "status", "--porcelain") == ""
    assert (root / "autoresearch.jsonl").read_bytes() == ledger_before


def test_config_refuses_while_a_controller_holds_the_workspace(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    with WorkspaceLock(root / ".autoresearch"):
        proc = cli_proc(root, "config", "seed", "7")
    assert proc.returncode == 2 and "another autoresearch controller" in proc.stderr
    assert head_config(root).seed == 42


def test_a_hand_edit_is_committed_when_run_starts_never_stashed(tmp_path, capsys):
    """The issue's report: `run` used a hand edit once, stashed it, and later runs went back to the old settings."""
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    toml = root / "autoresearch.toml"
    edited = toml.read_text().replace("time_budget_s = 5.0", "time_budget_s = 6.0") + "# six seconds: the toy is fast\n"
    toml.write_text(edited)
    capsys.readouterr()

    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "2") == 0
    out = capsys.readouterr().out
    assert "config: committed your edit of autoresearch.toml" in out and "time_budget_s 5.0 -> 6.0" in out
    assert git(root, "stash", "list") == ""
    assert git(root, "show", "HEAD:autoresearch.toml").strip() == edited.strip()  # as written, comment and all
    assert git(root, "log", "--format=%s").count("session config (hand edit)") == 1
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0  # and it stays
    assert [budgets(root)[r.run] for r in runs(root)] == ["5", "6", "6", "6"]
    assert [r.segment for r in runs(root)] == [0, 1, 1, 1] and runs(root)[1].raw.get("baseline") is True
    (change,) = config_lines(root)
    assert change["config_change"]["how"] == "hand edit"


def test_a_hand_edit_outside_the_metric_stays_in_the_segment_and_experiment_finds_it_too(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("max_failure_streak = 20", "max_failure_streak = 9"))
    (root / "train.py").write_text((root / "train.py").read_text().replace("WIDTH = 8", "WIDTH = 16"))
    assert cli(root, "experiment", "-d", "WIDTH 16", "--asi", '{"hypothesis": "closer to 32"}') == 0
    assert head_config(root).max_failure_streak == 9 and git(root, "stash", "list") == ""
    assert [(r.segment, r.status) for r in runs(root)] == [(0, "keep"), (0, "keep")]
    (change,) = config_lines(root)
    assert change["type"] == "config_change" and change["changes"] == {"max_failure_streak": [20, 9]}
    # the commit holds autoresearch.toml alone: the agent's edit went into the experiment's own commit
    assert git(root, "show", "--format=", "--name-only", change["commit"]) == "autoresearch.toml"


def test_a_broken_hand_edit_stops_run_named_and_stays_in_the_tree(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    toml = root / "autoresearch.toml"
    edited = toml.read_text().replace('direction = "higher"', 'direction = "up"')
    toml.write_text(edited)
    head = git(root, "rev-parse", "HEAD")
    capsys.readouterr()
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 2
    err = capsys.readouterr().err
    assert "autoresearch.toml (your uncommitted edit)" in err and "metric.direction must be lower or higher" in err
    assert toml.read_text() == edited and git(root, "rev-parse", "HEAD") == head and git(root, "stash", "list") == ""
    assert runs(root) == []


def test_setting_fixed_hashes_the_fixed_files_again_and_starts_a_segment(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    (root / "eval.py").write_text((root / "eval.py").read_text().replace("+ (0.1 if", "+ (0.2 if"))
    git(root, "commit", "-qm", "fix the evaluation", "eval.py")
    capsys.readouterr()
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 2  # a changed fixed file is refused
    assert "eval.py changed" in capsys.readouterr().err
    (root / "eval.py").write_text((root / "eval.py").read_text().replace("+ (0.2 if", "+ (0.3 if"))  # uncommitted
    assert cli(root, "config", "fixed", "eval.py") == 0  # the user accepts the evaluation as it now is
    assert git(root, "status", "--porcelain") == ""  # eval.py went into the config commit
    assert head_config(root).fixed_hashes["eval.py"] == hashlib.sha256((root / "eval.py").read_bytes()).hexdigest()
    assert "eval.py" in git(root, "show", "--format=", "--name-only", "HEAD").splitlines()
    (change,) = config_lines(root)
    assert change["type"] == "config" and list(change["config_change"]["changes"]) == ["fixed_hashes"]
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert [(r.segment, r.raw.get("baseline")) for r in runs(root)] == [(0, True), (1, True)]


def test_an_edit_during_an_interrupted_run_is_committed_after_recovery(tmp_path, capsys):
    """A real kill mid-run (SIGKILL at a fault point), then a hand edit, then `run`: recovery logs and reverts the
    interrupted experiment first, under the configuration it ran with; then the edit is committed, not stashed."""
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    killed = cli_proc(root, "run", "--agent", "mutate", "--max-iterations", "1",
                      env={"AUTORESEARCH_FAULT": "after_state_running"})
    assert killed.returncode == -9
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("seed = 42", "seed = 5"))
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert git(root, "stash", "list") == "" and head_config(root).seed == 5
    statuses = [(r.run, r.status) for r in runs(root)]
    assert statuses[1] == (2, "crash")  # the interrupted run, logged by recovery
    subjects = git(root, "log", "--format=%s").splitlines()
    assert subjects.index("autoresearch: session config (hand edit): seed 42 -> 5") < subjects.index(
        next(s for s in subjects if s.startswith('Revert "experiment #2')))  # it comes after the revert
    assert os.environ.get("AUTORESEARCH_FAULT") is None
    assert subprocess.run(["git", "diff", "--quiet"], cwd=root).returncode == 0


def test_a_config_commit_the_ledger_missed_is_logged_at_the_next_start(tmp_path, capsys):
    """The state a kill between the config commit and its ledger line leaves (made here with git, as
    commit_config would have committed it): the next `run` records the change before it runs anything."""
    root = make_toy(tmp_path / "ws")
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("time_budget_s = 5.0", "time_budget_s = 4.0"))
    git(root, "commit", "-qm", "autoresearch: session config (config): time_budget_s 5.0 -> 4.0", "autoresearch.toml")
    capsys.readouterr()
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert "config: logged the change committed as" in capsys.readouterr().out
    (change,) = config_lines(root)
    assert change["config_change"]["changes"] == {"time_budget_s": [5.0, 4.0]}
    config_commit = git(root, "log", "--format=%H", "-1", "--grep=session config (config)")
    assert config_commit.startswith(change["config_change"]["commit"])
    assert [(r.segment, r.raw.get("baseline")) for r in runs(root)] == [(0, True), (1, True)]
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert len(config_lines(root)) == 1  # logged once
