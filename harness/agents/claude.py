"""Built-in research agent `claude`: the Anthropic Messages API with tool use.

Every proposal is one short, stateless conversation: the request is rebuilt from program.md,
the session notes, a bounded ledger digest and the editable files (`harness.context`); the
model reads files, edits the editable ones and ends with `submit_experiment`. It answers
through tool calls, never scraped prose, and the controller validates the result as it does
for any agent.

Reliability: the SDK's own retries are off (`max_retries=0`) so that this module decides:
rate limits (429) and overload (529, 5xx, connection errors) are retried; a `retry-after`
header is obeyed exactly and such waits do not use up the backoff attempts, so a long limit
is waited out rather than failing the proposal; the total wait is capped by `max_wait_s`.
Any other API error ends the proposal with `ProposalFailed`, which carries the usage so far.

Cost: prompt caching on the two stable system blocks and on the growing conversation; the
tokens of every response are summed, priced per request from `PRICES` and returned as
`Proposal.usage` for the ledger line. A model without a known price gets `cost_usd: None`.

The API key is read from the argument or ANTHROPIC_API_KEY, given to the client and never
written anywhere: error texts and tool results are scrubbed of it.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import context, ledger
from harness.agents.base import AgentError, Proposal, ProposalContext

DEFAULT_MODEL = "claude-sonnet-5-5"
MAX_TOKENS = 16_000  # per response; room for adaptive thinking plus a whole-file write
REQUEST_TIMEOUT_S = 600.0
READ_MAX_CHARS = 30_000  # read_file shows head + tail beyond this, or a line window on request
BIG_FILE_BYTES = 8_000_000  # beyond this read_file never loads the whole file
BACKOFF_FIRST_S = 5.0
BACKOFF_CAP_S = 300.0
MAX_BACKOFF_ATTEMPTS = 8  # retries without a retry-after header
MAX_ATTEMPTS = 100  # all retries, retry-after included (with max_wait_s, bounds a misbehaving server)
LEARNINGS_MAX_TURNS = 4
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")
_SECRET_NAMES = re.compile(r"(^|/)(\.env(\..*)?|\.netrc|.*\.pem)$")


# ----------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """USD per million tokens. `cache_write` is the 5-minute write, the TTL this agent uses."""

    input: float
    output: float
    cache_write: float
    cache_read: float


# Source: platform.claude.com/docs/en/about-claude/pricing and the model pages
# (platform.claude.com/docs/en/models/<model>/overview), read 2026-11-21. Prices change:
# a model missing here is recorded with cost_usd null, never guessed.
PRICES: dict[str, Price] = {
    "claude-fable-5-2": Price(8.0, 40.0, 10.0, 0.20),  # released 2026-11-09
    "claude-mythos-5-2": Price(8.0, 40.0, 10.0, 0.20),
    "claude-fable-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-mythos-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-fable-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-mythos-5": Price(10.0, 50.0, 12.50, 1.00),
    "claude-opus-5-5": Price(4.0, 20.0, 5.0, 0.20),
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.10),  # cache reads 0.20 -> 0.10 on 2026-10-07
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),  # prompts up to 100k tokens; see LONG_PROMPT
    "claude-opus-4-8": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-sonnet-4-6": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4-5": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
}
# Models priced by prompt length: (threshold in prompt tokens, price for every token of a longer request)
LONG_PROMPT: dict[str, tuple[int, Price]] = {
    "claude-haiku-5-5": (100_000, Price(0.50, 2.50, 0.625, 0.05)),
}


def _price_key(model: str) -> str:
    """`claude-haiku-4-5-20251001` and `claude-opus-5-5[1m]` price as their base model."""
    base = re.sub(r"\[.*\]$", "", model)
    return re.sub(r"-\d{8}$", "", base)


def estimate_cost_usd(model: str, usage: dict[str, Any]) -> float | None:
    """Estimated USD cost of one request's usage (token counts as the API reports them).

    None when the model has no known price. For models priced by prompt length the tier is
    chosen from this usage's prompt size, so pass one request's usage, not a sum.
    """
    key = _price_key(model)
    price = PRICES.get(key)
    if price is None:
        return None
    tokens = {k: int(usage.get(k) or 0) for k in
              ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}
    if key in LONG_PROMPT:
        threshold, long_price = LONG_PROMPT[key]
        prompt = tokens["input_tokens"] + tokens["cache_creation_input_tokens"] + tokens["cache_read_input_tokens"]
        if prompt > threshold:
            price = long_price
    return (
        tokens["input_tokens"] * price.input
        + tokens["output_tokens"] * price.output
        + tokens["cache_creation_input_tokens"] * price.cache_write
        + tokens["cache_read_input_tokens"] * price.cache_read
    ) / 1e6


# ------------------------------------------------------------------------------ usage


@dataclass
class Usage:
    """What one proposal cost, summed over its requests."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float | None = 0.0
    turns: int = 0  # model responses
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    wait_s: float = 0.0  # time spent waiting out rate limits and overload
    tool_errors: int = 0  # tool calls answered with is_error
    refused_edits: int = 0  # edits of files outside the editable set

    def add_response(self, usage: Any) -> None:
        counts = {
            "input_tokens": getattr(usage, "input_tokens", 0) or 0,
            "output_tokens": getattr(usage, "output_tokens", 0) or 0,
            "cache_read_input_tokens": getattr(usage, "cache_read_input_tokens", 0) or 0,
            "cache_creation_input_tokens": getattr(usage, "cache_creation_input_tokens", 0) or 0,
        }
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + int(v))
        cost = estimate_cost_usd(self.model, counts)
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost
        self.turns += 1

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "turns": self.turns,
            "requests": self.requests,
        }
        if self.cost_usd is None:
            d["cost_note"] = f"no price known for model {self.model}; cost not estimated"
        for k in ("retries", "tool_errors", "refused_edits"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.wait_s:
            d["wait_s"] = round(self.wait_s, 1)
        return d


class ProposalFailed(AgentError):
    """The API or the model did not produce a proposal. `usage` is what was spent on the attempt."""

    def __init__(self, message: str, usage: dict[str, Any], model: str):
        super().__init__(message)
        self.usage = usage
        self.model = model


# ------------------------------------------------------------------------------ tools

TOOL_READ = {
    "name": "read_file",
    "description": (
        "Read a file of the workspace (read-only unless it is editable). Large files show head and tail; "
        "pass start_line/max_lines for a window. A directory lists its entries. Run logs: "
        ".autoresearch/runs/<N>.log; diffs of refused or discarded experiments: .autoresearch/patches/<N>.diff."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "path relative to the workspace root"},
            "start_line": {"type": "integer", "minimum": 1, "description": "first line to show (1-based)"},
            "max_lines": {"type": "integer", "minimum": 1, "description": "how many lines to show"},
        },
        "required": ["path"],
    },
}
TOOL_EDIT = {
    "name": "edit_file",
    "description": (
        "Replace one exact occurrence of old_string with new_string in an editable file. old_string must "
        "match the file exactly (whitespace included) and occur exactly once."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "old_string": {"type": "string"},
            "new_string": {"type": "string"},
        },
        "required": ["path", "old_string", "new_string"],
    },
}
TOOL_WRITE = {
    "name": "write_file",
    "description": "Replace the whole content of an editable file.",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"],
    },
}
TOOL_SUBMIT = {
    "name": "submit_experiment",
    "description": (
        "Submit the experiment as the editable files are now. Ends this proposal: the controller commits, "
        "runs it under the fixed budget, keeps or reverts, and logs description and ASI."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "what changed, in a few words (becomes the commit message)"},
            "hypothesis": {"type": "string", "description": "why this should improve the metric"},
            "asi": {"type": "object", "description": "more side information, e.g. {\"change\": \"DEPTH 8->12\", \"expected_delta\": -0.01}"},
            "next_action_hint": {"type": "string", "description": "what to try next if this does not pay off"},
        },
        "required": ["description", "hypothesis"],
    },
}
TOOL_NOTES = {
    "name": "update_notes",
    "description": (
        f"Replace the bodies of the \"{context.TRIED_HEADING}\" and \"{context.LEARNINGS_HEADING}\" sections of "
        f"{context.NOTES_NAME} (markdown). The rest of the file is not touched."
    ),
    "input_schema": {
        "type": "object",
        "properties": {"whats_been_tried": {"type": "string"}, "learnings": {"type": "string"}},
        "required": ["whats_been_tried", "learnings"],
    },
}


