#!/usr/bin/env python3
"""log-experiment.sh's Python half: append one line to the ledger, with nothing but Python 3.8+.

The seed plugin's flags, all of them (log-experiment.sh --help lists them). Where the autoresearch
package is importable it does the work (`autoresearch log-experiment`: the workspace lock `run` and
`experiment` hold, a torn last line set aside). Otherwise, copied into a skill directory on a machine
without the package, this file writes the same lines itself, from the standard library only:
- the config header `{"type","name","metricName","metricUnit","bestDirection"}` (--config);
- a run line `{"run","commit","metric","metrics","status","description","timestamp","segment",
  "confidence","asi"}`, where --run is the next run number, --commit HEAD, --segment the current
  segment and --confidence the seed's MAD rule, when omitted or empty, as harness.commands does;
- each line carries `prev`, the sha256 of the line before it as stored: harness.chain's hash chain,
  so `autoresearch status` and `resume` later read the ledger as intact.
It reads the ledger as harness.ledger folds it (segments start at a config header after runs, a
missing status reads as keep, crash and checks_failed rows carry no result) and appends under an
exclusive flock on the ledger file, read and write in one hold, so two writers never share a run
number. The seed's script writes unparseable JSON when a value is not JSON (`--metric abc`,
`--asi '{bad'`); this one refuses such a call with one line and exit 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time

STATUSES = ("keep", "discard", "crash", "checks_failed")
RESULT_STATUSES = ("keep", "discard")  # the statuses whose metric is a result
MAX_ABS = 1e15  # harness.metrics.MAX_ABS
NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # harness.metrics
METRIC_NAME = re.compile("[A-Za-z0-9_.\u00b5]+")  # pi-autoresearch's set (harness.metrics.METRIC_NAME)
FORBIDDEN = ("__proto__", "constructor", "prototype")
MS_THRESHOLD = 1e11  # harness.ledger: a timestamp above it is in milliseconds


class Refused(Exception):
    """A call that must write nothing; the message is for the user."""


def main(argv: list[str]) -> int:
    if os.environ.get("AUTORESEARCH_STANDALONE") != "1":  # the tests force this file's own writer
        try:
            import orjson  # noqa: F401  (the harness needs it)

            from harness.cli import main as harness_main
        except ImportError:
            pass
        else:
            return harness_main(["log-experiment", *argv])
    args = parser().parse_args(argv)
    try:
        print(append(args))
    except Refused as exc:
        print(f"log-experiment: error: {exc}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="log-experiment.sh", description="Append one experiment (or, with "
                                "--config, the config header) to the ledger, as the seed plugin's script does.")
    p.add_argument("--run", help="run number (default: the next one; a used one is refused)")
    p.add_argument("--commit", help="short commit hash (default: HEAD)")
    p.add_argument("--metric", help="the primary metric's value (finite; crashes log 0)")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--description")
    p.add_argument("--metrics", default="", help="secondary metrics, a JSON object")
    p.add_argument("--segment", help="segment index (default: the current one)")
    p.add_argument("--confidence", help="MAD confidence (default: computed from the ledger)")
    p.add_argument("--asi", default="", help="side information, a JSON object")
    p.add_argument("--file", help="the ledger (default: .auto/log.jsonl in pi's layout, else autoresearch.jsonl)")
    p.add_argument("--config", action="store_true", help="append the config header instead of a run line")
    p.add_argument("--name")
    p.add_argument("--metric-name")
    p.add_argument("--metric-unit", default="")
    p.add_argument("--direction", choices=("lower", "higher"))
    return p


# ----------------------------------------------------------------------------- flags


def number(text: str | None, flag: str) -> float | None:
    """A plain decimal number, finite, |x| < MAX_ABS (harness.metrics.parse_number); None when omitted."""
    if text is None or text == "":
        return None
    if not NUMBER.fullmatch(text.strip()) or not abs(float(text)) < MAX_ABS:
        raise Refused(f"{flag} must be a plain finite number with |x| < {MAX_ABS:g}, not {text!r}")
    return float(text)


def integer(text: str | None, flag: str) -> int | None:
    if text is None or text == "":
        return None
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()):
        raise Refused(f"{flag} must be a whole number >= 0, not {text!r}")
    return int(text)


def json_object(text: str, flag: str) -> dict:
    if text == "":
        return {}
    try:
        obj = json.loads(text, parse_constant=lambda c: _refuse(f"{flag}: {c} is not a JSON number"))
    except ValueError as exc:
        raise Refused(f"{flag} must be a JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise Refused(f"{flag} must be a JSON object, not {type(obj).__name__}")
    return obj


def _refuse(message: str) -> None:
    raise Refused(message)


# ------------------------------------------------------------------- reading the ledger


def default_ledger(root: str) -> str:
    """pi-autoresearch's rule (extensions/pi-autoresearch/paths.ts, as harness.ledger.ledger_path)."""
    auto = os.path.join(root, ".auto")
    current = ("log.jsonl", "prompt.md", "ideas.md", "checks.sh", "measure.sh", "config.json", "hooks")
    if any(os.path.exists(os.path.join(auto, name)) for name in current):
        return os.path.join(auto, "log.jsonl")
    return os.path.join(root, "autoresearch.jsonl")


