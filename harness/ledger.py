"""The experiment ledger: `autoresearch.jsonl`, append-only, the single source of truth.

Writing: one JSON object per line, appended with a single `write` + `fsync` under an
exclusive lock, never rewritten; each line carries `prev`, the hash of the line before it
(harness.chain). Reading: `read_ledger` parses lines (bad or torn lines are reported, never
raised) and verifies the chain in the same pass; `fold` turns entries into state (segments,
baseline, best, counts) as a pure function. Run numbers only go up: `next_run` exceeds every
run number in the file, including one inside a line that no longer parses.

Format (README "The ledger format"; pi-autoresearch's, https://github.com/davebcn87/pi-autoresearch):
- config header `{"type":"config","name","metricName","metricUnit","bestDirection"}`; a
  config line after at least one run starts a new segment;
- run line `{"run","commit","metric","metrics","status","description","timestamp",
  "segment","confidence","asi"}` plus our fields `duration_s`, `diff`, `agent`, ...;
- `{"type":"reseal","broken_at","breaks","why","timestamp"}`: the user accepted a broken chain
  (`autoresearch resume --accept-ledger`);
- `{"type":"config_change","changes":{key:[old,new]},"how","commit","timestamp"}`: autoresearch.toml
  changed (`autoresearch config`, or a hand edit committed when `run` starts); a change of what the
  metric means is a config header instead (a new segment) carrying the same object as `config_change`;
- anything else (hook lines, unknown types, lines without `run`) is skipped.
`prev` is one more field on every line we write; pi-autoresearch ignores fields it does not know.
Crash rows carry `metric: 0` like the seed's and pi-autoresearch's logs; readers here never
treat a crash or a checks_failed row's metric as a result (see `RunRecord.value`).
"""

from __future__ import annotations

import fcntl
import gc
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import orjson

from harness.chain import EMPTY, GENESIS, ChainReport, ChainWalker, line_hash, tail_hash
from harness.chain import Break as Break  # re-exported: readers of the ledger see the chain through it
from harness.chain import reseal_line as reseal_line
from harness.metrics import MAX_ABS
from harness.stats import Direction, best_of, mad_confidence

Status = Literal["keep", "discard", "crash", "checks_failed"]
STATUSES: tuple[Status, ...] = get_args(Status)
LEDGER_NAME = "autoresearch.jsonl"
PI_LEDGER = Path(".auto") / "log.jsonl"  # pi-autoresearch >= 1.6 layout
# pi's session files in its current layout (pi: extensions/pi-autoresearch/paths.ts, SESSION_FILE_NAMES and
# currentLayoutExists), plus its hooks directory: any one of them puts a workspace in the `.auto/` layout.
PI_LAYOUT = ("log.jsonl", "prompt.md", "ideas.md", "checks.sh", "measure.sh", "config.json", "hooks")
_MS_THRESHOLD = 1e11  # seconds since 1970 pass this in the year 5138; ms passed it in 1973


def pi_layout(root: Path) -> bool:
    """Whether pi-autoresearch would use its `.auto/` layout here: any of its current session files exists."""
    return any((root / ".auto" / name).exists() for name in PI_LAYOUT)


def ledger_path(root: Path) -> Path:
    """Where the workspace's ledger lives, by pi-autoresearch's rule so both tools read the same file.

    pi (extensions/pi-autoresearch/paths.ts, `sessionFilePath`): "If any current `.auto/` session artifact
    exists, stay in the current layout for every file and ignore stale legacy peers. Fall back to a legacy
    flat file only when no current layout exists." So with `.auto/` in use its `log.jsonl` is the ledger,
    even beside a flat `autoresearch.jsonl`; otherwise the flat file, which is also where we, the seed's
    plugin and codex-autoresearch start a new session (pi would start `.auto/log.jsonl`).
    """
    return root / PI_LEDGER if pi_layout(root) else root / LEDGER_NAME


