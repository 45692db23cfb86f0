"""Tests for harness/targets.py and the kit at init: every target.toml mistake is one InitError
line naming the file and the key; a built-in target's workspace gets the fixed kit, hashed, and
the ledger's config line records the harness version and the kit's hash. Real files in tmp_path
(about a second in all).

Run: /work/main/.venv/bin/python -m pytest tests/test_targets.py -q
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from toy import EVAL, TRAIN, git

import harness
from harness import resources
from harness.cli import main
from harness.session import InitError, init_workspace, load_target
from harness.targets import read_target

VALID = """\
[target]
name = "toy"
description = "a toy objective"
command = "python eval.py"
editable = ["train.py"]
fixed = ["eval.py"]
time_budget_s = 5
[metric]
name = "score"
direction = "higher"
[session]
startup_allowance_s = 10
[session_cpu]
eval_allowance_s = 20
"""
KIT_TEXT = '"""a kit for the tests: the fixed side imports it."""\nVALUE = 1\n'


MATH_TEXT = '"""a shared kit module for the tests."""\nANSWER = 42\n'


def make_assets(root: Path, toml: str = VALID, *, kit: bool = True) -> Path:
    """An assets folder like the shipped one: assets/toy/{target.toml,train.py,eval.py} (+ arkit.py),
    and a shared kit module assets/armath.py that a target may name in [target] kit."""
    folder = root / "assets" / "toy"
    folder.mkdir(parents=True)
    (folder / "target.toml").write_text(toml)
    (folder / "train.py").write_text(TRAIN)
    (folder / "eval.py").write_text(EVAL)
    (root / "assets" / "armath.py").write_text(MATH_TEXT)
    if kit:
        (root / "assets" / "arkit.py").write_text(KIT_TEXT)
    return root / "assets"


def test_a_valid_target_reads_every_field(tmp_path: Path) -> None:
    # the cases below each break this valid target in one place
    t = load_target("toy", make_assets(tmp_path))
    assert (t.name, t.command, t.editable, t.fixed, t.time_budget_s) == ("toy", "python eval.py", ("train.py",),
                                                                         ("eval.py",), 5.0)
    assert (t.metric.name, t.metric.unit, t.metric.direction) == ("score", "", "higher")
    assert t.settings == {"startup_allowance_s": 10} and t.cpu_settings == {"eval_allowance_s": 20}
    assert t.kit == tmp_path / "assets" / "arkit.py" and t.fixed_files == ("eval.py", "arkit.py")


def _replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


CASES = [
    # tables
    ("no [target]", VALID[VALID.index("[metric]"):], "missing [target] table"),
    ("no [metric]", _replace('[metric]\nname = "score"\ndirection = "higher"\n', ""), "missing [metric] table"),
    ("[target] not a table", 'target = "toy"\n' + VALID[VALID.index("[metric]"):], "target must be written as a table"),
    ("a misspelt table", VALID + "[sesion]\nseed = 1\n", "unknown table(s) or key(s) outside the tables: sesion"),
    ("not TOML", VALID + "[metric\n", "not valid TOML"),
    # [target] keys
    ("no command", _replace('command = "python eval.py"\n', ""), "[target] command is missing"),
    ("no editable", _replace('editable = ["train.py"]\n', ""), "[target] editable is missing"),
    ("no name", _replace('name = "toy"\n', ""), "[target] name is missing"),
    ("editable a string", _replace('editable = ["train.py"]', 'editable = "train.py"'),
     "[target] editable must be a list of paths, not 'train.py'"),
    ("fixed of numbers", _replace('fixed = ["eval.py"]', "fixed = [1]"), "[target] fixed must be a list of paths"),
    ("budget a string", _replace("time_budget_s = 5", 'time_budget_s = "5"'),
     "[target] time_budget_s must be a number > 0, not '5'"),
    ("budget zero", _replace("time_budget_s = 5", "time_budget_s = 0"), "[target] time_budget_s must be a number > 0"),
    ("cpu budget a bool", _replace("time_budget_s = 5", "time_budget_s = 5\ncpu_time_budget_s = true"),
     "[target] cpu_time_budget_s must be a number > 0"),
    ("command a list", _replace('command = "python eval.py"', 'command = ["python", "eval.py"]'),
     "[target] command must be a string"),
    ("unknown [target] key", _replace("editable =", "editables = []\neditable ="), "unknown [target] key(s): editables"),
    ("empty command", _replace('command = "python eval.py"', 'command = "  "'), "[target] command is empty"),
    ("no editable files", _replace('editable = ["train.py"]', "editable = []"), "[target] editable lists no files"),
    ("name is not the folder", _replace('name = "toy"', 'name = "toys"'), "[target] name is 'toys' but the folder is 'toy'"),
    # [metric] keys
    ("no metric name", _replace('name = "score"\n', ""), "[metric] name is missing"),
    ("bad direction", _replace('direction = "higher"', 'direction = "up"'),
     "[metric] direction must be \"lower\" or \"higher\", not 'up'"),
    ("unknown [metric] key", _replace('direction = "higher"', 'dir = "higher"'), "unknown [metric] key(s): dir"),
    ("unit a number", _replace('direction = "higher"', 'direction = "higher"\nunit = 3'), "[metric] unit must be a string"),
    # the listed files
    ("editable file absent", _replace('editable = ["train.py"]', 'editable = ["model.py"]'),
     "[target] editable: model.py is not a file in"),
    ("fixed file absent", _replace('fixed = ["eval.py"]', 'fixed = ["prepare.py"]'),
     "[target] fixed: prepare.py is not a file in"),
    ("a path outside", _replace('fixed = ["eval.py"]', 'fixed = ["../eval.py"]'),
     "[target] fixed: '../eval.py' must be a path inside the target folder"),
    ("an absolute path", _replace('fixed = ["eval.py"]', 'fixed = ["/etc/hostname"]'), "must be a path inside"),
    ("editable and fixed", _replace('fixed = ["eval.py"]', 'fixed = ["eval.py", "train.py"]'),
     "[target] train.py: both editable and fixed"),
    ("the kit listed", _replace('fixed = ["eval.py"]', 'fixed = ["eval.py", "arkit.py"]'),
     "[target] fixed: arkit.py is the fixed kit, which init adds itself"),
    # [target] kit: shared kit modules beside the target folder
    ("kit a string", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = "armath.py"'),
     "[target] kit must be a list of file names"),
    ("kit module absent", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["nope.py"]'),
     "[target] kit: nope.py is not a file in"),
    ("kit module with a path", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["toy/eval.py"]'),
     "[target] kit: 'toy/eval.py' must be the bare name of a file in"),
    ("kit module upwards", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["../x.py"]'),
     "[target] kit: '../x.py' must be the bare name"),
    ("kit names arkit", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["arkit.py"]'),
     "[target] kit: arkit.py is the fixed kit, which init adds itself"),
    ("kit module not python", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["target.toml"]'),
     "[target] kit: target.toml is not a Python module"),
    ("kit module twice", _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["armath.py", "armath.py"]'),
     "[target] kit names a module twice"),
    ("bad base", _replace("time_budget_s = 5", 'time_budget_s = 5\nbase = "yes"'),
     '[target] base must be "none" or "required", not \'yes\''),
    # [session] and [session_cpu]
    ("unknown [session] key", _replace("startup_allowance_s = 10", "startup_allowance = 10"),
     "unknown [session] key(s): startup_allowance"),
    ("[session] sets editable", _replace("startup_allowance_s = 10", 'editable = ["eval.py"]'),
     "[session] cannot set editable"),
    ("[session] value of the wrong type", _replace("startup_allowance_s = 10", 'startup_allowance_s = "10"'),
     "[session]: startup_allowance_s must be a number, not '10'"),
    ("[session] invalid value", _replace("startup_allowance_s = 10", 'metric_source = "stderr"'),
     "[session]: metric_source must be stdout or result_file"),
    ("[session_cpu] invalid value", _replace("eval_allowance_s = 20", "eval_allowance_s = -1"),
     "[session_cpu]: startup_allowance_s and eval_allowance_s must be >= 0"),
    ("[session_cpu] not a table", "session_cpu = 1\n" + _replace("[session_cpu]\neval_allowance_s = 20\n", ""),
     "session_cpu must be written as a table, [session_cpu]"),
]


@pytest.mark.parametrize(("toml", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_target_toml_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    assets = make_assets(tmp_path, toml)
    with pytest.raises(InitError) as exc:
        load_target("toy", assets)
    text = str(exc.value)
    assert text.startswith(f"{assets / 'toy' / 'target.toml'}: ") and "\n" not in text
    assert message in text


def test_an_unreadable_target_toml_is_one_line(tmp_path: Path) -> None:
    assets = make_assets(tmp_path)
    (assets / "toy" / "target.toml").write_bytes(b'[target]\nname = "\xff"\n')  # not UTF-8
    with pytest.raises(InitError, match=r"target\.toml: cannot read it \(.*utf-8"):
        load_target("toy", assets)


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    toml = _replace('command = "python eval.py"\n', "").replace('direction = "higher"', 'direction = "up"')
    with pytest.raises(InitError, match=r"command is missing; \[metric\] direction must be"):
        read_target(make_assets(tmp_path, toml) / "toy")


def test_an_unknown_target_names_the_installed_ones(tmp_path: Path) -> None:
    assets = make_assets(tmp_path)
    for name in ("nope", "../assets/toy", "toy/"):
        with pytest.raises(InitError, match=r"unknown target .* \(available: toy\)"):
            load_target(name, assets)


def test_the_cli_says_a_bad_target_toml_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    assets = make_assets(tmp_path, _replace('direction = "higher"', 'direction = "up"'))
    monkeypatch.setattr(resources, "assets_dir", lambda: assets)
    assert main(["-C", str(tmp_path / "ws"), "init", "--target", "toy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[metric] direction must be" in err and "Traceback" not in err


def test_the_shipped_pretrain_target_is_valid() -> None:
    t = load_target("pretrain")
    assert t.source_dir == resources.assets_dir() / "pretrain" and "train.py" in t.editable
    assert (t.kit is not None) == resources.kit_path().is_file()


# ------------------------------------------------------------------------ the kit at init


def test_init_copies_the_kit_as_a_fixed_hashed_file_and_records_it(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    cfg, done = init_workspace(root, load_target("toy", make_assets(tmp_path)), tag="t")
    kit_sha = hashlib.sha256(KIT_TEXT.encode()).hexdigest()
    assert (root / "arkit.py").read_text() == KIT_TEXT
    assert "copied arkit.py (the fixed kit)" in done
    assert cfg.fixed == ("eval.py", "arkit.py") and cfg.fixed_hashes["arkit.py"] == kit_sha
    assert "arkit.py" in git(root, "ls-tree", "-r", "--name-only", "main").split()  # in the session's base commit, like the target's files
    assert "- `arkit.py` (fixed" in (root / "autoresearch.md").read_text()
    header = json.loads((root / "autoresearch.jsonl").read_text().splitlines()[0])
    assert header["type"] == "config"
    assert header["kit_sha256"] == kit_sha and header["harness_version"] == harness.__version__


def test_a_changed_kit_in_the_workspace_stops_init(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "arkit.py").write_text("VALUE = 2\n")
    with pytest.raises(InitError, match="arkit.py exists and differs"):
        init_workspace(root, load_target("toy", make_assets(tmp_path)), tag="t")


def test_without_a_kit_init_records_only_the_harness_version(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    cfg, _ = init_workspace(root, load_target("toy", make_assets(tmp_path, kit=False)), tag="t")
    assert not (root / "arkit.py").exists() and cfg.fixed == ("eval.py",)
    header = json.loads((root / "autoresearch.jsonl").read_text().splitlines()[0])
    assert header["harness_version"] == harness.__version__ and "kit_sha256" not in header


def test_init_copies_the_shared_kit_modules_as_fixed_hashed_files(tmp_path: Path) -> None:
    toml = _replace("time_budget_s = 5", 'time_budget_s = 5\nkit = ["armath.py"]')
    target = load_target("toy", make_assets(tmp_path, toml))
    assert target.kit_modules == ("armath.py",) and target.fixed_files == ("eval.py", "armath.py", "arkit.py")
    root = tmp_path / "ws"
    cfg, done = init_workspace(root, target, tag="t")
    assert (root / "armath.py").read_text() == MATH_TEXT and "copied armath.py (a shared kit module)" in done
    assert cfg.fixed == ("eval.py", "armath.py", "arkit.py")
    assert cfg.fixed_hashes["armath.py"] == hashlib.sha256(MATH_TEXT.encode()).hexdigest()
    assert "armath.py" in git(root, "ls-tree", "-r", "--name-only", "main").split()
    header = json.loads((root / "autoresearch.jsonl").read_text().splitlines()[0])
    assert header["kit_modules"] == {"armath.py": cfg.fixed_hashes["armath.py"]}


def test_a_target_without_a_kit_key_has_no_shared_modules_and_needs_no_base(tmp_path: Path) -> None:
    t = load_target("toy", make_assets(tmp_path))
    assert t.kit_modules == () and t.base == "none"


def test_a_target_data_default_fills_prepare_when_init_has_no_data(tmp_path: Path) -> None:
    # [target] data is the target's own default spec: the sft target's CPU preset is offline-math:levels=1
    toml = _replace('fixed = ["eval.py"]', 'fixed = ["eval.py"]\nprepare = "python eval.py --data {data}"\n'
                    'data = "offline-math:levels=1"')
    target = load_target("toy", make_assets(tmp_path, toml))
    assert target.data == "offline-math:levels=1"
    cfg, _ = init_workspace(tmp_path / "ws", target, tag="t")
    assert cfg.prepare_command == "python eval.py --data offline-math:levels=1"
    given, _ = init_workspace(tmp_path / "ws2", target, tag="t", data="gsm8k")  # --data still wins
    assert given.prepare_command == "python eval.py --data gsm8k"


def test_without_a_target_data_default_prepare_gets_the_harness_default(tmp_path: Path) -> None:
    toml = _replace('fixed = ["eval.py"]', 'fixed = ["eval.py"]\nprepare = "python eval.py --data {data}"')
    target = load_target("toy", make_assets(tmp_path, toml))
    assert target.data is None
    cfg, _ = init_workspace(tmp_path / "ws", target, tag="t")
    assert cfg.prepare_command == "python eval.py --data offline-math"


@pytest.mark.parametrize("extra, message", [
    ('data = ""', "[target] data must be a data spec (a non-empty string)"),
    ("data = 3", "[target] data must be a data spec (a non-empty string)"),
    ('data = "gsm8k"', "[target] data: the prepare command has no {data} for it to fill"),
])
def test_a_bad_target_data_is_one_line(tmp_path: Path, extra: str, message: str) -> None:
    toml = _replace('fixed = ["eval.py"]', f'fixed = ["eval.py"]\n{extra}')
    with pytest.raises(InitError) as e:
        load_target("toy", make_assets(tmp_path, toml))
    assert message in str(e.value) and "target.toml" in str(e.value)
