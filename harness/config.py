"""`autoresearch.toml`: the session's configuration, one source of truth.

Frozen dataclasses with defaults; read with tomllib, written by a tiny serializer (the
schema is flat tables of scalars and lists, so no extra dependency is needed).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from harness.secrets import is_secret_name
from harness.stats import Direction

CONFIG_NAME = "autoresearch.toml"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RevertMode = Literal["revert", "reset"]
AgentKind = Literal["auto", "mutate", "claude", "external"]
MetricSource = Literal["stdout", "result_file"]
# Where a run executes (README "The sandbox"): "auto" = under bubblewrap when it works here, else in a fresh
# checkout without it; "bwrap" = bubblewrap or refuse to run; "checkout" = a fresh checkout, no bubblewrap;
# "off" = in the workspace itself (no isolation at all; for debugging a target).
SandboxMode = Literal["auto", "bwrap", "checkout", "off"]
SANDBOX_MODES: tuple[str, ...] = ("auto", "bwrap", "checkout", "off")
# Post-training (harness.capacity): "warn" records a LoRA under capacity, "block" refuses the proposal.
CapacityMode = Literal["warn", "block"]
# What a run's budget counts (README "Noise-aware keeps"): wall seconds, or training tokens
# (AUTORESEARCH_TOKEN_BUDGET; for machines shared by nature: a busy machine makes a run slower, not worse).
BudgetKind = Literal["time", "tokens"]


class ConfigError(Exception):
    """autoresearch.toml is missing or invalid; the message says what to fix."""


@dataclass(frozen=True)
class MetricSpec:
    name: str = "val_bpb"
    unit: str = ""
    direction: Direction = "lower"


@dataclass(frozen=True)
class Guard:
    """A secondary metric may not get worse by more than `max_worse_pct` percent unless the
    primary metric improved by at least `unless_gain` (metric units).

    Example: peak_vram_mb may not grow more than 20% for an improvement under 0.002.
    `direction` says which way is worse for the secondary metric ("lower" = lower is better).
    """

    metric: str
    max_worse_pct: float
    unless_gain: float = math.inf
    direction: Direction = "lower"


@dataclass(frozen=True)
class Config:
    name: str  # a human title for the session
    command: str  # how to run one experiment (the workspace's autoresearch.sh)
    metric: MetricSpec = field(default_factory=MetricSpec)
    editable: tuple[str, ...] = ("train.py",)
    fixed: tuple[str, ...] = ()  # files the agent may not change; sha256 in fixed_hashes
    fixed_hashes: dict[str, str] = field(default_factory=dict)
    target: str = "custom"
    time_budget_s: float = 300.0  # passed to the run as AUTORESEARCH_TIME_BUDGET
    timeout_s: float | None = None  # hard kill; None = max(2x budget, budget + 300)
    checks_command: str | None = None  # e.g. "bash autoresearch.checks.sh"
    checks_timeout_s: float = 300.0
    prepare_command: str | None = None  # one-time preparation run before the first baseline
    agent: AgentKind = "auto"
    model: str | None = None  # for LLM agents
    seed: int = 42  # passed as AUTORESEARCH_SEED
    tolerance: float = 0.0  # an improvement must exceed this (metric units) to be kept
    guards: tuple[Guard, ...] = ()
    revert: RevertMode = "revert"
    max_failure_streak: int = 20  # stop after this many consecutive non-keeps
    learn_every: int = 5  # LLM agents rewrite the notes' learnings every N experiments (0 = never)
    # --- integrity (README "Metric integrity")
    metric_source: MetricSource = "stdout"  # "result_file": the primary metric only via AUTORESEARCH_RESULT_FILE
    startup_allowance_s: float = 30.0  # training may run this long beyond the budget (start-up, compile) ...
    startup_allowance_frac: float = 0.25  # ... plus this share of the budget (integrity.over_budget)
    eval_allowance_s: float = 30.0  # stdout targets only: the in-process evaluation's share of the run's wall time
    audit: bool = True  # statically audit each proposal's diff for known ways of gaming the metric
    # --- noise (README "Noise-aware keeps")
    calibrate: int = 0  # run the baseline this many times (>= 2) with different seeds to measure the noise
    confirm: int = 3  # with calibration, re-runs (other seeds) allowed to confirm a candidate; >= 1
    min_effect_sigma: float = 1.5  # a mean gain must exceed this many standard errors of the difference
    heldout_metric: str | None = None  # a second metric, never used for decisions, evaluated for kept runs
    heldout_command: str | None = None  # how to evaluate it; gets AUTORESEARCH_CHECKPOINT of the kept run
    # --- the judge metric (README "The judge"): for kept runs, the controller (never the run, which has no key)
    # judges the answers the fixed evaluation wrote in the run's checkpoint against `judge_baseline`'s
    judge: str | None = None  # the run's answers, relative to its checkpoint dir (e.g. answers.jsonl)
    # None below: harness.judge's defaults (base_answers.jsonl, judge_win_rate, its DEFAULT_MODEL, 2 USD a run)
    judge_baseline: str | None = None  # the answers they are compared with, in the same dir
    judge_metric: str | None = None  # win_rate_adjusted, recorded with <name>_se among the run's metrics
    judge_model: str | None = None  # the judge's model
    judge_max_cost: float | None = None  # USD per kept run: no new judgment starts past it
    branch: str = ""
    # --- where runs happen (README "The sandbox")
    sandbox: SandboxMode = "auto"
    network: bool = False  # runs (and the evaluation) see no network unless this is true
    env: tuple[str, ...] = ()  # names of further environment variables the runs get (never secrets)
    inputs: tuple[str, ...] = ()  # workspace paths git ignores (data/, .venv/) that runs see read-only
    evaluate: str | None = None  # the fixed evaluation: its own process, from the run's checkpoint
    log_cap_mb: float = 64.0  # a run's log on disk stops growing here (the output is still read)
    # --- post-training (README "Base models"): a proposal whose LoRA is under capacity is recorded, or refused
    capacity: CapacityMode = "warn"
    # --- the budget's unit (harness.contention): "tokens" passes token_budget to runs as AUTORESEARCH_TOKEN_BUDGET
    budget: BudgetKind = "time"
    token_budget: int | None = None

    @property
    def effective_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return max(2 * self.time_budget_s, self.time_budget_s + 300)


# TOML basic strings allow no raw control characters but tab; \uXXXX covers the rest
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in v) + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_COMMENTS = {
    "command": "one experiment; must print METRIC name=value lines",
    "editable": "the only files the agent may change",
    "fixed": "hashed at init; any change is checks_failed",
    "time_budget_s": "passed to the run as AUTORESEARCH_TIME_BUDGET",
    "timeout_s": "hard kill of the whole process group (default max(2x budget, budget+300))",
    "tolerance": "an improvement must beat the best by more than this to be kept",
    "revert": '"revert" (git revert, keeps history) or "reset" (karpathy style)',
    "max_failure_streak": "stop after this many consecutive discard/crash/checks_failed",
    "prepare_command": "one-time preparation, run by `autoresearch run` before the baseline",
    "sandbox": '"auto" (bubblewrap if it works), "bwrap", "checkout" (no bubblewrap) or "off" (in the workspace)',
    "evaluate": "the fixed evaluation, a separate process reading the run's checkpoint; it alone reports the metric",
    "env": "extra environment variables passed to runs (secrets never are)",
    "inputs": "ignored workspace paths mounted read-only into each run's checkout",
    "capacity": '"warn" (record a LoRA under capacity) or "block" (refuse the proposal)',
    "budget": '"time" (the default: seconds of training) or "tokens" (token_budget tokens, whatever the time)',
    "token_budget": 'with budget = "tokens": the training tokens each run may use',
}


def dumps(cfg: Config) -> str:
    """TOML text for a config: [session], [metric], [fixed_hashes], [[guards]]."""
    lines = ["# autoresearch session configuration (written by `autoresearch init`)", "[session]"]
    for f in fields(cfg):
        if f.name in ("metric", "fixed_hashes", "guards"):
            continue
        v = getattr(cfg, f.name)
        if v is None:
            continue
        comment = _COMMENTS.get(f.name)
        lines.append(f"{f.name} = {_toml_value(v)}" + (f"  # {comment}" if comment else ""))
    lines += ["", "[metric]"]
    for k, v in asdict(cfg.metric).items():
        lines.append(f"{k} = {_toml_value(v)}")
    lines += ["", "[fixed_hashes]  # sha256 of each fixed file at init"]
    for k, v in sorted(cfg.fixed_hashes.items()):
        lines.append(f"{_toml_value(k)} = {_toml_value(v)}")
    for g in cfg.guards:
        lines += ["", "[[guards]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(g).items()]
    return "\n".join(lines) + "\n"


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_TABLES = {
    "session": (lambda v: isinstance(v, dict), "a table, [session]"),
    "metric": (lambda v: isinstance(v, dict), "a table, [metric]"),
    "fixed_hashes": (lambda v: isinstance(v, dict), "a table, [fixed_hashes]"),
    "guards": (lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v), "tables, [[guards]]"),
}


def loads(text: str, where: str = CONFIG_NAME) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:  # a misspelt table ([metrics]) would otherwise be ignored and its defaults used
        raise ConfigError(f"{where}: unknown table(s) or key(s) outside [session]: {', '.join(unknown)}")
    for k, (ok, spelling) in _TABLES.items():
        if k in data and not ok(data[k]):
            raise ConfigError(f"{where}: {k} must be written as {spelling}")
    session = dict(data.get("session", {}))
    session["metric"] = _build(MetricSpec, data.get("metric", {}), f"{where} [metric]")
    session["fixed_hashes"] = dict(data.get("fixed_hashes", {}))
    session["guards"] = tuple(_build(Guard, g, f"{where} [[guards]]") for g in data.get("guards", []))
    cfg = _build(Config, session, f"{where} [session]")
    validate(cfg, where)
    return cfg


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _type_problems(cfg: Config) -> list[str]:
    """Values of the wrong TOML type (`time_budget_s = "300"`), found before any check
    compares or strips them."""
    want = {
        "a string": (lambda x: isinstance(x, str), ("name", "command", "target", "agent", "revert", "branch",
                                                   "capacity", "budget")),
        "a string or absent": (lambda x: x is None or isinstance(x, str),
                               ("checks_command", "prepare_command", "model", "heldout_metric", "heldout_command",
                                "evaluate", "judge", "judge_baseline", "judge_metric", "judge_model")),
        "a number": (_is_num, ("time_budget_s", "checks_timeout_s", "tolerance", "startup_allowance_s",
                               "startup_allowance_frac", "eval_allowance_s", "min_effect_sigma", "log_cap_mb")),
        "a number or absent": (lambda x: x is None or _is_num(x), ("timeout_s", "judge_max_cost")),
        "an integer or absent": (lambda x: x is None or (isinstance(x, int) and not isinstance(x, bool)),
                                 ("token_budget",)),
        "an integer": (lambda x: isinstance(x, int) and not isinstance(x, bool),
                       ("seed", "max_failure_streak", "learn_every", "calibrate", "confirm")),
        "true or false": (lambda x: isinstance(x, bool), ("audit", "network")),
        "a list of paths": (
            lambda x: isinstance(x, tuple | list) and all(isinstance(p, str) for p in x),
            ("editable", "fixed", "inputs"),
        ),
        "a list of variable names": (
            lambda x: isinstance(x, tuple | list) and all(isinstance(p, str) for p in x), ("env",)),
    }
    problems = [
        f"{name} must be {what}, not {getattr(cfg, name)!r}"
        for what, (ok, names) in want.items()
        for name in names
        if not ok(getattr(cfg, name))
    ]
    for k in ("name", "unit", "direction"):
        if not isinstance(getattr(cfg.metric, k), str):
            problems.append(f"metric.{k} must be a string, not {getattr(cfg.metric, k)!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.fixed_hashes.items()):
        problems.append("fixed_hashes must map file paths to sha256 strings")
    for g in cfg.guards:
        if not isinstance(g.metric, str):
            problems.append(f"guards.metric must be a string, not {g.metric!r}")
        for k in ("max_worse_pct", "unless_gain"):
            if not _is_num(getattr(g, k)):
                problems.append(f"guard {g.metric!r}: {k} must be a number, not {getattr(g, k)!r}")
        if g.direction not in ("lower", "higher"):
            problems.append(f"guard {g.metric!r}: direction must be lower or higher, not {g.direction!r}")
    return problems


def validate(cfg: Config, where: str = CONFIG_NAME) -> None:
    problems = _type_problems(cfg)
    if problems:  # the checks below would raise TypeError on these
        raise ConfigError(f"{where}: " + "; ".join(problems))
    if not cfg.command.strip():
        problems.append("command is empty")
    if cfg.metric.direction not in ("lower", "higher"):
        problems.append(f"metric.direction must be lower or higher, not {cfg.metric.direction!r}")
    if not cfg.editable:
        problems.append("editable lists no files")
    if set(cfg.editable) & set(cfg.fixed):
        problems.append(f"files both editable and fixed: {sorted(set(cfg.editable) & set(cfg.fixed))}")
    if not (cfg.time_budget_s > 0):
        problems.append("time_budget_s must be > 0")
    if cfg.timeout_s is not None and not (cfg.timeout_s > 0):
        problems.append("timeout_s must be > 0")
    if cfg.revert not in ("revert", "reset"):
        problems.append(f"revert must be revert or reset, not {cfg.revert!r}")
    if cfg.agent not in ("auto", "mutate", "claude", "external"):
        problems.append(f"agent must be auto, mutate, claude or external, not {cfg.agent!r}")
    if cfg.tolerance < 0:
        problems.append("tolerance must be >= 0")
    if cfg.max_failure_streak < 1:
        problems.append("max_failure_streak must be >= 1")
    if cfg.metric_source not in ("stdout", "result_file"):
        problems.append(f"metric_source must be stdout or result_file, not {cfg.metric_source!r}")
    if cfg.calibrate == 1 or cfg.calibrate < 0:
        problems.append("calibrate must be 0 (off) or at least 2 runs")
    if cfg.confirm < 1:
        problems.append("confirm must be >= 1: a keep under the noise gate needs at least a second run")
    if cfg.learn_every < 0:
        problems.append("learn_every must be >= 0")
    if not (cfg.min_effect_sigma > 0):
        problems.append("min_effect_sigma must be > 0")
    if cfg.startup_allowance_s < 0 or cfg.eval_allowance_s < 0:
        problems.append("startup_allowance_s and eval_allowance_s must be >= 0")
    if cfg.startup_allowance_frac < 0:
        problems.append("startup_allowance_frac must be >= 0")
    if cfg.sandbox not in SANDBOX_MODES:
        problems.append(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {cfg.sandbox!r}")
    if not (cfg.log_cap_mb > 0):
        problems.append("log_cap_mb must be > 0")
    if cfg.capacity not in ("warn", "block"):
        problems.append(f"capacity must be warn or block, not {cfg.capacity!r}")
    if cfg.budget not in ("time", "tokens"):
        problems.append(f"budget must be time or tokens, not {cfg.budget!r}")
    elif cfg.budget == "tokens" and not (isinstance(cfg.token_budget, int) and cfg.token_budget > 0):
        problems.append('budget = "tokens" needs token_budget, a whole number of tokens > 0')
    for name in cfg.env:
        if not _ENV_NAME.fullmatch(name):
            problems.append(f"env: {name!r} is not an environment variable name")
        elif is_secret_name(name):
            problems.append(f"env: {name} looks like a secret, and runs never get secrets (README \"The sandbox\")")
    if cfg.evaluate is not None and not cfg.evaluate.strip():
        problems.append("evaluate is empty: remove it, or name the evaluation command")
    if bool(cfg.heldout_metric) != bool(cfg.heldout_command):
        problems.append("heldout_metric and heldout_command go together")
    for k in ("judge", "judge_baseline"):
        v = getattr(cfg, k)
        if v is not None and (not v.strip() or Path(v).is_absolute() or ".." in Path(v).parts):
            problems.append(f"{k} must be a file name relative to the run's checkpoint directory, not {v!r}")
    if cfg.judge_metric is not None and not cfg.judge_metric.strip():
        problems.append("judge_metric must name the metric (or be removed: judge_win_rate)")
    if cfg.judge_max_cost is not None and not (cfg.judge_max_cost > 0):
        problems.append("judge_max_cost must be > 0 USD")
    for p in (*cfg.editable, *cfg.fixed, *cfg.inputs):
        if Path(p).is_absolute() or ".." in Path(p).parts:
            problems.append(f"{p!r}: paths must be relative to the workspace and stay inside it")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def load(root: Path) -> Config:
    path = root / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"no {CONFIG_NAME} in {root}: this is not an autoresearch workspace "
            "(create one with `autoresearch init DIR`, or pass -C DIR)"
        )
    return loads(path.read_text(encoding="utf-8"), str(path))


def save(root: Path, cfg: Config) -> None:
    validate(cfg)
    tmp = root / (CONFIG_NAME + ".tmp")
    tmp.write_text(dumps(cfg), encoding="utf-8")
    tmp.replace(root / CONFIG_NAME)


def with_overrides(cfg: Config, **changes: Any) -> Config:
    """A copy with the non-None changes applied (CLI flags over the file)."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


