"""The built-in Claude agent against a local fake Messages API (tests/fake_anthropic.py).

The real `anthropic` client talks HTTP to a scripted server on 127.0.0.1; workspaces are real
toy workspaces (tests/toy.py). No network, no real sleeps (the agent's `sleep` is injected).

Run: /work/main/.venv/bin/python -m pytest tests/test_claude.py -q
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, error, message, text, thinking, tool_use
from toy import TRAIN, cli, git, lines, make_toy

from harness import context, ledger
from harness.agents.api import MAX_BACKOFF_ATTEMPTS, ProposalFailed
from harness.agents.base import AgentError, PastRun, ProposalContext
from harness.agents.claude import DEFAULT_MODEL, ClaudeAgent
from harness.agents.tools import WorkspaceTools
from harness.agents.usage import Usage, estimate_cost_usd

KEY = "sk-ant-api03-" + secrets.token_hex(24)


# ------------------------------------------------------------------------ helpers


@pytest.fixture
def fake():
    with FakeAnthropic() as server:
        yield server


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = make_toy(tmp_path_factory.mktemp("template") / "ws")
    assert cli(root, "experiment", "-d", "baseline") == 0
    return root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Path:
    """A toy workspace after its baseline run (a copy of one made per module: init + baseline take ~0.4 s)."""
    return Path(shutil.copytree(template, tmp_path / "ws", symlinks=True))


def ctx_for(root: Path, feedback: str | None = None) -> ProposalContext:
    state = ledger.load_state(root / "autoresearch.jsonl")
    seg = state.current
    return ProposalContext(
        root=root, editable=("train.py",), metric_name="score", direction="higher", run_number=state.next_run,
        history=tuple(PastRun(r.run, r.status, r.value, r.description, r.asi, r.segment) for r in seg.runs),
        best_metric=seg.best, baseline_metric=seg.baseline, time_budget_s=5.0, seed=42, feedback=feedback,
    )


def agent_for(fake: FakeAnthropic, **kw: Any) -> tuple[ClaudeAgent, list[float]]:
    slept: list[float] = []
    return ClaudeAgent(api_key=KEY, base_url=fake.url, sleep=slept.append, **kw), slept


def edit_lr(new: str = "0.03") -> dict[str, Any]:
    return tool_use("edit_file", {"path": "train.py", "old_string": "LR = 0.01", "new_string": f"LR = {new}"})


def submit(desc: str = "LR 0.03", **extra: Any) -> dict[str, Any]:
    return tool_use("submit_experiment", {"description": desc, "hypothesis": "closer to the optimum", **extra})


def tool_results(req_json: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of a request's last user message."""
    return [b for b in req_json["messages"][-1]["content"] if b.get("type") == "tool_result"]


def assert_no_key_anywhere(fake: FakeAnthropic, root: Path) -> None:
    for r in fake.requests:
        assert KEY.encode() not in r.body  # only the auth header carries it
        assert any(KEY in v for v in r.headers.values())
    for p in root.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


# ------------------------------------------------------------------------ proposals


