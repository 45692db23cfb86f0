"""CPU smoke test of the pretrain target as a user runs it: prepare.py and train.py side by side in a
workspace directory, as subprocesses, on a small offline corpus and a few seconds of training, then the
fixed evaluation (`prepare.py --evaluate`) of the checkpoint the run wrote.

The first prepare and the 2 s run are the ones tests/conftest.py makes once per pytest run for every module
that wants this data and checkpoint (prepared_pretrain, trained_pretrain: the same commands, in a workspace of
their own); this module checks what they printed and left, and runs the rest itself.

Run: .venv/bin/python -m pytest tests/test_pretrain_smoke.py -q   (CPU only, no network, ~20-30 s)
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import kit_module, prepared_pretrain, pretrain_train, pretrain_workspace, trained_pretrain

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


PREPARE_ARGS = ("--dataset", "local", "--max-bytes", "300000", "--vocab-size", "512", "--eval-tokens", "4096")


@pytest.fixture(scope="module")
def prepared(workspace):
    """prepare.py on a ~300 KB slice of the stdlib corpus with a 512-token vocabulary: the first time (its
    output; conftest.prepared_pretrain), then again in this module's workspace, over a copy of that cache."""
    ws, env, root = workspace
    first = prepared_pretrain(root / "first", PREPARE_ARGS)
    shutil.copytree(first.root / "cache", root / "cache")
    return first.prepare_stdout, run(ws, env, "prepare.py", *PREPARE_ARGS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`python train.py` (2 s budget, AUTORESEARCH_CHECKPOINT and AUTORESEARCH_RESULT_FILE set) after that
    prepare, in a workspace of its own: conftest.trained_pretrain."""
    return trained_pretrain(tmp_path_factory.mktemp("trained"), PREPARE_ARGS)


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
    first, second = prepared  # the first exited 0 (prepared_pretrain checks)
    assert "round-trip sanity check passed" in first
    assert second.returncode == 0 and "already prepared" in second.stdout


def summary_block(out: str) -> dict[str, str]:
    block = out[out.rindex("\n---\n") + 5 :].splitlines()
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block if ":" in line and not line.startswith("METRIC"))}


def test_train_saves_a_checkpoint_and_the_evaluation_scores_it(trained):
    """train.py trains and writes its checkpoint, printing training figures and no val_bpb, and reports
    nothing through the channel; `prepare.py --evaluate` then scores the checkpoint and reports val_bpb,
    once, through the channel."""
    root, ws = trained.root, trained.ws
    channel = root / "result.jsonl"
    env = {**trained.env, "AUTORESEARCH_CHECKPOINT": str(trained.ckpt), "AUTORESEARCH_RESULT_FILE": str(channel)}

    out = trained.train_stdout
    assert re.search(r"^attention: sdpa", out, re.M) and re.search(r"^preset: cpu", out, re.M)
    assert re.search(r"^step 00000 ", out, re.M)  # progress lines, newline-terminated when not a TTY
    assert re.search(r"^warmup: 1 step in [0-9.]+s, untimed and undone$", out, re.M)  # UNTIMED_STEPS["cpu"]
    assert re.search(r"^checkpoint: .* \(model\.pt2 for 8 x 256 tokens; exported and saved in [0-9.]+s\)$", out, re.M)
    summary = summary_block(out)
    for key in ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps",
                "num_params_M", "depth", "export_seconds"):
        assert key in summary, key
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC_LINE.match, out.splitlines()) if m}
    assert "val_bpb" not in summary and "val_bpb" not in metrics and "val_bpb" not in out
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["training_seconds"] >= 2 and metrics["num_steps"] >= 2 and metrics["export_seconds"] < 30
    assert trained.env["AUTORESEARCH_TIME_BUDGET"] == "2"  # the budget it ran under
    # the run holds no channel to the metric, even with the variable set (conftest set it for this run)
    assert not (root / "train.result.jsonl").exists()

    ckpt = trained.ckpt
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.pt", "model.pt2", "train.py"]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["fingerprint"] and config["eval_batch"] == 8 and config["device_batch"] == 2
    assert "val_bpb" not in config and "tokenizer_dir" not in config  # no result, and no path the evaluation reads

    evaluation = run(ws, env, "prepare.py", "--evaluate")  # $AUTORESEARCH_CHECKPOINT, as the harness runs it
    assert evaluation.returncode == 0, evaluation.stdout[-2000:] + evaluation.stderr[-2000:]
    assert "step 0" not in evaluation.stdout  # no training ran
    val_bpb = float(dict(METRIC_LINE.match(line).groups() for line in evaluation.stdout.splitlines()
                         if METRIC_LINE.match(line))["val_bpb"])
    assert float(summary_block(evaluation.stdout)["val_bpb"]) == pytest.approx(val_bpb, abs=1e-6)
    assert 0.5 < val_bpb < 9  # a few seconds on a loaded machine may not beat uniform over 512 tokens (~4.5)
    reports = [json.loads(line) for line in channel.read_text().splitlines()]
    assert reports == [{"name": "val_bpb", "value": pytest.approx(val_bpb, rel=1e-9)}]

    # model.pt, for resuming or fine-tuning: plain tensors (weights_only), train.py's GPT takes them, and the
    # model they make computes what the exported program computes
    train = pretrain_train()
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    assert all(type(t) is torch.Tensor for t in state.values())
    model = train.GPT(train.GPTConfig(**config["model"]), train.SDPAAttention())
    model.load_state_dict(state)
    assert model.config.n_layer == int(summary["depth"])
    x = torch.randint(0, config["model"]["vocab_size"], (8, config["sequence_len"]))
    with torch.no_grad():
        assert torch.equal(kit_module().load_program(str(ckpt / "model.pt2"))(x), model.eval()(x))


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
    assert {"evaluate_bpb", "MAX_SEQ_LEN", "EVAL_TOKENS", "report", "load_program", "evaluate"} <= names
    lines = Path(ASSETS, "train.py").read_text(encoding="utf-8").splitlines()
    patch = "--- a/train.py\n+++ b/train.py\n" + "\n".join("+" + line for line in lines)
    assert integrity.audit_patch(patch, ["prepare.py", "arkit.py"], names) == []
