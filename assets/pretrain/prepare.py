"""
Fixed data preparation and evaluation for the autoresearch pretrain target.

The agent edits train.py; this file is fixed (the harness hashes it). It holds the constants train.py
imports, the two data sources behind one loader, the tokenizer, the BOS-aligned packing dataloader, and the
evaluation: `--evaluate`, a process of its own that reads the run's checkpoint (the exported model.pt2, as
data; train.py is never imported) and reports val_bpb, the metric, after a causality probe; and
`--evaluate-heldout`, the same metric on the `heldout` split for kept runs, never used to decide anything.

Splits, built once here (the manifest lists them; the fingerprint covers them):
    train     what train.py trains on
    val       what --evaluate scores (val_bpb): keep/discard decisions select on it
    heldout   scored only by `--evaluate-heldout`, for kept runs, never to decide: if val_bpb improves
              and heldout_bpb does not, the session is overfitting its selection to val
  local corpus   by file: val = the files whose path hashes into the first VAL_PERCENT of the range (as
                 before), heldout = the next HELDOUT_PERCENT, train = the rest; a document text that
                 recurs in several files (boilerplate) stays only in the first of train, val, heldout
  climbmix       val = the pinned last shard (as before), heldout = the pinned shard before it, which
                 training never reaches, whatever --num-shards says
  other hub/dir  the val files as before (validation/valid/val, else test, else the last file; a single
                 file gives VAL_PERCENT + HELDOUT_PERCENT of its documents), whose documents a salted
                 hash of the text then halves: one half is val, the other heldout (evaluate_bpb skips it)

Usage (run once, before the baseline):
    python prepare.py --dataset local                     # offline default: corpus from the Python stdlib
    python prepare.py --dataset climbmix                  # karpathy/climbmix-400b-shuffle (HF Hub)
    python prepare.py --dataset roneneldan/TinyStories    # any hub dataset repo with a `text` column
    python prepare.py --dataset /data/my_parquet_dir      # a local directory of parquet files
    python prepare.py --evaluate [CHECKPOINT_DIR]         # val_bpb of a run's checkpoint (the harness runs it)
    python prepare.py --evaluate-heldout [CHECKPOINT_DIR] # heldout_bpb of a checkpoint (for kept runs)

Environment (all optional):
    AUTORESEARCH_CACHE_DIR     cache root (default ~/.cache/autoresearch); prepared data lives in <root>/pretrain/
    AUTORESEARCH_DATASET       which prepared dataset train.py uses (default: the one prepared last)
    AUTORESEARCH_TIME_BUDGET   training seconds (default 300)
    AUTORESEARCH_SEED          random seed for train.py (default 42)
    AUTORESEARCH_CHECKPOINT    directory train.py saves the final model to (default <root>/pretrain/checkpoint);
                               also what --evaluate and --evaluate-heldout read when given no directory
    AUTORESEARCH_RESULT_FILE   --evaluate appends {"name": "val_bpb", "value": ...} to it (the harness's channel,
                               given to the evaluation process only), --evaluate-heldout {"name": "heldout_bpb",
                               "value": ...}; the kit reads it once, at import, and removes it from the environment

What every target's fixed side shares (the result channel, progress output, atomic writes, the Hub, hash
splits and manifests, reading a checkpoint's exported program as data) is the fixed kit, arkit.py, beside this file; what is here is
specific to pretraining: the corpus sources, the tokenizer, the dataloader and bits per byte.

Importing this module is cheap: nothing is downloaded or trained at import.
"""

import argparse
import base64
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import sys
import sysconfig
import time
from bisect import bisect_right
from dataclasses import dataclass

import arkit
import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Constants (fixed; train.py imports them)
# ---------------------------------------------------------------------------

# Scale is fixed per machine class, not per run: a CUDA machine gets karpathy's sizes; anything else (CPU,
# Apple MPS) a short context and a small eval set, so a 60 s CPU run finishes in well under 100 s of wall
# time. Runs are only compared within one machine class, so this keeps the metric fixed per session.
ON_CUDA = torch.cuda.is_available()
MAX_SEQ_LEN = 2048 if ON_CUDA else 256  # context length, for training and for evaluation
EVAL_TOKENS = 40 * 524288 if ON_CUDA else 64 * 1024  # validation tokens per evaluation
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", 300))  # training seconds; the harness sets it
SEED = int(os.environ.get("AUTORESEARCH_SEED", 42))
VOCAB_SIZE = 8192  # BPE vocabulary, special tokens included

