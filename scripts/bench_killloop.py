"""The kill loop: SIGKILL the controller at random instants, resume, and check every invariant.

Each round starts `autoresearch run --agent mutate` on a toy workspace whose experiment takes a
few tenths of a second (so kills land in every phase: proposing, committing, running, the
held-out evaluation, appending, reverting), SIGKILLs it after a random delay, then runs
`autoresearch resume` and checks:
- the ledger parses, its chain verifies, run numbers are unique and increasing;
- no run is in flight (`.autoresearch/state.json` gone) and the tree is clean;
- HEAD's files are the best kept run's (the branch holds kept experiments only);
- no process of any run is alive (a scan of /proc for the runner's token variable).
At the end it prints the rounds, the failures of each invariant, and the orphans found.

Run: python scripts/bench_killloop.py [--rounds 200] [--seed 0] [--sandbox auto|checkout|off]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from toy import EVAL, TRAIN, git, make_toy  # noqa: E402

from harness import ledger  # noqa: E402
from harness.procgroup import TOKEN_VAR  # noqa: E402

# the toy evaluation, slowed down so that kills land while the experiment runs; a background child that
# would outlive a careless runner, to count orphans
SLOW_EVAL = EVAL.replace("import importlib.util, math, os, sys\n",
                         "import importlib.util, math, os, sys, subprocess, time\n"
                         "subprocess.Popen(['sleep', '30'])\ntime.sleep(0.4)\n")
# more constants than the toy's three, so that the offline agent never runs out of untried points in 200
# rounds (the evaluation ignores these: changing one is a discard)
TRAIN_WIDE = TRAIN + "".join(f"SPARE_{i} = {v}  # unused by the evaluation\n"
                             for i, v in enumerate([1.0, 0.5, 2.0, 10.0, 0.1, 3.0, 64, 128]))
HELDOUT = "import time\ntime.sleep(0.3)\nprint('METRIC hscore=1.0')\n"


MARK = "KILLLOOP_MARK"  # passed to runs through [session] env: only this benchmark's processes carry it


ORPHAN_GRACE_S = 2.0  # a process still alive this long after the controller's SIGKILL is an orphan


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return f"ppid {ppid}: {cmd[:160]}"
    except OSError:
        return "(gone)"


def orphans(mark: str) -> list[int]:
    """Pids of live processes of this benchmark's runs (its mark and a runner token): all must be gone."""
    found = []
    want = f"{MARK}={mark}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in environ and any(x.startswith(f"{TOKEN_VAR}=".encode()) for x in environ):
            found.append(int(d.name))
    return found


def check(root: Path) -> list[str]:
    problems = []
    data = (root / "autoresearch.jsonl").read_bytes()
    state = ledger.load_state(root / "autoresearch.jsonl")
    chain = getattr(state, "chain", None)
    if chain is not None and not chain.ok:
        problems.append(f"chain: {chain.why}")
    if state.bad_lines:
        problems.append(f"bad lines: {len(state.bad_lines)}")
    nums = [r.run for r in state.runs]
    if nums != sorted(set(nums)):
        problems.append(f"run numbers: {nums}")
    if not data.endswith(b"\n"):
        problems.append("ledger does not end with a newline")
    if (root / ".autoresearch" / "state.json").exists():
        problems.append("state.json left")
    if git(root, "status", "--porcelain"):
        problems.append("tree not clean")
    seg = state.current
    best = seg.best_run if seg else None
    if best is not None:
        at_best = git(root, "show", f"{best.commit}:train.py")
        if (root / "train.py").read_text().strip() != at_best.strip():
            problems.append(f"HEAD's train.py is not the best run's (#{best.run})")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sandbox", default=None, help="the session's sandbox mode (default: as init writes it)")
    ap.add_argument("--max-delay", type=float, default=3.0, help="kill after a uniform delay in [0, this] seconds")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="killloop-"))
    root = make_toy(tmp / "ws", train=TRAIN_WIDE, evaluate=SLOW_EVAL)
    (root / "heldout.py").write_text(HELDOUT)
    text = (root / "autoresearch.toml").read_text()
    text = text.replace("[session]\n", '[session]\nheldout_metric = "hscore"\nheldout_command = "python heldout.py"\n', 1)
    if args.sandbox:
        text = text.replace('sandbox = "auto"', f'sandbox = "{args.sandbox}"')
    text = text.replace("env = []", f'env = ["{MARK}"]')
    (root / "autoresearch.toml").write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "held-out evaluation")
    mark = f"{os.getpid()}-{rng.random()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", MARK: mark}
    cli = [sys.executable, "-m", "harness.cli", "-C", str(root)]
    failures: Counter[str] = Counter()
    orphan_total, t0 = 0, time.monotonic()
    for i in range(args.rounds):
        proc = subprocess.Popen([*cli, "run", "--agent", "mutate", "--max-iterations", "20",
                                 "--max-failure-streak", "1000000"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, args.max_delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + ORPHAN_GRACE_S  # death signals and namespace teardown are asynchronous
        while (left := orphans(mark)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left[:3]:
            print(f"round {i}: orphan {pid}: {describe(pid)}", file=sys.stderr)
        orphan_total += len(left)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        res = subprocess.run([*cli, "resume"], env=env, capture_output=True, text=True)
        problems = check(root) + ([] if res.returncode == 0 else [f"resume exit {res.returncode}: {res.stderr[-300:]}"])
        for p in problems:
            failures[p.split(":")[0]] += 1
            print(f"round {i}: {p}", file=sys.stderr)
        if (i + 1) % 20 == 0:
            n = len(ledger.load_state(root / "autoresearch.jsonl").runs)
            print(f"{i + 1} rounds, {n} runs logged, {sum(failures.values())} invariant failures, "
                  f"{orphan_total} orphans, {time.monotonic() - t0:.0f}s", flush=True)
    runs = ledger.load_state(root / "autoresearch.jsonl").runs
    print(f"rounds: {args.rounds}; runs logged: {len(runs)} ({Counter(r.status for r in runs)})")
    print(f"invariant failures: {sum(failures.values())} {dict(failures)}")
    print(f"orphan processes found after kills: {orphan_total}")
    print(f"workspace: {root}")
    return 1 if failures or orphan_total else 0


if __name__ == "__main__":
    sys.exit(main())
