"""Executors: where and how an experiment runs. The controller decides; an executor runs.

The contract is `run(commit, seed, env) -> Sample`: run the
experiment command on `commit` with `seed`, and report what it produced (the command's
result, its metrics, why it failed if it did). It never decides and never writes the ledger.
`key` names the run's files (`<key>.log`, `<key>.jsonl`) so that no two runs collide.
Besides experiments, an executor runs the other commands of a target where the runs happen:
the one-time preparation (`prepare`), the checks command (`command`), and the held-out
evaluation (`evaluate`), and it names the git checkout the post-run integrity checks inspect
(`checkout`).

`SandboxExecutor` (README "The sandbox"): each run in a fresh checkout of its commit outside the
workspace, under bubblewrap where it works (`harness.sandbox`), with an allowlisted environment;
with `[session] evaluate`, the metric comes from a second, separate process that reads the run's
checkpoint and alone holds the result channel. `LocalExecutor` (`sandbox = "off"`) is the old way:
a subprocess in the workspace itself. Both log in `.autoresearch/runs/` and put the tail in `run.log`,
files the controller writes and a sandboxed run cannot reach. `make_executor` picks one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import site
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from harness import integrity, sandbox
from harness.config import Config
from harness.gate import Sample
from harness.runner import RunResult, run_command
from harness.secrets import secret_values
from harness.workspace import Workspace

Runner = Callable[..., RunResult]
MetricOrigin = Literal["evaluation", "run"]  # a separate evaluation process, or the run itself
CHECKPOINT_ENV = "AUTORESEARCH_CHECKPOINT"
CACHE_ENV = "AUTORESEARCH_CACHE_DIR"
STAGE = ".sandbox"  # beside the checkpoint directories: where a bubblewrapped run's checkpoint is written
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class Executor(Protocol):
    @property
    def checkout(self) -> Workspace:
        """The git checkout the post-run checks inspect (the workspace, for both executors here)."""
        ...

    def run(self, commit: str, seed: int, env: Mapping[str, str], *, key: str, label: str) -> Sample: ...

    def evaluate(self, command: str, env: Mapping[str, str], *, key: str, label: str,
                 commit: str | None = None) -> Sample: ...

    def command(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float, label: str) -> RunResult: ...

    def prepare(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float) -> RunResult: ...

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise (a RunnerError) when runs cannot start as configured; before the first one."""
        ...

    def close(self) -> None:
        """Remove what the executor keeps between runs (the last run's checkout)."""
        ...


def failure_of(res: RunResult, timeout_s: float) -> str | None:
    """Why a finished command did not succeed, as the ledger says it; None when it did."""
    if res.cancelled:
        return "aborted by the user (Ctrl-C twice)"
    if res.timed_out:
        return f"timed out after {res.wall_s:.0f}s (limit {timeout_s:g}s); process group killed"
    if res.exit_code != 0:
        return f"exit code {res.exit_code}"
    return None


def evaluation_failure(res: RunResult, timeout_s: float) -> str | None:
    """Why the separate evaluation did not give a metric, as the ledger says it; None when it ran."""
    why = failure_of(res, timeout_s)
    if why is None:
        return None
    return f"the evaluation failed (exit {res.exit_code})" if res.exit_code is not None else f"the evaluation {why}"


@dataclasses.dataclass(frozen=True)
class RunMetrics:
    """A run's metrics as the ledger takes them, with the channel's verdict and notes."""

    metrics: dict[str, float]
    channel_failure: str | None
    notes: dict[str, object]