def ignored_peer(root: Path) -> Path | None:
    """The flat `autoresearch.jsonl` that pi's rule leaves unread beside an `.auto/` layout, if there is one."""
    flat = root / LEDGER_NAME
    return flat if pi_layout(root) and flat.exists() else None


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SessionHeader:
    name: str
    metric_name: str
    metric_unit: str
    direction: Direction
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class RunRecord(NamedTuple):
    """One run line. A NamedTuple rather than a frozen dataclass: equally immutable, and about
    six times cheaper to build, which is most of the cost of reading a 100,000-line ledger."""

    run: int
    commit: str
    metric: float  # as written; 0 for crashes (seed compatibility): use `value`
    metrics: dict[str, float]
    status: Status
    description: str
    timestamp: float  # seconds since the epoch (ms inputs are converted)
    segment: int  # position-derived: the count of config headers after results
    confidence: float | None
    asi: dict[str, Any]
    duration_s: float | None = None
    diff: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None
    lineno: int = 0
    raw: dict[str, Any] = {}  # noqa: RUF012 - never mutated; the decoded line

    @property
    def n_samples(self) -> int:
        """How many runs (seeds) the metric is the mean of: 1 unless calibrated or confirmed."""
        samples = self.raw.get("samples")
        return len(samples) if isinstance(samples, list) and samples else 1

    @property
    def value(self) -> float | None:
        """The primary metric as a result, or None where the run produced no valid result."""
        if self.status in ("crash", "checks_failed"):
            return None
        return self.metric if math.isfinite(self.metric) and abs(self.metric) < MAX_ABS else None


@dataclass(frozen=True)
class BadLine:
    lineno: int
    reason: str
    text: str  # at most 200 characters of the line
    torn: bool  # the last line, without a trailing newline: a write cut short
    run: int | None = None  # the largest `"run": N` in the text: a run number that must never be reused


class NoteRecord(NamedTuple):
    """An agent's update of the session notes (`{"type":"learnings",...}`): no experiment, but it
    cost tokens, so the fold counts its cost."""

    after_run: Any
    agent: dict[str, Any] | None
    raw: dict[str, Any]


class Calibration(NamedTuple):
    """The noise floor of a segment: the baseline run n times with different seeds
    (`{"type":"calibration","n","seeds","values","median","sigma","method"}`)."""

    sigma: float  # 1.4826 * MAD of the values: a robust estimate of one run's standard deviation
    n: int
    raw: dict[str, Any]


class ConfigEvent(NamedTuple):
    """A committed change of autoresearch.toml: a `config_change` line, or a config header's `config_change`
    (then the change altered what the metric means and started a new segment)."""

    changes: dict[str, Any]  # key -> [old, new]
    how: str  # "config" (`autoresearch config KEY VALUE`) or "hand edit" (found and committed by run/experiment)
    commit: str  # the config commit
    timestamp: float
    new_segment: bool
    segment: int = 0  # set by the fold: the segment the change leads into
    raw: dict[str, Any] = {}  # noqa: RUF012 - never mutated


Entry = SessionHeader | RunRecord | NoteRecord | Calibration | ConfigEvent


def _config_event(payload: Any, new_segment: bool) -> ConfigEvent | None:
    if not isinstance(payload, dict):
        return None
    changed = payload.get("changes")
    changed = {str(k): v for k, v in changed.items() if isinstance(v, list) and len(v) == 2} \
        if isinstance(changed, dict) else {}  # key -> [old, new]; anything else is not ours to show
    return ConfigEvent(changes=changed, how=str(payload.get("how", "")),
                       commit=str(payload.get("commit", "")), timestamp=_num(payload.get("timestamp")) or 0.0,
                       new_segment=new_segment, raw=payload)


def _num(x: Any) -> float | None:
    t = type(x)  # exact types: bool is an int subclass and must not count as a number
    if t is float:
        return x
    if t is int:
        return float(x)
    return None


