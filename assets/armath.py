"""
The math data kit: verifiable math word problems for the post-training targets, in one file.

`autoresearch init` copies this file into a post-training workspace as `armath.py` (a fixed, hashed kit
module, like arkit.py): the target's prepare.py and its evaluation read their data through it.

One answer convention everywhere (reference/posttrain.md §1.7):
    extract_answer(text)   the answer marker that comes last in the text: the last `\\boxed{...}` (braces
                           matched, so `\\boxed{\\frac{1}{2}}` is whole) or the last `#### N` (the rest of
                           that line), then commas stripped, a leading `:` stripped, `<<a+b=c>>` calculator
                           annotations dropped, whitespace trimmed; None when there is neither or it is empty.
                           Sources: GSM8K's `#### (\\-?[0-9\\.\\,]+)` with commas removed (openai/grade-school-math
                           dataset.py); tinker-cookbook's extract_gsm8k_final_answer (leading `:`, commas) and
                           extract_boxed (the last box, a brace-matching stack).
    answers_match(p, g)    numerically equal when both are decimal numbers (`7` == `7.0`, `0.5` == `.50`),
                           else equal as strings after trimming, lowercasing, a leading `$` and a trailing
                           `.`; None (no answer) never matches.
A row whose gold answer does not parse is skipped and counted (Split.skipped), never trained on or scored.

Data specs (reference/posttrain.md §4):
    offline-math[:levels=1-4,train=20000,val=200,test=500,seed=0]
                  generated word problems in GSM8K's answer format (step lines with <<a+b=c>> annotations, a
                  final `#### N`), levels 1 (one single-digit addition or subtraction) to 4 (three mixed steps).
                  A problem's split is a hash of its normalized question, so train, val and test are disjoint
                  by construction, whatever the seed or sizes; the seed picks which problems are drawn.
    gsm8k         openai/gsm8k, config main: train split by a hash of the question into train (95%) and val
                  (5%); its test split is the held-out metric. `download` fetches it; `load_split` only reads
                  the cache, <cache>/math/gsm8k/.
    gsm8k-platinum  train/val as gsm8k; test is madrylab/gsm8k-platinum (1209 cleaned GSM8K test questions,
                  `rejected` rows dropped), the held-out confirmation.
    PATH          a local .jsonl or .parquet file (train, with val carved out by hash; no test) or a directory
                  holding train.* and optionally val.* (or validation.*) and test.*; rows are question/answer
                  (GSM8K shape), prompt/completion, or chat `messages` (the last assistant message is the
                  completion, the user turns before it the question).

Contamination guard: val and test items whose normalized question (normalize_question) also appears in the
spec's train split are removed and counted (Split.contaminated).

API (what prepare.py, `advise` and `status` call):
    load_splits(spec, cache_dir=None) -> {"train": Split, "val": Split, "test": Split}   each file read once
    load_split(spec, split, cache_dir=None) -> Split      Split(name, items: tuple[Item, ...], skipped, contaminated)
    download(spec, cache_dir=None) -> [dirs]              the only thing that touches the network (hub specs)
    data_fingerprint(spec) -> 16 hex, describe(spec) -> dict, parse_spec(spec) -> DataSpec (canonical .text)
    extract_answer, answers_match, normalize_question, contaminated

Standard library, pyarrow and arkit only (huggingface_hub through arkit, inside `download`). Generating the
default offline-math splits takes about 0.5 s, GSM8K's train file 0.25 s; nothing is generated or read at import.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Literal

import arkit

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")

VAL_PERCENT = 5  # of a train file (gsm8k's, a local file's) carved out as val, by a hash of the question
OFFLINE_BANDS = {"val": 5, "test": 5}  # offline-math's hash bands (the rest is train)
SALT = "armath"  # keeps these hash draws independent of other users of arkit.band on the same text


class DataError(arkit.KitError):
    """A data spec or file that cannot be used, with what to do instead: one line, no traceback."""


@dataclass(frozen=True)
class Item:
    """One problem: the prompt side (question), the trained side (solution: steps and the final answer in
    the convention above) and the gold answer extracted from it."""

    id: str
    question: str
    solution: str
    gold: str
    level: int | None = None


@dataclass(frozen=True)
class Split:
    name: str
    items: tuple[Item, ...]
    skipped: int  # rows whose gold answer did not parse (or that had no completion): never used
    contaminated: int = 0  # val/test items dropped because their normalized question is in the train split


Splits = dict[SplitName, Split]


# ---------------------------------------------------------------------------
# The answer convention
# ---------------------------------------------------------------------------

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{")
_ANNOTATION = re.compile(r"<<[^>]*>>")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def _last_box(text: str) -> tuple[int, str] | None:
    """(position, content) of the last complete \\boxed{...}: a box whose braces never close (a cut-off
    generation) is no answer, and an earlier complete one stands."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth, i = 1, m.end()
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return m.start(), text[m.end() : i]
            i += 1
    return None


