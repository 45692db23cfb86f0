"""How big is one proposal's request as the ledger grows? (the built-in Claude agent)

Builds a workspace, appends a synthetic ledger of N run lines (realistic descriptions and
ASI; keeps, discards, crashes), then builds the request of the next proposal and reports its
size: characters and estimated tokens (chars / 3.5, see harness/context.py) for each part,
and the JSON body the real `anthropic` client sends, captured by the fake Messages API of
tests/fake_anthropic.py. Nothing leaves the machine.

Run:
  .venv/bin/python scripts/bench_context.py                      # toy train.py, 10 and 1,000 lines
  .venv/bin/python scripts/bench_context.py --train assets/pretrain/train.py --lines 10 1000 10000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the toy target and the fake server live with the tests

from fake_anthropic import FakeAnthropic, message, tool_use  # noqa: E402
from toy import TRAIN, make_toy  # noqa: E402

from harness import context, ledger  # noqa: E402
from harness.agents.api import ProposalFailed  # noqa: E402
from harness.agents.base import PastRun, ProposalContext  # noqa: E402
from harness.agents.claude import ClaudeAgent  # noqa: E402
from harness.agents.tools import TOOL_EDIT, TOOL_READ, TOOL_SUBMIT, TOOL_WRITE  # noqa: E402

IDEAS = [
    "raise MATRIX_LR to {v}", "lower EMBEDDING_LR to {v}", "DEPTH {v}", "warmdown ratio {v}", "weight decay {v}",
    "swap ReLU^2 for GELU in the MLP", "untie the value embeddings", "window pattern SSSL -> SSLL",
    "batch 2**{v} tokens", "add QK-norm before RoPE", "z-loss {v} on the logits", "remove the value residual",
]


def synth_ledger(path: Path, n: int, seed: int = 0) -> None:
    """Append n run lines after the config header: ~5% keeps, 10% crashes, the rest discards."""
    rng = random.Random(seed)
    best = 1.00
    for run in range(1, n + 1):
        idea = rng.choice(IDEAS).format(v=rng.choice([0.02, 0.04, 0.06, 10, 12, 19, 0.1, 0.5]))
        roll = rng.random()
        status = "keep" if run == 1 or roll < 0.05 else ("crash" if roll < 0.15 else "discard")
        if status == "keep" and run > 1:
            best -= rng.uniform(0.0005, 0.005)
        metric = best if status == "keep" else (0 if status == "crash" else best + rng.uniform(0.0001, 0.01))
        asi = {"hypothesis": f"{idea}: the 5-minute budget ends before the schedule's plateau, so this should "
                             "trade a little stability for faster early progress"}
        if status != "keep":
            asi["rollback_reason"] = ("exit code 1: CUDA out of memory at step 212" if status == "crash"
                                      else f"worse by {metric - best:.6f} than the best ({best:.6f})")
            asi["next_action_hint"] = "try a value halfway back, or pair it with a longer warmup"
        ledger.append(path, {"run": run, "commit": f"{run:07x}", "metric": round(metric, 6),
                             "metrics": {"val_bpb": round(metric, 6), "peak_vram_mb": 44000 + rng.randint(0, 4000)},
                             "status": status, "description": "baseline" if run == 1 else idea,
                             "timestamp": 1763700000 + 330 * run, "segment": 0, "confidence": None, "asi": asi})


def measure(train: Path | None, n: int, fake: FakeAnthropic) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # init's progress lines
            root = make_toy(Path(tmp) / "ws", train=train.read_text() if train else TRAIN)
        synth_ledger(root / "autoresearch.jsonl", n)
        state = ledger.load_state(root / "autoresearch.jsonl")
        seg = state.current
        ctx = ProposalContext(
            root=root, editable=("train.py",), metric_name="score", direction="lower", run_number=state.next_run,
            history=tuple(PastRun(r.run, r.status, r.value, r.description, r.asi, r.segment) for r in seg.runs),
            best_metric=seg.best, baseline_metric=seg.baseline, time_budget_s=300.0, seed=42,
        )
        t0 = time.perf_counter()
        system, user = context.build_request_parts(ctx, state)
        build_ms = (time.perf_counter() - t0) * 1000
        digest = context.ledger_digest(state, "score", "lower")
        # one real request through the SDK, to measure the JSON body it sends
        fake.push(message(tool_use("submit_experiment", {"description": "x", "hypothesis": "y"})))
        agent = ClaudeAgent(api_key="sk-ant-bench-not-a-key", base_url=fake.url, sleep=lambda s: None)
        with contextlib.suppress(ProposalFailed):  # the submit is refused (nothing changed); only request 1 matters
            agent.propose(ctx)
        body = next(r for r in fake.requests if r.json.get("messages") and len(r.json["messages"]) == 1).body
        fake.requests.clear()
        tools_chars = sum(len(str(t)) for t in (TOOL_READ, TOOL_EDIT, TOOL_WRITE, TOOL_SUBMIT))
        return {
            "lines": n,
            "system_chars": sum(len(b["text"]) for b in system),
            "user_chars": len(user),
            "digest_chars": len(digest),
            "tools_chars": tools_chars,
            "total_tokens": context.estimate_tokens("".join(b["text"] for b in system) + user) + context.estimate_tokens(" " * tools_chars),
            "cached_tokens": context.estimate_tokens("".join(b["text"] for b in system)) + context.estimate_tokens(" " * tools_chars),
            "volatile_tokens": context.estimate_tokens(user),
            "body_bytes": len(body),
            "build_ms": round(build_ms, 1),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, help="use this file as train.py (default: the toy target's)")
    p.add_argument("--lines", type=int, nargs="+", default=[10, 1000], help="ledger sizes to measure")
    args = p.parse_args()
    print(f"train.py: {args.train or 'toy (tests/toy.py)'}")
    print(f"{'ledger lines':>12} {'system ch':>10} {'user ch':>8} {'digest ch':>9} {'~tokens':>8} "
          f"{'cached':>7} {'volatile':>8} {'JSON body B':>11} {'build ms':>8}")
    with FakeAnthropic() as fake:
        for n in args.lines:
            m = measure(args.train, n, fake)
            print(f"{m['lines']:>12} {m['system_chars']:>10} {m['user_chars']:>8} {m['digest_chars']:>9} "
                  f"{m['total_tokens']:>8} {m['cached_tokens']:>7} {m['volatile_tokens']:>8} {m['body_bytes']:>11} "
                  f"{m['build_ms']:>8}")
    print("~tokens = chars / 3.5 over system + tools + first user message; cached = tools + system blocks "
          "(prompt-cached after the first request); JSON body = the bytes the anthropic client sent.")


if __name__ == "__main__":
    main()
