"""Runs on a shared machine: contention measured (not mistaken for progress), and the token budget.

Measured on a 2-core machine (issue 13): the same pretrain code and seed gave val_bpb 1.93 idle and
2.30-2.54 with one other busy process (4,342 against 611-1,414 tokens/s): under a time budget, a busy
machine moves the metric more than most changes do. So every run records what the machine gave it:

* `cpu_share`: CPU seconds its process tree got per wall second (`RunResult.cpu_s / wall_s`; the
  training process only, never the separate evaluation);
* `gpu_others`: processes outside the run that held the GPU during it (`nvidia-smi`, when present);
* `tokens_per_sec`: the throughput the run printed, when it prints one.

A run is `contended` when its CPU share is off its segment baseline's by more than `MARGIN` (either
way: a baseline measured on a busy machine makes every idle run look better), when another process
used the GPU and none did during the baseline, or when its throughput is off by more than `MARGIN`
from an earlier run of the *same code* (the baseline's calibration runs, a candidate's confirmation
runs; throughput across different code means nothing: a smaller model is faster). The controller
re-runs a contended run (`RERUNS` times at most) and never keeps on a contended sample.

Why 30%: the signal is large and the noise is small. One busy process beside a single-threaded run on
its core halves its share (measured: ratio 0.55; three busy processes: 0.27), and the issue's case cost
3-7x in throughput; identical runs on an idle machine agree within a few percent, and within 25% even at
a load average of 9 on 2 cores. A margin of 30% flags the first and lets the second through.
Runs shorter than `MIN_WALL_S` are not judged: start-up dominates their share.

The token budget (`[session] budget = "tokens"`, `token_budget = N`) is the other answer, for machines
that are shared by nature: the run gets AUTORESEARCH_TOKEN_BUDGET and trains on N tokens whatever the
time, so a busy machine makes it slower but not worse. Its trade-off: it stops rewarding speed-ups (a
faster step trains no more tokens). The run's own file is editable, so the harness checks what it
reports (`token_budget_problem`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MARGIN = 0.3  # relative: a share below (1 - MARGIN) x or above 1 / (1 - MARGIN) x the reference is contention
MIN_WALL_S = 1.0  # shorter runs are not judged
RERUNS = 2  # a contended run is run again this many times at most
THROUGHPUT = "tokens_per_sec"
TOKEN_BUDGET_ENV = "AUTORESEARCH_TOKEN_BUDGET"
TOKEN_METRICS = {"total_tokens": 1.0, "total_tokens_M": 1e6}  # what a run may report, and its scale
GPU_POLL_S = 10.0


@dataclass(frozen=True)
class Machine:
    """What the machine gave one run."""

    cpu_share: float | None  # CPU seconds per wall second of the run's process tree; None when unmeasured
    gpu_others: tuple[str, ...] = ()  # "pid name" of other processes on the GPU during the run
    throughput: float | None = None  # the run's printed tokens_per_sec

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"cpu_share": None if self.cpu_share is None else round(self.cpu_share, 4)}
        if self.gpu_others:
            d["gpu_others"] = list(self.gpu_others)
        if self.throughput is not None:
            d[THROUGHPUT] = self.throughput
        return d

    @staticmethod
    def from_dict(d: Any) -> Machine | None:
        """The `machine` field of a ledger line; None when absent or malformed."""
        if not isinstance(d, dict):
            return None
        others = d.get("gpu_others") or []
        return Machine(_positive(d.get("cpu_share")), tuple(str(x) for x in others) if isinstance(others, list) else (),
                       _positive(d.get(THROUGHPUT)))


def _positive(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and x > 0 else None


def measure(cpu_s: float | None, wall_s: float, gpu_others: tuple[str, ...],
            metrics: Mapping[str, float]) -> Machine:
    """The Machine of a run (pure). No share for a run shorter than MIN_WALL_S."""
    share = cpu_s / wall_s if cpu_s is not None and wall_s >= MIN_WALL_S else None
    tput = metrics.get(THROUGHPUT)
    return Machine(share, gpu_others, tput if tput is not None and tput > 0 else None)


def _off(value: float, ref: float) -> bool:
    return value < ref * (1 - MARGIN) or value > ref / (1 - MARGIN)


def judge(m: Machine, baseline: Machine | None, same_code: Machine | None = None) -> str | None:
    """Why the run `m` was contended, or None (pure). `baseline`: the segment baseline's Machine;
    `same_code`: an earlier run of the same commit, the only fair reference for throughput."""
    if baseline is not None and m.cpu_share is not None and baseline.cpu_share is not None \
            and _off(m.cpu_share, baseline.cpu_share):
        more = m.cpu_share > baseline.cpu_share
        return (f"its process tree got {m.cpu_share:.2f} CPU s per second against the baseline's "
                f"{baseline.cpu_share:.2f} (over {MARGIN:.0%} {'more: the baseline ran on a busy machine' if more else 'less: the machine was busy'})")
    if m.gpu_others and (baseline is None or not baseline.gpu_others):
        return f"other processes used the GPU during the run: {', '.join(m.gpu_others[:3])}"
    if same_code is not None and m.throughput is not None and same_code.throughput is not None \
            and _off(m.throughput, same_code.throughput):
        return (f"{THROUGHPUT} {m.throughput:.4g} against {same_code.throughput:.4g} for the same code "
                f"(over {MARGIN:.0%} apart)")
    return None


def combine(machines: list[Machine]) -> Machine | None:
    """The reference of a calibrated baseline: the median share and throughput of its runs."""
    if not machines:
        return None

    def med(xs: list[float]) -> float | None:
        xs = sorted(xs)
        return None if not xs else xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    others = tuple(dict.fromkeys(o for m in machines for o in m.gpu_others))
    return Machine(med([m.cpu_share for m in machines if m.cpu_share is not None]), others,
                   med([m.throughput for m in machines if m.throughput is not None]))


# ---- the token budget ----


def token_budget_problem(metrics: Mapping[str, float], budget: int) -> str | None:
    """None when the run reports that it trained on at most `budget` tokens, else the checks_failed
    reason (pure). The run's file is editable: what it reports is checked, and a run that reports no
    token count cannot be verified, so it fails too."""
    for name, scale in TOKEN_METRICS.items():
        if name in metrics:
            tokens = metrics[name] * scale
            if tokens > budget * (1 + 1e-9):
                return (f"the run trained on {tokens:,.0f} tokens ({name}), over the token budget of {budget:,}: "
                        "training past the budget is not a valid result")
            return None
    return (f"the session has a token budget ({budget:,}), but the run reported no token count "
            f"(METRIC {' or '.join(TOKEN_METRICS)}), so the budget cannot be verified")


# ---- the GPU ----


def gpu_apps(timeout_s: float = 5.0) -> list[tuple[int, str]] | None:
    """(pid, name) of every process using an NVIDIA GPU now; None without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,process_name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    apps = []
    for line in out.stdout.splitlines():
        pid, _, name = line.partition(",")
        with contextlib.suppress(ValueError):
            apps.append((int(pid.strip()), os.path.basename(name.strip())))
    return apps


