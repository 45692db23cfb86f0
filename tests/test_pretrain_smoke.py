"""CPU smoke test of the pretrain target as a user runs it: prepare.py and train.py side by side in a
workspace directory, as subprocesses, on a small offline corpus and a few seconds of training.

Run: .venv/bin/python -m pytest tests/test_pretrain_smoke.py -q   (CPU only, no network, ~15-25 s)
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import kit_module, pretrain_prepare, pretrain_workspace

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pretrain")
METRIC_LINE = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    ws = pretrain_workspace(root / "ws")
    env = {
        **os.environ,
        "AUTORESEARCH_CACHE_DIR": str(root / "cache"),
        "AUTORESEARCH_CHECKPOINT": str(root / "checkpoint"),
        "AUTORESEARCH_TIME_BUDGET": "4",
        "AUTORESEARCH_RESULT_FILE": str(root / "result.jsonl"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a GPU machine
    }
    env.pop("AUTORESEARCH_DATASET", None)
    return ws, env, root


def run(ws, env, *args, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prepared(workspace):
    """prepare.py run twice on a ~300 KB slice of the stdlib corpus with a 512-token vocabulary."""
    ws, env, _ = workspace
    args = ("prepare.py", "--dataset", "local", "--max-bytes", "300000", "--vocab-size", "512", "--eval-tokens", "4096")
    return run(ws, env, *args), run(ws, env, *args)


def test_train_before_prepare_says_what_to_do(workspace):
    ws, env, root = workspace
    assert not (root / "cache").exists()  # runs before the `prepared` fixture
    result = run(ws, env, "train.py")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "python prepare.py --dataset local" in result.stderr


def test_prepare_help_explains_the_datasets(workspace):
    ws, env, _ = workspace
    result = run(ws, env, "prepare.py", "--help")
    assert result.returncode == 0
    for word in ("--dataset", "local", "climbmix", "parquet", "AUTORESEARCH_DATASET"):
        assert word in result.stdout


def test_prepare_is_idempotent(prepared):
    first, second = prepared
    assert first.returncode == 0, first.stderr
    assert "round-trip sanity check passed" in first.stdout
    assert second.returncode == 0 and "already prepared" in second.stdout


def test_train_prints_val_bpb_and_saves_a_checkpoint(workspace, prepared):
    ws, env, root = workspace

    result = run(ws, env, "train.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"^attention: sdpa", out, re.M) and re.search(r"^preset: cpu", out, re.M)
    assert re.search(r"^step 00000 ", out, re.M)  # progress lines, newline-terminated when not a TTY
    assert re.search(r"^warmup: 1 step in [0-9.]+s, untimed and undone$", out, re.M)  # UNTIMED_STEPS["cpu"]

    block = out[out.rindex("\n---\n") + 5 :].splitlines()
    summary = dict(line.split(":", 1) for line in block if ":" in line and not line.startswith("METRIC"))
    for key in ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"):
        assert key in summary, key
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC_LINE.match, out.splitlines()) if m}
    assert all(math.isfinite(v) for v in metrics.values())
    val_bpb = metrics["val_bpb"]
    assert float(summary["val_bpb"]) == pytest.approx(val_bpb, abs=1e-5)
    # Better than a uniform guess over 512 tokens (about 9 bits per ~2.7-byte token), but not absurd.
    assert 0.5 < val_bpb < 9 / 2
    assert metrics["training_seconds"] >= 4 and metrics["num_steps"] >= 2

    # The fixed evaluation reported the same number once through the harness's result channel.
    reports = [json.loads(line) for line in (root / "result.jsonl").read_text().splitlines()]
    assert reports == [{"name": "val_bpb", "value": pytest.approx(val_bpb, abs=1e-8)}]

    ckpt = root / "checkpoint"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["val_bpb"] == pytest.approx(val_bpb, abs=1e-8) and os.path.isdir(config["tokenizer_dir"])
    # A post-training target can rebuild the model from the checkpoint alone, with the kit.
    model, module = kit_module().load_checkpoint_model(
        str(ckpt), lambda m: m.GPT(m.GPTConfig(**config["model"]), m.SDPAAttention()),
        aliases={"prepare": pretrain_prepare()},
    )
    assert model.config.n_layer == int(summary["depth"]) and config["device_batch"] == 2
    assert module.__name__ not in sys.modules and "prepare" not in sys.modules  # nothing left registered


def test_train_fails_fast_on_nan(workspace, prepared):
    ws, env, _ = workspace
    source = (ws / "train.py").read_text()
    assert "loss_f = loss.item()" in source
    (ws / "train_nan.py").write_text(source.replace("loss_f = loss.item()", "loss_f = float('nan')"))
    result = run(ws, env, "train_nan.py")
    assert result.returncode == 1
    assert "FAIL" in result.stdout.splitlines() and "val_bpb" not in result.stdout


def test_shipped_train_py_passes_the_harness_audit():
    """Rewriting every line of train.py as shipped trips none of the harness's integrity rules, so an
    agent's edit to any of its lines is not flagged for a name it merely inherited."""
    from pathlib import Path

    from harness import integrity

    fixed = [Path(ASSETS) / "prepare.py", Path(ASSETS).parent / "arkit.py"]  # the kit is fixed in a workspace too
    names = integrity.fixed_names(fixed)
    assert {"evaluate_bpb", "MAX_SEQ_LEN", "EVAL_TOKENS", "report", "load_checkpoint_model"} <= names
    lines = Path(ASSETS, "train.py").read_text(encoding="utf-8").splitlines()
    patch = "--- a/train.py\n+++ b/train.py\n" + "\n".join("+" + line for line in lines)
    assert integrity.audit_patch(patch, ["prepare.py", "arkit.py"], names) == []
