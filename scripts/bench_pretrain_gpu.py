"""GPU benchmark of the pretrain target: one full run (300 s of training by default) on the CUDA device and
the fixed evaluation of its checkpoint, reporting val_bpb, tokens/s, MFU, peak VRAM, which attention backend
ran, and the times the budget rule is made of (the run's wall time beyond its budget, the export) and the
evaluation's (never counted), with its causality probe.

Run on a machine with a CUDA GPU:
    .venv/bin/python scripts/bench_pretrain_gpu.py                          # offline `local` corpus
    .venv/bin/python scripts/bench_pretrain_gpu.py --dataset climbmix       # needs the HF Hub (or a warm cache)
    .venv/bin/python scripts/bench_pretrain_gpu.py --attention sdpa --budget 120 --json gpu.json

It copies assets/pretrain/ and the kit into a temporary workspace, runs prepare.py (idempotent; cached in
$AUTORESEARCH_CACHE_DIR, default ~/.cache/autoresearch), then train.py unchanged, except for ATTENTION
when --attention asks for another backend, and for SIZED_FOR and the five model-size constants when
--preset names a row of train.py's PRESETS (written into them as they are), then `prepare.py --evaluate`.
--compare also scores the same weights the old way, in-process: train.py's GPT with the attention it trained
with (FA3 or flex, compiled), under bf16 autocast, by evaluate_bpb; the exported program attends with SDPA, so
the two differ by kernel rounding only. Numbers are only comparable between runs on the same GPU, dataset
fingerprint and budget.
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


# The old code path, for --compare: the model rebuilt from train.py, with the attention and compilation it trained
# with, and scored in the same process under the same autocast.
IN_PROCESS = """
import contextlib, json, sys, torch
import prepare, train
config = json.load(open(sys.argv[1] + "/config.json"))
device = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
attention = train.pick_attention(device, True)[0]
attention.build_masks(prepare.MAX_SEQ_LEN, set(train.GPTConfig(**config["model"]).windows()), device)
model = train.GPT(train.GPTConfig(**config["model"]), attention).to(device)
model.load_state_dict(torch.load(sys.argv[1] + "/model.pt", map_location=device, weights_only=True))
compiled = torch.compile(model.eval(), dynamic=False)
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if config["precision"] == "bf16 autocast" else contextlib.nullcontext()
with autocast:
    value = prepare.evaluate_bpb(compiled, prepare.Tokenizer.from_prepared(prepare.load_prepared()), config["eval_batch"])
print(attention.name, repr(value))
"""

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
    parser.add_argument("--compare", action="store_true", help="also score the weights in-process, the old way")
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
    for var in ("AUTORESEARCH_DATASET", "AUTORESEARCH_RESULT_FILE"):
        env.pop(var, None)

    t0 = time.time()
    code, _ = run_streaming([sys.executable, "prepare.py", "--dataset", args.dataset], ws, env, "[prepare] ")
    if code != 0:
        print("prepare.py failed", file=sys.stderr)
        return 1
    prepare_s = time.time() - t0

    t0 = time.time()
    code, output = run_streaming([sys.executable, "train.py"], ws, env, "[train] ")
    wall_s = time.time() - t0
    if code != 0:
        print(f"train.py failed (exit {code})", file=sys.stderr)
        return 1
    result = {m.group(1): float(m.group(2)) for m in map(METRIC.match, output.splitlines()) if m}
    for key in ("device", "attention", "preset", "data", "model", "batch", "startup", "warmup", "checkpoint"):
        found = re.search(rf"^{key}: (.*)$", output, re.M)
        result[key] = found.group(1) if found else "?"

    channel = os.path.join(ws, "result.jsonl")
    t0 = time.time()
    code, evaluation = run_streaming([sys.executable, "prepare.py", "--evaluate"], ws,
                                     {**env, "AUTORESEARCH_RESULT_FILE": channel}, "[eval] ")
    eval_s = time.time() - t0
    if code != 0:
        print(f"the evaluation failed (exit {code})", file=sys.stderr)
        return 1
    with open(channel, encoding="utf-8") as f:
        result["val_bpb"] = json.loads(f.readline())["value"]
    for key in ("causality", "eval"):
        found = re.search(rf"^{key}: (.*)$", evaluation, re.M)
        result[f"eval_{key}"] = found.group(1) if found else "?"
    if args.compare:
        old = subprocess.run([sys.executable, "-c", IN_PROCESS, env["AUTORESEARCH_CHECKPOINT"]], cwd=ws, env=env,
                             capture_output=True, text=True)
        if old.returncode == 0:
            backend, value = old.stdout.strip().splitlines()[-1].split()
            result.update(in_process_attention=backend, in_process_val_bpb=float(value))
        else:
            result["in_process_error"] = old.stderr.strip().splitlines()[-1] if old.stderr.strip() else "?"
    result.update(gpu=gpu, dataset=args.dataset, budget_s=args.budget, wall_s=wall_s, eval_wall_s=eval_s,
                  prepare_s=prepare_s)

    print()
    print(f"pretrain target on {gpu}")
    for key in ("device", "attention", "preset", "data", "model", "batch", "checkpoint"):
        print(f"  {key + ':':<18}{result[key]}")
    print(f"  {'val_bpb:':<18}{result['val_bpb']!r} (the evaluation process)")
    if "in_process_val_bpb" in result:
        print(f"  {'old way:':<18}{result['in_process_val_bpb']!r} (in-process, {result['in_process_attention']}, "
              f"compiled; difference {abs(result['val_bpb'] - result['in_process_val_bpb']):.2g})")
    elif "in_process_error" in result:
        print(f"  {'old way:':<18}failed: {result['in_process_error']}")
    print(f"  {'tokens/s:':<18}{result['tokens_per_sec']:,.0f}")
    print(f"  {'mfu_percent:':<18}{result['mfu_percent']:.2f}")
    print(f"  {'peak_vram_mb:':<18}{result['peak_vram_mb']:.1f}")
    print(f"  {'num_steps:':<18}{result['num_steps']:.0f}  ({result['total_tokens_M']:.1f}M tokens)")
    print(f"  {'run:':<18}train {result['training_seconds']:.1f}s, wall {wall_s:.1f}s = budget + {wall_s - args.budget:.1f}s "
          f"(startup {result['startup']}; warmup {result['warmup']}; export and checkpoint {result['export_seconds']:.1f}s)")
    print(f"  {'evaluation:':<18}wall {eval_s:.1f}s; {result['eval_causality']}; {result['eval_eval']}")
    print(f"  {'prepare:':<18}{prepare_s:.1f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    shutil.rmtree(ws, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
