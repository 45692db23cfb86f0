"""The controller's policies with a fake executor and a fake clock (tests/conftest.py): stop rules,
guards and tolerance reaching the decision, checkpoint pruning, the learnings update, the
detached-HEAD check, and what an environment error in one iteration does. Git, the ledger and
the checks are real; no experiment process runs.

Run: python -m pytest tests/test_loop_policy.py -q
"""

from __future__ import annotations

import datetime as dt
import errno
import json
from pathlib import Path

import pytest
from toy import cli_proc, git, lines, make_toy, runs, set_constant

from harness import config as config_mod
from harness import ledger
from harness.agents.base import AgentError, Proposal
from harness.config import Guard
from harness.loop import Controller, ControllerError, Interrupts, StopRules
from harness.stoprules import should_stop

NO_SPACE = OSError(errno.ENOSPC, "No space left on device")


class Agent:
    """Sets LR to the next scripted value (or raises it); each proposal costs $0.01."""

    name = "scripted"

    def __init__(self, values: list[str | BaseException]):
        self.values = list(values)

    def propose(self, ctx):
        v = self.values.pop(0)
        if isinstance(v, BaseException):
            raise v
        set_constant(ctx.root, "LR", v)
        return Proposal(f"LR {v}", {"hypothesis": "scripted"}, usage={"input_tokens": 10, "cost_usd": 0.01})


def _lrs(n: int) -> list[str | BaseException]:
    return [f"0.0{i}" for i in range(2, 2 + n)]


def _controller(root: Path, executor, clock, out: list[str] | None = None, **overrides) -> Controller:
    cfg = config_mod.load(root)
    if overrides:
        cfg = config_mod.with_overrides(cfg, **overrides)
    return Controller(root, cfg, executor=executor, clock=clock, printer=(out if out is not None else []).append,
                      progress=False)


def _statuses(root: Path) -> list[str]:
    return [r.status for r in runs(root)]


# ------------------------------------------------------------------------------- stop rules


def test_max_cost_stops_once_the_agent_has_spent_it(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    ctl = _controller(root, fake_executor(root, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]), fake_clock)
    why = ctl.run_loop(Agent(_lrs(9)), StopRules(max_iterations=10, max_cost_usd=0.025))
    # the baseline is free; three proposals at $0.01 pass $0.025
    assert why.startswith("reached --max-cost $0.025") and "$0.03" in why
    assert len(runs(root)) == 4


