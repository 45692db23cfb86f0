"""Tests for the offline `mutate` agent (harness/agents/mutate.py). Pure and fast (< 5 s).

Run: /work/main/.venv/bin/python -m pytest tests/test_mutate.py -q
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.agents.base import AgentError, PastRun, Proposal, ProposalContext, Status
from harness.agents.mutate import (
    Attempt,
    Change,
    Constant,
    MutateAgent,
    apply_changes,
    candidate_values,
    choose_changes,
    freeze_point,
    parse_constants,
    read_attempts,
)

BLOCK = '''"""A realistic train.py head."""
import os

# Hyperparameters (edit these)
TOTAL_BATCH_SIZE = 2**19      # tokens per optimizer step
DEVICE_BATCH = 2 ** 5         # sequences per micro-batch
MATRIX_LR   = 0.04            # Muon lr for the matrices
EMBEDDING_LR: float = 3e-4    # Adam lr for the embeddings
DEPTH: int = 8                # transformer layers
WINDOW = 12                   # attention window, in blocks
LOGIT_BIAS = -0.5             # negative on purpose
USE_QK_NORM = True            # normalize q and k
WARMDOWN_RATIO = 0.5          # fraction of the budget spent decaying
MODEL_NAME = "gpt"            # a string: ignored
BETAS = (0.9, 0.95)           # a tuple: ignored
HIDDEN = DEPTH * 64           # computed: ignored
SEED = 42                     # parsed, but never mutated
lower_case = 3                # not UPPER_CASE: ignored
if os.environ.get("CPU"):
    WINDOW = 4                # a device preset: WINDOW is then left alone
    CPU_ONLY = 1              # only bound inside a block: ignored


def build():
    LOCAL_DEPTH = 3           # a function local: ignored
    return LOCAL_DEPTH
'''


def test_parse_realistic_block() -> None:
    got = {n: c.value for n, c in parse_constants(BLOCK).items()}
    assert got == {
        "TOTAL_BATCH_SIZE": 2**19,
        "DEVICE_BATCH": 32,
        "MATRIX_LR": 0.04,
        "EMBEDDING_LR": 3e-4,
        "DEPTH": 8,
        "LOGIT_BIAS": -0.5,
        "USE_QK_NORM": True,
        "WARMDOWN_RATIO": 0.5,
        "SEED": 42,
    }
    assert type(got["USE_QK_NORM"]) is bool and type(got["DEPTH"]) is int
    assert parse_constants(BLOCK)["TOTAL_BATCH_SIZE"].power_of_two_form


def test_global_declaration_hides_a_constant() -> None:
    src = "LR = 0.1\nDEPTH = 2\ndef bump():\n    global LR\n    LR = 1.0\n"
    assert list(parse_constants(src)) == ["DEPTH"]


def test_rewrite_keeps_comments_alignment_and_style() -> None:
    cs = parse_constants(BLOCK)
    changes = [
        Change("TOTAL_BATCH_SIZE", 2**19, 2**18),
        Change("DEVICE_BATCH", 32, 64),
        Change("MATRIX_LR", 0.04, 0.05),
        Change("EMBEDDING_LR", 3e-4, 3.75e-4),
        Change("LOGIT_BIAS", -0.5, -0.625),
        Change("USE_QK_NORM", True, False),
    ]
    out = apply_changes(BLOCK, cs, changes)
    ast.parse(out)
    lines = out.splitlines()
    assert "TOTAL_BATCH_SIZE = 2**18      # tokens per optimizer step" in lines
    assert "DEVICE_BATCH = 2 ** 6         # sequences per micro-batch" in lines
    assert "MATRIX_LR   = 0.05            # Muon lr for the matrices" in lines
    assert "EMBEDDING_LR: float = 3.75e-4  # Adam lr for the embeddings" in lines  # two spaces stay
    assert "LOGIT_BIAS = -0.625           # negative on purpose" in lines
    assert "USE_QK_NORM = False           # normalize q and k" in lines
    # Everything but the six lines is untouched.
    assert sum(a != b for a, b in zip(BLOCK.splitlines(), lines, strict=True)) == 6


def test_rewrite_refuses_a_result_that_does_not_read_back() -> None:
    src = "LR = 0.1\n"
    wrong_span = Constant("LR", 0.1, "0.1", start=(1, 0), end=(1, 2), power_of_two_form=False)
    with pytest.raises(AgentError, match="refusing"):
        apply_changes(src, {"LR": wrong_span}, [Change("LR", 0.1, 0.2)])


def _const(name: str, value: Any, text: str | None = None) -> Constant:
    text = text or repr(value)
    return Constant(name, value, text, (1, 0), (1, len(text)), power_of_two_form=text.startswith("2**"))


@pytest.mark.parametrize(
    ("name", "value", "step", "level", "expected", "text"),
    [
        ("LR", 0.04, "up", 0, (0.08, 0.06, 0.05), None),  # ladder, largest step first
        ("LR", 0.04, "down", 2, (0.032, 0.02667, 0.02), None),  # paid off twice: smallest step first
        ("BATCH", 64, "up", 0, (128,), None),  # power of two: x2
        ("BATCH", 2, "down", 0, (1,), None),
        ("DEPTH", 8, "up", 0, (16, 9), None),  # a small power of two may be a count: x2, then +1
        ("BATCH", 8, "down", 0, (4,), "2**3"),  # written as a power: powers only
        ("DEPTH", 3, "up", 0, (4,), None),  # small int: +1
        ("DEPTH", 1, "down", 0, (), None),  # a size never reaches 0
        ("N_ZERO", 0, "up", 0, (1,), None),
        ("STEPS", 1000, "up", 0, (2000, 1500, 1250), None),  # large int: ladder, rounded
        ("FLAG", False, "up", 0, (True,), None),
        ("FLAG", False, "down", 0, (), None),
        ("WEIGHT_DECAY", 0.0, "up", 0, (0.01,), None),
        ("WEIGHT_DECAY", 0.0, "down", 0, (), None),
        ("BIAS", -0.5, "up", 0, (-0.25, -0.3333, -0.4), None),  # toward zero, sign kept
        ("BIAS", -0.5, "down", 0, (-1.0, -0.75, -0.625), None),
        ("WARMDOWN_RATIO", 0.6, "up", 0, (0.9, 0.75), None),  # a fraction stays <= 1: x2 is dropped
    ],
)
def test_candidate_values(
    name: str, value: Any, step: Any, level: int, expected: tuple[Any, ...], text: str | None
) -> None:
    got = candidate_values(_const(name, value, text), step, level)
    assert got == expected
    assert all(type(v) is type(value) for v in got)


def _attempt(run: int, kept: bool, base: Mapping[str, Any], **new: Any) -> Attempt:
    changes = tuple(Change(n, base[n], v) for n, v in new.items())
    return Attempt(run, kept, changes, freeze_point(dict(base) | new))


def test_read_attempts_skips_other_agents_and_malformed_asi() -> None:
    good = {
        "mutation": {"file": "train.py", "changes": [{"name": "LR", "old": 0.1, "new": 0.2}]},
        "point": {"LR": 0.2},
    }
    runs = [
        PastRun(1, "keep", 1.0, "baseline", {"hypothesis": "baseline"}, 0),
        PastRun(2, "keep", 0.9, "LR", good, 0),
        PastRun(3, "crash", None, "x", {"mutation": {"file": "train.py", "changes": "junk"}, "point": {}}, 0),
        PastRun(
            4, "discard", 1.1, "x", {"mutation": {"file": "train.py", "changes": []}, "point": {"X": [1]}}, 0
        ),
        PastRun(5, "discard", 1.1, "x", good | {"mutation": {**good["mutation"], "file": "model.py"}}, 0),
    ]
    (a,) = read_attempts(runs, "train.py")
    assert a.run == 2 and a.kept and a.changes == (Change("LR", 0.1, 0.2),)
    assert a.base == freeze_point({"LR": 0.1})


def test_choose_exploits_paid_move_and_avoids_failed_one() -> None:
    cs = parse_constants("LR = 0.2\nDEPTH = 3\n")
    history = [_attempt(1, True, {"LR": 0.1, "DEPTH": 3}, LR=0.2)]
    plans = [choose_changes(cs, history, random.Random(i)) for i in range(40)]
    exploits = [p for p in plans if p is not None and p.strategy == "exploit"]
    assert len(exploits) > 20
    assert all(
        p.changes == (Change("LR", 0.2, 0.3),) and p.paid_by == (1,) for p in exploits
    )  # 1.5: smaller step

    # LR up then failed from the current point: no more exploiting it, and it is rarely explored.
    history.append(_attempt(2, False, {"LR": 0.2, "DEPTH": 3}, LR=0.3))
    plans = [choose_changes(cs, history, random.Random(i), max_changes=1) for i in range(200)]
    assert all(p is not None and p.strategy == "explore" for p in plans)
    lr_up = sum(p.changes[0] == Change("LR", 0.2, 0.25) for p in plans if p is not None)
    assert lr_up < 30


def test_choose_returns_none_when_nearby_points_are_exhausted() -> None:
    cs = parse_constants("FLAG = False\n")
    assert choose_changes(cs, [_attempt(1, False, {"FLAG": False}, FLAG=True)], random.Random(0)) is None


# ---------------------------------------------------------------- the agent on a real file

TINY = "LR = 0.02  # learning rate\nDEPTH = 4\nWIDTH = 3\nBATCH = 2**4\nUSE_NORM = False\n"


def _ctx(root: Path, run: int, history: list[PastRun], seed: int = 0) -> ProposalContext:
    return ProposalContext(
        root=root, editable=("train.py",), metric_name="val_loss", direction="lower", run_number=run,
        history=tuple(history), best_metric=None, baseline_metric=None, time_budget_s=300.0, seed=seed,
    )  # fmt: skip


def _simulate(
    root: Path, objective: Callable[[dict[str, Any]], float], n: int, seed: int = 0, source: str = TINY
) -> list[tuple[Proposal, Status]]:
    """Drive the agent like the controller: propose, score with a toy objective, keep or revert.

    Stops early when the agent gives up (AgentError); the caller checks the length.
    """
    path = root / "train.py"
    path.write_text(source)
    best = objective({n: c.value for n, c in parse_constants(source).items()})
    history: list[PastRun] = []
    out = []
    for run in range(1, n + 1):
        before = path.read_text()
        try:
            proposal = MutateAgent().propose(_ctx(root, run, history, seed))
        except AgentError:
            assert path.read_text() == before  # giving up leaves the file alone
            break
        values = {n: c.value for n, c in parse_constants(path.read_text()).items()}
        assert values == proposal.asi["point"]  # the ASI describes the file as written
        metric = objective(values)
        status: Status = "keep" if metric < best else "discard"
        if status == "keep":
            best = metric
        else:
            path.write_text(before)
        history.append(PastRun(run, status, metric, proposal.description, proposal.asi, 0))
        out.append((proposal, status))
    return out


def _bowl(v: dict[str, Any]) -> float:
    return (
        (v["LR"] - 0.1) ** 2
        + 1e-3 * (v["DEPTH"] - 6) ** 2
        + 1e-3 * v["WIDTH"]
        + 1e-4 * (v["BATCH"] - 64) ** 2
    )


def test_never_repeats_a_tried_point(tmp_path: Path) -> None:
    results = _simulate(tmp_path, _bowl, 50)
    points = [freeze_point(p.asi["point"]) for p, _ in results]
    assert len(set(points)) == len(points)
    assert (
        freeze_point({"LR": 0.02, "DEPTH": 4, "WIDTH": 3, "BATCH": 16, "USE_NORM": False}) not in points
    )  # the start
    assert any(s == "keep" for _, s in results) and any(s == "discard" for _, s in results)


def test_gives_up_only_at_a_local_optimum(tmp_path: Path) -> None:
    source = "DEPTH = 3\nHEADS = 5\nUSE_NORM = False\n"
    results = _simulate(
        tmp_path, lambda v: (v["DEPTH"] - 6) ** 2 + (v["HEADS"] - 3) ** 2 + v["USE_NORM"], 100, source=source
    )
    assert 10 < len(results) < 100
    points = {freeze_point(p.asi["point"]) for p, _ in results}
    assert len(points) == len(results)
    final = {n: c.value for n, c in parse_constants((tmp_path / "train.py").read_text()).items()}
    assert final == {"DEPTH": 6, "HEADS": 3, "USE_NORM": False}
    # Every single and double step from the optimum was run before the agent gave up.
    neighbours = [
        {"DEPTH": d, "HEADS": h, "USE_NORM": u} for d in (5, 6, 7) for h in (2, 3, 4) for u in (False, True)
    ]
    changed = [sum(v[n] != final[n] for n in final) for v in neighbours]
    assert all(freeze_point(v) in points for v, k in zip(neighbours, changed, strict=True) if 1 <= k <= 2)


def test_prefers_a_direction_that_pays(tmp_path: Path) -> None:
    results = _simulate(tmp_path, lambda v: -v["LR"], 40)  # a higher LR always helps
    later = [p for p, _ in results[10:]]
    lr_up = [
        p
        for p in later
        if any(c["name"] == "LR" and c["new"] > c["old"] for c in p.asi["mutation"]["changes"])
    ]
    assert len(lr_up) > 0.6 * len(later)
    assert any(p.asi["strategy"] == "exploit" and "paid off in" in p.asi["hypothesis"] for p in later)


def test_proposal_description_and_asi(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TINY)
    p = MutateAgent(max_changes=1).propose(_ctx(tmp_path, 1, []))
    (change,) = p.asi["mutation"]["changes"]
    assert p.description == p.asi["change"]
    assert p.description.startswith(f"{change['name']} ") and " -> " in p.description
    assert set(p.asi) == {"hypothesis", "change", "strategy", "mutation", "point"}
    assert p.asi["strategy"] == "explore" and p.asi["mutation"]["file"] == "train.py"
    assert p.asi["hypothesis"].endswith("within the fixed 300s budget.")


def test_deterministic_for_seed_and_run(tmp_path: Path) -> None:
    def one(seed: int, run: int) -> tuple[str, str]:
        (tmp_path / "train.py").write_text(TINY)
        p = MutateAgent().propose(_ctx(tmp_path, run, [], seed))
        return p.description, (tmp_path / "train.py").read_text()

    assert one(7, 3) == one(7, 3)
    assert len({one(7, run)[0] for run in range(1, 12)}) > 1  # the run number moves the draw


def test_no_constants_raises(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text('NAME = "gpt"\ndef f():\n    LR = 0.1\n')
    with pytest.raises(AgentError, match="no editable .py file has"):
        MutateAgent().propose(_ctx(tmp_path, 1, []))


def test_exhausted_bool_raises(tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    path.write_text("USE_NORM = True  # only knob\n")
    first = MutateAgent().propose(_ctx(tmp_path, 1, []))
    assert path.read_text() == "USE_NORM = False  # only knob\n"
    path.write_text("USE_NORM = True  # only knob\n")  # discarded: the controller reverts
    history = [PastRun(1, "discard", 2.0, first.description, first.asi, 0)]
    with pytest.raises(AgentError, match="every nearby point has been tried"):
        MutateAgent().propose(_ctx(tmp_path, 2, history))


def test_baseline_point_counts_as_tried(tmp_path: Path) -> None:
    # The baseline run records no mutation; its point is known as the first attempt's base.
    path = tmp_path / "train.py"
    path.write_text("USE_NORM = True  # only knob\n")
    first = MutateAgent().propose(_ctx(tmp_path, 2, []))  # kept: the file now has USE_NORM = False
    history = [
        PastRun(1, "keep", 1.0, "baseline", {"hypothesis": "baseline"}, 0),
        PastRun(2, "keep", 2.0, first.description, first.asi, 0),
    ]
    with pytest.raises(AgentError, match="every nearby point has been tried"):
        MutateAgent().propose(_ctx(tmp_path, 3, history))


# ---------------------------------------------------------------- properties

finite_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=200, deadline=None)
@given(old=finite_floats, new=finite_floats, scientific=st.booleans())
def test_float_literal_round_trips(old: float, new: float, scientific: bool) -> None:
    text = f"{old:e}" if scientific else repr(old)
    src = f"X = 1\nLR = {text}  # comment\nY = 2\n"
    (c,) = [c for c in parse_constants(src).values() if c.name == "LR"]
    assert c.value == float(text)
    new = float(f"{new:.4g}")  # the agent only writes 4 significant digits
    out = apply_changes(src, parse_constants(src), [Change("LR", c.value, new)])
    assert parse_constants(out)["LR"].value == new
    assert out.endswith("  # comment\nY = 2\n")


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), run=st.integers(1, 10_000))
def test_every_proposal_on_the_realistic_block_parses(seed: int, run: int) -> None:
    cs = parse_constants(BLOCK)
    plan = choose_changes(cs, [], random.Random(seed * 10_007 + run))
    assert plan is not None and 1 <= len(plan.changes) <= 2 and "SEED" not in {c.name for c in plan.changes}
    out = apply_changes(BLOCK, cs, plan.changes)  # raises if it does not read back
    ast.parse(out)


# ---------------------------------------------------------------- the tunable block


MARKED = '''"""Docstring that talks about markers:
# tunable: begin
is inside a string here, so it is not one."""
LOG_EVERY = 5.0               # plumbing, before the block
# tunable: begin (the knobs)
LR = 0.04                     # tuned
DEPTH = 8                     # tuned
# tunable: end
EVAL_BATCH = 32               # plumbing, after the block
'''


def test_only_the_marked_block_is_tunable() -> None:
    cs = parse_constants(MARKED)
    assert list(cs) == ["LOG_EVERY", "LR", "DEPTH", "EVAL_BATCH"]  # all parsed: the point describes the file
    assert {n for n, c in cs.items() if c.tunable} == {"LR", "DEPTH"}
    # no markers: the whole file is tunable, as before; a begin without an end runs to the end of the file
    assert all(c.tunable for c in parse_constants(BLOCK).values())
    open_ended = MARKED.replace("# tunable: end\n", "")
    assert {n for n, c in parse_constants(open_ended).items() if c.tunable} == {"LR", "DEPTH", "EVAL_BATCH"}


def test_plumbing_outside_the_block_is_never_proposed(tmp_path: Path) -> None:
    proposed = set()
    for seed in range(150):
        (tmp_path / "train.py").write_text(MARKED)
        p = MutateAgent().propose(_ctx(tmp_path, 1, [], seed))
        proposed |= {c["name"] for c in p.asi["mutation"]["changes"]}
        assert set(p.asi["point"]) == {"LOG_EVERY", "LR", "DEPTH", "EVAL_BATCH"}
    assert proposed == {"LR", "DEPTH"}
    (tmp_path / "train.py").write_text("# tunable: begin\n# tunable: end\nLOG_EVERY = 5.0\n")
    with pytest.raises(AgentError, match="tunable: begin"):
        MutateAgent().propose(_ctx(tmp_path, 1, []))


PRETRAIN_TRAIN = Path(__file__).resolve().parent.parent / "assets" / "pretrain" / "train.py"
PLUMBING = {"EVAL_BATCH_SIZE", "LOG_EVERY_S", "COMPILE", "ATTENTION", "UNTIMED_STEPS", "SEED"}


def test_real_pretrain_train_py_proposes_hyperparameters_only(tmp_path: Path) -> None:
    """On the shipped pretrain train.py, mutate proposes model size and optimization constants and never a
    plumbing constant: a change to one costs a full run and cannot move val_bpb (an offline session once
    'kept' LOG_EVERY_S 10 -> 15)."""
    source = PRETRAIN_TRAIN.read_text(encoding="utf-8")
    cs = parse_constants(source)
    tunable = {n for n, c in cs.items() if c.tunable}
    assert {"DEPTH", "ASPECT_RATIO", "HEAD_DIM", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE", "MATRIX_LR",
            "WARMDOWN_RATIO"} <= tunable
    assert not tunable & PLUMBING and {"EVAL_BATCH_SIZE", "LOG_EVERY_S"} <= set(cs)  # parsed, but not tunable
    proposed = set()
    for seed in range(60):
        (tmp_path / "train.py").write_text(source)
        p = MutateAgent().propose(_ctx(tmp_path, 2, [], seed))
        proposed |= {c["name"] for c in p.asi["mutation"]["changes"]}
    assert not proposed & PLUMBING and {"DEPTH", "TOTAL_BATCH_SIZE", "MATRIX_LR"} <= proposed
