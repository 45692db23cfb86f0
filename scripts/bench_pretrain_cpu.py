"""CPU benchmark of the pretrain target: a run (train.py) and its evaluation (prepare.py --evaluate), timed apart.

Run: .venv/bin/python scripts/bench_pretrain_cpu.py            (~3-4 minutes on 2 cores)
     .venv/bin/python scripts/bench_pretrain_cpu.py --budgets 15 60 120 --json bench_cpu.json
     .venv/bin/python scripts/bench_pretrain_cpu.py --budgets 60 --compare   (also the old in-process value)

It copies assets/pretrain/ and the kit into a temporary workspace (as `autoresearch init` does), prepares the
offline `local` corpus once (cached in $AUTORESEARCH_CACHE_DIR, default ~/.cache/autoresearch), then for each
budget runs train.py and then the fixed evaluation of its checkpoint, with CUDA hidden, so the numbers are the
CPU preset's even on a GPU machine. It reports what the budget rule and the allowances in target.toml are made
of: the run's wall time beyond its budget (start-up, warm-up, the last step's overshoot, export and checkpoint)
against [session_cpu]'s allowance, and the evaluation's time (which never counts), with its causality probe.
--compare also scores the same weights the way train.py used to, in-process (train.py's GPT from model.pt,
evaluate_bpb), for the old-vs-new line. The longer budget must reach a clearly lower val_bpb: that is the check
that the CPU preset learns.
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
import tomllib

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pretrain")
METRIC = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")

# The old code path, for --compare: the model rebuilt from train.py and scored in the same process.
IN_PROCESS = """
import json, sys, torch
import prepare, train
config = json.load(open(sys.argv[1] + "/config.json"))
model = train.GPT(train.GPTConfig(**config["model"]), train.SDPAAttention())
model.load_state_dict(torch.load(sys.argv[1] + "/model.pt", map_location="cpu", weights_only=True))
tokenizer = prepare.Tokenizer.from_prepared(prepare.load_prepared())
print(repr(prepare.evaluate_bpb(model.eval(), tokenizer, int(sys.argv[2]))))
"""


def run_streaming(cmd: list[str], cwd: str, env: dict, prefix: str) -> tuple[int, str, float]:
    """Run cmd, echoing its output with a prefix as it arrives; return (exit code, full output, wall seconds)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        print(f"{prefix}{line}", end="", flush=True)
    return proc.wait(), "".join(lines), time.time() - t0


def seconds(pattern: str, output: str) -> float:
    found = re.search(pattern, output, re.M)
    return float(found.group(1)) if found else float("nan")