def _clean(raw: str) -> str | None:
    value = _ANNOTATION.sub("", raw).replace(",", "").strip()
    if value.startswith(":"):
        value = value[1:].strip()
    return value or None


def extract_answer(text: str) -> str | None:
    """The final answer in `text` under the one convention (module docstring); None when there is none."""
    hashes = list(_HASHES.finditer(text))
    candidates = [(m.start(), m.group(1)) for m in hashes[-1:]]
    box = _last_box(text)
    if box is not None:
        candidates.append(box)
    if not candidates:
        return None
    return _clean(max(candidates)[1])


def _as_number(s: str) -> Decimal | None:
    return Decimal(s) if _NUMBER.fullmatch(s) else None  # the pattern is a subset of Decimal's syntax


def _normal_answer(s: str) -> str:
    return " ".join(s.lower().split()).removeprefix("$").removesuffix(".").strip()


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer (extract_answer of a generation) equals the gold one: numerically when
    both are decimal numbers (exact, no float rounding: Decimal), else as normalized strings."""
    if pred is None:
        return False
    p, g = _normal_answer(pred), _normal_answer(gold)
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    return p == g


# ---------------------------------------------------------------------------
# Questions: normalization and the contamination guard
# ---------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_NOT_WORD = re.compile(r"[\W_]+")  # runs of punctuation, symbols and whitespace, ASCII or not


@functools.lru_cache(maxsize=1 << 16)  # a load normalizes each question two or three times (carve, guard)
def normalize_question(text: str) -> str:
    """The form two questions are compared in: Unicode-compatibility folded (NFKC), lowercased, thousands
    commas dropped, punctuation and symbols turned into spaces, whitespace collapsed. "Janet’s ducks lay
    1,000 eggs." and "janet's  ducks lay 1000 eggs" are the same question."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = _THOUSANDS.sub("", text.lower()) if "," in text else text.lower()
    return _NOT_WORD.sub(" ", text).strip()


def contaminated(eval_items: Iterable[Item], train_items: Iterable[Item]) -> set[str]:
    """The ids of the evaluation items whose normalized question also appears among the training items."""
    return _seen_in(eval_items, {normalize_question(it.question) for it in train_items})


def _seen_in(items: Iterable[Item], questions: set[str]) -> set[str]:
    return {it.id for it in items if normalize_question(it.question) in questions}


def _guard(split: Split, train_questions: set[str]) -> Split:
    bad = _seen_in(split.items, train_questions)
    if not bad:
        return split
    kept = tuple(it for it in split.items if it.id not in bad)
    return replace(split, items=kept, contaminated=split.contaminated + len(bad))


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------

Kind = Literal["offline-math", "gsm8k", "gsm8k-platinum", "local"]


@dataclass(frozen=True)
class OfflineOptions:
    levels: tuple[int, ...] = (1, 2, 3, 4)
    train: int = 20000
    val: int = 200
    test: int = 500
    seed: int = 0

    def canonical(self) -> str:
        lv = f"{self.levels[0]}-{self.levels[-1]}" if len(self.levels) > 1 else str(self.levels[0])
        return f"offline-math:levels={lv},train={self.train},val={self.val},test={self.test},seed={self.seed}"


