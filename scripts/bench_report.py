"""Time `plot`, `report` and `export` on a synthetic session of 1,000 runs.

Three segments (val_bpb lower-is-better twice, then a higher-is-better accuracy), crashes,
checks_failed, a few diverged runs, descriptions with markup in them, and a real git
workspace in which every kept run is a commit with a small diff (so the report shows real
diffs). Building it is not timed. Each command is timed in-process (perf_counter, matplotlib
already imported) and as the whole CLI in a fresh interpreter (what a user waits for).

Run: .venv/bin/python scripts/bench_report.py [--runs 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ledger
from harness.cli import main

IDEAS = [
    "raise matrix LR {a} -> {b}", "DEPTH {a} -> {b}", "halve the batch to 2**{a}", "warmdown ratio {a} -> {b}",
    "weight decay on embeddings {b}", "RoPE base {a}0000", "window pattern SSSL -> SSSSL, short = seq/{a}",
    "init scale x{b}", "final LR fraction 0.{a}", "x0 residual lambda {b}", "value embeddings every {a} layers",
    "<b>bold</b> & $x^2$ idea {a}", "Muon momentum 0.9{a} with a much longer description that goes on {b}",
]


def synthetic_lines(n: int, seed: int = 0) -> list[dict]:
    """Ledger lines: 3 segments of ~n/3 runs each. Pure (seeded) so tests can use it too."""
    rng = random.Random(seed)
    specs = [("val_bpb", "lower", 0.9979, 0.0030), ("val_bpb", "lower", 0.9712, 0.0020), ("accuracy", "higher", 0.62, 0.01)]
    out: list[dict] = []
    run, t = 1, 1_760_000_000
    for seg_i, (metric, direction, base, scale) in enumerate(specs):
        out.append(ledger.header_line(f"bench session {seg_i}", metric, "", direction))
        sign = -1 if direction == "lower" else 1
        true_best = best = base
        count = n // 3 + (1 if seg_i < n % 3 else 0)
        for i in range(count):
            t += rng.randint(280, 340)
            idea = rng.choice(IDEAS).format(a=rng.randint(2, 9), b=round(rng.uniform(0.1, 2), 2))
            asi = {"hypothesis": f"{idea} should help because reasons #{i}", "lane": rng.choice(["arch", "optim"])}
            roll = rng.random()
            rec = {"run": run, "commit": f"{rng.getrandbits(28):07x}", "metrics": {}, "description": idea,
                   "timestamp": t, "segment": seg_i, "confidence": None, "duration_s": rng.uniform(290, 330),
                   "diff": {"files": ["train.py"], "added": rng.randint(1, 9), "removed": rng.randint(1, 9)},
                   "agent": {"name": "claude", "model": "claude-x", "cost_usd": round(rng.uniform(0.01, 0.2), 3)}}
            if i == 0:
                value = base
                rec.update(status="keep", description="baseline", baseline=True)
            elif roll < 0.04:
                rec.update(status="crash", metric=0, asi={**asi, "rollback_reason": "CUDA out of memory"})
                out.append(rec)
                run += 1
                continue
            elif roll < 0.06:
                rec.update(status="checks_failed", metric=0, asi={**asi, "rollback_reason": "fixed files changed"})
                out.append(rec)
                run += 1
                continue
            else:
                effect = rng.gauss(-1.0, 1.0) * scale * 0.6
                if roll < 0.08:
                    effect = -3 * abs(base)  # diverged
                true = true_best + sign * effect
                value = true + rng.gauss(0, scale * 0.15)
                better = (value - best) * sign > 0
                rec["status"] = "keep" if better else "discard"
                if better:
                    best, true_best = value, true
                else:
                    asi["rollback_reason"] = f"worse by {abs(value - best):.4f}"
            rec.update(metric=round(value, 6), asi=asi, metrics={metric: round(value, 6),
                                                                  "peak_vram_mb": rng.uniform(40000, 62000)})
            out.append(rec)
            run += 1
    return out


def build_workspace(root: Path, n: int) -> None:
    """A git repo where every kept run of the synthetic ledger is a real commit."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(root), *a], check=True, capture_output=True, text=True).stdout.strip()

    root.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    git("config", "user.email", "bench@localhost")
    git("config", "user.name", "bench")
    train = root / "train.py"
    train.write_text("".join(f"PARAM_{i} = {i}\n" for i in range(60)))
    git("add", "train.py")
    git("commit", "-q", "-m", "base")
    lines = synthetic_lines(n)
    rng = random.Random(1)
    for rec in lines:
        if rec.get("status") == "keep" and not rec.get("baseline"):
            text = train.read_text().splitlines()
            k = rng.randrange(len(text))
            text[k] = f"PARAM_{k} = {rng.random():.4f}  # run {rec['run']}"
            train.write_text("\n".join(text) + "\n")
            git("commit", "-q", "-am", f"experiment #{rec['run']}: {rec['description']}")
            rec["commit"] = git("rev-parse", "--short=7", "HEAD")
    with open(root / ledger.LEDGER_NAME, "wb") as f:
        for rec in lines:
            f.write(ledger.encode(rec))


def timed(label: str, argv: list[str]) -> tuple[float, float]:
    """(in-process seconds, whole-CLI seconds: a fresh interpreter, imports included)."""
    t0 = time.perf_counter()
    rc = main(argv)
    warm = time.perf_counter() - t0
    assert rc == 0, f"{label} failed"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", *argv], check=True, capture_output=True)
    return warm, time.perf_counter() - t0


def bench(n: int, keep: Path | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-")) if keep is None else keep
    root = tmp / "ws"
    t0 = time.perf_counter()
    build_workspace(root, n)
    build = time.perf_counter() - t0
    state = ledger.load_state(root / ledger.LEDGER_NAME)
    kept = sum(1 for r in state.runs if r.status == "keep")
    crashes = sum(1 for r in state.runs if r.status == "crash")
    cf = sum(1 for r in state.runs if r.status == "checks_failed")
    print(f"synthetic session: {len(state.runs)} runs, {len(state.segments)} segments, {kept} kept, {crashes} crash, "
          f"{cf} checks_failed (built in {build:.1f}s)")
    import matplotlib.backends.backend_agg  # noqa: F401 - imported up front: time the work, not the import
    results = {
        "plot (png)": timed("plot", ["-C", str(root), "plot", "-o", str(tmp / "progress.png")]),
        "plot (svg)": timed("plot", ["-C", str(root), "plot", "-o", str(tmp / "progress.svg")]),
        "report": timed("report", ["-C", str(root), "report", "-o", str(tmp / "report.html")]),
        "export --tsv": timed("export", ["-C", str(root), "export", "--tsv", "--segment", "all", "-o",
                                         str(tmp / "results.tsv")]),
    }
    size = (tmp / "report.html").stat().st_size
    print(f"\n{'command':<14} {'in-process s':>12} {'CLI s':>7}")
    for k, (warm, cold) in results.items():
        print(f"{k:<14} {warm:>12.2f} {cold:>7.2f}")
    print(f"report.html: {size / 1024:.0f} KB; outputs in {tmp}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--keep", type=Path, help="build in this directory (must not exist) and keep it")
    a = ap.parse_args()
    sys.exit(bench(a.runs, a.keep))
