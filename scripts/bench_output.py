"""Benchmark the controller's memory while a run floods its output.

For each size, a fresh Python process does only this: `runner.run_command` on a child that prints
SIZE MiB of short training-log lines and then its metrics (a `---` summary block and a METRIC line),
with the log capped at 64 MiB. It reports its own peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`; the
child is another process and is not counted), the wall time, the log's size on disk, and whether the
metrics printed at the very end were parsed (`RunResult.metrics`). Goal: controller under 200 MiB RSS.

--redact adds three secret values to mask (the scrubber's cost); --readback measures the old way for
comparison: no cap, then the whole log read back and parsed (`parse_metrics(log.read_text())`).

Run: python scripts/bench_output.py [--sizes 300 1024] [--line-bytes 54] [--cap-mib 64] [--redact] [--readback]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = b"step 01234 | loss 3.141593 | lr 0.0004 | 1,234 tok/s\n"  # 53 bytes, a typical training line
# argv: MiB to print, bytes per line (the typical line, or that many "x" and a newline)
CHILD = f"""\
import sys
mib, width = int(sys.argv[1]), int(sys.argv[2])
line = {LINE!r} if width == len({LINE!r}) else b"x" * (width - 1) + b"\\n"
block = line * (2**20 // width)
w = sys.stdout.buffer.write
for _ in range(mib * 2**20 // len(block)):
    w(block)
w(b"---\\nval_bpb:          0.997900\\npeak_vram_mb:     45060.2\\nMETRIC val_bpb=0.9979\\n")
"""
EXPECTED = {"val_bpb": 0.9979, "peak_vram_mb": 45060.2}
SECRETS = {"sk-ant-0123456789abcdef": "ANTHROPIC_API_KEY", "ghp_abcdefghij0123": "GITHUB_TOKEN",
           "AKIA0123456789ABCDEF": "AWS_ACCESS_KEY_ID"}


def measure(size_mib: int, width: int, cap_mib: int, redact: bool, readback: bool) -> dict[str, object]:
    """In this process (a fresh one): run the flood and report what the controller used."""
    sys.path.insert(0, str(ROOT))
    from harness.metrics import parse_metrics
    from harness.runner import run_command

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run.log"
        t0 = time.monotonic()
        res = run_command(
            f"python -c CHILD {size_mib}", Path(tmp), argv=[sys.executable, "-c", CHILD, str(size_mib), str(width)],
            env={}, timeout_s=600, log_path=log, progress=False,
            log_cap_bytes=None if readback else cap_mib * 2**20, redact=SECRETS if redact else None,
        )
        metrics = parse_metrics(log.read_text(encoding="utf-8", errors="replace")) if readback else res.metrics
        wall_s = time.monotonic() - t0
        log_mib = log.stat().st_size / 2**20
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {
        "printed_mib": size_mib, "controller_peak_rss_mib": round(rss_mib, 1), "wall_s": round(wall_s, 2),
        "throughput_mib_s": round(size_mib / wall_s, 1), "log_mib": round(log_mib, 1),
        "parsed": metrics == EXPECTED, "ok": res.ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1024], help="MiB printed per variant")
    ap.add_argument("--line-bytes", type=int, default=len(LINE), help="bytes per printed line, newline included")
    ap.add_argument("--cap-mib", type=int, default=64, help="log cap")
    ap.add_argument("--redact", action="store_true", help="also mask three secret values")
    ap.add_argument("--readback", action="store_true", help="the old way: no cap, read the log back")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.line_bytes, args.cap_mib, args.redact, args.readback)))
        return
    mode = "read back, uncapped" if args.readback else f"streamed, cap {args.cap_mib} MiB" + (
        ", 3 secrets masked" if args.redact else "")
    print(f"controller-side run_command, lines of {args.line_bytes} bytes, {mode}")
    print(f"{'printed':>9} {'peak RSS':>10} {'wall':>8} {'MiB/s':>7} {'log':>10}  metrics at the end")
    failed = False
    for size in args.sizes:
        flags = ["--redact"] * args.redact + ["--readback"] * args.readback
        proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--line-bytes", str(args.line_bytes),
                               "--cap-mib", str(args.cap_mib), *flags],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{size:>5} MiB  the controller failed: {proc.stderr.strip().splitlines()[-1:]}")
            failed = True
            continue
        r = json.loads(proc.stdout)
        print(f"{size:>5} MiB {r['controller_peak_rss_mib']:>6} MiB {r['wall_s']:>6} s {r['throughput_mib_s']:>7} "
              f"{r['log_mib']:>6} MiB  {'parsed' if r['parsed'] else 'MISSING'}")
        failed |= not r["parsed"] or not r["ok"] or r["controller_peak_rss_mib"] >= 200
        failed |= not args.readback and r["log_mib"] > args.cap_mib + 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