CACHE_DIR = os.environ.get("AUTORESEARCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
PRETRAIN_DIR = os.path.join(CACHE_DIR, "pretrain")  # one subdirectory per prepared dataset
LAST_PREPARED = os.path.join(PRETRAIN_DIR, "last_prepared")  # names the dataset train.py uses by default
CHECKPOINT_DIR = os.environ.get("AUTORESEARCH_CHECKPOINT") or os.path.join(PRETRAIN_DIR, "checkpoint")

CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_VAL_SHARD = 6542  # the last shard is the pinned validation shard, as in karpathy/autoresearch
CLIMBMIX_HELDOUT_SHARD = 6541  # the one before it is the pinned heldout shard; training stops short of it

# GPT-4's split pattern with numbers grouped by at most two digits (not three): with a vocabulary this
# small, three-digit number tokens waste slots (karpathy/nanochat tokenizer.py makes the same change).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS_TOKEN = "<|bos|>"
# Four special ids at the top of the vocabulary; the three unnamed ones are held for post-training targets.
SPECIAL_TOKENS = [BOS_TOKEN, "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]

# Offline corpus: text files of the Python standard library, cut into documents of at most this many
# characters (at blank lines when possible) so that several fit in one training row.
LOCAL_DOC_CHARS = 1200
LOCAL_MAX_FILE_BYTES = 2 * 1024 * 1024  # skip generated giants; pydoc_data/topics.py (the docs, 0.8 MB) stays in
LOCAL_SUFFIXES = (".py", ".txt", ".rst", ".md")
VAL_PERCENT = 5  # share of files (local corpus) or documents (single-file sources) held out for validation
HELDOUT_PERCENT = 5  # and the next share, held out for the heldout split (disjoint from val and train)
HELDOUT_OF_VAL_PERCENT = 50  # hub/dir sources: share of the val files' documents that form the heldout split
TOKENIZER_MAX_CHARS = 1_000_000_000  # tokenizer training reads at most this much of the train split
TOKENIZER_DOC_CHARS = 10_000  # and at most this much of any one document

NOT_PREPARED = "error: no prepared data in {where}; run `python prepare.py --dataset {dataset}` first"
NO_HELDOUT = (
    "{where} was prepared before the heldout split existed; run `python prepare.py --dataset {dataset} --force` "
    "to rebuild it with one (the fingerprint changes: runs before and after are not comparable)"
)


# ---------------------------------------------------------------------------
# Datasets: which one, and where it lives in the cache
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What `--dataset` names: kind is local | climbmix | hub | dir; slug names its cache directory."""

    kind: str
    name: str
    slug: str


def parse_dataset(spec: str) -> Source:
    """Map a `--dataset` value to a Source. Raises ValueError with what to pass instead."""
    if spec == "local":
        return Source("local", "local", "local")
    if spec == "climbmix":
        return Source("climbmix", CLIMBMIX_REPO, "climbmix")
    if os.path.isdir(spec):
        path = os.path.abspath(spec)
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(path.rstrip(os.sep))) or "root"
        return Source("dir", path, f"dir-{base}-{arkit.sha256_hex(path.encode())[:8]}")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec):
        owner, name = spec.split("/")
        return Source("hub", spec, f"hub-{owner}--{name}")
    raise ValueError(
        f"--dataset {spec!r} is not `local`, `climbmix`, an existing directory, or an owner/name hub repo"
    )


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset, read from its manifest.json (written last, so it exists only when complete)."""

    dir: str
    dataset: str
    fingerprint: str  # content + tokenizer settings: val_bpb is comparable only between equal fingerprints
    vocab_size: int
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    eval_tokens: int
    heldout_files: tuple[str, ...] = ()  # empty: prepared before the heldout split existed
    # True: heldout_files are the val files, and _is_heldout_doc() splits their documents between val and heldout
    heldout_in_val: bool = False

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.dir, "tokenizer")

    @property
    def has_heldout(self) -> bool:
        return bool(self.heldout_files)


def _prepared_from_manifest(directory: str, m: dict) -> Prepared:
    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(directory, p)

    return Prepared(
        dir=directory,
        dataset=m["dataset"],
        fingerprint=m["fingerprint"],
        vocab_size=m["vocab_size"],
        train_files=tuple(resolve(p) for p in m["train_files"]),
        val_files=tuple(resolve(p) for p in m["val_files"]),
        eval_tokens=m.get("eval_tokens") or EVAL_TOKENS,
        heldout_files=tuple(resolve(p) for p in m.get("heldout_files") or ()),
        heldout_in_val=bool(m.get("heldout_in_val", False)),
    )


def load_prepared(dataset: str | None = None) -> Prepared:
    """The dataset to train on: `dataset`, else $AUTORESEARCH_DATASET, else the one prepared last.

    Exits with a one-line message (status 1, no traceback) when nothing is prepared, so that train.py
    run before prepare.py tells the user what to do.
    """
    spec = dataset or os.environ.get("AUTORESEARCH_DATASET")
    if not spec:
        try:
            with open(LAST_PREPARED, encoding="utf-8") as f:
                spec = f.read().strip()
        except OSError:
            sys.exit(NOT_PREPARED.format(where=PRETRAIN_DIR, dataset="local"))
    if os.path.isdir(os.path.join(PRETRAIN_DIR, spec)) and os.sep not in spec:
        slug = spec  # already a cache directory name
    else:
        try:
            slug = parse_dataset(spec).slug
        except ValueError as e:
            sys.exit(f"error: AUTORESEARCH_DATASET: {e}")
    directory = os.path.join(PRETRAIN_DIR, slug)
    m = arkit.read_manifest(directory)
    if m is None:
        sys.exit(NOT_PREPARED.format(where=directory, dataset=spec))
    return _prepared_from_manifest(directory, m)


# ---------------------------------------------------------------------------
# Source (b): the offline corpus, built from text already on every machine
# ---------------------------------------------------------------------------


def _stdlib_files() -> list[tuple[str, str]]:
    """(relative path, absolute path) of candidate text files in the stdlib, in a fixed shuffled order.

    Ordering by a hash of the relative path (not alphabetically) makes a size-limited corpus a sample of
    the whole library rather than its first few directories, and is the same on every machine.
    """
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            if name.endswith(LOCAL_SUFFIXES):
                path = os.path.join(dirpath, name)
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    found.sort(key=lambda rel_abs: arkit.sha256_hex(rel_abs[0].encode()))
    return found


def _read_text(path: str) -> str | None:
    """The file as text, or None for what is not clean UTF-8 text (binary, other encodings, giants)."""
    try:
        if os.path.getsize(path) > LOCAL_MAX_FILE_BYTES:
            return None
        with open(path, "rb") as f:
            raw = f.read()
        if b"\x00" in raw:
            return None
        return raw.decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return None


def split_documents(text: str, max_chars: int = LOCAL_DOC_CHARS) -> list[str]:
    """Cut text into documents of at most max_chars, at a blank line once half full, else at a line end.

    A single line longer than max_chars becomes its own document. Whitespace-only pieces are dropped.
    """
    docs, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if cur and size + len(line) > max_chars:
            docs.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
        if not line.strip() and size >= max_chars // 2:
            docs.append("".join(cur))
            cur, size = [], 0
    if cur:
        docs.append("".join(cur))
    return [d.strip("\n") for d in docs if d.strip()]


def _is_heldout_doc(text: str) -> bool:
    """Of the documents in a hub/dir source's val files, those that belong to the heldout split. The hash is
    salted, so it is independent of the unsalted one that chose the val documents of single-file sources."""
    return arkit.split_of(text, {"heldout": HELDOUT_OF_VAL_PERCENT}, rest="val", salt="heldout") == "heldout"


def _is_val_doc(text: str) -> bool:
    return not _is_heldout_doc(text)


@dataclass(frozen=True)
class LocalCorpus:
    train: list[str]
    val: list[str]
    heldout: list[str]
    fingerprint: str
    info: dict


def local_corpus(max_bytes: int | None = None) -> LocalCorpus:
    """The stdlib corpus as train, val and heldout documents, with a content fingerprint and a description.

    The split is by file (a file's documents all go to one split, so no near-duplicate context leaks
    across), decided by a hash of its relative path: the first VAL_PERCENT of the hash range is val, the
    next HELDOUT_PERCENT heldout. Exact duplicates are dropped from the later split (train, then val,
    then heldout), so no document text is in two splits. max_bytes caps the corpus (tests use a few
    hundred KB); None takes every file. A corpus so small that a share is empty still gets a file in each.
    """
    files, total = [], 0
    for rel, path in _stdlib_files():
        if max_bytes is not None and total >= max_bytes:
            break
        text = _read_text(path)
        if text is None or not text.strip():
            continue
        files.append((rel, text))
        total += len(text.encode("utf-8"))
    if len(files) < 3:
        raise RuntimeError(f"found only {len(files)} usable text files in {sysconfig.get_paths()['stdlib']}")
    names = [rel for rel, _ in files]
    share = {rel: arkit.split_of(rel, {"val": VAL_PERCENT, "heldout": HELDOUT_PERCENT}) for rel in names}
    # A tiny corpus may hash no file into a share, or every file: each split still gets at least one.
    val_names = [rel for rel in names if share[rel] == "val"][: len(names) - 2] or names[:1]
    heldout_names = [rel for rel in names if rel not in val_names and share[rel] != "train"]
    heldout_names = heldout_names[: len(names) - 1 - len(val_names)] or [
        next(rel for rel in names if rel not in val_names)
    ]
    digest = hashlib.sha256(
        f"local-v2 doc_chars={LOCAL_DOC_CHARS} val={VAL_PERCENT} heldout={HELDOUT_PERCENT}\n".encode()
    )
    train, val, heldout = [], [], []
    val_set, heldout_set = set(val_names), set(heldout_names)
    for rel, text in files:
        digest.update(f"{rel}\0{arkit.sha256_hex(text.encode('utf-8'))}\n".encode())
        split = val if rel in val_set else heldout if rel in heldout_set else train
        split.extend(split_documents(text))
    # Boilerplate (license headers, codec tables, `if __name__ == "__main__":` tails) recurs across files:
    # an evaluation document that is also a training document (or, for heldout, a val one) is dropped.
    seen = set(train)
    val = [d for d in val if d not in seen]
    seen.update(val)
    heldout = [d for d in heldout if d not in seen]
    info = {
        "source": f"Python {sys.version.split()[0]} standard library at {sysconfig.get_paths()['stdlib']}",
        "files": len(files),
        "bytes": total,
    }
    return LocalCorpus(train, val, heldout, digest.hexdigest(), info)


def build_local_corpus(max_bytes: int | None = None) -> tuple[list[str], list[str], str, dict]:
    """(train, val, fingerprint, info) of local_corpus(); the heldout documents are in neither list."""
    c = local_corpus(max_bytes)
    return c.train, c.val, c.fingerprint, c.info


def _write_shards(docs: list[str], directory: str, prefix: str, docs_per_shard: int = 100_000) -> list[str]:
    """Write documents as parquet shards with a `text` column, the same format as the hub datasets."""
    names = []
    for i, start in enumerate(range(0, max(1, len(docs)), docs_per_shard)):
        name = f"{prefix}_{i:05d}.parquet"
        path = os.path.join(directory, name)
        with arkit.atomic_output(path) as tmp:
            pq.write_table(pa.table({"text": docs[start : start + docs_per_shard]}), tmp, row_group_size=1024)
        names.append(name)
    return names


# ---------------------------------------------------------------------------
# Source (a): parquet shards from the Hugging Face Hub or a local directory
# ---------------------------------------------------------------------------


# A preparation failure with a message meant for the user (printed without a traceback). The kit's Hub
# functions raise the same type, so that one `except` covers both.
PrepareError = arkit.KitError

OFFLINE_HINT = (
    "If this machine is offline, use `--dataset local` (built from files already here) "
    "or `--dataset /path/to/parquet/dir`."
)


def _hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The dataset's commit; fails fast, with a clear message, when offline or misnamed."""
    return arkit.hub_revision(repo_id, revision, offline_hint=OFFLINE_HINT)


def _hub_download(repo_id: str, filename: str, revision: str, local_dir: str) -> str:
    """One file of the pinned revision into local_dir, resumed and retried by the kit."""
    retry_hint = "rerun prepare.py to resume, or use `--dataset local` offline"
    return arkit.hub_download(repo_id, filename, revision, local_dir, retry_hint=retry_hint)


_EVAL_NAME = r"(^|[/_.-])({})([/_.-]|$)"


def split_parquet_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) among a dataset's parquet files, by name: validation files, else test files, else the
    last file pinned as validation (climbmix's rule). A val list that comes back empty (a single file)
    means the caller must split documents instead."""
    paths = sorted(p for p in paths if p.endswith(".parquet"))

    def tagged(words: str) -> list[str]:
        return [p for p in paths if re.search(_EVAL_NAME.format(words), p.lower())]

    val = tagged("validation|valid|val") or tagged("test")
    held_out = set(tagged("validation|valid|val|test"))
    train = [p for p in paths if p not in held_out]
    if not val and len(train) >= 2:
        val = [train.pop()]
    return train, val


def _check_text_column(path: str) -> None:
    names = pq.read_schema(path).names
    if "text" not in names:
        raise PrepareError(f"{path} has no `text` column (columns: {', '.join(names)})")


def _split_single_file(path: str, out_dir: str) -> tuple[list[str], list[str]]:
    """A source with one parquet file: hold out VAL_PERCENT + HELDOUT_PERCENT of its documents, by a hash
    of the text, as its val file (whose documents _is_heldout_doc then halves into val and heldout)."""
    train, val = [], []
    for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
        if text:
            held_out = arkit.split_of(text, {"val": VAL_PERCENT + HELDOUT_PERCENT}) == "val"
            (val if held_out else train).append(text)
    if not val or not train:
        raise PrepareError(f"{path}: too few documents to hold out a validation split")
    return _write_shards(train, out_dir, "train"), _write_shards(val, out_dir, "val")


@dataclass(frozen=True)
class _Layout:
    """Where a source's splits are (paths relative to the dataset's cache directory, or absolute)."""

    train: list[str]
    val: list[str]
    heldout: list[str]
    heldout_in_val: bool  # heldout == val, and _is_heldout_doc splits their documents
    content: str  # content fingerprint
    info: dict


def _fetch_hub(source: Source, out_dir: str, num_shards: int) -> _Layout:
    revision = _hub_revision(source.name)
    raw_dir = os.path.join(out_dir, "raw")
    heldout: list[str] = []
    if source.kind == "climbmix":
        n = CLIMBMIX_HELDOUT_SHARD if num_shards < 0 else min(num_shards, CLIMBMIX_HELDOUT_SHARD)
        train = [f"shard_{i:05d}.parquet" for i in range(n)]
        val = [f"shard_{CLIMBMIX_VAL_SHARD:05d}.parquet"]
        heldout = [f"shard_{CLIMBMIX_HELDOUT_SHARD:05d}.parquet"]
    else:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(source.name, repo_type="dataset", revision=revision)
        if not any(f.endswith(".parquet") for f in files):
            # The Hub's dataset viewer keeps a parquet export of most datasets on this branch.
            revision = _hub_revision(source.name, "refs/convert/parquet")
            files = HfApi().list_repo_files(source.name, repo_type="dataset", revision=revision)
        train, val = split_parquet_files(files)
        if not train:
            raise PrepareError(f"{source.name} has no parquet files (neither on main nor refs/convert/parquet)")
        if num_shards >= 0:
            train = train[:num_shards]
    wanted = train + val + heldout
    arkit.echo(f"Data: {len(wanted)} files from {source.name}@{revision[:12]} into {raw_dir}")
    for i, name in enumerate(wanted, 1):
        if not os.path.exists(os.path.join(raw_dir, name)):
            arkit.echo(f"  [{i}/{len(wanted)}] {name}")
        _hub_download(source.name, name, revision, raw_dir)
    for name in wanted:
        _check_text_column(os.path.join(raw_dir, name))
    train_paths = [os.path.join("raw", p) for p in train]
    val_paths = [os.path.join("raw", p) for p in val]
    if not val:
        train_paths, val_paths = _split_single_file(os.path.join(out_dir, train_paths[0]), out_dir)
    content = arkit.sha256_hex((f"{source.name}@{revision}:" + ",".join(wanted)).encode())
    info = {"source": f"{source.name}@{revision}"}
    if heldout:  # climbmix: a pinned shard of its own
        return _Layout(train_paths, val_paths, [os.path.join("raw", p) for p in heldout], False, content, info)
    return _Layout(train_paths, val_paths, val_paths, True, content, info)


def _scan_dir(source: Source, out_dir: str, num_shards: int) -> _Layout:
    found = []
    for dirpath, _, filenames in os.walk(source.name):
        found += [os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet")]
    rel = [os.path.relpath(p, source.name) for p in found]
    train, val = split_parquet_files(rel)
    if not train:
        raise PrepareError(f"no parquet files under {source.name}")
    if num_shards >= 0:
        train = train[:num_shards]
    train_paths = [os.path.join(source.name, p) for p in train]
    val_paths = [os.path.join(source.name, p) for p in val]
    for p in train_paths + val_paths:
        _check_text_column(p)
    fingerprint = arkit.file_digest(train_paths + val_paths)
    if not val_paths:
        train_paths, val_paths = _split_single_file(train_paths[0], out_dir)
    return _Layout(train_paths, val_paths, val_paths, True, fingerprint, {"source": source.name})


# ---------------------------------------------------------------------------
# Tokenizer: BPE trained with rustbpe, used through tiktoken
# ---------------------------------------------------------------------------


def _iter_parquet_texts(paths, max_chars: int = TOKENIZER_MAX_CHARS, doc_chars: int = TOKENIZER_DOC_CHARS):
    seen = 0
    for path in paths:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                if not text:
                    continue
                text = text[:doc_chars]
                seen += len(text)
                yield text
                if seen >= max_chars:
                    return


def train_tokenizer(texts, vocab_size: int, out_dir: str, total_docs: int = 0) -> tiktoken.Encoding:
    """Train a byte-level BPE on texts, save it as a tiktoken BPE file plus its settings, and write the
    token-bytes table that evaluate_bpb uses. Returns the encoding."""
    import rustbpe

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    os.makedirs(out_dir, exist_ok=True)
    progress = arkit.Progress("Tokenizer: reading", total_docs, " docs")

    def counted(it):
        for text in it:
            progress.update()
            yield text

    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(counted(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    progress.close()
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="autoresearch", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    arkit.echo(f"Tokenizer: {enc.n_vocab} tokens trained in {time.time() - t0:.1f}s")

    # tiktoken's own BPE file format (base64 token, space, rank), written here because tiktoken's writer
    # needs the optional blobfile package.
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    arkit.atomic_write_text(os.path.join(out_dir, "tokenizer.tiktoken"), "\n".join(lines) + "\n")
    settings = {"pattern": enc._pat_str, "special_tokens": specials, "bos": BOS_TOKEN}
    arkit.atomic_write_text(os.path.join(out_dir, "tokenizer.json"), json.dumps(settings, indent=1))

    # Bytes per token for bits-per-byte; special tokens count 0 bytes and so drop out of the metric.
    # decode_single_token_bytes is exact even for tokens that end inside a multi-byte character.
    token_bytes = [0 if i in specials.values() else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    torch.save(torch.tensor(token_bytes, dtype=torch.int32), os.path.join(out_dir, "token_bytes.pt"))

    sample = "Hello world! def f(x): return x**2  # 12345 ünïcödé 你好 🤖 \t\n"
    ids = enc.encode_ordinary(sample)
    assert enc.decode(ids) == sample, "tokenizer round trip failed"
    assert sum(token_bytes[i] for i in ids) == len(sample.encode("utf-8")), "token byte table is inconsistent"
    arkit.echo("Tokenizer: round-trip sanity check passed")
    return enc


def load_encoding(tokenizer_dir: str) -> tiktoken.Encoding:
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        settings = json.load(f)
    ranks = {}
    with open(os.path.join(tokenizer_dir, "tokenizer.tiktoken"), encoding="ascii") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="autoresearch", pat_str=settings["pattern"], mergeable_ranks=ranks, special_tokens=settings["special_tokens"]
    )


class Tokenizer:
    """The prepared dataset's tokenizer. It carries the dataset (`.prepared`) so the loaders and
    evaluate_bpb know which files and which token-bytes table belong to it."""

    def __init__(self, enc: tiktoken.Encoding, prepared: Prepared | None = None):
        self.enc = enc
        self.prepared = prepared
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_prepared(cls, prepared: Prepared | None = None) -> "Tokenizer":
        prepared = prepared or load_prepared()
        return cls(load_encoding(prepared.tokenizer_dir), prepared)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend: int | None = None, num_threads: int = 8):
        """Token ids of a string, or a list of id lists for a list of strings; `prepend` is put first."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return [prepend, *ids] if prepend is not None else ids
        rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        return [[prepend, *ids] for ids in rows] if prepend is not None else rows

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))


