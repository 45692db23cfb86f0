"""
The fixed side every post-training target shares (sft, dpo, grpo): the prepared math data, the base's own
scores, the adapter evaluation, the prepare/evaluate command line, and the status lines `autoresearch status`
prints. A kit module (assets/arpost.py): init copies it beside each target's thin prepare.py as a fixed file,
and it never imports the harness.

Prepared data lives in <cache>/posttrain/<base fp16>-<data fp16>/, keyed by both fingerprints, so sft, dpo and
grpo sessions on the same base and data share it: per split the token ids of each row (prompt, then completion
and the end token; rows longer than MAX_LEN are cut from the right, as tinker-cookbook does), each row's prompt
length (the loss weights are 0 there and 1 on the completion), and the items (id, gold answer) the evaluation
scores. The manifest records rows, skipped rows (gold that did not parse), contaminated items (an evaluation
question also in train: refused, never scored), completion tokens and truncations. It also holds the base
model's own scores on the same evaluation items (computed here, once: the runs' cache is read-only), so every
run reports before (base_accuracy) and after.

The evaluation (a process of its own; train.py is never imported): the saved adapter (or merged weights) in
$AUTORESEARCH_CHECKPOINT applied to the base (arbase.load_adapted), greedy generation on the first EVAL_ITEMS
validation items, exact match of the extracted answer (armath) -> val_accuracy, the primary metric, through
the result channel; secondary: val_nll (mean NLL per completion token, teacher-forced), format_rate (an
answer could be extracted), mean_completion_len (generated tokens), base_accuracy, and whatever a target adds.

Status: <cache>/posttrain/<base fp16>/status-<target>.json = {"lines": [...]}, written by prepare (atomically),
printed by `autoresearch status` for a workspace on that base (write_status, data_status_line).
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import arbase
import arkit
import armath
import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Constants (fixed; each target's prepare.py re-exports what its train.py imports)
# ---------------------------------------------------------------------------

# Fixed per machine class, like the pretrain target's sizes: runs are compared only within one session, whose
# machine does not change. CPU: our own small base, short math answers, a validation subset small enough to
# score in seconds.
ON_CUDA = torch.cuda.is_available()
MAX_LEN = 512 if ON_CUDA else 256  # prompt + completion tokens per row (our CPU base's context is 256)
EVAL_ITEMS = 256 if ON_CUDA else 128  # the fixed validation subset: the first EVAL_ITEMS val items
HELDOUT_ITEMS = 512 if ON_CUDA else 256  # the first HELDOUT_ITEMS test items (--evaluate-heldout)
MAX_NEW_TOKENS = 256 if ON_CUDA else 48  # generation budget per answer; offline-math answers are 20-60 tokens
EVAL_BATCH = 64 if ON_CUDA else 32  # rows per generation batch (the results do not depend on it)
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", 300))  # training seconds; the harness sets it
SEED = int(os.environ.get("AUTORESEARCH_SEED", 42))

CACHE_DIR = arbase.CACHE_DIR
POSTTRAIN_DIR = os.path.join(CACHE_DIR, "posttrain")  # shared by sft, dpo and grpo (keyed by base and data)
CHECKPOINT_DIR = os.environ.get("AUTORESEARCH_CHECKPOINT") or os.path.join(POSTTRAIN_DIR, "checkpoint")
WORKSPACE = os.path.dirname(os.path.abspath(__file__))  # the workspace root: base.json sits beside this file
DEFAULT_DATA = "offline-math:levels=1"
TARGET = ""  # the target's name: its prepare.py sets it (set_target) when imported


def set_target(name: str) -> None:
    """The target this workspace is (its prepare.py says so at import): which data it prepared last is its own,
    so a dpo session preparing other data on the same base does not change what an sft session trains on."""
    global TARGET
    TARGET = name
FORMAT_VERSION = 1  # of the prepared files; part of the data directory's fingerprint

NOT_PREPARED = "error: no prepared data for this base in {where}; run `python prepare.py --data {data}` first"


class PrepareError(arkit.KitError):
    """Preparation cannot go on: one line saying what to do."""


EvaluationError = arkit.CheckpointError


# ---------------------------------------------------------------------------
# Prepared data: where it lives, and reading it
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """One tokenized split: row i is tokens[offsets[i]:offsets[i+1]], its first prompt_lens[i] tokens the
    prompt (loss weight 0), the rest the completion and the end token (weight 1)."""

    tokens: np.ndarray  # int32, every row concatenated
    offsets: np.ndarray  # int64, n + 1
    prompt_lens: np.ndarray  # int32, n
    ids: tuple[str, ...]
    golds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def row(self, i: int) -> list[int]:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]].tolist()

    def prompt(self, i: int) -> list[int]:
        return self.tokens[self.offsets[i]:self.offsets[i] + self.prompt_lens[i]].tolist()

    def completion_tokens(self) -> int:
        return int((self.offsets[1:] - self.offsets[:-1] - self.prompt_lens).sum())


@dataclass(frozen=True)
class Prepared:
    dir: str
    manifest: dict

    @property
    def data(self) -> str:
        return str(self.manifest["data"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def rows(self, split: str) -> Rows:
        def arr(name: str) -> np.ndarray:
            return np.load(os.path.join(self.dir, f"{split}.{name}.npy"), allow_pickle=False)

        with open(os.path.join(self.dir, f"{split}.items.jsonl"), encoding="utf-8") as f:
            items = [json.loads(line) for line in f if line.strip()]
        return Rows(arr("tokens"), arr("offsets"), arr("prompt_lens"),
                    tuple(i["id"] for i in items), tuple(i["gold"] for i in items))


def _base_key(base_fingerprint: str) -> str:
    return os.path.join(POSTTRAIN_DIR, base_fingerprint[:16])


def _data_dir(base_fingerprint: str, data_fingerprint: str) -> str:
    return os.path.join(POSTTRAIN_DIR, f"{base_fingerprint[:16]}-{data_fingerprint}")


def session_base_info() -> dict:
    """The workspace's base.json (the base is verified file by file when it is loaded)."""
    path = os.path.join(WORKSPACE, arbase.BASE_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"error: no base for this session ({path}: {e}); `autoresearch init --target ... --base ...` "
                 "writes it")


