"""Benchmark the sandbox's cost per run: a fresh checkout plus bubblewrap, against a bare run.

For each trivial command (`true`, `python -c pass`), the median wall time of N runs of:
  bare      runner.run_command in the workspace (the old LocalExecutor's way, no checkout, no sandbox);
  sandbox   SandboxExecutor.run: a fresh checkout of the commit, the allowlisted environment, bwrap
            (the whole call, as the controller sees it: checkout, digests of the fixed files, the run);
  checkout  the same without bwrap (the subreaper instead), for machines without it.
Prints each median, the ratio to bare and the overhead in seconds (goal: overhead < 0.3 s).

Run: python scripts/bench_sandbox.py [--runs 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from toy import make_toy  # noqa: E402

from harness import sandbox  # noqa: E402
from harness.config import load  # noqa: E402
from harness.executor import SandboxExecutor  # noqa: E402
from harness.runner import run_command  # noqa: E402
from harness.workspace import Workspace  # noqa: E402


def median_s(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm: page cache, the probe's answer
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        root = make_toy(tmp / "ws")
        ws, cfg = Workspace(root), load(root)
        env = {"AUTORESEARCH_CHECKPOINT": str(ws.state_dir / "checkpoints" / "run-1")}
        problem = sandbox.probe(shutil.which("bwrap"))
        print(f"bubblewrap: {problem or sandbox.version(shutil.which('bwrap') or 'bwrap')}")
        modes = {"sandbox": "bwrap", "checkout": None} if problem is None else {"checkout": None}
        for command in ("true", "python -c pass"):
            c = dataclasses.replace(cfg, command=command)

            def bare(command: str = command) -> object:
                return run_command(command, root, env=env, timeout_s=60, log_path=ws.state_dir / "runs" / "bare.log",
                                   progress=False)

            base = median_s(bare, args.runs)
            print(f"\n{command!r}: bare run_command {base * 1000:.1f} ms (median of {args.runs})")
            for name, bwrap in modes.items():
                ex = SandboxExecutor(ws, c, bwrap=bwrap, progress=False)

                def one(ex: SandboxExecutor = ex) -> object:
                    x = ex.run(ws.head(), 42, env, key="1", label="bench")
                    assert x.failure is None, x.res.tail
                    return x

                t = median_s(one, args.runs)
                print(f"  {name:<8} {t * 1000:7.1f} ms   ratio {t / base:4.2f}x   overhead {t - base:+.3f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        sandbox.sweep_run_roots()  # the bench workspace's run directories


if __name__ == "__main__":
    main()
