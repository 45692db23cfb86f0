"""The checks around a run: before it, on the proposal; after it, on what the run did.

A check is a small named function: it takes a context and returns None when it passes, or a
reason, one sentence the ledger records. The controller runs a list of them in order and
stops at the first reason. A target extends a list by adding an entry (the LoRA-capacity check
of the post-training targets is one more function in `PRE_RUN`):

    PRE_RUN = (*PRE_RUN, lora_capacity)

Before the run (README "How the loop decides"; a refusal is logged, undone, never run):
the proposal changed something, only editable files, no fixed file, passes the integrity audit,
and is not a repeat. A repeat (`REPEATS`) is a discard, not a violation, and is told back to
the agent once. After the run (a failure makes it checks_failed): the run left the tracked
files alone, stayed within the time budget, reported its metric from one evaluation, and the
checks command passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from harness import capacity, contention, integrity
from harness.config import Config
from harness.executor import Executor
from harness.gate import Sample
from harness.ledger import LedgerState
from harness.workspace import sha256_file, unsafe_paths


def normalized_diff_hash(patch: str) -> str:
    """Hash of a diff that ignores what does not change the code: index lines, hunk line
    numbers, trailing whitespace. Two proposals with the same hash are the same change."""
    keep = []
    for line in patch.splitlines():
        if line.startswith(("index ", "@@")) or not line.strip():
            continue
        keep.append(line.rstrip())
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()[:16]


def fixed_changes(root: Path, cfg: Config) -> list[str]:
    """Fixed files (and the measurement scripts) under `root` whose content differs from init."""
    bad = []
    for rel, digest in cfg.fixed_hashes.items():
        p = root / rel
        if not p.exists():
            bad.append(f"{rel} is missing")
        elif sha256_file(p) != digest:
            bad.append(f"{rel} changed")
    return bad


# ------------------------------------------------------------------ before the run


@dataclass(frozen=True)
class Proposed:
    """A proposal's edits in the workspace, before anything is committed or run."""

    cfg: Config
    root: Path
    state: LedgerState
    patch: str  # the working tree against HEAD, untracked files included
    changed: Sequence[str]  # paths that differ from HEAD
    digest: str  # normalized_diff_hash(patch)


def changed_something(p: Proposed) -> str | None:
    return None if p.changed else "the proposal changed nothing"


def in_scope(p: Proposed) -> str | None:
    outside = [f for f in p.changed if f not in p.cfg.editable]
    return f"changes outside the editable files {list(p.cfg.editable)}: {outside}" if outside else None


def plain_files(p: Proposed) -> str | None:
    """An editable file turned into a symlink (or moved into a nested repository) hides its content
    from the diff and the audit."""
    bad = unsafe_paths(p.root, [*p.cfg.editable, *p.cfg.fixed])
    return "; ".join(bad) + ": editable and fixed files must stay plain files" if bad else None


def fixed_unchanged(p: Proposed) -> str | None:
    bad = fixed_changes(p.root, p.cfg)
    return "fixed files changed: " + "; ".join(bad) if bad else None


def audit(p: Proposed) -> str | None:
    if not p.cfg.audit:
        return None
    # The whole edited files, read from the workspace; findings only on the lines the proposal added or
    # changed. A stdout target's editable files must not print its metric; a result_file target's may
    # hold only definitions at module level (the fixed evaluation imports them).
    metric = p.cfg.metric.name if p.cfg.metric_source == "stdout" else None
    findings = integrity.audit_workspace(p.patch, p.root, p.cfg.fixed, primary_metric=metric,
                                         import_time=p.cfg.metric_source == "result_file")
    return "integrity audit: " + "; ".join(str(f) for f in findings[:5]) if findings else None


def not_a_repeat(p: Proposed) -> str | None:
    seen = next((r for r in reversed(p.state.runs) if (r.diff or {}).get("sha") == p.digest), None)
    if seen is None:
        return None
    return f"duplicate: the same change as experiment #{seen.run} ({seen.description!r}, {seen.status})"


