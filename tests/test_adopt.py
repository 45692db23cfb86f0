"""Switching from karpathy/autoresearch (issue 13): adopting his working copy with `init` (item 19), and running
on a session imported from his results.tsv (item 18: the baseline is measured again here, in a new segment).

Real git repositories, the real CLI, real runs of the toy target (tests/toy.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from toy import EVAL, cli, git, lines, make_toy, runs

from harness import ledger

# A train.py shaped like karpathy's: it trains (here: instantly) and prints his summary block.
KARPATHY_TRAIN = """\
import os
DEPTH = 8
val_bpb = 1.0 + abs(DEPTH - 6) / 100
print("step 00001 | loss 3.0")
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print("training_seconds: 1.0")
print(f"peak_vram_mb:     0.0")
"""
ADOPT = ["--command", "uv run train.py", "--metric", "val_bpb", "--direction", "lower", "--editable", "train.py",
         "--fixed", "prepare.py"]


def karpathy_copy(root: Path) -> Path:
    """His working copy after a night: prepare.py, train.py and program.md committed on master; run.log and
    results.tsv untracked (results.tsv is not even ignored here, stricter than his .gitignore), bytecode."""
    root.mkdir(parents=True)
    (root / "prepare.py").write_text("# data and evaluation: fixed\nMAX_SEQ_LEN = 2048\n")
    (root / "train.py").write_text(KARPATHY_TRAIN)
    (root / "program.md").write_text("# autoresearch\nRun experiments.\n")
    for args in (["init", "-q", "-b", "master"], ["add", "prepare.py", "train.py", "program.md"],
                 ["-c", "user.name=k", "-c", "user.email=k@x", "commit", "-qm", "initial"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    (root / "run.log").write_text("step 00001 | loss 3.0\n---\nval_bpb:          0.997900\n")
    (root / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                      "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-312.pyc").write_bytes(b"\x00bytecode")
    return root


def test_init_adopts_a_karpathy_working_copy_and_leaves_his_files_alone(tmp_path, capsys):
    root = karpathy_copy(tmp_path / "autoresearch")
    untouched = {p: (root / p).read_bytes() for p in ("run.log", "results.tsv", "__pycache__/train.cpython-312.pyc")}
    assert cli(root, "init", *ADOPT, "--tag", "mar5") == 0
    out = capsys.readouterr().out
    assert "left alone (untracked, not committed, now ignored): __pycache__/train.cpython-312.pyc, results.tsv, " \
           "run.log (each run writes its output there, as karpathy's loop does)" in out
    assert git(root, "branch", "--show-current") == "autoresearch/mar5"
    tracked = set(git(root, "ls-files").splitlines())
    assert not {"run.log", "results.tsv"} & tracked and "autoresearch.toml" in tracked
    assert {p: (root / p).read_bytes() for p in untouched} == untouched  # not deleted, not rewritten
    ignored = (root / ".gitignore").read_text().splitlines()
    assert {"autoresearch.jsonl", ".autoresearch/", "run.log"} <= set(ignored)
    assert git(root, "status", "--porcelain") == ""

    # the session runs there: his files stay where they are, untracked, through a baseline and an experiment
    assert cli(root, "config", "command", "python train.py") == 0  # no uv on this machine
    assert cli(root, "experiment", "-d", "baseline") == 0
    (root / "train.py").write_text(KARPATHY_TRAIN.replace("DEPTH = 8", "DEPTH = 6"))
    assert cli(root, "experiment", "-d", "DEPTH 6", "--asi", '{"hypothesis": "the sweet spot"}') == 0
    assert [(r.status, r.value) for r in runs(root)] == [("keep", 1.02), ("keep", 1.0)]
    del untouched["run.log"]  # the loop writes each run's output there, as his does
    assert {p: (root / p).read_bytes() for p in untouched} == untouched
    assert git(root, "stash", "list") == ""
    assert not {"run.log", "results.tsv"} & set(git(root, "ls-files").splitlines())


def test_init_names_tracked_changes_that_block_it(tmp_path, capsys):
    root = karpathy_copy(tmp_path / "autoresearch")
    (root / "train.py").write_text(KARPATHY_TRAIN.replace("DEPTH = 8", "DEPTH = 12"))
    assert cli(root, "init", *ADOPT) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes to tracked files: train.py; commit or stash them first" in err
    assert git(root, "branch", "--show-current") == "master" and not (root / "autoresearch.toml").exists()


def test_init_names_unrelated_untracked_files_and_offers_to_adopt(tmp_path, capsys):
    root = karpathy_copy(tmp_path / "autoresearch")
    (root / "notes.md").write_text("what I tried last week\n")
    (root / "sweeps").mkdir()
    (root / "sweeps" / "lr[1].txt").write_text("0.04\n")
    assert cli(root, "init", *ADOPT) == 2
    err = capsys.readouterr().err
    assert "untracked files that are not the session's: notes.md, sweeps/lr[1].txt" in err and "--adopt" in err
    assert git(root, "branch", "--show-current") == "master" and not (root / "autoresearch.toml").exists()

    assert cli(root, "init", *ADOPT, "--adopt") == 0
    assert "left alone (untracked, not committed, now ignored): __pycache__/train.cpython-312.pyc, notes.md, " \
           "results.tsv, run.log, sweeps/lr[1].txt" in capsys.readouterr().out
    exclude = (root / ".git" / "info" / "exclude").read_text().splitlines()
    assert "/notes.md" in exclude and "/sweeps/lr\\[1].txt" in exclude
    assert git(root, "status", "--porcelain") == ""  # the loop sees a clean tree: nothing to stash
    assert ".gitignore" in git(root, "show", "--format=", "--name-only", "HEAD~1")
    assert "notes.md" not in git(root, "ls-files")
    assert cli(root, "config", "command", "python train.py") == 0
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "1") == 0
    assert (root / "notes.md").read_text() == "what I tried last week\n" and git(root, "stash", "list") == ""


# ------------------------------------------------------------------------------- item 18


def imported(root: Path, best: str) -> None:
    """karpathy's results.tsv from another machine, imported into the toy workspace (score, higher is better)."""
    (root / "results.tsv").write_text("commit\tscore\tmemory_gb\tstatus\tdescription\n"
                                      "a1b2c3d\t0.500000\t44.0\tkeep\tbaseline\n"
                                      f"b2c3d4e\t{best}\t44.1\tkeep\ta much better run, on an H100\n"
                                      "c3d4e5f\t0.000000\t0.0\tcrash\tOOM\n")
    assert cli(root, "import", "--tsv", "results.tsv", "--direction", "higher") == 0