def load_prepared(data: str | None = None) -> Prepared:
    """The prepared data for the session's base: `data` (a spec), else $AUTORESEARCH_DATA, else the spec this
    target prepared last for this base. Exits with a one-line message when nothing is prepared."""
    base_fp = str(session_base_info().get("fingerprint", ""))
    spec = data or os.environ.get("AUTORESEARCH_DATA")
    last = os.path.join(_base_key(base_fp), _last_name())
    if not spec:
        try:
            with open(last, encoding="utf-8") as f:
                directory = os.path.join(POSTTRAIN_DIR, f.read().strip())
        except OSError:
            sys.exit(NOT_PREPARED.format(where=POSTTRAIN_DIR, data=DEFAULT_DATA))
    else:
        try:
            directory = _data_dir(base_fp, armath.data_fingerprint(spec))
        except armath.DataError as e:
            sys.exit(f"error: {e}")
    m = arkit.read_manifest(directory)
    if m is None or m.get("base_fingerprint") != base_fp:
        sys.exit(NOT_PREPARED.format(where=directory, data=spec or DEFAULT_DATA))
    return Prepared(directory, m)


def make_batch(rows: Rows, indices, device, max_len: int = MAX_LEN):
    """(x, y, w) for rows `indices`, right-padded to the longest: x the inputs, y the next tokens (shifted by
    one), w the loss weights, 1.0 where y is a completion token (the answer and its end token) and 0.0 on the
    prompt and the padding. x, y int64 (B, T-1); w float32 (B, T-1)."""
    seqs = [rows.row(i)[:max_len] for i in indices]
    width = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    y = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    w = torch.zeros(len(seqs), width - 1, dtype=torch.float32)
    for k, (i, s) in enumerate(zip(indices, seqs, strict=True)):
        n, p = len(s), int(rows.prompt_lens[i])
        t = torch.tensor(s, dtype=torch.long)
        x[k, :n - 1], y[k, :n - 1] = t[:-1], t[1:]
        w[k, max(p - 1, 0):n - 1] = 1.0  # target y[j] = s[j + 1] is a completion token when j + 1 >= p
    return x.to(device), y.to(device), w.to(device)


