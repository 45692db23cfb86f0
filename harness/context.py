"""What the research model sees: pure functions from the workspace and the ledger to text.

A proposal's request has two parts, split for prompt caching (the API caches the longest
identical prefix: tools, then system, then messages):
- system blocks, stable across experiments: `program.md` with the tool protocol (block 1,
  identical for every session), and the session itself: target, metric, budget, the file
  list, `autoresearch.md` and `autoresearch.ideas.md` (block 2; it changes only when the notes
  change). Both carry a cache breakpoint.
- the first user message, new for every experiment: the ledger digest, the editable files
  as they are now, and the refusal feedback when a proposal was sent back.
Nothing depends on an earlier conversation: every request is rebuilt from files and the
ledger, so a crash or a context reset loses nothing.

The digest stays bounded however long the ledger grows (`DIGEST_MAX_CHARS`): kept changes,
the last K runs and the dead ends are each capped, and the caps shrink until it fits.

Token counts here are estimates, chars / 3.5: English prose and Python code run about 3-4
characters per token on Claude's tokenizers. Good for budgets and the bench, not for billing
(the API's `usage` is what the ledger records).
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import records, resources
from harness.agents.base import PastRun, ProposalContext
from harness.config import Config
from harness.ledger import LedgerState, RunRecord
from harness.procgroup import HELPER_GROUP
from harness.stats import Direction, gain, improvement_pct

NOTES_NAME = "autoresearch.md"
IDEAS_NAME = "autoresearch.ideas.md"
CHARS_PER_TOKEN = 3.5
DIGEST_MAX_CHARS = 16_000  # ~4.6k tokens, whatever the ledger's length
NOTES_MAX_CHARS = 12_000  # autoresearch.md / ideas beyond this are cut (the model can read_file the rest)
FILE_MAX_CHARS = 60_000  # an editable file larger than this is shown head + tail
FIELD_CHARS = 200  # one ASI field or description in the digest
LISTING_MAX = 150  # files named in the workspace listing
EPHEMERAL = {"type": "ephemeral"}
TRIED_HEADING = "What's been tried"
LEARNINGS_HEADING = "Learnings"


def estimate_tokens(text: str) -> int:
    """Rough token count: ceil(chars / 3.5). See the module docstring."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def clip(text: str, n: int) -> str:
    """One line of at most n characters (newlines folded), with an ellipsis when cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= n else flat[: max(n - 1, 0)] + "…"


def normalize_description(text: str) -> str:
    """The key under which descriptions count as the same idea: case, spacing, trailing punctuation."""
    return " ".join(text.lower().split()).strip(" .;:,!")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _signed(v: float) -> str:
    return f"{v:+.4g}"


# ------------------------------------------------------------------------- digest


@dataclass(frozen=True)
class _Limits:
    kept: int  # kept changes listed one per line
    last_k: int
    field: int  # characters per description / ASI field
    dead: int  # distinct dead ends listed


def _kept_lines(runs: Sequence[RunRecord], before: list[float | None], metric: str, direction: Direction,
                lim: _Limits) -> list[str]:
    # (position, run, gain over the best before it) of every kept run after the baseline
    kept = [(i, r, gain(v, b, direction)) for i, r in enumerate(runs)
            if r.status == "keep" and (v := r.value) is not None and (b := before[i]) is not None]
    if not kept:
        return ["(none yet: nothing has beaten the baseline)"]

    def line(r: RunRecord, delta: float) -> str:
        return f"#{r.run} {metric}={_fmt(r.value)} ({_signed(delta)}): {clip(r.description, lim.field)}"

    if len(kept) <= lim.kept:
        return [line(r, g) for _, r, g in kept]
    recent = kept[-(lim.kept // 2):]
    rest = kept[: -(lim.kept // 2)]
    largest = sorted(rest, key=lambda k: -k[2])[: lim.kept - len(recent)]
    shown = sorted([*largest, *recent], key=lambda k: k[0])
    hidden = [k for k in rest if k not in largest]
    hidden_gain = sum(g for _, _, g in hidden)
    return [line(r, g) for _, r, g in shown] + [
        f"(+{len(hidden)} smaller earlier kept changes not listed, together {_signed(hidden_gain)}; "
        "`autoresearch log --status keep` lists all)"
    ]


def _run_lines(runs: Sequence[RunRecord], before: list[float | None], metric: str, direction: Direction,
               lim: _Limits) -> list[str]:
    out = []
    start = max(len(runs) - lim.last_k, 0)
    for i in range(start, len(runs)):
        r = runs[i]
        b = before[i]
        if r.value is not None and b is not None:
            shown = f"{metric}={_fmt(r.value)} ({_signed(gain(r.value, b, direction))} vs best then)"
        elif r.value is not None:
            shown = f"{metric}={_fmt(r.value)} (baseline)"
        else:
            shown = "no result"
        out.append(f"#{r.run} {r.status} {shown}: {clip(r.description, lim.field)}")
        for key, label in (("hypothesis", "hypothesis"), ("rollback_reason", "why not kept"),
                           ("next_action_hint", "next")):
            v = r.asi.get(key)
            if v:
                out.append(f"    {label}: {clip(v if isinstance(v, str) else str(v), lim.field)}")
    return out


def _dead_end_lines(runs: Sequence[RunRecord], lim: _Limits) -> list[str]:
    kept_keys = {normalize_description(r.description) for r in runs if r.status == "keep"}
    groups: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r.status not in ("discard", "crash"):
            continue
        key = normalize_description(r.description)
        if not key or key in kept_keys:
            continue
        g = groups.setdefault(key, {"text": r.description, "discard": 0, "crash": 0, "last": r.run})
        g[r.status] += 1
        g["last"] = r.run
    if not groups:
        return ["(none)"]
    ranked = sorted(groups.values(), key=lambda g: (-(g["discard"] + g["crash"]), -g["last"]))
    out = []
    for g in ranked[: lim.dead]:
        n = g["discard"] + g["crash"]
        kinds = ", ".join(f"{g[s]} {s}" for s in ("discard", "crash") if g[s])
        out.append(f"- {clip(g['text'], lim.field)}  (x{n}: {kinds}; last #{g['last']})")
    if len(ranked) > lim.dead:
        out.append(f"(+{len(ranked) - lim.dead} more distinct dead ends, each tried once or twice; "
                   "`autoresearch log --status discard` lists them)")
    return out


def _render_digest(state: LedgerState, metric: str, direction: Direction, lim: _Limits) -> str:
    seg = state.current
    if seg is None or not seg.runs:
        return "No experiments yet in this segment: the next run is the baseline."
    runs = seg.runs
    counts = seg.counts()
    before = [step.best_before for step in records.running_best(seg)]
    lines = [
        f"Segment {seg.index} of the ledger: {len(runs)} experiments "
        f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)}). {direction.capitalize()} {metric} is better.",
    ]
    base, best = seg.baseline_run, seg.best_run
    if base is not None:
        lines.append(f"Baseline: #{base.run} {metric}={_fmt(base.value)}")
    if best is not None and best.value is not None:
        line = f"Best: #{best.run} {metric}={_fmt(best.value)}"
        if seg.baseline is not None and best is not base:
            pct = improvement_pct(best.value, seg.baseline, direction)
            line += f" ({_signed(gain(best.value, seg.baseline, direction))} over baseline"
            line += f", {pct:+.2f}%)" if pct is not None else ")"
        lines.append(f"{line}: {clip(best.description, lim.field)}")
    conf = seg.confidence
    lines.append(
        f"Confidence: {conf:.1f}x the noise floor (MAD of all results)" if conf is not None
        else "Confidence: not defined yet (needs 3+ results and a spread)"
    )
    streak = seg.failure_streak()
    if streak:
        lines.append(f"Experiments since the last keep: {streak}")
    lines += ["", "Kept changes (gain over the best before each):", *_kept_lines(runs, before, metric, direction, lim)]
    lines += ["", f"Last {min(lim.last_k, len(runs))} runs (oldest first; full logs in .autoresearch/runs/<N>.log, "
              "refused or discarded diffs in .autoresearch/patches/<N>.diff):",
              *_run_lines(runs, before, metric, direction, lim)]
    lines += ["", "Dead ends (discarded or crashed ideas, by description, most repeated first):", *_dead_end_lines(runs, lim)]
    return "\n".join(lines)


def ledger_digest(
    state: LedgerState,
    metric_name: str,
    direction: Direction,
    *,
    last_k: int = 15,
    max_chars: int = DIGEST_MAX_CHARS,
) -> str:
    """A bounded summary of the current segment for the model: baseline, best, every kept change
    with its gain over the best before it, the last `last_k` runs with status, metric,
    description and ASI (hypothesis, rollback_reason, next_action_hint), and the dead ends
    (discarded/crashed descriptions, normalized, with counts).

    At most `max_chars` characters however long the ledger is: the caps on each section
    shrink step by step until the text fits; as a last resort the text is cut with a note.
    """
    ladder = [
        _Limits(kept=30, last_k=last_k, field=FIELD_CHARS, dead=40),
        _Limits(kept=20, last_k=last_k, field=140, dead=20),
        _Limits(kept=12, last_k=min(last_k, 10), field=100, dead=10),
        _Limits(kept=6, last_k=min(last_k, 5), field=60, dead=5),
    ]
    text = ""
    for lim in ladder:
        text = _render_digest(state, metric_name, direction, lim)
        if len(text) <= max_chars:
            return text
    note = "\n(digest cut to fit; `autoresearch log --last 20` shows more)"
    return text[: max(max_chars - len(note), 0)] + note


# ------------------------------------------------------------------------ request


def proposal_context(cfg: Config, root: Path, state: LedgerState, feedback: str | None = None) -> ProposalContext:
    """What an agent is given for one proposal: the session's settings and the current segment."""
    seg = state.current
    runs = seg.runs if seg else ()
    return ProposalContext(
        root=root,
        editable=cfg.editable,
        metric_name=cfg.metric.name,
        direction=cfg.metric.direction,
        run_number=state.next_run,
        history=tuple(PastRun(r.run, r.status, r.value, r.description, r.asi, r.segment) for r in runs),
        best_metric=seg.best if seg else None,
        baseline_metric=seg.baseline if seg else None,
        time_budget_s=cfg.time_budget_s,
        seed=cfg.seed,
        feedback=feedback,
    )