def parse_entry(obj: Any, lineno: int = 0) -> Entry | None:
    """One decoded JSON line -> entry, None when it is not ours to read (skipped).

    Raises ValueError for a line that claims to be a run line but is malformed.
    """
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("type") == "config":
        direction = obj.get("bestDirection", "lower")
        if direction not in ("lower", "higher"):
            raise ValueError(f"bestDirection must be lower or higher, not {direction!r}")
        return SessionHeader(
            name=str(obj.get("name", "")),
            metric_name=str(obj.get("metricName", "metric")),
            metric_unit=str(obj.get("metricUnit", "")),
            direction=direction,
            raw=obj,
        )
    if obj.get("type") == "calibration":
        sigma = _num(obj.get("sigma"))
        if sigma is None or sigma < 0:
            raise ValueError(f"calibration sigma must be a number >= 0, not {obj.get('sigma')!r}")
        return Calibration(sigma=sigma, n=int(obj.get("n") or 0), raw=obj)
    if obj.get("type") == "config_change":
        return _config_event(obj, new_segment=False)
    if obj.get("type") == "learnings":
        agent = obj.get("agent")
        return NoteRecord(after_run=obj.get("after_run"), agent=agent if isinstance(agent, dict) else None, raw=obj)
    if "run" not in obj or "type" in obj:  # hook lines, other tools' records
        return None
    run = obj["run"]
    if isinstance(run, bool) or not isinstance(run, int):
        raise ValueError(f"run must be an integer, not {run!r}")
    metric = _num(obj.get("metric", 0))
    if metric is None and obj.get("metric") is not None:
        raise ValueError(f"metric must be a number, not {obj.get('metric')!r}")
    raw_status = obj.get("status")
    # pi-autoresearch's statusFrom: a missing/unknown status reads as keep
    status: Status = raw_status if raw_status in STATUSES else "keep"
    metrics = obj.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError("metrics must be an object")
    ts = _num(obj.get("timestamp")) or 0.0
    if ts > _MS_THRESHOLD:
        ts /= 1000.0
    asi = obj.get("asi") or {}
    return RunRecord(
        run=run,
        commit=str(obj.get("commit", "")),
        metric=metric if metric is not None else 0.0,
        metrics=metrics if all(type(v) is float and -MAX_ABS < v < MAX_ABS for v in metrics.values())
        else {k: n for k, v in metrics.items() if (n := _num(v)) is not None and -MAX_ABS < n < MAX_ABS},
        status=status,
        description=str(obj.get("description", "")),
        timestamp=ts,
        segment=0,  # set by the fold
        confidence=_num(obj.get("confidence")),
        asi=asi if isinstance(asi, dict) else {"note": asi},
        duration_s=_num(obj.get("duration_s")),
        diff=obj.get("diff") if isinstance(obj.get("diff"), dict) else None,
        agent=obj.get("agent") if isinstance(obj.get("agent"), dict) else None,
        lineno=lineno,
        raw=obj,
    )


@dataclass(frozen=True)
class LedgerFile:
    entries: tuple[Entry, ...]
    bad_lines: tuple[BadLine, ...]
    torn_offset: int | None  # byte offset where a torn last line starts, if any
    chain: ChainReport = EMPTY  # the hash chain, verified in the same pass


# A run number in a line that does not parse: `{"run": 7, "metric": 0.9, "sta` still used 7.
_RUN_NUMBER = re.compile(rb'"run"\s*:\s*(\d{1,18})')


def _run_in(line: bytes) -> int | None:
    return max((int(m) for m in _RUN_NUMBER.findall(line)), default=None)


