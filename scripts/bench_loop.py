"""Benchmark the controller itself, not the training it runs.

1. Overhead of one iteration excluding the target command: a toy workspace whose ledger
   already holds 1,000 lines, 20 iterations of the mutate agent; per iteration we subtract
   the runner's wall time (the target's own process) from the iteration's wall time.
2. `autoresearch status --json` on a 100,000-line ledger: the whole CLI as a user runs it
   (process start included), and the in-process read + fold alone.

Run: python scripts/bench_loop.py [--iterations 20] [--ledger-lines 1000] [--status-lines 100000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from toy import make_toy  # noqa: E402

from harness import config as config_mod  # noqa: E402
from harness import ledger  # noqa: E402
from harness.agents.mutate import MutateAgent  # noqa: E402
from harness.loop import Controller  # noqa: E402
from harness.runner import run_command  # noqa: E402


def synthetic_lines(n: int, start: int = 1) -> bytes:
    out = []
    for i in range(start, start + n):
        status = "keep" if i == start else ("discard" if i % 7 else "crash")
        out.append(orjson.dumps({
            "run": i, "commit": f"{i:07x}", "metric": 0 if status == "crash" else -1.0 - (i % 13) / 100,
            "metrics": {"score": -1.0 - (i % 13) / 100, "peak_rss_mb": 100.0 + i % 5}, "status": status,
            "description": f"synthetic experiment {i}: WIDTH {i % 64} -> {i % 64 + 1}",
            "timestamp": 1763700000 + i, "segment": 0, "confidence": None,
            "asi": {"hypothesis": "a synthetic line for the benchmark", "rollback_reason": "worse"},
            "duration_s": 1.0, "diff": {"files": ["train.py"], "added": 1, "removed": 1, "sha": f"{i:016x}"},
        }) + b"\n")
    return b"".join(out)


def append_chained(path: Path, lines: bytes) -> None:
    """Synthetic history after init's header, hash-chained as the controller writes it (else the loop
    refuses the ledger)."""
    data = ledger.chain((orjson.loads(x) for x in lines.splitlines()), ledger.head_hash(path))
    with open(path, "ab") as f:
        f.write(data)


def bench_iterations(tmp: Path, iterations: int, ledger_lines: int) -> list[float]:
    root = make_toy(tmp / "ws")
    # a baseline line with the toy's real metric, then synthetic history the agent must read
    append_chained(root / "autoresearch.jsonl", synthetic_lines(ledger_lines))
    runner_wall: list[float] = []

    def timed_runner(*args, **kwargs):
        t = time.perf_counter()
        res = run_command(*args, **kwargs)
        runner_wall.append(time.perf_counter() - t)
        return res

    cfg = config_mod.load(root)
    ctl = Controller(root, cfg, runner=timed_runner, printer=lambda s: None, progress=False)
    agent = MutateAgent(rng_seed=1)
    overheads = []
    for _ in range(iterations):
        runner_wall.clear()
        t = time.perf_counter()
        ctl.verify()
        ctl.iterate(agent)
        total = time.perf_counter() - t
        overheads.append(total - sum(runner_wall))
    n = len(ledger.load_state(root / "autoresearch.jsonl").runs)
    print(f"ledger now holds {n} run lines")
    return overheads


def bench_status(tmp: Path, lines: int) -> tuple[float, float]:
    root = make_toy(tmp / "big")
    append_chained(root / "autoresearch.jsonl", synthetic_lines(lines))
    t = time.perf_counter()
    state = ledger.load_state(root / "autoresearch.jsonl")
    fold_s = time.perf_counter() - t
    assert len(state.runs) == lines
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness.cli", "-C", str(root), "status", "--json"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return min(times), fold_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--ledger-lines", type=int, default=1000)
    ap.add_argument("--status-lines", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        over = bench_iterations(tmp, args.iterations, args.ledger_lines)
        print(f"controller overhead per iteration (excluding the target command), {args.iterations} iterations, "
              f"{args.ledger_lines}-line ledger: median {statistics.median(over) * 1000:.1f} ms, "
              f"min {min(over) * 1000:.1f} ms, max {max(over) * 1000:.1f} ms")
        cli_s, fold_s = bench_status(tmp, args.status_lines)
        print(f"status --json on a {args.status_lines:,}-line ledger: {cli_s:.2f} s end to end (best of 3, process "
              f"start included); read + fold alone {fold_s:.2f} s")


if __name__ == "__main__":
    main()