# ------------------------------------------------------------------- the key table (`autoresearch config`)

# How a key's value is written on the command line: "str", "str?" (none or "" unsets it), "num", "num?",
# "int", "bool", "list" (a TOML array, or comma-separated).
KeyKind = Literal["str", "str?", "num", "num?", "int?", "int", "bool", "list"]


@dataclass(frozen=True)
class Key:
    name: str  # as `autoresearch config` spells it: a [session] key, or metric.name / metric.unit / metric.direction
    kind: KeyKind
    help: str
    meaning: bool = False  # a change alters what the metric means: the runs before it are not comparable


_KEY_TABLE: tuple[Key, ...] = (
    Key("name", "str", "a human title for the session"),
    Key("command", "str", "how to run one experiment; it must print METRIC name=value lines", meaning=True),
    Key("metric.name", "str", "the primary metric, as its METRIC line names it", meaning=True),
    Key("metric.unit", "str", "its unit (shown only)"),
    Key("metric.direction", "str", "lower or higher: which way is better", meaning=True),
    Key("editable", "list", "the only files the agent may change"),
    Key("fixed", "list", "files that define the evaluation, hashed; setting it hashes them again as they are now",
        meaning=True),
    Key("target", "str", "the target the session was made from (shown only)"),
    Key("time_budget_s", "num", "the training time budget per run (AUTORESEARCH_TIME_BUDGET)", meaning=True),
    Key("timeout_s", "num?", "hard kill of the run's process group (none: max(2x budget, budget+300))"),
    Key("checks_command", "str?", "correctness checks after each run, e.g. bash autoresearch.checks.sh"),
    Key("checks_timeout_s", "num", "how long the checks may take"),
    Key("prepare_command", "str?", "one-time preparation before the first baseline"),
    Key("agent", "str", "auto, mutate, claude or external: who proposes experiments"),
    Key("model", "str?", "the LLM agent's model"),
    Key("seed", "int", "passed to runs as AUTORESEARCH_SEED"),
    Key("tolerance", "num", "an improvement must beat the best by more than this to be kept"),
    Key("revert", "str", "revert (git revert, keeps history) or reset (karpathy style)"),
    Key("max_failure_streak", "int", "stop after this many consecutive non-keeps"),
    Key("learn_every", "int", "LLM agents rewrite the notes' learnings every N experiments (0 = never)"),
    Key("metric_source", "str", "stdout, or result_file (the primary metric only via AUTORESEARCH_RESULT_FILE)"),
    Key("startup_allowance_s", "num", "training may run this long beyond the budget (start-up, compile) ..."),
    Key("startup_allowance_frac", "num", "... plus this share of the budget"),
    Key("eval_allowance_s", "num", "stdout targets: the in-process evaluation's share of the wall time"),
    Key("audit", "bool", "statically audit each proposal's diff for known ways of gaming the metric"),
    Key("calibrate", "int", "run a segment's baseline this many times (0 = off, else >= 2) to measure the noise"),
    Key("confirm", "int", "with calibration, re-runs allowed to confirm a candidate (>= 1)"),
    Key("min_effect_sigma", "num", "a mean gain must exceed this many standard errors of the difference"),
    Key("heldout_metric", "str?", "a second metric, never used for decisions, evaluated for kept runs"),
    Key("heldout_command", "str?", "how to evaluate it (gets AUTORESEARCH_CHECKPOINT of the kept run)"),
    Key("judge", "str?", "kept runs: the answers file (in the run's checkpoint) the judge compares with judge_baseline"),
    Key("judge_baseline", "str?", "the answers the run's are judged against, in the same checkpoint directory"),
    Key("judge_metric", "str?", "the judge's win_rate_adjusted, recorded among a kept run's metrics (with _se)"),
    Key("judge_model", "str?", "the judge's Claude model (none: the judge's default)"),
    Key("judge_max_cost", "num?", "USD per kept run the judge may spend"),
    Key("branch", "str", "the session's branch"),
    Key("sandbox", "str", "auto, bwrap, checkout or off: where runs happen"),
    Key("network", "bool", "runs (and the evaluation) see the network"),
    Key("env", "list", "names of further environment variables the runs get (never secrets)"),
    Key("inputs", "list", "ignored workspace paths (data/, .venv/) that runs see read-only"),
    Key("evaluate", "str?", "the fixed evaluation: its own process, reading the run's checkpoint", meaning=True),
    Key("log_cap_mb", "num", "a run's log on disk stops growing here"),
    Key("capacity", "str", "post-training: warn (record a LoRA under capacity) or block (refuse the proposal)"),
    Key("budget", "str", "time (seconds of training) or tokens (token_budget tokens per run)", meaning=True),
    Key("token_budget", "int?", 'with budget = "tokens": training tokens per run', meaning=True),
)
KEYS: dict[str, Key] = {k.name: k for k in _KEY_TABLE}
# Not set with `config KEY VALUE`, but a hand edit of autoresearch.toml may change them: recorded as changes too.
# fixed_hashes changes when a fixed file is accepted as it now is, which changes what the metric means.
DERIVED = ("fixed_hashes", "guards")
MEANING = frozenset({*(k.name for k in _KEY_TABLE if k.meaning), "fixed_hashes"})