class GpuWatch(threading.Thread):
    """Polls `nvidia-smi` every GPU_POLL_S during a run (in a thread: it can take a second) and
    remembers the processes on the GPU that are neither the controller nor `ours(pid)` (the run's)."""

    def __init__(self, ours: Callable[[int], bool], poll_s: float = GPU_POLL_S) -> None:
        super().__init__(name="gpu-watch", daemon=True)
        self.ours, self.poll_s = ours, poll_s
        self.others: dict[int, str] = {}
        self._stop = threading.Event()
        self.enabled = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        while True:
            apps = gpu_apps()
            if apps is None:
                return
            for pid, name in apps:
                if pid != os.getpid() and not self.ours(pid):
                    self.others.setdefault(pid, name)
            if self._stop.wait(self.poll_s):
                return

    def start(self) -> None:
        if self.enabled:
            super().start()

    def finish(self) -> tuple[str, ...]:
        self._stop.set()
        if self.is_alive():
            self.join(6.0)
        return tuple(f"{pid} {name}" for pid, name in sorted(self.others.items()))


def token_budget_of(cfg: Any) -> int | None:
    """The session's token budget: `[session] token_budget` when `budget = "tokens"`, else None. Read
    with getattr so that this works with a Config that predates the two keys (then: None)."""
    if getattr(cfg, "budget", "time") != "tokens":
        return None
    n = getattr(cfg, "token_budget", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