def parse_lines(data: bytes) -> LedgerFile:
    """Parse a ledger's bytes and verify its chain. Never raises for content; bad lines are collected.

    The cyclic garbage collector is paused meanwhile: a long ledger allocates hundreds of
    thousands of small acyclic dicts, and the collector's passes over them cost more than
    the parsing itself (measured: about half the time of a 100,000-line read).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_lines(data)
    finally:
        if was_enabled:
            gc.enable()


def _parse_lines(data: bytes) -> LedgerFile:
    entries: list[Entry] = []
    bad: list[BadLine] = []
    torn_offset: int | None = None
    chain = ChainWalker()
    offset = 0
    lines = data.split(b"\n")
    last = len(lines) - 1  # after a final newline the last chunk is b""
    for i, line in enumerate(lines):
        start = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            entry = parse_entry(obj, lineno=i + 1)
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            torn = i == last  # no newline after it: the write was cut short
            reason = str(exc).splitlines()[0][:200]
            if torn:
                torn_offset = start  # set aside by recovery, not a break of the chain
            else:
                chain.bad(i + 1, line, reason)
            text = line[:200].decode("utf-8", errors="replace")
            bad.append(BadLine(lineno=i + 1, reason=reason, text=text, torn=torn, run=_run_in(line)))
            continue
        chain.good(i + 1, line, obj)
        if entry is not None:
            entries.append(entry)
    return LedgerFile(tuple(entries), tuple(bad), torn_offset, chain.report())


def verify_chain(data: bytes) -> ChainReport:
    """The hash chain of a ledger's bytes (harness.chain): intact, or where and why it breaks."""
    return parse_lines(data).chain


def read_ledger(path: Path) -> LedgerFile:
    """Read and parse a ledger file; a missing file is an empty ledger."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LedgerFile((), (), None)
    return parse_lines(data)


# ------------------------------------------------------------------------------ fold


@dataclass(frozen=True)
class Segment:
    index: int
    header: SessionHeader
    runs: tuple[RunRecord, ...]
    calibration: Calibration | None = None

    @property
    def direction(self) -> Direction:
        return self.header.direction

    @property
    def imported(self) -> bool:
        """Its runs came from another tool's file (`import --tsv`): measured elsewhere, perhaps on other hardware."""
        return bool(self.header.raw.get("imported_from"))

    @property
    def baseline_run(self) -> RunRecord | None:
        """The first run of the segment with a valid result (the loop's baseline is a keep)."""
        return next((r for r in self.runs if r.value is not None), None)

    @property
    def baseline(self) -> float | None:
        b = self.baseline_run
        return b.value if b else None

    @property
    def kept(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.runs if r.status == "keep" and r.value is not None)

    @property
    def best_run(self) -> RunRecord | None:
        kept = self.kept or ((self.baseline_run,) if self.baseline_run else ())
        best = best_of([r.value for r in kept if r.value is not None], self.direction)
        return next((r for r in kept if r.value == best), None)

    @property
    def best(self) -> float | None:
        b = self.best_run
        return b.value if b else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {s: 0 for s in STATUSES}
        for r in self.runs:
            out[r.status] += 1
        return out

    @property
    def confidence(self) -> float | None:
        values = [r.value for r in self.runs if r.value is not None]
        return mad_confidence(values, self.baseline, self.best)

    def failure_streak(self) -> int:
        """Trailing run of non-keep results (discard, crash, checks_failed) in this segment."""
        n = 0
        for r in reversed(self.runs):
            if r.status == "keep":
                break
            n += 1
        return n


_DEFAULT_HEADER = SessionHeader(name="", metric_name="metric", metric_unit="", direction="lower")


@dataclass(frozen=True)
class LedgerState:
    segments: tuple[Segment, ...]
    bad_lines: tuple[BadLine, ...] = ()
    notes: tuple[NoteRecord, ...] = ()
    chain: ChainReport = EMPTY  # from load_state; a fold of bare entries has none to report
    config_changes: tuple[ConfigEvent, ...] = ()

    @property
    def cost_usd(self) -> float:
        """The agents' estimated spend over the whole ledger: experiments and notes updates."""
        return sum(_cost(r.agent) for r in self.runs) + sum(_cost(n.agent) for n in self.notes)

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    @property
    def runs(self) -> tuple[RunRecord, ...]:
        return tuple(r for s in self.segments for r in s.runs)

    @property
    def next_run(self) -> int:
        """One more than every run number ever written: a run line's, or one inside a line that no
        longer parses (reusing it would give two experiments one number, and a lost best a successor)."""
        written = max((r.run for r in self.runs), default=0)
        unreadable = max((b.run for b in self.bad_lines if b.run is not None), default=0)
        return max(written, unreadable) + 1

    def last_run(self) -> RunRecord | None:
        for s in reversed(self.segments):
            if s.runs:
                return s.runs[-1]
        return None

    def find(self, run: int) -> RunRecord | None:
        return next((r for r in self.runs if r.run == run), None)


