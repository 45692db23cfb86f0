"""The dpo target as a user runs it: prepare.py (data, rollouts, pairs), train.py (DPO) and the separate
evaluation, in a workspace laid out as `autoresearch init --target dpo` lays it out; and train.py's loss by
hand and its step-0 invariant (policy == reference: ln 2, margin 0) in a process of the workspace.

The base policy is made here as a user's chain makes it: a 2 s pretrain checkpoint of ours, a short sft run
on it (the real sft prepare.py and train.py), its adapter merged into a new base of ours (arbase.load_adapted)
and installed in the cache. That base answers some questions right and some wrong, so rollouts give pairs.
CPU only, offline.

Run: .venv/bin/python -m pytest tests/test_dpo.py -q
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import ASSETS, run_py, trained_pretrain
from test_arbase import PRETRAIN_ARGS, install_base, make_our_base, write_base_json

from harness.audit import audit_workspace

METRIC_LINE = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)
NAMES = ("Ava", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Oda")
THINGS = ("pens", "cards", "shells", "coins", "stamps", "books", "cups", "hats")
ROLLOUT = ("--k", "4", "--questions", "24")  # small: 96 train samples and 64 held-out ones
KIT = ("arkit.py", "arbase.py", "armath.py", "arpost.py", "arsample.py", "arpairs.py")
SFT_SECONDS = "8"

MERGE = """
import sys, torch, arbase
base = arbase.load_base(".")
model = arbase.load_adapted(base, sys.argv[1])
torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""


def metrics_of(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in METRIC_LINE.findall(text)}


def workspace(target: str, base_dir: Path, info: dict, ws: Path, kit=KIT) -> Path:
    """A workspace by hand, as init writes it: the target's and the kit's files, base.json and base_model.py."""
    ws.mkdir(parents=True)
    for name in ("prepare.py", "train.py"):
        shutil.copy(ASSETS / target / name, ws / name)
    for name in kit:
        shutil.copy(ASSETS / name, ws / name)
    shutil.copy(base_dir / "base_model.py", ws / "base_model.py")
    (ws / "base.json").write_text(json.dumps(info))
    return ws


def two_answer_data(directory: Path) -> str:
    """Sums whose answer is 7 or 8, answered as `#### N`: a base that has learned only the format is right
    about half the time, so its rollouts hold both right and wrong answers after a few seconds of SFT."""
    rows = [{"question": f"{n} has {a} {o} and gets {s - a} more. How many {o}?", "answer": f"#### {s}"}
            for n in NAMES for o in THINGS for s in (7, 8) for a in (2, 5)]
    splits = {"val": rows[0::37], "test": rows[1::37]}
    held = {r["question"] for part in splits.values() for r in part}
    splits["train"] = [r for r in rows if r["question"] not in held]
    directory.mkdir(parents=True)
    for name, part in splits.items():
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return str(directory)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """(env, cache, base_dir, info): the SFT'd base of ours, installed in the test's cache."""
    t = trained_pretrain(tmp_path_factory.mktemp("dpo"), PRETRAIN_ARGS)
    env = {**t.env, "OMP_NUM_THREADS": "1"}
    cache = t.root / "cache"
    pre_dir = make_our_base(t.root / "pre-base", t.ckpt, t.data_dir / "tokenizer")
    sft = workspace("sft", pre_dir, install_base(pre_dir, cache), t.root / "sft", kit=KIT[:4])
    data = two_answer_data(t.root / "data")
    done = run_py(sft, env, "prepare.py", "--data", data)
    assert done.returncode == 0, done.stdout + done.stderr
    ckpt = t.root / "sft-ckpt"
    done = run_py(sft, {**env, "AUTORESEARCH_TIME_BUDGET": SFT_SECONDS, "AUTORESEARCH_CHECKPOINT": str(ckpt)},
                  "train.py")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    base_dir = t.root / "sft-base"
    shutil.copytree(pre_dir, base_dir)
    (base_dir / "base.json").unlink()
    done = run_py(sft, env, "-c", MERGE, str(ckpt), str(base_dir / "model.pt"))
    assert done.returncode == 0, done.stdout + done.stderr
    write_base_json(base_dir, "ours", name="tiny-sft", origin={"type": "test-sft", "path": str(ckpt)})
    return env, cache, base_dir, install_base(base_dir, cache), data


