"""A toy target for the controller's tests: real files, a real git repo, real processes.

`train.py` holds UPPER_CASE constants; `eval.py` (fixed) reads them and prints a METRIC
line for a known objective, so tests know which changes are improvements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import ledger
from harness.cli import main

TRAIN = """\
# toy hyperparameters
LR = 0.01          # learning rate
WIDTH = 8          # a power of two
USE_BIAS = False   # a flag
"""

# score peaks at LR = 10**-1.5 and WIDTH = 32; higher is better
EVAL = """\
import importlib.util, math, os, sys
spec = importlib.util.spec_from_file_location("train", "train.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
score = -((math.log10(m.LR) + 1.5) ** 2) - (math.log2(m.WIDTH) - 5) ** 2 / 4 + (0.1 if m.USE_BIAS else 0)
print("budget", os.environ.get("AUTORESEARCH_TIME_BUDGET"), "seed", os.environ.get("AUTORESEARCH_SEED"))
print("---")
print(f"width:       {m.WIDTH}")
print(f"METRIC score={score:.6f}")
"""


def make_toy(root: Path, *, train: str = TRAIN, evaluate: str = EVAL, extra_init: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(train)
    (root / "eval.py").write_text(evaluate)
    rc = main([
        "-C", str(root), "init", "--command", "python eval.py", "--metric", "score", "--direction", "higher",
        "--editable", "train.py", "--fixed", "eval.py", "--budget", "5", "--tag", "t", *(extra_init or []),
    ])
    assert rc == 0
    return root


def cli(root: Path, *args: str) -> int:
    return main(["-C", str(root), *args])


def cli_proc(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI as a real process (for kills and signals)."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "-C", str(root), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def runs(root: Path) -> list[ledger.RunRecord]:
    return list(ledger.load_state(root / "autoresearch.jsonl").runs)


def lines(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "autoresearch.jsonl").read_text().splitlines() if x.strip()]


def set_constant(root: Path, name: str, value: str) -> None:
    p = root / "train.py"
    out = []
    for line in p.read_text().splitlines():
        if line.startswith(f"{name} ="):
            rest = line.split("#", 1)
            line = f"{name} = {value}" + (f"  #{rest[1]}" if len(rest) > 1 else "")
        out.append(line)
    p.write_text("\n".join(out) + "\n")


def set_session(root: Path, **changes: object) -> None:
    """Change [session] settings of the workspace's autoresearch.toml and commit them, as a user would."""
    from harness import config as config_mod

    cfg = config_mod.with_overrides(config_mod.load(root), **changes)
    config_mod.save(root, cfg)
    if subprocess.run(["git", "diff", "--quiet", "autoresearch.toml"], cwd=root).returncode:
        subprocess.run(["git", "commit", "-qm", f"session: {sorted(changes)}", "autoresearch.toml"], cwd=root,
                       check=True, capture_output=True)
