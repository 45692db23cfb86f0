"""The position-debiased pairwise judge: `autoresearch judge --a A.jsonl --b B.jsonl`, and a target's judge metric.

Each pair of answers to one question is judged twice by a Claude model, once with a's
answer shown first and once with b's, under MT-Bench's pairwise prompt (`pair-v2`, FastChat
`data/judge_prompts.jsonl`) plus seed 001's rubric with score anchors (correctness, helpfulness,
clarity); the decision rules and the statistics are harness.judge_stats. Identical answers are ties
without a call. MT-Bench's temperature 0 is not available on the current API (the sampling note below): a verdict is made
once and cached, so a rerun reproduces the report exactly.

Operation: the calls go through the Claude agent's client (harness.agents.api: retries, retry-after,
the first-contact policy, key scrubbing) from `concurrency` threads; the very first call is made alone,
so an unreachable API ends the command after the first-contact retries with one line, not N of them.
Every judgment's text is cached on disk under the sha256 of what determines it (model, prompt version,
system prompt, question, the two answers in their order): a rerun costs nothing, and a pair cut short by
`max_cost` costs only its missing half next time. Cost is estimated per response (harness.agents.usage);
once the spend reaches `max_cost` no new call starts, and the pairs left are reported as not judged.

The key is ANTHROPIC_API_KEY, read by the client and never written: the cache holds judgments only, and
error texts are scrubbed. A run's judge metric (`run_metric`) is computed by the controller after the
run's evaluation, from the answer files that evaluation wrote: the run's own code never holds the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.cli_common import UserError
from harness.judge_stats import Judged, Report, identical, judged, normalize, parse_verdict, report
from harness.secrets import scrub

DEFAULT_MODEL = "claude-sonnet-5-5"  # the agent's default; a judge stronger than the judged models (seed 001)
DEFAULT_CONCURRENCY = 4
# FastChat's judges get 2048; adaptive thinking (on by default for the 5-series models) counts toward it too,
# and a judgment cut off before its verdict is an error, so twice that.
MAX_TOKENS = 4096
# Sampling: temperature 0 (MT-Bench, posttrain.md §5) cannot be asked for: anthropic 2.x speaks API version 2026-10-21
# (anthropic/_constants.py ANTHROPIC_API_VERSION), whose Messages API has no temperature, top_p or top_k:
# `messages.create` takes none, and a body that carries one gets HTTP 400 "Extra inputs are not permitted",
# even temperature 1.0 (Synthorai, "Anthropic API 2026-10-21: temperature 1.0 is a 400 too", qiita.com
# /Synthorai/items/01a0067e88747257a4e6). So requests carry none, and the cache keeps every verdict fixed.
PROMPT_VERSION = "pair-v2+rubric-1"  # part of the cache key: change it whenever SYSTEM or USER_TEMPLATE changes
SHOW_MISSING = 5  # ids listed in an error about unmatched ids

# FastChat's pair-v2 system prompt (posttrain.md §5), with seed 001's rubric and anchors, the explanation
# first (chain-of-thought judging, seed 001) and the verdict as the last line.
SYSTEM = """\
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to \
the user question displayed below. Avoid any position biases and ensure that the order in which the responses \
were presented does not influence your decision. Do not allow the length of the responses to influence your \
evaluation. Do not favor certain names of the assistants. Be as objective as possible.

Evaluate each response on these criteria:
1. CORRECTNESS (0-5): Is the answer factually accurate and complete? For a math question, is the final \
answer right?
   0: Completely wrong  |  3: Mostly correct  |  5: Perfectly accurate
2. HELPFULNESS (0-5): Does it address the user's actual need?
   0: Misses the point  |  3: Addresses partially  |  5: Fully helpful
3. CLARITY (0-5): Is the response well-structured and easy to understand?
   0: Confusing  |  3: Understandable  |  5: Crystal clear
Correctness matters most: a correct answer is better than a wrong one however well the wrong one is written.