def _session_keys_covered() -> None:
    """Every [session] key of Config is in the table (checked at import: a new key must say how it is set)."""
    missing = {f.name for f in fields(Config)} - set(KEYS) - {"metric", *DERIVED}
    assert not missing, f"harness.config KEYS lacks {sorted(missing)}"


_session_keys_covered()


def _key(name: str) -> Key:
    try:
        return KEYS[name]
    except KeyError:
        known = ", ".join(KEYS)
        hint = " (fixed_hashes is written by autoresearch: set fixed to hash the fixed files again)" \
            if name == "fixed_hashes" else ""
        raise ConfigError(f"unknown key {name!r}{hint}; the keys are: {known}") from None


def get(cfg: Config, name: str) -> Any:
    """The value of key `name` (`metric.direction` reads cfg.metric.direction)."""
    _key(name)
    if name.startswith("metric."):
        return getattr(cfg.metric, name.split(".", 1)[1])
    return getattr(cfg, name)


def show(value: Any) -> str:
    """A key's value as autoresearch.toml writes it; `none` for an unset one."""
    return "none" if value is None else _toml_value(value)


def parse_value(name: str, text: str) -> Any:
    """The command line's text for key `name` as the key's type (validation comes after, on the whole config)."""
    kind = _key(name).kind
    t = text.strip()
    if kind in ("str?", "num?", "int?") and t.lower() in ("", "none"):
        return None
    try:
        if kind in ("num", "num?"):
            return float(t)
        if kind in ("int", "int?"):
            return int(t)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind.startswith('int') else 'a number'}, "
                          f"not {text!r}") from None
    if kind == "bool":
        if t.lower() in ("true", "yes", "on", "1"):
            return True
        if t.lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{name} must be true or false, not {text!r}")
    if kind == "list":
        if t.startswith("["):
            try:
                v = tomllib.loads(f"v = {t}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{name}: not a TOML array: {exc}") from None
            return tuple(v)
        return tuple(p for p in re.split(r"[,\s]+", t) if p)
    return text


