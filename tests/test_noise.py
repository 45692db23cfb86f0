"""The noise-aware keep decision: calibration, the confirmation gate, held-out metrics.

A toy target whose score is a known function of LR plus Gaussian noise drawn from the
seed the harness passes (AUTORESEARCH_SEED), so every run is reproducible. Where the outcome
must be worked out by hand, the fake executor (tests/conftest.py) scripts the score per seed.

Run: python -m pytest tests/test_noise.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from toy import cli, cli_proc, git, make_toy, runs, set_constant

from harness import config as config_mod
from harness import ledger
from harness.agents.base import Proposal
from harness.loop import Controller
from harness.stats import gate_threshold, z_score

NOISY = """\
import importlib.util, math, os, random
spec = importlib.util.spec_from_file_location("train", "train.py")
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
noise = random.Random(int(os.environ.get("AUTORESEARCH_SEED", "0"))).gauss(0, 0.05)
print(f"METRIC score={-((math.log10(m.LR) + 1.5) ** 2) + noise:.6f}")
"""


def _noisy(tmp_path: Path, *init: str) -> Path:
    return make_toy(tmp_path / "ws", evaluate=NOISY, extra_init=list(init))


def test_gate_statistics() -> None:
    assert gate_threshold(0.1, 1, 1, 2.0) == pytest.approx(2 * 0.1 * math.sqrt(2))
    assert gate_threshold(0.1, 4, 4, 2.0) < gate_threshold(0.1, 1, 4, 2.0)
    assert z_score(0.2, 0.1, 1, 1) == pytest.approx(0.2 / (0.1 * math.sqrt(2)))
    assert z_score(0.2, 0.0, 1, 1) is None


def test_calibration_logs_the_noise_floor(tmp_path: Path, capsys) -> None:
    root = _noisy(tmp_path, "--calibrate", "4")
    assert cli(root, "experiment", "-d", "baseline") == 0
    cal = [json.loads(x) for x in (root / "autoresearch.jsonl").read_text().splitlines() if '"calibration"' in x]
    assert len(cal) == 1 and cal[0]["n"] == 4 and cal[0]["seeds"] == [42, 43, 44, 45]
    assert 0 < cal[0]["sigma"] < 0.2
    state = ledger.load_state(root / "autoresearch.jsonl")
    base = state.current.baseline_run
    assert state.current.calibration.sigma == cal[0]["sigma"]
    assert base.n_samples == 4 and base.metric == pytest.approx(sum(cal[0]["values"]) / 4)
    assert [s["seed"] for s in base.raw["samples"]] == [42, 43, 44, 45]
    assert (root / ".autoresearch" / "runs" / "1.s4.log").exists()
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    assert st["noise"]["calibrated"] and st["noise"]["n"] == 4


def test_a_small_gain_is_refused_after_every_confirmation_run(tmp_path: Path, fake_executor, fake_clock) -> None:
    root = _noisy(tmp_path, "--calibrate", "4", "--confirm", "3")
    # Scripted scores per run and seed: the baseline's four seeds, then a candidate that is lucky once.
    scores = {"1": 1.0, "1.s2": 1.05, "1.s3": 0.95, "1.s4": 1.0, "2": 1.05, "2.s2": 1.0, "2.s3": 1.01, "2.s4": 0.99}
    executor = fake_executor(root, lambda call: scores[call.key])
    ctl = Controller(root, config_mod.load(root), executor=executor, clock=fake_clock, printer=lambda s: None)
    ctl.iterate(None)  # the baseline, calibrated: mean 1.0, sigma 1.4826 * MAD 0.025
    set_constant(root, "LR", "0.0105")
    ctl.iterate(None, Proposal("tiny LR change", {"hypothesis": "h"}))
    r = runs(root)[-1]
    ev = r.raw["evidence"]
    assert ev["best_n"] == 4 and ev["sigma"] > 0
    assert [c.seed for c in executor.calls if c.key.split(".")[0] == "2"] == [42, 43, 44, 45]
    assert len(r.raw["samples"]) == ev["n"] == 4
    # By hand: the calibration's sigma 0.0371 is above the pooled SD of the repeats (0.0343), so after
    # 4 runs (mean 1.0125) the gain 0.0125 is under 1.5 * 0.0371 * sqrt(1/4 + 1/4) = 0.0393; it never
    # cleared the threshold before either (0.025 < 0.0514 after 2 runs, 0.02 < 0.0425 after 3).
    assert ev["sigma"] == pytest.approx(1.4826 * 0.025)
    assert ev["gain"] == pytest.approx(0.0125)
    assert ev["threshold"] == pytest.approx(1.5 * 1.4826 * 0.025 * math.sqrt(0.5))
    assert r.status == "discard" and "not confirmed" in r.asi["rollback_reason"]
    assert "LR = 0.01 " in (root / "train.py").read_text()


def test_a_large_gain_is_kept_with_its_z(tmp_path: Path) -> None:
    root = _noisy(tmp_path, "--calibrate", "3")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.03")  # true gain 0.25, about 5 sigma
    cli(root, "experiment", "-d", "LR 0.03", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    assert r.status == "keep" and r.raw["evidence"]["n"] == 2  # kept on its second run: no lucky single sample
    assert r.confidence == pytest.approx(r.raw["evidence"]["z"]) and r.confidence > 2


def test_a_gain_under_a_strict_threshold_is_not_confirmed(tmp_path: Path) -> None:
    root = _noisy(tmp_path, "--calibrate", "3", "--confirm", "1", "--min-effect", "50")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.03")
    cli(root, "experiment", "-d", "LR 0.03", "--asi", '{"hypothesis": "h"}')
    r = runs(root)[-1]
    assert r.status == "discard" and "not confirmed" in r.asi["rollback_reason"]
    assert len(r.raw["samples"]) == 2  # a keep candidate always gets its second run


def test_the_noise_estimate_pools_repeat_runs(tmp_path: Path) -> None:
    root = _noisy(tmp_path, "--calibrate", "3")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.03")
    cli(root, "experiment", "-d", "LR 0.03", "--asi", '{"hypothesis": "h"}')
    ev = runs(root)[-1].raw["evidence"]
    assert ev["sigma_df"] >= 2 + ev["n"] - 1  # the calibration's 3 runs and the candidate's own repeats
    assert ev["sigma"] == max(ev["sigma_calibration"], ev["sigma_pooled"])


def test_heldout_metric_for_kept_runs_only(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    (root / "heldout.py").write_text("import os\nprint('METRIC heldout_score=' + os.environ['AUTORESEARCH_RUN'])\n")
    cfg = config_mod.load(root)
    config_mod.save(root, config_mod.with_overrides(cfg, heldout_metric="heldout_score",
                                                    heldout_command="python heldout.py"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "held-out metric")
    cli(root, "experiment", "-d", "baseline")
    set_constant(root, "LR", "0.9")
    cli(root, "experiment", "-d", "worse", "--asi", '{"hypothesis": "h"}')
    set_constant(root, "LR", "0.03")
    cli(root, "experiment", "-d", "better", "--asi", '{"hypothesis": "h"}')
    rs = runs(root)
    assert [r.raw.get("heldout") for r in rs] == [{"heldout_score": 1.0}, None, {"heldout_score": 3.0}]
    st = json.loads(cli_proc(root, "status", "--json").stdout)
    assert st["heldout"] == {"name": "heldout_score", "baseline": 1.0, "best": 3.0}
    assert "heldout_score" in cli_proc(root, "log").stdout


def test_calibrate_flag_validation(tmp_path: Path) -> None:
    root = make_toy(tmp_path / "ws")
    res = cli_proc(root, "run", "--calibrate", "1")
    assert res.returncode == 2 and "calibrate must be 0 (off) or at least 2" in res.stderr
    res = cli_proc(root, "run", "--confirm", "0")
    assert res.returncode == 2 and "confirm must be >= 1" in res.stderr