def fold(entries: Iterable[Entry], bad_lines: tuple[BadLine, ...] = (), chain: ChainReport = EMPTY) -> LedgerState:
    """Pure fold of ledger entries into segments.

    A config header before any run (re)defines the current segment's header; a header
    after runs starts a new segment. Runs before any header belong to an implicit
    segment 0 with a lower-is-better default header.
    """
    segments: list[tuple[SessionHeader, list[RunRecord]]] = []
    calibrations: dict[int, Calibration] = {}
    notes: list[NoteRecord] = []
    changes: list[ConfigEvent] = []
    for entry in entries:
        if isinstance(entry, NoteRecord):
            notes.append(entry)
        elif isinstance(entry, ConfigEvent):
            changes.append(entry._replace(segment=max(len(segments) - 1, 0)))
        elif isinstance(entry, Calibration):
            if not segments:
                segments.append((_DEFAULT_HEADER, []))
            calibrations[len(segments) - 1] = entry  # the latest calibration of a segment counts
        elif isinstance(entry, SessionHeader):
            if segments and not segments[-1][1]:
                segments[-1] = (entry, segments[-1][1])
            else:
                segments.append((entry, []))
            event = _config_event(entry.raw.get("config_change"), new_segment=True)
            if event is not None:
                changes.append(event._replace(segment=len(segments) - 1))
        else:
            if not segments:
                segments.append((_DEFAULT_HEADER, []))
            idx = len(segments) - 1
            segments[-1][1].append(_with_segment(entry, idx))
    return LedgerState(
        segments=tuple(Segment(i, h, tuple(runs), calibrations.get(i)) for i, (h, runs) in enumerate(segments)),
        bad_lines=bad_lines,
        notes=tuple(notes),
        chain=chain,
        config_changes=tuple(changes),
    )


def _cost(agent: dict[str, Any] | None) -> float:
    v = (agent or {}).get("cost_usd")
    return float(v) if type(v) is int or type(v) is float else 0.0


def _with_segment(r: RunRecord, segment: int) -> RunRecord:
    if r.segment == segment:
        return r
    return r._replace(segment=segment)


def load_state(path: Path) -> LedgerState:
    lf = read_ledger(path)
    return fold(lf.entries, lf.bad_lines, lf.chain)


def chain_problem(state: LedgerState) -> str | None:
    """Why the loop must not run on this ledger, in one sentence naming the line; None when it may.

    A broken chain means some line is not what the controller wrote, and every keep is decided
    against the best the ledger holds: the user looks first, then restores the line or accepts
    the ledger as it stands (a reseal line records that, and the breaks stay visible in `status`).
    """
    c = state.chain
    if c.ok:
        return None
    more = f" ({len(c.breaks) - 1} more break{'s' if len(c.breaks) > 2 else ''} after it)" if len(c.breaks) > 1 else ""
    return (f"the ledger's hash chain is broken at line {c.first_break}{more}: {c.why}. Its results cannot be "
            "trusted as written: `autoresearch resume` shows the break; restore that line if you can, or accept "
            "the ledger as it stands with `autoresearch resume --accept-ledger`, then run again")


# ----------------------------------------------------------------------------- write


