"""Tests for the pretrain target's data preparation: dataset names, file splits, the offline corpus,
preparing from a parquet directory, idempotence and the errors users see.

Run: .venv/bin/python -m pytest tests/test_pretrain_data.py -q   (CPU only, no network, ~5 s)
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import pretrain_prepare

prepare = pretrain_prepare()  # by path: every target has a prepare.py


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Point prepare's cache at a temporary directory."""
    root = tmp_path / "cache" / "pretrain"
    monkeypatch.setattr(prepare, "PRETRAIN_DIR", str(root))
    monkeypatch.setattr(prepare, "LAST_PREPARED", str(root / "last_prepared"))
    monkeypatch.delenv("AUTORESEARCH_DATASET", raising=False)
    return root


def test_parse_dataset(tmp_path):
    assert prepare.parse_dataset("local") == prepare.Source("local", "local", "local")
    assert prepare.parse_dataset("climbmix").name == "karpathy/climbmix-400b-shuffle"
    hub = prepare.parse_dataset("roneneldan/TinyStories")
    assert (hub.kind, hub.slug) == ("hub", "hub-roneneldan--TinyStories")
    d = prepare.parse_dataset(str(tmp_path))
    assert d.kind == "dir" and d.name == str(tmp_path) and d.slug.startswith(f"dir-{tmp_path.name}-")
    assert prepare.parse_dataset(str(tmp_path)).slug == d.slug  # stable
    for bad in ("", "not a dataset", "a/b/c", "/no/such/dir"):
        with pytest.raises(ValueError, match="--dataset"):
            prepare.parse_dataset(bad)


def test_split_parquet_files():
    tiny_stories = ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                    "data/validation-00000-of-00001.parquet", "README.md"]
    assert prepare.split_parquet_files(tiny_stories) == (tiny_stories[:2], [tiny_stories[2]])
    shards = [f"shard_{i:05d}.parquet" for i in range(4)]
    assert prepare.split_parquet_files(shards) == (shards[:3], shards[3:])  # the last is pinned as val
    both = ["test/a.parquet", "train/a.parquet", "validation/a.parquet"]
    assert prepare.split_parquet_files(both) == (["train/a.parquet"], ["validation/a.parquet"])
    assert prepare.split_parquet_files(["test-0.parquet", "train-0.parquet"]) == (["train-0.parquet"], ["test-0.parquet"])
    assert prepare.split_parquet_files(["only.parquet"]) == (["only.parquet"], [])
    assert prepare.split_parquet_files(["interval.parquet", "x.parquet"])[1] == ["x.parquet"]  # "val" inside a word


def test_split_documents():
    text = "\n".join(f"line {i}" + ("\n" if i % 7 == 0 else "") for i in range(400))
    docs = prepare.split_documents(text, max_chars=200)
    assert all(len(d) <= 200 for d in docs)
    assert "".join(docs).replace("\n", "") == text.replace("\n", "")  # nothing lost but newlines at cuts
    assert prepare.split_documents("x" * 500 + "\nshort", max_chars=100) == ["x" * 500, "short"]
    assert prepare.split_documents("\n\n  \n", max_chars=100) == []


def test_local_corpus_is_deterministic_sized_and_split_by_file():
    train_a, val_a, fp_a, info = prepare.build_local_corpus(max_bytes=150_000)
    train_b, val_b, fp_b, _ = prepare.build_local_corpus(max_bytes=150_000)
    assert (train_a, val_a, fp_a) == (train_b, val_b, fp_b)
    assert train_a and val_a and not set(train_a) & set(val_a)
    assert 150_000 <= info["bytes"] < 150_000 + prepare.LOCAL_MAX_FILE_BYTES
    assert all(len(d) <= prepare.LOCAL_DOC_CHARS or "\n" not in d for d in train_a + val_a)
    _, _, fp_small, _ = prepare.build_local_corpus(max_bytes=50_000)
    assert fp_small != fp_a


def _write(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path)


def _docs(n, tag):
    return [f"{tag} document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(n)]


def test_prepare_from_a_parquet_directory(cache, tmp_path, capsys):
    src = tmp_path / "mydata"
    _write(src / "train-0.parquet", _docs(60, "a"))
    _write(src / "train-1.parquet", _docs(60, "b"))
    _write(src / "validation-0.parquet", _docs(20, "v"))
    prepared = prepare.prepare(str(src), vocab_size=300)
    assert [os.path.basename(p) for p in prepared.train_files] == ["train-0.parquet", "train-1.parquet"]
    assert [os.path.basename(p) for p in prepared.val_files] == ["validation-0.parquet"]
    assert prepared.vocab_size == 300 and prepared.eval_tokens == prepare.EVAL_TOKENS
    assert prepare.load_prepared() == prepared  # the last prepared dataset is the default
    tokenizer = prepare.Tokenizer.from_prepared()
    assert tokenizer.decode(tokenizer.encode("fox jumps")) == "fox jumps"
    manifest = json.loads((cache / prepared.dir.split(os.sep)[-1] / "manifest.json").read_text())
    assert manifest["fingerprint"] == prepared.fingerprint and manifest["kind"] == "dir"

    capsys.readouterr()
    assert prepare.prepare(str(src), vocab_size=300) == prepared
    assert "already prepared" in capsys.readouterr().out

    again = prepare.prepare(str(src), vocab_size=320)  # other settings: rebuilt, new fingerprint
    assert again.vocab_size == 320 and again.fingerprint != prepared.fingerprint


def test_single_file_sources_are_split_by_document(cache, tmp_path):
    src = tmp_path / "one"
    _write(src / "all.parquet", _docs(400, "x"))
    prepared = prepare.prepare(str(src), vocab_size=300, eval_tokens=512)
    train_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in prepared.train_files)
    val_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in prepared.val_files)
    assert train_rows + val_rows == 400 and 0 < val_rows < 60
    assert all(p.startswith(prepared.dir) for p in prepared.train_files + prepared.val_files)
    assert prepared.eval_tokens == 512


def test_datasets_live_side_by_side(cache, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for src in (first, second):
        _write(src / "train.parquet", _docs(50, src.name))
        _write(src / "val.parquet", _docs(10, src.name))
    a = prepare.prepare(str(first), vocab_size=300)
    b = prepare.prepare(str(second), vocab_size=300)
    assert a.dir != b.dir and a.fingerprint != b.fingerprint
    assert prepare.load_prepared() == b
    monkeypatch.setenv("AUTORESEARCH_DATASET", str(first))
    assert prepare.load_prepared() == a


def test_missing_text_column_is_reported(cache, tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    pq.write_table(pa.table({"content": ["a", "b"]}), src / "train.parquet")
    pq.write_table(pa.table({"content": ["c"]}), src / "val.parquet")
    with pytest.raises(prepare.PrepareError, match="no `text` column"):
        prepare.prepare(str(src), vocab_size=300)


def test_not_prepared_exits_with_one_line(cache, monkeypatch):
    with pytest.raises(SystemExit) as e:
        prepare.load_prepared()
    message = str(e.value.code)
    assert "python prepare.py --dataset local" in message and "\n" not in message
    monkeypatch.setenv("AUTORESEARCH_DATASET", "climbmix")
    with pytest.raises(SystemExit, match="--dataset climbmix"):
        prepare.load_prepared()


def test_offline_hub_error_says_what_to_do(cache, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", offline)
    with pytest.raises(prepare.PrepareError, match="--dataset local"):
        prepare.prepare("climbmix")
    assert prepare._main(["--dataset", "someone/some-data"]) == 1