def test_text_and_tool_use_in_one_response_submits_with_usage_and_cost(fake, ws) -> None:
    fake.push(message(text("Raising LR towards 10**-1.5."), edit_lr(), submit(asi={"change": "LR 0.01->0.03"},
                                                                              next_action_hint="then WIDTH"),
                      input_tokens=1200, output_tokens=300, cache_read=0, cache_write=4000))
    agent, slept = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert p.description == "LR 0.03"
    assert p.asi == {"change": "LR 0.01->0.03", "hypothesis": "closer to the optimum", "next_action_hint": "then WIDTH"}
    assert p.model == DEFAULT_MODEL
    assert "LR = 0.03" in (ws / "train.py").read_text()
    u = p.usage
    assert (u["input_tokens"], u["output_tokens"], u["cache_read_input_tokens"], u["cache_creation_input_tokens"]) == (
        1200, 300, 0, 4000)
    assert u["cost_usd"] == pytest.approx((1200 * 2.0 + 300 * 10.0 + 4000 * 2.5) / 1e6)
    assert (u["turns"], u["requests"]) == (1, 1) and slept == []
    req = fake.requests[0].json
    assert {t["name"] for t in req["tools"]} == {"read_file", "edit_file", "write_file", "submit_experiment"}
    assert req["model"] == DEFAULT_MODEL and req["max_tokens"] > 0
    # the stable prefix is cacheable; the volatile part (digest, files) is in the user message
    assert [b.get("cache_control") for b in req["system"]] == [{"type": "ephemeral"}] * 2
    assert "Simplicity criterion" in req["system"][0]["text"]
    user = req["messages"][0]["content"][0]["text"]
    assert "## Ledger digest" in user and "LR = 0.01" in user and "Experiment #2" in user
    assert "LR = 0.01" not in req["system"][0]["text"] + req["system"][1]["text"]
    assert_no_key_anywhere(fake, ws)


def test_several_tool_turns_with_thinking_blocks_and_moving_cache_breakpoint(fake, ws) -> None:
    fake.push(
        message(thinking("which constant?"), tool_use("read_file", {"path": "eval.py"}), cache_write=3000),
        message(thinking("edit it"), edit_lr("0.032"), cache_read=3000),
        message(submit("LR 0.032"), cache_read=3500),
    )
    agent, _ = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert p.description == "LR 0.032" and p.usage["turns"] == 3
    assert p.usage["cache_read_input_tokens"] == 6500
    r2, r3 = fake.requests[1].json, fake.requests[2].json
    # the eval source went back as a tool result, and the thinking block was passed back unchanged
    assert "math.log10(m.LR)" in tool_results(r2)[0]["content"]
    assert r2["messages"][1]["content"][0]["type"] == "thinking" and r2["messages"][1]["content"][0]["signature"]
    assert tool_results(r3)[0]["content"].startswith("edited train.py")
    # exactly one message breakpoint, on the newest user block
    marked = [(i, j) for i, m in enumerate(r3["messages"]) for j, b in enumerate(m["content"])
              if isinstance(b, dict) and "cache_control" in b]
    assert marked == [(len(r3["messages"]) - 1, len(r3["messages"][-1]["content"]) - 1)]


def test_edit_outside_scope_is_refused_inside_the_tool(fake, ws) -> None:
    eval_before = (ws / "eval.py").read_text()
    fake.push(
        message(tool_use("edit_file", {"path": "eval.py", "old_string": "score = ", "new_string": "score = 100 + "}),
                tool_use("write_file", {"path": "../escape.py", "content": "x"}),
                tool_use("write_file", {"path": "autoresearch.toml", "content": "x"})),
        message(edit_lr(), submit()),
    )
    agent, _ = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    res = tool_results(fake.requests[1].json)
    assert all(r["is_error"] for r in res)
    assert "eval.py is not editable" in res[0]["content"] and "train.py" in res[0]["content"]
    assert "outside the workspace" in res[1]["content"]
    assert "autoresearch.toml is not editable" in res[2]["content"]
    assert (ws / "eval.py").read_text() == eval_before and not (ws.parent / "escape.py").exists()
    assert p.usage["refused_edits"] == 2 and p.usage["tool_errors"] == 3