def test_run_after_an_import_measures_the_baseline_here_in_a_new_segment(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    imported(root, best="0.900000")  # far above anything the toy reaches (its best is 0.1)
    capsys.readouterr()
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "2") == 0
    assert "measuring the baseline on this machine, in a new segment" in capsys.readouterr().out
    state = ledger.load_state(root / "autoresearch.jsonl")
    assert len(state.segments) == 2 and state.segments[0].imported and not state.current.imported
    first, second = state.current.runs
    assert first.raw.get("baseline") is True and first.status == "keep" and first.value == -1.25
    # judged against the baseline measured here, not the imported 0.9
    assert "-1.25" in second.raw["reason"] and "0.9" not in second.raw["reason"]
    header = next(x for x in lines(root) if x.get("type") == "config" and "reason" in x)
    assert header["metricName"] == "score" and "imported from results.tsv" in header["reason"]
    capsys.readouterr()
    assert cli(root, "experiment", "-d", "baseline") == 2  # the segment has its baseline now: edits expected
    assert "nothing to evaluate" in capsys.readouterr().err


def test_experiment_after_an_import_runs_the_baseline_first(tmp_path, capsys):
    root = make_toy(tmp_path / "ws")
    imported(root, best="0.900000")
    assert cli(root, "experiment", "-d", "baseline") == 0
    (seg0, seg1) = ledger.load_state(root / "autoresearch.jsonl").segments
    assert len(seg0.runs) == 3 and [r.raw.get("baseline") for r in seg1.runs] == [True]


def test_a_broken_command_after_an_import_stops_at_the_failed_baseline(tmp_path, capsys):
    root = make_toy(tmp_path / "ws", evaluate=EVAL + "raise SystemExit('no GPU here')\n")
    imported(root, best="0.900000")
    capsys.readouterr()
    assert cli(root, "run", "--agent", "mutate", "--max-iterations", "5") == 1
    out = capsys.readouterr().out
    assert "stopped: the baseline run failed" in out
    after = ledger.load_state(root / "autoresearch.jsonl").current.runs
    assert len(after) == 1, [(r.status, r.raw.get("reason")) for r in after]  # one run, not five crashes
    only = after[0]
    assert only.status == "crash" and only.raw.get("baseline") is True
