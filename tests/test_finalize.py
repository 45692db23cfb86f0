"""finalize: union-find grouping (pure), then real sessions with two editable files driven
through `autoresearch experiment`, checked with plain git.

Run: python -m pytest tests/test_finalize.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from toy import cli, git

from harness import finalize

EVAL = """\
import re
a = float(re.search(r"A = (\\S+)", open("a.py").read()).group(1))
b = float(re.search(r"B = (\\S+)", open("b.py").read()).group(1))
print(f"METRIC score={a + b}")
"""


def test_group_by_files_merges_through_shared_files() -> None:
    items = [("a",), ("b",), ("a", "c"), ("c", "d"), (), ("e",), ("d", "e")]
    assert finalize.group_by_files(items) == [[0, 2, 3, 5, 6], [1], [4]]
    assert finalize.group_by_files([("x",), ("x",), ("x",)]) == [[0, 1, 2]]
    assert finalize.group_by_files([]) == []


def test_metric_change_sums_the_groups_measured_changes() -> None:
    k = [finalize.Keep(3, "c" * 40, "d", ("a",), "val_bpb", 0.9979, 0.9900),
         finalize.Keep(9, "d" * 40, "e", ("a",), "val_bpb", 0.9850, 0.9712)]
    assert finalize.metric_change(k) == ["val_bpb 0.9979 -> 0.9762 (-2.17%)"]
    assert finalize.slug("Raise LR to 0.04 (and <b>more</b>)!") == "raise-lr-to-0-04-and-b-more-b"


def _set(root: Path, name: str, value: str) -> None:
    (root / f"{name.lower()}.py").write_text(f"{name} = {value}\n")


def _experiment(root: Path, description: str, **values: str) -> None:
    for name, value in values.items():
        _set(root, name, value)
    assert cli(root, "experiment", "-d", description, "--asi", '{"hypothesis": "h"}') == 0


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """baseline A=1 B=1; keep A=2; discard B=0; keep B=3; keep A=5 (score higher is better)."""
    root = tmp_path_factory.mktemp("fin") / "ws"
    root.mkdir()
    _set(root, "A", "1")
    _set(root, "B", "1")
    (root / "eval.py").write_text(EVAL)
    assert cli(root, "init", "--command", "python eval.py", "--metric", "score", "--direction", "higher",
               "--editable", "a.py", "b.py", "--fixed", "eval.py", "--tag", "t") == 0
    assert cli(root, "experiment", "-d", "baseline") == 0
    _experiment(root, "A up", A="2")
    _experiment(root, "B down", B="0")
    _experiment(root, "B up", B="3")
    _experiment(root, "A way up", A="5")
    return root


def _copy(session: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "ws"
    shutil.copytree(session, dest, symlinks=True)
    return dest


def test_two_files_make_two_branches_from_the_base(session: Path, tmp_path: Path, capsys) -> None:
    root = _copy(session, tmp_path)
    head, status = git(root, "rev-parse", "autoresearch/t"), git(root, "status", "--porcelain")
    base = git(root, "rev-parse", "main")  # the session started from main
    assert cli(root, "finalize") == 0
    out = capsys.readouterr().out
    branches = git(root, "branch", "--list", "autoresearch/t-final-*", "--format=%(refname:short)").splitlines()
    assert branches == ["autoresearch/t-final-1-a-up", "autoresearch/t-final-2-b-up"]
    a_branch, b_branch = branches
    for br in branches:
        assert git(root, "rev-list", "--count", f"{base}..{br}") == "1"
        assert git(root, "rev-parse", f"{br}~1") == base
    assert git(root, "show", f"{a_branch}:a.py") == "A = 5" and git(root, "show", f"{a_branch}:b.py") == "B = 1"
    assert git(root, "show", f"{b_branch}:b.py") == "B = 3" and git(root, "show", f"{b_branch}:a.py") == "A = 1"
    assert git(root, "diff", "--name-only", base, a_branch) == "a.py"
    msg = git(root, "log", "-1", "--format=%B", a_branch)
    assert msg.startswith("A up (+1 more kept experiments)")
    assert "score 2 -> 6 (+200.00%)" in msg and "#2 " in msg and "#5 " in msg and "#4 " not in msg
    assert "score 3 -> 5 (+66.67%)" in git(root, "log", "-1", "--format=%B", b_branch)
    # the session branch, HEAD and the tree are untouched
    assert git(root, "rev-parse", "autoresearch/t") == head and git(root, "rev-parse", "HEAD") == head
    assert git(root, "status", "--porcelain") == status
    assert "verified" in out and "created autoresearch/t-final-2-b-up" in out
    # existing branches: refused, then moved with --force
    assert cli(root, "finalize") == 2
    assert "already exist" in capsys.readouterr().err
    assert cli(root, "finalize", "--force") == 0


def test_dry_run_prints_the_plan_and_changes_nothing(session: Path, tmp_path: Path, capsys) -> None:
    root = _copy(session, tmp_path)
    refs = git(root, "for-each-ref")
    assert cli(root, "finalize", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "group 1: autoresearch/t-final-1-a-up" in out and "files: b.py" in out and "dry run" in out
    assert git(root, "for-each-ref") == refs


def test_a_change_to_both_files_makes_one_group(session: Path, tmp_path: Path, capsys) -> None:
    root = _copy(session, tmp_path)
    (root / "a.py").write_text("A = 6\n")
    _experiment(root, "both up", B="4")
    assert cli(root, "finalize", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "share files" in out and "group 2" not in out and "files: a.py, b.py" in out


def test_refuses_a_dirty_tree_and_unreproducible_history(session: Path, tmp_path: Path, capsys) -> None:
    root = _copy(session, tmp_path)
    _set(root, "B", "9")
    assert cli(root, "finalize") == 2
    assert "uncommitted changes" in capsys.readouterr().err
    git(root, "commit", "-qam", "hand edit of b")  # a change that is not a kept experiment
    refs = git(root, "for-each-ref")
    assert cli(root, "finalize") == 2
    err = capsys.readouterr().err
    assert "do not reproduce b.py" in err and "hand edit of b" in err
    assert git(root, "for-each-ref") == refs
    # a --base after the kept runs leaves them out: refused, with the reason
    assert cli(root, "finalize", "--dry-run", "--base", "HEAD~1") == 2
    assert "not commits between the base (--base HEAD~1)" in capsys.readouterr().err


def test_one_editable_file_is_one_group_and_says_why(tmp_path: Path, capsys) -> None:
    from toy import make_toy, set_constant

    root = make_toy(tmp_path / "ws")
    cli(root, "experiment", "-d", "baseline")
    assert cli(root, "finalize") == 2
    assert "nothing to finalize" in capsys.readouterr().err
    set_constant(root, "LR", "0.03")
    cli(root, "experiment", "-d", "LR up", "--asi", '{"hypothesis": "h"}')
    set_constant(root, "WIDTH", "16")
    cli(root, "experiment", "-d", "wider", "--asi", '{"hypothesis": "h"}')
    assert cli(root, "finalize") == 0
    out = capsys.readouterr().out
    assert "one editable file (train.py): all kept experiments form one group" in out
    assert git(root, "show", "autoresearch/t-final-1-lr-up:train.py") == git(root, "show", "autoresearch/t:train.py")
