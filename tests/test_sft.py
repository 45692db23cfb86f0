"""The sft target as a user runs it: prepare.py, train.py and the separate evaluation, as processes.

The fixed side runs as real processes in a workspace laid out as `autoresearch init --target sft` lays it out
(base.json + base_model.py + the kit modules). The sft stage through the real CLI and loop, from a pretrain
session made there, is tests/test_pipeline.py's (pretrain, sft, dpo, grpo). CPU only, offline.

Run: .venv/bin/python -m pytest tests/test_sft.py -q            (the fast ones: ~1 min on 2 loaded cores)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import ASSETS, run_py, trained_pretrain
from test_arbase import PRETRAIN_ARGS, install_base, make_our_base

METRIC_LINE = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)
SMALL_DATA = "offline-math:levels=1,train=400,val=16,test=16"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    t = trained_pretrain(tmp_path_factory.mktemp("sft"), PRETRAIN_ARGS)
    t.env = {**t.env, "OMP_NUM_THREADS": "1"}  # on a loaded 2-core machine one thread per process is far faster
    return t


def sft_workspace(t, ws: Path) -> Path:
    """The sft workspace by hand, as init writes it: the target's and the kit's files, base.json (+ dir) and
    base_model.py for a base of ours installed in the cache."""
    base_dir = make_our_base(t.root / "base", t.ckpt, t.data_dir / "tokenizer")
    info = install_base(base_dir, t.root / "cache")
    ws.mkdir(parents=True)
    for name in ("prepare.py", "train.py"):
        shutil.copy(ASSETS / "sft" / name, ws / name)
    for name in ("arkit.py", "arbase.py", "armath.py", "arpost.py"):
        shutil.copy(ASSETS / name, ws / name)
    shutil.copy(base_dir / "base_model.py", ws / "base_model.py")
    (ws / "base.json").write_text(json.dumps(info))
    return ws


def metrics_of(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in METRIC_LINE.findall(text)}


def test_prepare_train_evaluate(pretrained, tmp_path):
    """prepare.py tokenizes and scores the base once; train.py saves a PEFT adapter; the evaluation reports
    val_accuracy through the channel only, with base_accuracy, val_nll, format_rate, mean_completion_len."""
    ws = sft_workspace(pretrained, tmp_path / "ws")
    env = pretrained.env
    prepared = run_py(ws, env, "prepare.py", "--data", SMALL_DATA)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert "base on val: accuracy" in prepared.stdout
    # the status line `autoresearch status` prints for a workspace on this base (arpost.write_status)
    fp16 = json.loads((ws / "base.json").read_text())["fingerprint"][:16]
    status = json.loads((pretrained.root / "cache" / "posttrain" / fp16 / "status-sft.json").read_text())
    assert re.fullmatch(rf"{re.escape(SMALL_DATA)}, 400 train rows, base accuracy \d\.\d{{3}} on 16 val items",
                        status["lines"][0]), status
    ckpt = tmp_path / "ckpt"
    trained = run_py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": "3", "AUTORESEARCH_CHECKPOINT": str(ckpt)}, "train.py")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert {p.name for p in ckpt.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert metrics_of(trained.stdout)["num_steps"] >= 1
    channel = tmp_path / "result.jsonl"
    evaluated = run_py(ws, {**env, "AUTORESEARCH_RESULT_FILE": str(channel)}, "prepare.py", "--evaluate", str(ckpt))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    m = metrics_of(evaluated.stdout)
    assert set(m) >= {"val_accuracy", "base_accuracy", "val_nll", "format_rate", "mean_completion_len"}
    reports = [json.loads(line) for line in channel.read_text().splitlines()]
    assert reports == [{"name": "val_accuracy", "value": m["val_accuracy"]}]
    # the evaluation never needs train.py: it reads the adapter as data; given the harness's answers directory
    # (a session with a judge), it writes the run's and the base's answers there for the controller's judge
    (ws / "train.py").unlink()
    answers = tmp_path / "answers"
    answers.mkdir()
    again = run_py(ws, {**env, "AUTORESEARCH_ANSWERS_DIR": str(answers)}, "prepare.py", "--evaluate", str(ckpt))
    assert again.returncode == 0 and metrics_of(again.stdout) == m, again.stderr
    run_answers, base_answers = ([json.loads(line) for line in (answers / name).read_text().splitlines()]
                                 for name in ("answers.jsonl", "base_answers.jsonl"))
    assert len(run_answers) == len(base_answers) == 16
    assert [a["id"] for a in run_answers] == [a["id"] for a in base_answers]
    assert [a["prompt"] for a in run_answers] == [a["prompt"] for a in base_answers]
    assert all(set(a) == {"id", "prompt", "answer"} and a["prompt"].strip() for a in run_answers + base_answers)
    # a checkpoint without an adapter is one line and exit 1
    (tmp_path / "empty").mkdir()
    refused = run_py(ws, env, "prepare.py", "--evaluate", str(tmp_path / "empty"))
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "neither an adapter" in refused.stderr


HEAD_CHECK = """
import json, torch, arbase, prepare, train
base = arbase.load_base(".")
model = base.model
adapters = train.inject_lora(model, train.LORA_TARGETS, 4, 8)
assert "lm_head" in adapters, sorted(adapters)  # the default targets adapt the unembedding
g = torch.Generator().manual_seed(0)
for a in adapters.values():  # B != 0, so that every adapter (lm_head's too) changes the loss
    a.lora_B.data = torch.randn(a.lora_B.shape, generator=g) * 0.05
