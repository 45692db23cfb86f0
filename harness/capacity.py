"""The LoRA-capacity check of a post-training session: does the proposal's train.py give LoRA at least one
parameter per completion token of the training set (harness.doctrine's rule)?

Active only in a workspace with an `advice.json` (init of a post-training target writes it, a fixed file):
it holds every nn.Linear of the base (name, d_in, d_out, component) and the train split's completion tokens.
The proposal's side is read from train.py's UPPER_CASE block by AST, literal values only (nothing of the
proposal is imported or run): `LORA_RANK` (an int) and `LORA_TARGETS` (module-name regex patterns, matched
with `re.search` as the sft train.py's `inject_lora` does). The parameters are counted over the linears the
patterns select, so any pattern set is counted exactly, not only the attn/mlp/unembed groups.

    observe(root, cfg) -> dict | None         the run line's `capacity` field (None without advice.json)
    refusal(root, cfg, mode) -> str | None    why the run is refused: only with mode "block" (the session key
                                              `[session] capacity`, `mode_of(cfg)`), for UNDERCAPACITY or a
                                              train.py whose LoRA settings it cannot read

By default ("warn") the check never refuses; either way the controller records the verdict in every run
line of the session, the baseline's and refused proposals' included (harness.loop `_capacity`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness import doctrine
from harness.advise import Advice, AdviceError, read_advice
from harness.config import Config

CapacityMode = Literal["warn", "block"]
TRAIN_FILE = "train.py"
METHOD_TARGETS = frozenset({"sft", "dpo", "grpo"})  # a post-training target's name is the method it trains


def mode_of(cfg: Config) -> CapacityMode:
    """`[session] capacity`: "warn" (the default) or "block" (harness.config validates it)."""
    return cfg.capacity


def method_of(cfg: Config, advice: Advice) -> str:
    """The method the session trains: the target's (sft, dpo, grpo), else the advice's."""
    return cfg.target if cfg.target in METHOD_TARGETS else advice.method.method


@dataclass(frozen=True)
class TrainLoRA:
    """What train.py asks of LoRA."""

    rank: int
    targets: tuple[str, ...]  # module-name patterns (re.search)


def read_lora(source: str) -> TrainLoRA | str:
    """LORA_RANK and LORA_TARGETS from train.py's module-level assignments (the last one wins, as when it
    runs); a string says why they cannot be read (not literals, missing, bad patterns)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return f"{TRAIN_FILE} does not parse: {exc.msg} (line {exc.lineno})"
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            names, value = [node.target], node.value
        else:
            continue
        for t in names:
            if isinstance(t, ast.Name) and t.id in ("LORA_RANK", "LORA_TARGETS"):
                values[t.id] = value
    got: dict[str, Any] = {}
    for name in ("LORA_RANK", "LORA_TARGETS"):
        if name not in values:
            return f"{TRAIN_FILE} has no module-level {name}"
        try:
            got[name] = ast.literal_eval(values[name])
        except ValueError:
            return f"{TRAIN_FILE}'s {name} is not a literal value, so its capacity cannot be checked before the run"
    rank, targets = got["LORA_RANK"], got["LORA_TARGETS"]
    if not isinstance(rank, int) or isinstance(rank, bool):
        return f"{TRAIN_FILE}'s LORA_RANK is {rank!r}, not an integer"
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, tuple | list) or not all(isinstance(p, str) for p in targets):
        return f"{TRAIN_FILE}'s LORA_TARGETS is {targets!r}, not a tuple of module-name patterns"
    for p in targets:
        try:
            re.compile(p)
        except re.error as exc:
            return f"{TRAIN_FILE}'s LORA_TARGETS pattern {p!r} is not a regular expression: {exc}"
    return TrainLoRA(rank, tuple(targets))


def selected(linears: Sequence[doctrine.LinearRow], targets: Sequence[str]) -> list[doctrine.LinearRow]:
    """The linears train.py adapts: those whose module name a pattern finds (re.search, as inject_lora)."""
    return [x for x in linears if any(re.search(p, x[0]) for p in targets)]


def assess(advice: Advice, lora: TrainLoRA, method: str) -> doctrine.Capacity:
    """The doctrine's verdict for train.py's rank on the linears its patterns select."""
    per_rank = doctrine.params_per_rank_from_linears(selected(advice.linears, lora.targets))
    return doctrine.capacity(per_rank, tuple(per_rank), lora.rank, advice.completion_tokens, method)


def _read(root: Path, cfg: Config) -> tuple[Advice, TrainLoRA | str, str] | str | None:
    """(advice, train.py's LoRA or why not, method); a string when advice.json cannot be read; None without it."""
    try:
        advice = read_advice(root)
    except AdviceError as exc:
        return str(exc)
    if advice is None:
        return None
    path = root / TRAIN_FILE
    lora = read_lora(path.read_text(encoding="utf-8")) if path.is_file() else f"there is no {TRAIN_FILE}"
    return advice, lora, method_of(cfg, advice)


def observe(root: Path, cfg: Config) -> dict[str, Any] | None:
    """The run line's `capacity` field for the train.py in `root` (the proposal's, or the baseline's):
    rank, modules adapted, params, completion_tokens, ratio, verdict, min_rank, the 2-bit variant, why.
    None outside post-training sessions; verdict "unknown" (with why) when it cannot be computed."""
    got = _read(root, cfg)
    if got is None:
        return None
    if isinstance(got, str):
        return {"verdict": "unknown", "why": got}
    advice, lora, method = got
    if isinstance(lora, str):
        return {"verdict": "unknown", "why": lora, "completion_tokens": advice.completion_tokens}
    cap = assess(advice, lora, method)
    return {
        "rank": cap.rank, "modules": len(selected(advice.linears, lora.targets)), "components": list(cap.components),
        "params": cap.params, "completion_tokens": cap.completion_tokens,
        "ratio": None if cap.ratio is None else round(cap.ratio, 4), "verdict": cap.verdict, "min_rank": cap.min_rank,
        "bits_verdict": cap.bits_verdict, "method": method, "why": cap.why,
    }


def refusal(root: Path, cfg: Config, mode: CapacityMode) -> str | None:
    """Why the proposal may not run: only in "block" mode, for UNDERCAPACITY or a capacity it cannot check."""
    if mode != "block":
        return None
    field = observe(root, cfg)
    if field is None or field["verdict"] == "OK":
        return None
    if field["verdict"] == "UNDERCAPACITY":
        return f"LoRA under capacity (capacity = \"block\"): {field['why']}"
    return f"LoRA capacity cannot be checked (capacity = \"block\"): {field['why']}"
