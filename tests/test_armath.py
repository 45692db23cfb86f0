"""Tests for the math data kit, assets/armath.py: the answer convention, offline-math, local files, GSM8K from
its cache, the contamination guard, fingerprints and describe.

Run: .venv/bin/python -m pytest tests/test_armath.py -q   (CPU only, no network, a few seconds)

armath is loaded by path with its `import arkit` answered by the kit (tests/conftest.py), as a workspace does;
one test imports it from a workspace-like directory in a fresh interpreter. Hub data comes from parquet files
this file writes into a tmp cache, laid out as `download` writes them; the only fakes are the two hub calls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ASSETS, kit_module, load_by_path

am = load_by_path(ASSETS / "armath.py", "armath_under_test", {"arkit": kit_module()})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa(i: int, answer: int | None = None) -> dict:
    """A GSM8K-shaped row; answer None gives one whose gold does not parse."""
    n = i + 10
    if answer is None:
        return {"question": f"Question {i}: how many pens?", "answer": f"There are {n} pens."}
    return {"question": f"Question {i}: Tom has {n} pens and buys {answer - n} more. How many pens?",
            "answer": f"{n} + {answer - n} = <<{n}+{answer - n}={answer}>>{answer}\n#### {answer:,}"}


# ---------------------------------------------------------------------------
# The answer convention
# ---------------------------------------------------------------------------

GSM_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.mark.parametrize("text, want", [
    ("#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("#### 0.5", "0.5"),
    ("#### : 42", "42"),
    ("####:42", "42"),
    ("The answer is 42.", None),  # no #### and no box
    ("48/2 = <<48/2=24>>24", None),  # an annotation is not an answer
    (GSM_SOLUTION, "72"),  # multi-line, annotations ignored
    ("#### <<2+2=4>>4", "4"),
    ("#### 5\nwait, no\n#### 6", "6"),  # the last #### wins
    (r"\boxed{3} or rather \boxed{4}", "4"),  # the last box wins
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{5}" + "\n#### 6", "6"),  # whichever marker comes last
    ("#### 6\n" + r"\boxed{5}", "5"),
    (r"\boxed{3} and then \boxed{1", "3"),  # a box cut off by the length limit is no answer
    (r"\boxed{12", None),
    ("#### ", None),
    (r"\boxed{ }", None),
])
def test_extract_answer_edge_cases(text, want):
    assert am.extract_answer(text) == want


@pytest.mark.parametrize("pred, gold, want", [
    ("0.5", ".50", True),
    ("7", "7.0", True),
    ("-5", "-5", True),
    ("5", "-5", False),
    ("12", "12.5", False),
    ("$18", "18", True),
    ("18.", "18", True),
    ("Paris", "paris", True),
    ("x + 1", "x  +  1", True),
    ("", "0", False),
    (None, "5", False),
])
def test_answers_match(pred, gold, want):
    assert am.answers_match(pred, gold) is want


def test_a_gsm8k_solution_matches_its_own_gold():
    assert am.answers_match(am.extract_answer("#### 1,234"), "1234")
    assert am.answers_match(am.extract_answer(GSM_SOLUTION), am.extract_answer("#### 72.0"))


def test_normalize_question():
    assert am.normalize_question("Janet’s ducks lay 1,000 eggs.") == am.normalize_question("janet's  ducks\nlay 1000 eggs")
    assert am.normalize_question("Ｔom has 3 pens!") == "tom has 3 pens"  # NFKC folds the full-width T
    assert am.normalize_question("It costs 3.5 dollars") != am.normalize_question("It costs 35 dollars")


# ---------------------------------------------------------------------------
# offline-math
# ---------------------------------------------------------------------------

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = <<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_offline_math_problems_are_verifiable_in_gsm8k_format():
    """Every step line is `a op b = <<a op b=c>>c` with c right (whole, >= 0) and chained; the last line is
    `#### c`; the gold is what extract_answer reads; the levels' step counts and operand sizes hold."""
    splits = am.load_splits("offline-math:train=2000,val=100,test=100,seed=3")
    steps_of_level = {1: 1, 2: 2, 3: 1, 4: 3}
    seen_levels = set()
    for split in splits.values():
        for it in split.items:
            *lines, last = it.solution.split("\n")
            results = []
            for line in lines:
                m = STEP.fullmatch(line)
                assert m, line
                a, op, b, a2, op2, b2, c, c2 = m.groups()
                assert (a, op, b, c) == (a2, op2, b2, c2)
                value = OPS[op](int(a), int(b))
                assert value == int(c) >= 0, line
                results.append(int(c))
            assert last == f"#### {results[-1]}" and it.gold == am.extract_answer(it.solution) == str(results[-1])
            assert len(lines) == steps_of_level[it.level]
            if it.level == 1:
                assert all(int(x) <= 9 for x in STEP.fullmatch(lines[0]).groups()[:3:2])  # single-digit operands
            seen_levels.add(it.level)
    assert seen_levels == {1, 2, 3, 4}