def program_text() -> str:
    """The research instructions: the harness's program.md (harness/resources.py finds it)."""
    path = resources.program_path()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: the built-in agent needs the harness's program.md "
            "(reinstall autoresearch from its repository)"
        ) from None


TOOL_RULES = """\
# Working through tools (built-in agent)

You are called once per experiment, with everything you need in this request: the
research instructions above, the session notes, a digest of the ledger, and the editable
files as they are now. You have no memory between calls: the ledger and the notes are the
memory. You cannot run code or shell commands; the controller runs the experiment after you
submit and logs the result.

Tools:
- read_file(path): any file in the workspace (the evaluation, the data preparation, run logs
  in .autoresearch/runs/<N>.log, refused or discarded diffs in .autoresearch/patches/<N>.diff).
  Read-only, except the editable files. A directory path lists its entries.
- edit_file(path, old_string, new_string): replace one exact, unique occurrence in an
  editable file. Prefer it for small changes.
- write_file(path, content): replace a whole editable file.
- submit_experiment(description, hypothesis, asi, next_action_hint): ends your turn; the
  experiment is committed and run exactly as the files are now.

Edits to any other file are refused. Make one experiment's change, check it reads
correctly, then submit. Keep your text between tool calls short.
"""


def _git_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, timeout=30, check=True,
                             process_group=HELPER_GROUP)
    except (OSError, subprocess.SubprocessError):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and not {".git", ".autoresearch"} & set(p.relative_to(root).parts))
    return sorted(line for line in out.stdout.splitlines() if line)


