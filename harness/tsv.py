"""karpathy's results.tsv both ways: `export` writes it for his analysis notebook, `import`
turns one into ledger lines.

The notebook (karpathy/autoresearch analysis.ipynb) reads columns by name with pandas, takes
row 0 as the baseline and coerces the numbers (`pd.to_numeric(errors="coerce")`). So export
writes each segment's baseline first, and import reads what the notebook reads: columns by
name, extra columns allowed (kept in the run's asi as `tsv_columns`), crash rows with any
value (empty, `nan`, `-`, 0.000000) in the numeric columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any, NamedTuple, cast

from harness.ledger import RunRecord, Status, header_line
from harness.points import clean_run
from harness.records import Standing, run_line
from harness.stats import Direction

TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
_KNOWN = frozenset(TSV_COLUMNS)


class TSVError(ValueError):
    """results.tsv cannot be read; the message names the line."""


class Row(NamedTuple):
    """One results.tsv row as import reads it."""

    commit: str
    value: float | None  # None for a crash row
    memory_gb: float | None  # None where the cell is not a number
    status: str  # keep, discard or crash
    description: str
    extra: dict[str, str]  # the other columns' non-empty cells, by header name


def _tsv_field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def memory_gb(r: RunRecord) -> float:
    """karpathy's memory_gb: peak_vram_mb / 1024; peak_rss_mb where no VRAM was measured."""
    mb = r.metrics.get("peak_vram_mb", r.metrics.get("peak_rss_mb"))
    return 0.0 if mb is None or not math.isfinite(mb) else mb / 1024


def baseline_first(runs: Iterable[RunRecord]) -> list[tuple[RunRecord, bool]]:
    """The runs, each segment's baseline (its first run with a value, `Segment.baseline_run`)
    moved to the front of that segment and flagged True: the notebook takes row 0 as the
    baseline, so a crash before it made the summary read "Baseline 0.000000, Total
    improvement -inf%"."""
    out: list[tuple[RunRecord, bool]] = []
    for _, group in groupby(runs, key=lambda r: r.segment):
        seg = list(group)
        i = next((k for k, r in enumerate(seg) if r.value is not None), None)
        if i is None:
            out += [(r, False) for r in seg]
        else:
            out += [(seg[i], True), *((r, False) for r in seg[:i] + seg[i + 1:])]
    return out


def tsv_text(runs: Iterable[RunRecord], metric_column: str = "val_bpb") -> str:
    """karpathy's results.tsv: one row per run, each segment's baseline first and as `keep`
    (`baseline_first`). Runs without a value (crash, checks_failed) are written as crash rows
    with 0.000000 and 0.0; checks_failed says so in its description."""
    lines = ["\t".join(("commit", _tsv_field(metric_column), "memory_gb", "status", "description"))]
    for r, baseline in baseline_first(map(clean_run, runs)):
        v = r.value
        status = "keep" if baseline else r.status if v is not None else "crash"
        if status not in ("keep", "discard", "crash"):
            status = "discard"
        desc = _tsv_field(r.description)
        if r.status == "checks_failed":
            desc = f"checks_failed: {desc}"
        value, mem = (f"{v:.6f}", f"{memory_gb(r):.1f}") if v is not None else ("0.000000", "0.0")
        lines.append("\t".join((_tsv_field(r.commit), value, mem, status, desc)))
    return "\n".join(lines) + "\n"


def _number(text: str) -> float | None:
    """A finite number, or None (empty, `nan`, `-`, junk): pandas' to_numeric(errors="coerce")."""
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _metric_column(head: list[str], source: str) -> int:
    """val_bpb where the header names it, else the second column (where `export --metric-column
    NAME` writes the metric)."""
    if "val_bpb" in head:
        return head.index("val_bpb")
    if len(head) > 1 and head[1] not in _KNOWN and head[1]:
        return 1
    raise TSVError(f"{source}: line 1 names no metric column: val_bpb, or a metric's name as the second column "
                   f"(karpathy's header is {' '.join(TSV_COLUMNS)}, tab-separated)")