def set_value(cfg: Config, name: str, value: Any) -> Config:
    """A copy with key `name` set to `value`, validated as a whole."""
    return set_values(cfg, [(name, value)])


def set_values(cfg: Config, changes: Sequence[tuple[str, Any]]) -> Config:
    """A copy with every (key, value) of `changes` set, validated once as a whole: keys that go together
    (heldout_metric and heldout_command, budget and token_budget) change in one step."""
    new = cfg
    for name, value in changes:
        _key(name)
        if name.startswith("metric."):
            new = replace(new, metric=replace(new.metric, **{name.split(".", 1)[1]: value}))
        else:
            new = replace(new, **{name: value})
    validate(new, ", ".join(f"{name} = {show(value)}" for name, value in changes))
    return new


def _plain(v: Any) -> Any:
    """A value as JSON holds it (for the ledger's record of a change)."""
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, Guard):
        return asdict(v)
    if isinstance(v, float) and math.isinf(v):
        return str(v)
    return v


def changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """What differs between two configs, key by key, in the table's order: {key: (old, new)} (JSON values)."""
    out: dict[str, tuple[Any, Any]] = {}
    for name in (*KEYS, *DERIVED):
        a, b = (getattr(c, name) if name in DERIVED else get(c, name) for c in (old, new))
        if a != b:
            out[name] = (_plain(a), _plain(b))
    return out


def changes_meaning(changed: dict[str, Any]) -> bool:
    """Whether a change alters what the metric means (metric, direction, budget, command, fixed files, evaluate):
    the runs before it and after it are then not comparable, and a new segment starts."""
    return bool(MEANING & set(changed))