class ToolError(Exception):
    """A tool call that cannot be done; the message goes back to the model as an error result."""


def _arg(inp: Any, name: str, kind: type, *, required: bool = True) -> Any:
    if not isinstance(inp, dict):
        raise ToolError(f"tool input must be a JSON object, not {type(inp).__name__}")
    if name not in inp or inp[name] is None:
        if required:
            raise ToolError(f"missing required field {name!r}")
        return None
    v = inp[name]
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise ToolError(f"field {name!r} must be {_KIND[kind]}, not {_JSON_KIND.get(type(v), type(v).__name__)}")
    return v


_KIND = {str: "a string", int: "an integer", dict: "an object"}
_JSON_KIND = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "an object"}


def _syntax_problem(rel: str, text: str) -> str | None:
    if not rel.endswith(".py"):
        return None
    try:
        ast.parse(text)
    except SyntaxError as exc:
        return f"{rel} does not parse: {exc.msg} (line {exc.lineno})"
    return None


class WorkspaceTools:
    """The tools of one proposal, bound to a workspace. Every path is confined to `root`
    (symlinks resolved); writes only to `editable`; .git and the controller's state are hidden
    except the run logs and patches."""

    def __init__(self, root: Path, editable: tuple[str, ...], scrub: Callable[[str], str], usage: Usage):
        self.root = root.resolve()
        self.editable = tuple(editable)
        self.scrub = scrub
        self.usage = usage
        self.start = {rel: self._bytes(rel) for rel in self.editable}

    def _bytes(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def resolve(self, path: Any) -> tuple[Path, str]:
        if not isinstance(path, str) or not path.strip():
            raise ToolError("path must be a non-empty string")
        try:
            full = (self.root / path.strip()).resolve()
        except (ValueError, OSError) as exc:  # an embedded NUL, a symlink loop
            raise ToolError(f"invalid path {path!r}: {exc}") from None
        if not full.is_relative_to(self.root):
            raise ToolError(f"{path} is outside the workspace; only files inside it can be read")
        rel = full.relative_to(self.root).as_posix()
        return full, rel

    def _check_editable(self, rel: str) -> None:
        if rel not in self.editable:
            self.usage.refused_edits += 1
            raise ToolError(
                f"{rel} is not editable: you may change only {', '.join(self.editable)}. Everything else "
                "(the evaluation, data preparation, session files) is fixed so that results stay comparable."
            )

    # -- the tools
    def read_file(self, inp: Any) -> str:
        full, rel = self.resolve(_arg(inp, "path", str))
        start = _arg(inp, "start_line", int, required=False)
        count = _arg(inp, "max_lines", int, required=False)
        parts = rel.split("/")
        if parts[0] == ".git":
            raise ToolError(".git is not readable; the digest and the run logs hold the history")
        if parts[0] == ".autoresearch" and not (len(parts) >= 2 and parts[1] in ("runs", "patches")):
            raise ToolError("of .autoresearch/ only runs/ (logs) and patches/ (diffs) are readable")
        if _SECRET_NAMES.search(rel):
            raise ToolError(f"{rel} may hold credentials and is not readable")
        if full.is_dir():
            entries = sorted(p.name + ("/" if p.is_dir() else "") for p in full.iterdir() if p.name != ".git")
            shown = entries[:300]
            more = f"\n(+{len(entries) - 300} more)" if len(entries) > 300 else ""
            return f"{rel}/ ({len(entries)} entries)\n" + "\n".join(shown) + more
        if not full.exists():
            raise ToolError(f"{rel} does not exist")
        if not full.is_file():
            raise ToolError(f"{rel} is not a regular file")
        size = full.stat().st_size
        if size > BIG_FILE_BYTES:  # a dataset or checkpoint: never load it whole
            with open(full, "rb") as f:
                head = f.read(READ_MAX_CHARS // 3)
                f.seek(max(size - 2 * READ_MAX_CHARS // 3, 0))
                tail = f.read()
            if b"\0" in head:
                return f"{rel} is a binary file ({size} bytes); not shown"
            return self.scrub(f"{head.decode('utf-8', 'replace')}\n[... {size} bytes in all; only the head and "
                              f"tail of a file this large are shown ...]\n{tail.decode('utf-8', 'replace')}")
        data = full.read_bytes()
        if b"\0" in data[:8192]:
            return f"{rel} is a binary file ({len(data)} bytes); not shown"
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        if start is not None or count is not None:
            s = (start or 1) - 1
            e = min(s + (count or 400), len(lines))
            window = "\n".join(lines[s:e])[:READ_MAX_CHARS]
            return self.scrub(f"{rel}: lines {s + 1}-{e} of {len(lines)}\n{window}")
        if len(text) > READ_MAX_CHARS:
            first, last = text[: READ_MAX_CHARS // 3], text[-2 * READ_MAX_CHARS // 3 :]
            text = (f"{first}\n[... {len(text) - len(first) - len(last)} characters cut; {len(lines)} lines in all; "
                    f"pass start_line/max_lines to see them ...]\n{last}")
        return self.scrub(text)

    def edit_file(self, inp: Any) -> str:
        full, rel = self.resolve(_arg(inp, "path", str))
        old, new = _arg(inp, "old_string", str), _arg(inp, "new_string", str)
        self._check_editable(rel)
        if not full.exists():
            raise ToolError(f"{rel} does not exist; use write_file to create it")
        if not old:
            raise ToolError("old_string is empty; to replace the whole file use write_file")
        if old == new:
            raise ToolError("old_string and new_string are the same; nothing would change")
        text = full.read_text(encoding="utf-8")
        n = text.count(old)
        if n == 0:
            raise ToolError(f"old_string was not found in {rel}; copy the exact text (whitespace included) from the file")
        if n > 1:
            raise ToolError(f"old_string occurs {n} times in {rel}; include more surrounding lines so it is unique")
        text = text.replace(old, new, 1)
        full.write_text(text, encoding="utf-8")
        problem = _syntax_problem(rel, text)
        done = f"edited {rel}: -{old.count(chr(10)) + 1} +{new.count(chr(10)) + 1} lines"
        return done + (f"\nwarning: {problem}; fix it before submitting" if problem else "")

    def write_file(self, inp: Any) -> str:
        full, rel = self.resolve(_arg(inp, "path", str))
        content = _arg(inp, "content", str)
        self._check_editable(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content, encoding="utf-8")
        problem = _syntax_problem(rel, content)
        done = f"wrote {rel} ({content.count(chr(10)) + (0 if content.endswith(chr(10)) else 1)} lines)"
        return done + (f"\nwarning: {problem}; fix it before submitting" if problem else "")

    def submit(self, inp: Any) -> tuple[str, Proposal]:
        description = " ".join(_arg(inp, "description", str).split())
        hypothesis = _arg(inp, "hypothesis", str).strip()
        asi = _arg(inp, "asi", dict, required=False) or {}
        hint = _arg(inp, "next_action_hint", str, required=False)
        if not description:
            raise ToolError("description is empty; say what the experiment changes in a few words")
        if len(description) > 200:
            raise ToolError(f"description is {len(description)} characters; keep it under 200 (put details in asi)")
        if not hypothesis:
            raise ToolError("hypothesis is empty; say why this should improve the metric")
        changed = [rel for rel in self.editable if self._bytes(rel) != self.start[rel]]
        if not changed:
            raise ToolError("no editable file has changed yet; make the change with edit_file or write_file, then submit")
        for rel in changed:
            data = self._bytes(rel)
            problem = _syntax_problem(rel, data.decode("utf-8", errors="replace")) if data is not None else None
            if problem:
                raise ToolError(f"{problem}; the run would crash. Fix it, then submit")
        full_asi = {**asi, "hypothesis": hypothesis}
        if hint and hint.strip():
            full_asi["next_action_hint"] = hint.strip()
        return f"submitted: {description}", Proposal(description=description, asi=full_asi)


# ------------------------------------------------------------------------------ agent


@dataclass
class _Turn:
    """The outcome of one batch of tool calls."""

    results: list[dict[str, Any]] = field(default_factory=list)
    final: Any = None


class ClaudeAgent:
    name = "claude"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        max_turns: int = 12,
        api_key: str | None = None,
        base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float = 3600,
    ):
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise AgentError(
                "ANTHROPIC_API_KEY is not set: export it to use the claude agent, "
                "or run offline with --agent mutate"
            )
        import anthropic  # imported here: the offline agents never pay for it

        self._anthropic = anthropic
        self._key = key
        self.model = model
        self.max_turns = max_turns
        self.sleep = sleep
        self.max_wait_s = max_wait_s
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.client = anthropic.Anthropic(
            api_key=key, base_url=self.base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        self._rng = random.Random()

    def __repr__(self) -> str:  # never show the key
        return f"ClaudeAgent(model={self.model!r}, max_turns={self.max_turns})"

    def scrub(self, text: str) -> str:
        """Remove the API key (and anything shaped like an Anthropic key) from a text."""
        if self._key:
            text = text.replace(self._key, "[redacted]")
        return _KEY_PATTERN.sub("sk-ant-[redacted]", text)

    # ---------------------------------------------------------------- proposals
    def propose(self, ctx: ProposalContext) -> Proposal:
        state = ledger.load_state(ledger.ledger_path(ctx.root))
        system, first = context.build_request_parts(ctx, state, max_turns=self.max_turns)
        usage = Usage(self.model)
        tools = WorkspaceTools(ctx.root, ctx.editable, self.scrub, usage)
        handlers: dict[str, Callable[[Any], Any]] = {
            "read_file": tools.read_file,
            "edit_file": tools.edit_file,
            "write_file": tools.write_file,
            "submit_experiment": tools.submit,
        }
        proposal = self._converse(system, first, [TOOL_READ, TOOL_EDIT, TOOL_WRITE, TOOL_SUBMIT], handlers,
                                  usage, self.max_turns, finish="submit_experiment")
        return Proposal(proposal.description, proposal.asi, usage=usage.as_dict(), model=self.model)

    def update_learnings(self, ctx: ProposalContext) -> Proposal | None:
        """Rewrite the "What's been tried" and "Learnings" sections of autoresearch.md.

        The model gets read_file and update_notes, which can change only those two sections
        of that one file. Returns a Proposal describing the update (with usage), or None when
        the file did not change. The caller commits autoresearch.md as a notes commit.
        """
        state = ledger.load_state(ledger.ledger_path(ctx.root))
        system = context.system_blocks(ctx)  # the proposals' prefix, so the cache serves both
        usage = Usage(self.model)
        tools = WorkspaceTools(ctx.root, ctx.editable, self.scrub, usage)
        notes = ctx.root / context.NOTES_NAME
        before = notes.read_text(encoding="utf-8") if notes.exists() else ""

        def update_notes(inp: Any) -> tuple[str, bool]:
            tried = _arg(inp, "whats_been_tried", str)
            learned = _arg(inp, "learnings", str)
            if not tried.strip() or not learned.strip():
                raise ToolError("both sections need content")
            text = notes.read_text(encoding="utf-8") if notes.exists() else ""
            text = context.replace_section(text, context.TRIED_HEADING, tried)
            text = context.replace_section(text, context.LEARNINGS_HEADING, learned)
            notes.write_text(self.scrub(text), encoding="utf-8")
            return "updated", True

        self._converse(system, context.learnings_text(ctx, state), [TOOL_READ, TOOL_NOTES],
                       {"read_file": tools.read_file, "update_notes": update_notes},
                       usage, LEARNINGS_MAX_TURNS, finish="update_notes")
        after = notes.read_text(encoding="utf-8") if notes.exists() else ""
        if after == before:
            return None
        return Proposal(
            description=f"update notes: {context.TRIED_HEADING}, {context.LEARNINGS_HEADING}",
            asi={"hypothesis": "consolidated notes make later proposals better informed"},
            usage=usage.as_dict(),
            model=self.model,
        )

    # ------------------------------------------------------------- conversation
    def _fail(self, message: str, usage: Usage) -> ProposalFailed:
        return ProposalFailed(self.scrub(message), usage.as_dict(), self.model)

    def _converse(self, system: list[dict[str, Any]], first: str, tools: list[dict[str, Any]],
                  handlers: dict[str, Callable[[Any], Any]], usage: Usage, max_turns: int, *, finish: str) -> Any:
        """Run the tool loop until the `finish` tool succeeds; returns its result."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": first}]}]
        for turn in range(1, max_turns + 1):
            _move_cache_breakpoint(messages)
            resp = self._create(system, messages, tools, usage)
            usage.add_response(resp.usage)
            messages.append({"role": "assistant", "content": resp.content})
            outcome = self._run_tools(resp.content, handlers, usage, finish)
            if outcome.final is not None:
                return outcome.final
            if resp.stop_reason == "refusal":
                raise self._fail("the model declined to continue (stop_reason refusal)", usage)
            content: list[dict[str, Any]] = list(outcome.results)
            if not outcome.results:
                why = (f"Your reply hit the output limit ({MAX_TOKENS} tokens). Use edit_file for small changes "
                       "and keep your reasoning short." if resp.stop_reason == "max_tokens"
                       else "Continue by calling a tool.")
                content.append({"type": "text", "text": f"{why} Finish with {finish}."})
            if turn == max_turns - 1:
                content.append({"type": "text", "text": f"One turn left: call {finish} now; the edits made so far are in place."})
            messages.append({"role": "user", "content": content})
        raise self._fail(f"the model did not call {finish} within {max_turns} turns", usage)

    def _run_tools(self, blocks: list[Any], handlers: dict[str, Callable[[Any], Any]], usage: Usage,
                   finish: str) -> _Turn:
        out = _Turn()
        for block in blocks:
            if getattr(block, "type", None) != "tool_use":
                continue
            handler = handlers.get(block.name)
            try:
                if handler is None:
                    raise ToolError(f"unknown tool {block.name!r}; available: {', '.join(handlers)}")
                result = handler(block.input)
                if block.name == finish:
                    text, final = result
                    out.final = final
                else:
                    text = result
                out.results.append({"type": "tool_result", "tool_use_id": block.id, "content": self.scrub(text)})
            except ToolError as exc:
                usage.tool_errors += 1
                out.results.append({"type": "tool_result", "tool_use_id": block.id,
                                    "content": self.scrub(str(exc)), "is_error": True})
            except (OSError, UnicodeDecodeError) as exc:
                usage.tool_errors += 1
                out.results.append({"type": "tool_result", "tool_use_id": block.id,
                                    "content": self.scrub(f"{type(exc).__name__}: {exc}"), "is_error": True})
        return out

    def _create(self, system: list[dict[str, Any]], messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                usage: Usage) -> Any:
        """One Messages API call with this module's retry policy (see the module docstring)."""
        anthropic = self._anthropic
        # Plain JSON-shaped dicts, not the SDK's TypedDicts: the request is what context.py builds.
        request: dict[str, Any] = {"model": self.model, "max_tokens": MAX_TOKENS, "system": system,
                                   "messages": messages, "tools": tools}
        backoffs = 0
        attempts = 0
        while True:
            usage.requests += 1
            attempts += 1
            try:
                return self.client.messages.create(**request)
            except anthropic.APIStatusError as exc:
                status = exc.status_code
                kind = getattr(exc, "type", None) or _error_type(exc.body) or "error"
                detail = getattr(exc, "api_message", None) or _error_message(exc.body) or ""
                why = f"API error {status} ({kind}){': ' + detail if detail else ''}"
                should = exc.response.headers.get("x-should-retry")
                if should == "false" or (status not in RETRYABLE_STATUS and should != "true"):
                    raise self._fail(f"Anthropic {why}", usage) from None
                delay = _retry_after(exc.response.headers)
            except anthropic.APIConnectionError as exc:
                why = "request timed out" if isinstance(exc, anthropic.APITimeoutError) else "connection error"
                delay = None
            except anthropic.APIError as exc:
                raise self._fail(f"Anthropic API error: {type(exc).__name__}: {exc}", usage) from None
            if delay is None:
                if backoffs >= MAX_BACKOFF_ATTEMPTS:
                    raise self._fail(f"Anthropic {why}; gave up after {backoffs} retries", usage)
                delay = min(BACKOFF_FIRST_S * 2**backoffs, BACKOFF_CAP_S) * self._rng.uniform(0.8, 1.0)
                backoffs += 1
            delay = max(delay, 0.5)
            if attempts >= MAX_ATTEMPTS or usage.wait_s + delay > self.max_wait_s:
                raise self._fail(
                    f"Anthropic {why}; gave up after waiting {usage.wait_s:.0f}s over {attempts} attempts "
                    f"(next wait {delay:.0f}s would pass the {self.max_wait_s:g}s limit)", usage)
            self.sleep(delay)
            usage.retries += 1
            usage.wait_s += delay


def _move_cache_breakpoint(messages: list[dict[str, Any]]) -> None:
    """One breakpoint on the newest user block, so each turn reads the conversation so far from
    the cache (the two system breakpoints are set by `context.build_request_parts`)."""
    for m in messages:
        if m["role"] == "user":
            for block in m["content"]:
                block.pop("cache_control", None)
    messages[-1]["content"][-1]["cache_control"] = dict(context.EPHEMERAL)


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, else `retry-after` in seconds."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            v = float(raw) * scale
        except ValueError:
            continue
        if math.isfinite(v) and v >= 0:
            return v
    return None


def _error_type(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("type") if isinstance(err, dict) else None


def _error_message(body: Any) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("message") if isinstance(err, dict) else None
