"""The controller: one experiment at a time, recoverable from a kill at any instant.

One iteration (README "How the loop decides"), as `Controller.iterate` reads top to bottom:
  propose -> validate (pre-run checks) -> commit (state file first) -> run (executor, then the
  post-run checks) -> decide (and the noise gate) -> append to the ledger -> revert or keep
  -> clear the state file.
`run_loop` wraps it: lock (the caller) -> recover -> verify -> iterate, until a stop rule fires.

What makes it crash-safe is the journal (`harness.journal`): the ledger line is the commit point
of an experiment; before it, `.autoresearch/state.json` names the run in flight, after it the
remaining steps are idempotent and `recover` redoes whichever did not happen. Nothing the agent
or the user wrote is ever deleted: refused proposals and discarded experiments are saved as
patches, uncommitted edits found at recovery are stashed under a clear name.

The pieces, one module each: `journal` (state file, recovery, undo), `checks` (before and after
a run), `executor` (where a run happens), `records` (the run line, running best, confidence),
`stoprules` (when to stop), `gate` (noise-aware keeps), `decision` (keep or not). Side effects
come in through the constructor (executor, clock, output), so tests drive the controller with
real git but a scripted agent, a fake executor and a fake clock (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from harness import capacity, checks, contention, gate, ledger, notes, records
from harness.agents.base import Agent, AgentError, Proposal
from harness.checks import normalized_diff_hash
from harness.config import Config
from harness.context import proposal_context
from harness.decision import Decision, decide
from harness.executor import Executor, Runner, answers_dir, make_executor
from harness.gate import Sample
from harness.journal import ControllerError, Journal, LockedError, WorkspaceLock, atomic_write
from harness.runner import RunnerError, run_command
from harness.stoprules import Interrupts, StopRules, parse_until, should_stop
from harness.workspace import Workspace, WorkspaceError, short

__all__ = [
    "LOOP_LOG", "Controller", "ControllerError", "Interrupts", "IterationResult", "Signals", "LockedError", "StopRules", "WorkspaceLock",
    "format_result", "normalized_diff_hash", "parse_until",
]

Printer = Callable[[str], None]
# What the machine or the repository does wrong, not the experiment: one is logged as a crash and
# the loop goes on; two in a row stop it (`Controller.run_loop`).
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (RunnerError, git.GitError, WorkspaceError, OSError)


def _fault(point: str) -> None:
    """Fault-injection hook for the kill-at-every-step tests: SIGKILL ourselves at `point`.

    Inert unless AUTORESEARCH_FAULT names this point; costs one dict lookup.
    """
    if os.environ.get("AUTORESEARCH_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


# The controller's own output when no terminal shows it: a detached `run --detach` writes all of it here,
# and a controller whose terminal closed (SIGHUP) writes the rest of it here (in .autoresearch/).
LOOP_LOG = "loop.log"


@dataclass
class Signals(Interrupts):
    """`Interrupts` (Ctrl-C finishes the run in flight, a second Ctrl-C or SIGTERM abandons it), plus SIGHUP:
    a closed terminal or a dropped SSH connection is handled as SIGTERM, unless SIGHUP was ignored when we
    started (`nohup`), and what the controller prints after it goes to `hangup_log` (a write to a hung-up
    terminal fails with EIO). The first signal sets the exit status, 128 + its number as for a process a
    signal killed: 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP."""

    first: int | None = None
    hangup_log: Path | None = None
    _terminal_fds: tuple[int, ...] = ()

    def install(self) -> None:
        super().install()
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle)
        self._terminal_fds = tuple(fd for fd in (1, 2) if os.isatty(fd))  # after a hangup isatty says no

    @property
    def exit_code(self) -> int | None:
        return None if self.first is None else 128 + self.first

    def _handle(self, signum: int, frame: object) -> None:
        self.first = self.first or signum
        if signum == signal.SIGHUP:
            where = self._leave_terminal()
            self.printer("\nautoresearch: hangup (SIGHUP: the terminal closed or the connection dropped)"
                         + (f"; the rest of the output goes to {where}" if where else ""))
            signum = signal.SIGTERM
        super()._handle(signum, frame)

    def _leave_terminal(self) -> str | None:
        """Point stdout and stderr, where they were the terminal, at `hangup_log` (/dev/null if it cannot
        be opened); what is still buffered for the terminal goes there too. Returns where, if anywhere."""
        if not self._terminal_fds:
            return None
        target = str(self.hangup_log or os.devnull)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            target, fd = os.devnull, os.open(os.devnull, os.O_WRONLY)
        for tty in self._terminal_fds:
            os.dup2(fd, tty)
        os.close(fd)
        self._terminal_fds = ()
        return target


@dataclass(frozen=True)
class IterationResult:
    record: dict[str, Any]
    decision: Decision
    stop_reason: str | None = None  # set when this iteration means the loop must stop


@dataclass(frozen=True)
class Measured:
    """What the runs of one experiment add up to: its samples (one per seed) and the decision."""

    samples: list[Sample]
    decision: Decision
    metrics: dict[str, float]  # the first sample's, with the primary metric as the mean of all
    extra: dict[str, Any]  # run-line fields: wall_s, samples, evidence
    confidence: float | None


class Controller:
    def __init__(
        self,
        root: Path,
        cfg: Config,
        *,
        runner: Runner = run_command,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
        printer: Printer = print,
        progress: bool | None = None,
        pre_run: Sequence[checks.PreCheck] = checks.PRE_RUN,
        post_run: Sequence[checks.PostCheck] = checks.POST_RUN,
    ):
        """`executor` runs the experiments (default: `make_executor`, sandboxed as `[session] sandbox` says);
        `pre_run` / `post_run` are the checks before and after each run (harness.checks)."""
        self.root = root.resolve()
        self.cfg = cfg
        self.ws = Workspace(self.root, say=printer)  # a stale index.lock removed mid-session is said in its log
        self.clock = clock
        self.say = printer
        self.ledger_path = ledger.ledger_path(self.root)
        self.state_dir = self.ws.state_dir
        self.journal = Journal(self.ws, cfg, self.ledger_path, clock=clock, say=printer)
        self.interrupts = Signals(printer=printer, hangup_log=self.state_dir / LOOP_LOG)
        self.executor: Executor = executor or make_executor(
            self.ws, cfg, runner=runner, progress=progress, cancel=lambda: self.interrupts.abort_requested)
        self.pre_run, self.post_run = tuple(pre_run), tuple(post_run)
        self._contended_runs: list[dict[str, Any]] = []  # this experiment's contended runs (harness.contention)

    # ------------------------------------------------------------ state and checks
    def load_ledger(self) -> ledger.LedgerState:
        return ledger.load_state(self.ledger_path)

    def recover(self, *, stash_uncommitted: bool = True) -> list[str]:
        """Bring ledger and branch back to a consistent state after any interruption (harness.journal).
        A keep stopped during its held-out evaluation is finished first: evaluated again, then logged."""
        return self._finish_heldout() + self.journal.recover(stash_uncommitted=stash_uncommitted)

    def _finish_heldout(self) -> list[str]:
        st = self.journal.read()
        if st is None or st.get("phase") != "heldout" or not isinstance(st.get("record"), dict):
            return []
        run, commit, rec = int(st["run"]), str(st["commit"]), st["record"]
        if self.load_ledger().find(run) is None:
            if self.ws.head() != commit:
                return []  # the branch moved since: journal.recover logs the run as interrupted
            self.say(f"recovery: experiment #{run} was kept; its held-out evaluation was interrupted: running it again")
            _fault("before_heldout")
            ledger.append(self.ledger_path, self._after_keep(run, commit, rec))
        prune_checkpoints(self.state_dir / "checkpoints", run, True)
        self.journal.clear()
        return [f"experiment #{run} was kept before the controller stopped; finished its held-out evaluation and "
                "logged it as keep"]

    def check_fixed(self) -> list[str]:
        """Fixed files (and the measurement scripts) whose content differs from init."""
        return checks.fixed_changes(self.root, self.cfg)

    def verify(self, state: ledger.LedgerState | None = None) -> None:
        """Refuse to run on a broken ledger chain, changed fixed files or a detached HEAD. `state` is
        the ledger as the caller just read it (read again when not given)."""
        if problem := ledger.chain_problem(state if state is not None else self.load_ledger()):  # no forged line decides
            raise ControllerError(problem)
        bad = self.check_fixed()
        if bad:
            raise ControllerError(
                "fixed files differ from the hashes recorded at init: "
                + "; ".join(bad)
                + ". Restore them (e.g. `git checkout <last kept commit> -- FILE`) before running."
            )
        self.verify_head()

    def verify_head(self) -> None:
        """Runs happen on a branch: a keep on a detached HEAD would be a commit nothing points to."""
        if self.ws.branch() is None:
            raise ControllerError("HEAD is detached; check out the session branch first"
                                  + (f" (`git checkout {self.cfg.branch}`)" if self.cfg.branch else ""))
        if self.cfg.branch and self.ws.branch() != self.cfg.branch:
            self.say(f"warning: on branch {self.ws.branch()}, but the session's branch is {self.cfg.branch}")

    def prepare(self) -> None:
        """Run the target's one-time preparation if it has not completed yet."""
        cmd = self.cfg.prepare_command
        if not cmd:
            return
        marker = self.state_dir / "prepared"
        if marker.exists() and marker.read_text().strip() == cmd:
            return
        self.say(f"preparing (one time): {cmd}")
        res = self.executor.prepare(cmd, self._env(0), log="prepare.log", timeout_s=6 * 3600)
        if not res.ok:
            raise ControllerError(
                f"the preparation command failed ({'timed out' if res.timed_out else f'exit {res.exit_code}'}); "
                f"see {res.log_path}. Last lines:\n{res.tail[-2000:]}"
            )
        atomic_write(marker, cmd.encode())

    # -------------------------------------------------------------------- iteration
    def iterate(self, agent: Agent | None, proposal: Proposal | None = None) -> IterationResult:
        """One experiment. `agent` proposes edits; or `proposal` describes edits already in the tree
        (external agents); with neither, and no baseline yet, this is the baseline run."""
        state = self._measured_here(self.load_ledger())
        seg = state.current
        run, t0 = state.next_run, self.clock()
        baseline = seg is None or seg.baseline_run is None

        # 1. propose: the baseline runs the files as committed; an external agent has edited already
        if baseline:
            if not self.ws.is_clean():
                raise ControllerError(
                    "this segment has no baseline yet and the tree has uncommitted changes: the baseline must "
                    "run the files as they are committed. Stash your edits (`git stash`), run "
                    "`autoresearch experiment -d baseline`, then `git stash pop`."
                )
            agent, proposal = None, Proposal("baseline", {"hypothesis": "baseline: the files as committed"})
        elif proposal is None:
            if agent is None:
                raise ControllerError("no agent and no proposal")
            proposed = self._propose(agent, state, run, t0)
            if isinstance(proposed, IterationResult):
                return proposed
            proposal = proposed
        _fault("after_propose")
        agent_info = records.agent_field(agent.name if agent else None, proposal)

        # 2. validate before anything runs: a refusal is logged and undone; a repeat goes back once
        diff: dict[str, Any] | None = None
        if not baseline:
            refused, diff = self._screen(state, run)
            if refused is not None and refused.status == "discard" and agent is not None:  # a repeat
                self.ws.discard_working_changes(self.ws.changed_paths())
                retry = self._propose(agent, state, run, t0, feedback=f"Your proposal was refused: {refused.reason}. "
                                      "Propose a different change.")
                if isinstance(retry, IterationResult):
                    return retry
                proposal, agent_info = retry, records.add_usage(agent_info, records.agent_field(agent.name, retry))
                refused, diff = self._screen(state, run)
            if refused is not None:
                rec = self._record(run, self.ws.head(), {}, refused, proposal.description, proposal.asi, t0, diff,
                                   agent_info, records.confidence_after(seg, None, refused.status),
                                   self._capacity(), state=state)
                ledger.append(self.ledger_path, rec)
                self.ws.discard_working_changes(self.ws.changed_paths())
                return IterationResult(rec, refused)

        # 3. commit: the state file goes first so a kill between the two is recognisable
        cap = self._capacity()  # the tree holds what will run: the proposal, or the baseline's committed files
        parent = self.ws.head()
        st: dict[str, Any] = {
            "run": run, "phase": "committing", "parent": parent, "description": proposal.description,
            "asi": proposal.asi, "diff": diff, "agent": agent_info, "started": t0, "baseline": baseline,
            "committed": not baseline,
        }
        self.journal.write(st)
        _fault("after_state_committing")
        commit = parent if baseline else self.ws.commit_all(f"experiment #{run}: {proposal.description}")
        _fault("after_commit")
        st.update(phase="running", commit=commit)
        self.journal.write(st)
        _fault("after_state_running")

        # 4. run (the executor, then the post-run checks; a contended run again), decide, and let the noise gate confirm
        self._contended_runs = []
        first = self._judged(run, commit, 0, None if baseline else self._reference(seg), None)
        _fault("after_run")
        moved = self._head_moved(run, commit)
        if moved:
            first = dataclasses.replace(first, checks_failure=moved)
        m = self._measure(run, commit, first, seg, baseline, diff)
        asi = dict(proposal.asi)
        for x in m.samples:
            asi.update(x.notes)
        failed = next((x for x in m.samples if x.failure or x.checks_failure), first)
        if m.decision.status == "crash":
            asi.setdefault("tail", failed.res.tail[-1500:])
        if baseline:
            m.extra["baseline"] = True
        m.extra.update(cap)

        # 5. the ledger line commits the experiment; then undo what is not kept, and clear the journal.
        # A keep's held-out evaluation comes first, with the line it completes in the journal: a kill
        # during it resumes the evaluation (`_finish_heldout`), it never costs the keep.
        rec = self._record(run, commit, m.metrics, m.decision, proposal.description, asi, t0, diff, agent_info, m.confidence,
                           m.extra, state=state)
        if m.decision.status == "keep" and (self.cfg.heldout_command or self.cfg.judge):
            st.update(phase="heldout", record=rec)
            self.journal.write(st)
            _fault("before_heldout")
            rec = self._after_keep(run, commit, rec)
        ledger.append(self.ledger_path, rec)
        _fault("after_append")
        if m.decision.status != "keep" and not baseline:
            self.journal.undo_commit(run, commit)
            _fault("after_revert")
        prune_checkpoints(self.state_dir / "checkpoints", run, m.decision.status == "keep")
        self.journal.clear()
        stop = None
        busy = next((x.contended for x in m.samples if x.contended), None)
        if baseline and m.decision.status != "keep" and busy:
            stop = (f"the baseline could not be measured: the machine was contended ({busy}). Run again when "
                    "nothing else is using it, or use a token budget (README \"Noise-aware keeps\")")
        elif baseline and m.decision.status != "keep":
            stop = baseline_failure(m.decision, failed, self.cfg)
        return IterationResult(rec, m.decision, stop)

    def _measured_here(self, state: ledger.LedgerState) -> ledger.LedgerState:
        """An imported segment (`import --tsv`) was measured elsewhere, perhaps on other hardware: nothing is
        kept against its best. A new segment starts, so this run is a baseline measured on this machine."""
        seg = state.current
        if seg is None or not seg.imported:
            return state
        self.say(f"segment {seg.index} was imported from {seg.header.raw.get('imported_from')}: measuring the "
                 f"baseline on this machine, in a new segment, before anything is kept")
        cfg = self.cfg
        ledger.append(self.ledger_path, ledger.header_line(
            cfg.name, cfg.metric.name, cfg.metric.unit, cfg.metric.direction, **ledger.carried(seg.header),
            target=cfg.target, branch=cfg.branch, time_budget_s=cfg.time_budget_s,
            reason=f"segment {seg.index} was imported from {seg.header.raw.get('imported_from')}: the baseline is "
                   "measured again here"))
        return self.load_ledger()

    # ------------------------------------------------------------------- the steps
    def _screen(self, state: ledger.LedgerState, run: int) -> tuple[Decision | None, dict[str, Any]]:
        """Commit the notes, then run the pre-run checks on the proposal's edits.
        Returns (the refusal or None, the diff's stats and hash)."""
        notes.commit_notes(self.ws, f"autoresearch: update notes before experiment #{run}")
        patch, stats = self.ws.working_diff()
        digest = normalized_diff_hash(patch)
        info = {**stats.as_dict(), "sha": digest}
        proposed = checks.Proposed(self.cfg, self.root, state, patch, self.ws.changed_paths(), digest)
        failed = checks.first_failure(self.pre_run, proposed)
        if failed is None:
            return None, info
        self.journal.save_patch(run, patch)
        check, reason = failed
        return Decision("discard" if check in checks.REPEATS else "checks_failed", reason), info

    def _sample(self, run: int, commit: str, index: int, attempt: int = 0) -> Sample:
        """Run the experiment once with seed `cfg.seed + index`; a run that did not crash then goes
        through the post-run checks. `attempt` > 0: a re-run of a contended one, with its own log."""
        seed = self.cfg.seed + index
        env = self._env(run)
        key = (f"{run}" if index == 0 else f"{run}.s{index + 1}") + (f".c{attempt}" if attempt else "")
        x = self.executor.run(commit, seed, env, key=key,
                              label=f"run #{run}" + ("" if seed == self.cfg.seed else f" (seed {seed})"))
        if x.failure is None:
            failed = checks.first_failure(self.post_run, checks.Ran(self.cfg, run, x, self.executor, env))
            if failed is not None:
                x = dataclasses.replace(x, checks_failure=failed[1])
        tokens = contention.token_budget_of(self.cfg)
        if tokens and x.failure is None and x.checks_failure is None:  # the run's file is editable: check it
            x = dataclasses.replace(x, checks_failure=contention.token_budget_problem(x.metrics, tokens))
        return x

    def _judged(self, run: int, commit: str, index: int, reference: contention.Machine | None,
                same_code: contention.Machine | None) -> Sample:
        """`_sample`, judged for machine contention (harness.contention) against the segment baseline's
        `reference` and an earlier run of the same code: a contended run is run again with the same seed,
        up to contention.RERUNS times; one still contended comes back marked, and never counts."""
        x = self._sample(run, commit, index)
        if reference is None and same_code is None:
            return x  # the baseline's first run: it is the reference
        attempt = 0
        while not (x.failure or x.checks_failure) and (why := contention.judge(x.machine, reference, same_code)):
            self._contended_runs.append({**x.as_dict(self.cfg.metric.name), "contended": why})
            if attempt == contention.RERUNS:
                return dataclasses.replace(x, contended=why)
            attempt += 1
            self.say(f"       contended: {why}; running it again ({attempt} of {contention.RERUNS})")
            x = self._sample(run, commit, index, attempt)
        return x

    @staticmethod
    def _reference(seg: ledger.Segment | None) -> contention.Machine | None:
        """What the machine gave the segment's baseline (None before this was recorded)."""
        if seg is None or seg.baseline_run is None:
            return None
        return contention.Machine.from_dict(seg.baseline_run.raw.get("machine"))

    def _measure(self, run: int, commit: str, first: Sample, seg: ledger.Segment | None, baseline: bool,
                 diff: dict[str, Any] | None) -> Measured:
        """Decide on the first sample; a kept baseline is calibrated, a keep candidate is confirmed on
        more seeds when the segment is calibrated (harness.gate)."""
        name = self.cfg.metric.name
        best_run = seg.best_run if seg else None
        decision = decide(
            metric_name=name, metrics=first.metrics, failure=first.failure, checks_failure=first.checks_failure,
            best=None if baseline or best_run is None else best_run.value,
            best_metrics=best_run.metrics if best_run else {}, direction=self.cfg.metric.direction,
            tolerance=self.cfg.tolerance, lines_added=(diff or {}).get("added", 0),
            lines_removed=(diff or {}).get("removed", 0), guards=self.cfg.guards,
        )
        if first.contended and decision.status in ("keep", "discard"):
            decision = Decision("discard", f"contended: {first.contended}; not kept on this sample "
                                           f"(run {contention.RERUNS + 1} times)", decision.gain)
        samples = [first]
        extra: dict[str, Any] = {"wall_s": round(first.res.wall_s, 3)}
        confidence: float | None = None
        reference = first.machine if baseline else self._reference(seg)

        def sample(i: int) -> Sample:  # the gate's sampler: one more run with seed cfg.seed + i
            return self._judged(run, commit, i, reference, first.machine)

        if baseline and decision.status == "keep" and self.cfg.calibrate >= 2:
            samples, decision, entry = gate.calibrate(first, sample, runs=self.cfg.calibrate, metric=name, say=self.say)
            if entry is not None:
                ledger.append(self.ledger_path, {**entry, "baseline_run": run, "timestamp": int(self.clock())})
        elif (not baseline and decision.status == "keep" and seg is not None and seg.calibration is not None
              and best_run is not None and best_run.value is not None and decision.gain is not None):
            rules = gate.GateRules(self.cfg.min_effect_sigma, self.cfg.confirm, self.cfg.tolerance,
                                   self.cfg.metric.direction)
            samples, decision, evidence = gate.confirm(
                first, decision, sample, rules=rules, metric=name, best=best_run.value, best_n=best_run.n_samples,
                calibration=seg.calibration, replicates=gate.replicate_groups(seg), first_seed=self.cfg.seed,
                say=self.say,
            )
            extra["evidence"] = evidence
            confidence = evidence.get("z")
        machines = [x.machine for x in samples if not x.contended]
        machine = contention.combine(machines) if baseline else first.machine
        extra["machine"] = (machine or first.machine).as_dict()
        busy = next((x.contended for x in samples if x.contended), None)
        if busy:
            extra["contended"] = busy
        if self._contended_runs:
            extra["contended_runs"] = self._contended_runs
        metrics = dict(first.metrics)
        if len(samples) > 1:
            extra["samples"] = [x.as_dict(name) for x in samples]
            values = [x.value(name) for x in samples]
            if all(v is not None for v in values):
                metrics[name] = statistics.fmean(v for v in values if v is not None)
        if confidence is None:
            confidence = records.confidence_after(seg, metrics.get(name), decision.status)
        return Measured(samples, decision, metrics, extra, confidence)

    def _head_moved(self, run: int, commit: str) -> str | None:
        """After a run: HEAD must still be the commit the controller made, on the session's branch.
        Something else committed or switched branches meanwhile (another program in the workspace;
        an unsandboxed run): its commits are kept under a ref, the branch goes back to `commit`, and
        the run is checks_failed. Nothing is lost; the controller never reverts a commit it did not make."""
        branch, head = self.ws.branch(), self.ws.head()
        if head == commit and (not self.cfg.branch or branch == self.cfg.branch):
            return None
        ref = f"refs/autoresearch/moved/run-{run}"
        self.ws.repo.git.update_ref(ref, head)
        if not self.ws.is_clean():  # whatever else was left in the tree, out of the way first
            self.ws.stash(f"autoresearch: changes found when HEAD moved during experiment #{run}")
        if branch is None or (self.cfg.branch and branch != self.cfg.branch):
            self.ws.checkout(self.cfg.branch or commit)
        if self.ws.head() != commit:
            self.ws.reset_to(commit)
        where = f"branch {branch}" if branch else "a detached HEAD"
        return (f"HEAD moved during the run (to {short(head)} on {where}; the controller committed {short(commit)}): "
                f"something else changed the repository. Saved as {ref}; the branch is back at {short(commit)}")

    def _after_keep(self, run: int, commit: str, rec: dict[str, Any]) -> dict[str, Any]:
        """A kept run's line with what is measured after the keep and never decides: the held-out metric, and
        the judge metric (harness.judge: judged here, with the controller's key, from the answers the run's fixed
        evaluation left in $AUTORESEARCH_ANSWERS_DIR, which the executor kept in .autoresearch/answers/<run>.eval/;
        absent with its reason when it cannot be had)."""
        if self.cfg.heldout_command:
            rec = {**rec, "heldout": self._heldout(run, commit)}
        if answers := self.cfg.judge:
            from harness import judge  # here: sessions without a judge never import the API client

            cfg = self.cfg
            got = judge.run_metric(answers_dir(self.state_dir, f"{run}.eval"), answers,
                                   baseline=cfg.judge_baseline, metric=cfg.judge_metric, model=cfg.judge_model,
                                   max_cost_usd=cfg.judge_max_cost)
            self.say(f"       {got.summary}")
            rec = {**rec, "metrics": {**(rec.get("metrics") or {}), **got.metrics}, "judge": got.field}
        return rec

    def _heldout(self, run: int, commit: str) -> dict[str, Any]:
        """Evaluate the held-out metric of a kept run from its checkpoint; never used to decide."""
        name = self.cfg.heldout_metric or ""
        x = self.executor.evaluate(self.cfg.heldout_command or "", self._env(run), key=f"{run}.heldout",
                                   label=f"held-out #{run}", commit=commit)
        value = x.metrics.get(name)
        if x.failure is None and value is not None:
            return {name: value}
        return {name: None, "error": x.failure or f"no {name} reported"}

    def _record(self, run: int, commit: str, metrics: dict[str, float], decision: Decision, description: str,
                asi: dict[str, Any], t0: float, diff: dict[str, Any] | None, agent: dict[str, Any] | None,
                confidence: float | None = None, extra: dict[str, Any] | None = None, *,
                state: ledger.LedgerState) -> dict[str, Any]:
        now = self.clock()
        return records.run_line(
            run=run, commit=short(commit), status=decision.status, description=description,
            metric=None if decision.status == "crash" else metrics.get(self.cfg.metric.name), metrics=metrics,
            timestamp=int(now), segment=records.segment_index(state), confidence=confidence, asi=asi,
            reason=decision.reason, duration_s=now - t0, diff=diff, agent=agent, extra=extra,
        )

    def _capacity(self) -> dict[str, Any]:
        """Post-training sessions (an advice.json): the run line's `capacity` field for the train.py in the
        tree (harness.capacity); nothing elsewhere."""
        field = capacity.observe(self.root, self.cfg)
        return {} if field is None else {"capacity": field}

    def _env(self, run: int) -> dict[str, str]:
        return {
            "AUTORESEARCH_TIME_BUDGET": f"{self.cfg.time_budget_s:g}",
            "AUTORESEARCH_SEED": str(self.cfg.seed),
            "AUTORESEARCH_RUN": str(run),
            "AUTORESEARCH_WORKSPACE": str(self.root),
            "AUTORESEARCH_CHECKPOINT": str(self.state_dir / "checkpoints" / f"run-{run}"),
            **({contention.TOKEN_BUDGET_ENV: str(tokens)} if (tokens := contention.token_budget_of(self.cfg)) else {}),
        }

    # ---------------------------------------------------------------- the agent
    def _propose(
        self, agent: Agent, state: ledger.LedgerState, run: int, t0: float, feedback: str | None = None
    ) -> Proposal | IterationResult:
        """Ask the agent. A failure that cost something (an LLM call) is logged as a crash with its
        usage and the loop goes on; an agent that cannot propose at all raises AgentError."""
        try:
            return agent.propose(proposal_context(self.cfg, self.root, state, feedback))
        except AgentError as exc:
            usage = getattr(exc, "usage", None)
            if usage is None:
                raise
            decision = Decision("crash", f"the agent failed to propose: {exc}")
            changed = self.ws.changed_paths()
            if changed:  # whatever it edited before failing is saved, then undone
                self.journal.save_patch(run, self.ws.working_diff()[0])
                self.ws.discard_working_changes(changed)
            model = getattr(exc, "model", None)
            rec = self._record(run, self.ws.head(), {}, decision, "(proposal failed)",
                               {"hypothesis": "(none: the proposal failed)"}, t0, None,
                               {**usage, "name": agent.name, **({"model": model} if model else {})}, state=state)
            ledger.append(self.ledger_path, rec)
            return IterationResult(rec, decision)

    def _maybe_update_learnings(self, agent: Agent, result: IterationResult) -> None:
        """Every `learn_every` experiments an agent that can rewrites the notes' learnings (harness.notes)."""
        if notes.learnings_due(agent, self.cfg.learn_every, result.record):
            notes.update_learnings(agent, proposal_context(self.cfg, self.root, self.load_ledger()), self.ws,
                                   self.ledger_path, after_run=result.record["run"], clock=self.clock, say=self.say)

    # --------------------------------------------------------------------- the loop
    def run_loop(self, agent: Agent, rules: StopRules, *, started: float | None = None) -> str:
        """Iterate until a stop rule fires; returns why it stopped. Caller holds the lock.

        An environment error in one experiment (its command cannot start, git fails, the disk is
        full) is logged as that experiment's crash with its cause, the workspace is repaired as
        `recover` would, and the loop goes on; a second one in a row stops it, saying what to fix.
        """
        started = self.clock() if started is None else started
        done = errors_in_a_row = 0
        self.interrupts.install()
        try:
            self.executor.check()  # sandbox = "bwrap" on a machine without it: one clear error, before anything
            self.prepare()
            while True:
                now, state = self.clock(), self.load_ledger()
                why = should_stop(rules, done=done, started=started, now=now, state=state, interrupts=self.interrupts)
                if why:
                    return why
                self.verify(state)
                try:
                    result = self.iterate(agent)
                    self.say(format_result(result.record, self.cfg))
                    self._maybe_update_learnings(agent, result)
                except AgentError as exc:
                    return f"the agent could not propose an experiment: {exc}"
                except ENVIRONMENT_ERRORS as exc:
                    done, errors_in_a_row = done + 1, errors_in_a_row + 1
                    stop = self._environment_error(exc, state.next_run, errors_in_a_row)
                    if stop:
                        return stop
                    continue
                done, errors_in_a_row = done + 1, 0
                if result.stop_reason:
                    return result.stop_reason
                if self.interrupts.abort_requested:
                    return "aborted by the user"
        finally:
            self.interrupts.uninstall()
            self.executor.close()  # the last run's checkout, kept for its checks command

    def _environment_error(self, exc: BaseException, run: int, in_a_row: int) -> str | None:
        """Log experiment `run` as a crash caused by `exc` (unless its line is already written) and
        repair the workspace as `recover` does. Returns the stop reason on the second in a row."""
        cause = _one_line(f"{type(exc).__name__}: {exc}")
        self.say(f"environment error in experiment #{run}: {cause}")
        try:
            for line in self.journal.recover(cause=cause):
                self.say(f"recovery: {line}")
            state = self.load_ledger()
            logged = state.find(run)
            if logged is None:  # it stopped before the journal named it (while proposing or validating)
                now = self.clock()
                reason = f"environment error: {cause}"
                logged_line = records.run_line(
                    run=run, commit=short(self.ws.head()), status="crash", description="(stopped before its commit)",
                    metric=None, metrics={}, timestamp=int(now), segment=records.segment_index(state),
                    confidence=None, asi={"hypothesis": "(none: the iteration failed)"}, reason=reason,
                )
                ledger.append(self.ledger_path, logged_line)
                self.say(format_result(logged_line, self.cfg))
            elif logged.raw.get("reason", "").startswith("environment error"):
                self.say(format_result(logged.raw, self.cfg))
        except ENVIRONMENT_ERRORS as again:
            return (f"an environment error ({cause}) could not be repaired ({_one_line(str(again))}): "
                    f"{environment_advice(again)}, then run `autoresearch resume`")
        if in_a_row >= 2:
            return f"{in_a_row} environment errors in a row (the last: {cause}): {environment_advice(exc)}"
        return None


