"""Metric integrity: each rule against an adversarial train.py, and innocent changes that must pass.

Run: python -m pytest tests/test_integrity.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toy import cli, git, runs

from harness import config as config_mod
from harness.integrity import (
    added_lines,
    apply_channel,
    audit_patch,
    fixed_names,
    over_budget,
    read_results,
)

# ------------------------------------------------------------------ the static audit

NAMES = {"evaluate", "EVAL_SCALE", "make_dataloader", "TIME_BUDGET"}


def _patch(*lines: str, file: str = "train.py") -> str:
    return f"--- a/{file}\n+++ b/{file}\n@@ -1 +1 @@\n" + "".join(f"+{x}\n" for x in lines)


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("evalfix.EVAL_SCALE = 2.0", "fixed-attr-assign"),
        ("evalfix.evaluate = lambda *a: 0.0", "fixed-attr-assign"),
        ("evalfix.CONFIG['tokens'] = 1", "fixed-attr-assign"),
        ("setattr(evalfix, 'EVAL_SCALE', 2)", "fixed-setattr"),
        ("sys.modules['evalfix'].evaluate = fake", "fixed-module-table"),
        ("importlib.reload(evalfix)", "fixed-reload"),
        ("def evaluate(lr):", "fixed-name-redefined"),
        ("EVAL_SCALE = 0.5", "fixed-name-redefined"),
        ("TIME_BUDGET: float = 900", "fixed-name-redefined"),
        ("path = os.environ['AUTORESEARCH_RESULT_FILE']", "result-channel"),
        ("import arkit", "kit-use"),
        ("arkit.report('val_bpb', 0.9)", "kit-use"),
        ("prepare.arkit.report('val_bpb', 0.9)", "kit-use"),
        ("from arkit import report as r", "kit-use"),
        ("os.environ['AUTORESEARCH_TIME_BUDGET'] = '900'", "harness-env"),
        ("os.putenv('X', '1')", "harness-env"),
        ("time.perf_counter = lambda: 0.0", "clock-patch"),
        ("time.time=fake_time", "clock-patch"),
        ("builtins.print = quiet", "builtins-patch"),
        ("batches = make_dataloader(tok, 8, 256, 'val')", "validation-data"),
        ("ds = load(split='validation')", "validation-data"),
        ("open('evalfix.py', 'w').write('')", "fixed-file-write"),
        ("Path('evalfix.py').unlink()", "fixed-file-write"),
    ],
)
def test_each_rule_catches_its_hack(line: str, rule: str) -> None:
    findings = audit_patch(_patch(line), ["evalfix.py"], NAMES)
    assert rule in {f.rule for f in findings}, findings


@pytest.mark.parametrize(
    "line",
    [
        "LR = 0.04  # was 0.02",
        "score = evaluate(LR)",
        "evaluate(LR)",
        "from evalfix import evaluate, make_dataloader",
        "x = make_dataloader(tok, 8, 256, 'train')",
        "val_loss = loss.item()  # the training loss, named badly",
        "if time.time() - t0 > TIME_BUDGET_LEFT:",
        "t0 = time.perf_counter()",
        "print(f'step {step} evalfix.EVAL_SCALE == {s}')",
        "assert evalfix.EVAL_SCALE == 1.0",
        "# evalfix.EVAL_SCALE = 2 would be cheating",
        "seed = int(os.environ.get('AUTORESEARCH_SEED', 42))",
        "with open('notes.txt', 'w') as f: f.write('hi')",
        "markit = 3  # a name that merely contains the kit's",
    ],
)
def test_innocent_lines_pass(line: str) -> None:
    assert audit_patch(_patch(line), ["evalfix.py"], NAMES) == []


def test_only_added_python_lines_are_audited() -> None:
    patch = "--- a/train.py\n+++ b/train.py\n-evalfix.EVAL_SCALE = 2\n+LR = 1\n" + _patch("evalfix.X = 1", file="notes.md")
    assert added_lines(patch) == [("train.py", "LR = 1"), ("notes.md", "evalfix.X = 1")]
    assert audit_patch(patch, ["evalfix.py"], NAMES) == []


def test_fixed_names_reads_functions_classes_and_constants(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_text(
        "MAX_SEQ_LEN = 256\nEVAL_TOKENS: int = 5\n_private = 1\nlower = 2\n"
        "def evaluate_bpb(m): pass\ndef _helper(): pass\nclass Tokenizer: pass\n"
    )
    assert fixed_names([tmp_path / "prepare.py", tmp_path / "missing.py"]) == {
        "MAX_SEQ_LEN", "EVAL_TOKENS", "evaluate_bpb", "Tokenizer"}


# ------------------------------------------------------------- channel and budget


def test_apply_channel_rules() -> None:
    v = apply_channel("score", {"score": 9.0, "aux": 1.0}, [("score", 1.5), ("heldout", 2.0)], [])
    assert v.metrics == {"score": 1.5, "aux": 1.0, "heldout": 2.0} and v.failure is None
    assert "ignored_printed_metric" in v.notes
    v = apply_channel("score", {"score": 9.0}, [], [])
    assert "score" not in v.metrics and "fixed evaluation reported nothing" in v.notes["ignored_printed_metric"]
    v = apply_channel("score", {}, [("score", 1.0), ("score", 0.5)], [])
    assert v.failure and "ran 2 times" in v.failure
    v = apply_channel("score", {"score": 1.0}, [("score", 1.0)], [])
    assert v.notes == {}


def test_read_results_tolerates_garbage(tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text('{"name": "score", "value": 1.5}\nnot json\n{"name": "score", "value": "x"}\n{"name": "a", "value": NaN}\n')
    reported, problems = read_results(f)
    assert reported == [("score", 1.5)] and len(problems) == 3
    assert read_results(tmp_path / "missing") == ([], [])


def test_over_budget() -> None:
    # a stdout target: the run's wall time, with an evaluation allowance
    assert over_budget(115, 60, 20, 0.25, 20) is None
    assert "the run took 116s, over the allowance of 115s" in over_budget(116, 60, 20, 0.25, 20)
    # a separate evaluation: only the training counts, and the allowance grows with the budget
    assert over_budget(95, 60, 20, 0.25) is None
    assert "training took 96s, over the allowance of 95s" in over_budget(96, 60, 20, 0.25)
    assert over_budget(10 + 10 + 2.5, 10, 10, 0.25) is None and over_budget(23, 10, 10, 0.25)


# --------------------------------------------- adversarial train.py through the real loop

EVALFIX = """\
import json, math, os
_RESULT = os.environ.pop("AUTORESEARCH_RESULT_FILE", None)  # the channel: only this module knows it
EVAL_SCALE = 1.0


