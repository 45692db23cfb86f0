"""
Preference pairs from graded rollouts, correctness first: the kit's pure side of the dpo target.

The dpo target's prepare.py samples K completions per question from the session's base (arsample), grades
each with the one answer convention (armath), and turns each question's group into pairs here. Nothing in
this module samples, loads a model or touches a file, except `save_pairs`/`load_pairs`, which store a pair
set as plain JSON lines.

    grade(tokens, text, finished, gold) -> Trajectory     the answer extracted, correct or not
    coherence(trajectory, longest) -> float              the coherence proxy (formula below)
    build_pairs(question_id, prompt, trajectories, settings) -> list[Pair]
    summarize(groups) -> PairCounts; counts.lines() the status lines; no_pairs_reason(counts)

Correctness first (issue 12; reference/posttrain.md §1.5, §6):
  1. correct vs incorrect: chosen a correct, finished completion; rejected an incorrect one (finished or
     not). Up to settings.max_correctness pairs per question.
  2. then, among the correct ones only, a coherence preference: chosen a finished correct completion whose
     coherence exceeds the rejected one's by at least settings.min_gap. Up to settings.max_coherence pairs.
  A clipped completion (cut at max_new_tokens, no end token) is never chosen: DPO would teach the policy
  not to stop. Identical completions (same tokens, same finished flag) count once. Order is deterministic:
  it depends only on the trajectories' order.

The coherence proxy. Among correct completions the final answer is the gold one, so agreement with the
group's majority answer is the same for all of them and cannot rank them; what can differ is whether the
work shown supports the answer, and its length:

    coherence(t) = steps(t) - length_penalty * len(t.tokens) / longest - (1 if t is clipped else 0)

  steps(t)   the fraction of passed checks among: each calculator annotation <<expr=value>> (GSM8K's and
             offline-math's step format) whose expr evaluates to value (+ - * / on decimals, exactly) and
             whose value is also what the text writes right after `>>`; and, when there is any annotation,
             the last one's value equals the extracted final answer. 0.5 when there is no annotation at all
             (work neither shown right nor shown wrong).
  longest    the longest completion (tokens) among the question's distinct trajectories, so the length term
             is in [0, length_penalty]: among equally sound answers the shorter one is preferred.

A right answer reached through a wrong step ("3 + 4 = <<3+4=8>>8 ... #### 7") is the lucky case this
demotes. Pure standard library.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from itertools import product
from typing import Literal

import arkit
import armath

PairType = Literal["correct_vs_incorrect", "coherence"]
PAIR_TYPES: tuple[PairType, ...] = ("correct_vs_incorrect", "coherence")


@dataclass(frozen=True)
class Trajectory:
    """One sampled completion, graded: tokens without the end token; finished = it stopped at a stop token
    (False: cut at max_new_tokens, a "clipped" completion)."""

    tokens: tuple[int, ...]
    text: str
    answer: str | None  # armath.extract_answer(text)
    correct: bool
    finished: bool


@dataclass(frozen=True)
class Pair:
    question_id: str
    prompt: tuple[int, ...]
    chosen: Trajectory
    rejected: Trajectory
    pair_type: PairType
    chosen_score: float = 0.0  # coherence of each side (for coherence pairs; recorded for every pair)
    rejected_score: float = 0.0


@dataclass(frozen=True)
class PairSettings:
    """The fixed side's pair-building settings (part of the pair cache's key)."""

    max_correctness: int = 4  # correct-vs-incorrect pairs per question, at most
    max_coherence: int = 2  # coherence pairs per question, at most
    length_penalty: float = 0.1  # weight of the relative length in the coherence proxy
    min_gap: float = 0.05  # the least coherence difference that makes a coherence pair


def grade(tokens: Sequence[int], text: str, finished: bool, gold: str) -> Trajectory:
    """A completion graded under armath's convention: the last answer marker, compared with the gold."""
    answer = armath.extract_answer(text)
    return Trajectory(tuple(tokens), text, answer, armath.answers_match(answer, gold), finished)


