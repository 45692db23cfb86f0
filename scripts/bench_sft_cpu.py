"""The sft target's CPU preset, measured: base vs after-SFT accuracy within one budget, tokens/s, eval time.

Takes a prepared sft workspace (`autoresearch init DIR --target sft --base <a pretrain session>` and its
`python prepare.py --data ...`), copies it once per configuration, rewrites train.py's constants as asked,
runs train.py for the budget and then the fixed evaluation, as the harness would (without the sandbox), and
prints one line per configuration:

    .venv/bin/python scripts/bench_sft_cpu.py WS --budget 90
    .venv/bin/python scripts/bench_sft_cpu.py WS --budget 90 --set LR=1e-2 --set LR=3e-3,BATCH_SIZE=8
    .venv/bin/python scripts/bench_sft_cpu.py WS --seeds 1,2,3      # the default constants, three seeds

Each --set is one configuration (comma-separated NAME=VALUE pairs); with none, train.py as it is.
--threads N sets OMP_NUM_THREADS (on a shared, loaded machine 1 thread per process is far faster than 2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRIC = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)


def rewrite(source: str, assignments: dict[str, str]) -> str:
    for name, value in assignments.items():
        pattern = re.compile(rf"^({name}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.M)
        if not pattern.search(source):
            sys.exit(f"error: train.py has no constant {name}")
        source = pattern.sub(lambda m, v=value: f"{m.group(1)}{v}{m.group(3)}", source, count=1)
    return source


def run(ws: Path, budget: float, assignments: dict[str, str], seed: int, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        copy = Path(tmp) / "ws"
        shutil.copytree(ws, copy, ignore=shutil.ignore_patterns(".git", ".autoresearch", "__pycache__"))
        train = copy / "train.py"
        train.write_text(rewrite(train.read_text(), assignments))
        ckpt = Path(tmp) / "ckpt"
        run_env = {**env, "AUTORESEARCH_TIME_BUDGET": str(budget), "AUTORESEARCH_SEED": str(seed),
                   "AUTORESEARCH_CHECKPOINT": str(ckpt)}
        t0 = time.time()
        trained = subprocess.run([sys.executable, "train.py"], cwd=copy, env=run_env, capture_output=True, text=True)
        wall = time.time() - t0
        if trained.returncode != 0:
            sys.exit(f"train.py failed:\n{trained.stdout[-2000:]}{trained.stderr[-2000:]}")
        t1 = time.time()
        evaluated = subprocess.run([sys.executable, "prepare.py", "--evaluate", str(ckpt)], cwd=copy, env=run_env,
                                   capture_output=True, text=True)
        eval_s = time.time() - t1
        if evaluated.returncode != 0:
            sys.exit(f"the evaluation failed:\n{evaluated.stdout[-2000:]}{evaluated.stderr[-2000:]}")
        metrics = {k: float(v) for k, v in METRIC.findall(trained.stdout + evaluated.stdout)}
        return {**metrics, "wall_s": wall, "eval_s": eval_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="a prepared sft workspace")
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds (default 90)")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE[,NAME=VALUE...]: one configuration")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds (default 42)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every process")
    args = parser.parse_args()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("AUTORESEARCH_RESULT_FILE", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    configs = [dict(kv.split("=", 1) for kv in s.split(",")) for s in args.set] or [{}]
    print(f"{'config':<40} {'seed':>4} {'base':>6} {'after':>6} {'format':>6} {'nll':>6} {'loss':>6} "
          f"{'steps':>5} {'tok/s':>6} {'run s':>6} {'eval s':>6}")
    for config in configs:
        afters = []
        for seed in (int(s) for s in args.seeds.split(",")):
            m = run(args.workspace, args.budget, config, seed, env)
            afters.append(m.get("val_accuracy", float("nan")))
            label = ",".join(f"{k}={v}" for k, v in config.items()) or "(train.py as is)"
            print(f"{label:<40} {seed:>4} {m.get('base_accuracy', float('nan')):>6.3f} "
                  f"{m.get('val_accuracy', float('nan')):>6.3f} {m.get('format_rate', float('nan')):>6.3f} "
                  f"{m.get('val_nll', float('nan')):>6.3f} {m.get('train_loss', float('nan')):>6.3f} "
                  f"{int(m.get('num_steps', 0)):>5} {m.get('tokens_per_sec', 0):>6.0f} {m['wall_s']:>6.1f} "
                  f"{m['eval_s']:>6.1f}", flush=True)
        if len(afters) > 1:
            print(f"{'':<40} mean after {sum(afters) / len(afters):.3f}, min {min(afters):.3f} over "
                  f"{len(afters)} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