def evaluate(lr):
    score = EVAL_SCALE * -((math.log10(lr) + 1.5) ** 2)
    if _RESULT:
        with open(_RESULT, "a") as f:
            f.write(json.dumps({"name": "score", "value": score}) + "\\n")
    print(f"METRIC score={score:.6f}")
    return score
"""

TRAIN = """\
from evalfix import evaluate

LR = 0.01  # learning rate

if __name__ == "__main__":
    evaluate(LR)
"""


def _channel_toy(tmp_path: Path, **cfg_changes) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "evalfix.py").write_text(EVALFIX)
    (root / "train.py").write_text(TRAIN)
    assert cli(root, "init", "--command", "python train.py", "--metric", "score", "--direction", "higher",
               "--editable", "train.py", "--fixed", "evalfix.py", "--budget", "5", "--tag", "t") == 0
    cfg = config_mod.load(root)
    config_mod.save(root, config_mod.with_overrides(cfg, metric_source="result_file", **cfg_changes))
    git(root, "commit", "-qam", "metric from the result channel")
    assert cli(root, "experiment", "-d", "baseline") == 0
    assert runs(root)[0].status == "keep" and runs(root)[0].metric == pytest.approx(-0.25)
    return root


def _try(root: Path, train: str) -> object:
    (root / "train.py").write_text(train)
    assert cli(root, "experiment", "-d", "attempt", "--asi", '{"hypothesis": "h"}') == 0
    assert git(root, "status", "--porcelain") == ""
    return runs(root)[-1]


def test_a_printed_metric_is_not_accepted(tmp_path: Path) -> None:
    root = _channel_toy(tmp_path)
    r = _try(root, TRAIN.replace("    evaluate(LR)", "    print('METRIC score=100')"))
    assert r.status == "crash" and "no METRIC score" in r.asi["rollback_reason"]
    assert "reported nothing" in r.asi["ignored_printed_metric"]


def test_a_fake_metric_next_to_the_real_one_is_ignored(tmp_path: Path) -> None:
    root = _channel_toy(tmp_path)
    r = _try(root, TRAIN.replace("LR = 0.01", "LR = 0.02").replace("    evaluate(LR)", "    evaluate(LR)\n    print('METRIC score=100')"))
    assert r.metric == pytest.approx(-((__import__("math").log10(0.02) + 1.5) ** 2), abs=1e-6)
    assert "the evaluation's value is used" in r.asi["ignored_printed_metric"]


def test_evaluating_several_times_is_checks_failed(tmp_path: Path) -> None:
    root = _channel_toy(tmp_path)
    r = _try(root, TRAIN.replace("    evaluate(LR)", "    print(max(evaluate(x) for x in (0.01, 0.03)))"))
    assert r.status == "checks_failed" and "ran 2 times" in r.asi["rollback_reason"]


@pytest.mark.parametrize(
    ("hack", "rule"),
    [
        ("import evalfix\nevalfix.EVAL_SCALE = -1.0\n", "fixed-attr-assign"),
        ("import evalfix\nevalfix.evaluate = lambda lr: print('METRIC score=1')\n", "fixed-attr-assign"),
        ("def evaluate(lr):\n    print('METRIC score=1')\n", "fixed-name-redefined"),
        ("import time\ntime.perf_counter = lambda: 0.0\n", "clock-patch"),
        ("import os\nos.environ['AUTORESEARCH_TIME_BUDGET'] = '9999'\n", "harness-env"),
    ],
)
def test_audit_refuses_hacks_before_they_run(tmp_path: Path, hack: str, rule: str) -> None:
    root = _channel_toy(tmp_path)
    r = _try(root, TRAIN.replace("LR = 0.01", "LR = 0.02\n" + hack))
    assert r.status == "checks_failed" and rule in r.asi["rollback_reason"]
    assert not (root / ".autoresearch" / "runs" / f"{r.run}.log").exists()  # never ran
    assert (root / ".autoresearch" / "patches" / f"{r.run}.diff").exists()  # but nothing is lost


def test_training_past_the_budget_is_checks_failed(tmp_path: Path) -> None:
    root = _channel_toy(tmp_path, startup_allowance_s=0.5, eval_allowance_s=0.5)
    cfg = config_mod.load(root)
    config_mod.save(root, config_mod.with_overrides(cfg, time_budget_s=1.0))
    git(root, "commit", "-qam", "1 s budget")
    r = _try(root, TRAIN.replace("LR = 0.01", "LR = 0.03").replace("    evaluate(LR)", "    import time\n    time.sleep(2.5)\n    evaluate(LR)"))
    assert r.status == "checks_failed" and "over the allowance of 2.25s" in r.asi["rollback_reason"]
    assert r.metrics["score"] > runs(root)[0].metric  # it would have been a keep


def test_an_honest_improvement_is_kept(tmp_path: Path) -> None:
    root = _channel_toy(tmp_path)
    r = _try(root, TRAIN.replace("LR = 0.01", "LR = 0.03"))
    assert r.status == "keep" and "ignored_printed_metric" not in r.asi


def test_reading_a_fixed_file_is_not_writing_it() -> None:
    assert audit_patch(_patch("src = open('evalfix.py').read()"), ["evalfix.py"], NAMES) == []
    assert audit_patch(_patch("open('evalfix.py', mode='a')"), ["evalfix.py"], NAMES)