# ---------------------------------------------------------------------------
# The coherence proxy
# ---------------------------------------------------------------------------

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>\s*([+-]?[\d.,]*)")
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
            ast.USub, ast.UAdd)


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def _evaluate(expr: str) -> Fraction | None:
    """An arithmetic expression over decimals, exactly (Fractions); None for anything else."""
    try:
        tree = ast.parse(expr.replace(",", "").strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    if not all(isinstance(n, _ALLOWED) for n in ast.walk(tree)):
        return None

    def ev(n: ast.AST) -> Fraction:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool) or not isinstance(n.value, int | float):
                raise ValueError
            return Fraction(str(n.value))
        if isinstance(n, ast.UnaryOp):
            return -ev(n.operand) if isinstance(n.op, ast.USub) else ev(n.operand)
        assert isinstance(n, ast.BinOp)
        a, b = ev(n.left), ev(n.right)
        if isinstance(n.op, ast.Add):
            return a + b
        if isinstance(n.op, ast.Sub):
            return a - b
        if isinstance(n.op, ast.Mult):
            return a * b
        return a / b  # ZeroDivisionError: caught below

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def step_score(text: str, answer: str | None) -> float:
    """steps(t) of the module docstring: the fraction of the annotation checks that pass, 0.5 without any."""
    checks: list[bool] = []
    last: Fraction | None = None
    for m in _ANNOTATION.finditer(text):
        expr, value, written = m.groups()
        v = _number(value)
        checks.append(v is not None and _evaluate(expr) == v and (not written or _number(written) == v))
        last = v
    if not checks:
        return 0.5
    final = _number(answer) if answer is not None else None
    checks.append(last is not None and final is not None and last == final)
    return sum(checks) / len(checks)


def coherence(t: Trajectory, longest: int, length_penalty: float = PairSettings.length_penalty) -> float:
    """The coherence proxy (module docstring): steps - length_penalty * len / longest - (1 if clipped)."""
    length = len(t.tokens) / longest if longest > 0 else 0.0
    return step_score(t.text, t.answer) - length_penalty * length - (0.0 if t.finished else 1.0)


# ---------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------


def dedupe(trajectories: Iterable[Trajectory]) -> list[Trajectory]:
    """The trajectories with repeats (same tokens and finished flag) dropped, first occurrence kept."""
    seen: set[tuple[tuple[int, ...], bool]] = set()
    out = []
    for t in trajectories:
        key = (t.tokens, t.finished)
        if key not in seen and (t.tokens or t.finished):  # an empty clipped completion has nothing to score
            seen.add(key)
            out.append(t)
    return out


def build_pairs(question_id: str, prompt: Sequence[int], trajectories: Sequence[Trajectory],
                settings: PairSettings = PairSettings()) -> list[Pair]:
    """The question's preference pairs, correct-vs-incorrect ones first, then coherence ones (module
    docstring). Correct-vs-incorrect pairs walk the (chosen, rejected) grid by diagonals, chosen ordered by
    coherence (best first) and rejected in sample order, so the first pairs use as many distinct
    completions as possible; coherence pairs come by largest gap first (ties: earlier trajectories first)."""
    group = dedupe(trajectories)
    longest = max((len(t.tokens) for t in group), default=0)
    score = {id(t): coherence(t, longest, settings.length_penalty) for t in group}
    prompt_t = tuple(prompt)

    def pair(c: Trajectory, r: Trajectory, kind: PairType) -> Pair:
        return Pair(question_id, prompt_t, c, r, kind, score[id(c)], score[id(r)])

    correct = [t for t in group if t.correct]
    ranked = sorted((t for t in correct if t.finished), key=lambda t: -score[id(t)])  # stable: ties keep order
    wrong = [t for t in group if not t.correct]
    grid = sorted(product(range(len(ranked)), range(len(wrong))), key=lambda ab: (ab[0] + ab[1], ab[0]))
    pairs = [pair(ranked[a], wrong[b], "correct_vs_incorrect") for a, b in grid[:settings.max_correctness]]
    index = {id(t): k for k, t in enumerate(group)}
    candidates = [
        (score[id(c)] - score[id(r)], index[id(c)], index[id(r)], c, r)
        for c in ranked for r in correct
        if c is not r and score[id(c)] - score[id(r)] >= settings.min_gap
    ]
    candidates.sort(key=lambda g: (-g[0], g[1], g[2]))
    pairs += [pair(c, r, "coherence") for _, _, _, c, r in candidates[:settings.max_coherence]]
    return pairs