def test_offline_math_splits_are_disjoint_deterministic_and_sized():
    spec = "offline-math:levels=1-2,train=3000,val=150,test=200,seed=0"
    splits = am.load_splits(spec)
    assert {n: len(s.items) for n, s in splits.items()} == {"train": 3000, "val": 150, "test": 200}
    norms = {n: [am.normalize_question(it.question) for it in s.items] for n, s in splits.items()}
    for n, qs in norms.items():
        assert len(set(qs)) == len(qs), f"duplicates within {n}"
        assert {it.level for it in splits[n].items} <= {1, 2}
    assert not set(norms["train"]) & set(norms["val"])
    assert not set(norms["train"]) & set(norms["test"])
    assert not set(norms["val"]) & set(norms["test"])
    assert am.contaminated(splits["test"].items, splits["train"].items) == set()

    am._offline_splits.cache_clear()  # generated afresh, the same items
    assert am.load_splits(spec) == splits
    # Another seed draws other problems, but a question's split is its hash: still disjoint from seed 0's.
    other = am.load_splits("offline-math:levels=1-2,train=3000,val=150,test=200,seed=1")
    assert other["train"].items != splits["train"].items
    assert not {am.normalize_question(it.question) for it in other["train"].items} & set(norms["test"])


def test_a_question_has_one_split_whatever_the_seed():
    """Level 1's space is small enough that seeds redraw the same questions: each lands in one split only."""
    where: dict[str, set[str]] = {}
    for seed in range(6):
        for name, split in am.load_splits(f"offline-math:levels=1,train=3000,val=50,test=200,seed={seed}").items():
            for it in split.items:
                where.setdefault(am.normalize_question(it.question), set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert sum(len(n) for n in where.values()) < 6 * 3250  # the seeds did redraw questions


def test_a_split_does_not_depend_on_the_other_sizes():
    big = am.load_splits("offline-math:train=400,val=30,test=60")
    small = am.load_splits("offline-math:train=100,val=5,test=0")
    assert small["train"].items == big["train"].items[:100]
    assert small["val"].items == big["val"].items[:5] and small["test"].items == ()


def test_the_default_spec_is_quick_to_generate():
    am._offline_splits.cache_clear()
    t0 = time.perf_counter()
    splits = am.load_splits("offline-math")
    elapsed = time.perf_counter() - t0
    assert {n: len(s.items) for n, s in splits.items()} == {"train": 20000, "val": 200, "test": 500}
    assert elapsed < 3.0, f"{elapsed:.2f}s"  # ~0.5 s measured on one core here


@pytest.mark.parametrize("spec, says", [
    ("offline-math:levels=0-9", "levels must lie in 1-4"),
    ("offline-math:size=3", "use levels=A-B"),
    ("offline-math:train=many", "not a number"),
    ("gsm8k:train=5", "takes no options"),
    ("no-such-data", "unknown data 'no-such-data'"),
])
def test_bad_specs_say_what_to_use(spec, says):
    with pytest.raises(am.DataError, match=re.escape(says)) as e:
        am.load_splits(spec)
    assert "\n" not in str(e.value)


def test_canonical_spec():
    assert am.parse_spec("offline-math").text == "offline-math:levels=1-4,train=20000,val=200,test=500,seed=0"
    assert am.parse_spec("offline-math:levels=2, seed=5").text == "offline-math:levels=2,train=20000,val=200,test=500,seed=5"


# ---------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------


def test_a_local_jsonl_file_is_carved_into_train_and_val_and_skips_bad_gold(tmp_path):
    rows = [qa(i, 20 + i) for i in range(200)] + [qa(1000), qa(1001)]  # two rows without a gold answer
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    splits = am.load_splits(str(path))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert train.skipped == 2 and val.skipped == 0 and test.items == ()
    assert len(train.items) + len(val.items) == 200 and 3 <= len(val.items) <= 25  # ~5% by hash
    assert not {it.id for it in train.items} & {it.id for it in val.items}
    first = next(it for it in train.items + val.items if it.id == "mine.jsonl#0")
    assert (first.question, first.solution, first.gold) == (rows[0]["question"], rows[0]["answer"], "20")
    assert next(it for it in train.items + val.items if it.id == "mine.jsonl#190").gold == "210"  # "#### 210"
    # The carve is a hash of the question: the same rows in another order fall the same way.
    shuffled = write_jsonl(tmp_path / "mine2.jsonl", rows[::-1])
    again = am.load_splits(str(shuffled))
    assert {it.question for it in again["val"].items} == {it.question for it in val.items}


def test_the_three_row_shapes(tmp_path):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "What is 2+2?", "completion": "2+2 = 4\n#### 4"}] * 1
                     + [{"prompt": "And 3+3?", "completion": "six"}])
    items = am.load_splits(str(pc))["train"].items + am.load_splits(str(pc))["val"].items
    assert [(it.question, it.gold) for it in items] == [("What is 2+2?", "4")]
    assert am.load_splits(str(pc))["train"].skipped == 1

    chats = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 5*5?"},
                      {"role": "assistant", "content": "\\boxed{25}"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "#### 2"}]},
        {"messages": [{"role": "user", "content": "no answer yet"}]},
    ]
    table = pa.Table.from_pylist(chats)
    pq.write_table(table, tmp_path / "chat.parquet")
    splits = am.load_splits(str(tmp_path / "chat.parquet"))
    got = sorted((it.question, it.solution, it.gold) for it in splits["train"].items + splits["val"].items)
    assert got == [("Hi\n\nWhat is 1+1?", "#### 2", "2"), ("What is 5*5?", "\\boxed{25}", "25")]
    assert splits["train"].skipped == 1

    trl = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": [{"role": "user", "content": "7-2?"}],
                                                 "completion": [{"role": "assistant", "content": "#### 5"}]}])
    s = am.load_splits(str(trl))
    assert [(it.question, it.gold) for it in s["train"].items + s["val"].items] == [("7-2?", "5")]


