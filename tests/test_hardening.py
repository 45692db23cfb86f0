"""The repository side of issue 10: what the controller refuses or repairs about git itself.

Editable files must be plain files (no symlink, no submodule) at init and in every proposal;
`experiment` refuses a detached HEAD; a commit made by something else during a run is saved and
the branch put back, never reverted in its place; a kill during a keep's held-out evaluation
resumes the evaluation instead of discarding the keep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from toy import TRAIN, cli, cli_proc, git, lines, make_toy, runs, set_constant, set_session

from harness.cli import main


def test_init_refuses_a_symlinked_editable_file(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "real_train.py").write_text(TRAIN)
    (root / "train.py").symlink_to(tmp_path / "real_train.py")
    (root / "eval.py").write_text("print('METRIC score=1')\n")
    rc = main(["-C", str(root), "init", "--command", "python eval.py", "--metric", "score", "--editable", "train.py",
               "--fixed", "eval.py", "--direction", "higher", "--budget", "5", "--tag", "t"])
    assert rc != 0
    assert "train.py is a symbolic link" in capsys.readouterr().err


def test_init_refuses_an_editable_file_inside_a_nested_repository(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root / "sub")], check=True)
    (root / "sub" / "train.py").write_text(TRAIN)
    (root / "eval.py").write_text("print('METRIC score=1')\n")
    rc = main(["-C", str(root), "init", "--command", "python eval.py", "--metric", "score", "--editable",
               "sub/train.py", "--fixed", "eval.py", "--direction", "higher", "--budget", "5", "--tag", "t"])
    assert rc != 0
    assert "inside the git submodule or nested repository sub" in capsys.readouterr().err


def test_a_proposal_that_turns_the_editable_file_into_a_symlink_is_refused(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    hidden = tmp_path / "elsewhere.py"
    hidden.write_text(TRAIN.replace("0.01", "0.0316"))
    (root / "train.py").unlink()
    (root / "train.py").symlink_to(hidden)
    assert cli(root, "experiment", "-d", "symlink", "--asi", '{"hypothesis": "h"}') == 0
    last = runs(root)[-1]
    assert last.status == "checks_failed" and "symbolic link" in last.asi["rollback_reason"]
    assert not (root / "train.py").is_symlink()


def test_experiment_refuses_a_detached_head(tmp_path: Path, capsys) -> None:
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    git(root, "checkout", "-q", "--detach", "HEAD")
    set_constant(root, "LR", "0.02")
    assert cli(root, "experiment", "-d", "LR 0.02", "--asi", '{"hypothesis": "h"}') != 0
    assert "HEAD is detached" in capsys.readouterr().err
    assert len(runs(root)) == 1


def test_a_commit_made_during_the_run_is_saved_and_never_reverted_in_place_of_ours(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    # in the workspace itself (sandbox "off"), so that the run can reach the repository
    text = (root / "autoresearch.toml").read_text()
    assert 'sandbox = "auto"' in text
    (root / "autoresearch.toml").write_text(text.replace('sandbox = "auto"', 'sandbox = "off"'))
    git(root, "commit", "-qam", "run in the workspace")
    assert cli(root, "experiment", "-d", "baseline") == 0
    sneaky = ("import subprocess, os\nws = os.environ['SNEAKY_WS']\n"
              "open(os.path.join(ws, 'extra.txt'), 'w').write('x')\n"
              "subprocess.run(['git', '-C', ws, 'add', 'extra.txt'])\n"
              "subprocess.run(['git', '-C', ws, 'commit', '-qm', 'foreign'])\n")
    set_constant(root, "LR", "0.0316")  # a keep, but for the foreign commit
    (root / "train.py").write_text((root / "train.py").read_text() + sneaky)
    res = cli_proc(root, "experiment", "-d", "LR 0.0316 + a foreign commit", "--asi", '{"hypothesis": "h"}',
                   env={"SNEAKY_WS": str(root)})
    assert res.returncode == 0, res.stderr
    last = runs(root)[-1]
    assert last.status == "checks_failed" and "HEAD moved during the run" in last.asi["rollback_reason"]
    saved = git(root, "rev-parse", f"refs/autoresearch/moved/run-{last.run}")
    assert git(root, "log", "-1", "--format=%s", saved) == "foreign"  # nothing lost
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t"
    assert git(root, "log", "-1", "--format=%s").startswith("Revert")  # our commit, reverted; not theirs
    assert "extra.txt" not in git(root, "ls-files") and "0.0316" not in (root / "train.py").read_text()
    assert git(root, "status", "--porcelain") == ""


HELDOUT = "print('METRIC hscore=0.5')\n"


def _with_heldout(root: Path) -> None:
    (root / "heldout.py").write_text(HELDOUT)
    text = (root / "autoresearch.toml").read_text()
    text = text.replace("[session]\n", '[session]\nheldout_metric = "hscore"\nheldout_command = "python heldout.py"\n', 1)
    (root / "autoresearch.toml").write_text(text)
    git(root, "add", "heldout.py", "autoresearch.toml")
    git(root, "commit", "-qm", "held-out evaluation")


@pytest.mark.parametrize("kills", [1, 2])
def test_a_kill_during_the_heldout_evaluation_resumes_it_and_keeps_the_run(tmp_path: Path, kills: int) -> None:
    root = make_toy(tmp_path / "ws")
    _with_heldout(root)
    assert cli(root, "experiment", "-d", "baseline") == 0
    set_constant(root, "LR", "0.0316")  # better: a keep
    res = cli_proc(root, "experiment", "-d", "LR 0.0316", "--asi", '{"hypothesis": "h"}',
                   env={"AUTORESEARCH_FAULT": "before_heldout"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    kept_commit = git(root, "rev-parse", "HEAD")
    for _ in range(kills - 1):  # killed again while resuming: still resumable
        res = cli_proc(root, "resume", env={"AUTORESEARCH_FAULT": "before_heldout"})
        assert res.returncode == -signal.SIGKILL, res.stderr
    res = cli_proc(root, "resume")
    assert res.returncode == 0, res.stderr
    assert "finished its held-out evaluation" in res.stdout
    last = runs(root)[-1]
    assert last.status == "keep" and last.raw["heldout"] == {"hscore": 0.5}
    assert git(root, "rev-parse", "HEAD") == kept_commit  # not reverted
    assert not (root / ".autoresearch" / "state.json").exists()
    assert [d["run"] for d in lines(root) if "run" in d] == [1, 2]
    assert os.environ.get("AUTORESEARCH_FAULT") is None


def test_a_primary_metric_printed_twice_with_different_values_is_checks_failed(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    text = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(text.replace("audit = true", "audit = false"))  # the runtime rule alone
    git(root, "commit", "-qam", "no static audit")
    assert cli(root, "experiment", "-d", "baseline") == 0
    # a forged line printed after the real one (at exit), which "last one wins" used to keep
    (root / "train.py").write_text(TRAIN + "import atexit\natexit.register(print, 'METRIC score=100')\n")
    assert cli(root, "experiment", "-d", "forged", "--asi", '{"hypothesis": "h"}') == 0
    last = runs(root)[-1]
    assert last.status == "checks_failed", last
    assert "printed score with 2 different values" in last.asi["rollback_reason"]


# ---- the budget rule measures training, not the machine (issue 10, break 10)

RUN_WRITES_CHECKPOINT = """\
import importlib.util, math, os, time
spec = importlib.util.spec_from_file_location("train", "train.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
time.sleep(getattr(m, "TRAIN_SLEEP", 0))
score = -((math.log10(m.LR) + 1.5) ** 2) - (math.log2(m.WIDTH) - 5) ** 2 / 4
ckpt = os.environ["AUTORESEARCH_CHECKPOINT"]
os.makedirs(ckpt, exist_ok=True)
open(os.path.join(ckpt, "score"), "w").write(repr(score))
print("METRIC score=1000")  # the run's own claim: ignored, the evaluation reports the metric
"""
SCORE = """\
import json, os, time
time.sleep(float(open("slow_eval").read()))
score = float(open(os.path.join(os.environ["AUTORESEARCH_CHECKPOINT"], "score")).read())
with open(os.environ["AUTORESEARCH_RESULT_FILE"], "a") as f:
    f.write(json.dumps({"name": "score", "value": score}) + "\\n")
"""


@pytest.mark.parametrize("slow", ["evaluation", "training"])
def test_a_slow_evaluation_never_counts_against_the_budget_but_slow_training_does(tmp_path: Path, slow: str) -> None:
    root = make_toy(tmp_path / "ws", evaluate=RUN_WRITES_CHECKPOINT)
    (root / "score.py").write_text(SCORE)
    (root / "slow_eval").write_text("3" if slow == "evaluation" else "0")
    git(root, "add", "score.py", "slow_eval")
    git(root, "commit", "-qm", "a separate evaluation")
    set_session(root, evaluate="python score.py", metric_source="result_file", time_budget_s=1.0,
                startup_allowance_s=1.5, startup_allowance_frac=0.0)
    assert cli(root, "experiment", "-d", "baseline") == 0
    set_constant(root, "LR", "0.0316")
    if slow == "training":
        (root / "train.py").write_text((root / "train.py").read_text() + "TRAIN_SLEEP = 3\n")
    assert cli(root, "experiment", "-d", "better", "--asi", '{"hypothesis": "h"}') == 0
    last = runs(root)[-1]
    if slow == "evaluation":  # 3 s of evaluation at a 1 s budget: judged on its metric, from the evaluation
        assert last.status == "keep", last.asi
        assert last.metrics["score"] < 1000
    else:
        assert last.status == "checks_failed" and "training took 3s" in last.asi["rollback_reason"]


def test_a_branch_switch_during_the_run_is_undone_and_the_run_not_kept(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    set_session(root, sandbox="off")  # in the workspace, so that the run can reach the repository
    assert cli(root, "experiment", "-d", "baseline") == 0
    set_constant(root, "LR", "0.0316")
    (root / "train.py").write_text((root / "train.py").read_text() + (
        "import os, subprocess\nsubprocess.run(['git', '-C', os.environ['SNEAKY_WS'], 'checkout', '-q', '-b', 'elsewhere'])\n"))
    res = cli_proc(root, "experiment", "-d", "switches branch", "--asi", '{"hypothesis": "h"}',
                   env={"SNEAKY_WS": str(root)})
    assert res.returncode == 0, res.stderr
    last = runs(root)[-1]
    assert last.status == "checks_failed" and "on branch elsewhere" in last.asi["rollback_reason"]
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t"
    assert "0.0316" not in (root / "train.py").read_text() and git(root, "status", "--porcelain") == ""


@pytest.mark.parametrize("command", [["run", "--max-iterations", "1"], ["experiment", "-d", "baseline"]])
def test_sandbox_bwrap_without_bubblewrap_is_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    root = make_toy(tmp_path / "ws")
    set_session(root, sandbox="bwrap")
    bare = tmp_path / "bin"  # a PATH with git and bash but no bwrap
    bare.mkdir()
    for tool in ("git", "bash", "python3"):
        found = shutil.which(tool)
        assert found is not None
        (bare / tool).symlink_to(found)
    res = cli_proc(root, *command, env={"PATH": str(bare)})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert 'sandbox = "bwrap" in autoresearch.toml, but bwrap not found' in res.stderr
    assert res.stderr.count("apt install bubblewrap") == 1
    assert runs(root) == []  # nothing ran, nothing logged
