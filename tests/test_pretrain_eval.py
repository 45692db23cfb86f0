"""The pretrain metric from a process that never runs a line of train.py: `prepare.py --evaluate`.

train.py trains and writes its checkpoint (model.pt2: the model exported by torch.export, read by the kit as
data); the fixed evaluation scores it in a process of its own. These tests run the real files as a user
does, on a small offline corpus: the evaluation gives the number the in-process code gave on the same weights,
for any batch, takes its data only from the prepared cache, refuses a model that reads future tokens, runs
no code from a crafted model.pt2, and works with no train.py on disk at all.

Run: .venv/bin/python -m pytest tests/test_pretrain_eval.py -q   (CPU only, no network, ~40 s on 2 cores)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
from conftest import (
    kit_module,
    pretrain_prepare,
    pretrain_train,
    run_py,
    trained_pretrain,
)

prepare = pretrain_prepare()
train = pretrain_train()
kit = kit_module()

# The whole stdlib corpus (a few seconds): its 1,300 val documents outnumber the loader's 1,000-document buffer,
# so the 16 rows scored differ. A slice of it holds a few dozen, packed into one row repeated 16 times, on
# which any batch gives the same value.
PREPARE_ARGS = ("--dataset", "local", "--vocab-size", "512", "--eval-tokens", "4096")
METRIC_LINE = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace, small local data in a private cache, and the checkpoint of a 2 s run."""
    t = trained_pretrain(tmp_path_factory.mktemp("eval"), PREPARE_ARGS)
    t.data = prepare._prepared_from_manifest(str(t.data_dir), json.loads((t.data_dir / "manifest.json").read_text()))
    return t


@pytest.fixture(scope="module")
def honest(trained):
    """The evaluation of the run's own checkpoint, once: (process, val_bpb, channel, time before, time after)."""
    t0 = time.time()
    result, value, reports = evaluate(trained, trained.ckpt)
    assert result.returncode == 0, result.stdout + result.stderr
    return SimpleNamespace(result=result, value=value, reports=reports, t0=t0, t1=time.time())


def evaluate(trained, checkpoint, cwd=None, **env):
    """`python prepare.py --evaluate CHECKPOINT` as the harness runs it: (process, val_bpb or None, channel)."""
    channel = Path(checkpoint).parent / f"{Path(checkpoint).name}.result.jsonl"
    channel.unlink(missing_ok=True)
    result = run_py(cwd or trained.ws, {**trained.env, "AUTORESEARCH_RESULT_FILE": str(channel), **env},
                    "prepare.py", "--evaluate", str(checkpoint))
    metrics = dict(METRIC_LINE.findall(result.stdout))
    reports = [json.loads(line) for line in channel.read_text().splitlines()] if channel.exists() else []
    return result, (float(metrics["val_bpb"]) if "val_bpb" in metrics else None), reports