def parse_tsv(text: str, source: str = "results.tsv") -> tuple[str, list[Row]]:
    """Parse a results.tsv as analysis.ipynb reads it -> (metric column name, rows). Raises
    TSVError naming the line.

    Columns are found by name: `status` is required, the metric is `val_bpb` (else the second
    column), `commit`, `memory_gb` and `description` are read where present, any others are
    kept per row in `Row.extra`. Statuses are case-insensitive keep, discard or crash. A crash
    row's numbers may be anything (the notebook coerces them); keep and discard rows need a
    finite metric. A row with more fields than the header is refused (pandas refuses it too:
    a tab inside the description)."""
    lines = text.removeprefix("\ufeff").splitlines()
    if not lines or not lines[0].strip():
        raise TSVError(f"{source} is empty")
    head = [h.strip() for h in lines[0].split("\t")]
    if "status" not in head:
        raise TSVError(f"{source}: line 1 must be the header: tab-separated column names with at least status "
                       f"and the metric, like karpathy's {' '.join(TSV_COLUMNS)}; not {lines[0][:120]!r}")
    mi = _metric_column(head, source)
    col = {name: head.index(name) for name in reversed(head)}  # the first column of a name wins
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = [x.strip() for x in line.split("\t")]
        if len(f) > len(head):
            raise TSVError(f"{source}: line {i} has {len(f)} tab-separated fields, the header {len(head)} "
                           "(a tab inside the description?)")
        f += [""] * (len(head) - len(f))

        def cell(name: str, f: list[str] = f) -> str:
            return f[col[name]] if name in col else ""

        status = cell("status").lower()
        if status not in ("keep", "discard", "crash"):
            raise TSVError(f"{source}: line {i}: status must be keep, discard or crash, not {cell('status')!r}")
        value = _number(f[mi])
        if value is None and status != "crash":
            raise TSVError(f"{source}: line {i}: a {status} row needs a finite number in {head[mi]}, not {f[mi]!r} "
                           "(only crash rows may leave it empty, nan or -)")
        used = {mi, *(col[n] for n in ("commit", "memory_gb", "status", "description") if n in col)}
        extra = {head[k]: v for k, v in enumerate(f) if k not in used and v and head[k]}
        rows.append(Row(cell("commit"), value if status != "crash" else None, _number(cell("memory_gb")),
                        status, cell("description"), extra))
    if not rows:
        raise TSVError(f"{source} has a header but no rows")
    return head[mi], rows


def import_lines(metric: str, rows: Sequence[Row], *, direction: Direction, source: str, first_run: int,
                 segment: int, end_time: float, spacing_s: float = 300.0) -> list[dict[str, Any]]:
    """Ledger lines for a karpathy session: a config header, then one run line per row.

    The first row with a value is the baseline (kept, as `export` writes it first). Timestamps are synthesized `spacing_s`
    apart ending at `end_time` (karpathy's runs take ~5 minutes) and marked in asi, as are the
    origin and the row's extra columns (`tsv_columns`). `crash` rows whose description starts
    with "checks_failed: " (how `export` writes them) come back as checks_failed.
    """
    out: list[dict[str, Any]] = [header_line(f"imported from {source}", metric, "", direction, imported_from=source)]
    standing = Standing()
    seen_value = False
    for i, row in enumerate(rows):
        status, desc, value = row.status, row.description, row.value
        if status == "crash" and desc.startswith("checks_failed: "):
            status, desc = "checks_failed", desc[len("checks_failed: "):]
        first = value is not None and not seen_value  # the fold's baseline: the first run with a value
        seen_value = seen_value or value is not None
        if first:
            status = "keep"
        kind = cast(Status, status)  # parse_tsv admits keep, discard and crash only
        standing = standing.after(value, kind, direction)
        metrics: dict[str, float] = {}
        if value is not None:
            metrics[metric] = value
            if row.memory_gb is not None:
                metrics["peak_vram_mb"] = round(row.memory_gb * 1024, 1)
        asi: dict[str, Any] = {"imported_from": source, "timestamp_synthesized": True}
        if row.extra:
            asi["tsv_columns"] = row.extra
        out.append(run_line(
            run=first_run + i, commit=row.commit, status=kind, description=desc, metric=value, metrics=metrics,
            timestamp=int(end_time - (len(rows) - 1 - i) * spacing_s), segment=segment,
            confidence=standing.confidence if value is not None else None,
            asi=asi, extra={"baseline": True} if first else None,
        ))
    return out
