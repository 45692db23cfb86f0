"""Tests for the fixed kit, assets/arkit.py: every function a target's fixed side takes from it.

Run: .venv/bin/python -m pytest tests/test_kit.py -q   (CPU only, no network, ~3 s)

The kit is loaded by path under a fresh name per test (tests/conftest.py load_by_path), never by
`import arkit`: its result channel is read at import, and each test controls what that import sees.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ASSETS, load_by_path

from harness.integrity import read_results

KIT = ASSETS / "arkit.py"
_fresh = itertools.count()


def fresh_kit(monkeypatch, result_file: Path | None = None):
    """A new copy of the kit, imported with $AUTORESEARCH_RESULT_FILE set to result_file (or unset)."""
    if result_file is None:
        monkeypatch.delenv("AUTORESEARCH_RESULT_FILE", raising=False)
    else:
        monkeypatch.setenv("AUTORESEARCH_RESULT_FILE", str(result_file))
    return load_by_path(KIT, f"arkit_under_test_{next(_fresh)}")


@pytest.fixture
def kit(monkeypatch):
    return fresh_kit(monkeypatch)


# ---------------------------------------------------------------------------
# The result channel
# ---------------------------------------------------------------------------


def test_report_round_trips_through_the_harness_reader(monkeypatch, tmp_path):
    channel = tmp_path / "result.jsonl"
    kit = fresh_kit(monkeypatch, channel)
    kit.report("val_bpb", 1.2345678901234)
    kit.report("heldout_bpb", 2)  # an int is written as a float
    assert read_results(channel) == ([("val_bpb", 1.2345678901234), ("heldout_bpb", 2.0)], [])
    assert [json.loads(line) for line in channel.read_text().splitlines()][1] == {"name": "heldout_bpb", "value": 2.0}


def test_the_channel_is_taken_from_the_environment_once_at_import(monkeypatch, tmp_path):
    """The agent's train.py runs after the fixed side imported the kit, in the same process: it does not find
    the channel in os.environ, and setting the variable afterwards redirects nothing."""
    channel = tmp_path / "result.jsonl"
    kit = fresh_kit(monkeypatch, channel)
    assert "AUTORESEARCH_RESULT_FILE" not in os.environ
    elsewhere = tmp_path / "elsewhere.jsonl"
    monkeypatch.setenv("AUTORESEARCH_RESULT_FILE", str(elsewhere))
    kit.report("val_bpb", 0.5)
    assert read_results(channel)[0] == [("val_bpb", 0.5)] and not elsewhere.exists()


def test_without_a_channel_report_writes_nothing(monkeypatch, tmp_path):
    kit = fresh_kit(monkeypatch, None)
    monkeypatch.chdir(tmp_path)
    kit.report("val_bpb", 0.5)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Progress output
# ---------------------------------------------------------------------------


def test_progress_in_a_log_prints_whole_lines(kit, capsys):
    kit.echo("Data:", 3, "files")
    bar = kit.Progress("Tokenizer: reading", 4, " docs")
    for _ in range(4):
        bar.update()
    bar.close()
    out = capsys.readouterr().out
    assert out.startswith("Data: 3 files\n") and "\r" not in out  # not a terminal: no redraws
    assert out.splitlines()[-1].startswith("Tokenizer: reading [" + "#" * 24 + "] 100.0% 4/4 docs")


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def test_atomic_write_replaces_the_whole_file(kit, tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    kit.atomic_write_text(str(path), "new\nline\r\n")
    kit.atomic_write_bytes(str(tmp_path / "b.bin"), b"\x00\xff")
    assert path.read_bytes() == b"new\nline\r\n" and (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "manifest.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(kit, tmp_path, monkeypatch):
    path = tmp_path / "shard.parquet"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), kit.atomic_output(str(path)) as tmp:
        with open(tmp, "w") as f:
            f.write("half a fi")
        assert path.read_text() == "old" and Path(tmp).parent == tmp_path  # beside it: one rename
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]

    def no_rename(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(kit.os, "replace", no_rename)
    with pytest.raises(OSError, match="read-only"):
        kit.atomic_write_text(str(path), "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]
    with pytest.raises(OSError):  # a new file that fails does not appear at all
        kit.atomic_write_bytes(str(tmp_path / "new.bin"), b"x")
    assert not (tmp_path / "new.bin").exists()


# ---------------------------------------------------------------------------
# Hash splits
# ---------------------------------------------------------------------------


def test_band_is_the_same_on_every_machine(kit):
    # int(sha256(key)[:8], 16) % 100, written out: a change here would move every split of every dataset
    assert [kit.band(k) for k in ("a", "Lib/os.py", "")] == [10, 47, 10]
    assert kit.band("doc", salt="heldout") == int(kit.sha256_hex(b"heldout\0doc")[:8], 16) % 100


def test_split_of_is_deterministic_disjoint_and_proportional(kit):
    keys = [f"Lib/module_{i}.py" for i in range(20_000)]
    shares = {"val": 5, "heldout": 5}
    first = [kit.split_of(k, shares) for k in keys]
    assert first == [kit.split_of(k, dict(shares)) for k in keys]  # deterministic
    counts = collections.Counter(first)
    assert set(counts) == {"train", "val", "heldout"}  # one split per key: disjoint by construction
    assert abs(counts["val"] / len(keys) - 0.05) < 0.01 and abs(counts["heldout"] / len(keys) - 0.05) < 0.01
    # A salted draw is independent of the unsalted one: it halves the val keys, not some other subset.
    val = [k for k, s in zip(keys, first, strict=True) if s == "val"]
    halves = collections.Counter(kit.split_of(k, {"heldout": 50}, rest="val", salt="heldout") for k in val)
    assert abs(halves["heldout"] / len(val) - 0.5) < 0.08
    assert kit.split_of("x", {"val": 100}) == "val" and kit.split_of("x", {}) == "train"
    with pytest.raises(ValueError, match="at most 100"):
        kit.split_of("x", {"val": 60, "heldout": 50})


# ---------------------------------------------------------------------------
# Manifests and fingerprints
# ---------------------------------------------------------------------------


def test_fingerprint_follows_the_files(kit, tmp_path):
    a, b = tmp_path / "train-0.parquet", tmp_path / "val-0.parquet"
    a.write_bytes(b"rows of text")
    b.write_bytes(b"validation rows")
    digest = kit.file_digest([str(a), str(b)])
    assert digest == kit.file_digest([str(a), str(b)]) and len(kit.fingerprint(digest, "vocab=8192")) == 16
    fp = kit.fingerprint(digest, "vocab=8192")
    b.write_bytes(b"validation rowz")  # one byte of one file
    assert kit.file_digest([str(a), str(b)]) != digest
    assert kit.fingerprint(kit.file_digest([str(a), str(b)]), "vocab=8192") != fp
    b.write_bytes(b"validation rows")
    assert kit.file_digest([str(a), str(b)]) == digest and kit.fingerprint(digest, "vocab=4096") != fp
    renamed = tmp_path / "val-1.parquet"
    b.rename(renamed)
    assert kit.file_digest([str(a), str(renamed)]) != digest  # names count, not only bytes


def test_manifest_round_trip_and_incomplete_preparations(kit, tmp_path):
    assert kit.read_manifest(str(tmp_path)) is None  # never prepared
    manifest = {"format": 2, "fingerprint": "0123456789abcdef", "train_files": ["train_00000.parquet"]}
    kit.write_manifest(str(tmp_path), manifest)
    assert kit.read_manifest(str(tmp_path)) == manifest and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    (tmp_path / "manifest.json").write_text('{"format": 2, "fingerpr')  # torn
    assert kit.read_manifest(str(tmp_path)) is None
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert kit.read_manifest(str(tmp_path)) is None


# ---------------------------------------------------------------------------
# The Hub: explicit, with retries, and a clear error offline
# ---------------------------------------------------------------------------


def test_offline_download_fails_at_once_with_the_way_out(kit, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set and the file not already here: no network call, no retry, no wait, one message."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    waits = []
    t0 = time.time()
    with pytest.raises(kit.KitError) as e:
        kit.hub_download("someone/some-data", "train-0.parquet", "0" * 40, str(tmp_path), sleep=waits.append,
                         retry_hint="use `--dataset local` offline")
    assert time.time() - t0 < 5 and waits == []
    message = str(e.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and message.endswith("use `--dataset local` offline")


def test_a_dropped_connection_is_retried_visibly_then_reported(kit, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def flaky(repo_id, filename, **kwargs):
        calls.append(filename)
        if len(calls) < 3:
            raise ConnectionError("Connection reset by peer")
        return os.path.join(kwargs["local_dir"], filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", flaky)
    waits = []
    path = kit.hub_download("someone/some-data", "train-0.parquet", "0" * 40, str(tmp_path), sleep=waits.append)
    assert path == str(tmp_path / "train-0.parquet") and len(calls) == 3 and waits == [2, 4]
    assert "attempt 1/4 for train-0.parquet failed (ConnectionError); retrying in 2s" in capsys.readouterr().out

    def down(repo_id, filename, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    waits.clear()
    with pytest.raises(kit.KitError, match=r"failed 4 times \(ConnectionError: Name or service not known\); run again"):
        kit.hub_download("someone/some-data", "train-0.parquet", "0" * 40, str(tmp_path), sleep=waits.append)
    assert waits == [2, 4, 8]


def test_an_unreachable_hub_names_the_repo_and_the_alternative(kit, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", offline)
    with pytest.raises(kit.KitError) as e:
        kit.hub_revision("someone/some-data", offline_hint="Use --dataset local.")
    assert str(e.value) == ("cannot reach the Hugging Face Hub for dataset someone/some-data (ConnectionError: "
                            "Name or service not known). Use --dataset local.")


def test_importing_the_kit_imports_no_heavy_library():
    """A target that does not use torch (or the Hub) does not pay for it: the kit imports them when used."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('arkit', {str(KIT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pyarrow', 'huggingface_hub') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# Evaluation from a checkpoint