# ---------------------------------------------------------------------------
# Counts, status lines, and why there are none
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairCounts:
    """Counts over one split's questions: pairs by type, and the questions with no pair by their outcome."""

    questions: int
    by_type: dict[str, int] = field(default_factory=dict)
    no_pair: int = 0
    all_correct: int = 0  # questions whose every completion was right (no correct-vs-incorrect pair possible)
    all_wrong: int = 0  # questions whose every completion was wrong (no pair possible)
    samples: int = 0
    correct_samples: int = 0
    clipped_samples: int = 0

    @property
    def pairs(self) -> int:
        return sum(self.by_type.values())

    def line(self, split: str) -> str:
        kinds = ", ".join(f"{k} {self.by_type.get(k, 0):,}" for k in PAIR_TYPES)
        return (f"pairs: {self.pairs:,} {split} ({kinds}), {self.no_pair:,} of {self.questions:,} questions with "
                f"no pair; rollouts {self.correct_samples:,}/{self.samples:,} correct, {self.clipped_samples:,} clipped")


def summarize(groups: Iterable[tuple[Sequence[Trajectory], Sequence[Pair]]]) -> PairCounts:
    """PairCounts of (trajectories, pairs) per question."""
    questions = no_pair = all_correct = all_wrong = samples = right = clipped = 0
    by_type = dict.fromkeys(PAIR_TYPES, 0)
    for trajectories, pairs in groups:
        questions += 1
        samples += len(trajectories)
        right += sum(t.correct for t in trajectories)
        clipped += sum(not t.finished for t in trajectories)
        for p in pairs:
            by_type[p.pair_type] += 1
        if not pairs:
            no_pair += 1
        if trajectories and all(t.correct for t in trajectories):
            all_correct += 1
        elif not any(t.correct and t.finished for t in trajectories):
            all_wrong += 1
    return PairCounts(questions, by_type, no_pair, all_correct, all_wrong, samples, right, clipped)


def no_pairs_reason(counts: PairCounts, settings_hint: str) -> str:
    """One line saying why a rollout gave no pair at all, and what to change."""
    if counts.questions == 0:
        return "no training questions to sample: check the data"
    if counts.all_correct == counts.questions:
        why = "the base answers every question right in every sample, identically or equally well"
    elif counts.all_wrong == counts.questions:
        why = "the base answers no question right (or only in clipped completions)"
    else:
        why = (f"{counts.all_correct} questions all right, {counts.all_wrong} all wrong, and no group with both a "
               "right finished completion and a wrong one")
    return f"no preference pairs from {counts.samples:,} rollouts of {counts.questions:,} questions: {why}; " \
           f"{settings_hint}"


# ---------------------------------------------------------------------------
# Storage: one JSON object a line
# ---------------------------------------------------------------------------


def _traj_json(t: Trajectory) -> dict:
    return {**asdict(t), "tokens": list(t.tokens)}


def _traj(d: dict) -> Trajectory:
    return Trajectory(tuple(int(x) for x in d["tokens"]), str(d["text"]), d["answer"], bool(d["correct"]),
                      bool(d["finished"]))


def save_pairs(path: str, pairs: Iterable[Pair]) -> None:
    """The pairs as JSON lines, written whole (arkit's atomic write)."""
    lines = []
    for p in pairs:
        lines.append(json.dumps({
            "question_id": p.question_id, "pair_type": p.pair_type, "prompt": list(p.prompt),
            "chosen": _traj_json(p.chosen), "rejected": _traj_json(p.rejected),
            "chosen_score": p.chosen_score, "rejected_score": p.rejected_score,
        }))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arkit.atomic_write_text(path, "".join(line + "\n" for line in lines))


def load_pairs(path: str) -> list[Pair]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Pair(r["question_id"], tuple(r["prompt"]), _traj(r["chosen"]), _traj(r["rejected"]), r["pair_type"],
                 float(r["chosen_score"]), float(r["rejected_score"])) for r in rows]