@dataclass(frozen=True)
class DataSpec:
    kind: Kind
    text: str  # canonical: offline-math with every option, a builtin's name, or an absolute path
    offline: OfflineOptions | None = None
    path: str | None = None


def _parse_offline(options: str) -> OfflineOptions:
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in options.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in OfflineOptions.__dataclass_fields__:
            raise DataError(f"offline-math option {part!r}: use levels=A-B, train=N, val=N, test=N, seed=N")
        try:
            if key == "levels":
                lo, _, hi = value.partition("-")
                values[key] = tuple(range(int(lo), int(hi or lo) + 1))
            else:
                values[key] = int(value)
        except ValueError:
            raise DataError(f"offline-math option {part!r}: not a number") from None
    opts = OfflineOptions(**values)  # type: ignore[arg-type]
    if not opts.levels or not set(opts.levels) <= set(_LEVELS):
        raise DataError(f"offline-math levels must lie in {min(_LEVELS)}-{max(_LEVELS)}, not {options!r}")
    if min(opts.train, opts.val, opts.test) < 0:
        raise DataError("offline-math split sizes must be >= 0")
    return opts


def parse_spec(spec: str) -> DataSpec:
    """What a --data value names; raises DataError for an unknown name or a missing path."""
    name, _, options = spec.partition(":")
    if name == "offline-math":
        opts = _parse_offline(options)
        return DataSpec("offline-math", opts.canonical(), offline=opts)
    if name in ("gsm8k", "gsm8k-platinum"):
        if options:
            raise DataError(f"{name} takes no options, not {options!r}")
        return DataSpec(name, name)  # type: ignore[arg-type]
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path) or (os.path.isfile(path) and path.endswith((".jsonl", ".parquet"))):
        return DataSpec("local", path, path=path)
    raise DataError(
        f"unknown data {spec!r}: use offline-math, gsm8k, gsm8k-platinum, or the path of a .jsonl/.parquet "
        "file or of a directory holding train.jsonl (or .parquet)"
    )


def cache_root(cache_dir: str | None = None) -> str:
    return cache_dir or os.environ.get("AUTORESEARCH_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "autoresearch"
    )


# ---------------------------------------------------------------------------
# offline-math: generated problems
# ---------------------------------------------------------------------------
# Solutions are short and regular on purpose (one `a op b = <<a op b=c>>c` line per step): a tiny model
# learns the format within a CPU budget, and the arithmetic is what remains to learn.

_NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Finn", "Gia", "Hana", "Ivan", "Jade", "Kai", "Leo", "Mia",
          "Noah", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Zoe")
_THINGS = ("apples", "pens", "books", "cards", "shells", "stamps", "coins", "eggs", "cups", "toys", "beads",
           "rocks", "plums", "balls", "kites", "hats")

Problem = tuple[str, list[tuple[int, str, int, int]]]  # question, steps (a, op, b, result)


def _step(a: int, op: str, b: int) -> tuple[int, str, int, int]:
    c = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b
    return a, op, b, c


def _level1(r: random.Random, n: str, m: str, o: str) -> Problem:
    a, b = r.randint(2, 9), r.randint(2, 9)  # from 2: no "1 apples"
    t = r.randrange(4)
    if t == 0:
        return f"{n} has {a} {o}. {n} gets {b} more {o}. How many {o} does {n} have now?", [_step(a, "+", b)]
    if t == 1:
        return f"{n} has {a} {o} and {m} has {b} {o}. How many {o} do they have in total?", [_step(a, "+", b)]
    a, b = max(a, b), min(a, b)
    if t == 2:
        return f"{n} has {a} {o}. {n} gives away {b} {o}. How many {o} does {n} have left?", [_step(a, "-", b)]
    return f"{n} had {a} {o} and lost {b} of them. How many {o} are left?", [_step(a, "-", b)]


