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
        "sys.modules['arkit'] = module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pyarrow', 'huggingface_hub') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# Evaluation from a checkpoint
# ---------------------------------------------------------------------------

def _config_only(tmp_path, files=("model.pt2",)):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model": {"width": 3}}))
    for name in files:
        (ckpt / name).write_bytes(b"")
    return ckpt


def test_checkpoint_problems_are_one_line(kit, tmp_path):
    with pytest.raises(kit.CheckpointError, match="no checkpoint at"):
        kit.read_checkpoint(str(tmp_path / "missing"))
    ckpt = _config_only(tmp_path, files=())
    with pytest.raises(kit.CheckpointError, match="not a complete checkpoint: no model.pt2"):
        kit.read_checkpoint(str(ckpt))
    (ckpt / "model.pt2").write_bytes(b"")
    assert kit.read_checkpoint(str(ckpt), required=("model",)) == {"model": {"width": 3}}
    (ckpt / "config.json").write_text("[]")
    with pytest.raises(kit.CheckpointError, match="not a checkpoint config: no `model` settings"):
        kit.read_checkpoint(str(ckpt), required=("model",))


# ---------------------------------------------------------------------------
# Exported programs, read as data
# ---------------------------------------------------------------------------


def _export(module, *inputs, path: Path) -> Path:
    import torch

    with torch.no_grad():
        program = torch.export.export(module, inputs).run_decompositions({})
    torch.export.save(program, path)
    return path