def run_metrics(metric: str, printed: Mapping[str, float], channel: tuple[list[tuple[str, float]], list[str]] | None,
                evaluation_printed: Mapping[str, float] | None = None) -> RunMetrics:
    """What a run measured (pure). `printed`: the run's METRIC lines. `channel`: what the result file
    held (the evaluation's, or the run's own for a legacy target), or None for a stdout target.
    `evaluation_printed`: the separate evaluation's METRIC lines. The primary metric comes only from
    the channel; a value the run printed for it is ignored and noted (integrity.apply_channel)."""
    if channel is None:
        return RunMetrics(dict(printed), None, {})
    seen = dict(printed)
    if evaluation_printed is not None:
        seen = {**printed, **evaluation_printed}
        if metric in printed:  # the run's claim is what the note compares with the channel
            seen[metric] = printed[metric]
    verdict = integrity.apply_channel(metric, seen, *channel)
    return RunMetrics(verdict.metrics, verdict.failure, dict(verdict.notes))


def run_sample(seed: int, res: RunResult, out: RunResult, m: RunMetrics, failure: str | None,
               eval_s: float | None, tampered: tuple[str, ...] = ()) -> Sample:
    """The Sample of one run: `res` the run's own result (its wall time is the training time), `out` what
    the ledger shows of it (the evaluation's tail when that failed), `m` the metrics as decided."""
    metrics = dict(m.metrics)
    if res.peak_rss_mb is not None:
        metrics.setdefault("peak_rss_mb", round(res.peak_rss_mb, 1))
    return Sample(seed, out, metrics, failure, None, m.notes, m.channel_failure, train_s=res.wall_s,
                  eval_s=eval_s, tampered=tampered)


ANSWERS_MAX_BYTES = 64 << 20  # what one evaluation's answers may hold: a few thousand answers are a few MB


def answers_dir(state_dir: Path, key: str) -> Path:
    """Where the controller keeps the answers the evaluation `key` wrote (`<run>.eval`, `<run>.heldout`)."""
    return state_dir / "answers" / key


def _keep_answers(written: Path, dest: Path) -> None:
    """Copy the evaluation's answer files (plain *.jsonl files, nothing else) out of its private directory
    before that is removed. The destination is cleared first, so answers of an earlier attempt never stand."""
    shutil.rmtree(dest, ignore_errors=True)
    files = sorted(p for p in written.glob("*.jsonl") if p.is_file() and not p.is_symlink()) if written.is_dir() else []
    if not files or sum(p.stat().st_size for p in files) > ANSWERS_MAX_BYTES:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copyfile(p, dest / p.name)