def get_token_bytes(tokenizer: Tokenizer, device="cpu") -> torch.Tensor:
    """(vocab,) int32: UTF-8 bytes of each token, 0 for special tokens."""
    path = os.path.join(tokenizer.prepared.tokenizer_dir, "token_bytes.pt")
    return torch.load(path, map_location=device)


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing, no padding
# ---------------------------------------------------------------------------


def _document_batches(paths: tuple[str, ...], batch_docs: int = 128, keep=None):
    """Endless (texts, epoch) over the files' `text` column, in file and row order; only the documents
    for which keep(text) is true when keep is given."""
    epoch = 1
    while True:
        found = False
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                texts = [t for t in texts if t and (keep is None or keep(t))]
                found = found or bool(texts)
                for i in range(0, len(texts), batch_docs):
                    yield texts[i : i + batch_docs], epoch
        if not found:
            raise ValueError(f"no documents in {', '.join(paths) or '(no files)'}")
        epoch += 1


def _split_files(prepared: Prepared, split: str) -> tuple[tuple[str, ...], object]:
    """(files, keep) of a split: its parquet files, and the document filter to apply (None: all)."""
    if split == "train":
        return prepared.train_files, None
    if split == "val":
        return prepared.val_files, _is_val_doc if prepared.heldout_in_val else None
    if split == "heldout":
        if not prepared.has_heldout:
            raise ValueError(NO_HELDOUT.format(where=prepared.dir, dataset=prepared.dataset))
        return prepared.heldout_files, _is_heldout_doc if prepared.heldout_in_val else None
    raise ValueError(f"split must be 'train', 'val' or 'heldout', not {split!r}")


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = 1000, device=None):
    """Yield (inputs (B, T), targets (B, T), epoch) forever, packed from whole documents.

    Every row starts with BOS (each document is BOS + its tokens). A row is filled by repeatedly taking
    the longest buffered document that fits the space left (best fit); only when none fits is the
    shortest one cropped to fill the row exactly. So there is no padding and little is cropped. The rows
    depend only on the data and T, never on B, so evaluation does not depend on the batch size.
    On CUDA the batch goes through pinned memory with a non-blocking copy; elsewhere it stays put.
    split is train, val or heldout; training code must only ever read train.
    """
    files, keep = _split_files(tokenizer.prepared, split)
    device = torch.device(device or ("cuda" if ON_CUDA else "cpu"))
    batches = _document_batches(files, keep=keep)
    bos = tokenizer.get_bos_token_id()
    lengths: list[int] = []  # kept sorted; docs[i] has length lengths[i]
    docs: list[list[int]] = []
    epoch = 1
    capacity = T + 1  # inputs are row[:-1], targets row[1:]

    while True:
        rows = torch.empty((B, capacity), dtype=torch.long)
        for r in range(B):
            pos = 0
            while pos < capacity:
                while len(docs) < buffer_size:
                    texts, epoch = next(batches)
                    for ids in tokenizer.encode(texts, prepend=bos):
                        i = bisect_right(lengths, len(ids))
                        lengths.insert(i, len(ids))
                        docs.insert(i, ids)
                space = capacity - pos
                i = bisect_right(lengths, space) - 1  # longest document that fits
                if i >= 0:
                    doc = docs.pop(i)
                    lengths.pop(i)
                else:  # nothing fits: crop the shortest
                    doc = docs.pop(0)[:space]
                    lengths.pop(0)
                rows[r, pos : pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        both = torch.stack([rows[:, :-1], rows[:, 1:]])  # (2, B, T), contiguous
        if device.type == "cuda":
            both = both.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            both = both.to(device)
        yield both[0], both[1], epoch


# ---------------------------------------------------------------------------
# Preparation (the command line)
# ---------------------------------------------------------------------------


def prepare(
    spec: str = "local",
    vocab_size: int = VOCAB_SIZE,
    max_bytes: int | None = None,
    num_shards: int = 10,
    eval_tokens: int | None = None,
    force: bool = False,
) -> Prepared:
    """Build (or find) the dataset and its tokenizer, and make it the one train.py uses next.

    Data prepared before the heldout split existed is not rebuilt silently (that would change the training
    split under a running session): PrepareError asks for --force instead.
    """
    source = parse_dataset(spec)
    out_dir = os.path.join(PRETRAIN_DIR, source.slug)
    params = {
        "vocab_size": vocab_size,
        "max_bytes": max_bytes if source.kind == "local" else None,
        "num_shards": num_shards if source.kind != "local" else None,
        "eval_tokens": eval_tokens,
    }
    old = arkit.read_manifest(out_dir)
    unchanged = old is not None and old.get("params") == params
    if unchanged and not force and not old.get("heldout_files"):
        raise PrepareError(NO_HELDOUT.format(where=out_dir, dataset=spec))
    local = local_corpus(max_bytes) if source.kind == "local" else None
    if unchanged and local is not None:
        unchanged = old.get("content_fingerprint") == local.fingerprint  # the stdlib changes with the Python version
    if unchanged and not force:
        prepared = _prepared_from_manifest(out_dir, old)
        arkit.atomic_write_text(LAST_PREPARED, source.slug + "\n")
        arkit.echo(f"Data: already prepared: {spec} (fingerprint {prepared.fingerprint}) at {out_dir}")
        return prepared
    if old is not None:
        arkit.echo(f"Data: rebuilding {out_dir} ({'forced' if force else 'settings or content changed'})")
        os.remove(os.path.join(out_dir, "manifest.json"))
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(PRETRAIN_DIR, exist_ok=True)

    t0 = time.time()
    if local is not None:
        info = local.info
        arkit.echo(f"Data: local corpus from {info['source']}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB")
        for stale in os.listdir(out_dir):
            if stale.endswith(".parquet"):
                os.remove(os.path.join(out_dir, stale))
        layout = _Layout(
            _write_shards(local.train, out_dir, "train"), _write_shards(local.val, out_dir, "val"),
            _write_shards(local.heldout, out_dir, "heldout"), False, local.fingerprint, info,
        )
        rule = f"files: val = the first {VAL_PERCENT}% of the path hash range, heldout = the next {HELDOUT_PERCENT}%"
    elif source.kind in ("climbmix", "hub"):
        layout = _fetch_hub(source, out_dir, num_shards)
        rule = f"shard {CLIMBMIX_HELDOUT_SHARD}, pinned, never trained on" if source.kind == "climbmix" else ""
    else:
        layout = _scan_dir(source, out_dir, num_shards)
        rule = ""
    if layout.heldout_in_val:
        rule = f"documents: {HELDOUT_OF_VAL_PERCENT}% of the val files' documents by a salted hash of the text"

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(out_dir, p)

    def count(paths: list[str], keep=None) -> int:
        if keep is None:
            return sum(pq.ParquetFile(absolute(p)).metadata.num_rows for p in paths)
        return sum(keep(t) for t in _iter_parquet_texts([absolute(p) for p in paths], math.inf, None) if t)

    val_keep, heldout_keep = (_is_val_doc, _is_heldout_doc) if layout.heldout_in_val else (None, None)
    val_docs, heldout_docs = count(layout.val, val_keep), count(layout.heldout, heldout_keep)
    if not val_docs or not heldout_docs:
        raise PrepareError(
            f"{spec}: too few validation documents ({val_docs + heldout_docs}) to split into val and heldout"
        )
    train_abs = [absolute(p) for p in layout.train]
    total_docs = count(layout.train)
    tok_dir = os.path.join(out_dir, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    train_tokenizer(_iter_parquet_texts(train_abs), vocab_size, tok_dir, total_docs=total_docs)

    splits = f"splits=v2 heldout_of_val={HELDOUT_OF_VAL_PERCENT}" if layout.heldout_in_val else "splits=v2"
    fingerprint = arkit.fingerprint(layout.content, f"vocab={vocab_size}", f"eval={eval_tokens}", splits)
    manifest = {
        "format": 2,
        "dataset": spec,
        "kind": source.kind,
        "fingerprint": fingerprint,
        "content_fingerprint": layout.content,
        "vocab_size": vocab_size,
        "train_files": layout.train,
        "val_files": layout.val,
        "heldout_files": layout.heldout,
        "heldout_in_val": layout.heldout_in_val,
        "heldout_rule": rule,
        "train_docs": total_docs,
        "val_docs": val_docs,
        "heldout_docs": heldout_docs,
        "eval_tokens": eval_tokens,
        "params": params,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **layout.info,
    }
    arkit.write_manifest(out_dir, manifest)
    arkit.atomic_write_text(LAST_PREPARED, source.slug + "\n")
    arkit.echo(
        f"Data: prepared {spec} in {time.time() - t0:.1f}s: {total_docs:,} train / {val_docs:,} val / "
        f"{heldout_docs:,} heldout documents, fingerprint {fingerprint}, at {out_dir}"
    )
    return _prepared_from_manifest(out_dir, manifest)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="One-time data and tokenizer preparation for the autoresearch pretrain target.",
        epilog=(
            "Prepared data goes to $AUTORESEARCH_CACHE_DIR/pretrain/<dataset>/ (default ~/.cache/autoresearch), "
            "one directory per dataset, each with a manifest.json recording its fingerprint; val_bpb is only "
            "comparable between runs on the same fingerprint. train.py uses the dataset prepared last, or "
            "$AUTORESEARCH_DATASET. Running this again for a prepared dataset does nothing. Each dataset has "
            "three disjoint splits: train, val (--evaluate: what keep decisions select on) and heldout "
            "(only --evaluate-heldout reads it)."
        ),
    )
    parser.add_argument(
        "--dataset",
        default="local",
        help="local (default, offline: built from the Python standard library's source and docs), "
        "climbmix (karpathy/climbmix-400b-shuffle from the Hugging Face Hub), any owner/name hub dataset "
        "repo with a `text` column (e.g. roneneldan/TinyStories), or a directory of parquet files",
    )
    parser.add_argument("--num-shards", type=int, default=10, help="hub/dir: training parquet files to use (-1 = all)")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help=f"BPE vocabulary size (default {VOCAB_SIZE})")
    parser.add_argument(
        "--max-bytes", type=int, default=None, help="local: cap the corpus at about this many bytes (tests, quick trials)"
    )
    parser.add_argument(
        "--eval-tokens",
        type=int,
        default=None,
        help=f"validation tokens per evaluation, recorded with the data (default {EVAL_TOKENS:,} on this machine)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if already prepared (e.g. after the files of a directory changed, or for data prepared "
        "before the heldout split existed)",
    )
    parser.add_argument(
        "--evaluate",
        nargs="?",
        const="",
        metavar="CHECKPOINT_DIR",
        help="instead of preparing: val_bpb of the checkpoint train.py saved in CHECKPOINT_DIR (default "
        "$AUTORESEARCH_CHECKPOINT), from its model.pt2 read as data; the fixed evaluation the harness runs after "
        "each run, reported through $AUTORESEARCH_RESULT_FILE",
    )
    parser.add_argument(
        "--evaluate-heldout",
        nargs="?",
        const="",
        metavar="CHECKPOINT_DIR",
        help="the same on the heldout split: heldout_bpb, which the harness gets for kept runs",
    )
    args = parser.parse_args(argv)
    for split, where in (("val", args.evaluate), ("heldout", args.evaluate_heldout)):
        if where is None:
            continue
        # When the evaluation began (after the imports): the harness may take training time as this stamp
        # minus the run's start; whatever follows it never counts against the run's budget.
        arkit.echo(f"eval_started: {time.time():.3f}")
        try:
            evaluate(where or None, split)
        except EvaluationError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        return 0
    arkit.echo(f"Cache: {PRETRAIN_DIR}")
    try:
        prepare(args.dataset, args.vocab_size, args.max_bytes, args.num_shards, args.eval_tokens, args.force)
    except (PrepareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    arkit.echo("Done: ready to train (python train.py)")
    return 0


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------


def _device_of(model) -> torch.device:
    """Where a model's tensors are: its first parameter's device, else its first buffer's, else the CPU."""
    for tensor in (*itertools.islice(model.parameters(), 1), *itertools.islice(model.buffers(), 1)):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _bpb_on_split(model, tokenizer: Tokenizer, batch_size: int, *, split: str) -> float:
    """Bits per byte of `split` (val or heldout): what --evaluate and --evaluate-heldout both compute."""
    device = _device_of(model)
    token_bytes = get_token_bytes(tokenizer, device)
    rows = tokenizer.prepared.eval_tokens // MAX_SEQ_LEN
    steps = -(-rows // batch_size)
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, split, device=device)
    # Per-batch sums go into preallocated buffers: no host sync per batch, and no trail of small tensors
    # that would fragment the CPU heap between the large logits blocks.
    nats = torch.zeros(steps, device=device)
    nbytes = torch.zeros(steps, device=device)
    for step in range(steps):
        x, y, _ = next(loader)
        keep = min(batch_size, rows - step * batch_size)  # the last batch may score only its first rows
        logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)[:keep]
        b = token_bytes[y[:keep]]
        nats[step] = (loss * (b > 0)).sum()
        nbytes[step] = b.sum()
        del logits, loss
    # One host sync at the end, and a float64 total (MPS has no float64, so sum on the CPU).
    total_nats = nats.cpu().double().sum().item()
    total_bytes = nbytes.cpu().double().sum().item()
    return total_nats / (math.log(2) * total_bytes)


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int) -> float:
    """Bits per byte of the validation split: the vocabulary-independent metric.

    `model(inputs)` must return logits (B, T, vocab); the loss is computed here, in float32, so the
    metric does not depend on how the model computes its own. Per-token cross-entropy (nats) is summed
    over targets that are not special tokens, divided by the UTF-8 bytes those targets stand for, and
    converted to bits. Exactly eval_tokens // MAX_SEQ_LEN rows of length MAX_SEQ_LEN are scored, the
    same rows whatever the batch size. It reports nothing: the session's val_bpb is what `--evaluate`
    computes with the same code, in a process of its own, from the run's checkpoint.
    """
    return _bpb_on_split(model, tokenizer, batch_size, split="val")


