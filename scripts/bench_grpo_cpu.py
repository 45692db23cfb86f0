"""The grpo target's CPU preset, measured: base vs after-GRPO accuracy within one budget, and the rollouts.

Takes a prepared grpo workspace (`autoresearch init DIR --target grpo --base <an sft session>` and its
`python prepare.py --data ...`), copies it once per configuration, rewrites train.py's constants as asked,
runs train.py for the budget and then the fixed evaluation, as the harness would (without the sandbox), and
prints one line per run (bench_sft_cpu.py's machinery):

    .venv/bin/python scripts/bench_grpo_cpu.py WS --budget 90 --threads 1 --seeds 1,2
    .venv/bin/python scripts/bench_grpo_cpu.py WS --set LR=1e-3 --set LR=5e-3,GROUP_SIZE=4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sft_cpu import run  # noqa: E402  (same directory: copy, rewrite, train, evaluate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="a prepared grpo workspace")
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
    print(f"{'config':<32} {'seed':>4} {'base':>6} {'after':>6} {'format':>6} {'reward':>6} {'tr_acc':>6} "
          f"{'zero_v':>6} {'clip':>5} {'entr':>5} {'steps':>5} {'smp/s':>6} {'run s':>6} {'eval s':>6}")
    nan = float("nan")
    for config in configs:
        afters = []
        for seed in (int(s) for s in args.seeds.split(",")):
            m = run(args.workspace, args.budget, config, seed, env)
            afters.append(m.get("val_accuracy", nan))
            label = ",".join(f"{k}={v}" for k, v in config.items()) or "(train.py as is)"
            print(f"{label:<32} {seed:>4} {m.get('base_accuracy', nan):>6.3f} {m.get('val_accuracy', nan):>6.3f} "
                  f"{m.get('format_rate', nan):>6.3f} {m.get('reward', nan):>6.3f} {m.get('train_accuracy', nan):>6.3f} "
                  f"{m.get('frac_zero_variance', nan):>6.3f} {m.get('clipped_ratio', nan):>5.2f} "
                  f"{m.get('entropy', nan):>5.2f} {int(m.get('num_steps', 0)):>5} {m.get('samples_per_sec', 0):>6.1f} "
                  f"{m['wall_s']:>6.1f} {m['eval_s']:>6.1f}", flush=True)
        if len(afters) > 1:
            print(f"{'':<32} mean after {sum(afters) / len(afters):.3f}, min {min(afters):.3f} over "
                  f"{len(afters)} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