def baseline_failure(decision: Decision, sample: Sample, cfg: Config) -> str:
    """Why a segment's baseline gave no result and what to fix (the agent cannot fix the target). A crash
    shows the last lines of its log; a baseline refused by a post-run check names the check, and does not
    tell the user to make the command work: it ran, which they may have checked by hand."""
    log = sample.res.log_path
    if decision.status == "checks_failed":
        return (f"the baseline ran, but a check refused its result: {decision.reason}. The agent cannot change "
                f"that: fix what the check names (the session's settings are in autoresearch.toml), then run "
                f"again. Log: {log}")
    if sample.res.cancelled:
        return f"the baseline run was aborted ({decision.reason}); run again to measure it"
    lines = [ln.rstrip()[:300] for ln in sample.res.tail.splitlines() if ln.strip()][-10:]
    shown = "\n".join(f"  | {ln}" for ln in lines) if lines else "  (it printed nothing)"
    return (f"the baseline run failed ({decision.reason}); the agent cannot fix the target: make "
            f"`{cfg.command}` work (it must print METRIC {cfg.metric.name}=<number>), then run again. The last lines "
            f"of its log, {log}:\n{shown}")


def environment_advice(exc: BaseException) -> str:
    """What the user can fix, for an error of the machine or the repository."""
    if isinstance(exc, RunnerError):
        return "the experiment command could not be started; check that the workspace and .autoresearch/ exist " \
               "and are writable, and that /bin/bash runs"
    if isinstance(exc, WorkspaceError):  # its message names the problem (a lock held too long, a dirty tree)
        return "the workspace's git state needs fixing as the message says; `git status` there shows it"
    if isinstance(exc, git.GitError):
        return "git failed in the workspace; run `git status` there and fix what it reports " \
               "(another git process holding a lock, a broken repository, permissions)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full; free space where the workspace is"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "a file of the workspace is not writable; fix its permissions"
    return "check the disk and the permissions of the workspace"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def prune_checkpoints(root: Path, run: int, kept: bool) -> None:
    """Checkpoints are big and reproducible from their commit: keep only the latest kept run's."""
    if not root.is_dir():
        return
    for d in root.glob("run-*"):
        if d.name == f"run-{run}" and kept:
            continue
        if kept or d.name == f"run-{run}":
            shutil.rmtree(d, ignore_errors=True)


def format_result(rec: dict[str, Any], cfg: Config) -> str:
    status = rec["status"]
    value = rec["metrics"].get(cfg.metric.name)
    shown = f"{cfg.metric.name}={value:.6g}" if value is not None else "no metric"
    return f"#{rec['run']:<4} {status:<13} {shown:<22} {rec['description']}  ({rec.get('reason', '')})"
