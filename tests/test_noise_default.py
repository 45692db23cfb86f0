"""Honest noise by default (issue 13, item 9): time-budget targets calibrate, "likely real" only for measured
noise, and the token budget the pretrain target honours.

Run: python -m pytest tests/test_noise_default.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import prepared_pretrain, run_py
from toy import cli, cli_proc, make_toy, set_constant

from harness import config as config_mod
from harness import contention
from harness.cli import main
from harness.metrics import parse_metrics


def test_the_pretrain_target_calibrates_unless_told_not_to(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "a"), "--target", "pretrain", "--tag", "t"]) == 0
    assert config_mod.load(tmp_path / "a").calibrate == 2
    assert main(["init", str(tmp_path / "b"), "--target", "pretrain", "--tag", "t", "--calibrate", "0"]) == 0
    assert config_mod.load(tmp_path / "b").calibrate == 0


def _session(tmp_path: Path, *init: str) -> Path:
    root = make_toy(tmp_path / "ws", extra_init=list(init))
    assert cli(root, "experiment", "-d", "baseline") == 0
    for lr in ("0.02", "0.03"):  # three results and an improvement: the MAD confidence is defined
        set_constant(root, "LR", lr)
        assert cli(root, "experiment", "-d", f"LR {lr}") == 0
    return root


def test_without_calibration_no_view_says_likely_real(tmp_path: Path) -> None:
    root = _session(tmp_path)
    status = cli_proc(root, "status").stdout
    assert "noise not measured" in status and "likely real" not in status, status
    assert "confidence" in status and "MAD" in status
    log = cli_proc(root, "log").stdout
    assert "noise not measured" in log.splitlines()[0]
    assert cli(root, "report", "-o", str(tmp_path / "r.html")) == 0
    html = (tmp_path / "r.html").read_text()
    assert "noise not measured" in html and "likely real" not in html


def test_with_calibration_the_band_is_said(tmp_path: Path) -> None:
    root = _session(tmp_path, "--calibrate", "2")
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    assert st["noise"]["calibrated"]
    status = cli_proc(root, "status").stdout
    assert "noise not measured" not in status
    assert "noise not measured" not in cli_proc(root, "log").stdout.splitlines()[0]


def test_token_budget_check() -> None:
    assert contention.token_budget_problem({"total_tokens_M": 0.003072}, 3572) is None
    assert "over the token budget" in (contention.token_budget_problem({"total_tokens": 4096}, 3572) or "")
    assert "cannot be verified" in (contention.token_budget_problem({"val_bpb": 1.0}, 3572) or "")

    class Cfg:
        budget, token_budget = "tokens", 5000

    assert contention.token_budget_of(Cfg()) == 5000
    assert contention.token_budget_of(config_mod.Config(name="x", command="true")) is None


def test_pretrain_train_py_stops_at_the_token_budget(tmp_path: Path) -> None:
    """train.py with AUTORESEARCH_TOKEN_BUDGET trains on at most that many tokens, however long it takes
    (the time budget here is far away), and says so in what it reports: what the harness checks."""
    # the data as `prepare.py --dataset local --max-bytes 300000 ...` leaves it (prepared once per pytest run)
    t = prepared_pretrain(tmp_path, ("--dataset", "local", "--max-bytes", "300000", "--vocab-size", "512",
                                     "--eval-tokens", "4096"))
    ws, env = t.ws, {**t.env, "AUTORESEARCH_CHECKPOINT": str(tmp_path / "ckpt")}
    budget = 3 * 1024 + 500  # the CPU preset's step is 1,024 tokens: three steps fit, a fourth would not
    res = run_py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": "10000", contention.TOKEN_BUDGET_ENV: str(budget)}, "train.py")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    metrics = parse_metrics(res.stdout)
    assert metrics["num_steps"] == 3 and metrics["total_tokens_M"] * 1e6 == 3 * 1024
    assert contention.token_budget_problem(metrics, budget) is None
    assert "budget: 3,572 tokens of training" in res.stdout