def _level2(r: random.Random, n: str, m: str, o: str) -> Problem:
    a, b, c = r.randint(2, 20), r.randint(2, 20), r.randint(2, 20)
    t = r.randrange(3)
    if t == 0:
        c = min(c, a + b)
        q = f"{n} has {a} {o}. {n} buys {b} more and then gives {c} to {m}. How many {o} does {n} have now?"
        s1 = _step(a, "+", b)
        return q, [s1, _step(s1[3], "-", c)]
    if t == 1:
        q = f"{n} has {a} {o}, {m} has {b} {o} and their friend has {c} {o}. How many {o} do they have altogether?"
        s1 = _step(a, "+", b)
        return q, [s1, _step(s1[3], "+", c)]
    a, b = max(a, b), min(a, b)
    q = f"{n} had {a} {o}. {n} lost {b} of them and then found {c} more. How many {o} does {n} have now?"
    s1 = _step(a, "-", b)
    return q, [s1, _step(s1[3], "+", c)]


def _level3(r: random.Random, n: str, m: str, o: str) -> Problem:
    a, b = r.randint(2, 12), r.randint(2, 12)
    t = r.randrange(3)
    if t == 0:
        return f"{n} has {a} bags with {b} {o} in each bag. How many {o} does {n} have?", [_step(a, "*", b)]
    if t == 1:
        return f"Each box holds {b} {o}. How many {o} are in {a} boxes?", [_step(b, "*", a)]
    q = f"{n} shares {a * b} {o} equally among {a} friends. How many {o} does each friend get?"
    return q, [_step(a * b, "/", a)]


def _level4(r: random.Random, n: str, m: str, o: str) -> Problem:
    a, b, c, d = r.randint(2, 12), r.randint(2, 12), r.randint(2, 30), r.randint(2, 30)
    t = r.randrange(3)
    if t == 0:
        s1 = _step(a, "*", b)
        c = min(c, s1[3])
        q = (f"{n} buys {a} packs of {o} with {b} {o} in each pack. {n} gives {c} {o} to {m} and then finds "
             f"{d} more. How many {o} does {n} have now?")
        s2 = _step(s1[3], "-", c)
        return q, [s1, s2, _step(s2[3], "+", d)]
    if t == 1:
        total = a * b
        x = r.randint(2, total - 2)
        d = r.randint(1, b - 1)
        q = (f"{n} has {x} {o} and {m} has {total - x} {o}. They put them together and share them equally "
             f"among {a} kids. Then each kid gives away {d} of them. How many {o} does each kid have now?")
        s1 = _step(x, "+", total - x)
        s2 = _step(total, "/", a)
        return q, [s1, s2, _step(s2[3], "-", d)]
    s1 = _step(a, "*", b)
    c = min(c, s1[3])
    q = (f"{n} earns {a} dollars a day for {b} days, spends {c} dollars and then earns {d} more dollars. "
         f"How many dollars does {n} have?")
    s2 = _step(s1[3], "-", c)
    return q, [s1, s2, _step(s2[3], "+", d)]


_LEVELS: dict[int, Callable[[random.Random, str, str, str], Problem]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4,
}


def _solution(steps: Sequence[tuple[int, str, int, int]]) -> str:
    lines = [f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}" for a, op, b, c in steps]
    return "\n".join(lines) + f"\n#### {steps[-1][3]}"


def _problems(opts: OfflineOptions) -> Iterator[tuple[int, str, str, str]]:
    """An endless, seeded stream of (level, question, normalized question, solution)."""
    r = random.Random(opts.seed)
    while True:
        level = r.choice(opts.levels)
        n, m = r.sample(_NAMES, 2)
        question, steps = _LEVELS[level](r, n, m, r.choice(_THINGS))
        yield level, question, normalize_question(question), _solution(steps)