@pytest.fixture(scope="module")
def prepared(policy, tmp_path_factory):
    """A dpo workspace on the SFT'd base, prepared once: (ws, env, the prepare output)."""
    env, _, base_dir, info, data = policy
    ws = workspace("dpo", base_dir, info, tmp_path_factory.mktemp("dpo-ws") / "ws")
    done = run_py(ws, env, "prepare.py", "--data", data, *ROLLOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return ws, env, done.stdout, data


def pair_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("posttrain/*/dpo-pairs-*") if (p / "manifest.json").exists())


def test_prepare_samples_pairs_once_and_writes_status(policy, prepared):
    env, cache, _, info, data = policy
    ws, _, out, _ = prepared
    assert "rollouts train" in out and "pairs: " in out
    [directory] = pair_dirs(cache)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["rollouts"]["k"] == 4 and manifest["rollouts"]["questions"] == 24
    assert manifest["base_fingerprint"] == info["fingerprint"]
    counts = manifest["counts"]["train"]
    assert counts["samples"] == 96 and counts["pairs"] > 0, counts
    assert 0 < counts["correct_samples"] < counts["samples"], counts  # the SFT'd base is right sometimes
    train = [json.loads(line) for line in (directory / "train.pairs.jsonl").read_text().splitlines()]
    assert len(train) == counts["pairs"]
    for p in train:
        assert p["pair_type"] in ("correct_vs_incorrect", "coherence")
        assert p["chosen"]["finished"] and p["chosen"]["correct"]
        assert p["pair_type"] != "correct_vs_incorrect" or not p["rejected"]["correct"]
    status = json.loads((cache / "posttrain" / info["fingerprint"][:16] / "status-dpo.json").read_text())
    assert "train rows" in status["lines"][0]  # arpost's data line first
    assert any(line.startswith(f"pairs: {counts['pairs']:,} train (correct_vs_incorrect ") for line in status["lines"])
    # a second prepare finds the pair set (no sampling); another setting samples a new one
    again = run_py(ws, env, "prepare.py", "--data", data, *ROLLOUT)
    assert again.returncode == 0 and "already sampled" in again.stdout and "rollouts train" not in again.stdout
    assert pair_dirs(cache) == [directory]
    other = run_py(ws, env, "prepare.py", "--data", data, "--k", "2", "--questions", "8")
    assert other.returncode == 0 and "rollouts train" in other.stdout, other.stdout + other.stderr
    assert len(pair_dirs(cache)) == 2
    again = run_py(ws, env, "prepare.py", "--data", data, *ROLLOUT)  # back to the session's settings
    assert again.returncode == 0 and "already sampled" in again.stdout


def test_pair_cache_key_names_the_base_data_and_settings(checks):
    assert checks["keys"] == 5 and checks["key_again"]


def test_no_pairs_is_one_line_saying_why(policy, tmp_path):
    """The 2 s pretrain base answers nothing right: prepare fails with one line and a way out."""
    env, cache, base_dir, _, data = policy
    pre_dir = base_dir.parent / "pre-base"
    ws = workspace("dpo", pre_dir, install_base(pre_dir, cache), tmp_path / "ws")
    done = run_py(ws, env, "prepare.py", "--data", data, "--k", "2", "--questions", "4")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: no preference pairs from 8 rollouts of 4 questions: ")
    assert "answers no question right" in done.stderr and "--temperature" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


LOSS_BY_HAND = """
pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -4.0])
rc, rr = torch.tensor([-4.0, -9.0]), torch.tensor([-4.5, -6.0])
loss, stats = train.dpo_loss(pc, pr, rc, rr, 0.1)
z = [0.1 * ((a - b) - (c - d)) for a, b, c, d in zip(pc.tolist(), rc.tolist(), pr.tolist(), rr.tolist())]
want = sum(-math.log(1 / (1 + math.exp(-v))) for v in z) / 2
by_hand = {"loss": loss.item(), "want": want, "stats": stats}
"""


