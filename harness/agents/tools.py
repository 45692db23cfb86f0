"""Workspace tools for the API agent: read_file, edit_file, write_file, submit_experiment, update_notes.

Each tool is a JSON schema sent to the model plus a method of `WorkspaceTools`. Every path is
confined to the workspace (symlinks resolved); writes go only to the editable files; .git, the
controller's state (except run logs and patches) and files that may hold credentials are not
readable; results are scrubbed of the API key by the caller's `scrub`. A call that cannot be done
raises `ToolError`, whose message goes back to the model as an error result.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import context
from harness.agents.base import Proposal
from harness.agents.usage import Usage

READ_MAX_CHARS = 30_000  # read_file shows head + tail beyond this, or a line window on request
BIG_FILE_BYTES = 8_000_000  # beyond this read_file never loads the whole file
_SECRET_NAMES = re.compile(r"(^|/)(\.env(\..*)?|\.netrc|.*\.pem)$")


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


def arg(inp: Any, name: str, kind: type, *, required: bool = True) -> Any:
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
        full, rel = self.resolve(arg(inp, "path", str))
        start = arg(inp, "start_line", int, required=False)
        count = arg(inp, "max_lines", int, required=False)
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
        full, rel = self.resolve(arg(inp, "path", str))
        old, new = arg(inp, "old_string", str), arg(inp, "new_string", str)
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
        full, rel = self.resolve(arg(inp, "path", str))
        content = arg(inp, "content", str)
        self._check_editable(rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content, encoding="utf-8")
        problem = _syntax_problem(rel, content)
        done = f"wrote {rel} ({content.count(chr(10)) + (0 if content.endswith(chr(10)) else 1)} lines)"
        return done + (f"\nwarning: {problem}; fix it before submitting" if problem else "")

    def submit(self, inp: Any) -> tuple[str, Proposal]:
        description = " ".join(arg(inp, "description", str).split())
        hypothesis = arg(inp, "hypothesis", str).strip()
        asi = arg(inp, "asi", dict, required=False) or {}
        hint = arg(inp, "next_action_hint", str, required=False)
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