@functools.lru_cache(maxsize=16)
def _offline_splits(opts: OfflineOptions) -> Splits:
    """For each split, the first `size` distinct problems of one seeded stream that hash into it: one pass
    fills all three, and a split's items do not depend on the other splits' sizes."""
    want: dict[SplitName, int] = {"train": opts.train, "val": opts.val, "test": opts.test}
    items: dict[SplitName, list[Item]] = {s: [] for s in SPLITS}
    seen: set[str] = set()  # a question recurs only in its own split (its hash decides), so one set serves
    limit = 200 * sum(want.values()) + 10000  # a level's problem space is finite: stop with a message
    for drawn, (level, question, norm, solution) in enumerate(_problems(opts)):
        if all(len(items[s]) >= want[s] for s in SPLITS):
            break
        if drawn >= limit:
            got = ", ".join(f"{len(items[s])} {s}" for s in SPLITS)
            raise DataError(f"{opts.canonical()}: levels {opts.levels} gave only {got} distinct problems; ask for fewer")
        split: SplitName = arkit.split_of(norm, OFFLINE_BANDS, salt=SALT)  # type: ignore[assignment]
        if norm in seen or len(items[split]) >= want[split]:
            continue
        seen.add(norm)
        digest = hashlib.sha256(norm.encode()).hexdigest()[:12]
        items[split].append(Item(f"om{level}-{digest}", question, solution, solution.rsplit("#### ", 1)[1], level))
    return {s: Split(s, tuple(items[s]), skipped=0) for s in SPLITS}


# ---------------------------------------------------------------------------
# Rows from files: question/answer, prompt/completion, chat messages
# ---------------------------------------------------------------------------

Row = Mapping[str, object]


def _text(content: object) -> str:
    """A message's content: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _dicts(messages: object) -> list[dict]:
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _user_turns(msgs: list[dict]) -> str:
    return "\n\n".join(_text(m.get("content")) for m in msgs if m.get("role") == "user")


def _from_messages(messages: object) -> tuple[str, str] | None:
    """(question, completion) of a chat: the last assistant message, and the user turns before it."""
    msgs = _dicts(messages)
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    return _user_turns(msgs[:last]), _text(msgs[last].get("content"))


def _pair(row: Row, fmt: str) -> tuple[str, str] | None:
    """(question, completion) of a row in its file's format, or None when the row lacks them."""
    if fmt == "messages":
        return _from_messages(row.get("messages"))
    q, a = (row.get("question"), row.get("answer")) if fmt == "question/answer" else (row.get("prompt"), row.get("completion"))
    if isinstance(q, list):  # TRL's conversational prompt/completion: lists of messages
        q = _user_turns(_dicts(q))
    if isinstance(a, list):
        answer = _from_messages(a)
        a = answer[1] if answer else None
    return (q, a) if isinstance(q, str) and isinstance(a, str) else None


def _format_of(columns: Iterable[str], where: str) -> str:
    cols = set(columns)
    for fmt, need in (("question/answer", {"question", "answer"}), ("prompt/completion", {"prompt", "completion"}),
                      ("messages", {"messages"})):
        if need <= cols:
            return fmt
    raise DataError(f"{where}: no question/answer, prompt/completion or messages columns (has {', '.join(sorted(cols))})")


