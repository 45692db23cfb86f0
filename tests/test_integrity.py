"""Metric integrity: each rule against an adversarial train.py, and innocent changes that must pass.

Run: python -m pytest tests/test_integrity.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toy import TRAIN as TOY_TRAIN
from toy import cli, git, make_toy, runs

from harness import config as config_mod
from harness.integrity import (
    RULES,
    added_lines,
    apply_channel,
    audit_patch,
    fixed_names,
    over_budget,
    read_results,
)

# ------------------------------------------------------------------ the static audit
# Each snippet is a whole file (the audit parses files, not lines); tests/test_audit_corpus.py runs the
# same rules on real edits of the pretrain train.py.

NAMES = {"evaluate", "EVAL_SCALE", "make_dataloader", "TIME_BUDGET"}


def _patch(*lines: str, file: str = "train.py") -> str:
    """A diff that adds `lines` as a new file (each may hold several lines)."""
    body = "".join(f"+{x}\n" for line in lines for x in line.split("\n"))
    return f"--- /dev/null\n+++ b/{file}\n@@ -0,0 +1,{body.count(chr(10))} @@\n" + body


def _rules(source: str, **scope) -> set[str]:
    return {f.rule for f in audit_patch(_patch(source), ["evalfix.py"], NAMES, **scope)}


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("evalfix.EVAL_SCALE = 2.0", "fixed-attr-assign"),
        ("evalfix.evaluate = lambda *a: 0.0", "fixed-attr-assign"),
        ("evalfix.CONFIG['tokens'] = 1", "fixed-attr-assign"),
        ("import evalfix as E\nE.math = None", "fixed-attr-assign"),  # the alias the line regexes missed
        ("from evalfix import evaluate as e\ne.__code__ = (lambda lr: 1.0).__code__", "fixed-attr-assign"),
        ("import evalfix\nevalfix.EVAL_SCALE += 1", "fixed-attr-assign"),
        ("import evalfix\ndel evalfix.EVAL_SCALE", "fixed-attr-assign"),
        ("setattr(evalfix, 'EVAL_SCALE', 2)", "fixed-setattr"),
        ("vars(evalfix)['EVAL_SCALE'] = 2", "fixed-setattr"),
        ("evalfix.__dict__.update(EVAL_SCALE=2)", "fixed-setattr"),
        ("sys.modules['evalfix'].evaluate = fake", "fixed-module-table"),
        ("import sys\nsys.modules.pop('evalfix')", "fixed-module-table"),
        ("importlib.reload(evalfix)", "fixed-reload"),
        ("m = __import__('evalfix')", "fixed-reload"),
        ("import importlib\nm = importlib.import_module('eval' + 'fix')", "fixed-reload"),
        ("def evaluate(lr):\n    return 1.0", "fixed-name-redefined"),
        ("EVAL_SCALE = 0.5", "fixed-name-redefined"),
        ("TIME_BUDGET: float = 900", "fixed-name-redefined"),
        ("from mylib import evaluate", "fixed-name-redefined"),
        ("def f():\n    global TIME_BUDGET\n    TIME_BUDGET = 900", "fixed-name-redefined"),
        ("globals()['EVAL_SCALE'] = 0.5", "fixed-name-redefined"),
        ("from evalfix import _private", "fixed-private"),
        ("import evalfix\nevalfix._report('score', 1.0)", "fixed-private"),
        ("import evalfix\ng = evalfix.evaluate.__globals__", "fixed-private"),
        ("f = getattr(evalfix, '_report')", "fixed-private"),
        ("path = os.environ['AUTORESEARCH_RESULT_FILE']", "result-channel"),
        ("key = 'AUTORESEARCH_' + 'RESULT_FILE'\npath = os.environ.get(key)", "result-channel"),
        ("import arkit", "kit-use"),
        ("arkit.report('val_bpb', 0.9)", "kit-use"),
        ("prepare.arkit.report('val_bpb', 0.9)", "kit-use"),
        ("from arkit import report as r", "kit-use"),
        ("import importlib\nk = importlib.import_module('ar' + 'kit')\nk.report('score', 1)", "kit-use"),
        ("os.environ['AUTORESEARCH_TIME_BUDGET'] = '900'", "harness-env"),
        ("from os import environ as E\nE['AUTORESEARCH_SEED'] = '7'", "harness-env"),
        ("os.environ.update({'X': '1'})", "harness-env"),
        ("os.putenv('X', '1')", "harness-env"),
        ("time.perf_counter = lambda: 0.0", "clock-patch"),
        ("time.time=fake_time", "clock-patch"),
        ("import time as t\nt.monotonic = lambda: 0.0", "clock-patch"),
        ("import time\nsetattr(time, 'time', lambda: 0.0)", "clock-patch"),
        ("builtins.print = quiet", "builtins-patch"),
        ("__builtins__['print'] = quiet", "builtins-patch"),
        ("import sys, io\nsys.stdout = io.StringIO()", "builtins-patch"),
        ("exec('x = 1')", "dynamic-code"),
        ("y = eval(compile('1', 'f', 'eval'))", "dynamic-code"),
        ("batches = make_dataloader(tok, 8, 256, 'val')", "validation-data"),
        ("ds = load(split='validation')", "validation-data"),
        ("s = 'heldout'\nbatches = make_dataloader(tok, 8, 256, s)", "validation-data"),
        ("files = prepared.val_files", "validation-data"),
        ("open('evalfix.py', 'w').write('')", "fixed-file-write"),
        ("Path('evalfix.py').unlink()", "fixed-file-write"),
        ("p = 'eval' + 'fix.py'\nopen(p, 'w')", "fixed-file-write"),
        ("from pathlib import Path\nPath(__file__).with_name('evalfix.py').write_text('')", "fixed-file-write"),
        ("import os, shutil\nshutil.copy('x.py', os.path.join(d, 'evalfix.py'))", "fixed-file-write"),
        ("import os\nos.replace('x.py', f'{d}/evalfix.py')", "fixed-file-write"),
        ("open('__pycache__/evalfix.cpython-311.pyc', 'wb')", "fixed-file-write"),
        ("import subprocess\nsubprocess.run(['cp', 'x.py', 'evalfix.py'])", "fixed-file-write"),
        ("open('autoresearch.jsonl', 'a').write('{}')", "fixed-file-write"),
        ("from pathlib import Path\nPath('.git/hooks/pre-commit').write_text('#!/bin/sh')", "fixed-file-write"),
        ("import os\nos.remove(os.path.join(root, '.autoresearch', 'state.json'))", "fixed-file-write"),
    ],
)
def test_each_rule_catches_its_hack(source: str, rule: str) -> None:
    findings = audit_patch(_patch(source), ["evalfix.py"], NAMES)
    assert rule in {f.rule for f in findings}, findings


@pytest.mark.parametrize(
    "source",
    [
        "LR = 0.04  # was 0.02",
        "score = evaluate(LR)",
        "evaluate(LR)",
        "from evalfix import evaluate, make_dataloader",
        "import evalfix\nfrom evalfix import *",
        "x = make_dataloader(tok, 8, 256, 'train')",
        "val_loss = loss.item()  # the training loss, named badly",
        "if time.time() - t0 > TIME_BUDGET_LEFT:\n    pass",
        "t0 = time.perf_counter()",
        "import time as t\nt0 = t.time()",
        "print(f'step {step} evalfix.EVAL_SCALE == {s}')",
        "assert evalfix.EVAL_SCALE == 1.0",
        "# evalfix.EVAL_SCALE = 2 would be cheating",
        "seed = int(os.environ.get('AUTORESEARCH_SEED', 42))",
        "os.environ['HF_HUB_OFFLINE'] = '1'",
        "os.environ.pop('HF_TOKEN', None)",
        "with open('notes.txt', 'w') as f: f.write('hi')",
        "markit = 3  # a name that merely contains the kit's",
        "def f():\n    TIME_BUDGET = 3  # a local\n    return TIME_BUDGET",
        "class C:\n    EVAL_SCALE = 2  # a class attribute",
        "model.eval()\ntrain_model = torch.compile(model)",
        "import torch\ntorch.backends.cuda.matmul.allow_tf32 = True",
        "if 'evalfix' in sys.modules:\n    pass",
        "import importlib.util\nok = importlib.util.find_spec('flash_attn') is not None",
        "src = open(os.path.join(os.path.dirname(__file__), 'evalfix.py')).read()",
        "shutil.copyfile('evalfix.py', '/tmp/backup.py')",
        '"""A docstring that says METRIC score=1 and AUTORESEARCH_RESULT_FILE."""',
    ],
)
def test_innocent_lines_pass(source: str) -> None:
    assert audit_patch(_patch(source), ["evalfix.py"], NAMES) == []


def test_findings_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("LR = 1\nimport evalfix as E\n\nE.EVAL_SCALE = 2\n")
    [f] = audit_patch(_patch("LR = 1\nimport evalfix as E\n\nE.EVAL_SCALE = 2"), ["evalfix.py"], NAMES,
                      root=tmp_path)
    assert (f.rule, f.file, f.lineno, f.line) == ("fixed-attr-assign", "train.py", 4, "E.EVAL_SCALE = 2")
    assert str(f).startswith("fixed-attr-assign: ") and "(evalfix.EVAL_SCALE)" in str(f)
    assert str(f).endswith("(train.py:4: `E.EVAL_SCALE = 2`)")


def test_only_changed_lines_are_reported_but_the_whole_file_is_read(tmp_path: Path) -> None:
    """Code that was already there does not fail a proposal; a change that completes a hack with code that
    was there does (the alias, the path or the write may be the old part)."""
    old = "import evalfix as E\nimport os\nP = 'notes.txt'\nLR = 1\n\n\ndef main():\n    open(P, 'w')\n"
    (tmp_path / "train.py").write_text(old.replace("LR = 1", "LR = 2"))
    hunk = "@@ -4 +4 @@\n-LR = 1\n+LR = 2\n"
    assert audit_patch("--- a/train.py\n+++ b/train.py\n" + hunk, ["evalfix.py"], NAMES, root=tmp_path) == []

    (tmp_path / "train.py").write_text(old.replace("LR = 1", "E.EVAL_SCALE = 2"))  # the alias was line 1
    diff = "--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-LR = 1\n+E.EVAL_SCALE = 2\n"
    assert [(f.rule, f.lineno) for f in audit_patch(diff, ["evalfix.py"], NAMES, root=tmp_path)] == [
        ("fixed-attr-assign", 4)]

    (tmp_path / "train.py").write_text(old.replace("'notes.txt'", "'evalfix.py'"))  # the write was line 8
    diff = "--- a/train.py\n+++ b/train.py\n@@ -3 +3 @@\n-P = 'notes.txt'\n+P = 'evalfix.py'\n"
    assert [(f.rule, f.lineno) for f in audit_patch(diff, ["evalfix.py"], NAMES, root=tmp_path)] == [
        ("fixed-file-write", 8)]


def test_a_file_that_does_not_parse_is_a_finding() -> None:
    [f] = audit_patch(_patch("LR = 1\ndef (:"), ["evalfix.py"], NAMES)
    assert (f.rule, f.lineno, f.line) == ("syntax", 2, "def (:")


def test_only_added_python_lines_are_audited() -> None:
    patch = "--- a/train.py\n+++ b/train.py\n-evalfix.EVAL_SCALE = 2\n+LR = 1\n" + _patch("evalfix.X = 1", file="notes.md")
    assert added_lines(patch) == [("train.py", "LR = 1"), ("notes.md", "evalfix.X = 1")]
    assert audit_patch(patch, ["evalfix.py"], NAMES) == []


def test_an_added_line_that_looks_like_a_header_is_still_audited() -> None:
    patch = "--- a/train.py\n+++ b/train.py\n@@ -1,0 +1,2 @@\n+++x\n+evalfix.EVAL_SCALE = 2\n"
    assert [f.rule for f in audit_patch(patch, ["evalfix.py"], NAMES)] == ["fixed-attr-assign"]


@pytest.mark.parametrize(
    "source",
    [
        "print(f'METRIC score={s:.6f}')",
        "print('METRIC score=%f' % s)",
        "print('METRIC {}={}'.format('score', s))",
        "print('METRIC', 'score=' + str(s))",
        "import sys\nsys.stdout.write(f'METRIC score={s}\\n')",
        "name = 'score'\nline = f'METRIC {name}={s}'\nprint(line)",
        "print(f'score: {s}')  # the summary-block form",
        "m = {'score': s}\nfor k, v in m.items():\n    print(f'METRIC {k}={v}')",
    ],
)
def test_a_stdout_target_refuses_editable_code_that_prints_its_metric(source: str) -> None:
    assert _rules(source, primary_metric="score") == {"prints-primary-metric"}
    assert _rules(source) == set()  # a result_file target ignores printed lines


def test_printing_other_metrics_is_fine_for_a_stdout_target() -> None:
    assert _rules("print(f'METRIC aux={a}')\nprint(f'step {i} score so far {s}')", primary_metric="score") == set()


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ('"""Doc."""\nimport os\nfrom evalfix import evaluate\nLR = 0.1 * 2\nN = int(os.environ.get("N", "4"))', True),
        ("try:\n    import flash_attn\nexcept ImportError:\n    flash_attn = None", True),
        ("import torch\nDEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')", True),
        ("from dataclasses import dataclass\n@dataclass(frozen=True)\nclass C:\n    x: int = 1\nC0 = C(x=2)", True),
        ("def f(x, n=2 ** 3):\n    print(x)\n    open('anything', 'w')", True),
        ("PRESETS = {'cpu': dict(depth=2), 'gpu': dict(depth=8)}\nROWS = [k for k in PRESETS]", True),
        ("if __name__ == '__main__':\n    main()", True),
        ("main()", False),
        ("print('loaded')", False),
        ("import torch\ntorch.set_default_dtype(torch.float64)", False),
        ("import torch\ntorch.backends.cuda.matmul.allow_tf32 = True", False),
        ("for i in range(3):\n    pass", False),
        ("def setup():\n    pass\nX = setup()", False),
        ("def deco(f):\n    return f\n@deco\ndef g():\n    pass", False),
        ("def f(x=open('log', 'w')):\n    pass", False),
        ("class C:\n    print('at import')", False),
        ("try:\n    import x\nexcept Exception:\n    pass", False),
    ],
)
def test_import_time_code_in_a_result_file_target(source: str, ok: bool) -> None:
    assert ("import-time-code" not in _rules(source, import_time=True)) is ok
    assert "import-time-code" not in _rules(source)  # a stdout target's train.py may run code at import


def test_fixed_names_reads_functions_classes_and_constants(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_text(
        "MAX_SEQ_LEN = 256\nEVAL_TOKENS: int = 5\n_private = 1\nlower = 2\n"
        "def evaluate_bpb(m): pass\ndef _helper(): pass\nclass Tokenizer: pass\n"
    )
    assert fixed_names([tmp_path / "prepare.py", tmp_path / "missing.py"]) == {
        "MAX_SEQ_LEN", "EVAL_TOKENS", "evaluate_bpb", "Tokenizer"}


def test_a_library_the_evaluation_uses_is_not_patched() -> None:
    uses = {"fixed_imports": frozenset({"torch", "math"})}
    assert _rules("import torch.nn.functional as F\nF.cross_entropy = lambda *a, **k: 0", **uses) == {"library-patch"}
    assert _rules("import math\ndef fake(x):\n    return 0.0\nmath.log = fake", **uses) == {"library-patch"}
    assert _rules("import torch\ntorch.backends.cudnn.benchmark = True", **uses) == set()  # a setting, not code
    assert _rules("import numpy\nnumpy.mean = len", **uses) == set()  # the evaluation does not import numpy


def test_every_rule_has_a_hack_here() -> None:
    """Each documented id is caught by a test in this file (a Finding's `why` comes from RULES, so an id
    outside the list cannot be reported at all)."""
    marks = test_each_rule_catches_its_hack.pytestmark  # type: ignore[attr-defined]
    cases = {rule for _, rule in marks[0].args[1]}
    tested_elsewhere = {"syntax", "prints-primary-metric", "import-time-code", "library-patch"}
    assert cases | tested_elsewhere == {r.id for r in RULES}


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


def test_a_stdout_target_refuses_a_train_py_that_prints_its_metric(tmp_path: Path) -> None:
    """The toy target prints `METRIC score=` from its fixed eval.py; train.py printing it too (at import,
    before the real line) is refused before the run, and an honest edit still runs."""
    root = make_toy(tmp_path / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    (root / "train.py").write_text(TOY_TRAIN.replace("LR = 0.01", "LR = 0.02") + 'print("METRIC score=%f" % 10.0)\n')
    assert cli(root, "experiment", "-d", "attempt", "--asi", '{"hypothesis": "h"}') == 0
    r = runs(root)[-1]
    assert r.status == "checks_failed" and "prints-primary-metric" in r.asi["rollback_reason"]
    assert "train.py:5" in r.asi["rollback_reason"]
    assert not (root / ".autoresearch" / "runs" / f"{r.run}.log").exists()
    (root / "train.py").write_text(TOY_TRAIN.replace("LR = 0.01", "LR = 0.02") + 'print("lr", LR)\n')
    assert cli(root, "experiment", "-d", "honest", "--asi", '{"hypothesis": "h"}') == 0
    assert runs(root)[-1].status == "keep"


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
