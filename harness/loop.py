"""The controller: one experiment at a time, recoverable from a kill at any instant.

One iteration (shared/DESIGN.md section 4):
  lock -> recover -> verify -> propose -> validate -> commit (state file first) -> run
  -> checks -> decide -> append to the ledger -> revert or keep -> clear the state file.

What makes it crash-safe: the ledger line is the commit point of an experiment. Before it,
`.autoresearch/state.json` names the run in flight; after it, the remaining steps (revert,
clear state) are idempotent and `recover` redoes whichever did not happen. Nothing the
agent or the user wrote is ever deleted: refused proposals and discarded experiments are
saved as patches, uncommitted edits found at recovery are stashed under a clear name.

Side effects come in through the constructor (runner, clock, output), so tests drive the
controller with real git and real processes but a scripted agent and a fake clock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harness import gate, integrity, ledger
from harness.agents.base import Agent, AgentError, PastRun, Proposal, ProposalContext
from harness.config import Config
from harness.decision import Decision, Status, decide
from harness.gate import Sample
from harness.metrics import parse_metrics
from harness.runner import RunResult, run_command
from harness.stats import mad_confidence
from harness.workspace import Workspace, sha256_file, short

NOTES_FILES = ("autoresearch.md", "autoresearch.ideas.md")  # session notes: committed, never reverted
MEASURE_FILES = ("autoresearch.sh", "autoresearch.checks.sh")  # how the metric is measured: fixed
Printer = Callable[[str], None]
Runner = Callable[..., RunResult]


class ControllerError(Exception):
    """The controller cannot go on; the message tells the user what to do."""


class LockedError(ControllerError):
    pass


# ------------------------------------------------------------------ small pieces


def _fault(point: str) -> None:
    """Fault-injection hook for the kill-at-every-step tests: SIGKILL ourselves at `point`.

    Inert unless AUTORESEARCH_FAULT names this point; costs one dict lookup.
    """
    if os.environ.get("AUTORESEARCH_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def normalized_diff_hash(patch: str) -> str:
    """Hash of a diff that ignores what does not change the code: index lines, hunk line
    numbers, trailing whitespace. Two proposals with the same hash are the same change."""
    keep = []
    for line in patch.splitlines():
        if line.startswith(("index ", "@@")) or not line.strip():
            continue
        keep.append(line.rstrip())
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()[:16]


class WorkspaceLock:
    """An exclusive, non-blocking flock on `.autoresearch/lock`; released by the kernel on death."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "lock"
        self.fd: int | None = None

    def __enter__(self) -> WorkspaceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"another autoresearch controller (pid {holder}) is working in {self.path.parent.parent}; "
                "wait for it or stop it (Ctrl-C) first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True)
class StopRules:
    max_iterations: int | None = None
    until: float | None = None  # epoch seconds
    max_hours: float | None = None
    max_failure_streak: int = 20
    max_cost_usd: float | None = None