def parse(output: str) -> dict:
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC.match, output.splitlines()) if m}
    for key in ("attention", "preset", "device", "data"):
        found = re.search(rf"^{key}: (.*)$", output, re.M)
        if found:
            metrics[key] = found.group(1)
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 60.0], help="training seconds per run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compare", action="store_true", help="also score the weights in-process, the old way")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    with open(os.path.join(ASSETS, "target.toml"), "rb") as f:
        target = tomllib.load(f)
    allowance = {**target.get("session", {}), **target.get("session_cpu", {})}
    startup_s, frac = float(allowance.get("startup_allowance_s", 60)), float(allowance.get("startup_allowance_frac", 0.25))

    ws = tempfile.mkdtemp(prefix="bench_pretrain_cpu_")
    for name in ("prepare.py", "train.py"):
        shutil.copy(os.path.join(ASSETS, name), ws)
    shutil.copy(os.path.join(os.path.dirname(ASSETS), "arkit.py"), ws)  # the fixed kit prepare.py imports
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "AUTORESEARCH_SEED": str(args.seed), "HF_HUB_OFFLINE": "1"}
    env["AUTORESEARCH_CHECKPOINT"] = os.path.join(ws, "checkpoint")
    for var in ("AUTORESEARCH_DATASET", "AUTORESEARCH_RESULT_FILE"):
        env.pop(var, None)

    code, _, prepare_s = run_streaming([sys.executable, "prepare.py", "--dataset", "local"], ws, env, "[prepare] ")
    if code != 0:
        print("prepare.py failed", file=sys.stderr)
        return 1
    print(f"[prepare] {prepare_s:.1f}s")

    results = []
    for budget in args.budgets:
        env["AUTORESEARCH_TIME_BUDGET"] = str(budget)
        code, out, run_wall = run_streaming([sys.executable, "train.py"], ws, env, f"[{budget:g}s train] ")
        if code != 0:
            print(f"train.py failed with a {budget:g}s budget (exit {code})", file=sys.stderr)
            return 1
        channel = os.path.join(ws, "result.jsonl")  # the evaluation's channel: the value as a float, not printed
        if os.path.exists(channel):
            os.remove(channel)
        code, ev, eval_wall = run_streaming([sys.executable, "prepare.py", "--evaluate"], ws,
                                            {**env, "AUTORESEARCH_RESULT_FILE": channel}, f"[{budget:g}s eval] ")
        if code != 0 or "val_bpb" not in ev:
            print(f"the evaluation failed after a {budget:g}s run (exit {code})", file=sys.stderr)
            return 1
        with open(channel, encoding="utf-8") as f:
            val_bpb = json.loads(f.readline())["value"]
        result = {
            "budget_s": budget, **parse(out), "val_bpb": val_bpb, "run_wall_s": run_wall,
            "startup_s": seconds(r"^startup: ([0-9.]+)s", out), "warmup_s": seconds(r"^warmup: .* in ([0-9.]+)s", out),
            "eval_wall_s": eval_wall, "probe_s": seconds(r"^causality: .*\(([0-9.]+)s\)$", ev),
            "eval_s": seconds(r"^eval: .* tokens in ([0-9.]+)s", ev), "limit_s": budget * (1 + frac) + startup_s,
        }
        if args.compare:
            with open(os.path.join(ws, "checkpoint", "config.json"), encoding="utf-8") as f:
                batch = json.load(f)["eval_batch"]
            old = subprocess.run([sys.executable, "-c", IN_PROCESS, env["AUTORESEARCH_CHECKPOINT"], str(batch)],
                                 cwd=ws, env=env, capture_output=True, text=True, check=True)
            result["in_process_val_bpb"] = float(old.stdout.strip().splitlines()[-1])
        results.append(result)

    cores = os.cpu_count()
    first = results[0]
    print()
    print(f"pretrain target on CPU ({cores} cores), preset {first.get('preset')}, attention {first.get('attention')}")
    print(f"data: {first.get('data')}; prepare {prepare_s:.1f}s")
    print(f"budget rule ([session_cpu]): run wall <= budget * {1 + frac:g} + {startup_s:g}s; the evaluation never counts")
    print(f"{'budget':>7} {'val_bpb':>8} {'tok/s':>7} {'steps':>6} {'train_s':>7} {'run_s':>6} {'over':>5} "
          f"{'limit':>6} {'start':>5} {'warm':>5} {'export':>6} {'eval_s':>6} {'probe':>5} {'score':>5} {'rss_mb':>6}")
    for r in results:
        print(
            f"{r['budget_s']:>6g}s {r['val_bpb']:>8.4f} {r['tokens_per_sec']:>7,.0f} {r['num_steps']:>6.0f} "
            f"{r['training_seconds']:>7.1f} {r['run_wall_s']:>6.1f} {r['run_wall_s'] - r['budget_s']:>5.1f} "
            f"{r['limit_s']:>6.1f} {r['startup_s']:>5.1f} {r['warmup_s']:>5.1f} {r['export_seconds']:>6.1f} "
            f"{r['eval_wall_s']:>6.1f} {r['probe_s']:>5.1f} {r['eval_s']:>5.1f} {r['peak_vram_mb']:>6.0f}"
        )
    print("  over = run wall - budget; eval_s = the evaluation's wall time, of which probe (the causality probe) "
          "and score (_bpb_on_split)")
    verdict = 0
    for r in results:
        if r["run_wall_s"] > r["limit_s"]:
            verdict = 1
            print(f"the {r['budget_s']:g}s run took {r['run_wall_s']:.1f}s: OVER the allowance of {r['limit_s']:.1f}s")
        if "in_process_val_bpb" in r:
            print(f"{r['budget_s']:g}s: val_bpb {r['val_bpb']!r} from the evaluation process, "
                  f"{r['in_process_val_bpb']!r} in-process on the same weights "
                  f"(difference {abs(r['val_bpb'] - r['in_process_val_bpb']):.2g})")
    ordered = sorted(results, key=lambda r: r["budget_s"])
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
            json.dump({"cpu_count": cores, "prepare_s": prepare_s, "results": results}, f, indent=1)
    if args.keep:
        print(f"workspace: {ws}")
    else:
        shutil.rmtree(ws, ignore_errors=True)
    return verdict


if __name__ == "__main__":
    sys.exit(main())