def _net():
    """A module that exercises what a model's program holds: parameters, a persistent and a non-persistent
    buffer, a lifted constant, lists of tensors (cat; split: one list result), an operator with several
    results (the CPU flash-attention kernel: output and log-sum-exp), keyword arguments and dtypes."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 8)
            self.register_buffer("scale", torch.arange(8.0))
            self.register_buffer("shift", torch.ones(8), persistent=False)
            self.mask = torch.tensor([True, False] * 4)  # a plain attribute: a lifted constant

        def forward(self, x, ids):
            h = self.lin(x) * self.scale + self.shift
            a, b = torch.split(h, [3, 5], dim=-1)
            h = torch.cat([b, a.relu()], dim=-1).masked_fill(self.mask, 0.0)
            q = h[None, None]
            h = h + torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, q, q, is_causal=True)[0][0, 0]
            return h.to(torch.float64).softmax(dim=-1), torch.nn.functional.one_hot(ids, 8).sum(dim=1)

    torch.manual_seed(0)
    return Net().eval()


def test_a_program_computes_what_torch_export_load_computes(kit, tmp_path):
    """Bit for bit, on a module with parameters, buffers, constants, multi-result operators and two outputs;
    parameters() are its parameters, and every intermediate value is released after its last reader."""
    import torch

    net = _net()
    x, ids = torch.randn(4, 6), torch.tensor([[1, 2], [3, 3], [0, 7], [5, 6]])
    path = _export(net, x, ids, path=tmp_path / "net.pt2")
    program = kit.load_program(str(path))
    ours = program(x, ids)
    theirs = torch.export.load(str(path)).module()(x, ids)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert ours[0].dtype == torch.float64 and torch.equal(ours[1], net(x, ids)[1])
    assert [spec.shape for spec in program.inputs] == [(4, 6), (4, 2)] and program.device == "cpu"
    assert program.num_params() == 6 * 8 + 8 and "aten.cat.default" in program.ops
    assert sorted(t.numel() for t in program.buffers()) == [8, 8, 8]  # scale, shift and the lifted mask
    assert not next(s for s in program.steps if "flash" in str(s.op)).single  # two results, bound apart
    produced = {n for s in program.steps for n in kit._flat(s.outputs)}
    released = [n for s in program.steps for n in s.release]
    kept = {r.name for r in program.outputs}
    assert sorted(released) == sorted(set(released)) and set(released) | kept >= produced
    with pytest.raises(kit.ProgramError, match=r"exported for torch.float32 \(4, 6\)"):
        program(torch.randn(5, 6), ids)  # the shapes are the export's
    moved = program.to("cpu")
    assert all(torch.equal(a, b) for a, b in zip(moved(x, ids), ours, strict=True))


def test_scalar_results_and_arguments_are_read_by_name(kit):
    """An operator's int result (a SymInt output, concrete in a fixed-shape program) is bound by name, and read
    back by the arguments that name it; an expression is never read."""
    assert kit._output({"as_sym_int": {"as_name": "n"}}, "out") == "n"
    assert kit._argument({"as_sym_int": {"as_name": "n"}}, "arg") == kit.Ref("n")
    assert kit._argument({"as_sym_ints": [{"as_int": 2}, {"as_name": "n"}]}, "arg") == [2, kit.Ref("n")]
    assert kit._argument({"as_sym_bool": {"as_bool": True}}, "arg") is True
    assert kit._resolve([2, kit.Ref("n")], {"n": 5}) == [2, 5]
    with pytest.raises(kit.ProgramError, match="is not read"):
        kit._argument({"as_sym_int": {"as_expr": {"expr_str": "s0"}}}, "arg")


def _rewrite(src: Path, dst: Path, edit) -> Path:
    import zipfile

    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/")[0]
        files = {name.split("/", 1)[1]: z.read(name) for name in z.namelist()}
    edit(files)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in files.items():
            z.writestr(f"{root}/{name}", data)
    return dst


def _json_edit(name, change):
    def edit(files):
        data = json.loads(files[name])
        change(data)
        files[name] = json.dumps(data).encode()
    return edit


def test_what_the_reader_refuses(kit, tmp_path):
    """Each thing that would need unpickling, evaluating or foreign code to read is refused with one line."""
    import torch

    x, ids = torch.randn(4, 6), torch.zeros(4, 2, dtype=torch.long)
    path = _export(_net(), x, ids, path=tmp_path / "net.pt2")
    weights, model = "data/weights/model_weights_config.json", "models/model.json"

    def first_weight(change):
        return _json_edit(weights, lambda d: change(next(iter(d["config"].values()))))

    def first_node(change):
        return _json_edit(model, lambda d: change(d["graph_module"]["graph"]["nodes"][0]))

    cases = {
        "pickled": (first_weight(lambda e: e.update(use_pickle=True)), "never unpickles"),
        "custom object": (first_weight(lambda e: e.update(path_name="custom_obj_0")), "custom objects are not read"),
        "symbolic size": (first_weight(lambda e: e["tensor_meta"]["sizes"].__setitem__(
            0, {"as_expr": {"expr_str": "s0", "hint": {"as_int": 8}}})), "symbolic"),
        "too few bytes": (first_weight(lambda e: e["tensor_meta"]["sizes"].__setitem__(0, {"as_int": 10**6})),
                          "out of bounds|bounds"),
        "python operator": (first_node(lambda n: n.update(target="builtins.eval")), "not a registered ATen operator"),
        "other namespace": (first_node(lambda n: n.update(target="torch.ops.prims.add.default")),
                            "not a registered ATen operator"),
        "in place": (first_node(lambda n: n.update(target="torch.ops.aten.add_.Tensor")), "writes to its arguments"),
        "graph argument": (first_node(lambda n: n["inputs"][0].update(arg={"as_graph": {"name": "g", "graph": {}}})),
                           "not read"),
        "undefined value": (first_node(lambda n: n["inputs"][0].update(arg={"as_tensor": {"name": "nowhere"}})),
                            "which no earlier step defines"),
        "state mutation": (_json_edit(model, lambda d: d["graph_module"]["signature"]["output_specs"].append(
            {"buffer_mutation": {"arg": {"name": "x"}, "buffer_name": "scale"}})), "it must be pure"),
        "range constraints": (_json_edit(model, lambda d: d.update(range_constraints={"s0": {"min_val": 2}})),
                              "symbolic"),
        "symbolic value": (_json_edit(model, lambda d: d["graph_module"]["graph"].update(
            sym_int_values={"n": {"as_expr": {"expr_str": "s0 + 1"}}})), "n is symbolic"),
    }
    for name, (edit, message) in cases.items():
        crafted = _rewrite(path, tmp_path / f"{name}.pt2", edit)
        with pytest.raises(kit.ProgramError, match=message) as e:
            kit.load_program(str(crafted))
        assert "\n" not in str(e.value), name
    concrete = _json_edit(model, lambda d: d["graph_module"]["graph"].update(sym_int_values={"n": {"as_int": 3}}))
    assert kit.load_program(str(_rewrite(path, tmp_path / "concrete.pt2", concrete)))  # a concrete int is data
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(kit.ProgramError, match="not a torch.export archive"):
        kit.load_program(str(tmp_path / "junk.pt2"))


def test_a_program_exported_with_dynamic_shapes_is_refused(kit, tmp_path):
    """Symbolic sizes would have to go through sympy's parser, which evaluates: only fixed shapes are read."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    batch = torch.export.Dim("batch")
    program = torch.export.export(Double(), (torch.randn(4, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "dynamic.pt2")
    with pytest.raises(kit.ProgramError, match="symbolic"):
        kit.load_program(str(tmp_path / "dynamic.pt2"))
