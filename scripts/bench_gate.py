"""Does the noise gate stop noise from being kept as progress? Naive rule vs gate, side by side.

A synthetic target with a known true objective plus Gaussian noise of known sigma is
explored by the offline `mutate` agent through the real controller (real git workspace,
real ledger, real decision code). Only the training process is replaced by a function of
train.py's constants, so 2,000 iterations take minutes, not days.

For each of 10 seeds and each rule, 100 iterations; reported, averaged over seeds:
- false keeps: kept experiments whose true objective did not improve on the previous kept one;
- missed improvements: experiments not kept whose true objective was better by more than sigma/2;
- the final true objective (of the files at HEAD at the end);
- budget: training runs spent (calibration and confirmation runs included).

Run: python scripts/bench_gate.py [--seeds 10] [--iterations 100] [--sigma 0.02]
"""

from __future__ import annotations

import argparse
import ast
import io
import math
import random
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from toy import make_toy  # noqa: E402

from harness import config as config_mod  # noqa: E402
from harness import ledger  # noqa: E402
from harness.agents.mutate import MutateAgent  # noqa: E402
from harness.loop import Controller  # noqa: E402
from harness.runner import RunResult  # noqa: E402

TRAIN = """\
LR = 0.004           # optimum near 10**-1.5
WIDTH = 16           # optimum at 64
WARMDOWN = 0.2       # optimum at 0.5, a weak effect
LOG_EVERY = 8        # no effect on the objective at all
EVAL_BATCH = 32      # no effect on the objective at all
"""


def true_objective(c: dict[str, float]) -> float:
    """Higher is better; the maximum is 0."""
    return (-((math.log10(c["LR"]) + 1.5) ** 2)
            - 0.25 * (math.log2(c["WIDTH"]) - 6) ** 2
            - 0.5 * (c["WARMDOWN"] - 0.5) ** 2)


def constants(src: str) -> dict[str, float]:
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = float(ast.literal_eval(node.value))
    return out


def make_runner(root: Path, sigma: float, bench_seed: int, counter: list[int]):
    def runner(command, cwd, *, env, timeout_s, log_path, tail_path=None, **_kw) -> RunResult:
        counter[0] += 1
        c = constants((Path(cwd) / "train.py").read_text())
        rng = random.Random(f"{bench_seed}:{env['AUTORESEARCH_RUN']}:{env['AUTORESEARCH_SEED']}")
        score = true_objective(c) + rng.gauss(0.0, sigma)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        text = f"METRIC score={score:.8f}\n"
        log_path.write_text(text)
        return RunResult(0, False, False, 0.01, None, text, log_path)

    return runner


def one(args: tuple[str, int, int, float, dict]) -> dict[str, float]:
    rule, seed, iterations, sigma, gate = args
    with tempfile.TemporaryDirectory() as d, redirect_stdout(io.StringIO()):
        root = make_toy(Path(d) / "ws", train=TRAIN)
        cfg = config_mod.load(root)
        if rule == "gate":
            cfg = config_mod.with_overrides(cfg, **gate)
        counter = [0]
        ctl = Controller(root, cfg, runner=make_runner(root, sigma, seed, counter), printer=lambda s: None,
                         progress=False)
        agent = MutateAgent(rng_seed=seed)
        for _ in range(iterations + 1):  # the baseline, then `iterations` experiments
            try:
                ctl.iterate(agent)
            except Exception as exc:  # the agent ran out of nearby points
                if "every nearby point" in str(exc):
                    break
                raise
        state = ledger.load_state(root / "autoresearch.jsonl")
        false_keeps = missed = kept = 0
        current = true_objective(constants(ctl.ws.file_at(state.runs[0].commit, "train.py").decode()))
        for r in state.runs[1:]:
            c = constants(ctl.ws.file_at(r.commit, "train.py").decode())
            t = true_objective(c)
            if r.status == "keep":
                kept += 1
                if t <= current:
                    false_keeps += 1
                current = t
            elif t > current + sigma / 2:
                missed += 1
        final = true_objective(constants((root / "train.py").read_text()))
    return {"rule": rule, "seed": seed, "kept": kept, "false_keeps": false_keeps, "missed": missed,
            "final": final, "budget": counter[0], "experiments": len(state.runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calibrate", type=int, default=5, help="gate: baseline runs for the noise floor")
    ap.add_argument("--confirm", type=int, default=None, help="gate: confirmation re-runs (default: the harness's)")
    ap.add_argument("--min-effect", type=float, default=None, help="gate: standard errors (default: the harness's)")
    args = ap.parse_args()
    gate = {"calibrate": args.calibrate}
    if args.confirm is not None:
        gate["confirm"] = args.confirm
    if args.min_effect is not None:
        gate["min_effect_sigma"] = args.min_effect
    t0 = time.perf_counter()
    jobs = [(rule, s, args.iterations, args.sigma, gate) for s in range(args.seeds) for rule in ("naive", "gate")]
    with Pool(args.workers) as pool:
        results = pool.map(one, jobs)
    print(f"{args.seeds} seeds x {args.iterations} iterations of the mutate agent, noise sigma {args.sigma}; "
          f"gate settings {gate} ({time.perf_counter() - t0:.0f}s)")
    print(f"{'rule':<6} {'kept':>6} {'false keeps':>12} {'false %':>8} {'missed':>7} {'final true obj':>15} "
          f"{'budget (runs)':>14}")
    summary = {}
    for rule in ("naive", "gate"):
        rs = [r for r in results if r["rule"] == rule]
        kept = statistics.fmean(r["kept"] for r in rs)
        fk = statistics.fmean(r["false_keeps"] for r in rs)
        pct = 100 * sum(r["false_keeps"] for r in rs) / max(1, sum(r["kept"] for r in rs))
        summary[rule] = (statistics.fmean(r["final"] for r in rs), statistics.fmean(r["budget"] for r in rs), pct)
        print(f"{rule:<6} {kept:>6.1f} {fk:>12.1f} {pct:>7.1f}% {statistics.fmean(r['missed'] for r in rs):>7.1f} "
              f"{summary[rule][0]:>15.4f} {summary[rule][1]:>14.1f}")
    (nf, nb, _), (gf, gb, gp) = summary["naive"], summary["gate"]
    by_seed = {(r["rule"], r["seed"]): r["final"] for r in results}
    diffs = [by_seed["gate", s] - by_seed["naive", s] for s in range(args.seeds)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    print(f"gate vs naive: budget x{gb / nb:.2f}; final true objective {gf - nf:+.4f} +- {se:.4f} (paired over "
          f"seeds, standard error; higher is better); false keeps {gp:.1f}% of keeps")


if __name__ == "__main__":
    main()
