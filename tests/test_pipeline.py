"""The offline post-training pipeline as the README walks it: pretrain, then sft, then dpo, then grpo, each
its own loop session started from the previous session's best run with `autoresearch` commands only.

Real throughout: the real CLI as subprocesses, real git workspaces, the real controller and sandbox as
configured, real training processes on CPU with tiny budgets, the fixed evaluations in processes of their
own. What it proves: each stage runs in the loop (rc 0, its metric and the base's own accuracy on every run
line, a kept baseline whose checkpoint holds a PEFT adapter), each stage's base is the previous session's
best run (base.json's origin names that session and run), `status` of the last session shows the whole
chain of bases back to the pretrain session, and the dpo session's status shows its preference pairs.

Run: .venv/bin/python -m pytest tests/test_pipeline.py -q     (~4 min on 2 loaded cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import trained_pretrain
from test_arbase import PRETRAIN_ARGS
from test_dpo import ROLLOUT, two_answer_data

from harness import config as config_mod

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of a user's shell: a private cache in which the pretrain data is prepared."""
    t = trained_pretrain(tmp_path_factory.mktemp("pipeline"), PRETRAIN_ARGS)
    return {**t.env, "OMP_NUM_THREADS": "1", "AUTORESEARCH_CACHE_DIR": str(t.root / "cache")}


def autoresearch(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, (args, done.stdout[-3000:] + done.stderr[-3000:])
    return done


def run_lines(ws: Path) -> list[dict]:
    lines = [json.loads(line) for line in (ws / "autoresearch.jsonl").read_text().splitlines()]
    return [r for r in lines if "run" in r and "status" in r]


def stage(env: dict[str, str], ws: Path, target: str, base: Path, budget: str, data: str, *prepare: str) -> dict:
    """`init --target T --base PREVIOUS-SESSION`, then the baseline in the loop; returns base.json."""
    autoresearch(env, "init", str(ws), "--target", target, "--base", str(base), "--data", data, "--budget", budget,
                 "--calibrate", "0", timeout=600)
    # a generous start-up allowance: a loaded CI machine (the budget rule has its own tests); fewer rollouts.
    # init copied the local data into the cache (the sandbox hides /tmp): its prepare command names the copy
    command = config_mod.load(ws).prepare_command or ""
    assert "--data " in command and data not in command, command
    autoresearch(env, "-C", str(ws), "config", "startup_allowance_s", "120",
                 "prepare_command", " ".join((command, *prepare)))
    autoresearch(env, "-C", str(ws), "run", "--agent", "mutate", "--max-iterations", "1")
    runs = run_lines(ws)
    assert runs and runs[0]["status"] == "keep", runs
    for r in runs:
        assert "val_accuracy" in r["metrics"] and "base_accuracy" in r["metrics"], (target, r["metrics"])
    ckpt = ws / ".autoresearch" / "checkpoints" / f"run-{runs[0]['run']}"
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    record = json.loads((ws / "base.json").read_text())
    assert record["origin"]["type"] == "session" and record["origin"]["path"] == str(base.resolve())
    assert record["origin"]["run"] == run_lines(base)[0]["run"]
    return record


def test_pretrain_then_sft_then_dpo_then_grpo(env, tmp_path):
    pre = tmp_path / "pre"
    autoresearch(env, "init", str(pre), "--target", "pretrain", "--budget", "2", "--calibrate", "0")
    autoresearch(env, "-C", str(pre), "config", "prepare_command", "python prepare.py " + " ".join(PRETRAIN_ARGS),
                 "startup_allowance_s", "120")
    # no held-out confirmation (not what this tests): a hand edit, which `run` commits first
    toml = pre / "autoresearch.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(keepends=True)
                            if not line.startswith(("heldout_metric", "heldout_command"))))
    autoresearch(env, "-C", str(pre), "run", "--agent", "mutate", "--max-iterations", "1")
    assert run_lines(pre)[0]["status"] == "keep"

    # sums whose answer is 7 or 8: a base that learned the format in seconds of SFT is right about half the
    # time, so the dpo stage's rollouts hold right and wrong answers (pairs), and grpo's groups vary
    data = two_answer_data(tmp_path / "data")
    sft, dpo, grpo = tmp_path / "sft", tmp_path / "dpo", tmp_path / "grpo"
    stage(env, sft, "sft", pre, "8", data)
    dpo_base = stage(env, dpo, "dpo", sft, "5", data, *ROLLOUT)
    assert dpo_base["kind"] == "ours" and dpo_base["origin"]["target"] == "sft"
    dpo_status = autoresearch(env, "-C", str(dpo), "status", timeout=120).stdout
    assert "pairs" in dpo_status and "correct_vs_incorrect" in dpo_status, dpo_status
    assert "heldout_pref_accuracy" in run_lines(dpo)[0]["metrics"]
    stage(env, grpo, "grpo", dpo, "5", data)

    status = autoresearch(env, "-C", str(grpo), "status", timeout=120).stdout
    chain = [line.strip() for line in status.splitlines() if "from session" in line]
    assert len(chain) == 3, status
    assert chain[0].startswith("base  dpo run 1") and f"from session {dpo.resolve()} run #1" in chain[0]
    assert chain[1].startswith("which was post-trained from sft run 1") and str(sft.resolve()) in chain[1]
    assert chain[2].startswith("which was post-trained from pre run 1") and str(pre.resolve()) in chain[2]