def test_malformed_tool_input_is_an_error_result_not_a_crash(fake, ws) -> None:
    fake.push(
        message(tool_use("edit_file", {"path": "train.py", "old_string": "LR = 0.01"}),  # missing new_string
                tool_use("edit_file", {"path": "train.py", "old_string": 5, "new_string": "x"}),
                tool_use("read_file", {"path": ["not", "a", "string"]}),
                tool_use("submit_experiment", {"description": "x"}),  # no hypothesis
                tool_use("no_such_tool", {})),
        message(tool_use("edit_file", {"path": "train.py", "old_string": "LR = 0.5", "new_string": "LR = 1"}),
                tool_use("submit_experiment", {"description": "nothing changed", "hypothesis": "h"})),
        message(tool_use("write_file", {"path": "train.py", "content": "LR = (\n"}),
                submit("broken")),
        message(tool_use("write_file", {"path": "train.py", "content": TRAIN.replace("0.01", "0.03")}), submit()),
    )
    agent, _ = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    r1 = tool_results(fake.requests[1].json)
    assert [r["is_error"] for r in r1] == [True] * 5
    assert "missing required field 'new_string'" in r1[0]["content"]
    assert "'old_string' must be" in r1[1]["content"]
    assert "'path' must be a string" in r1[2]["content"]
    assert "'hypothesis'" in r1[3]["content"]
    assert "unknown tool" in r1[4]["content"]
    r2 = tool_results(fake.requests[2].json)
    assert "not found" in r2[0]["content"] and "no editable file has changed" in r2[1]["content"]
    r3 = tool_results(fake.requests[3].json)
    assert "does not parse" in r3[0]["content"] and "does not parse" in r3[1]["content"] and r3[1]["is_error"]
    assert p.description == "LR 0.03" and p.usage["tool_errors"] == 8


def test_rate_limit_waits_exactly_retry_after_then_succeeds(fake, ws) -> None:
    fake.push(error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit",
                    {"retry-after": "7"}),
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert slept == [7.0]
    assert (p.usage["requests"], p.usage["turns"], p.usage["retries"], p.usage["wait_s"]) == (2, 1, 1, 7.0)


