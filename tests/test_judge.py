"""The position-debiased pairwise judge (harness.judge, harness.judge_stats) against the local fake Messages API.

The real `anthropic` client (through harness.agents.api.MessagesClient) talks HTTP to tests/fake_anthropic.py
on 127.0.0.1; the fake judges are functions of the request, so they answer whatever order the threads ask in.
No network, no real sleeps.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, Reply, error, message, text

from harness import cli, judge, judge_stats
from harness.agents.api import MessagesClient
from harness.judge import Pair, Settings, judge_pairs
from harness.judge_stats import combine, parse_verdict, report, unswap

KEY = "sk-ant-api03-judge-test-0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures" / "judge"
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- helpers


def shown(req: dict[str, Any]) -> tuple[str, str]:
    """The answers a judgment request shows as A and as B."""
    content = req["messages"][0]["content"]
    a = re.search(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]", content, re.S)
    b = re.search(r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]", content, re.S)
    assert a and b, content
    return a.group(1), b.group(1)


def judge_by(decide: Callable[[str, str], str], delay_s: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """A fake judge: `decide(answer shown as A, answer shown as B)` gives the judgment's text."""
    def reply(req: dict[str, Any]) -> Reply:
        if delay_s:
            time.sleep(delay_s)
        return message(text(decide(*shown(req))))(req)
    return reply


def always_a(first: str, second: str) -> str:
    return "Assistant A explains it better.\n[[A]]"


def prefers_good(first: str, second: str) -> str:
    """Prefers the answer marked GOOD, whichever position it is in; ties when neither or both are."""
    verdict = "C" if ("GOOD" in first) == ("GOOD" in second) else ("A" if "GOOD" in first else "B")
    return f"Reasoning ... the format is [[A]], [[B]] or [[C]].\nFinal verdict: [[{verdict}]]"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def client_for(fake: FakeAnthropic) -> MessagesClient:
    return MessagesClient(model=judge.DEFAULT_MODEL, api_key=KEY, base_url=fake.url, sleep=lambda s: None,
                          say=lambda s: None)


def pairs(n: int, *, a_good: int = 0) -> list[Pair]:
    """n pairs; in the first `a_good` the a answer is the better one, in the rest b's is."""
    return [Pair(f"q{i}", f"What is {i} + {i}?", f"{2 * i}{' GOOD' if i < a_good else ''} (a)",
                 f"{2 * i}{'' if i < a_good else ' GOOD'} (b)") for i in range(n)]


def run(fake: FakeAnthropic, ps: list[Pair], tmp: Path, **kw: Any) -> judge.JudgeResult:
    settings = Settings(cache_dir=tmp / "cache", **kw)
    return judge_pairs(ps, settings, client=client_for(fake), say=lambda s: None)


# ------------------------------------------------------------------------------------------- the protocol