For each criterion, explain your reasoning briefly and give both assistants a score. After providing your \
explanation, output your final verdict on a line of its own by strictly following this format: "[[A]]" if \
assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie."""

USER_TEMPLATE = """\
[User Question]
{question}

[The Start of Assistant A's Answer]
{first}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{second}
[The End of Assistant B's Answer]"""


class JudgeError(UserError):
    """The judge cannot run: bad input, no key, the API unreachable. One line (cli.main: exit 2)."""


USER_ERRORS: tuple[type[BaseException], ...] = (JudgeError,)

# ------------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Answer:
    id: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Pair:
    """Two answers to one question; a is the one the report is about (e.g. the run), b the other (the base)."""

    id: str
    prompt: str
    a: str
    b: str


def load_answers(path: Path) -> dict[str, Answer]:
    """One JSON object a line with `id` (a string or an integer), `prompt` and `answer` (strings)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JudgeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JudgeError(f"{path}: cannot read it: {exc}") from None
    out: dict[str, Answer] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgeError(f"{path}:{no}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise JudgeError(f"{path}:{no}: not a JSON object")
        missing = [k for k in ("id", "prompt", "answer") if k not in obj]
        if missing:
            raise JudgeError(f"{path}:{no}: missing {', '.join(missing)} (each line needs id, prompt and answer)")
        raw_id = obj["id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            raise JudgeError(f"{path}:{no}: id must be a string or an integer, not {raw_id!r}")
        for k in ("prompt", "answer"):
            if not isinstance(obj[k], str):
                raise JudgeError(f"{path}:{no}: {k} must be a string, not {type(obj[k]).__name__}")
        key = str(raw_id)
        if key in out:
            raise JudgeError(f"{path}:{no}: id {key!r} appears twice")
        out[key] = Answer(key, obj["prompt"], obj["answer"])
    if not out:
        raise JudgeError(f"{path}: no answers in it")
    return out


def match(a: dict[str, Answer], b: dict[str, Answer], *, intersection: bool = False,
          names: tuple[str, str] = ("--a", "--b")) -> list[Pair]:
    """The pairs, in a's order. Ids in only one file are an error unless `intersection`; the same id with
    two different questions (whitespace aside) always is: those answers do not answer the same thing."""
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if (only_a or only_b) and not intersection:
        parts = [f"{len(ids)} id(s) only in {name} ({', '.join(ids[:SHOW_MISSING])}{', ...' if len(ids) > SHOW_MISSING else ''})"
                 for ids, name in ((only_a, names[0]), (only_b, names[1])) if ids]
        raise JudgeError("the files' ids differ: " + "; ".join(parts) + ". Pass --intersection to judge the ids "
                         "both have")
    pairs = [Pair(k, a[k].prompt, a[k].answer, b[k].answer) for k in a if k in b]
    differ = [p.id for p in pairs if normalize(a[p.id].prompt) != normalize(b[p.id].prompt)]
    if differ:
        raise JudgeError(f"{len(differ)} id(s) have different prompts in the two files ({', '.join(differ[:SHOW_MISSING])}"
                         f"{', ...' if len(differ) > SHOW_MISSING else ''}): pairs must answer the same question")
    if not pairs:
        raise JudgeError("the two files have no id in common")
    return pairs


# ------------------------------------------------------------------------------------------------ calls


def user_message(question: str, first: str, second: str) -> str:
    return USER_TEMPLATE.format(question=question, first=first, second=second)


def request_body(model: str, question: str, first: str, second: str) -> dict[str, Any]:
    """The Messages API request of one judgment. No sampling parameter: MT-Bench judges at temperature 0, but
    the API version our SDK speaks has none (the sampling note above MAX_TOKENS), so what makes a verdict reproducible here
    is the cache: each judgment is made once and read back ever after."""
    return {"model": model, "max_tokens": MAX_TOKENS,
            "system": [{"type": "text", "text": SYSTEM}],
            "messages": [{"role": "user", "content": user_message(question, first, second)}]}


def cache_key(model: str, question: str, first: str, second: str) -> str:
    """sha256 of everything that determines a judgment at temperature 0, the answers in the order shown."""
    payload = json.dumps({"model": model, "prompt_version": PROMPT_VERSION, "system": SYSTEM, "question": question,
                          "first": first, "second": second}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_cache_dir() -> Path:
    """<cache>/judge, beside the bases and the prepared data (AUTORESEARCH_CACHE_DIR or ~/.cache/autoresearch)."""
    env = os.environ.get("AUTORESEARCH_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "autoresearch") / "judge"


class VerdictCache:
    """Judgment texts on disk, one JSON file per key (`<dir>/<key[:2]>/<key>.json`), written atomically."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or torn by a crash before rename (it cannot be): judged again
        text = entry.get("text") if isinstance(entry, dict) else None
        return text if isinstance(text, str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # unique: threads may write the same key
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass(frozen=True)
class Call:
    """One judgment to make: pair `pair` in `order` 1 (a shown first) or 2 (b shown first)."""

    pair: str
    order: Literal[1, 2]
    key: str
    question: str
    first: str
    second: str


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    concurrency: int = DEFAULT_CONCURRENCY
    max_cost_usd: float | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)


@dataclass(frozen=True)
class JudgeResult:
    """What `judge_pairs` did: the report, each pair's result, the pairs it could not judge (id, why), and
    what it cost (`requests` counts HTTP attempts, retries included; `cached` judgments cost nothing)."""

    report: Report
    results: tuple[Judged, ...]
    not_judged: tuple[tuple[str, str], ...]
    cost_usd: float | None
    requests: int
    cached: int
    model: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(), "model": self.model, "pairs": len(self.results) + len(self.not_judged),
                "not_judged": [{"id": i, "why": w} for i, w in self.not_judged],
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "requests": self.requests, "cached": self.cached, "prompt_version": PROMPT_VERSION}


def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def plan(pairs: Sequence[Pair], model: str) -> tuple[list[Judged], list[Call]]:
    """The identical pairs (ties, no call) and the two calls of every other pair."""
    ties: list[Judged] = []
    calls: list[Call] = []
    for p in pairs:
        if normalize(p.a) == normalize(p.b):
            ties.append(identical(p.id))
            continue
        calls.append(Call(p.id, 1, cache_key(model, p.prompt, p.a, p.b), p.prompt, p.a, p.b))
        calls.append(Call(p.id, 2, cache_key(model, p.prompt, p.b, p.a), p.prompt, p.b, p.a))
    return ties, calls


def _response_text(resp: Any) -> str:
    return "".join(getattr(b, "text", "") for b in getattr(resp, "content", []) if getattr(b, "type", "") == "text")


class _Spend:
    """The calls' running cost, shared by the worker threads."""

    def __init__(self, max_cost_usd: float | None):
        self.lock = threading.Lock()
        self.max_cost_usd = max_cost_usd
        self.cost: float | None = 0.0
        self.requests = 0

    def add(self, cost: float | None, requests: int) -> None:
        with self.lock:
            self.cost = None if cost is None or self.cost is None else self.cost + cost
            self.requests += requests

    def reached(self) -> bool:
        with self.lock:
            return self.max_cost_usd is not None and self.cost is not None and self.cost >= self.max_cost_usd


def judge_pairs(pairs: Sequence[Pair], settings: Settings, *, say: Callable[[str], None] = _say_stderr,
                client: Any = None) -> JudgeResult:
    """Judge every pair in both orders (module docstring). `client`: a MessagesClient (default: one for
    `settings.model`, made only when some judgment is not cached, so a fully cached rerun needs no key)."""
    if settings.concurrency < 1:
        raise JudgeError(f"--concurrency must be at least 1, not {settings.concurrency}")
    ties, calls = plan(pairs, settings.model)
    cache = VerdictCache(settings.cache_dir)
    texts: dict[tuple[str, int], str] = {}
    todo: list[Call] = []
    for c in calls:
        hit = cache.get(c.key)
        if hit is None:
            todo.append(c)
        else:
            texts[(c.pair, c.order)] = hit
    cached = len(texts)
    failures: dict[str, str] = {}
    spend = _Spend(settings.max_cost_usd)
    if todo:
        client = client or _client(settings)
        _run_calls(todo, client, cache, texts, failures, spend, settings, say, cached)
    results: list[Judged] = list(ties)
    not_judged: list[tuple[str, str]] = []
    for p in pairs:
        if any(r.id == p.id for r in ties):
            continue
        t1, t2 = texts.get((p.id, 1)), texts.get((p.id, 2))
        if t1 is None or t2 is None:
            not_judged.append((p.id, failures.get(p.id) or f"the spend reached --max-cost ${settings.max_cost_usd or 0:g}"))
            continue
        results.append(judged(p.id, parse_verdict(t1), parse_verdict(t2)))
    order = {p.id: i for i, p in enumerate(pairs)}
    results.sort(key=lambda r: order[r.id])
    return JudgeResult(report(results), tuple(results), tuple(not_judged), spend.cost, spend.requests, cached,
                       settings.model)


def _client(settings: Settings) -> Any:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise JudgeError("ANTHROPIC_API_KEY is not set: the judge calls the Anthropic API (export the key; "
                         "judgments already cached need none)")
    from harness.agents.usage import estimate_cost_usd
    if settings.max_cost_usd is not None and estimate_cost_usd(settings.model, {}) is None:
        raise JudgeError(f"no price is known for model {settings.model}, so --max-cost cannot be enforced: "
                         "choose a priced model (harness/agents/usage.py) or drop --max-cost")
    from harness.agents.api import MessagesClient
    return MessagesClient(model=settings.model)


def _one_call(client: Any, c: Call, cache: VerdictCache, model: str) -> tuple[str, float | None, int]:
    """Make one judgment and cache its text. Raises the client's errors (ProposalFailed, APIUnreachable)."""
    from harness.agents.usage import Usage
    usage = Usage(model=model)
    # The agent's client and retry policy with the judge's own request (no tools, its own max_tokens).
    resp = client.send(request_body(model, c.question, c.first, c.second), usage)
    usage.add_response(getattr(resp, "usage", None))
    text = _response_text(resp)
    cache.put(c.key, {"text": scrub(text), "model": getattr(resp, "model", model), "prompt_version": PROMPT_VERSION,
                      "verdict": parse_verdict(text), "usage": usage.as_dict(), "time": int(time.time())})
    return text, usage.cost_usd, usage.requests


def _run_calls(todo: list[Call], client: Any, cache: VerdictCache, texts: dict[tuple[str, int], str],
               failures: dict[str, str], spend: _Spend, settings: Settings, say: Callable[[str], None],
               cached: int) -> None:
    from harness.agents.api import APIUnreachable, ProposalFailed
    total = len(todo) + cached
    lock = threading.Lock()
    queue = list(reversed(todo))  # pop() from the end: the calls in order, a pair's two orders together
    done = [cached]
    stop = threading.Event()
    step = max(1, total // 10)

    def record(c: Call, out: tuple[str, float | None, int] | None, why: str | None) -> None:
        with lock:
            if out is not None:
                texts[(c.pair, c.order)] = out[0]
            elif why is not None:
                failures.setdefault(c.pair, why)
            done[0] += 1
            n = done[0]
        if n % step == 0 or n == total:
            cost = spend.cost
            say(f"judge: {n}/{total} judgments ({cached} cached), ${cost:.4f} so far" if cost is not None
                else f"judge: {n}/{total} judgments ({cached} cached)")

    # the first call alone: an unreachable API (or a refused key) ends the command once, not per thread
    first = queue.pop()
    try:
        out = _one_call(client, first, cache, settings.model)
    except APIUnreachable as exc:
        raise JudgeError(_offline_line(str(exc))) from None
    except ProposalFailed as exc:
        spend.add(exc.usage.get("cost_usd") or 0.0, int(exc.usage.get("requests") or 0))
        raise JudgeError(f"the judge's first request failed: {exc}") from None
    spend.add(out[1], out[2])
    record(first, out, None)

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if not queue or spend.reached():
                    return
                c = queue.pop()
            try:
                got = _one_call(client, c, cache, settings.model)
            except ProposalFailed as exc:  # retried already (harness.agents.api): this pair is not judged
                spend.add(exc.usage.get("cost_usd") or 0.0, int(exc.usage.get("requests") or 0))
                record(c, None, client.scrub(str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 (a thread must report, not die silently)
                record(c, None, client.scrub(f"{type(exc).__name__}: {exc}"))
                continue
            spend.add(got[1], got[2])
            record(c, got, None)

    threads = [threading.Thread(target=worker, daemon=True, name=f"judge-{i}")
               for i in range(min(settings.concurrency, len(queue)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a timed join: Ctrl-C reaches the main thread
    except KeyboardInterrupt:
        stop.set()  # the calls in flight finish (their judgments are cached); no new one starts
        raise
    if queue and spend.reached():
        say(f"judge: the spend reached --max-cost ${settings.max_cost_usd:g}: {len(queue)} judgment(s) not made")


def _offline_line(message: str) -> str:
    """APIUnreachable's line names the agents' offline way; the judge has none: say what it needs instead."""
    head = message.split(": check the network")[0]
    return f"{head}: check the network and ANTHROPIC_BASE_URL (the judge needs the Anthropic API; cached " \
           "judgments do not)"


# ------------------------------------------------------------------------------------------------ the CLI


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_result(res: JudgeResult, names: tuple[str, str]) -> str:
    """The human table of `autoresearch judge`."""
    r = res.report
    a, b = names
    cost = "unknown (no price for the model)" if res.cost_usd is None else f"${res.cost_usd:.4f}"
    se = "" if r.win_rate_adjusted_se is None else f" ± {r.win_rate_adjusted_se:.3f} (standard error)"
    rows = [
        ("pairs", f"{r.n} judged ({r.identical} identical, tied without a call), {r.errors} error(s) excluded, "
                  f"{len(res.not_judged)} not judged"),
        ("win rate", f"{_pct(r.win_rate)}  ({a} better in both orders: {r.wins})"),
        ("tie rate", f"{_pct(r.tie_rate)}  (a tie, or the orders disagree: {r.ties})"),
        ("loss rate", f"{_pct(r.loss_rate)}  ({b} better in both orders: {r.losses})"),
        ("win rate adjusted", f"{_pct(r.win_rate_adjusted)}{se}  ((win + tie/2) / n)"),
        ("inconsistency", f"{_pct(r.inconsistency_rate)}  (pairs whose two orders disagree)"),
        ("first position", f"{_pct(r.first_position_rate)}  (verdicts for the answer shown first; 0.5 = unbiased)"),
        ("error rate", f"{_pct(r.error_rate)}  (no single final [[A]]/[[B]]/[[C]])"),
        ("judge", f"{res.model}, {res.requests} request(s), {res.cached} judgment(s) from the cache, cost {cost}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{a} vs {b}"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    for pid, why in res.not_judged[:SHOW_MISSING]:
        lines.append(f"  not judged: {pid}: {why}")
    if len(res.not_judged) > SHOW_MISSING:
        lines.append(f"  not judged: ... and {len(res.not_judged) - SHOW_MISSING} more (--json lists them all)")
    return "\n".join(lines)


def cmd_judge(args: Any) -> int:
    """`autoresearch judge` (harness.cli): load, match, judge, print the table or the JSON report."""
    if args.max_cost is not None and not args.max_cost > 0:
        raise JudgeError(f"--max-cost must be a positive number of USD, not {args.max_cost:g}")
    pairs = match(load_answers(args.a), load_answers(args.b), intersection=args.intersection)
    settings = Settings(model=args.model or DEFAULT_MODEL, concurrency=args.concurrency,
                        max_cost_usd=args.max_cost, cache_dir=args.cache or default_cache_dir())
    res = judge_pairs(pairs, settings)
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(format_result(res, (str(args.a), str(args.b))))
    return 0


# ------------------------------------------------------------------------------------- a run's judge metric

DEFAULT_BASELINE = "base_answers.jsonl"
DEFAULT_METRIC = "judge_win_rate"
DEFAULT_RUN_MAX_COST_USD = 2.0  # per kept run: about 200 judgments of 1-2k tokens at claude-sonnet-5-5


@dataclass(frozen=True)
class RunJudging:
    """What the controller adds to a kept run's ledger line: `metrics` (the metric and its SE, absent when
    there is no result) and `field`, the line's `judge` object (the rest of the report, or the reason)."""

    metrics: dict[str, float]
    field: dict[str, Any]
    summary: str  # one line for the controller's output


def run_metric(checkpoint: Path, answers: str, *, baseline: str | None = None, metric: str | None = None,
               model: str | None = None, max_cost_usd: float | None = None, cache_dir: Path | None = None,
               client: Any = None) -> RunJudging:
    """Judge a run's answers (`checkpoint/answers`: the directory the controller kept of what the fixed
    evaluation wrote in $AUTORESEARCH_ANSWERS_DIR, harness.executor.answers_dir) against `checkpoint/baseline`
    (the base's, which it writes beside them). Never raises for a missing key, an
    unreachable API or a bad file: the metric is then absent and `field["error"]` says why; the run itself
    is not affected."""
    name = metric or DEFAULT_METRIC
    settings = Settings(model=model or DEFAULT_MODEL, max_cost_usd=max_cost_usd or DEFAULT_RUN_MAX_COST_USD,
                        cache_dir=cache_dir or default_cache_dir())
    try:
        pairs = match(load_answers(checkpoint / answers), load_answers(checkpoint / (baseline or DEFAULT_BASELINE)),
                      names=(answers, baseline or DEFAULT_BASELINE))
        res = judge_pairs(pairs, settings, say=lambda _: None, client=client)
    except UserError as exc:  # JudgeError, APIUnreachable
        why = scrub(str(exc))
        return RunJudging({}, {"metric": name, "error": why}, f"judge: {name} not measured: {why}")
    r = res.report
    info = {"metric": name, **{k: v for k, v in res.as_dict().items() if k not in ("not_judged", "win_rate_adjusted",
                                                                                 "win_rate_adjusted_se")}}
    info["not_judged"] = len(res.not_judged)
    if r.win_rate_adjusted is None:
        why = f"no pair could be judged ({len(res.not_judged)} not judged, {r.errors} error(s))"
        return RunJudging({}, {**info, "error": why}, f"judge: {name} not measured: {why}")
    metrics = {name: round(r.win_rate_adjusted, 6)}
    if r.win_rate_adjusted_se is not None:
        metrics[f"{name}_se"] = round(r.win_rate_adjusted_se, 6)
    se = "" if r.win_rate_adjusted_se is None else f" ± {r.win_rate_adjusted_se:.3f}"
    cost = "" if res.cost_usd is None else f", ${res.cost_usd:.4f}"
    return RunJudging(metrics, info, f"judge: {name} {r.win_rate_adjusted:.3f}{se} (n {r.n}, {r.errors} error(s), "
                                     f"inconsistency {r.inconsistency_rate if r.inconsistency_rate is not None else 0:.2f}"
                                     f"{cost})")