def test_long_rate_limits_are_waited_out_not_counted_as_retries(fake, ws) -> None:
    # more retry-after waits than the backoff allows, one of them 30 minutes: all waited out
    waits = ["1800"] + ["2"] * (MAX_BACKOFF_ATTEMPTS + 2)
    fake.push(*[error(429, "rate_limit_error", "slow down", {"retry-after": w}) for w in waits],
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    agent.propose(ctx_for(ws))
    assert slept == [float(w) for w in waits]


@pytest.mark.parametrize("status,kind", [(429, "rate_limit_error"), (529, "overloaded_error")])
def test_retry_after_ms_is_obeyed_to_the_millisecond_before_retry_after(fake, ws, status, kind) -> None:
    # retry-after-ms wins over the coarser retry-after, and neither uses the 4-5 s first backoff
    fake.push(error(status, kind, "slow down", {"retry-after-ms": "1200", "retry-after": "2"}),
              error(status, kind, "slow down", {"retry-after-ms": "1200"}),
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert slept == [pytest.approx(1.2), pytest.approx(1.2)]
    assert p.usage["retries"] == 2 and len(fake.requests) == 3


def test_x_should_retry_false_stops_a_retryable_status_at_once(fake, ws) -> None:
    fake.push(error(529, "overloaded_error", "Overloaded", {"x-should-retry": "false"}),
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    with pytest.raises(ProposalFailed, match="529"):
        agent.propose(ctx_for(ws))
    assert slept == [] and len(fake.requests) == 1


def test_x_should_retry_true_retries_a_status_not_retried_by_default(fake, ws) -> None:
    fake.push(error(400, "invalid_request_error", "try again", {"x-should-retry": "true", "retry-after-ms": "600"}),
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert slept == [pytest.approx(0.6)] and len(fake.requests) == 2 and p.description == "LR 0.03"


def test_a_wait_past_max_wait_fails_cleanly_without_sleeping(fake, ws) -> None:
    fake.push(error(429, "rate_limit_error", "daily limit", {"retry-after": "90000"}))
    agent, slept = agent_for(fake, max_wait_s=3600)
    with pytest.raises(ProposalFailed, match="3600s limit") as info:
        agent.propose(ctx_for(ws))
    assert slept == [] and info.value.usage["requests"] == 1


def test_overloaded_529_backs_off_then_succeeds(fake, ws) -> None:
    fake.push(error(529, "overloaded_error", "Overloaded"), error(529, "overloaded_error", "Overloaded"),
              message(edit_lr(), submit()))
    agent, slept = agent_for(fake)
    p = agent.propose(ctx_for(ws))
    assert len(slept) == 2 and 4.0 <= slept[0] <= 5.0 and 8.0 <= slept[1] <= 10.0  # exponential, with jitter
    assert p.usage["retries"] == 2


def test_overload_that_never_ends_fails_with_usage(fake, ws) -> None:
    fake.push(message(tool_use("read_file", {"path": "eval.py"})),
              *[error(529, "overloaded_error", "Overloaded")] * (MAX_BACKOFF_ATTEMPTS + 1))
    agent, slept = agent_for(fake)
    with pytest.raises(ProposalFailed, match=f"529.*gave up after {MAX_BACKOFF_ATTEMPTS} retries") as info:
        agent.propose(ctx_for(ws))
    assert len(slept) == MAX_BACKOFF_ATTEMPTS
    assert info.value.usage["turns"] == 1 and info.value.usage["cost_usd"] > 0
    assert info.value.model == DEFAULT_MODEL


def test_non_retryable_error_fails_at_once_and_never_shows_the_key(fake, ws) -> None:
    fake.push(error(401, "authentication_error", f"invalid x-api-key {KEY}"))
    agent, slept = agent_for(fake)
    with pytest.raises(ProposalFailed) as info:
        agent.propose(ctx_for(ws))
    msg = str(info.value)
    assert "401" in msg and "authentication_error" in msg and KEY not in msg and "[redacted]" in msg
    assert slept == [] and len(fake.requests) == 1
    assert isinstance(info.value, AgentError) and KEY not in repr(agent)


def test_model_that_never_submits_hits_the_turn_limit(fake, ws) -> None:
    fake.push(*[message(tool_use("read_file", {"path": "train.py"})) for _ in range(4)])
    agent, _ = agent_for(fake, max_turns=4)
    with pytest.raises(ProposalFailed, match="did not call submit_experiment within 4 turns") as info:
        agent.propose(ctx_for(ws))
    assert info.value.usage["turns"] == 4 and info.value.usage["input_tokens"] == 4000
    last_user = fake.requests[-1].json["messages"][-1]["content"]
    assert "One turn left" in last_user[-1]["text"]


def test_prose_without_tools_and_max_tokens_get_a_nudge(fake, ws) -> None:
    fake.push(message(text("I think we should raise LR.")),
              message(text("Let me write out the whole"), stop_reason="max_tokens"),
              message(edit_lr(), submit()))
    agent, _ = agent_for(fake)
    agent.propose(ctx_for(ws))
    assert "Continue by calling a tool" in fake.requests[1].json["messages"][-1]["content"][0]["text"]
    assert "output limit" in fake.requests[2].json["messages"][-1]["content"][0]["text"]


def test_feedback_of_a_refused_proposal_reaches_the_model(fake, ws) -> None:
    fake.push(message(edit_lr("0.04"), submit("LR 0.04")))
    agent, _ = agent_for(fake)
    why = "Your proposal was refused: duplicate: the same change as experiment #7 ('LR 0.03', discard)."
    agent.propose(ctx_for(ws, feedback=why))
    user = fake.requests[0].json["messages"][0]["content"][0]["text"]
    assert why in user and "refused" in user.split("## Your task")[1]


def test_refuses_to_start_without_a_key(monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError, match="ANTHROPIC_API_KEY is not set"):
        ClaudeAgent()


def test_key_and_base_url_come_from_the_environment(fake, ws, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    fake.push(message(edit_lr(), submit()))
    ClaudeAgent(model="claude-opus-5-5", sleep=lambda s: None).propose(ctx_for(ws))
    assert fake.requests[0].json["model"] == "claude-opus-5-5"
    assert_no_key_anywhere(fake, ws)


def test_unknown_model_records_cost_as_unknown(fake, ws) -> None:
    fake.push(message(edit_lr(), submit()))
    agent, _ = agent_for(fake, model="claude-future-9")
    p = agent.propose(ctx_for(ws))
    assert p.usage["cost_usd"] is None and "no price known" in p.usage["cost_note"]
    assert p.model == "claude-future-9"


# ----------------------------------------------------------------------- learnings


def test_update_learnings_rewrites_only_its_two_sections(fake, ws) -> None:
    notes = ws / "autoresearch.md"
    before = notes.read_text()
    fake.push(message(tool_use("update_notes", {"whats_been_tried": "- LR: 0.01 baseline (#1)",
                                                "learnings": "- nothing yet beyond the baseline (#1)"})))
    agent, _ = agent_for(fake)
    p = agent.update_learnings(ctx_for(ws))
    after = notes.read_text()
    assert p is not None and p.usage["turns"] == 1 and p.model == DEFAULT_MODEL
    assert context.section_body(after, "What's been tried") == "- LR: 0.01 baseline (#1)"
    assert context.section_body(after, "Learnings") == "- nothing yet beyond the baseline (#1)"
    assert after.split("## What's been tried")[0] == before.split("## What's been tried")[0]
    req = fake.requests[0].json
    assert {t["name"] for t in req["tools"]} == {"read_file", "update_notes"}
    # the same notes again: nothing changed, nothing to commit
    fake.push(message(tool_use("update_notes", {"whats_been_tried": "- LR: 0.01 baseline (#1)",
                                                "learnings": "- nothing yet beyond the baseline (#1)"})))
    assert agent.update_learnings(ctx_for(ws)) is None
    assert git(ws, "status", "--porcelain") == "M autoresearch.md"


def test_learnings_and_proposals_share_the_system_prefix(fake, ws) -> None:
    fake.push(message(tool_use("update_notes", {"whats_been_tried": "a", "learnings": "b"})),
              message(edit_lr(), submit()))
    agent, _ = agent_for(fake)
    agent.update_learnings(ctx_for(ws))
    git(ws, "commit", "-qam", "notes")
    agent.propose(ctx_for(ws))
    assert fake.requests[0].json["system"][0] == fake.requests[1].json["system"][0]


# --------------------------------------------------------------- tools, directly


def tools_for(root: Path) -> WorkspaceTools:
    return WorkspaceTools(root, ("train.py",), lambda s: s.replace(KEY, "[redacted]"), Usage("m"))


def test_read_file_confinement(ws, tmp_path) -> None:
    from harness.agents.tools import ToolError

    t = tools_for(ws)
    (tmp_path / "secret.txt").write_text("outside")
    (ws / "link.txt").symlink_to(tmp_path / "secret.txt")
    (ws / ".env").write_text(f"ANTHROPIC_API_KEY={KEY}\n")
    (ws / "notes.txt").write_text(f"a key pasted by mistake: {KEY}\n")
    for bad, why in [("../secret.txt", "outside"), ("link.txt", "outside"), ("/etc/passwd", "outside"),
                     (".git/config", ".git"), (".autoresearch/state.json", "runs/"), (".env", "credentials"),
                     ("missing.py", "does not exist"), ("", "non-empty"), ("a\0b", "invalid path")]:
        with pytest.raises(ToolError, match=why):
            t.read_file({"path": bad})
    assert "[redacted]" in t.read_file({"path": "notes.txt"}) and KEY not in t.read_file({"path": "notes.txt"})
    assert "METRIC score=" in t.read_file({"path": ".autoresearch/runs/1.log"})
    listing = t.read_file({"path": "."})
    assert "train.py" in listing and ".git" not in listing.split("\n", 1)[1].split()
    big = "\n".join(f"line {i}" for i in range(20000))
    (ws / "big.log").write_text(big)
    shown = t.read_file({"path": "big.log"})
    assert "characters cut" in shown and "line 19999" in shown and len(shown) < 32_000
    assert t.read_file({"path": "big.log", "start_line": 100, "max_lines": 2}).endswith("line 99\nline 100")
    with open(ws / "huge.bin", "wb") as f:  # sparse: 9 MB of NULs, never read whole
        f.truncate(9_000_000)
    assert "binary file" in t.read_file({"path": "huge.bin"})


def test_edit_file_needs_a_unique_exact_match(ws) -> None:
    from harness.agents.tools import ToolError

    t = tools_for(ws)
    (ws / "train.py").write_text(TRAIN + "X = 1\nX = 1\n")
    with pytest.raises(ToolError, match="occurs 2 times"):
        t.edit_file({"path": "train.py", "old_string": "X = 1", "new_string": "X = 2"})
    with pytest.raises(ToolError, match="same"):
        t.edit_file({"path": "train.py", "old_string": "LR", "new_string": "LR"})
    assert "edited train.py" in t.edit_file({"path": "./train.py", "old_string": "WIDTH = 8", "new_string": "WIDTH = 16"})
    assert "WIDTH = 16" in (ws / "train.py").read_text()


# ---------------------------------------------------------------- digest and request


def _ledger(runs: list[tuple[str, float | None, str, dict[str, Any]]]) -> ledger.LedgerState:
    entries: list[ledger.Entry] = [ledger.SessionHeader("t", "score", "", "higher")]
    for i, (status, value, desc, asi) in enumerate(runs, start=1):
        entries.append(ledger.parse_entry({"run": i, "commit": f"{i:07x}", "metric": value or 0, "status": status,
                                           "description": desc, "timestamp": 1700000000 + i, "asi": asi}))
    return ledger.fold(entries)


def test_digest_lists_kept_deltas_recent_runs_and_deduplicated_dead_ends() -> None:
    state = _ledger([
        ("keep", 1.0, "baseline", {"hypothesis": "baseline"}),
        ("keep", 1.5, "raise LR", {"hypothesis": "faster"}),
        ("discard", 1.2, "Add dropout.", {"hypothesis": "regularize", "rollback_reason": "worse by 0.3"}),
        ("discard", 1.1, "add dropout", {"hypothesis": "again", "next_action_hint": "stop trying dropout"}),
        ("crash", None, "add  Dropout", {"hypothesis": "h", "rollback_reason": "exit code 1"}),
        ("keep", 1.7, "wider MLP", {"hypothesis": "capacity"}),
    ])
    d = context.ledger_digest(state, "score", "higher")
    assert "Baseline: #1 score=1" in d and "Best: #6 score=1.7 (+0.7 over baseline, +70.00%)" in d
    assert "#2 score=1.5 (+0.5): raise LR" in d and "#6 score=1.7 (+0.2): wider MLP" in d
    assert "#5 crash no result: add Dropout" in d and "#3 discard score=1.2 (-0.3 vs best then): Add dropout." in d
    assert "why not kept: worse by 0.3" in d and "next: stop trying dropout" in d
    assert "- Add dropout.  (x3: 2 discard, 1 crash; last #5)" in d
    # lower is better: the same numbers read the other way
    low = context.ledger_digest(_ledger([("keep", 2.0, "baseline", {}), ("keep", 1.5, "smaller", {})]), "loss", "lower")
    assert "#2 loss=1.5 (+0.5): smaller" in low and "Lower loss is better" in low


def test_digest_stays_bounded_however_long_the_ledger() -> None:
    rows = [("keep", 0.0, "baseline", {"hypothesis": "b"})]
    for i in range(2, 3001):
        kept = i % 25 == 0
        rows.append(("keep" if kept else ("crash" if i % 7 == 0 else "discard"), i / 1000 if kept else 0.0001 * i,
                     f"idea number {i % 400} " + "with a long explanation " * 10,
                     {"hypothesis": "because " * 80, "rollback_reason": "worse " * 50, "next_action_hint": "try " * 50}))
    sizes = []
    for n in (10, 100, 1000, 3000):
        d = context.ledger_digest(_ledger(rows[:n]), "score", "higher")
        sizes.append(len(d))
        assert len(d) <= context.DIGEST_MAX_CHARS
    d = context.ledger_digest(_ledger(rows), "score", "higher")
    assert "smaller earlier kept changes not listed" in d and "more distinct dead ends" in d
    assert "#3000" in d  # the most recent run is always there
    assert context.estimate_tokens(d) <= context.DIGEST_MAX_CHARS / 3.5 + 1


def test_replace_section_touches_nothing_else() -> None:
    text = "# T\n\nintro\n\n## What's been tried\nold\nlines\n\n### sub\nx\n\n## Learnings\n_(tbd)_\n"
    out = context.replace_section(text, "What’s been tried", "- new")
    assert out == "# T\n\nintro\n\n## What's been tried\n- new\n\n## Learnings\n_(tbd)_\n"
    assert context.replace_section("# T\n", "Learnings", "- a") == "# T\n\n## Learnings\n- a\n"


def test_cost_estimates() -> None:
    u = {"input_tokens": 1_000_000, "output_tokens": 1_000_000, "cache_read_input_tokens": 1_000_000,
         "cache_creation_input_tokens": 1_000_000}
    assert estimate_cost_usd("claude-sonnet-5-5", u) == pytest.approx(2 + 10 + 0.10 + 2.5)
    assert estimate_cost_usd("claude-haiku-4-5-20251001", u) == pytest.approx(1 + 5 + 0.10 + 1.25)
    assert estimate_cost_usd("claude-opus-5-5[1m]", u) == pytest.approx(4 + 20 + 0.20 + 5)
    small = {"input_tokens": 50_000, "output_tokens": 1000}
    assert estimate_cost_usd("claude-haiku-5-5", small) == pytest.approx((50_000 * 0.10 + 1000 * 0.50) / 1e6)
    assert estimate_cost_usd("claude-haiku-5-5", u) == pytest.approx(0.5 + 2.5 + 0.05 + 0.625)  # long-prompt tier
    assert estimate_cost_usd("gpt-9", u) is None


# ------------------------------------------------------------------- end to end


def test_cli_run_with_the_claude_agent(fake, tmp_path, monkeypatch) -> None:
    # The only end-to-end test of the claude agent: never skipped. `anthropic` is a hard
    # dependency and make_agent knows "claude", so a missing precondition is a failure here.
    root = make_toy(tmp_path / "ws")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    values = iter(["0.02", "0.03", "0.05", "0.04", "0.025"])

    def reply(req: dict[str, Any]):
        names = {t["name"] for t in req["tools"]}
        if "update_notes" in names:
            return message(tool_use("update_notes", {"whats_been_tried": "- LR sweep", "learnings": "- LR up helps"}))(req)
        v = next(values)
        return message(text(f"LR {v}"), tool_use("write_file", {"path": "train.py", "content": TRAIN.replace("0.01", v)}),
                       submit(f"LR {v}"), cache_read=2000)(req)

    fake.push(*[reply] * 10)
    assert cli(root, "run", "--agent", "claude", "--max-iterations", "3") == 0
    recs = [x for x in lines(root) if "run" in x]
    assert [r["description"] for r in recs] == ["baseline", "LR 0.02", "LR 0.03"]
    for r in recs[1:]:
        a = r["agent"]
        assert a["name"] == "claude" and a["model"] == DEFAULT_MODEL
        assert a["input_tokens"] == 1000 and a["cache_read_input_tokens"] == 2000
        assert a["cost_usd"] == pytest.approx((1000 * 2 + 200 * 10 + 2000 * 0.1) / 1e6)
    assert "LR = 0.03" in (root / "train.py").read_text()
    assert json.dumps(recs).find(KEY) == -1
    assert_no_key_anywhere(fake, root)