def test_each_pair_is_judged_in_both_orders_and_unswapped(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.always(judge_by(prefers_good))
    res = run(fake, [Pair("q1", "What is 2 + 2?", "4 GOOD", "5")], tmp_path, concurrency=1)
    bodies = [r.json for r in fake.requests]
    assert len(bodies) == 2
    assert [shown(b) for b in bodies] == [("4 GOOD", "5"), ("5", "4 GOOD")]  # a first, then b first
    # no sampling parameter: the API version of anthropic 2.x has none (a 400), see harness/judge.py
    assert not any({"temperature", "top_p", "top_k"} & set(b) for b in bodies)
    assert all("CORRECTNESS (0-5)" in b["system"][0]["text"] and "[[C]]" in b["system"][0]["text"] for b in bodies)
    assert all("What is 2 + 2?" in b["messages"][0]["content"] for b in bodies)
    # the judge said A, then B: both are a after unswapping, a win for a
    assert [(r.first, r.second, r.outcome) for r in res.results] == [("A", "B", "win")]
    assert res.report.win_rate == 1.0 and res.report.inconsistency_rate == 0.0


def test_a_judge_that_always_prefers_position_a_gives_one_half_and_full_inconsistency(fake: FakeAnthropic,
                                                                                      tmp_path: Path) -> None:
    fake.always(judge_by(always_a))
    res = run(fake, pairs(6, a_good=4), tmp_path)
    r = res.report
    assert len(fake.requests) == 12
    assert (r.n, r.wins, r.ties, r.losses) == (6, 0, 6, 0)
    assert r.win_rate_adjusted == 0.5
    assert r.inconsistency_rate == 1.0
    assert r.first_position_rate == 1.0
    assert r.win_rate_adjusted_se == 0.0 and r.error_rate == 0.0


def test_a_judge_that_prefers_the_better_answer_gives_its_share(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.always(judge_by(prefers_good))
    r = run(fake, pairs(4, a_good=3), tmp_path).report
    assert (r.n, r.wins, r.ties, r.losses) == (4, 3, 0, 1)
    assert (r.win_rate, r.loss_rate, r.win_rate_adjusted) == (0.75, 0.25, 0.75)
    assert r.inconsistency_rate == 0.0 and r.first_position_rate == 0.5
    assert r.win_rate_adjusted_se == pytest.approx(0.25)  # sd(1,1,1,0) = 0.5, / sqrt(4)


def test_unparseable_verdicts_are_errors_never_ties(fake: FakeAnthropic, tmp_path: Path) -> None:
    def sloppy(first: str, second: str) -> str:
        if first.startswith("0 "):
            return "Both are fine."  # no verdict at all
        if first.startswith("2 "):
            return "Final verdict: [[A]] or [[B]]"  # two on the last verdict line: no decision
        return prefers_good(first, second)

    fake.always(judge_by(sloppy))
    res = run(fake, pairs(4, a_good=4), tmp_path)
    r = res.report
    outcomes = {x.id: x.outcome for x in res.results}
    assert outcomes == {"q0": "error", "q1": "error", "q2": "win", "q3": "win"}
    assert (r.n, r.errors, r.ties, r.error_rate, r.win_rate_adjusted) == (2, 2, 0, 0.5, 1.0)


def test_parse_verdict_takes_the_last_token_and_refuses_a_split_decision() -> None:
    assert parse_verdict('Output "[[A]]" if A is better ... so overall\n[[B]]') == "B"  # FastChat would say A
    assert parse_verdict("[[C]]") == "C"
    assert parse_verdict("Verdict: [[A]].\n\nThat is all.") == "A"
    assert parse_verdict("no verdict") is None
    assert parse_verdict("[A] or [[D]]") is None
    assert parse_verdict("[[A]]\nfinal: [[A]] / [[B]]") is None
    assert parse_verdict("final: [[B]] (not [[B]])") == "B"  # the same token twice is not a conflict
    assert unswap("A", swapped=True) == "b" and unswap("B", swapped=True) == "a" and unswap("C", swapped=False) == "tie"
    assert combine("A", "B") == "win" and combine("B", "A") == "loss" and combine("A", "A") == "tie"
    assert combine("C", "C") == "tie" and combine("B", "C") == "tie" and combine(None, "A") == "error"


def test_identical_answers_tie_without_a_call(fake: FakeAnthropic, tmp_path: Path) -> None:
    res = run(fake, [Pair("q1", "2+2?", "The answer  is\n4", " The answer is 4 ")], tmp_path)
    assert fake.requests == []
    assert res.report.identical == 1 and res.report.ties == 1 and res.report.win_rate_adjusted == 0.5
    assert res.report.inconsistency_rate is None  # nothing was asked


def test_statistics_match_the_hand_computed_fixture() -> None:
    data = json.loads((FIXTURES / "stats.json").read_text())
    results = [judge_stats.identical(p["id"]) if p.get("identical") else judge_stats.judged(p["id"], p["first"], p["second"])
               for p in data["pairs"]]
    got = report(results).as_dict()
    for k, want in data["expected"].items():
        assert got[k] == pytest.approx(want, abs=1e-5), k


# ------------------------------------------------------------------------------------------- operation


def test_a_rerun_is_served_from_the_cache_with_zero_requests(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.always(judge_by(prefers_good))
    first = run(fake, pairs(3, a_good=2), tmp_path)
    assert len(fake.requests) == 6 and first.cached == 0 and first.cost_usd and first.cost_usd > 0
    again = run(fake, pairs(3, a_good=2), tmp_path)
    assert len(fake.requests) == 6  # not one more
    assert again.cached == 6 and again.requests == 0 and again.cost_usd == 0
    assert again.report == first.report
    stored = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in stored and "[[" in stored
    other = run(fake, pairs(3, a_good=2), tmp_path, model="claude-haiku-4-5")  # another judge: not its cache
    assert len(fake.requests) == 12 and other.cached == 0


def test_max_cost_stops_new_calls_and_says_what_was_not_judged(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.always(judge_by(prefers_good))  # each reply: 1000 input + 200 output tokens = $0.004 at sonnet-5-5
    res = run(fake, pairs(5, a_good=5), tmp_path, concurrency=1, max_cost_usd=0.01)
    assert len(fake.requests) == 3  # 0.004, 0.008, 0.012 >= 0.01: no fourth call
    assert res.cost_usd == pytest.approx(0.012)
    assert res.report.n == 1 and [i for i, _ in res.not_judged] == ["q1", "q2", "q3", "q4"]
    assert all("--max-cost" in why for _, why in res.not_judged)
    rest = run(fake, pairs(5, a_good=5), tmp_path)  # the judgments made are not paid again
    assert len(fake.requests) == 10 and rest.cached == 3 and rest.report.n == 5


def test_concurrency_is_bounded(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.always(judge_by(prefers_good, delay_s=0.05))
    res = run(fake, pairs(8, a_good=8), tmp_path, concurrency=3)
    assert len(fake.requests) == 16 and res.report.wins == 8
    assert 2 <= fake.max_in_flight <= 3


def test_an_api_error_leaves_that_pair_not_judged_and_the_key_scrubbed(fake: FakeAnthropic, tmp_path: Path) -> None:
    good = judge_by(prefers_good)
    fake.push(good, good, error(400, "invalid_request_error", f"bad request from key {KEY}"))
    fake.always(good)
    res = run(fake, pairs(2, a_good=2), tmp_path, concurrency=1)
    assert res.report.n == 1 and [i for i, _ in res.not_judged] == ["q1"]
    assert "400" in res.not_judged[0][1] and KEY not in res.not_judged[0][1]


def test_an_unreachable_api_fails_fast_with_one_line(tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: refuses connections
    try:
        client = MessagesClient(model=judge.DEFAULT_MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{s.getsockname()[1]}",
                                sleep=lambda _: None, say=lambda _: None)
        t0 = time.monotonic()
        with pytest.raises(judge.JudgeError) as exc:
            judge_pairs(pairs(4, a_good=2), Settings(cache_dir=tmp_path / "c", concurrency=4), client=client,
                        say=lambda _: None)
    finally:
        s.close()
    msg = str(exc.value)
    assert "unreachable" in msg and "4 attempts" in msg and "\n" not in msg and "--agent mutate" not in msg
    assert time.monotonic() - t0 < 5  # the first-contact retries (sleeps skipped here), one call at a time


# ------------------------------------------------------------------------------------------- the CLI


def write(path: Path, rows: list[dict[str, Any]] | str) -> Path:
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(ps: list[Pair], side: str) -> list[dict[str, Any]]:
    return [{"id": p.id, "prompt": p.prompt, "answer": getattr(p, side)} for p in ps]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    ps = pairs(3, a_good=2)
    return write(tmp_path / "a.jsonl", answers(ps, "a")), write(tmp_path / "b.jsonl", answers(ps, "b"))


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("autoresearch: error:"), err
    return err


def test_cli_refuses_bad_input_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             files: tuple[Path, Path]) -> None:
    a, b = (str(f) for f in files)
    assert "no such file" in one_error(capsys, ["judge", "--a", str(tmp_path / "nope.jsonl"), "--b", b])
    bad = write(tmp_path / "bad.jsonl", '{"id": 1, "prompt": "p", "answer": "x"}\n\n{"id": 2, oops}\n')
    assert "bad.jsonl:3: not valid JSON" in one_error(capsys, ["judge", "--a", str(bad), "--b", b])
    short = write(tmp_path / "short.jsonl", [{"id": "q0", "prompt": "p"}])
    assert "short.jsonl:1: missing answer" in one_error(capsys, ["judge", "--a", str(short), "--b", b])
    typed = write(tmp_path / "typed.jsonl", [{"id": "q0", "prompt": "p", "answer": 3}])
    assert "answer must be a string" in one_error(capsys, ["judge", "--a", str(typed), "--b", b])
    dup = write(tmp_path / "dup.jsonl", [{"id": "q0", "prompt": "p", "answer": "x"}] * 2)
    assert "appears twice" in one_error(capsys, ["judge", "--a", str(dup), "--b", b])
    fewer = write(tmp_path / "fewer.jsonl", answers(pairs(3, a_good=2)[:1], "a"))
    msg = one_error(capsys, ["judge", "--a", str(fewer), "--b", b])
    assert "2 id(s) only in --b (q1, q2)" in msg and "--intersection" in msg
    other = write(tmp_path / "other.jsonl", [{**r, "prompt": "another question"} for r in answers(pairs(3), "a")])
    assert "different prompts" in one_error(capsys, ["judge", "--a", str(other), "--b", b])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["judge", "--a", a, "--b", b, "--concurrency", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert "--max-cost must be a positive" in one_error(capsys, ["judge", "--a", a, "--b", b, "--max-cost", "0"])


def test_cli_without_a_key_says_so(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path, files: tuple[Path, Path]) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    err = one_error(capsys, ["judge", "--a", str(files[0]), "--b", str(files[1]), "--cache", str(tmp_path / "c")])
    assert "ANTHROPIC_API_KEY is not set" in err


def test_cli_end_to_end_json_and_table_in_a_real_process(fake: FakeAnthropic, tmp_path: Path,
                                                         files: tuple[Path, Path]) -> None:
    fake.always(judge_by(prefers_good))
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "harness.cli", "judge", "--a", str(files[0]), "--b", str(files[1]),
            "--cache", str(tmp_path / "c")]
    p = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["n"], out["wins"], out["losses"], out["requests"]) == (3, 2, 1, 6)
    assert out["win_rate_adjusted"] == pytest.approx(2 / 3) and out["not_judged"] == []
    assert "judge: 6/6 judgments" in p.stderr and KEY not in p.stdout + p.stderr



def test_cli_table_from_the_cache(fake: FakeAnthropic, tmp_path: Path, files: tuple[Path, Path],
                                  capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake.always(judge_by(prefers_good))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    argv = ["judge", "--a", str(files[0]), "--b", str(files[1]), "--cache", str(tmp_path / "c")]
    assert cli.main(argv) == 0 and len(fake.requests) == 6
    first = capsys.readouterr().out
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # a fully cached rerun needs no key, and makes no request
    assert cli.main(argv) == 0 and len(fake.requests) == 6
    out = capsys.readouterr().out
    assert "win rate adjusted  0.667 ±" in out and "6 judgment(s) from the cache" in out
    assert first.split("judge ")[0] == out.split("judge ")[0]  # the same table, but for what it cost


def test_help_explains_the_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["judge", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "both orders agree" in out and "[[C]]" in out and "--intersection" in out and "--max-cost" in out


# ------------------------------------------------------------------------------------ a target's judge metric


def _judged_session(tmp_path: Path, fake_executor: Any, fake_clock: Any, values: dict[str, float],
                    out: list[str]) -> tuple[Any, Path, list[Any]]:
    """A toy session whose runs write the fixed evaluation's answer files, judged through the real controller."""
    from toy import make_toy

    from harness import config as config_mod
    from harness.executor import answers_dir
    from harness.loop import Controller

    root = make_toy(tmp_path / "ws")
    envs: list[Any] = []

    def run_writing_answers(call: Any) -> float:
        envs.append(call.env)
        # what the real executor keeps of the fixed evaluation's $AUTORESEARCH_ANSWERS_DIR (tests/test_executor.py)
        kept = answers_dir(root / ".autoresearch", f"{call.key}.eval")
        kept.mkdir(parents=True)
        ps = pairs(4, a_good=int(call.key))  # run k: its answer is the better one for k of the 4 questions
        write(kept / "answers.jsonl", answers(ps, "a"))
        write(kept / "base_answers.jsonl", answers(ps, "b"))
        return values[call.key]

    cfg = config_mod.with_overrides(config_mod.load(root), judge="answers.jsonl")
    ctl = Controller(root, cfg, executor=fake_executor(root, run_writing_answers), clock=fake_clock,
                     printer=out.append, progress=False)
    return ctl, root, envs


class _LR:
    name = "scripted"

    def __init__(self) -> None:
        self.n = 0

    def propose(self, ctx: Any) -> Any:
        from toy import set_constant

        from harness.agents.base import Proposal
        self.n += 1
        set_constant(ctx.root, "LR", f"0.0{self.n + 1}")
        return Proposal(f"LR 0.0{self.n + 1}", {"hypothesis": "scripted"})


def test_a_kept_runs_line_gets_the_judge_metric_from_the_controller(
        fake: FakeAnthropic, tmp_path: Path, fake_executor: Any, fake_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from toy import lines
    fake.always(judge_by(prefers_good))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    out: list[str] = []
    ctl, root, envs = _judged_session(tmp_path, fake_executor, fake_clock, {"1": 1.0, "2": 1.2, "3": 0.5}, out)
    agent = _LR()
    statuses = [ctl.iterate(agent).decision.status for _ in range(3)]
    assert statuses == ["keep", "keep", "discard"]
    by_run = {r["run"]: r for r in lines(root) if r.get("type", "run") == "run" and "run" in r}
    assert by_run[1]["metrics"]["judge_win_rate"] == 0.25  # run k's answers are the better ones on k of 4
    assert by_run[2]["metrics"]["judge_win_rate"] == 0.5 and by_run[2]["metrics"]["score"] == 1.2
    assert by_run[2]["metrics"]["judge_win_rate_se"] > 0 and by_run[2]["judge"]["n"] == 4
    assert by_run[2]["judge"]["inconsistency_rate"] == 0.0 and by_run[2]["judge"]["model"] == judge.DEFAULT_MODEL
    assert "judge" not in by_run[3] and "judge_win_rate" not in by_run[3]["metrics"]  # a discard is not judged
    # two kept runs, 4 pairs each, both orders: 16 judgments, of which run 2 shares 3 pairs with run 1 (the cache)
    assert len(fake.requests) == 8 + 2
    assert any("judge: judge_win_rate 0.500" in s for s in out)
    assert all(not any("ANTHROPIC" in k for k in env) for env in envs)  # the runs never get the key


def test_without_a_key_the_judge_metric_is_absent_with_its_reason(
        fake: FakeAnthropic, tmp_path: Path, fake_executor: Any, fake_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from toy import lines
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    ctl, root, _ = _judged_session(tmp_path, fake_executor, fake_clock, {"1": 1.0}, [])
    assert ctl.iterate(None).decision.status == "keep"  # the run itself is unaffected
    line = lines(root)[-1]
    assert "judge_win_rate" not in line["metrics"] and "ANTHROPIC_API_KEY is not set" in line["judge"]["error"]
    assert fake.requests == []
