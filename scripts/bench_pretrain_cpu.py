"""CPU benchmark of the pretrain target: tokens/s and val_bpb after 15 s and after 60 s of training.

Run: .venv/bin/python scripts/bench_pretrain_cpu.py            (~3-4 minutes on 2 cores)
     .venv/bin/python scripts/bench_pretrain_cpu.py --budgets 15 60 120 --json bench_cpu.json

It copies assets/pretrain/ and the kit into a temporary workspace (as `autoresearch init` does), prepares the offline
`local` corpus once (cached in $AUTORESEARCH_CACHE_DIR, default ~/.cache/autoresearch), then runs train.py
once per budget with CUDA hidden, so the numbers are the CPU preset's even on a GPU machine. The longer
budget must reach a clearly lower val_bpb: that is the check that the CPU preset learns.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pretrain")
METRIC = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")


def run_streaming(cmd: list[str], cwd: str, env: dict, prefix: str) -> tuple[int, str]:
    """Run cmd, echoing its output with a prefix as it arrives; return (exit code, full output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(f"{prefix}{line}", end="", flush=True)
    return proc.wait(), "".join(lines)


def parse_run(output: str) -> dict:
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC.match, output.splitlines()) if m}
    for key in ("attention", "preset", "device", "data"):
        found = re.search(rf"^{key}: (.*)$", output, re.M)
        metrics[key] = found.group(1) if found else "?"
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 60.0], help="training seconds per run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    ws = tempfile.mkdtemp(prefix="bench_pretrain_cpu_")
    for name in ("prepare.py", "train.py"):
        shutil.copy(os.path.join(ASSETS, name), ws)
    shutil.copy(os.path.join(os.path.dirname(ASSETS), "arkit.py"), ws)  # the fixed kit prepare.py imports
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "AUTORESEARCH_SEED": str(args.seed), "HF_HUB_OFFLINE": "1"}
    env["AUTORESEARCH_CHECKPOINT"] = os.path.join(ws, "checkpoint")
    env.pop("AUTORESEARCH_DATASET", None)

    t0 = time.time()
    code, _ = run_streaming([sys.executable, "prepare.py", "--dataset", "local"], ws, env, "[prepare] ")
    if code != 0:
        print("prepare.py failed", file=sys.stderr)
        return 1
    print(f"[prepare] {time.time() - t0:.1f}s")

    results = []
    for budget in args.budgets:
        env["AUTORESEARCH_TIME_BUDGET"] = str(budget)
        t0 = time.time()
        code, output = run_streaming([sys.executable, "train.py"], ws, env, f"[{budget:g}s] ")
        if code != 0 or "val_bpb" not in output:
            print(f"train.py failed with a {budget:g}s budget (exit {code})", file=sys.stderr)
            return 1
        result = {"budget_s": budget, "wall_s": time.time() - t0, **parse_run(output)}
        results.append(result)

    cores = os.cpu_count()
    print()
    print(f"pretrain target on CPU ({cores} cores), preset {results[0]['preset']}, attention {results[0]['attention']}")
    print(f"data: {results[0]['data']}")
    print(f"{'budget':>8} {'val_bpb':>9} {'tokens/s':>9} {'steps':>6} {'tokens_M':>9} {'train_s':>8} {'total_s':>8} {'wall_s':>7} {'rss_mb':>7}")
    for r in results:
        print(
            f"{r['budget_s']:>7g}s {r['val_bpb']:>9.4f} {r['tokens_per_sec']:>9,.0f} {r['num_steps']:>6.0f} "
            f"{r['total_tokens_M']:>9.3f} {r['training_seconds']:>8.1f} {r['total_seconds']:>8.1f} {r['wall_s']:>7.1f} "
            f"{r['peak_vram_mb']:>7.0f}"
        )
    ordered = sorted(results, key=lambda r: r["budget_s"])
    verdict = 0
    for short, long in zip(ordered, ordered[1:], strict=False):
        drop = short["val_bpb"] - long["val_bpb"]
        ok = drop > 0.05
        verdict |= not ok
        print(
            f"val_bpb {short['budget_s']:g}s -> {long['budget_s']:g}s: {short['val_bpb']:.4f} -> {long['val_bpb']:.4f} "
            f"({'-' if drop >= 0 else '+'}{abs(drop):.4f}): {'clearly lower' if ok else 'NOT clearly lower'}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cpu_count": cores, "results": results}, f, indent=1)
    if args.keep:
        print(f"workspace: {ws}")
    else:
        shutil.rmtree(ws, ignore_errors=True)
    return verdict


if __name__ == "__main__":
    sys.exit(main())
