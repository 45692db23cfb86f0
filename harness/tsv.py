"""karpathy's results.tsv both ways: `export` writes it for his analysis notebook, `import`
turns one into ledger lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

from harness.ledger import RunRecord, Status, header_line
from harness.points import clean_run
from harness.records import Standing, run_line
from harness.stats import Direction

TSV_COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")


class TSVError(ValueError):
    """results.tsv cannot be read; the message names the line."""


def _tsv_field(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").split())


def memory_gb(r: RunRecord) -> float:
    """karpathy's memory_gb: peak_vram_mb / 1024; peak_rss_mb where no VRAM was measured."""
    mb = r.metrics.get("peak_vram_mb", r.metrics.get("peak_rss_mb"))
    return 0.0 if mb is None or not math.isfinite(mb) else mb / 1024


def tsv_text(runs: Iterable[RunRecord], metric_column: str = "val_bpb") -> str:
    """karpathy's results.tsv: one row per run. Runs without a value (crash, checks_failed) are
    written as crash rows with 0.000000 and 0.0; checks_failed says so in its description."""
    lines = ["\t".join(("commit", _tsv_field(metric_column), "memory_gb", "status", "description"))]
    for r in map(clean_run, runs):
        v = r.value
        status = r.status if v is not None else "crash"
        if status not in ("keep", "discard", "crash"):
            status = "discard"
        desc = _tsv_field(r.description)
        if r.status == "checks_failed":
            desc = f"checks_failed: {desc}"
        value, mem = (f"{v:.6f}", f"{memory_gb(r):.1f}") if v is not None else ("0.000000", "0.0")
        lines.append("\t".join((_tsv_field(r.commit), value, mem, status, desc)))
    return "\n".join(lines) + "\n"


def parse_tsv(text: str, source: str = "results.tsv") -> tuple[str, list[tuple[str, float, float, str, str]]]:
    """Parse karpathy's results.tsv -> (metric column name, rows). Raises TSVError naming the line."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise TSVError(f"{source} is empty")
    head = [h.strip() for h in lines[0].split("\t")]
    if len(head) != 5 or head[0] != "commit" or head[2:] != ["memory_gb", "status", "description"]:
        raise TSVError(f"{source}: line 1 must be the header {' '.join(TSV_COLUMNS)} (tab-separated), "
                       f"not {lines[0][:120]!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 5:
            raise TSVError(f"{source}: line {i} has {len(f)} tab-separated fields, expected 5 "
                           "(a tab inside the description?)")
        commit, val, mem, status, desc = (x.strip() for x in f)
        status = status.lower()
        if status not in ("keep", "discard", "crash"):
            raise TSVError(f"{source}: line {i}: status must be keep, discard or crash, not {status!r}")
        try:
            value, gb = float(val), float(mem)
        except ValueError:
            raise TSVError(f"{source}: line {i}: {head[1]} and memory_gb must be numbers, not {val!r}, {mem!r}") from None
        if not (math.isfinite(value) and math.isfinite(gb)):
            raise TSVError(f"{source}: line {i}: {head[1]} and memory_gb must be finite")
        rows.append((commit, value, gb, status, desc))
    if not rows:
        raise TSVError(f"{source} has a header but no rows")
    return head[1], rows


def import_lines(metric: str, rows: Sequence[tuple[str, float, float, str, str]], *, direction: Direction,
                 source: str, first_run: int, segment: int, end_time: float, spacing_s: float = 300.0) -> list[dict[str, Any]]:
    """Ledger lines for a karpathy session: a config header, then one run line per row.

    Row 1 is the baseline (kept when it has a value). Timestamps are synthesized `spacing_s`
    apart ending at `end_time` (karpathy's runs take ~5 minutes) and marked in asi, as is the
    origin. `crash` rows whose description starts with "checks_failed: " (how `export` writes
    them) come back as checks_failed.
    """
    out: list[dict[str, Any]] = [header_line(f"imported from {source}", metric, "", direction, imported_from=source)]
    standing = Standing()
    for i, (commit, value, gb, status, desc) in enumerate(rows):
        if status == "crash" and desc.startswith("checks_failed: "):
            status, desc = "checks_failed", desc[len("checks_failed: "):]
        has_value = status != "crash" and status != "checks_failed"
        first = i == 0 and has_value
        if first:
            status = "keep"
        kind = cast(Status, status)  # parse_tsv admits keep, discard and crash only
        standing = standing.after(value if has_value else None, kind, direction)
        out.append(run_line(
            run=first_run + i, commit=commit, status=kind, description=desc,
            metric=value if has_value else None,
            metrics={metric: value, "peak_vram_mb": round(gb * 1024, 1)} if has_value else {},
            timestamp=int(end_time - (len(rows) - 1 - i) * spacing_s), segment=segment,
            confidence=standing.confidence if has_value else None,
            asi={"imported_from": source, "timestamp_synthesized": True}, extra={"baseline": True} if first else None,
        ))
    return out