def refused(result) -> str:
    """The one-line error of an evaluation that refused, having reported nothing."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "METRIC" not in result.stdout and "Traceback" not in result.stderr
    return result.stderr


def copy_checkpoint(trained, where: Path, **config_changes) -> Path:
    shutil.copytree(trained.ckpt, where)
    config = json.loads((where / "config.json").read_text())
    config.update(config_changes)
    (where / "config.json").write_text(json.dumps(config))
    return where


def model_from_state_dict(ckpt: Path) -> nn.Module:
    """The trained model as the old code evaluated it: train.py's GPT with the checkpoint's state dict."""
    config = json.loads((ckpt / "config.json").read_text())
    model = train.GPT(train.GPTConfig(**config["model"]), train.SDPAAttention())
    model.load_state_dict(torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def save_program(module: nn.Module, batch: int, ckpt: Path, fingerprint: str) -> Path:
    """Export `module` as train.py does (torch.export, ATen IR) into a checkpoint of its own."""
    ckpt.mkdir(parents=True)
    example = torch.zeros(batch, prepare.MAX_SEQ_LEN, dtype=torch.long)
    with torch.no_grad():
        program = torch.export.export(module, (example,)).run_decompositions({})
    torch.export.save(program, ckpt / "model.pt2")
    (ckpt / "config.json").write_text(json.dumps({"model": {}, "fingerprint": fingerprint}))
    return ckpt


# ---------------------------------------------------------------------------
# The value
# ---------------------------------------------------------------------------


def test_the_evaluation_gives_the_in_process_value_for_two_batch_sizes(trained, honest, tmp_path):
    """val_bpb from the separate process equals what the old in-process code computed on the same weights (the
    model built from train.py's module, scored by _bpb_on_split), bit for bit at the same batch, and the batch
    does not move it: train.py's export (8 rows) and a re-export of the same weights at 3 rows, whose last
    batch is padded (16 rows to score) and scored on its real rows only."""
    tokenizer = prepare.Tokenizer(prepare.load_encoding(trained.data.tokenizer_dir), trained.data)
    model = model_from_state_dict(trained.ckpt)
    config = json.loads((trained.ckpt / "config.json").read_text())
    assert config["eval_batch"] == 8 and trained.data.eval_tokens // prepare.MAX_SEQ_LEN == 16

    three = tmp_path / "three"
    shutil.copytree(trained.ckpt, three)
    torch.export.save(train.export_model(model_from_state_dict(trained.ckpt), 3, torch.device("cpu"), False),
                      three / "model.pt2")
    values = {}
    for batch, ckpt in ((8, trained.ckpt), (3, three)):
        result, value, reports = (honest.result, honest.value, honest.reports) if batch == 8 else evaluate(trained, ckpt)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"batches of {batch} x {prepare.MAX_SEQ_LEN} tokens" in result.stdout
        old = prepare._bpb_on_split(model, tokenizer, batch, split="val")
        assert value == pytest.approx(old, rel=1e-9, abs=0), (batch, value, old)  # the printed 10 digits
        assert reports == [{"name": "val_bpb", "value": old}]  # the channel: the same float, exactly
        values[batch] = value
    assert values[3] == pytest.approx(values[8], rel=1e-6)
    assert 0.5 < values[8] < 9  # a 2 s run on a loaded machine may not beat uniform (~4.5 here), but not absurd


def test_the_evaluation_stamps_its_start_and_prints_the_summary(honest):
    lines = honest.result.stdout.splitlines()
    stamp = re.fullmatch(r"eval_started: (\d+\.\d{3})", lines[0])
    assert stamp and honest.t0 - 0.01 <= float(stamp.group(1)) <= honest.t1, lines[0]
    block = lines[lines.index("---") + 1 :]
    assert block[0].startswith("val_bpb:") and float(block[0].split(":")[1]) == pytest.approx(honest.value, abs=1e-6)
    assert re.search(r"^causality: 64 rows cut at random positions", honest.result.stdout, re.M)


# ---------------------------------------------------------------------------
# The data: the session's prepared cache, never a path from the checkpoint
# ---------------------------------------------------------------------------


def test_data_comes_from_the_cache_never_from_the_checkpoint(trained, honest, tmp_path):
    """A run writes an easy split of its own (every val document the same short text, with its own tokenizer
    and manifest) and points config.json at it. Naming its fingerprint is refused (it is not the session's);
    naming the real fingerprint with the path to the fake data changes nothing: the path is never read."""
    fake = tmp_path / "fake" / "local"
    shutil.copytree(trained.data_dir, fake)
    for name in trained.data.val_files:
        pq.write_table(pa.table({"text": ["a a a a a a a a"] * 500}), fake / os.path.basename(name))
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["fingerprint"] = "0123456789abcdef"
    (fake / "manifest.json").write_text(json.dumps(manifest))

    own = copy_checkpoint(trained, tmp_path / "own", fingerprint="0123456789abcdef", tokenizer_dir=str(fake / "tokenizer"))
    result, _, reports = evaluate(trained, own)
    err = refused(result)
    assert "fingerprint 0123456789abcdef" in err and trained.data.fingerprint in err and reports == []

    pointed = copy_checkpoint(trained, tmp_path / "pointed", tokenizer_dir=str(fake / "tokenizer"),
                              dataset=str(fake), data_dir=str(fake))
    result, value, _ = evaluate(trained, pointed)
    assert result.returncode == 0 and value == honest.value, result.stderr
    # the session names its dataset; a stale or absent fingerprint in config.json is refused too
    err = refused(evaluate(trained, copy_checkpoint(trained, tmp_path / "stale", fingerprint=None))[0])
    assert "fingerprint None" in err


# ---------------------------------------------------------------------------
# The causality probe
# ---------------------------------------------------------------------------


class Peek(nn.Module):
    """Near-certain logits for the token at t + 1 (offset 1: it reads what it is asked to predict) or at
    t - 1 (offset -1: the past only, a poor but honest model)."""

    def __init__(self, vocab: int, offset: int, from_position: int = 0):
        super().__init__()
        self.vocab, self.offset, self.from_position = vocab, offset, from_position
        self.scale = nn.Parameter(torch.tensor(30.0))

    def forward(self, idx):
        pad = torch.zeros_like(idx[:, :1])
        seen = torch.cat([idx[:, 1:], pad], 1) if self.offset == 1 else torch.cat([pad, idx[:, :-1]], 1)
        if self.from_position:  # peek only from this position on; before it, predict nothing
            t = torch.arange(idx.size(1))[None, :]
            seen = torch.where(t >= self.from_position, seen, torch.zeros_like(seen))
        return self.scale * nn.functional.one_hot(seen, self.vocab).float() - self.scale / 2


def test_a_model_that_reads_the_next_token_fails_the_causality_probe(trained, tmp_path):
    """Exported, a model that copies the next token would score near 0 bits per byte; the evaluation refuses it
    and reports nothing. The same model reading the previous token instead passes and is scored."""
    vocab, fp = trained.data.vocab_size, trained.data.fingerprint
    cheat = prepare.Tokenizer(prepare.load_encoding(trained.data.tokenizer_dir), trained.data)
    program = kit.load_program(str(save_program(Peek(vocab, 1), 4, tmp_path / "peek", fp) / "model.pt2"))
    assert prepare._bpb_on_split(program, cheat, 4, split="val") < 0.3  # what it would have scored

    result, _, reports = evaluate(trained, tmp_path / "peek")
    err = refused(result)
    assert "causality probe failed" in err and "reads tokens it is asked to predict" in err and reports == []

    result, value, reports = evaluate(trained, save_program(Peek(vocab, -1), 4, tmp_path / "past", fp))
    assert result.returncode == 0 and value is not None and value > 3, result.stdout + result.stderr
    assert reports == [{"name": "val_bpb", "value": pytest.approx(value, rel=1e-9)}]


def test_the_probe_catches_a_model_that_peeks_only_late_in_the_row(trained, tmp_path):
    """Cutting every row at T/2 would miss a model that peeks only from position 3T/4 on; cuts at random
    positions, one per row, catch it (64 rows: each cut lands past 3T/4 with chance 1/4)."""
    T = prepare.MAX_SEQ_LEN
    tokenizer = prepare.Tokenizer(prepare.load_encoding(trained.data.tokenizer_dir), trained.data)
    ckpt = save_program(Peek(trained.data.vocab_size, 1, from_position=3 * T // 4), 4, tmp_path / "late",
                        trained.data.fingerprint)
    program = kit.load_program(str(ckpt / "model.pt2"))

    class HalfCut(random.Random):
        def randrange(self, *args):  # a fixed cut at T/2: the naive probe
            return T // 2

    assert prepare.causality_probe(program, tokenizer, 4, "val", rng=HalfCut(0)).max_change == 0.0
    with pytest.raises(prepare.EvaluationError, match="causality probe failed"):
        prepare.causality_probe(program, tokenizer, 4, "val", rng=random.Random(1))
    honest = kit.load_program(str(trained.ckpt / "model.pt2"))
    probe = prepare.causality_probe(honest, tokenizer, 8, "val", rows=20)
    assert probe.rows == 20 and probe.max_change == 0.0  # exactly: the same arithmetic on the same prefix


class Shaped(nn.Module):
    """Uniform logits over `vocab` tokens for inputs of any length."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.bias = vocab, nn.Parameter(torch.zeros(vocab))

    def forward(self, idx):
        return self.bias.expand(*idx.shape, self.vocab)


def test_a_program_of_another_shape_is_refused(trained, tmp_path):
    vocab, fp = trained.data.vocab_size, trained.data.fingerprint
    err = refused(evaluate(trained, save_program(Shaped(vocab + 1), 4, tmp_path / "vocab", fp))[0])
    assert f"logits are (rows, {prepare.MAX_SEQ_LEN}, {vocab})" in err
    ckpt = tmp_path / "short"
    ckpt.mkdir()
    torch.export.save(torch.export.export(Shaped(vocab), (torch.zeros(4, 16, dtype=torch.long),)), ckpt / "model.pt2")
    (ckpt / "config.json").write_text(json.dumps({"model": {}, "fingerprint": fp}))
    err = refused(evaluate(trained, ckpt)[0])
    assert "takes [('torch.int64', (4, 16))]" in err and f"(rows, {prepare.MAX_SEQ_LEN})" in err


# ---------------------------------------------------------------------------
# A crafted model.pt2 runs no code
# ---------------------------------------------------------------------------

MARKER = "pwned"


class Payload:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the archive src at dst, its entries (relative to the archive's root folder) changed by edit."""
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/")[0]
        files = {name.split("/", 1)[1]: z.read(name) for name in z.namelist()}
    edit(files)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(f"{root}/{name}", data)
    return dst


def crafted(trained, where: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint dir, marker) of model.pt2 files that make torch.export.load or ExportedProgram
    .module() run their author's code (torch 2.13: each read in torch's source, see assets/arkit.py)."""
    out = {}

    def craft(name, edit):
        ckpt = where / name
        shutil.copytree(trained.ckpt, ckpt)
        marker = where / f"{MARKER}-{name}"
        rewrite(trained.ckpt / "model.pt2", ckpt / "model.pt2", lambda files: edit(files, marker))
        out[name] = (ckpt, marker)

    def pickled_weight(files, marker):  # torch.load(weights_only=False) of a use_pickle record
        config = json.loads(files["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        files["data/weights/" + entry["path_name"]] = pickle.dumps(Payload(marker))
        files["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    def pickled_inputs(files, marker):  # the example inputs: weights_only=True, then the fallback to False
        files["data/sample_inputs/model.pt"] = pickle.dumps(Payload(marker))

    def symbolic_size(files, marker):  # sympy.sympify of a size expression: eval
        model = json.loads(files["models/model.json"])
        module = model["graph_module"]
        user = next(spec["user_input"]["arg"]["as_tensor"]["name"] for spec in module["signature"]["input_specs"]
                    if "user_input" in spec)
        code = f"__import__('builtins').open({str(marker)!r}, 'w').close() or 1"
        module["graph"]["tensor_values"][user]["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 1}}}
        files["models/model.json"] = json.dumps(model).encode()

    def guards(files, marker):  # guards_code is exec-ed into the module's forward
        model = json.loads(files["models/model.json"])
        model["guards_code"] = [f"__import__('builtins').open({str(marker)!r}, 'w').close() is None"]
        files["models/model.json"] = json.dumps(model).encode()

    for name, edit in (("pickled_weight", pickled_weight), ("pickled_inputs", pickled_inputs),
                       ("symbolic_size", symbolic_size), ("guards", guards)):
        craft(name, edit)
    return out


TORCH_LOADS = """
import sys, torch
for path in sys.argv[2:]:
    try:
        torch.export.load(path).module()(torch.zeros(int(sys.argv[1]), %d, dtype=torch.long))
    except Exception as e:  # the payload ran before whatever failed
        print(path, type(e).__name__, file=sys.stderr)
"""


def test_a_crafted_model_pt2_runs_no_code(trained, honest, tmp_path):
    """Four crafted files, each of which runs its author's code under torch.export.load (then .module() and
    one forward): seen here, as the control. Through the evaluation's reader none does: the pickled weight
    and the symbolic size are refused with one line, and the other two are read without the parts that held
    the code (example inputs and guards are never read) and compute what the honest program computes."""
    files = crafted(trained, tmp_path)
    batch = json.loads((trained.ckpt / "config.json").read_text())["eval_batch"]
    control = subprocess.run([sys.executable, "-c", TORCH_LOADS % prepare.MAX_SEQ_LEN, str(batch),
                              *(str(ckpt / "model.pt2") for ckpt, _ in files.values())],
                             capture_output=True, text=True, timeout=240)
    for name, (_, marker) in files.items():
        assert marker.exists(), f"{name}: torch.export.load did not run the payload: {control.stderr[-800:]}"
        marker.unlink()

    for name in ("pickled_weight", "symbolic_size"):
        ckpt, marker = files[name]
        result, _, reports = evaluate(trained, ckpt)
        err = refused(result)
        assert ("never unpickles" if name == "pickled_weight" else "symbolic") in err and reports == [], err
        assert not marker.exists(), f"{name}: the evaluation ran the payload"
    x = torch.randint(0, trained.data.vocab_size, (batch, prepare.MAX_SEQ_LEN))
    expected = kit.load_program(str(trained.ckpt / "model.pt2"))(x)
    for name in ("pickled_inputs", "guards"):
        ckpt, marker = files[name]
        assert torch.equal(kit.load_program(str(ckpt / "model.pt2"))(x), expected)
        assert not marker.exists(), f"{name}: the reader ran the payload"


def test_only_aten_operators_that_mutate_nothing_are_run(trained, tmp_path):
    def retarget(target):
        def edit(files):
            model = json.loads(files["models/model.json"])
            node = next(n for n in model["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.tanh.default")
            node["target"] = target
            files["models/model.json"] = json.dumps(model).encode()
        return edit

    for target, why in (("torch.os.system", "not a registered ATen operator"),
                        ("torch.ops.aten.tanh_.default", "writes to its arguments"),
                        ("torch.ops.higher_order.cond", "not a registered ATen operator")):
        path = rewrite(trained.ckpt / "model.pt2", tmp_path / "m.pt2", retarget(target))
        with pytest.raises(kit.ProgramError, match=why):
            kit.load_program(str(path))


# ---------------------------------------------------------------------------
# No train.py
# ---------------------------------------------------------------------------


def test_the_evaluation_runs_with_no_train_py_on_disk(trained, honest, tmp_path):
    """The checkout holds prepare.py and arkit.py only, and the checkpoint's copy of train.py is gone too: the
    evaluation gives the same value, so no line of train.py can be in its process."""
    ws = tmp_path / "checkout"
    ws.mkdir()
    for name in ("prepare.py", "arkit.py"):
        shutil.copy(trained.ws / name, ws / name)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained.ckpt, ckpt)
    (ckpt / "train.py").unlink()
    (ckpt / "model.pt").unlink()  # the state dict is for fine-tuning; the evaluation does not read it either
    assert not list(ws.rglob("train*")) and not list(ckpt.rglob("train*"))
    result, value, reports = evaluate(trained, ckpt, cwd=ws)
    assert result.returncode == 0, result.stdout + result.stderr
    assert value == honest.value and math.isfinite(value) and len(reports) == 1