def _num(x: object) -> float | None:
    return float(x) if type(x) in (int, float) else None  # bool is no number here


def fold(data: bytes) -> dict:
    """What a new line needs from the ledger: the next run number, the current segment (index, direction,
    result values, baseline, best) and the hash the next line's `prev` must be."""
    segments: list[dict] = []
    written = 0
    prev = hashlib.sha256(b"").hexdigest()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        prev = hashlib.sha256(line).hexdigest()
        for m in re.finditer(rb'"run"\s*:\s*(\d{1,18})', line):  # a number in a broken line stays used
            written = max(written, int(m.group(1)))
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if obj.get("type") == "config":
            direction = obj.get("bestDirection", "lower")
            header = {"direction": direction if direction in ("lower", "higher") else "lower", "runs": []}
            if segments and not segments[-1]["runs"]:
                segments[-1] = header
            else:
                segments.append(header)
            continue
        if "run" not in obj or "type" in obj or type(obj["run"]) is not int:
            continue
        if not segments:
            segments.append({"direction": "lower", "runs": []})
        status = obj.get("status") if obj.get("status") in STATUSES else "keep"  # pi's statusFrom
        metric = _num(obj.get("metric", 0))
        value = metric if status in RESULT_STATUSES and metric is not None and abs(metric) < MAX_ABS else None
        segments[-1]["runs"].append((status, value))
    return {"next_run": written + 1, "segment": max(len(segments) - 1, 0),
            "current": segments[-1] if segments else None, "prev": prev}


def _median(xs: list[float]) -> float:
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def confidence_after(current: dict | None, value: float, status: str) -> float | None:
    """The seed's MAD confidence once this run is appended (harness.records.confidence_after): |best kept -
    baseline| / MAD of the segment's results; the baseline is the first result and counts as kept."""
    if status not in RESULT_STATUSES:
        return None
    direction = current["direction"] if current else "lower"
    runs = current["runs"] if current else []
    values = [v for _, v in runs if v is not None]
    kept = [v for s, v in runs if s == "keep" and v is not None]
    pick = min if direction == "lower" else max
    best = pick(kept) if kept else (values[0] if values else None)
    if status == "keep" and (best is None or pick(value, best) == value != best):
        best = value
    values.append(value)
    baseline = values[0]
    if best == baseline or len(values) < 3:
        return None
    mid = _median(values)
    spread = _median([abs(v - mid) for v in values])
    return abs(best - baseline) / spread if spread else None


# ------------------------------------------------------------------------------- writing


def head_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def build(args: argparse.Namespace, state: dict) -> dict:
    if args.config:
        missing = [f for f, v in (("--name", args.name), ("--metric-name", args.metric_name),
                                  ("--direction", args.direction)) if not v]
        if missing:
            raise Refused(f"--config needs {', '.join(missing)} (and --metric-unit, which may be empty)")
        if not METRIC_NAME.fullmatch(args.metric_name) or args.metric_name in FORBIDDEN:
            raise Refused(f"--metric-name {args.metric_name!r}: a METRIC line cannot carry it (names are letters, "
                          "digits, _, . and µ, as pi-autoresearch reads them)")
        return {"type": "config", "name": args.name, "metricName": args.metric_name,
                "metricUnit": args.metric_unit or "", "bestDirection": args.direction}
    for flag, v in (("--metric", args.metric), ("--status", args.status), ("--description", args.description)):
        if v is None:
            raise Refused(f"{flag} is required (or --config, for the config header)")
    metric = number(args.metric, "--metric")
    if metric is None:
        raise Refused("--metric must be a number (crashes log 0)")
    run = integer(args.run, "--run")
    if run is not None and run < state["next_run"]:
        raise Refused(f"run {run} is taken: run numbers are never reused, and the ledger has written up to "
                      f"{state['next_run'] - 1}; omit --run to use {state['next_run']}")
    segment = integer(args.segment, "--segment")
    confidence = number(args.confidence, "--confidence")
    if confidence is None:
        confidence = confidence_after(state["current"], metric, args.status)
    asi = {k: v for k, v in json_object(args.asi, "--asi").items() if v is not None}
    line = {
        "run": run if run is not None else state["next_run"],
        "commit": args.commit or head_commit(),
        "metric": metric,
        "metrics": json_object(args.metrics, "--metrics"),
        "status": args.status,
        "description": args.description,
        "timestamp": int(time.time()),
        "segment": segment if segment is not None else state["segment"],
        "confidence": confidence,
    }
    if asi:  # an empty asi is omitted, as the seed and harness.ledger.encode write it
        line["asi"] = asi
    return line


def append(args: argparse.Namespace) -> str:
    path = args.file or default_ledger(os.getcwd())
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # harness.ledger.append takes the same lock
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        state = fold(data)
        line = build(args, state)
        line["prev"] = state["prev"]
        stored = json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        sep = b"\n" if data and not data.endswith(b"\n") else b""  # never fuse with a torn last line
        out = sep + stored + b"\n"
        if os.write(fd, out) != len(out):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return stored.decode("utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