# ---------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------


def _tokenize(base: arbase.Base, split: armath.Split) -> tuple[dict, list[dict], dict]:
    """The arrays and item records of a split, and its counts. A row whose prompt leaves no room for a
    completion token is dropped (counted as too_long); longer completions are cut from the right."""
    tokens: list[int] = []
    offsets, prompt_lens, items = [0], [], []
    too_long = truncated = 0
    for it in split.items:
        prompt, completion = base.prompt_ids(it.question), base.completion_ids(it.solution)
        if len(prompt) >= MAX_LEN:
            too_long += 1
            continue
        row = (prompt + completion)[:MAX_LEN]
        truncated += len(prompt) + len(completion) > MAX_LEN
        tokens.extend(row)
        offsets.append(len(tokens))
        prompt_lens.append(len(prompt))
        items.append({"id": it.id, "gold": it.gold})
    arrays = {
        "tokens": np.asarray(tokens, dtype=np.int32),
        "offsets": np.asarray(offsets, dtype=np.int64),
        "prompt_lens": np.asarray(prompt_lens, dtype=np.int32),
    }
    counts = {
        "rows": len(items), "skipped": split.skipped, "contaminated": split.contaminated, "too_long": too_long,
        "truncated": truncated, "completion_tokens": int(len(tokens) - sum(prompt_lens)),
        "prompt_tokens": int(sum(prompt_lens)),
    }
    return arrays, items, counts


def prepare(data: str, force: bool = False) -> Prepared:
    t0 = time.time()
    info = session_base_info()
    kind = armath.parse_spec(data).kind
    if kind in ("gsm8k", "gsm8k-platinum"):  # hub data: downloaded here, explicitly, never at run time
        arkit.echo(f"Downloading {data} into the cache (once)...")
        armath.download(data)
    splits = {s: armath.load_split(data, s) for s in armath.SPLITS}
    # The guard: an evaluation item whose question is also in train would measure memory, not skill.
    for s in ("val", "test"):
        leaked = armath.contaminated(splits[s].items, splits["train"].items)
        if leaked:
            kept = tuple(it for it in splits[s].items if it.id not in leaked)
            splits[s] = armath.Split(s, kept, splits[s].skipped, splits[s].contaminated + len(leaked))
    data_fp = armath.data_fingerprint(data)
    directory = _data_dir(str(info["fingerprint"]), data_fp)
    existing = arkit.read_manifest(directory)
    if existing is not None and not force and existing.get("format") == FORMAT_VERSION:
        arkit.echo(f"Data: {data} already prepared for this base at {directory}")
        _mark_last(info, directory)
        return Prepared(directory, existing)
    arkit.echo(f"Base: {info.get('name')} ({info.get('kind')}, fingerprint {str(info['fingerprint'])[:16]})")
    base = arbase.load_base(WORKSPACE, device="cuda" if ON_CUDA else "cpu")
    os.makedirs(directory, exist_ok=True)
    counts = {}
    for s, split in splits.items():
        arrays, items, counts[s] = _tokenize(base, split)
        for name, a in arrays.items():
            with arkit.atomic_output(os.path.join(directory, f"{s}.{name}.npy")) as tmp, open(tmp, "wb") as f:
                np.save(f, a, allow_pickle=False)
        arkit.atomic_write_text(os.path.join(directory, f"{s}.items.jsonl"),
                                "".join(json.dumps(i) + "\n" for i in items))
        c = counts[s]
        arkit.echo(f"  {s:<5} {c['rows']:>6} rows, {c['completion_tokens']:>8,} completion tokens, skipped "
                   f"{c['skipped']}, contaminated {c['contaminated']}, too long {c['too_long']}")
    if not counts["train"]["rows"] or not counts["val"]["rows"]:
        raise PrepareError(f"{data} gives no usable train or val rows for this base")
    fingerprint = arkit.fingerprint(str(info["fingerprint"]), data_fp, str(MAX_LEN), str(FORMAT_VERSION))
    prepared = Prepared(directory, {"data": data, "format": FORMAT_VERSION, "fingerprint": fingerprint,
                                    "base_fingerprint": info["fingerprint"], "data_fingerprint": data_fp,
                                    "max_len": MAX_LEN, "splits": counts})
    # The base's own scores on the evaluation items, once (runs cannot write the cache): every run's
    # evaluation reports them beside its own, so each ledger line shows before and after.
    scores = {}
    for split, n in (("val", EVAL_ITEMS), ("test", HELDOUT_ITEMS)):
        if counts[split]["rows"]:
            t1 = time.time()
            scores[split] = score(base.model, base, prepared.rows(split), n)
            arkit.echo(f"  base on {split}: accuracy {scores[split]['accuracy']:.4f} on {scores[split]['items']} "
                       f"items, format rate {scores[split]['format_rate']:.3f} ({time.time() - t1:.1f}s)")
    arkit.write_manifest(directory, {**prepared.manifest, "base_scores": {"settings": eval_settings(), **scores}})
    _mark_last(info, directory)
    arkit.echo(f"Data: prepared {data} in {time.time() - t0:.1f}s (fingerprint {fingerprint}) at {directory}")
    return Prepared(directory, arkit.read_manifest(directory) or {})