def _read_rows(path: str) -> tuple[list[dict], str]:
    """A file's rows and its format."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.to_pylist(), _format_of(table.column_names, path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: not a JSON object ({e})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: not a JSON object")
                rows.append(row)
    return rows, _format_of(rows[0] if rows else (), path)


def _items(rows: Iterable[dict], fmt: str, prefix: str, keep: Callable[[dict], bool] = lambda _: True) -> tuple[list[Item], int]:
    """Items of the rows that pass `keep`, and how many were skipped for want of a gold answer."""
    items, skipped = [], 0
    for i, row in enumerate(rows):
        if not keep(row):
            continue
        pair = _pair(row, fmt)
        gold = extract_answer(pair[1]) if pair else None
        if pair is None or gold is None:
            skipped += 1
            continue
        items.append(Item(f"{prefix}#{i}", pair[0], pair[1], gold))
    return items, skipped


def _carve(items: list[Item], skipped: int) -> tuple[Split, Split]:
    """(train, val) of one train file, by a hash of the normalized question: disjoint by construction."""
    def is_val(it: Item) -> bool:
        return arkit.split_of(normalize_question(it.question), {"val": VAL_PERCENT}, salt=SALT) == "val"

    val = tuple(it for it in items if is_val(it))
    ids = {it.id for it in val}
    return Split("train", tuple(it for it in items if it.id not in ids), skipped), Split("val", val, 0)


def _read_items(path: str, prefix: str | None = None, keep: Callable[[dict], bool] = lambda _: True) -> tuple[list[Item], int]:
    rows, fmt = _read_rows(path)
    return _items(rows, fmt, prefix or os.path.basename(path), keep)


def _whole(name: SplitName, found: tuple[list[Item], int]) -> Split:
    return Split(name, tuple(found[0]), found[1])


def _local_files(root: str) -> dict[str, str]:
    """split -> file of a local data directory (train.jsonl, val.parquet, validation.jsonl, test.jsonl ...)."""
    found: dict[str, str] = {}
    for split, stems in (("train", ("train",)), ("val", ("val", "validation", "valid")), ("test", ("test",))):
        for stem in stems:
            for ext in (".jsonl", ".parquet"):
                if split not in found and os.path.isfile(os.path.join(root, stem + ext)):
                    found[split] = os.path.join(root, stem + ext)
    if "train" not in found:
        raise DataError(f"{root} holds no train.jsonl or train.parquet")
    return found


def _local_splits(path: str) -> Splits:
    """A file: train and val carved from it, no test. A directory: its train, val (else carved from train)
    and test (else none) files."""
    files = _local_files(path) if os.path.isdir(path) else {"train": path}
    if "val" in files:
        train, val = _whole("train", _read_items(files["train"])), _whole("val", _read_items(files["val"]))
    else:
        train, val = _carve(*_read_items(files["train"]))
    test = _whole("test", _read_items(files["test"])) if "test" in files else Split("test", (), 0)
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------------
# GSM8K and GSM8K-Platinum (Hugging Face Hub, downloaded only by `download`)
# ---------------------------------------------------------------------------

HUB = {
    "gsm8k": ("openai/gsm8k", ("main/train-00000-of-00001.parquet", "main/test-00000-of-00001.parquet")),
    "gsm8k-platinum": ("madrylab/gsm8k-platinum", ("main/test-00000-of-00001.parquet",)),
}
OFFLINE_HINT = "Offline, use --data offline-math, or a local copy: --data /path/to/train.jsonl (GSM8K's shape)."


def hub_dir(name: str, cache_dir: str | None = None) -> str:
    """Where `download` puts a hub dataset: <cache>/math/<name>/, files at their repo paths."""
    return os.path.join(cache_root(cache_dir), "math", name)


def _hub_names(kind: Kind) -> list[str]:
    return {"gsm8k": ["gsm8k"], "gsm8k-platinum": ["gsm8k", "gsm8k-platinum"]}.get(kind, [])


def download(spec: str, cache_dir: str | None = None) -> list[str]:
    """Fetch what a hub spec needs into the cache, every file from the revision resolved now, and return the
    directories (none for offline-math or a local path). Each gets a manifest.json (repo, revision, file
    digests), written last, which `load_splits` requires. Already there: nothing is fetched. Offline: a
    DataError at once, saying what to use instead."""
    written = []
    for name in _hub_names(parse_spec(spec).kind):
        repo, files = HUB[name]
        out = hub_dir(name, cache_dir)
        if arkit.read_manifest(out) is None or not all(os.path.isfile(os.path.join(out, f)) for f in files):
            os.makedirs(out, exist_ok=True)
            revision = arkit.hub_revision(repo, offline_hint=OFFLINE_HINT)
            arkit.echo(f"Data: {repo}@{revision[:12]} into {out}")
            for f in files:
                arkit.hub_download(repo, f, revision, out, retry_hint=f"rerun prepare.py to resume. {OFFLINE_HINT}")
            digests = {f: arkit.file_digest([os.path.join(out, f)]) for f in files}
            arkit.write_manifest(out, {"repo": repo, "revision": revision, "files": digests})
        written.append(out)
    return written


def _hub_file(name: str, rel: str, cache_dir: str | None) -> str:
    out = hub_dir(name, cache_dir)
    if arkit.read_manifest(out) is None or not os.path.isfile(os.path.join(out, rel)):
        raise DataError(f"{name} is not in {out}: run prepare first (`python prepare.py --data {name}`)")
    return os.path.join(out, rel)


def _hub_splits(kind: Kind, cache_dir: str | None) -> Splits:
    train_file, test_file = HUB["gsm8k"][1]
    train, val = _carve(*_read_items(_hub_file("gsm8k", train_file, cache_dir), "gsm8k/train"))
    if kind == "gsm8k":
        test = _whole("test", _read_items(_hub_file("gsm8k", test_file, cache_dir), "gsm8k/test"))
    else:  # the platinum repo has dropped its rejected rows; drop any that a revision brings back
        path = _hub_file("gsm8k-platinum", HUB["gsm8k-platinum"][1][0], cache_dir)
        test = _whole("test", _read_items(path, "gsm8k-platinum/test", lambda r: r.get("cleaning_status") != "rejected"))
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------


def load_splits(spec: str, *, cache_dir: str | None = None) -> Splits:
    """train, val and test of a data spec, read (never downloaded: see `download`), each file once. val and
    test come without the items whose normalized question is in train (counted in Split.contaminated)."""
    ds = parse_spec(spec)
    if ds.offline is not None:  # a problem's split is a hash of its normalized question: nothing to guard
        return dict(_offline_splits(ds.offline))  # a copy: the cached dict stays as generated
    splits = _local_splits(ds.path) if ds.path is not None else _hub_splits(ds.kind, cache_dir)
    train = {normalize_question(it.question) for it in splits["train"].items}
    return {s: split if s == "train" else _guard(split, train) for s, split in splits.items()}


def load_split(spec: str, split: SplitName, *, cache_dir: str | None = None) -> Split:
    """One split of load_splits. An absent test split (a local file, a directory without test.*) is empty."""
    if split not in SPLITS:
        raise DataError(f"no split {split!r}: use one of {', '.join(SPLITS)}")
    return load_splits(spec, cache_dir=cache_dir)[split]


def _fingerprint(splits: Splits) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        s = splits[name]
        h.update(f"{name}\0{s.skipped}\0{s.contaminated}\n".encode())
        for it in s.items:
            h.update("\0".join((it.id, it.question, it.solution, it.gold, str(it.level))).encode() + b"\n")
    return h.hexdigest()[:16]


def data_fingerprint(spec: str, *, cache_dir: str | None = None) -> str:
    """16 hex digits over the content of every split (ids, questions, solutions, golds, in order, and the
    counts): equal exactly when the data a session trains and is scored on is. A local file's ids carry its
    name, so a renamed file is other data; a moved one is not."""
    return _fingerprint(load_splits(spec, cache_dir=cache_dir))


def describe(spec: str, *, cache_dir: str | None = None) -> dict:
    """What a spec is, for `advise` and `status`: the canonical spec, its source, the row format and fields,
    per split the items, skipped rows (no gold answer) and contaminated items dropped, and the fingerprint."""
    ds = parse_spec(spec)
    splits = load_splits(spec, cache_dir=cache_dir)
    if ds.path is not None:
        source, fmt = ds.path, _read_rows(ds.path if os.path.isfile(ds.path) else _local_files(ds.path)["train"])[1]
    elif ds.kind == "offline-math":
        source, fmt = "generated by armath", "question/answer"
    else:
        revisions = [(HUB[n][0], (arkit.read_manifest(hub_dir(n, cache_dir)) or {}).get("revision")) for n in _hub_names(ds.kind)]
        source, fmt = ", ".join(f"{repo}@{rev}" for repo, rev in revisions), "question/answer"
    return {
        "spec": ds.text,
        "kind": ds.kind,
        "source": source,
        "format": fmt,
        "fields": fmt.split("/"),
        "splits": {n: {"rows": len(s.items), "skipped": s.skipped, "contaminated": s.contaminated} for n, s in splits.items()},
        "fingerprint": _fingerprint(splits),
    }