def test_max_hours_counts_the_session_time(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    executor = fake_executor(root, [1.0, 1.1, 1.2, 1.3, 1.4], wall_s=1200, clock=fake_clock)  # 20 minutes a run
    ctl = _controller(root, executor, fake_clock, time_budget_s=1200)
    why = ctl.run_loop(Agent(_lrs(9)), StopRules(max_iterations=10, max_hours=1))
    assert why == "reached --max-hours 1"
    assert len(runs(root)) == 3  # 3 x 20 minutes is the hour


def test_until_stops_at_the_wall_clock_time(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    until = fake_clock.now + 3000  # 50 minutes from the start: the third 20-minute run ends past it
    executor = fake_executor(root, [1.0, 1.1, 1.2, 1.3, 1.4], wall_s=1200, clock=fake_clock)
    ctl = _controller(root, executor, fake_clock, time_budget_s=1200)
    why = ctl.run_loop(Agent(_lrs(9)), StopRules(max_iterations=10, until=until))
    assert why == f"reached --until {dt.datetime.fromtimestamp(until).strftime('%H:%M')}"
    assert len(runs(root)) == 3


def test_should_stop_rules_with_literal_numbers(tmp_path) -> None:
    root = make_toy(tmp_path / "ws")
    state = ledger.load_state(root / "autoresearch.jsonl")  # a header, no runs
    calm = Interrupts()

    def why(rules: StopRules, *, done: int = 0, now: float = 1000.0, interrupts: Interrupts = calm) -> str | None:
        return should_stop(rules, done=done, started=0.0, now=now, state=state, interrupts=interrupts)

    assert why(StopRules()) is None
    assert why(StopRules(max_iterations=3), done=3) == "reached --max-iterations 3"
    assert why(StopRules(max_iterations=3), done=2) is None
    assert why(StopRules(max_hours=0.5), now=1799.0) is None
    assert why(StopRules(max_hours=0.5), now=1800.0) == "reached --max-hours 0.5"
    assert why(StopRules(until=5000.0), now=4999.0) is None
    assert why(StopRules(until=5000.0), now=5000.0).startswith("reached --until")
    assert why(StopRules(max_cost_usd=0.01)) is None  # nothing spent yet
    assert why(StopRules(max_iterations=3), interrupts=Interrupts(stop_requested=True)) == "stopped by the user (Ctrl-C)"


# ------------------------------------------------------------------ what reaches the decision


def test_a_guard_vetoes_a_gain_through_the_controller(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    script = [{"score": 1.0, "peak_vram_mb": 100.0},
              {"score": 1.1, "peak_vram_mb": 150.0},  # better, but 50% more memory
              {"score": 1.1, "peak_vram_mb": 105.0}]  # better, 5% more: allowed
    guard = Guard("peak_vram_mb", max_worse_pct=10.0, unless_gain=1.0, direction="lower")
    ctl = _controller(root, fake_executor(root, script), fake_clock, guards=(guard,))
    agent = Agent(["0.02", "0.03"])
    ctl.iterate(agent)
    vetoed = ctl.iterate(agent)
    assert vetoed.decision.status == "discard"
    assert vetoed.decision.reason == ("peak_vram_mb worsened 50.0% (100 -> 150), over the 10% allowed for a gain "
                                      "under 1")
    assert ctl.iterate(agent).decision.status == "keep"


def test_tolerance_makes_a_small_gain_a_tie(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    ctl = _controller(root, fake_executor(root, [1.0, 1.1, 1.5]), fake_clock, tolerance=0.2)
    agent = Agent(["0.02", "0.03"])
    ctl.iterate(agent)
    tie = ctl.iterate(agent)
    assert tie.decision.status == "discard" and tie.decision.reason == "equal to the best (1) within 0.2"
    assert ctl.iterate(agent).decision.status == "keep"  # 0.5 over the best clears it


# ------------------------------------------------------------------------------ housekeeping


def test_only_the_latest_kept_runs_checkpoint_is_kept(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    values = {"1": 1.0, "2": 1.2, "3": 0.5}  # keep (baseline), keep, discard

    def run_writing_a_checkpoint(call) -> float:
        ckpt = Path(call.env["AUTORESEARCH_CHECKPOINT"])
        ckpt.mkdir(parents=True)
        (ckpt / "model.pt").write_bytes(b"weights")
        return values[call.key]

    ctl = _controller(root, fake_executor(root, run_writing_a_checkpoint), fake_clock)
    checkpoints = root / ".autoresearch" / "checkpoints"
    agent = Agent(["0.02", "0.03"])
    ctl.iterate(agent)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run-1"]
    ctl.iterate(agent)  # kept: the older kept checkpoint goes
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run-2"]
    assert ctl.iterate(agent).decision.status == "discard"  # not kept: its own checkpoint goes
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run-2"]


class LearningAgent(Agent):
    """Also rewrites the notes when asked; a stray edit to train.py must not survive."""

    def update_learnings(self, ctx):
        with open(ctx.root / "autoresearch.md", "a") as f:
            f.write(f"\n- learned after run {ctx.run_number - 1}: LR around 0.03 helps\n")
        set_constant(ctx.root, "WIDTH", "64")
        return Proposal("rewrote the learnings", usage={"cost_usd": 0.5})


def test_the_learnings_are_updated_every_learn_every_experiments(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    ctl = _controller(root, fake_executor(root, [1.0, 1.1, 1.2, 1.3]), fake_clock, learn_every=2)
    ctl.run_loop(LearningAgent(_lrs(3)), StopRules(max_iterations=4))
    notes = [d for d in lines(root) if d.get("type") == "learnings"]
    assert [n["after_run"] for n in notes] == [2, 4]
    assert notes[0]["agent"] == {"cost_usd": 0.5, "name": "scripted"}
    assert "learnings after experiment #2" in git(root, "log", "--format=%s")
    assert "learned after run 4" in (root / "autoresearch.md").read_text()
    assert "WIDTH = 8 " in (root / "train.py").read_text()  # the stray edit was undone
    assert git(root, "status", "--porcelain") == ""
    assert ledger.load_state(root / "autoresearch.jsonl").cost_usd == pytest.approx(3 * 0.01 + 2 * 0.5)


def test_a_detached_head_is_refused_before_anything_runs(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    git(root, "checkout", "-q", "--detach")
    executor = fake_executor(root, [1.0])
    ctl = _controller(root, executor, fake_clock)
    with pytest.raises(ControllerError, match="HEAD is detached; check out the session branch first"):
        ctl.run_loop(Agent(_lrs(2)), StopRules(max_iterations=2))
    assert executor.calls == [] and runs(root) == []


# ------------------------------------------------------------------- environment errors


def _consistent(root: Path) -> None:
    """As `resume` leaves a workspace: no run in flight, a clean tree, HEAD the last kept run's files."""
    assert not (root / ".autoresearch" / "state.json").exists()
    assert git(root, "status", "--porcelain") == ""
    assert json.loads(cli_proc(root, "status", "--json").stdout)["consistency"].startswith("ok")


def test_an_environment_error_is_a_logged_crash_and_the_loop_goes_on(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    out: list[str] = []
    executor = fake_executor(root, [1.0, NO_SPACE, 1.1, NO_SPACE, 1.2])  # never two in a row
    why = _controller(root, executor, fake_clock, out).run_loop(Agent(_lrs(4)), StopRules(max_iterations=5))
    assert why == "reached --max-iterations 5"
    rs = runs(root)
    assert [r.status for r in rs] == ["keep", "crash", "keep", "crash", "keep"]
    cause = "environment error: OSError: [Errno 28] No space left on device"
    assert rs[1].raw["reason"] == cause and rs[1].asi["rollback_reason"] == cause
    assert rs[1].description == "LR 0.02" and rs[1].agent["cost_usd"] == 0.01  # what was in flight
    assert 'Revert "experiment #2: LR 0.02"' in git(root, "log", "--format=%s")  # repaired as recover would
    assert any(line.startswith("environment error in experiment #2") for line in out)
    _consistent(root)


def test_two_environment_errors_in_a_row_stop_with_what_to_fix(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    executor = fake_executor(root, [1.0, NO_SPACE, NO_SPACE, 1.1])
    why = _controller(root, executor, fake_clock).run_loop(Agent(_lrs(4)), StopRules(max_iterations=10))
    assert why == ("2 environment errors in a row (the last: OSError: [Errno 28] No space left on device): "
                   "the disk is full; free space where the workspace is")
    assert _statuses(root) == ["keep", "crash", "crash"]
    _consistent(root)


def test_a_real_git_error_is_a_logged_crash_and_the_edit_is_stashed(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    # the next commit fails once: signing is required and the signing program refuses, then turns signing off
    # (hooks would be simpler, but the controller runs git with hooks off)
    signer = root / ".git" / "refuse-once.sh"
    signer.write_text(f'#!/bin/sh\ngit -C "{root}" config commit.gpgsign false\n'
                      'echo "pre-commit: refused once" >&2\nexit 1\n')
    signer.chmod(0o755)
    git(root, "config", "commit.gpgsign", "true")
    git(root, "config", "gpg.program", str(signer))
    executor = fake_executor(root, [1.0, 1.1, 1.2])
    why = _controller(root, executor, fake_clock).run_loop(Agent(_lrs(3)), StopRules(max_iterations=3))
    assert why == "reached --max-iterations 3"
    rs = runs(root)
    assert [r.status for r in rs] == ["keep", "crash", "keep"]
    assert rs[1].raw["reason"].startswith("environment error: GitCommandError: Cmd('git') failed")
    assert "gpg failed to sign" in rs[1].raw["reason"] and rs[1].description == "LR 0.02"
    assert [c.key for c in executor.calls] == ["1", "3"]  # experiment #2 never ran
    assert "LR = 0.02" in git(root, "stash", "show", "-p", "stash@{0}")  # its edit is kept, out of the way
    _consistent(root)


def test_an_environment_error_while_proposing_is_logged_too(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    unreadable = PermissionError(errno.EACCES, "Permission denied", "train.py")
    executor = fake_executor(root, [1.0, 1.1])
    why = _controller(root, executor, fake_clock).run_loop(Agent([unreadable, "0.02"]), StopRules(max_iterations=3))
    assert why == "reached --max-iterations 3"
    rs = runs(root)
    assert [r.status for r in rs] == ["keep", "crash", "keep"]
    assert rs[1].description == "(stopped before its commit)"
    assert rs[1].raw["reason"] == "environment error: PermissionError: [Errno 13] Permission denied: 'train.py'"
    _consistent(root)


def test_an_agent_error_still_stops_the_loop_as_before(tmp_path, fake_executor, fake_clock) -> None:
    root = make_toy(tmp_path / "ws")
    why = _controller(root, fake_executor(root, [1.0]), fake_clock).run_loop(
        Agent([AgentError("nothing left to try")]), StopRules(max_iterations=3))
    assert why == "the agent could not propose an experiment: nothing left to try"
    assert _statuses(root) == ["keep"]