def _last_name() -> str:
    return f"last_prepared-{TARGET}" if TARGET else "last_prepared"


def _mark_last(info: dict, directory: str) -> None:
    key = _base_key(str(info["fingerprint"]))
    os.makedirs(key, exist_ok=True)
    arkit.atomic_write_text(os.path.join(key, _last_name()), os.path.basename(directory))


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------


def eval_settings() -> dict:
    """What the scores depend on besides the model and the data: base_accuracy is reused only when equal."""
    return {"eval_items": EVAL_ITEMS, "heldout_items": HELDOUT_ITEMS, "max_new_tokens": MAX_NEW_TOKENS,
            "max_len": MAX_LEN}


@torch.no_grad()
def completion_nll(model, rows: Rows, indices, batch: int = EVAL_BATCH) -> float:
    """Mean negative log-likelihood (nats) per completion token of rows `indices`, teacher-forced, in float32."""
    device = arbase._device(model)
    total, count = 0.0, 0.0
    for k in range(0, len(indices), batch):
        x, y, w = make_batch(rows, indices[k:k + batch], device)
        logits = arbase.logits_of(model, x).float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        total += float((nll * w).sum())
        count += float(w.sum())
    return total / count if count else float("nan")


@torch.no_grad()
def score(model, base: arbase.Base, rows: Rows, n: int) -> dict:
    """Greedy answers to the first n items of `rows`: accuracy (exact match of the extracted answer with the
    gold, armath's convention), format rate, mean generated tokens, and the completion NLL of the same items."""
    indices = list(range(min(n, len(rows))))
    outs = arbase.generate(model, base, [rows.prompt(i) for i in indices], MAX_NEW_TOKENS, batch_size=EVAL_BATCH)
    texts = [base.tok.decode(o) for o in outs]
    answers = [armath.extract_answer(t) for t in texts]
    correct = sum(armath.answers_match(a, rows.golds[i]) for a, i in zip(answers, indices, strict=True))
    return {
        "items": len(indices),
        "accuracy": correct / max(1, len(indices)),
        "format_rate": sum(a is not None for a in answers) / max(1, len(indices)),
        "mean_completion_len": sum(len(o) for o in outs) / max(1, len(indices)),
        "nll": completion_nll(model, rows, indices),
        "texts": texts,  # the answers as generated: what a judge compares (write_answers)
    }