def parse_until(text: str, now: dt.datetime) -> float:
    """`HH:MM` -> the next such local time after `now`, as epoch seconds."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"--until takes HH:MM (24-hour), not {text!r}")
    target = now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
    if target <= now:
        target += dt.timedelta(days=1)
    return target.timestamp()


@dataclass
class Interrupts:
    """SIGINT/SIGTERM bookkeeping: first Ctrl-C finishes the experiment, second aborts it."""

    stop_requested: bool = False
    abort_requested: bool = False
    _previous: dict[int, Any] = field(default_factory=dict)
    printer: Printer = print

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM or self.stop_requested:
            self.abort_requested = True
            self.printer("\nautoresearch: aborting the current experiment (it will be logged as a crash)")
        else:
            self.stop_requested = True
            self.printer("\nautoresearch: finishing the current experiment, then stopping (Ctrl-C again to abort it)")


# ------------------------------------------------------------------- controller


@dataclass(frozen=True)
class IterationResult:
    record: dict[str, Any]
    decision: Decision
    stop_reason: str | None = None  # set when this iteration means the loop must stop


class Controller:
    def __init__(
        self,
        root: Path,
        cfg: Config,
        *,
        runner: Runner = run_command,
        clock: Callable[[], float] = time.time,
        printer: Printer = print,
        progress: bool | None = None,
    ):
        self.root = root.resolve()
        self.cfg = cfg
        self.ws = Workspace(self.root)
        self.runner = runner
        self.clock = clock
        self.say = printer
        self.progress = progress
        self.ledger_path = ledger.ledger_path(self.root)
        self.state_dir = self.ws.state_dir
        self.state_file = self.state_dir / "state.json"
        self.interrupts = Interrupts(printer=printer)
        self._fixed_names: set[str] | None = None  # names the fixed files define, for the audit

    # ----------------------------------------------------------------- state
    def load_ledger(self) -> ledger.LedgerState:
        return ledger.load_state(self.ledger_path)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return orjson.loads(self.state_file.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            # _atomic_write never leaves a partial file; a corrupt one was edited by hand.
            aside = self.state_dir / f"state-corrupt-{int(self.clock())}.json"
            self.state_file.replace(aside)
            self.say(f"warning: {self.state_file} was unreadable; moved to {aside}")
            return None

    def _write_state(self, state: dict[str, Any]) -> None:
        _atomic_write(self.state_file, orjson.dumps(state))

    def _clear_state(self) -> None:
        self.state_file.unlink(missing_ok=True)

    # -------------------------------------------------------------- recovery
    def recover(self, *, stash_uncommitted: bool = True) -> list[str]:
        """Bring ledger and branch back to a consistent state after any interruption.

        Returns what was found and done, one sentence each. Idempotent.
        """
        done = self.ws.finish_interrupted_git()
        stamp = dt.datetime.fromtimestamp(self.clock()).strftime("%Y%m%d-%H%M%S")
        aside = ledger.set_aside_torn_tail(self.ledger_path, self.state_dir, stamp)
        if aside:
            done.append(f"warning: the ledger's last line was torn (a write cut short); moved it to {aside}")
        state = self._read_state()
        if state is not None:
            done += self._recover_in_flight(state)
        else:
            done += self._recover_unreverted()
        if stash_uncommitted and not self.ws.is_clean():
            changed = self.ws.changed_paths()
            ref = self.ws.stash(f"autoresearch: uncommitted changes found by recovery at {stamp}")
            done.append(
                f"stashed uncommitted changes to {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
                f"as {short(ref or '')} (`git stash list`; nothing was deleted)"
            )
        return done

    def _recover_in_flight(self, state: dict[str, Any]) -> list[str]:
        run = int(state["run"])
        done: list[str] = []
        commit = state.get("commit")
        if state.get("phase") == "committing":
            head_parent = self.ws.parent()
            if self.ws.head() != state["parent"] and head_parent == state["parent"] and self.ws.commit_message().startswith(
                f"experiment #{run}:"
            ):
                commit = self.ws.head()  # the commit happened; the state update did not
            else:
                self._clear_state()
                return [f"experiment #{run} was interrupted before its commit; its edits (if any) are left uncommitted"]
        existing = self.load_ledger().find(run)
        if existing is None:
            record = self._record(
                run=run,
                commit=commit or self.ws.head(),
                metrics={},
                decision=Decision("crash", "interrupted: the controller stopped while the experiment was running"),
                description=state.get("description", ""),
                asi={**state.get("asi", {}), "rollback_reason": "interrupted (controller killed or machine stopped)"},
                duration_s=self.clock() - state.get("started", self.clock()),
                diff=state.get("diff"),
                agent=state.get("agent"),
                extra={"baseline": True} if state.get("baseline") else {},
            )
            ledger.append(self.ledger_path, record)
            done.append(f"experiment #{run} was in flight when the controller stopped: logged as crash (interrupted)")
            status = "crash"
        else:
            status = existing.status
        if status != "keep" and state.get("committed") and commit and self.ws.head() == commit:
            self._undo_commit(run, commit)
            done.append(f"reverted experiment #{run} ({short(commit)}), logged as {status}")
        self._clear_state()
        return done

    def _recover_unreverted(self) -> list[str]:
        last = self.load_ledger().last_run()
        if last is None or last.status == "keep" or not last.commit:
            return []
        head = self.ws.head()
        if head.startswith(last.commit) and self.ws.commit_message().startswith(f"experiment #{last.run}:"):
            self._undo_commit(last.run, head)
            return [f"experiment #{last.run} was logged as {last.status} but still at HEAD: reverted it"]
        return []

    def _undo_commit(self, run: int, commit: str) -> None:
        """Save the experiment's patch, then revert (or reset) it. The caller checked HEAD == commit."""
        patch = self.state_dir / "patches" / f"{run}.diff"
        if not patch.exists():
            _atomic_write(patch, self.ws.commit_patch(commit).encode())
        if not self.ws.is_clean():  # the run left edits behind; keep them, out of the way
            self.ws.stash(f"autoresearch: changes left by the run of experiment #{run}")
        if self.cfg.revert == "reset":
            parent = self.ws.parent(commit)
            assert parent is not None, "an experiment commit always has a parent"
            self.ws.reset_to(parent)
        else:
            self.ws.revert_head()

    # ------------------------------------------------------------- verifying
    def check_fixed(self) -> list[str]:
        """Fixed files (and the measurement scripts) whose content differs from init."""
        bad = []
        for rel, digest in self.cfg.fixed_hashes.items():
            p = self.root / rel
            if not p.exists():
                bad.append(f"{rel} is missing")
            elif sha256_file(p) != digest:
                bad.append(f"{rel} changed")
        return bad

    def verify(self) -> None:
        bad = self.check_fixed()
        if bad:
            raise ControllerError(
                "fixed files differ from the hashes recorded at init: "
                + "; ".join(bad)
                + ". Restore them (e.g. `git checkout <last kept commit> -- FILE`) before running."
            )
        if self.ws.branch() is None:
            raise ControllerError("HEAD is detached; check out the session branch first")
        if self.cfg.branch and self.ws.branch() != self.cfg.branch:
            self.say(f"warning: on branch {self.ws.branch()}, but the session's branch is {self.cfg.branch}")

    # ---------------------------------------------------------------- helpers
    def _context(self, state: ledger.LedgerState, feedback: str | None = None) -> ProposalContext:
        seg = state.current
        runs = seg.runs if seg else ()
        return ProposalContext(
            root=self.root,
            editable=self.cfg.editable,
            metric_name=self.cfg.metric.name,
            direction=self.cfg.metric.direction,
            run_number=state.next_run,
            history=tuple(PastRun(r.run, r.status, r.value, r.description, r.asi, r.segment) for r in runs),
            best_metric=seg.best if seg else None,
            baseline_metric=seg.baseline if seg else None,
            time_budget_s=self.cfg.time_budget_s,
            seed=self.cfg.seed,
            feedback=feedback,
        )

    def _record(
        self,
        *,
        run: int,
        commit: str,
        metrics: dict[str, float],
        decision: Decision,
        description: str,
        asi: dict[str, Any],
        duration_s: float,
        diff: dict[str, Any] | None,
        agent: dict[str, Any] | None = None,
        confidence: float | None = None,
        extra: dict[str, Any] | None = None,
        state: ledger.LedgerState | None = None,
    ) -> dict[str, Any]:
        state = state if state is not None else self.load_ledger()
        value = metrics.get(self.cfg.metric.name)
        asi = dict(asi)
        if decision.status != "keep":
            asi.setdefault("rollback_reason", decision.reason)
        rec: dict[str, Any] = {
            "run": run,
            "commit": short(commit),
            # 0 for runs without a valid result, as the seed and pi-autoresearch write it
            "metric": value if value is not None and decision.status != "crash" else 0,
            "metrics": metrics,
            "status": decision.status,
            "description": description,
            "timestamp": int(self.clock()),
            "segment": max(len(state.segments) - 1, 0),
            "confidence": confidence,
            "asi": asi,
            "reason": decision.reason,
            "duration_s": round(duration_s, 3),
        }
        if diff is not None:
            rec["diff"] = diff
        if agent:
            rec["agent"] = agent
        if extra:
            rec.update(extra)
        return rec

    def _confidence_after(self, state: ledger.LedgerState, value: float | None, kept: bool) -> float | None:
        seg = state.current
        if seg is None or value is None:
            return seg.confidence if seg else None
        values = [r.value for r in seg.runs if r.value is not None] + [value]
        baseline = seg.baseline if seg.baseline is not None else value
        best = value if kept else seg.best
        return mad_confidence(values, baseline, best)

    def _env(self, run: int) -> dict[str, str]:
        return {
            "AUTORESEARCH_TIME_BUDGET": f"{self.cfg.time_budget_s:g}",
            "AUTORESEARCH_SEED": str(self.cfg.seed),
            "AUTORESEARCH_RUN": str(run),
            "AUTORESEARCH_WORKSPACE": str(self.root),
            "AUTORESEARCH_CHECKPOINT": str(self.state_dir / "checkpoints" / f"run-{run}"),
        }

    def prepare(self) -> None:
        """Run the target's one-time preparation if it has not completed yet."""
        cmd = self.cfg.prepare_command
        if not cmd:
            return
        marker = self.state_dir / "prepared"
        if marker.exists() and marker.read_text().strip() == cmd:
            return
        self.say(f"preparing (one time): {cmd}")
        res = self.runner(
            cmd,
            self.root,
            env=self._env(0),
            timeout_s=6 * 3600,
            log_path=self.state_dir / "prepare.log",
            progress=self.progress,
            label="prepare",
            cancel=lambda: self.interrupts.abort_requested,
        )
        if not res.ok:
            raise ControllerError(
                f"the preparation command failed ({'timed out' if res.timed_out else f'exit {res.exit_code}'}); "
                f"see {res.log_path}. Last lines:\n{res.tail[-2000:]}"
            )
        _atomic_write(marker, cmd.encode())

    # ------------------------------------------------------------- iteration
    def iterate(self, agent: Agent | None, proposal: Proposal | None = None) -> IterationResult:
        """One experiment. `agent` proposes edits; or `proposal` describes edits already in the tree
        (external agents); with neither, and no baseline yet, this is the baseline run."""
        state = self.load_ledger()
        seg = state.current
        run = state.next_run
        t0 = self.clock()
        baseline = seg is None or seg.baseline_run is None
        if baseline:
            if not self.ws.is_clean():
                raise ControllerError(
                    "this segment has no baseline yet and the tree has uncommitted changes: the baseline must "
                    "run the files as they are committed. Stash your edits (`git stash`), run "
                    "`autoresearch experiment -d baseline`, then `git stash pop`."
                )
            proposal = Proposal("baseline", {"hypothesis": "baseline: the files as committed"})
        elif proposal is None:
            if agent is None:
                raise ControllerError("no agent and no proposal")
            proposal = self._propose(agent, state, run, t0)
            if isinstance(proposal, IterationResult):
                return proposal
        _fault("after_propose")

        asi = dict(proposal.asi)
        agent_info = self._agent_info(agent if not baseline else None, proposal)
        diff_info: dict[str, Any] | None = None
        if not baseline:
            self._commit_notes(run)
            refused, diff_info = self._validate(state, run)
            if refused is not None and refused.reason.startswith("duplicate") and agent is not None:
                # A repeat is told back to the agent once, with the fact; a second repeat is logged.
                self.ws.discard_working_changes(self.ws.changed_paths())
                retry = self._propose(agent, state, run, t0, feedback=f"Your proposal was refused: {refused.reason}. "
                                      "Propose a different change.")
                if isinstance(retry, IterationResult):
                    return retry
                proposal = retry
                asi = dict(proposal.asi)
                agent_info = _add_usage(agent_info, self._agent_info(agent, proposal))
                self._commit_notes(run)
                refused, diff_info = self._validate(state, run)
            if refused is not None:
                rec = self._record(
                    run=run,
                    commit=self.ws.head(),
                    metrics={},
                    decision=refused,
                    description=proposal.description,
                    asi=asi,
                    duration_s=self.clock() - t0,
                    diff=diff_info,
                    agent=agent_info,
                    confidence=seg.confidence if seg else None,
                    state=state,
                )
                ledger.append(self.ledger_path, rec)
                self.ws.discard_working_changes(self.ws.changed_paths())
                return IterationResult(rec, refused)

        # commit: the state file goes first so a kill between the two is recognisable
        parent = self.ws.head()
        st: dict[str, Any] = {
            "run": run,
            "phase": "committing",
            "parent": parent,
            "description": proposal.description,
            "asi": asi,
            "diff": diff_info,
            "agent": agent_info,
            "started": t0,
            "baseline": baseline,
            "committed": not baseline,
        }
        self._write_state(st)
        _fault("after_state_committing")
        commit = parent if baseline else self.ws.commit_all(f"experiment #{run}: {proposal.description}")
        _fault("after_commit")
        st.update(phase="running", commit=commit)
        self._write_state(st)
        _fault("after_state_running")

        first = self._sample(run, 0)
        _fault("after_run")
        best_run = seg.best_run if seg else None
        decision = decide(
            metric_name=self.cfg.metric.name,
            metrics=first.metrics,
            failure=first.failure,
            checks_failure=first.checks_failure,
            best=None if baseline else (seg.best if seg else None),
            best_metrics=best_run.metrics if best_run else {},
            direction=self.cfg.metric.direction,
            tolerance=self.cfg.tolerance,
            lines_added=(diff_info or {}).get("added", 0),
            lines_removed=(diff_info or {}).get("removed", 0),
            guards=self.cfg.guards,
        )
        samples = [first]
        extra: dict[str, Any] = {"wall_s": round(first.res.wall_s, 3)}
        confidence: float | None = None
        if baseline and decision.status == "keep" and self.cfg.calibrate >= 2:
            samples, decision = self._calibrate(run, first)
        elif (not baseline and decision.status == "keep" and seg is not None and seg.calibration is not None
              and best_run is not None and decision.gain is not None):
            samples, decision, evidence = self._confirm(run, first, decision, seg, best_run)
            extra["evidence"] = evidence
            confidence = evidence.get("z")
        metrics = dict(first.metrics)
        values = [x.value(self.cfg.metric.name) for x in samples]
        if len(samples) > 1:
            extra["samples"] = [x.as_dict(self.cfg.metric.name) for x in samples]
            if all(v is not None for v in values):
                metrics[self.cfg.metric.name] = statistics.fmean(v for v in values if v is not None)
        for x in samples:
            asi.update(x.notes)
        failed = next((x for x in samples if x.failure or x.checks_failure), first)
        if decision.status == "crash":
            asi.setdefault("tail", failed.res.tail[-1500:])
        value = metrics.get(self.cfg.metric.name)
        if confidence is None:
            confidence = self._confidence_after(state, value if decision.status in ("keep", "discard") else None,
                                                decision.status == "keep")
        if decision.status == "keep" and self.cfg.heldout_command:
            extra["heldout"] = self._heldout(run)
        if baseline:
            extra["baseline"] = True
        rec = self._record(
            run=run,
            commit=commit,
            metrics=metrics,
            decision=decision,
            description=proposal.description,
            asi=asi,
            duration_s=self.clock() - t0,
            diff=diff_info,
            agent=agent_info,
            confidence=confidence,
            extra=extra,
            state=state,
        )
        ledger.append(self.ledger_path, rec)
        _fault("after_append")
        if decision.status != "keep" and not baseline:
            self._undo_commit(run, commit)
            _fault("after_revert")
        self._prune_checkpoints(run, decision.status == "keep")
        self._clear_state()
        stop = None
        if baseline and decision.status != "keep":
            stop = (
                f"the baseline run failed ({decision.reason}); the agent cannot fix the target: make "
                f"`{self.cfg.command}` work (and print METRIC {self.cfg.metric.name}=<number>), then run again. "
                f"Log: {failed.res.log_path}"
            )
        return IterationResult(rec, decision, stop)

    # ------------------------------------------------------------ measuring
    def _sample(self, run: int, index: int) -> Sample:
        """Run the experiment once with seed `cfg.seed + index`, and judge what it produced."""
        seed = self.cfg.seed + index
        suffix = "" if index == 0 else f".s{index + 1}"
        result_file = self.state_dir / "results" / f"{run}{suffix}.jsonl"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)
        res = self._run(run, seed=seed, log_name=f"{run}{suffix}.log", result_file=result_file)
        metrics = parse_metrics(res.log_path.read_text(encoding="utf-8", errors="replace"))
        notes: dict[str, Any] = {}
        channel_failure = None
        if self.cfg.metric_source == "result_file":
            reported, problems = integrity.read_results(result_file)
            verdict = integrity.apply_channel(self.cfg.metric.name, metrics, reported, problems)
            metrics, channel_failure, notes = verdict.metrics, verdict.failure, dict(verdict.notes)
        failure = self._failure(res)
        checks_failure = None
        if failure is None:
            checks_failure = (
                self._integrity_after_run()
                or integrity.over_budget(res.wall_s, self.cfg.time_budget_s, self.cfg.startup_allowance_s,
                                         self.cfg.eval_allowance_s)
                or channel_failure
                or self._checks(run)
            )
        if res.peak_rss_mb is not None:
            metrics.setdefault("peak_rss_mb", round(res.peak_rss_mb, 1))
        return Sample(seed, res, metrics, failure, checks_failure, notes)

    def _calibrate(self, run: int, first: Sample) -> tuple[list[Sample], Decision]:
        """Run the baseline `calibrate` times in all and log the noise floor as a calibration entry."""
        samples, decision, entry = gate.calibrate(
            first, lambda i: self._sample(run, i), runs=self.cfg.calibrate, metric=self.cfg.metric.name, say=self.say
        )
        if entry is not None:
            ledger.append(self.ledger_path, {**entry, "baseline_run": run, "timestamp": int(self.clock())})
        return samples, decision

    def _confirm(self, run: int, first: Sample, decision: Decision, seg: ledger.Segment,
                 best_run: ledger.RunRecord) -> tuple[list[Sample], Decision, dict[str, Any]]:
        assert seg.calibration is not None and best_run.value is not None
        rules = gate.GateRules(self.cfg.min_effect_sigma, self.cfg.confirm, self.cfg.tolerance, self.cfg.metric.direction)
        return gate.confirm(
            first, decision, lambda i: self._sample(run, i), rules=rules, metric=self.cfg.metric.name,
            best=best_run.value, best_n=best_run.n_samples, calibration=seg.calibration,
            replicates=gate.replicate_groups(seg), first_seed=self.cfg.seed, say=self.say,
        )

    def _heldout(self, run: int) -> dict[str, Any]:
        """Evaluate the held-out metric of a kept run from its checkpoint; never used to decide."""
        name = self.cfg.heldout_metric or ""
        result_file = self.state_dir / "results" / f"{run}.heldout.jsonl"
        result_file.unlink(missing_ok=True)
        res = self.runner(
            self.cfg.heldout_command or "",
            self.root,
            env={**self._env(run), integrity.RESULT_ENV: str(result_file)},
            timeout_s=self.cfg.effective_timeout_s,
            log_path=self.state_dir / "runs" / f"{run}.heldout.log",
            progress=self.progress,
            cancel=lambda: self.interrupts.abort_requested,
            label=f"held-out #{run}",
        )
        reported, _ = integrity.read_results(result_file)
        values = [v for n, v in reported if n == name]
        if not values and self.cfg.metric_source == "stdout":
            printed = parse_metrics(res.log_path.read_text(encoding="utf-8", errors="replace"))
            values = [printed[name]] if name in printed else []
        if res.ok and values:
            return {name: values[-1]}
        why = self._failure(res) or f"no {name} reported"
        return {name: None, "error": why}

    def _prune_checkpoints(self, run: int, kept: bool) -> None:
        """Checkpoints are big and reproducible from their commit: keep only the latest kept run's."""
        root = self.state_dir / "checkpoints"
        if not root.is_dir():
            return
        for d in root.glob("run-*"):
            if d.name == f"run-{run}" and kept:
                continue
            if kept or d.name == f"run-{run}":
                shutil.rmtree(d, ignore_errors=True)

    def _propose(
        self, agent: Agent, state: ledger.LedgerState, run: int, t0: float, feedback: str | None = None
    ) -> Proposal | IterationResult:
        """Ask the agent. A failure that cost something (an LLM call) is logged as a crash with its
        usage and the loop goes on; an agent that cannot propose at all raises AgentError."""
        try:
            return agent.propose(self._context(state, feedback))
        except AgentError as exc:
            usage = getattr(exc, "usage", None)
            if usage is None:
                raise
            decision = Decision("crash", f"the agent failed to propose: {exc}")
            changed = self.ws.changed_paths()
            if changed:  # whatever it edited before failing is saved, then undone
                patch, _ = self.ws.working_diff()
                _atomic_write(self.state_dir / "patches" / f"{run}.diff", patch.encode())
                self.ws.discard_working_changes(changed)
            rec = self._record(
                run=run, commit=self.ws.head(), metrics={}, decision=decision, description="(proposal failed)",
                asi={"hypothesis": "(none: the proposal failed)"}, duration_s=self.clock() - t0, diff=None,
                agent={**usage, "name": agent.name, **({"model": exc.model} if getattr(exc, "model", None) else {})},
                state=state,
            )
            ledger.append(self.ledger_path, rec)
            return IterationResult(rec, decision)

    @staticmethod
    def _agent_info(agent: Agent | None, proposal: Proposal) -> dict[str, Any]:
        info = dict(proposal.usage or {})
        if proposal.model:
            info["model"] = proposal.model
        if agent is not None:
            info["name"] = agent.name
        return info

    def _commit_notes(self, run: int) -> None:
        """Edits to the session notes are learnings, not experiments: commit them on their own so a
        revert of the experiment never loses them."""
        changed = [p for p in self.ws.changed_paths() if p in NOTES_FILES]
        if changed:
            self.ws.commit_all(f"autoresearch: update notes before experiment #{run}", paths=changed)

    def _validate(self, state: ledger.LedgerState, run: int) -> tuple[Decision | None, dict[str, Any]]:
        """Scope and integrity of a proposal before anything runs. Returns (refusal or None, diff info)."""
        patch, stats = self.ws.working_diff()
        digest = normalized_diff_hash(patch)
        info = {**stats.as_dict(), "sha": digest}
        changed = self.ws.changed_paths()

        def refuse(reason: str, status: Status = "checks_failed") -> tuple[Decision, dict[str, Any]]:
            _atomic_write(self.state_dir / "patches" / f"{run}.diff", patch.encode())
            return Decision(status, reason), info

        if not changed:
            return refuse("the proposal changed nothing")
        outside = [p for p in changed if p not in self.cfg.editable]
        if outside:
            return refuse(f"changes outside the editable files {list(self.cfg.editable)}: {outside}")
        bad = self.check_fixed()
        if bad:
            return refuse("fixed files changed: " + "; ".join(bad))
        if self.cfg.audit:
            if self._fixed_names is None:
                self._fixed_names = integrity.fixed_names([self.root / f for f in self.cfg.fixed])
            findings = integrity.audit_patch(patch, list(self.cfg.fixed), self._fixed_names)
            if findings:
                return refuse("integrity audit: " + "; ".join(str(f) for f in findings[:5]))
        seen = next((r for r in reversed(state.runs) if (r.diff or {}).get("sha") == digest), None)
        if seen is not None:
            return refuse(f"duplicate: the same change as experiment #{seen.run} ({seen.description!r}, "
                          f"{seen.status})", "discard")
        return None, info

    def _run(self, run: int, *, seed: int, log_name: str, result_file: Path) -> RunResult:
        return self.runner(
            self.cfg.command,
            self.root,
            env={**self._env(run), "AUTORESEARCH_SEED": str(seed), integrity.RESULT_ENV: str(result_file)},
            timeout_s=self.cfg.effective_timeout_s,
            log_path=self.state_dir / "runs" / log_name,
            tail_path=self.root / "run.log",
            budget_s=self.cfg.time_budget_s,
            progress=self.progress,
            cancel=lambda: self.interrupts.abort_requested,
            label=f"run #{run}" + ("" if seed == self.cfg.seed else f" (seed {seed})"),
        )

    def _failure(self, res: RunResult) -> str | None:
        if res.cancelled:
            return "aborted by the user (Ctrl-C twice)"
        if res.timed_out:
            return f"timed out after {res.wall_s:.0f}s (limit {self.cfg.effective_timeout_s:g}s); process group killed"
        if res.exit_code != 0:
            return f"exit code {res.exit_code}"
        return None

    def _integrity_after_run(self) -> str | None:
        """The run itself must not change tracked files (e.g. rewrite prepare.py or train.py)."""
        bad = self.check_fixed()
        if bad:
            return "the run changed fixed files: " + "; ".join(bad)
        tracked_changes = [p for p in self.ws.changed_paths() if self.ws.file_at("HEAD", p) is not None]
        if tracked_changes:  # modified or deleted: anything HEAD has
            return f"the run modified or deleted tracked files: {tracked_changes}"
        return None

    def _checks(self, run: int) -> str | None:
        if not self.cfg.checks_command:
            return None
        res = self.runner(
            self.cfg.checks_command,
            self.root,
            env=self._env(run),
            timeout_s=self.cfg.checks_timeout_s,
            log_path=self.state_dir / "runs" / f"{run}.checks.log",
            progress=self.progress,
            cancel=lambda: self.interrupts.abort_requested,
            label=f"checks #{run}",
        )
        if res.ok:
            return None
        why = "timed out" if res.timed_out else f"exit {res.exit_code}"
        return f"checks failed ({why}): {res.tail.strip()[-500:]}"

    # ------------------------------------------------------------------ loop
    def run_loop(self, agent: Agent, rules: StopRules, *, started: float | None = None) -> str:
        """Iterate until a stop rule fires; returns why it stopped. Caller holds the lock."""
        started = self.clock() if started is None else started
        done = 0
        self.interrupts.install()
        try:
            self.prepare()
            while True:
                why = self._should_stop(rules, done, started)
                if why:
                    return why
                self.verify()
                try:
                    result = self.iterate(agent)
                except AgentError as exc:
                    return f"the agent could not propose an experiment: {exc}"
                done += 1
                self.say(format_result(result.record, self.cfg))
                self._maybe_update_learnings(agent, result)
                if result.stop_reason:
                    return result.stop_reason
                if self.interrupts.abort_requested:
                    return "aborted by the user"
        finally:
            self.interrupts.uninstall()

    def _maybe_update_learnings(self, agent: Agent, result: IterationResult) -> None:
        """Every `learn_every` experiments an agent that can (the LLM agent) rewrites the notes'
        "What's been tried" and "Learnings" sections: committed as a notes commit, logged as a
        `learnings` line with its cost. A failure here is reported and never stops the loop."""
        update = getattr(agent, "update_learnings", None)
        n = result.record["run"]
        if update is None or not self.cfg.learn_every or result.record.get("baseline") or n % self.cfg.learn_every:
            return
        state = self.load_ledger()
        try:
            proposal = update(self._context(state))
        except AgentError as exc:
            self.say(f"note: updating the learnings failed: {exc}")
            usage = getattr(exc, "usage", None)
            if usage:
                ledger.append(self.ledger_path, {"type": "learnings", "after_run": n, "timestamp": int(self.clock()),
                                                 "status": "failed", "reason": str(exc), "agent": usage})
            return
        changed = [p for p in self.ws.changed_paths() if p in NOTES_FILES]
        self.ws.discard_working_changes([p for p in self.ws.changed_paths() if p not in NOTES_FILES])
        if proposal is None or not changed:
            return
        commit = self.ws.commit_all(f"autoresearch: learnings after experiment #{n}", paths=changed)
        ledger.append(self.ledger_path, {
            "type": "learnings", "after_run": n, "timestamp": int(self.clock()), "commit": short(commit),
            "description": proposal.description, "agent": self._agent_info(agent, proposal),
        })
        self.say(f"       notes updated after experiment #{n} ({short(commit)})")

    def _should_stop(self, rules: StopRules, done: int, started: float) -> str | None:
        now = self.clock()
        if self.interrupts.stop_requested:
            return "stopped by the user (Ctrl-C)"
        if rules.max_iterations is not None and done >= rules.max_iterations:
            return f"reached --max-iterations {rules.max_iterations}"
        if rules.until is not None and now >= rules.until:
            return f"reached --until {dt.datetime.fromtimestamp(rules.until).strftime('%H:%M')}"
        if rules.max_hours is not None and now - started >= rules.max_hours * 3600:
            return f"reached --max-hours {rules.max_hours:g}"
        state = self.load_ledger()
        if rules.max_cost_usd is not None and state.cost_usd >= rules.max_cost_usd:
            return (f"reached --max-cost ${rules.max_cost_usd:g}: the agent has spent an estimated "
                    f"${state.cost_usd:.2f} on this ledger")
        seg = state.current
        streak = seg.failure_streak() if seg else 0
        if streak >= rules.max_failure_streak:
            return (
                f"{streak} experiments in a row were not kept (limit {rules.max_failure_streak}); stopping so you "
                "can look at what is going wrong (`autoresearch log --last 20`). Raise --max-failure-streak to go on."
            )
        return None


def _add_usage(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Usage of two requests together: numbers add up, the rest is taken from the later one."""
    out = {**a, **b}
    for k in a.keys() & b.keys():
        if isinstance(a[k], int | float) and isinstance(b[k], int | float) and not isinstance(a[k], bool):
            out[k] = a[k] + b[k]
    return out


def format_result(rec: dict[str, Any], cfg: Config) -> str:
    status = rec["status"]
    value = rec["metrics"].get(cfg.metric.name)
    shown = f"{cfg.metric.name}={value:.6g}" if value is not None else "no metric"
    return f"#{rec['run']:<4} {status:<13} {shown:<22} {rec['description']}  ({rec.get('reason', '')})"