def _read_clipped(path: Path, limit: int) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... cut at {limit} of {len(text)} characters; read_file shows the rest]\n"


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return fence


def session_text(ctx: ProposalContext) -> str:
    """System block 2: what this session is. Changes only when the notes or the file list change."""
    files = _git_files(ctx.root)
    readable = [f for f in files if f not in ctx.editable]
    listing = ", ".join(readable[:LISTING_MAX]) + (f" (+{len(readable) - LISTING_MAX} more)" if len(readable) > LISTING_MAX else "")
    parts = [
        "# This session",
        f"- Metric: `{ctx.metric_name}`, {ctx.direction} is better (printed by the run as `METRIC {ctx.metric_name}=<number>`).",
        f"- Time budget per experiment: {ctx.time_budget_s:g} s of training; every run gets the same budget.",
        f"- Editable files (the only files you may change): {', '.join(ctx.editable)}",
        f"- Other files (read-only): {listing or '(none)'}",
    ]
    for name in (NOTES_NAME, IDEAS_NAME):
        text = _read_clipped(ctx.root / name, NOTES_MAX_CHARS)
        if text is not None and text.strip():
            parts += ["", f"## {name}", text.rstrip()]
    return "\n".join(parts) + "\n"


def files_text(root: Path, editable: Sequence[str]) -> str:
    """The editable files as they are now, each in a fence; huge files are shown head + tail."""
    parts = []
    for rel in editable:
        try:
            text = (root / rel).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            parts.append(f"### {rel}\n(does not exist yet; write_file can create it)")
            continue
        n_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        if len(text) > FILE_MAX_CHARS:
            head, tail = text[: FILE_MAX_CHARS // 2], text[-FILE_MAX_CHARS // 2:]
            text = f"{head}\n[... middle cut; read_file('{rel}', start_line=...) shows it ...]\n{tail}"
        fence = _fence(text)
        parts.append(f"### {rel} ({n_lines} lines)\n{fence}\n{text.rstrip()}\n{fence}")
    return "\n\n".join(parts)


def proposal_text(ctx: ProposalContext, state: LedgerState, *, max_turns: int, last_k: int = 15) -> str:
    """The first user message of a proposal: digest, files, the task, and any refusal feedback."""
    parts = [
        f"# Experiment #{ctx.run_number}",
        "",
        "## Ledger digest",
        ledger_digest(state, ctx.metric_name, ctx.direction, last_k=last_k),
        "",
        "## Editable files, as they are now (the best version so far)",
        files_text(ctx.root, ctx.editable),
        "",
        "## Your task",
        f"Propose experiment #{ctx.run_number}: pick one idea using the digest and the notes, make the change "
        f"with edit_file or write_file, then call submit_experiment. You have at most {max_turns} tool turns.",
    ]
    if ctx.feedback:
        parts += [
            "",
            "## Your previous proposal for this experiment was refused",
            ctx.feedback,
            "Propose something different: a repeat of an earlier experiment teaches nothing new.",
        ]
    return "\n".join(parts) + "\n"


def system_blocks(ctx: ProposalContext, *, program: str | None = None) -> list[dict[str, Any]]:
    """The two cacheable system blocks: program.md + tool rules (identical across sessions), then
    the session (changes only when the notes or the file list change)."""
    head = (program if program is not None else program_text()).rstrip() + "\n\n" + TOOL_RULES
    return [
        {"type": "text", "text": head, "cache_control": dict(EPHEMERAL)},
        {"type": "text", "text": session_text(ctx), "cache_control": dict(EPHEMERAL)},
    ]


def build_request_parts(
    ctx: ProposalContext, state: LedgerState, *, max_turns: int = 12, last_k: int = 15, program: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """(system blocks, first user message) for one proposal: the stable prefix is cacheable, the
    volatile part (digest, files, feedback) is the user message."""
    return system_blocks(ctx, program=program), proposal_text(ctx, state, max_turns=max_turns, last_k=last_k)


# -------------------------------------------------------------------------- notes

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _norm_heading(s: str) -> str:
    return re.sub(r"[^a-z]", "", s.lower().replace("’", "'"))


def section_body(text: str, heading: str) -> str | None:
    """The body of the level-2 section named `heading` (up to the next heading of level <= 2)."""
    lines = text.splitlines()
    span = _section_span(lines, heading)
    if span is None:
        return None
    start, end = span
    return "\n".join(lines[start + 1 : end]).strip("\n")


def _section_span(lines: list[str], heading: str) -> tuple[int, int] | None:
    want = _norm_heading(heading)
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m and len(m.group(1)) == 2 and _norm_heading(m.group(2)) == want:
            end = next((j for j in range(i + 1, len(lines))
                        if (h := _HEADING.match(lines[j])) and len(h.group(1)) <= 2), len(lines))
            return i, end
    return None


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the body of section `## heading` replaced (appended at the end if missing).
    Everything else is left byte for byte."""
    lines = text.splitlines()
    span = _section_span(lines, heading)
    new_body = body.strip("\n").splitlines()
    if span is None:
        prefix = text.rstrip("\n") + "\n\n" if text.strip() else ""
        return prefix + "\n".join([f"## {heading}", *new_body]) + "\n"
    start, end = span
    tail = lines[end:]
    out = [*lines[: start + 1], *new_body, *([""] if tail else []), *tail]
    return "\n".join(out) + "\n"


def learnings_text(ctx: ProposalContext, state: LedgerState, *, last_k: int = 30) -> str:
    """The user message asking for a rewrite of the notes' two living sections."""
    notes = (ctx.root / NOTES_NAME).read_text(encoding="utf-8", errors="replace") if (ctx.root / NOTES_NAME).exists() else ""
    tried = section_body(notes, TRIED_HEADING) or "(empty)"
    learned = section_body(notes, LEARNINGS_HEADING) or "(empty)"
    return "\n".join([
        f"# Update the session notes (after {max(ctx.run_number - 1, 0)} experiments)",
        "",
        "## Ledger digest",
        ledger_digest(state, ctx.metric_name, ctx.direction, last_k=last_k),
        "",
        f"## Current \"{TRIED_HEADING}\" section", tried,
        "",
        f"## Current \"{LEARNINGS_HEADING}\" section", learned,
        "",
        "## Your task",
        f"Rewrite the \"{TRIED_HEADING}\" and \"{LEARNINGS_HEADING}\" sections of {NOTES_NAME} with update_notes. "
        f"\"{TRIED_HEADING}\": the directions explored so far, grouped, with their outcome and run numbers. "
        f"\"{LEARNINGS_HEADING}\": what the results teach (what pays off, what does not, open questions), "
        "each point backed by run numbers. Merge with what is already there, drop what later runs contradicted, "
        "and keep each section under about 40 lines of markdown bullets. This changes nothing else in the file.",
    ]) + "\n"