# ---------------------------------------------------------------------------
# The evaluation process: `python prepare.py --evaluate` (and --evaluate-heldout)
# ---------------------------------------------------------------------------
# The harness runs it after each run, as a process of its own, with AUTORESEARCH_CHECKPOINT set to the run's
# checkpoint and AUTORESEARCH_RESULT_FILE (the channel) given to it alone. It reads the checkpoint as data:
# model.pt2 through the kit's program reader (ATen operators and raw tensors; nothing unpickled, evaluated
# or imported, train.py least of all), and config.json only for the data fingerprint, which must be the
# session's. The data itself comes from the prepared cache, never from a path the checkpoint names.

# Why a checkpoint cannot be evaluated: printed as one line, exit status 1 (the kit raises it too).
EvaluationError = arkit.CheckpointError

METRICS = {"val": "val_bpb", "heldout": "heldout_bpb"}
# The causality probe: this many rows, each cut at a random position; a model whose logits before the cut
# move when only tokens from the cut on change reads the future, and its bpb would measure copying.
PROBE_ROWS = 128 if ON_CUDA else 64
PROBE_TOLERANCE = 1e-3  # on float32 logits; an honest model's do not move at all (same arithmetic, same prefix)


def _checkpoint_data(config: dict, split: str) -> Prepared:
    """The session's prepared dataset (AUTORESEARCH_DATASET, else the one prepared last), which must be the
    one the checkpoint was trained on: the fingerprints must agree. Paths in config.json are never read, so
    a run cannot point its evaluation at data of its own making."""
    prepared = load_prepared()  # exits with a one-line message if nothing is prepared
    fingerprint = config.get("fingerprint")
    if fingerprint != prepared.fingerprint:
        raise EvaluationError(
            f"the checkpoint was trained on data with fingerprint {fingerprint}, but the session's data "
            f"({prepared.dataset} at {prepared.dir}) has fingerprint {prepared.fingerprint} (another dataset, or "
            "prepared again since): evaluate a checkpoint trained on the current data"
        )
    if split == "heldout" and not prepared.has_heldout:
        raise EvaluationError(NO_HELDOUT.format(where=prepared.dir, dataset=prepared.dataset))
    return prepared


