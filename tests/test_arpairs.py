"""Tests for assets/arpairs.py: grading, the coherence proxy, correctness-first pair building, counts, storage.

Run: .venv/bin/python -m pytest tests/test_arpairs.py -q   (pure functions: well under a second)

arpairs is loaded by path with its `import arkit` / `import armath` answered by the kit, as a workspace does.
The trajectories are made by hand: texts in offline-math's format (step lines with <<a+b=c>>, `#### N`).
"""

from __future__ import annotations

import pytest
from conftest import ASSETS, kit_module, load_by_path

kit = kit_module()
am = load_by_path(ASSETS / "armath.py", "armath_for_arpairs", {"arkit": kit})
ap = load_by_path(ASSETS / "arpairs.py", "arpairs_under_test", {"arkit": kit, "armath": am})

GOLD = "7"


def traj(text: str, finished: bool = True, tokens: tuple[int, ...] | None = None):
    """A trajectory whose tokens are its characters (distinct texts: distinct completions)."""
    return ap.grade(tokens if tokens is not None else tuple(ord(c) for c in text), text, finished, GOLD)


RIGHT = "3 + 4 = <<3+4=7>>7\n#### 7"
RIGHT_LONG = "3 + 4 = <<3+4=7>>7\nSo the answer is 7 apples in all.\n#### 7"
LUCKY = "3 + 4 = <<3+4=8>>8\n#### 7"  # the right answer through a wrong step
WRONG = "3 + 4 = <<3+4=8>>8\n#### 8"
WRONG2 = "3 - 4 = <<3-4=-1>>-1\n#### -1"


def test_grade_uses_the_answer_convention():
    t = traj(RIGHT)
    assert (t.answer, t.correct, t.finished) == ("7", True, True)
    assert not traj(WRONG).correct
    assert traj("I do not know").answer is None and not traj("I do not know").correct
    assert traj(RIGHT, finished=False).correct  # clipped after its answer: still graded right


def test_step_score_by_hand():
    assert ap.step_score(RIGHT, "7") == 1.0  # annotation right (1/1), last value == answer (1/1)
    assert ap.step_score(LUCKY, "7") == 0.0  # 3+4 != 8, and 8 != 7
    assert ap.step_score(WRONG, "8") == 0.5  # the step is wrong, but its value is the answer
    assert ap.step_score("3 + 4 = <<3+4=7>>9\n#### 7", "7") == 0.5  # writes 9 after <<..=7>>
    assert ap.step_score("#### 7", "7") == 0.5  # no work shown
    two = "2 * 3 = <<2*3=6>>6\n6 + 1 = <<6+1=7>>7\n#### 7"
    assert ap.step_score(two, "7") == 1.0
    assert ap.step_score("12 / 4 = <<12/4=3>>3\n#### 3", "3") == 1.0
    assert ap.step_score("<<__import__('os')=0>>0 #### 0", "0") == 0.5  # not arithmetic: a failed check


def test_coherence_formula_by_hand():
    t, long = traj(RIGHT), traj(RIGHT_LONG)
    longest = len(long.tokens)
    assert ap.coherence(t, longest, 0.1) == pytest.approx(1.0 - 0.1 * len(t.tokens) / longest)
    assert ap.coherence(long, longest, 0.1) == pytest.approx(0.9)
    clipped = traj(RIGHT, finished=False)
    assert ap.coherence(clipped, longest, 0.1) == pytest.approx(ap.coherence(t, longest, 0.1) - 1.0)


def test_correct_vs_incorrect_first_then_coherence():
    group = [traj(WRONG), traj(RIGHT_LONG), traj(LUCKY), traj(RIGHT), traj(WRONG2)]
    settings = ap.PairSettings(max_correctness=4, max_coherence=2, length_penalty=0.1, min_gap=0.05)
    pairs = ap.build_pairs("q1", [1, 2, 3], group, settings)
    kinds = [p.pair_type for p in pairs]
    assert kinds == ["correct_vs_incorrect"] * 4 + ["coherence"] * 2
    cvi = pairs[:4]
    assert all(p.chosen.correct and p.chosen.finished and not p.rejected.correct for p in cvi)
    # chosen ranked by coherence: RIGHT (1.0 - short) first, then RIGHT_LONG (0.9), then LUCKY (0.0 - ...)
    assert [(p.chosen.text, p.rejected.text) for p in cvi] == [
        (RIGHT, WRONG), (RIGHT, WRONG2), (RIGHT_LONG, WRONG), (RIGHT_LONG, WRONG2)]
    coh = pairs[4:]
    # largest gaps first: RIGHT over LUCKY, RIGHT_LONG over LUCKY; RIGHT over RIGHT_LONG (gap < 0.1) comes later
    assert [(p.chosen.text, p.rejected.text) for p in coh] == [(RIGHT, LUCKY), (RIGHT_LONG, LUCKY)]
    assert all(p.chosen_score - p.rejected_score >= 0.05 for p in coh)
    assert all(p.question_id == "q1" and p.prompt == (1, 2, 3) for p in pairs)
    # deterministic: the same group gives the same pairs
    assert ap.build_pairs("q1", [1, 2, 3], group, settings) == pairs


