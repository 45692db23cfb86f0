"""Executors: where and how an experiment runs. The controller decides; an executor runs.

The contract is `run(commit, seed, env) -> Sample`: run the
experiment command on `commit` with `seed`, and report what it produced (the command's
result, its metrics, why it failed if it did). It never decides and never writes the ledger.
`key` names the run's files (`<key>.log`, `<key>.jsonl`) so that no two runs collide.
Besides experiments, an executor runs the other commands of a target where the runs happen:
the one-time preparation, the checks command, and the held-out evaluation (`command`,
`evaluate`), and it names the git checkout the runs see (`checkout`), which the post-run
integrity checks inspect.

`LocalExecutor` is today's: a subprocess in the workspace itself (`runner.run_command`), full
log in `.autoresearch/runs/`, tail in `run.log`. A sandbox runs in a fresh checkout instead, a
pool of GPU workers in one checkout per worker; nothing else in the controller assumes where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from harness import integrity
from harness.config import Config
from harness.gate import Sample
from harness.metrics import parse_metrics
from harness.runner import RunResult, run_command
from harness.workspace import Workspace

Runner = Callable[..., RunResult]


class Executor(Protocol):
    @property
    def checkout(self) -> Workspace:
        """The git checkout the runs execute in (the local executor's is the workspace)."""
        ...

    def run(self, commit: str, seed: int, env: Mapping[str, str], *, key: str, label: str) -> Sample: ...

    def evaluate(self, command: str, env: Mapping[str, str], *, key: str, label: str,
                 commit: str | None = None) -> Sample: ...

    def command(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float, label: str) -> RunResult: ...


def failure_of(res: RunResult, timeout_s: float) -> str | None:
    """Why a finished command did not succeed, as the ledger says it; None when it did."""
    if res.cancelled:
        return "aborted by the user (Ctrl-C twice)"
    if res.timed_out:
        return f"timed out after {res.wall_s:.0f}s (limit {timeout_s:g}s); process group killed"
    if res.exit_code != 0:
        return f"exit code {res.exit_code}"
    return None


class LocalExecutor:
    """Runs each command with `runner` (a process group under a hard timeout) in the workspace,
    whose HEAD is the commit being measured: the controller has just committed it."""

    def __init__(self, ws: Workspace, cfg: Config, *, runner: Runner = run_command, progress: bool | None = None,
                 cancel: Callable[[], bool] | None = None):
        self.ws, self.cfg, self.runner, self.progress, self.cancel = ws, cfg, runner, progress, cancel
        self.state_dir = ws.state_dir

    @property
    def checkout(self) -> Workspace:
        return self.ws

    def run(self, commit: str, seed: int, env: Mapping[str, str], *, key: str, label: str) -> Sample:
        cfg = self.cfg
        result_file = self._result_file(key)
        res = self.runner(
            cfg.command, self.ws.root,
            env={**env, "AUTORESEARCH_SEED": str(seed), integrity.RESULT_ENV: str(result_file)},
            timeout_s=cfg.effective_timeout_s, log_path=self.state_dir / "runs" / f"{key}.log",
            tail_path=self.ws.root / "run.log", budget_s=cfg.time_budget_s, progress=self.progress,
            cancel=self.cancel, label=label,
        )
        metrics = parse_metrics(res.log_path.read_text(encoding="utf-8", errors="replace"))
        notes: dict[str, object] = {}
        channel_failure = None
        if cfg.metric_source == "result_file":
            reported, problems = integrity.read_results(result_file)
            verdict = integrity.apply_channel(cfg.metric.name, metrics, reported, problems)
            metrics, channel_failure, notes = verdict.metrics, verdict.failure, dict(verdict.notes)
        if res.peak_rss_mb is not None:
            metrics.setdefault("peak_rss_mb", round(res.peak_rss_mb, 1))
        return Sample(seed, res, metrics, failure_of(res, cfg.effective_timeout_s), None, notes, channel_failure)

    def evaluate(self, command: str, env: Mapping[str, str], *, key: str, label: str,
                 commit: str | None = None) -> Sample:
        """A held-out evaluation of the run of `commit` (here: the workspace, whose HEAD it is): its metrics come from the result channel, and also from printed
        METRIC lines unless the target takes metrics from the channel only."""
        result_file = self._result_file(key)
        res = self.command(command, {**env, integrity.RESULT_ENV: str(result_file)}, log=f"runs/{key}.log",
                           timeout_s=self.cfg.effective_timeout_s, label=label)
        reported, _ = integrity.read_results(result_file)
        printed = {} if self.cfg.metric_source == "result_file" else parse_metrics(
            res.log_path.read_text(encoding="utf-8", errors="replace"))
        metrics = {**printed, **dict(reported)}
        seed = int(env.get("AUTORESEARCH_SEED", self.cfg.seed))
        return Sample(seed, res, metrics, failure_of(res, self.cfg.effective_timeout_s), None, {})

    def command(self, command: str, env: Mapping[str, str], *, log: str, timeout_s: float, label: str) -> RunResult:
        """Any other command of the target, in the workspace; `log` is relative to `.autoresearch/`."""
        return self.runner(command, self.ws.root, env=dict(env), timeout_s=timeout_s, log_path=self.state_dir / log,
                           progress=self.progress, cancel=self.cancel, label=label)

    def _result_file(self, key: str) -> Path:
        path = self.state_dir / "results" / f"{key}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return path
