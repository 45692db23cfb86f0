"""GPU benchmark of the pretrain target: one full run (300 s of training by default) on the CUDA device,
reporting val_bpb, tokens/s, MFU, peak VRAM and which attention backend ran.

Run on a machine with a CUDA GPU:
    .venv/bin/python scripts/bench_pretrain_gpu.py                          # offline `local` corpus
    .venv/bin/python scripts/bench_pretrain_gpu.py --dataset climbmix       # needs the HF Hub (or a warm cache)
    .venv/bin/python scripts/bench_pretrain_gpu.py --attention sdpa --budget 120 --json gpu.json

It copies assets/pretrain/ and the kit into a temporary workspace, runs prepare.py (idempotent; cached in
$AUTORESEARCH_CACHE_DIR, default ~/.cache/autoresearch) and then train.py unchanged, except for ATTENTION
when --attention asks for another backend, and for SIZED_FOR and the five model-size constants when
--preset names a row of train.py's PRESETS (written into them as they are). Numbers are only comparable
between runs on the same GPU, dataset fingerprint and budget.
"""

import argparse
import ast
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
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(f"{prefix}{line}", end="", flush=True)
    return proc.wait(), "".join(lines)


def set_constant(source: str, name: str, value: str) -> str:
    """Replace the value of a top-level `NAME = ...` line of train.py, keeping its comment."""
    pattern = re.compile(rf"^({name}\s*=\s*)(\"[^\"]*\"|\S+)", re.M)
    if not pattern.search(source):
        raise SystemExit(f"train.py has no {name} constant")
    return pattern.sub(lambda m: m.group(1) + value, source, count=1)


SIZE_CONSTANTS = {"depth": "DEPTH", "aspect": "ASPECT_RATIO", "head_dim": "HEAD_DIM",
                  "device_batch": "DEVICE_BATCH_SIZE", "total_batch": "TOTAL_BATCH_SIZE"}


def preset_row(source: str, name: str) -> dict:
    """The row `name` of train.py's PRESETS table (dict(...) calls of int literals and powers)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PRESETS":
            for key, row in zip(node.value.keys, node.value.values, strict=True):
                if key.value == name:
                    return {kw.arg: eval(compile(ast.Expression(kw.value), "PRESETS", "eval"), {"__builtins__": {}})
                            for kw in row.keywords}
            raise SystemExit(f"train.py's PRESETS has no row {name!r}")
    raise SystemExit("train.py has no PRESETS table")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="local", help="what prepare.py --dataset gets (default local)")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds (default 300)")
    parser.add_argument("--attention", default="auto", choices=["auto", "fa3", "flex", "sdpa"])
    parser.add_argument("--preset", default="auto",
                        help="a PRESETS row of train.py to write into its size constants, or auto (as shipped)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device; use scripts/bench_pretrain_cpu.py on CPU", file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm{props.major}{props.minor}"

    ws = tempfile.mkdtemp(prefix="bench_pretrain_gpu_")
    shutil.copy(os.path.join(ASSETS, "prepare.py"), ws)
    shutil.copy(os.path.join(os.path.dirname(ASSETS), "arkit.py"), ws)  # the fixed kit prepare.py imports
    with open(os.path.join(ASSETS, "train.py"), encoding="utf-8") as f:
        source = f.read()
    source = set_constant(source, "ATTENTION", json.dumps(args.attention))
    if args.preset != "auto":
        row = preset_row(source, args.preset)
        source = set_constant(source, "SIZED_FOR", json.dumps(args.preset))
        for key, name in SIZE_CONSTANTS.items():
            source = set_constant(source, name, str(row[key]))
    with open(os.path.join(ws, "train.py"), "w", encoding="utf-8") as f:
        f.write(source)
    env = {**os.environ, "AUTORESEARCH_SEED": str(args.seed), "AUTORESEARCH_TIME_BUDGET": str(args.budget)}
    env["AUTORESEARCH_CHECKPOINT"] = os.path.join(ws, "checkpoint")
    env.pop("AUTORESEARCH_DATASET", None)

    t0 = time.time()
    code, _ = run_streaming([sys.executable, "prepare.py", "--dataset", args.dataset], ws, env, "[prepare] ")
    if code != 0:
        print("prepare.py failed", file=sys.stderr)
        return 1
    prepare_s = time.time() - t0

    t0 = time.time()
    code, output = run_streaming([sys.executable, "train.py"], ws, env, "[train] ")
    wall_s = time.time() - t0
    if code != 0 or "val_bpb" not in output:
        print(f"train.py failed (exit {code})", file=sys.stderr)
        return 1
    result = {m.group(1): float(m.group(2)) for m in map(METRIC.match, output.splitlines()) if m}
    for key in ("device", "attention", "preset", "data", "model", "batch", "startup"):
        found = re.search(rf"^{key}: (.*)$", output, re.M)
        result[key] = found.group(1) if found else "?"
    result.update(gpu=gpu, dataset=args.dataset, budget_s=args.budget, wall_s=wall_s, prepare_s=prepare_s)

    print()
    print(f"pretrain target on {gpu}")
    for key in ("device", "attention", "preset", "data", "model", "batch"):
        print(f"  {key + ':':<18}{result[key]}")
    print(f"  {'val_bpb:':<18}{result['val_bpb']:.6f}")
    print(f"  {'tokens/s:':<18}{result['tokens_per_sec']:,.0f}")
    print(f"  {'mfu_percent:':<18}{result['mfu_percent']:.2f}")
    print(f"  {'peak_vram_mb:':<18}{result['peak_vram_mb']:.1f}")
    print(f"  {'num_steps:':<18}{result['num_steps']:.0f}  ({result['total_tokens_M']:.1f}M tokens)")
    print(f"  {'seconds:':<18}train {result['training_seconds']:.1f}, total {result['total_seconds']:.1f}, "
          f"wall {wall_s:.1f} (startup {result['startup']}), prepare {prepare_s:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    shutil.rmtree(ws, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