def lora_capacity(p: Proposed) -> str | None:
    """Post-training sessions (an advice.json): LoRA at train.py's rank holds the training set's completion
    tokens (harness.capacity). It refuses only under `[session] capacity = "block"`; the controller records
    the verdict in every run line either way."""
    return capacity.refusal(p.root, p.cfg, capacity.mode_of(p.cfg))


PreCheck = Callable[[Proposed], str | None]
PRE_RUN: tuple[PreCheck, ...] = (changed_something, in_scope, plain_files, fixed_unchanged, audit, not_a_repeat,
                                 lora_capacity)
REPEATS: frozenset[PreCheck] = frozenset({not_a_repeat})  # refused as a discard; the agent is told once


# ------------------------------------------------------------------- after the run


@dataclass(frozen=True)
class Ran:
    """One finished run (one sample) that did not crash, and where it ran."""

    cfg: Config
    run: int
    sample: Sample
    executor: Executor
    env: Mapping[str, str]  # the run's environment, for the checks command


def left_tracked_files_alone(r: Ran) -> str | None:
    """The run itself must not change tracked files (e.g. rewrite prepare.py or train.py): in its own
    checkout (`Sample.tampered`, which a sandbox makes impossible: the fixed files are read-only there),
    and in the checkout the executor names (the workspace, when runs happen in it)."""
    if r.sample.tampered:
        return "the run changed fixed files in its checkout: " + ", ".join(r.sample.tampered)
    ws = r.executor.checkout
    bad = fixed_changes(ws.root, r.cfg)
    if bad:
        return "the run changed fixed files: " + "; ".join(bad)
    tracked_changes = [p for p in ws.changed_paths() if ws.file_at("HEAD", p) is not None]
    if tracked_changes:  # modified or deleted: anything HEAD has
        return f"the run modified or deleted tracked files: {tracked_changes}"
    return None


def within_budget(r: Ran) -> str | None:
    if contention.token_budget_of(r.cfg) is not None:
        # A token budget bounds the work, not the time (README "Noise-aware keeps"): a busy machine makes the
        # run slower, not over budget. The tokens it reports are checked instead (loop._sample); the hard
        # timeout still applies.
        return None
    train_s = r.sample.train_s  # the run's own process; with [session] evaluate the metric came from another
    if r.cfg.evaluate and train_s is not None:
        return integrity.over_budget(train_s, r.cfg.time_budget_s, r.cfg.startup_allowance_s,
                                     r.cfg.startup_allowance_frac)
    return integrity.over_budget(r.sample.res.wall_s, r.cfg.time_budget_s, r.cfg.startup_allowance_s,
                                 r.cfg.startup_allowance_frac, r.cfg.eval_allowance_s)


def one_evaluation(r: Ran) -> str | None:
    """The metric comes from one evaluation: the result channel's own verdict, and, where the run prints
    the metric itself (stdout targets), no two different values of it (a forged line after the real one)."""
    if r.sample.channel_failure:
        return r.sample.channel_failure
    if r.cfg.metric_source != "stdout":
        return None
    name = r.cfg.metric.name
    values = r.sample.res.metric_values.get(name, ())
    if len(values) > 1:
        shown = ", ".join(f"{v:g}" for v in values[:4])
        return (f"the output printed {name} with {len(values)} different values ({shown}): the metric must come "
                "from one evaluation")
    return None


def checks_command(r: Ran) -> str | None:
    if not r.cfg.checks_command:
        return None
    res = r.executor.command(r.cfg.checks_command, r.env, log=f"runs/{r.run}.checks.log",
                             timeout_s=r.cfg.checks_timeout_s, label=f"checks #{r.run}")
    if res.ok:
        return None
    why = "timed out" if res.timed_out else f"exit {res.exit_code}"
    return f"checks failed ({why}): {res.tail.strip()[-500:]}"


PostCheck = Callable[[Ran], str | None]
POST_RUN: tuple[PostCheck, ...] = (left_tracked_files_alone, within_budget, one_evaluation, checks_command)

C = TypeVar("C")


def first_failure(checks: Sequence[Callable[[C], str | None]], ctx: C) -> tuple[Callable[[C], str | None], str] | None:
    """The first check that fails, with its reason; None when all pass. Later checks do not run."""
    for check in checks:
        reason = check(ctx)
        if reason:
            return check, reason
    return None