def encode(obj: dict[str, Any]) -> bytes:
    """One ledger line. Keys with value None inside `asi` are dropped; an empty asi is omitted."""
    if "asi" in obj:
        asi = obj["asi"]
        if isinstance(asi, dict):
            asi = {k: v for k, v in asi.items() if v is not None}
        obj = {k: (asi if k == "asi" else v) for k, v in obj.items() if k != "asi" or asi}
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def chained(obj: dict[str, Any], prev: str) -> bytes:
    """One ledger line that follows the line whose hash is `prev` (our `prev` replaces any given)."""
    return encode({**{k: v for k, v in obj.items() if k != "prev"}, "prev": prev})


def chain(objs: Iterable[dict[str, Any]], prev: str = GENESIS) -> bytes:
    """Lines for many objects at once, each following the one before, the first following `prev`
    (`head_hash` of an existing file): how tests and benchmarks build long chained ledgers."""
    out = []
    for obj in objs:
        line = chained(obj, prev)
        prev = line_hash(line[:-1])
        out.append(line)
    return b"".join(out)


def head_hash(path: Path) -> str:
    """The `prev` the next line appended to `path` gets (GENESIS for a missing or empty file)."""
    try:
        with open(path, "rb") as f:
            return tail_hash(f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        return GENESIS


def append(path: Path, obj: dict[str, Any]) -> bytes:
    """Append one line atomically: exclusive lock, one write, fsync. Returns the line as stored
    (without its newline).

    The line's `prev` is the hash of the file's last line, read from its tail under the lock, so
    concurrent writers chain in the order they write and the cost does not grow with the file.
    If the file does not end with a newline (a torn write nobody has set aside yet), a newline
    is written first so the new line never fuses with the torn one: the torn text then reads as
    a bad line, reported rather than lost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        prev, sep = GENESIS, b""
        if size:
            with open(path, "rb") as f:
                prev = tail_hash(f, size)
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    sep = b"\n"
        stored = chained(obj, prev)
        line = sep + stored
        written = os.write(fd, line)
        if written != len(line):  # a short write on a regular file means a full disk
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return stored[:-1]


def set_aside_torn_tail(path: Path, aside_dir: Path, stamp: str) -> Path | None:
    """Move a torn last line out of the ledger into `aside_dir`; returns where it went.

    This is the one place the ledger is shortened: only the bytes of an unterminated,
    unparseable last line, after they are safely written elsewhere. The file is read under
    the same lock `append` takes, so a line appended meanwhile is never cut off.
    """
    if not path.exists():
        return None
    with open(path, "rb+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            data = f.read()
            torn_offset = parse_lines(data).torn_offset
            if torn_offset is None:
                return None
            aside_dir.mkdir(parents=True, exist_ok=True)
            dest = aside_dir / f"torn-line-{stamp}.jsonl"
            dest.write_bytes(data[torn_offset:])
            with open(dest, "rb+") as g:
                os.fsync(g.fileno())
            f.truncate(torn_offset)
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return dest


def iter_runs(state: LedgerState, *, segment: int | None = None, status: str | None = None) -> Iterator[RunRecord]:
    for r in state.runs:
        if segment is not None and r.segment != segment:
            continue
        if status is not None and r.status != status:
            continue
        yield r


def header_line(name: str, metric_name: str, metric_unit: str, direction: Direction, **extra: Any) -> dict[str, Any]:
    return {
        "type": "config",
        "name": name,
        "metricName": metric_name,
        "metricUnit": metric_unit,
        "bestDirection": direction,
        **extra,
    }


# Fields of a config header that say where the session's metric comes from (the target, its kit, the harness):
# a new segment started by a config change, or to measure an imported session again, carries them over.
_NOT_CARRIED = frozenset({"type", "name", "metricName", "metricUnit", "bestDirection", "prev", "config_change",
                          "imported_from", "reason", "time_budget_s"})


def carried(header: SessionHeader | None) -> dict[str, Any]:
    """The provenance fields of `header` that a following segment's header repeats."""
    return {k: v for k, v in (header.raw if header else {}).items() if k not in _NOT_CARRIED}

