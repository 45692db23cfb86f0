"""The dpo target's CPU preset, measured: the chain pretrain -> sft -> dpo on our own small base, with the
accuracy before and after each post-training stage, the pairs by type and the rollouts' samples/s.

Everything runs as the harness would run it (each step a process of its own in a workspace laid out as init
lays it out, without the sandbox), in a private cache under WORK; a stage whose output is already there is
reused, so a second call only reruns DPO (e.g. with other constants):

    .venv/bin/python scripts/bench_dpo_cpu.py WORK                       # 60 s pretrain, 90 s sft, 90 s dpo
    .venv/bin/python scripts/bench_dpo_cpu.py WORK --set LR=3e-4 --set BETA=0.3,LR=1e-3 --seeds 1,2
    .venv/bin/python scripts/bench_dpo_cpu.py WORK --sft-data offline-math:levels=1-2 --data offline-math:levels=1-2

The sft base is made as `init --base <sft session>` makes it: the sft run's adapter merged into the weights
(arbase.load_adapted), saved as a base of ours and installed in the cache by its fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
METRIC = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)
KIT = {"sft": ("arkit.py", "arbase.py", "armath.py", "arpost.py"),
       "dpo": ("arkit.py", "arbase.py", "armath.py", "arpost.py", "arsample.py", "arpairs.py")}
MERGE = """
import sys, torch, arbase
model = arbase.load_adapted(arbase.load_base("."), sys.argv[1])
torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""


def py(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    t0 = time.time()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} in {cwd} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    print(f"  {' '.join(args)[:80]}: {time.time() - t0:.1f}s", flush=True)
    return done


def metrics(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in METRIC.findall(text)}


def base_json(directory: Path, name: str, origin: dict) -> dict:
    """base.json for a base directory of ours, as harness/bases.py writes it (sha256 of every file)."""
    files = {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "base.json"}
    fingerprint = hashlib.sha256("".join(f"{r}\0{files[r]}\n" for r in sorted(files)).encode()).hexdigest()
    info = {"format": 1, "kind": "ours", "spec": str(directory), "name": name, "origin": origin, "files": files,
            "fingerprint": fingerprint, "model": {}}
    (directory / "base.json").write_text(json.dumps(info, indent=1))
    return info


def install(directory: Path, cache: Path) -> dict:
    info = json.loads((directory / "base.json").read_text())
    rel = f"bases/{info['fingerprint'][:16]}"
    if not (cache / rel).exists():
        shutil.copytree(directory, cache / rel)
    return {**info, "dir": rel}


def workspace(target: str, ws: Path, base_dir: Path, info: dict) -> Path:
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    for name in ("prepare.py", "train.py"):
        shutil.copy(ASSETS / target / name, ws / name)
    for name in KIT[target]:
        shutil.copy(ASSETS / name, ws / name)
    shutil.copy(base_dir / "base_model.py", ws / "base_model.py")
    (ws / "base.json").write_text(json.dumps(info))
    return ws


def rewrite(source: str, assignments: dict[str, str]) -> str:
    for name, value in assignments.items():
        pattern = re.compile(rf"^({name}\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.M)
        if not pattern.search(source):
            sys.exit(f"error: train.py has no constant {name}")
        source = pattern.sub(lambda m, v=value: f"{m.group(1)}{v}{m.group(3)}", source, count=1)
    return source


def chain(work: Path, env: dict, args) -> tuple[Path, Path]:
    """The sft base (a directory of ours) and the dpo workspace on it, made once."""
    cache = Path(env["AUTORESEARCH_CACHE_DIR"])
    pre_ckpt = work / "pre-ckpt"
    if not (pre_ckpt / "model.pt").exists():
        print(f"pretrain ({args.pretrain_budget:g} s):", flush=True)
        ws = work / "pre"
        ws.mkdir(parents=True, exist_ok=True)
        for name in ("prepare.py", "train.py"):
            shutil.copy(ASSETS / "pretrain" / name, ws / name)
        shutil.copy(ASSETS / "arkit.py", ws / "arkit.py")
        py(ws, env, "prepare.py")
        py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": str(args.pretrain_budget), "AUTORESEARCH_CHECKPOINT": str(pre_ckpt)},
           "train.py")
    pre_base = work / "pre-base"
    if not (pre_base / "base.json").exists():
        (pre_base / "tokenizer").mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "config.json"):
            shutil.copy(pre_ckpt / name, pre_base / name)
        shutil.copy(pre_ckpt / "train.py", pre_base / "base_model.py")
        tokenizer = next(cache.glob("pretrain/*/tokenizer"))
        for name in ("tokenizer.tiktoken", "tokenizer.json"):
            shutil.copy(tokenizer / name, pre_base / "tokenizer" / name)
        base_json(pre_base, "pre", {"type": "checkpoint", "path": str(pre_ckpt)})
    sft_base = work / "sft-base"
    if not (sft_base / "base.json").exists():
        print(f"sft ({args.sft_budget:g} s on {args.sft_data}):", flush=True)
        ws = workspace("sft", work / "sft", pre_base, install(pre_base, cache))
        py(ws, env, "prepare.py", "--data", args.sft_data)
        ckpt = work / "sft-ckpt"
        py(ws, {**env, "AUTORESEARCH_TIME_BUDGET": str(args.sft_budget), "AUTORESEARCH_CHECKPOINT": str(ckpt)},
           "train.py")
        m = metrics(py(ws, env, "prepare.py", "--evaluate", str(ckpt)).stdout)
        print(f"  sft: val_accuracy {m['base_accuracy']:.3f} -> {m['val_accuracy']:.3f} on {args.sft_data}", flush=True)
        tmp = work / "sft-base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(pre_base, tmp)
        (tmp / "base.json").unlink()
        py(ws, env, "-c", MERGE, str(ckpt), str(tmp / "model.pt"))
        base_json(tmp, "sft", {"type": "test-sft", "path": str(ckpt)})
        tmp.rename(sft_base)
    dpo = work / f"dpo-{hashlib.sha256(' '.join(args.prepare).encode() + args.data.encode()).hexdigest()[:8]}"
    if not (dpo / "prepared.txt").exists():
        print(f"dpo prepare ({args.data} {' '.join(args.prepare)}):", flush=True)
        ws = workspace("dpo", dpo, sft_base, install(sft_base, cache))
        out = py(ws, env, "prepare.py", "--data", args.data, *args.prepare).stdout
        (dpo / "prepared.txt").write_text(out)
    print("".join(f"  | {line}\n" for line in (dpo / "prepared.txt").read_text().splitlines()
                  if line.lstrip().startswith(("pairs:", "base on", "Pairs:", "Rollouts:"))), flush=True)
    return sft_base, dpo