# ---------------------------------------------------------------------------

SAVED_TRAIN_PY = '''
import torch
from prepare import WIDTH

class Net(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = torch.nn.Linear(WIDTH, width)

if __name__ == "__main__":
    raise SystemExit("training ran: the checkpoint code must be imported, not run")
'''


def _checkpoint(tmp_path, code=SAVED_TRAIN_PY):
    import torch

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "train.py").write_text(code)
    (ckpt / "config.json").write_text(json.dumps({"model": {"width": 3}}))
    torch.manual_seed(0)
    weights = {"lin.weight": torch.randn(3, 4), "lin.bias": torch.randn(3)}
    torch.save(weights, ckpt / "model.pt")
    return ckpt, weights


def test_checkpoint_model_round_trip(kit, tmp_path):
    import types

    import torch

    ckpt, weights = _checkpoint(tmp_path)
    fixed = types.ModuleType("fixed_side")
    fixed.WIDTH = 4
    config = kit.read_checkpoint(str(ckpt), required=("model",))
    model, module = kit.load_checkpoint_model(str(ckpt), lambda m: m.Net(**config["model"]), aliases={"prepare": fixed})
    assert torch.equal(model.lin.weight, weights["lin.weight"]) and torch.equal(model.lin.bias, weights["lin.bias"])
    assert module.WIDTH == 4 and module.__name__ == "_autoresearch_checkpoint_code"
    assert "prepare" not in sys.modules and module.__name__ not in sys.modules  # nothing left registered