def load_checkpoint(checkpoint: str, split: str = "val") -> tuple[dict, Prepared, arkit.Program]:
    """(config, the session's data, the program on this machine's device) of a run's checkpoint, after
    checking that the program takes one (rows, MAX_SEQ_LEN) int64 batch and was exported for this device.
    Raises EvaluationError."""
    config = arkit.read_checkpoint(checkpoint, ("config.json", "model.pt2"), required=("model",))
    prepared = _checkpoint_data(config, split)
    device = "cuda" if ON_CUDA else "cpu"
    program = arkit.load_program(os.path.join(checkpoint, "model.pt2"))
    shapes = [(str(spec.dtype), spec.shape) for spec in program.inputs]
    if len(shapes) != 1 or shapes[0][0] != "torch.int64" or len(shapes[0][1]) != 2 or shapes[0][1][1] != MAX_SEQ_LEN:
        raise EvaluationError(
            f"{checkpoint}/model.pt2 takes {shapes}; the evaluation feeds one int64 batch of (rows, {MAX_SEQ_LEN}) tokens"
        )
    if len(program.outputs) != 1:
        raise EvaluationError(f"{checkpoint}/model.pt2 returns {len(program.outputs)} values; the evaluation takes logits")
    if program.device != device:
        raise EvaluationError(f"{checkpoint}/model.pt2 was exported for {program.device}; this evaluation runs on {device}")
    return config, prepared, program.to(device)