def write_answers(directory: str, prepared: Prepared, split: str, run: dict, before: dict) -> None:
    """The run's answers and the base's on the same items, one {"id", "prompt", "answer"} a line, for the
    controller's judge (README "The judge"): answers.jsonl and base_answers.jsonl in `directory`, which the
    harness gives only to this evaluation ($AUTORESEARCH_ANSWERS_DIR). The prompt is the question as a
    person reads it (from the data spec), not the token template."""
    ids = prepared.rows(split).ids
    questions = {it.id: it.question for it in armath.load_split(prepared.data, split).items}
    for name, texts in (("answers.jsonl", run.get("texts")), ("base_answers.jsonl", before.get("texts"))):
        if isinstance(texts, list):
            arkit.atomic_write_text(os.path.join(directory, name), "".join(
                json.dumps({"id": ids[i], "prompt": questions.get(ids[i], ""), "answer": t}) + "\n"
                for i, t in enumerate(texts)))


METRICS = {"val": "val_accuracy", "test": "heldout_accuracy"}
ANSWERS_ENV = "AUTORESEARCH_ANSWERS_DIR"  # given by the harness to the evaluation only


# A target's own secondary metrics: (the adapted model, the base, the prepared data, the split) -> name -> value,
# printed with the rest (never through the channel: the primary metric is accuracy).
ExtraMetrics = Callable[..., dict[str, float]]


def evaluate(checkpoint_dir: str | None = None, split: str = "val", extra: ExtraMetrics | None = None) -> float:
    """val_accuracy (split "val") or heldout_accuracy ("test") of the run's adapter or merged weights in
    checkpoint_dir (default $AUTORESEARCH_CHECKPOINT): printed as a `---` summary and METRIC lines, the primary
    metric also through the result channel. `extra(model, base, prepared, split)` adds a target's secondary
    metrics. Raises EvaluationError."""
    t0 = time.time()
    name = METRICS[split]
    checkpoint = os.path.abspath(checkpoint_dir or CHECKPOINT_DIR)
    prepared = load_prepared()
    try:
        base = arbase.load_base(WORKSPACE, device="cuda" if ON_CUDA else "cpu")
        model = arbase.load_adapted(base, checkpoint)
    except arbase.BaseError as e:
        raise EvaluationError(str(e)) from e
    arkit.echo(f"checkpoint: {checkpoint} on base {base.info.get('name')} (read in {time.time() - t0:.1f}s)")
    arkit.echo(f"data: {prepared.data} (fingerprint {prepared.fingerprint}), split {split}")
    rows = prepared.rows(split)
    if not len(rows):
        raise EvaluationError(f"{prepared.data} has no {split} items")
    t1 = time.time()
    s = score(model, base, rows, EVAL_ITEMS if split == "val" else HELDOUT_ITEMS)
    base_scores = prepared.manifest.get("base_scores") or {}
    if base_scores.get("settings") == eval_settings() and split in base_scores:
        before = base_scores[split]
    else:  # prepared under other settings: scored here (not cached: the runs' cache is read-only)
        before = score(base.model, base, rows, s["items"])
    arkit.echo(f"eval: {s['items']} items in {time.time() - t1:.1f}s, {time.time() - t0:.1f}s in all")
    if os.environ.get(ANSWERS_ENV):  # the harness keeps them for its judge (a session with `judge` set)
        write_answers(os.environ[ANSWERS_ENV], prepared, split, s, before)
    prefix = "val" if split == "val" else "heldout"
    values = {
        name: s["accuracy"],
        f"{prefix}_nll": s["nll"],
        f"{prefix}_format_rate" if split == "test" else "format_rate": s["format_rate"],
        f"{prefix}_mean_completion_len" if split == "test" else "mean_completion_len": s["mean_completion_len"],
        "base_accuracy" if split == "val" else "base_heldout_accuracy": before["accuracy"],
    }
    if extra is not None:
        values.update(extra(model, base, prepared, split))
    for key, value in values.items():
        if not math.isfinite(value):
            raise EvaluationError(f"{key} of {checkpoint} is {value}")
    arkit.echo("---")
    for key, value in values.items():
        arkit.echo(f"{key + ':':<24}{value:.6f}")
    for key, value in values.items():
        arkit.echo(f"METRIC {key}={value:.10g}")
    arkit.report(name, s["accuracy"])  # the harness's channel: the primary metric's only source
    return s["accuracy"]