@pytest.fixture(scope="module")
def checks(prepared):
    """One process of the workspace runs both scripts below (one torch start-up instead of two)."""
    ws, env, _, _ = prepared
    done = run_py(ws, env, "-c", "import json, math, torch, arbase, arsample, prepare, train\n" + LOSS_BY_HAND + INVARIANT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dpo_loss_by_hand(checks):
    """train.dpo_loss on fixed sequence log-probs: the sigmoid formula on summed log-ratios, beta 0.1."""
    r = checks["by_hand"]
    assert r["loss"] == pytest.approx(r["want"], rel=1e-6)
    # logratios: chosen (1, -1), rejected (-0.5, 2); rewards are beta times them
    assert r["stats"]["chosen_reward"] == pytest.approx(0.0)
    assert r["stats"]["rejected_reward"] == pytest.approx(0.075)
    assert r["stats"]["margin"] == pytest.approx(-0.075)
    assert r["stats"]["accuracy"] == 0.5


INVARIANT = """
base = arbase.load_base(".")
model = base.model
adapters = train.inject_lora(model, train.LORA_TARGETS, 4, 8)
model.lm_head = train.CompletionHead(model.lm_head)
pairs = prepare.load_pairs("train")
params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
opt = torch.optim.AdamW(params, lr=1e-2)
reference = train.Reference(model, adapters)
idx = list(range(min(4, len(pairs))))
first, _, stats0, x, w = train.dpo_step_loss(model, reference, pairs, idx, "cpu")
# the reference (adapters off, completion positions only) equals the kit's plain sum on a fresh base
fresh = arbase.load_base(".").model
xb, yb, wb = pairs.batch(idx, "cpu")
by_kit = arsample.sequence_logprobs(fresh, xb, yb, wb)
ref0 = torch.cat([reference.cache[i] for i in idx])
# sums, not means: row 0 (pair 0's chosen completion) by a loop over its completion tokens
logp = torch.log_softmax(arbase.logits_of(fresh, xb[:1]).float(), -1)[0]
loop = sum(float(logp[t, yb[0, t]]) for t in range(xb.size(1)) if wb[0, t] > 0)
with train.adapters_off(adapters):
    ours = float(train.completion_logprobs(model, xb[:1], yb[:1], wb[:1])[0])
# the pair cache's key: another base, another setting, other data -> another pair set
s0 = prepare.RolloutSettings()
keys = {prepare.pairs_key("a" * 64, "d", s0), prepare.pairs_key("b" * 64, "d", s0),
        prepare.pairs_key("a" * 64, "e", s0), prepare.pairs_key("a" * 64, "d", prepare.RolloutSettings(k=4)),
        prepare.pairs_key("a" * 64, "d", prepare.RolloutSettings(temperature=0.7))}
for _ in range(3):
    loss, _, stats, _, _ = train.dpo_step_loss(model, reference, pairs, idx, "cpu")
    opt.zero_grad(); loss.backward(); opt.step()
reference.cache.clear()  # computed afresh: it must still be the base
after, _, stats1, _, _ = train.dpo_step_loss(model, reference, pairs, idx, "cpu")
ref1 = torch.cat([reference.cache[i] for i in idx])
print(json.dumps({"first": first.item(), "margin0": stats0["margin"], "acc0": stats0["accuracy"],
                  "after": after.item(), "margin1": stats1["margin"],
                  "ref_vs_kit": float((ref0 - by_kit).abs().max()), "ref_drift": float((ref1 - ref0).abs().max()),
                  "completion_tokens": float(wb.sum()), "by_hand": by_hand, "loop": loop, "ours": ours,
                  "keys": len(keys), "key_again": prepare.pairs_key("a" * 64, "d", s0) in keys}))
"""


def test_first_step_is_ln2_and_the_reference_stays_the_base(checks):
    """At step 0 the adapters are zero, so policy == reference: loss ln 2, margin 0, accuracy 0 (strict >).
    After updates the reference computed afresh is still the base's log-probs (adapters switched off), so
    the loss moves off ln 2; a reference that were the adapted policy would pin it there."""
    r = checks
    assert r["first"] == pytest.approx(math.log(2), abs=1e-6)
    assert r["margin0"] == pytest.approx(0.0, abs=1e-7) and r["acc0"] == 0.0
    assert r["ref_vs_kit"] <= 1e-4 and r["completion_tokens"] > 0  # the reference is the base, summed
    assert r["ref_drift"] <= 1e-5, r
    assert r["ours"] == pytest.approx(r["loop"], abs=1e-4) and r["loop"] < 0
    assert abs(r["after"] - math.log(2)) > 1e-3 and abs(r["margin1"]) > 1e-4, r


def test_prepare_train_evaluate(prepared, tmp_path):
    """train.py runs DPO on the pairs and saves a PEFT adapter, with the diagnostics; the evaluation reports
    val_accuracy through the channel only, and heldout_pref_accuracy among its METRIC lines; it works with
    train.py deleted."""
    ws, env, _, _ = prepared
    ckpt = tmp_path / "ckpt"
    trained = run_py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": "3", "AUTORESEARCH_CHECKPOINT": str(ckpt)}, "train.py")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert {p.name for p in ckpt.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    t = metrics_of(trained.stdout)
    assert set(t) >= {"first_loss", "first_margin", "train_loss", "pref_accuracy", "margin", "chosen_reward",
                      "rejected_reward", "skipped_steps", "num_steps", "num_pairs", "train_nll"}
    assert t["first_loss"] == pytest.approx(math.log(2), abs=1e-5) and t["skipped_steps"] == 0
    assert t["num_steps"] >= 2
    channel = tmp_path / "result.jsonl"
    run_env = {**env, "AUTORESEARCH_RESULT_FILE": str(channel)}
    (ws / "train.py").rename(tmp_path / "train.py")  # the evaluation never needs it
    try:
        evaluated = run_py(ws, run_env, "prepare.py", "--evaluate", str(ckpt))
    finally:
        (tmp_path / "train.py").rename(ws / "train.py")
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    m = metrics_of(evaluated.stdout)
    assert set(m) >= {"val_accuracy", "base_accuracy", "heldout_pref_accuracy", "heldout_pref_margin"}, m
    assert 0.0 <= m["heldout_pref_accuracy"] <= 1.0
    reports = [json.loads(line) for line in channel.read_text().splitlines()]
    assert [r["name"] for r in reports] == ["val_accuracy"]
    assert reports[0]["value"] == pytest.approx(m["val_accuracy"], abs=1e-9)


SKIP_NAN = """
import sys, torch, train
real = train.dpo_step_loss
calls = []
def every_other_nan(*args):
    loss, nll, stats, x, w = real(*args)
    calls.append(1)
    return (loss * float("nan") if len(calls) % 2 == 0 else loss), nll, stats, x, w
train.dpo_step_loss = every_other_nan
train.main()
"""


def test_a_non_finite_loss_skips_the_step_and_is_counted(prepared, tmp_path):
    ws, env, _, _ = prepared
    ckpt = tmp_path / "ckpt"
    done = run_py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": "2", "AUTORESEARCH_CHECKPOINT": str(ckpt)}, "-c", SKIP_NAN)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    m = metrics_of(done.stdout)
    assert m["skipped_steps"] == m["num_steps"] // 2 and m["skipped_steps"] >= 1, m
    assert math.isfinite(m["train_loss"]) and (ckpt / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("extra, rules", [
    ("", []),  # as shipped, every line audited as added
    ('\n\ndef extra():\n    return load_pairs("val")\n', ["validation-data"]),  # the held-out pairs
    ('\n\ndef extra():\n    return load_pairs("train")\n', []),
])
def test_the_audit_passes_the_shipped_train_py_and_catches_the_held_out_pairs(tmp_path, extra, rules):
    (tmp_path / "base").mkdir()
    shutil.copy(ASSETS / "pretrain" / "train.py", tmp_path / "base" / "base_model.py")
    fixed = workspace("dpo", tmp_path / "base", {}, tmp_path / "ws")
    kit = ("prepare.py", *KIT)
    train = (ASSETS / "dpo" / "train.py").read_text(encoding="utf-8") + extra
    (fixed / "train.py").write_text(train, encoding="utf-8")
    patch = "--- /dev/null\n+++ b/train.py\n" + f"@@ -0,0 +1,{len(train.splitlines())} @@\n" + "".join(
        f"+{line}\n" for line in train.splitlines())
    assert [f.rule for f in audit_workspace(patch, fixed, kit, import_time=True)] == rules