def test_checkpoint_problems_are_one_line(kit, tmp_path):
    import torch

    with pytest.raises(kit.CheckpointError, match="no checkpoint at"):
        kit.read_checkpoint(str(tmp_path / "missing"))
    ckpt, _ = _checkpoint(tmp_path)
    (ckpt / "model.pt").unlink()
    with pytest.raises(kit.CheckpointError, match="not a complete checkpoint: no model.pt"):
        kit.read_checkpoint(str(ckpt))
    torch.save({"lin.weight": torch.zeros(3, 4)}, ckpt / "model.pt")  # a key short
    (ckpt / "config.json").write_text("[]")
    with pytest.raises(kit.CheckpointError, match="not a checkpoint config: no `model` settings"):
        kit.read_checkpoint(str(ckpt), required=("model",))
    fixed = {"prepare": type(sys)("fixed_side")}
    fixed["prepare"].WIDTH = 4
    with pytest.raises(kit.CheckpointError, match=r"cannot rebuild the model with .*train.py: RuntimeError") as e:
        kit.load_checkpoint_model(str(ckpt), lambda m: m.Net(3), aliases=fixed)  # strict: missing lin.bias
    assert "\n" not in str(e.value)
    (ckpt / "train.py").write_text("raise SystemExit('the agent broke this')\n")
    with pytest.raises(kit.CheckpointError, match="SystemExit: the agent broke this"):
        kit.load_checkpoint_model(str(ckpt), lambda m: m.Net(3))


def test_halve_batch_on_oom(kit, capsys):
    import torch

    tried = []

    def evaluate(rows):
        tried.append(rows)
        if rows > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 1.5

    assert kit.halve_batch_on_oom(evaluate, 32, label="heldout") == 1.5 and tried == [32, 16, 8, 4]
    assert "heldout: out of GPU memory; again with batches of 4 rows" in capsys.readouterr().out
    with pytest.raises(torch.cuda.OutOfMemoryError):
        kit.halve_batch_on_oom(lambda rows: evaluate(rows * 100), 2)