def _checkpoint(env: Mapping[str, str]) -> Path | None:
    """The run's checkpoint directory (a host path under the workspace's .autoresearch/), created."""
    if not env.get(CHECKPOINT_ENV):
        return None
    path = Path(env[CHECKPOINT_ENV])
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _append_tail(path: Path, title: str, tail: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n[{title}]\n{tail}\n" if tail else f"\n[{title}]\n")


class LocalExecutor:
    """`sandbox = "off"`: each command with `runner` (a process group under a hard timeout) in the
    workspace, whose HEAD is the commit being measured: the controller has just committed it. The
    run sees the workspace, the ledger and the controller's environment."""

    sandboxed = False

    def __init__(self, ws: Workspace, cfg: Config, *, runner: Runner = run_command, progress: bool | None = None,
                 cancel: Callable[[], bool] | None = None):
        self.ws, self.cfg, self.runner, self.progress, self.cancel = ws, cfg, runner, progress, cancel
        self.state_dir = ws.state_dir

    @property
    def checkout(self) -> Workspace:
        return self.ws

    @property
    def metric_origin(self) -> MetricOrigin:
        return "evaluation" if self.cfg.evaluate else "run"

    def describe(self) -> str:
        return sandbox.describe("off", None, self.cfg.network)

    def run(self, commit: str, seed: int, env: Mapping[str, str], *, key: str, label: str) -> Sample:
        cfg = self.cfg
        timeout = cfg.effective_timeout_s
        legacy = cfg.evaluate is None and cfg.metric_source == "result_file"
        result_file = self._result_file(key)
        run_env = {**env, "AUTORESEARCH_SEED": str(seed), **({integrity.RESULT_ENV: str(result_file)} if legacy else {})}
        res = self.runner(
            cfg.command, self.ws.root, env=run_env, timeout_s=timeout,
            log_path=self.state_dir / "runs" / f"{key}.log", tail_path=self.ws.root / "run.log",
            budget_s=cfg.time_budget_s, progress=self.progress, cancel=self.cancel, label=label,
        )
        failure, out, eval_s = failure_of(res, timeout), res, None
        m = run_metrics(cfg.metric.name, res.metrics, integrity.read_results(result_file) if legacy else None)
        if cfg.evaluate:
            m = RunMetrics({k: v for k, v in res.metrics.items() if k != cfg.metric.name}, None, {})
            if failure is None:
                ev_file = self._result_file(f"{key}.eval")
                answers = self._answers(f"{key}.eval")
                ev = self.runner(cfg.evaluate, self.ws.root, env={**run_env, integrity.RESULT_ENV: str(ev_file),
                                                                  integrity.ANSWERS_ENV: str(answers)},
                                 timeout_s=timeout, log_path=self.state_dir / "runs" / f"{key}.eval.log",
                                 progress=self.progress, cancel=self.cancel, label=f"{label} evaluation")
                _append_tail(self.ws.root / "run.log", "evaluation", ev.tail)
                eval_s, failure = ev.wall_s, evaluation_failure(ev, timeout)
                if failure is None:
                    m = run_metrics(cfg.metric.name, res.metrics, integrity.read_results(ev_file), ev.metrics)
                else:
                    out = dataclasses.replace(res, tail=ev.tail)
        return run_sample(seed, res, out, m, failure, eval_s)

    def evaluate(self, command: str, env: Mapping[str, str], *, key: str, label: str,
                 commit: str | None = None) -> Sample:
        """A held-out evaluation of the run of `commit` (here: the workspace, whose HEAD it is): its
        metrics come from the result channel, and also from printed METRIC lines unless the target
        takes metrics from the channel only."""
        result_file = self._result_file(key)
        answers = self._answers(key)
        res = self.command(command, {**env, integrity.RESULT_ENV: str(result_file), integrity.ANSWERS_ENV: str(answers)},
                           log=f"runs/{key}.log",
                           timeout_s=self.cfg.effective_timeout_s, label=label)
        reported, _ = integrity.read_results(result_file)
        printed = {} if self.cfg.metric_source == "result_file" else res.metrics
        metrics = {**printed, **dict(reported)}
        seed = int(env.get("AUTORESEARCH_SEED", self.cfg.seed))
        return Sample(seed, res, metrics, failure_of(res, self.cfg.effective_timeout_s), None, {}, eval_s=res.wall_s)

    def command(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float, label: str) -> RunResult:
        """Any other command of the target, in the workspace; `log` is relative to `.autoresearch/`."""
        return self.runner(command, self.ws.root, env=dict(env), timeout_s=timeout_s, log_path=self.state_dir / log,
                           progress=self.progress, cancel=self.cancel, label=label)

    def prepare(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float) -> RunResult:
        return self.command(command, env, log=log, timeout_s=timeout_s, label="prepare")

    def check(self) -> None:
        """Runs in the workspace can always start."""

    def close(self) -> None:
        """Nothing to clean up: the runs happened in the workspace."""

    def _result_file(self, key: str) -> Path:
        path = self.state_dir / "results" / f"{key}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return path

    def _answers(self, key: str) -> Path:
        """Without a sandbox the evaluation writes its answers where the controller keeps them (emptied)."""
        path = answers_dir(self.state_dir, key)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


class SandboxExecutor:
    """Runs in fresh checkouts under `sandbox.run_root(ws)`, under bubblewrap when `cfg.sandbox` and
    this machine allow (see `mode`). `bwrap`: the program's name on PATH or its path; None = absent.

    Directories, one per key, all removed by the next `run` (a run's own is kept until then, for its
    checks command): `<key>/src` the checkout, `<key>/home` its HOME, `<key>/results` a legacy
    target's channel; `<key>.eval/` the same for the evaluation. Leftovers of a killed controller
    go when the first command starts (not at construction: `status` builds one to describe it)."""

    def __init__(self, ws: Workspace, cfg: Config, *, runner: Runner = run_command, progress: bool | None = None,
                 cancel: Callable[[], bool] | None = None, bwrap: str | None = "bwrap"):
        self.ws, self.cfg, self.runner, self.progress, self.cancel = ws, cfg, runner, progress, cancel
        self.state_dir = ws.state_dir
        self.bwrap = shutil.which(bwrap) if bwrap else None
        self.problem = sandbox.probe(self.bwrap) if cfg.sandbox in ("auto", "bwrap") else None
        self.mode: sandbox.Mode = sandbox.resolve_mode(cfg.sandbox, self.problem)
        if self.mode == "off":
            raise ValueError('sandbox = "off" runs in the workspace: use LocalExecutor (make_executor picks it)')
        self._root: Path | None = None
        self._last: tuple[Path, Path] | None = None  # (checkout, its run directory) of the last run

    # ---------------------------------------------------------------- what it is
    @property
    def sandboxed(self) -> bool:
        return self.mode == "bwrap" and self.problem is None

    @property
    def checkout(self) -> Workspace:
        """The workspace: with bubblewrap no run can write it; without, the post-run check of tracked
        files still looks there (a run can reach it by absolute path). `Sample.tampered` tells what a
        run changed in its own checkout."""
        return self.ws

    @property
    def metric_origin(self) -> MetricOrigin:
        return "evaluation" if self.cfg.evaluate else "run"

    def describe(self) -> str:
        version = sandbox.version(self.bwrap) if self.sandboxed and self.bwrap else "bubblewrap"
        return sandbox.describe(self.mode, self.problem, self.cfg.network, bwrap_version=version,
                                requested=self.cfg.sandbox)

    def check(self) -> None:
        """Raise SandboxError when runs cannot start as configured (`sandbox = "bwrap"` without it)."""
        if self.mode == "bwrap" and self.problem is not None:
            install = "" if sandbox.INSTALL_HINT in self.problem else f" ({sandbox.INSTALL_HINT})"
            raise sandbox.SandboxError(
                f'sandbox = "bwrap" in autoresearch.toml, but {self.problem}. Install bubblewrap{install}, '
                'or set sandbox = "auto" to run without it in a fresh checkout')

    # ---------------------------------------------------------------- the commands
    def run(self, commit: str, seed: int, env: Mapping[str, str], *, key: str, label: str) -> Sample:
        cfg, root = self.cfg, self._start()
        timeout, name = cfg.effective_timeout_s, cfg.metric.name
        sandbox.clear_dir(root)  # the previous run's checkout, kept for its checks command until now
        self._last = None
        rd = root / _key(key)
        src = self._fresh(commit, rd)
        run_env = {**env, "AUTORESEARCH_SEED": str(seed)}
        legacy = cfg.evaluate is None and cfg.metric_source == "result_file"
        result_file = rd / "results" / "result.jsonl"
        if legacy:  # "metric from the run itself": the run holds the channel (README "The sandbox")
            result_file.parent.mkdir()
            run_env[integrity.RESULT_ENV] = str(result_file)
        fixed = self._fixed(src)
        before = sandbox.file_digests(src, fixed)
        ckpt, stage = self._stage_checkpoint(env)
        try:
            res = self._exec(cfg.command, src, rd, run_env, rw=[] if stage else [ckpt], rw_at=stage,
                             log=self.state_dir / "runs" / f"{key}.log", tail=self.ws.root / "run.log",
                             timeout_s=timeout, label=label, budget_s=cfg.time_budget_s)
        finally:
            self._unstage_checkpoint(ckpt, bool(stage))
        after = sandbox.file_digests(src, fixed)
        tampered = tuple(p for p in fixed if before[p] != after[p])
        self._last = (src, rd)
        failure, out, eval_s = failure_of(res, timeout), res, None
        m = run_metrics(name, res.metrics, integrity.read_results(result_file) if legacy else None)
        if cfg.evaluate:
            m = RunMetrics({k: v for k, v in res.metrics.items() if k != name}, None, {})
            if failure is None:
                ev, channel = self._evaluation(cfg.evaluate, commit, env, seed, key=f"{key}.eval", label=label)
                _append_tail(self.ws.root / "run.log", "evaluation", ev.tail)
                eval_s, failure = ev.wall_s, evaluation_failure(ev, timeout)
                if failure is None:
                    m = run_metrics(name, res.metrics, channel, ev.metrics)
                else:
                    out = dataclasses.replace(res, tail=ev.tail)
        return run_sample(seed, res, out, m, failure, eval_s, tampered)

    def evaluate(self, command: str, env: Mapping[str, str], *, key: str, label: str,
                 commit: str | None = None) -> Sample:
        """The held-out evaluation of the run of `commit` (default HEAD): a fresh checkout, the
        checkpoint read-only, the result channel its own, no network. Metrics from the channel, and
        from printed METRIC lines unless the target takes metrics from the channel only."""
        self._start()
        seed = int(env.get("AUTORESEARCH_SEED", self.cfg.seed))
        res, (reported, _) = self._evaluation(command, commit or self.ws.head(), env, seed, key=key, label=label)
        printed = {} if self.cfg.metric_source == "result_file" else res.metrics
        metrics = {**printed, **dict(reported)}
        return Sample(seed, res, metrics, failure_of(res, self.cfg.effective_timeout_s), None, {}, eval_s=res.wall_s)

    def command(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float, label: str) -> RunResult:
        """The checks command: in the last run's checkout (a fresh one of HEAD if there was none),
        sandboxed as the run was, its checkpoint read-only. `log` is relative to `.autoresearch/`."""
        root = self._start()
        if self._last is None or not self._last[0].is_dir():
            rd = root / "command"
            sandbox.clear_dir(rd)
            self._last = (self._fresh(self.ws.head(), rd), rd)
        src, rd = self._last
        ckpt = _checkpoint(env)
        return self._exec(command, src, rd, dict(env), ro=[ckpt], log=self.state_dir / log, timeout_s=timeout_s,
                          label=label)

    def prepare(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float) -> RunResult:
        """The target's one-time preparation (fixed code that downloads and writes the data): a fresh
        checkout of HEAD under the sandbox, with the network and the data cache read-write, and the
        existing `[session] inputs` read-write too."""
        rd = self._start() / "prepare"
        sandbox.clear_dir(rd)
        src = self._fresh(self.ws.head(), rd)
        try:
            return self._exec(command, src, rd, dict(env), log=self.state_dir / log, timeout_s=timeout_s,
                              label="prepare", network=True, writable_data=True)
        finally:
            shutil.rmtree(rd, ignore_errors=True)

    def close(self) -> None:
        """Remove this workspace's run directories (the last run's checkout included); the next
        command starts afresh. For the end of a session: nothing of a run stays in $TMPDIR."""
        if self._root is not None:
            sandbox.clear_dir(self._root)
            self._root.rmdir()
            self._root.with_name(self._root.name + ".workspace").unlink(missing_ok=True)
        self._root, self._last = None, None

    # ---------------------------------------------------------------- the pieces
    def _stage_checkpoint(self, env: Mapping[str, str]) -> tuple[Path | None, tuple[tuple[str, str], ...]]:
        """The run's checkpoint directory, emptied (its output: never a stale one from an earlier seed),
        and with bubblewrap the bind that gives it to the run. A bind mount cannot be renamed or removed
        (EBUSY), and writing a new directory and renaming it over the old one is a common way to save;
        so the run gets the directory's parent from a private host directory, `.sandbox/` beside it, on
        the same file system, which holds nothing but this run's checkpoint; `_unstage_checkpoint`
        moves it into place after the run. The other runs' checkpoints stay out of its sight."""
        if not env.get(CHECKPOINT_ENV):
            return None, ()
        ckpt = Path(env[CHECKPOINT_ENV]).absolute()
        _remove(ckpt)
        if not self.sandboxed:
            ckpt.mkdir(parents=True)
            return ckpt, ()
        stage = ckpt.parent / STAGE
        _remove(stage)
        (stage / ckpt.name).mkdir(parents=True)
        return ckpt, ((str(stage), str(ckpt.parent)),)

    @staticmethod
    def _unstage_checkpoint(ckpt: Path | None, staged: bool) -> None:
        """Put the run's checkpoint in place. Only a real directory counts: a symlink there (to another
        run's checkpoint, say) would have the evaluation score a model this run did not train."""
        if ckpt is None:
            return
        if staged:
            out = ckpt.parent / STAGE / ckpt.name
            if out.is_dir() and not out.is_symlink():
                out.rename(ckpt)
            _remove(ckpt.parent / STAGE)
        elif ckpt.is_symlink() or (ckpt.exists() and not ckpt.is_dir()):
            ckpt.unlink()

    def _start(self) -> Path:
        if self._root is None:
            self.check()
            self._root = sandbox.run_root(self.ws)
            sandbox.clear_dir(self._root)  # whatever a killed controller left
            sandbox.sweep_run_roots()  # and those of deleted workspaces
        return self._root

    def _fresh(self, commit: str, rd: Path) -> Path:
        src = rd / "src"
        sandbox.materialize(self.ws, commit, src)
        (rd / "home").mkdir()
        return src

    def _fixed(self, src: Path) -> list[str]:
        """The fixed files and hashed measurement scripts present in the checkout."""
        names = sorted(set(self.cfg.fixed) | set(self.cfg.fixed_hashes))
        return [n for n in names if (src / n).is_file() and not (src / n).is_symlink()]

    def _cache(self) -> Path:
        raw = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
        path = Path(raw)
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()

    def _evaluation(self, command: str, commit: str, env: Mapping[str, str], seed: int, *, key: str,
                    label: str) -> tuple[RunResult, tuple[list[tuple[str, float]], list[str]]]:
        """`command` as the fixed evaluation: a fresh checkout of `commit`, the checkpoint read-only,
        a results directory that only this process is given, no network; its log is `runs/<key>.log`."""
        root = self._start()
        ed = root / _key(key)
        sandbox.clear_dir(ed)
        ed.mkdir(exist_ok=True)
        try:
            src = self._fresh(commit, ed)
            result_file = ed / "results" / "result.jsonl"
            result_file.parent.mkdir()
            written = ed / "results" / "answers"
            written.mkdir()
            ev_env = {**env, "AUTORESEARCH_SEED": str(seed), integrity.RESULT_ENV: str(result_file),
                      integrity.ANSWERS_ENV: str(written)}
            res = self._exec(command, src, ed, ev_env, ro=[_checkpoint(env)], log=self.state_dir / "runs" / f"{key}.log",
                             timeout_s=self.cfg.effective_timeout_s, label=f"{label} evaluation", network=False)
            _keep_answers(written, answers_dir(self.state_dir, key))
            return res, integrity.read_results(result_file)
        finally:
            shutil.rmtree(ed, ignore_errors=True)

    def _exec(self, command: str, src: Path, rd: Path, run_env: Mapping[str, str], *, log: Path, timeout_s: float,
              label: str, rw: Sequence[Path | None] = (), ro: Sequence[Path | None] = (), tail: Path | None = None,
              budget_s: float | None = None, network: bool | None = None, writable_data: bool = False,
              rw_at: tuple[tuple[str, str], ...] = ()) -> RunResult:
        """One process in checkout `src` (run directory `rd`), with `run_env`'s AUTORESEARCH_* over the
        allowlist; `rw` / `ro`: further host directories it may write / read (None entries skipped)."""
        cfg = self.cfg
        net = cfg.network if network is None else network
        cache = self._cache()
        home = rd / "home"
        env = sandbox.child_env(
            os.environ, {**run_env, "AUTORESEARCH_WORKSPACE": str(src), CACHE_ENV: str(cache)}, extra=cfg.env,
            home=str(home), path_dirs=[os.path.dirname(sys.executable)], network=net)
        inputs = [(self.ws.root / p, src / p) for p in cfg.inputs if (self.ws.root / p).exists()]
        argv = ["/bin/bash", "-c", command]
        if self.sandboxed:
            for host, inside in inputs:  # the mount points, made here rather than by bwrap inside
                if host.is_dir():
                    inside.mkdir(parents=True, exist_ok=True)
                elif not inside.exists():
                    inside.parent.mkdir(parents=True, exist_ok=True)
                    inside.touch()
            binds = tuple((str(h), str(i)) for h, i in inputs)
            spec = sandbox.Spec(
                argv=tuple(argv), chdir=str(src),
                hidden=tuple(str(p) for p in (self.ws.root, Path.home(), sandbox.runs_base(), Path("/run/user"))
                             if p.is_dir()),
                ro=tuple(dict.fromkeys([*_interpreter(), *([] if writable_data else [str(cache)]),
                                        *(str(p) for p in ro if p is not None)])),
                rw=tuple(dict.fromkeys([str(rd), *([str(cache)] if writable_data else []),
                                        *(str(p) for p in rw if p is not None)])),
                ro_at=() if writable_data else binds, rw_at=(*(binds if writable_data else ()), *rw_at),
                ro_files=tuple(str(src / f) for f in self._fixed(src)),
                masked=sandbox.masked_sockets(), devices=sandbox.gpu_devices(), network=net,
                bwrap=self.bwrap or "bwrap")
            # bwrap's --die-with-parent cannot close one race: a controller killed before bwrap has set its
            # parent-death signal (bwrap also changes credentials, which clears the one the runner set),
            # which left bwrap and the whole run alive, once in about 20 kills (scripts/bench_killloop.py).
            # The subreaper sets its own and then checks that its parent is still the controller.
            argv = sandbox.reaper_argv(sandbox.bwrap_argv(spec), env)
        else:
            for host, inside in inputs:  # the same relative paths, as links to the workspace's
                if not inside.exists() and not inside.is_symlink():
                    inside.parent.mkdir(parents=True, exist_ok=True)
                    inside.symlink_to(host, target_is_directory=host.is_dir())
            argv = sandbox.reaper_argv(argv, env)
        return self.runner(
            command, src, env=env, argv=argv, inherit_env=False, parent_death=True,
            log_cap_bytes=int(cfg.log_cap_mb * 2**20), redact=secret_values(), timeout_s=timeout_s, log_path=log,
            tail_path=tail, budget_s=budget_s, progress=self.progress, cancel=self.cancel, label=label,
        )


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        sandbox.clear_dir(path)
        path.rmdir()


def _key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"run key {key!r} cannot name a directory")
    return key


def _interpreter() -> list[str]:
    """What `python` in a run needs to see, read-only: the environment, its base installation, the
    real directory of the executable (pyenv's lives under HOME) and the user's site-packages."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), site.getusersitepackages()]
    both = [q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))]
    return [p for p in dict.fromkeys(both) if os.path.isdir(p)]


def make_executor(ws: Workspace, cfg: Config, *, runner: Runner = run_command, progress: bool | None = None,
                  cancel: Callable[[], bool] | None = None) -> LocalExecutor | SandboxExecutor:
    """The executor `[session] sandbox` asks for: "off" runs in the workspace, anything else sandboxed."""
    if cfg.sandbox == "off":
        return LocalExecutor(ws, cfg, runner=runner, progress=progress, cancel=cancel)
    return SandboxExecutor(ws, cfg, runner=runner, progress=progress, cancel=cancel)