params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
x, y, w = prepare.make_batch(prepare.load_prepared().rows("train"), list(range(6)), "cpu")
def loss_and_grads():
    loss = train.completion_loss(model, x, y, w)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), grads
full, g_full = loss_and_grads()
seen = []
model.lm_head.base.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[:-1].numel()))
model.lm_head = train.CompletionHead(model.lm_head)
picked, g_picked = loss_and_grads()
print(json.dumps({"full": full, "picked": picked, "positions": x.numel(), "unembedded": seen,
                  "completion": int(w.sum()),
                  "grad_diff": max(float((a - b).abs().max()) for a, b in zip(g_full, g_picked)),
                  "grad_max": max(float(a.abs().max()) for a in g_full)}))
"""


def test_training_unembeds_only_the_completion_positions(pretrained, tmp_path):
    """train.py's CompletionHead: the loss and every adapter's gradient are those of the full unembedding,
    which it computes only at the trained (completion) positions, a third of a math row."""
    ws = sft_workspace(pretrained, tmp_path / "ws")
    prepared = run_py(ws, pretrained.env, "prepare.py", "--data", SMALL_DATA)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    checked = run_py(ws, pretrained.env, "-c", HEAD_CHECK)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    r = json.loads(checked.stdout.strip().splitlines()[-1])
    assert r["picked"] == pytest.approx(r["full"], rel=1e-5)
    assert r["grad_diff"] <= 1e-5 * r["grad_max"] and r["grad_max"] > 0
    assert r["unembedded"] == [r["completion"]] and r["completion"] < r["positions"] / 2


def test_contamination_guard_refuses_eval_items_seen_in_train(pretrained, tmp_path):
    ws = sft_workspace(pretrained, tmp_path / "ws")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"Ava has {i} pens and gets 2 more. How many pens?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(1, 9)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    leaked = {"question": rows[0]["question"].upper(), "answer": rows[0]["answer"]}  # the same after normalizing
    fresh = {"question": "Ben has 30 cards and loses 4. How many cards?", "answer": "30 - 4 = 26\n#### 26"}
    (data / "val.jsonl").write_text(json.dumps(leaked) + "\n" + json.dumps(fresh) + "\n")
    (data / "test.jsonl").write_text(json.dumps(fresh) + "\n")
    prepared = run_py(ws, pretrained.env, "prepare.py", "--data", str(data))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    manifest_dir = next(p for p in (pretrained.root / "cache" / "posttrain").iterdir() if (p / "manifest.json").exists()
                        and json.loads((p / "manifest.json").read_text())["data"] == str(data))
    manifest = json.loads((manifest_dir / "manifest.json").read_text())
    assert manifest["splits"]["val"]["rows"] == 1 and manifest["splits"]["val"]["contaminated"] == 1
    items = (manifest_dir / "val.items.jsonl").read_text()
    assert "26" in items and len(items.splitlines()) == 1