def test_a_file_without_known_columns_or_with_a_broken_line_is_an_error(tmp_path):
    with pytest.raises(am.DataError, match="no question/answer, prompt/completion or messages columns"):
        am.load_splits(str(write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(qa(1, 5)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(am.DataError, match=r"bad.jsonl:2: not a JSON object"):
        am.load_splits(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(am.DataError, match="holds no train.jsonl or train.parquet"):
        am.load_splits(str(empty))


def test_the_contamination_guard_drops_eval_items_seen_in_train(tmp_path):
    """val and test repeat two train questions (in other case and punctuation): they are dropped and counted,
    the rest kept; switched off, they would be scored."""
    d = tmp_path / "data"
    d.mkdir()
    train = [qa(i, 30 + i) for i in range(20)]
    write_jsonl(d / "train.jsonl", train)
    leaked = {"question": train[3]["question"].upper().replace("?", " ?!"), "answer": "#### 33"}
    write_jsonl(d / "val.jsonl", [qa(100, 5), leaked, qa(101)])
    pq.write_table(pa.Table.from_pylist([qa(200, 7), {"question": train[4]["question"], "answer": "#### 34"}, qa(201, 8)]),
                   d / "test.parquet")
    splits = am.load_splits(str(d))
    assert [it.id for it in splits["val"].items] == ["val.jsonl#0"]
    assert (splits["val"].contaminated, splits["val"].skipped) == (1, 1)
    assert [it.id for it in splits["test"].items] == ["test.parquet#0", "test.parquet#2"]
    assert splits["test"].contaminated == 1 and len(splits["train"].items) == 20
    assert am.contaminated(am.load_splits(str(d))["train"].items[3:5], splits["train"].items) == {
        "train.jsonl#3", "train.jsonl#4"}
    assert am.describe(str(d))["splits"] == {
        "train": {"rows": 20, "skipped": 0, "contaminated": 0},
        "val": {"rows": 1, "skipped": 1, "contaminated": 1},
        "test": {"rows": 2, "skipped": 0, "contaminated": 1},
    }


# ---------------------------------------------------------------------------
# GSM8K and GSM8K-Platinum, from the cache
# ---------------------------------------------------------------------------


def gsm8k_tables() -> dict[str, list[dict]]:
    train = [qa(i, 40 + i) for i in range(120)] + [qa(500)]
    test = [qa(300 + i, 60 + i) for i in range(10)] + [train[7]]  # one test question also in train
    platinum = [dict(r, cleaning_status=s) for r, s in zip(test[:6], ["consensus", "verified", "revised",
                                                                     "rejected", "consensus", "verified"], strict=True)]
    return {"openai/gsm8k/main/train-00000-of-00001.parquet": train,
            "openai/gsm8k/main/test-00000-of-00001.parquet": test,
            "madrylab/gsm8k-platinum/main/test-00000-of-00001.parquet": platinum}


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub's two calls, answered from gsm8k_tables(); what download does with them is real."""
    tables, calls = gsm8k_tables(), []

    def revision(repo, revision=None, **_):
        calls.append(("revision", repo))
        return "c0ffee" * 6 + "beef"

    def download(repo, filename, revision, local_dir, **_):
        calls.append(("download", f"{repo}/{filename}"))
        out = os.path.join(local_dir, filename)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(tables[f"{repo}/{filename}"]), out)
        return out

    monkeypatch.setattr(am.arkit, "hub_revision", revision)
    monkeypatch.setattr(am.arkit, "hub_download", download)
    return calls


def test_gsm8k_is_read_from_what_download_wrote(tmp_path, fake_hub):
    cache = str(tmp_path / "cache")
    with pytest.raises(am.DataError, match=r"gsm8k is not in .*: run prepare first \(`python prepare.py --data gsm8k`\)"):
        am.load_splits("gsm8k", cache_dir=cache)
    assert fake_hub == []  # load_split never downloads

    assert am.download("gsm8k", cache) == [os.path.join(cache, "math", "gsm8k")]
    manifest = json.loads((tmp_path / "cache/math/gsm8k/manifest.json").read_text())
    assert manifest["repo"] == "openai/gsm8k" and set(manifest["files"]) == {
        "main/train-00000-of-00001.parquet", "main/test-00000-of-00001.parquet"}
    splits = am.load_splits("gsm8k", cache_dir=cache)
    assert splits["train"].skipped == 1 and len(splits["train"].items) + len(splits["val"].items) == 120
    assert 1 <= len(splits["val"].items) <= 15
    assert [it.id for it in splits["test"].items] == [f"gsm8k/test#{i}" for i in range(10)]
    assert splits["test"].contaminated == 1  # the test copy of train row 7

    n = len(fake_hub)
    am.download("gsm8k", cache)
    assert len(fake_hub) == n  # already there: nothing fetched

    am.download("gsm8k-platinum", cache)
    assert ("download", "madrylab/gsm8k-platinum/main/test-00000-of-00001.parquet") in fake_hub
    plat = am.load_splits("gsm8k-platinum", cache_dir=cache)
    assert plat["train"] == splits["train"] and plat["val"] == splits["val"]
    assert [it.id for it in plat["test"].items] == [f"gsm8k-platinum/test#{i}" for i in (0, 1, 2, 4, 5)]  # 3 rejected
    info = am.describe("gsm8k-platinum", cache_dir=cache)
    assert info["source"] == f"openai/gsm8k@{'c0ffee' * 6}beef, madrylab/gsm8k-platinum@{'c0ffee' * 6}beef"
    assert info["splits"]["test"]["rows"] == 5 and info["fields"] == ["question", "answer"]


def test_download_offline_fails_at_once_with_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # never the real hub
    t0 = time.perf_counter()
    with pytest.raises(am.arkit.KitError) as e:
        am.download("gsm8k", str(tmp_path))
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(e.value) and str(e.value).endswith(am.OFFLINE_HINT)
    assert am.download("offline-math", str(tmp_path)) == []  # nothing to fetch


# ---------------------------------------------------------------------------
# Fingerprints, describe, and the kit file on its own
# ---------------------------------------------------------------------------


def test_the_fingerprint_follows_the_content(tmp_path):
    """It covers every item (ids name the file, so the file's name counts) but not where the file lies."""
    rows = [qa(i, 20 + i) for i in range(50)]
    b = write_jsonl(tmp_path / "b.jsonl", rows)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(b, tmp_path / "elsewhere" / "b.jsonl")
    fb = am.data_fingerprint(str(b))
    assert re.fullmatch(r"[0-9a-f]{16}", fb) and fb == am.data_fingerprint(str(tmp_path / "elsewhere" / "b.jsonl"))
    write_jsonl(b, rows[:-1] + [qa(49, 99)])
    assert am.data_fingerprint(str(b)) != fb
    assert am.data_fingerprint("offline-math:train=500,seed=1") != am.data_fingerprint("offline-math:train=500")
    assert am.data_fingerprint("offline-math:train=600") == am.describe("offline-math:train=600")["fingerprint"]


def test_describe_offline_math():
    info = am.describe("offline-math:levels=1,train=500,val=20,test=30")
    assert info == {
        "spec": "offline-math:levels=1,train=500,val=20,test=30,seed=0",
        "kind": "offline-math",
        "source": "generated by armath",
        "format": "question/answer",
        "fields": ["question", "answer"],
        "splits": {"train": {"rows": 500, "skipped": 0, "contaminated": 0},
                   "val": {"rows": 20, "skipped": 0, "contaminated": 0},
                   "test": {"rows": 30, "skipped": 0, "contaminated": 0}},
        "fingerprint": am.data_fingerprint("offline-math:levels=1,train=500,val=20,test=30"),
    }


def test_the_kit_file_imports_beside_arkit_alone(tmp_path):
    """In a workspace armath.py sits beside arkit.py and imports neither torch nor the harness."""
    for name in ("armath.py", "arkit.py"):
        shutil.copy(ASSETS / name, tmp_path / name)
    code = ("import sys, armath; s = armath.load_split('offline-math:levels=1,train=50,val=5,test=5', 'val'); "
            "print(len(s.items), s.items[0].solution.endswith('#### ' + s.items[0].gold), "
            "sorted(m for m in ('torch', 'harness', 'numpy', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "5 True []"
