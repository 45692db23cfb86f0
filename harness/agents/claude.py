"""Built-in research agent `claude`: the Anthropic Messages API with tool use.

Every proposal is one short, stateless conversation: the request is rebuilt from program.md,
the session notes, a bounded ledger digest and the editable files (`harness.context`); the
model reads files, edits the editable ones and ends with `submit_experiment`. It answers
through tool calls, never scraped prose, and the controller validates the result as it does
for any agent.

The pieces it drives: `agents.api` (the call, its retries and the key scrubbing; any API
failure is `ProposalFailed` with the usage so far), `agents.usage` (tokens and cost per
request, returned as `Proposal.usage` for the ledger line) and `agents.tools` (the workspace
tools). Cost: prompt caching on the two stable system blocks and on the growing conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import context, ledger
from harness.agents.api import MAX_TOKENS, MessagesClient, ProposalFailed
from harness.agents.base import Proposal, ProposalContext
from harness.agents.tools import (
    TOOL_EDIT,
    TOOL_NOTES,
    TOOL_READ,
    TOOL_SUBMIT,
    TOOL_WRITE,
    ToolError,
    WorkspaceTools,
    arg,
)
from harness.agents.usage import Usage

DEFAULT_MODEL = "claude-sonnet-5-5"
LEARNINGS_MAX_TURNS = 4


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
        sleep: Callable[[float], None] | None = None,
        max_wait_s: float = 3600,
    ):
        self.model = model
        self.max_turns = max_turns
        self.api = MessagesClient(model=model, api_key=api_key, base_url=base_url, sleep=sleep,
                                  max_wait_s=max_wait_s)

    def __repr__(self) -> str:  # never show the key
        return f"ClaudeAgent(model={self.model!r}, max_turns={self.max_turns})"

    def scrub(self, text: str) -> str:
        """Remove the API key (and anything shaped like an Anthropic key) from a text."""
        return self.api.scrub(text)

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
            tried = arg(inp, "whats_been_tried", str)
            learned = arg(inp, "learnings", str)
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
        return self.api.fail(message, usage)

    def _converse(self, system: list[dict[str, Any]], first: str, tools: list[dict[str, Any]],
                  handlers: dict[str, Callable[[Any], Any]], usage: Usage, max_turns: int, *, finish: str) -> Any:
        """Run the tool loop until the `finish` tool succeeds; returns its result."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": first}]}]
        for turn in range(1, max_turns + 1):
            _move_cache_breakpoint(messages)
            resp = self.api.create(system, messages, tools, usage)
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


def _move_cache_breakpoint(messages: list[dict[str, Any]]) -> None:
    """One breakpoint on the newest user block, so each turn reads the conversation so far from
    the cache (the two system breakpoints are set by `context.build_request_parts`)."""
    for m in messages:
        if m["role"] == "user":
            for block in m["content"]:
                block.pop("cache_control", None)
    messages[-1]["content"][-1]["cache_control"] = dict(context.EPHEMERAL)

