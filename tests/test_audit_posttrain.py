"""The static audit on the sft target's train.py: the post-training kit hands out every split at once
(`armath.load_splits(spec)` is a dict of train/val/test; `prepare.load_prepared()` has `.rows(split)`), so
reading the validation or held-out items by key or by method must be caught as the pretrain loaders are,
while the same calls on the train split pass. Edits are inserted into a copy of assets/sft/train.py, the
diff built as git would show it, and audited as the controller does, with the target's fixed files beside it.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
from conftest import ASSETS

from harness.audit import audit_workspace

FIXED = ("prepare.py", "armath.py", "arbase.py", "arpost.py", "arkit.py")  # an sft workspace's fixed Python files
GUARD = '\nif __name__ == "__main__":'


def _audit(tmp_path: Path, code: str) -> list[str]:
    root = tmp_path / "ws"
    root.mkdir()
    for rel, src in (("prepare.py", ASSETS / "sft" / "prepare.py"), ("armath.py", ASSETS / "armath.py"),
                     ("arbase.py", ASSETS / "arbase.py"), ("arpost.py", ASSETS / "arpost.py"),
                     ("arkit.py", ASSETS / "arkit.py")):
        shutil.copyfile(src, root / rel)
    train = (ASSETS / "sft" / "train.py").read_text(encoding="utf-8")
    assert train.count(GUARD) == 1, "assets/sft/train.py lost its main guard: the test's anchor"
    edited = train.replace(GUARD, "\n" + code + GUARD)
    (root / "train.py").write_text(edited, encoding="utf-8")
    patch = "".join(difflib.unified_diff(train.splitlines(keepends=True), edited.splitlines(keepends=True),
                                         "a/train.py", "b/train.py"))
    return [f.rule for f in audit_workspace(patch, root, FIXED, import_time=True)]


READS_HELD_OUT = {
    "a split by name": 'def extra():\n    return armath.load_split(DATA, "val").items\n',
    "every split, then one by key": 'def extra():\n    return armath.load_splits(DATA)["val"].items\n',
    "every split bound, then the test key": 'def extra():\n    splits = armath.load_splits(DATA)\n    return splits["test"]\n',
    "the prepared rows of val": 'def extra():\n    prepared = prepare.load_prepared()\n    return prepared.rows("val")\n',
    "the shared kit's rows of val": 'def extra():\n    return arpost.load_prepared().rows("val")\n',
    "the shared kit's rows of test, bound": 'def extra():\n    p = arpost.load_prepared()\n    rows = p.rows\n    return rows("test")\n',
    "the shared kit's rows by split=": 'def extra():\n    return arpost.load_prepared().rows(split="test")\n',
}
INNOCENT = {
    "the prepared rows of train": 'def extra():\n    prepared = prepare.load_prepared()\n    return prepared.rows("train")\n',
    "every split, then train": 'def extra():\n    return armath.load_splits(DATA)["train"].items\n',
    "the shared kit's rows of train": 'def extra():\n    return arpost.load_prepared().rows("train")\n',
    "a dict of its own keyed val": 'def extra(history):\n    return history["val"][-1]\n',
}


@pytest.mark.parametrize("name", READS_HELD_OUT)
def test_reading_held_out_items_is_caught(tmp_path: Path, name: str) -> None:
    code = "import armath\nimport arpost\nimport prepare\nDATA = 'offline-math:levels=1'\n\n\n" + READS_HELD_OUT[name]
    assert "validation-data" in _audit(tmp_path, code), name


@pytest.mark.parametrize("name", INNOCENT)
def test_the_train_split_and_own_dicts_pass(tmp_path: Path, name: str) -> None:
    code = "import armath\nimport arpost\nimport prepare\nDATA = 'offline-math:levels=1'\n\n\n" + INNOCENT[name]
    assert _audit(tmp_path, code) == [], name


@pytest.mark.parametrize("target", ["sft", "grpo"])
def test_the_shipped_train_py_passes_as_a_whole(tmp_path: Path, target: str) -> None:
    """Every line of the target's train.py as shipped, audited as added: an edit anywhere is not flagged for
    code it merely inherited."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(ASSETS / target / "prepare.py", root / "prepare.py")
    kit = (*FIXED[1:], "arsample.py") if target == "grpo" else FIXED[1:]
    for rel in kit:
        shutil.copyfile(ASSETS / rel, root / rel)
    train = (ASSETS / target / "train.py").read_text(encoding="utf-8")
    (root / "train.py").write_text(train, encoding="utf-8")
    patch = "--- /dev/null\n+++ b/train.py\n" + f"@@ -0,0 +1,{len(train.splitlines())} @@\n" + "".join(
        f"+{line}\n" for line in train.splitlines())
    assert audit_workspace(patch, root, ("prepare.py", *kit), import_time=True) == []