@dataclass(frozen=True)
class Probe:
    rows: int
    max_change: float  # the largest move of a logit before its row's cut
    seconds: float


@torch.no_grad()
def causality_probe(
    model, tokenizer: Tokenizer, batch_size: int, split: str, rows: int = PROBE_ROWS, rng: random.Random | None = None
) -> Probe:
    """Run the model on the first batch of `split` as it is, then again and again with every token from a
    random cut on replaced by another (a cut per row, `rows` cuts in all): the logits before each row's cut
    must not move (beyond PROBE_TOLERANCE). The cuts come from the OS's randomness (unless rng is given), so
    no model can know where they fall: one that peeks ahead at a share f of its positions passes with chance
    about (1 - f) ** rows. Costs 1 + ceil(rows / batch_size) forwards. Raises EvaluationError on a violation."""
    t0 = time.time()
    rng = rng or random.SystemRandom()
    device = _device_of(model)
    x, _, _ = next(make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, split, device=device))
    logits = model(x).float()
    vocab = tokenizer.get_vocab_size()
    if tuple(logits.shape) != (batch_size, MAX_SEQ_LEN, vocab):
        raise EvaluationError(f"the model returns {tuple(logits.shape)}; logits are (rows, {MAX_SEQ_LEN}, {vocab})")
    positions = torch.arange(MAX_SEQ_LEN, device=device)[None, :]
    probed, worst = 0, 0.0
    while probed < rows:
        cuts = [rng.randrange(1, MAX_SEQ_LEN) for _ in range(min(batch_size, rows - probed))]
        cuts += [MAX_SEQ_LEN] * (batch_size - len(cuts))  # rows beyond the count: unchanged, and not compared
        later = positions >= torch.tensor(cuts, device=device)[:, None]
        draw = torch.Generator().manual_seed(rng.getrandbits(63))
        shift = torch.randint(1, vocab, tuple(x.shape), generator=draw).to(device)
        changed = torch.where(later, (x + shift) % vocab, x)  # every token from the cut on: another token
        # A new tensor for the difference (the model's output may alias its weights), in place from there on:
        # three logits-sized tensors at most (8.6 GB each at 128 x 2048 x 8192).
        moved = (model(changed).float() - logits).abs_().masked_fill_(later[..., None], 0.0).amax(dim=(1, 2))
        for cut, change in zip(cuts, moved.tolist(), strict=True):
            worst = max(worst, change)
            if not change <= PROBE_TOLERANCE:  # NaN fails too
                raise EvaluationError(
                    f"causality probe failed: logits before position {cut} of a row moved by {change:.3g} when only "
                    f"the tokens from position {cut} on changed; the model reads tokens it is asked to predict, so "
                    "its bits per byte would not measure prediction"
                )
        probed += sum(cut < MAX_SEQ_LEN for cut in cuts)
        del changed, moved
    return Probe(probed, worst, time.time() - t0)