def test_length_alone_makes_a_coherence_pair_when_the_gap_is_large_enough():
    group = [traj(RIGHT_LONG), traj(RIGHT)]
    pairs = ap.build_pairs("q", [0], group, ap.PairSettings(min_gap=0.05))
    assert [(p.pair_type, p.chosen.text, p.rejected.text) for p in pairs] == [("coherence", RIGHT, RIGHT_LONG)]
    assert ap.build_pairs("q", [0], group, ap.PairSettings(min_gap=0.2)) == []


def test_no_pair_for_all_correct_identical_or_all_wrong_groups():
    assert ap.build_pairs("q", [0], [traj(RIGHT)] * 6) == []  # identical: one distinct completion
    assert ap.build_pairs("q", [0], [traj(WRONG), traj(WRONG2), traj(WRONG, finished=False)]) == []
    assert ap.build_pairs("q", [0], []) == []


def test_clipped_is_never_chosen():
    clipped_right = traj(RIGHT, finished=False)
    # a right answer that was clipped and a wrong one: no pair (the only correct completion is clipped)
    assert ap.build_pairs("q", [0], [clipped_right, traj(WRONG)]) == []
    pairs = ap.build_pairs("q", [0], [clipped_right, traj(WRONG), traj(RIGHT_LONG)])
    assert pairs and all(p.chosen.finished for p in pairs)
    # the clipped right one can be rejected in a coherence pair (its -1 term)
    assert ("coherence", RIGHT_LONG, False) in [(p.pair_type, p.chosen.text, p.rejected.finished) for p in pairs]


def test_duplicates_count_once_and_caps_hold():
    group = [traj(RIGHT)] * 3 + [traj(WRONG)] * 3
    pairs = ap.build_pairs("q", [0], group)
    assert [(p.chosen.text, p.rejected.text) for p in pairs] == [(RIGHT, WRONG)]
    many = [traj(f"#### 7{' ' * k}") for k in range(5)] + [traj(f"#### {k}") for k in range(10, 20)]
    capped = ap.build_pairs("q", [0], many, ap.PairSettings(max_correctness=3, max_coherence=1))
    assert sum(p.pair_type == "correct_vs_incorrect" for p in capped) == 3
    assert sum(p.pair_type == "coherence" for p in capped) <= 1
    # the same tokens with a different finished flag are different completions
    assert len(ap.dedupe([traj(RIGHT), traj(RIGHT, finished=False)])) == 2


def test_counts_lines_and_no_pairs_reason(tmp_path):
    all_right = [traj(RIGHT)] * 4
    mixed = [traj(RIGHT), traj(WRONG), traj(RIGHT, finished=False)]
    all_wrong = [traj(WRONG)] * 2
    groups = [(g, ap.build_pairs(f"q{k}", [k], g)) for k, g in enumerate((all_right, mixed, all_wrong))]
    counts = ap.summarize(groups)
    assert (counts.questions, counts.no_pair, counts.all_correct, counts.all_wrong) == (3, 2, 1, 1)
    assert counts.by_type == {"correct_vs_incorrect": 1, "coherence": 1} and counts.pairs == 2
    assert (counts.samples, counts.correct_samples, counts.clipped_samples) == (9, 6, 1)
    assert counts.line("train") == ("pairs: 2 train (correct_vs_incorrect 1, coherence 1), 2 of 3 questions with "
                                    "no pair; rollouts 6/9 correct, 1 clipped")
    none_right = ap.summarize([(all_wrong, [])] * 2)
    assert "answers no question right" in ap.no_pairs_reason(none_right, "raise K")
    every_right = ap.summarize([(all_right, [])] * 2)
    reason = ap.no_pairs_reason(every_right, "raise K or the temperature")
    assert "every question right" in reason and reason.endswith("raise K or the temperature")
    assert "\n" not in reason


def test_pairs_round_trip_through_a_file(tmp_path):
    pairs = ap.build_pairs("q1", [5, 6], [traj(RIGHT), traj(LUCKY), traj(WRONG, finished=False)])
    assert pairs
    path = tmp_path / "sub" / "pairs.jsonl"
    ap.save_pairs(str(path), pairs)
    assert ap.load_pairs(str(path)) == pairs