# ---------------------------------------------------------------------------
# Status lines (`autoresearch status` prints them for a workspace on this base)
# ---------------------------------------------------------------------------


def status_path(base_fingerprint: str, target: str) -> str:
    return os.path.join(_base_key(base_fingerprint), f"status-{target}.json")


def data_status_line(prepared: Prepared) -> str:
    """"offline-math:levels=1, 20,000 train rows, base accuracy 0.000 on 128 val items" (status prints it
    after its own "data" label)."""
    m = prepared.manifest
    rows = (m.get("splits") or {}).get("train", {}).get("rows", 0)
    val = (m.get("base_scores") or {}).get("val")
    scored = f", base accuracy {val['accuracy']:.3f} on {val['items']} val items" if val else ""
    return f"{prepared.data}, {rows:,} train rows{scored}"


def write_status(prepared: Prepared, target: str, lines: Sequence[str]) -> str:
    """Write the status lines of `target` for the prepared data's base (atomically); returns the path."""
    path = status_path(str(prepared.manifest["base_fingerprint"]), target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arkit.atomic_write_text(path, json.dumps({"lines": list(lines)}) + "\n")
    return path


# ---------------------------------------------------------------------------
# The command line every target's prepare.py runs
# ---------------------------------------------------------------------------

# After preparing: (the prepared data, the parsed arguments) -> more status lines (a target's own artefacts,
# such as dpo's preference pairs). Raises PrepareError (or a KitError) to fail with one line.
OnPrepared = Callable[[Prepared, argparse.Namespace], list[str]]


def command_line(argv: Sequence[str] | None = None, *, target: str, default_data: str = DEFAULT_DATA,
                 description: str | None = None, on_prepared: OnPrepared | None = None,
                 add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 extra_metrics: ExtraMetrics | None = None) -> int:
    """`prepare.py --data SPEC [--force]` (prepare, then the target's own step, then the status lines),
    `--evaluate [DIR]` (val_accuracy) or `--evaluate-heldout [DIR]` (heldout_accuracy). Returns the exit code."""
    parser = argparse.ArgumentParser(
        description=description or "Prepare math data for the session's base (once), or evaluate a run's adapter.",
    )
    parser.add_argument("--data", default=default_data,
                        help="offline-math[:levels=A-B,train=N,val=N,test=N,seed=N] (generated, offline), gsm8k, "
                        "gsm8k-platinum (downloaded here, once), or a local .jsonl/.parquet file or directory")
    parser.add_argument("--force", action="store_true", help="tokenize again even if already prepared")
    parser.add_argument("--evaluate", nargs="?", const="", metavar="CHECKPOINT_DIR",
                        help="val_accuracy of the adapter in CHECKPOINT_DIR (default $AUTORESEARCH_CHECKPOINT)")
    parser.add_argument("--evaluate-heldout", nargs="?", const="", metavar="CHECKPOINT_DIR",
                        help="heldout_accuracy on the test split (kept runs)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    set_target(target)
    for split, where in (("val", args.evaluate), ("test", args.evaluate_heldout)):
        if where is None:
            continue
        arkit.echo(f"eval_started: {time.time():.3f}")
        try:
            evaluate(where or None, split, extra_metrics)
        except EvaluationError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        return 0
    try:
        prepared = prepare(args.data, args.force)
        lines = [data_status_line(prepared)]
        if on_prepared is not None:
            lines += on_prepared(prepared, args)
        write_status(prepared, target, lines)
    except (PrepareError, arkit.KitError, arbase.BaseError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    arkit.echo("Done: ready to train (python train.py)")
    return 0