def evaluate(checkpoint_dir: str | None = None, split: str = "val") -> float:
    """val_bpb (split "val") or heldout_bpb ("heldout") of the checkpoint in checkpoint_dir (default
    $AUTORESEARCH_CHECKPOINT): load the program (load_checkpoint), pass the causality probe, then bits per
    byte by _bpb_on_split, in batches of the program's rows (the last one padded, only its real rows scored:
    the value does not depend on the batch). Prints the `---` summary and `METRIC name=value`, and appends
    it to $AUTORESEARCH_RESULT_FILE. Raises EvaluationError."""
    name = METRICS[split]
    t0 = time.time()
    checkpoint = os.path.abspath(checkpoint_dir or CHECKPOINT_DIR)
    if ON_CUDA:  # as train.py trains: TF32 for what stays in float32 (the bf16 casts are in the program)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _, prepared, program = load_checkpoint(checkpoint, split)
    tokenizer = Tokenizer.from_prepared(prepared)
    batch_size = program.inputs[0].shape[0]
    arkit.echo(
        f"checkpoint: {checkpoint} ({program.num_params() / 1e6:.2f}M parameters, {len(program.steps)} operator "
        f"calls, batches of {batch_size} x {MAX_SEQ_LEN} tokens; read in {time.time() - t0:.1f}s)"
    )
    arkit.echo(f"data: {prepared.dataset} (fingerprint {prepared.fingerprint}), split {split}")
    probe = causality_probe(program, tokenizer, batch_size, split)
    arkit.echo(
        f"causality: {probe.rows} rows cut at random positions; logits before the cuts moved by at most "
        f"{probe.max_change:.2g} ({probe.seconds:.1f}s)"
    )
    t_eval = time.time()
    bpb = _bpb_on_split(program, tokenizer, batch_size, split=split)
    if not math.isfinite(bpb):
        raise EvaluationError(f"{name} of {checkpoint} is {bpb}")
    arkit.echo(f"eval: {prepared.eval_tokens:,} tokens in {time.time() - t_eval:.1f}s, {time.time() - t0:.1f}s in all")
    arkit.echo("---")
    arkit.echo(f"{name + ':':<18}{bpb:.6f}")
    arkit.echo(f"METRIC {name}={bpb:.10g}")
    arkit.report(name, bpb)  # the harness's channel: with metric_source = "result_file", its only source
    return bpb


def evaluate_heldout(checkpoint_dir: str | None = None) -> float:
    """heldout_bpb of a checkpoint: evaluate() on the heldout split (the same program, code, rows and
    eval_tokens as val_bpb); the harness runs it for kept runs. Raises EvaluationError."""
    return evaluate(checkpoint_dir, split="heldout")


if __name__ == "__main__":
    sys.exit(_main())