def run_dpo(ws: Path, env: dict, budget: float, assignments: dict[str, str], seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        copy = Path(tmp) / "ws"
        shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("__pycache__"))
        # the current assets/dpo/train.py (the workspace's may predate an edit), with the configuration's constants
        (copy / "train.py").write_text(rewrite((ASSETS / "dpo" / "train.py").read_text(), assignments))
        ckpt = Path(tmp) / "ckpt"
        run_env = {**env, "AUTORESEARCH_TIME_BUDGET": str(budget), "AUTORESEARCH_SEED": str(seed),
                   "AUTORESEARCH_CHECKPOINT": str(ckpt)}
        t0 = time.time()
        trained = py(copy, run_env, "train.py")
        wall = time.time() - t0
        t1 = time.time()
        evaluated = py(copy, run_env, "prepare.py", "--evaluate", str(ckpt))
        return {**metrics(trained.stdout + evaluated.stdout), "wall_s": wall, "eval_s": time.time() - t1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a directory for the chain's workspaces and cache (reused)")
    parser.add_argument("--pretrain-budget", type=float, default=60.0)
    parser.add_argument("--sft-budget", type=float, default=90.0)
    parser.add_argument("--sft-data", default="offline-math:levels=1")
    parser.add_argument("--data", default="offline-math:levels=1-2", help="the dpo session's data")
    parser.add_argument("--prepare", nargs="*", default=[], help="more dpo prepare.py flags (--k 8 ...)")
    parser.add_argument("--budget", type=float, default=90.0, help="dpo training seconds (default 90)")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE[,NAME=VALUE...]: one configuration")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every process (default 1)")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.threads),
           "AUTORESEARCH_CACHE_DIR": str(args.work / "cache"), "HF_HUB_OFFLINE": "1"}
    for var in ("AUTORESEARCH_RESULT_FILE", "AUTORESEARCH_CHECKPOINT", "AUTORESEARCH_DATA"):
        env.pop(var, None)
    _, ws = chain(args.work, env, args)
    configs = [dict(kv.split("=", 1) for kv in s.split(",")) for s in args.set] or [{}]
    print(f"{'config':<32} {'seed':>4} {'base':>6} {'after':>6} {'hpref':>6} {'first':>7} {'loss':>6} {'pacc':>5} "
          f"{'margin':>7} {'steps':>5} {'skip':>4} {'run s':>6} {'eval s':>6}")
    for config in configs:
        afters = []
        for seed in (int(s) for s in args.seeds.split(",")):
            m = run_dpo(ws, env, args.budget, config, seed)
            afters.append(m.get("val_accuracy", float("nan")))
            label = ",".join(f"{k}={v}" for k, v in config.items()) or "(train.py as is)"
            print(f"{label:<32} {seed:>4} {m.get('base_accuracy', float('nan')):>6.3f} "
                  f"{m.get('val_accuracy', float('nan')):>6.3f} {m.get('heldout_pref_accuracy', float('nan')):>6.3f} "
                  f"{m.get('first_loss', float('nan')):>7.4f} {m.get('train_loss', float('nan')):>6.3f} "
                  f"{m.get('pref_accuracy', float('nan')):>5.2f} {m.get('margin', float('nan')):>7.3f} "
                  f"{int(m.get('num_steps', 0)):>5} {int(m.get('skipped_steps', 0)):>4} {m['wall_s']:>6.1f} "
                  f"{m['eval_s']:>6.1f}", flush=True)
        if len(afters) > 1:
            print(f"{'':<32} mean after {sum(afters) / len(afters):.3f}, min {min(afters):.3f} over "
                  f"{len(afters)} seeds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
