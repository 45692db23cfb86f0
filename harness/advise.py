"""`autoresearch advise`: the doctrine applied to one base model and one dataset, and the `advice.json`
an sft workspace carries.

    advise(base_dir, data, *, rank=None, components=DEFAULT_COMPONENTS, cache_dir=None) -> Advice
    write_advice(ws, advice) -> Path        the workspace's advice.json (init writes it; a fixed file)
    read_advice(ws) -> Advice | None        None when the workspace has none (not a post-training session)
    set_lr(train_py_text, lr) -> str        train.py with its `LR = ...` line set to the doctrine's rate

`advise` gathers the facts at the edges (the base's structure and tokenizer from `arbase.base_from_dir(dir,
meta=True)`, which reads no weights; the data from `armath`), then `compose` decides from them with the
pure functions of `harness.doctrine`: the parameter counts come from the model's own linears (what train.py's
LORA_TARGETS patterns select, so the pre-run check `harness.capacity` can count any pattern set), the
completion tokens are the train split's answers as the base tokenizes them (`Base.completion_ids`: the
weight-1 tokens of SFT, end token included). The kit modules import torch and pyarrow: they are loaded
inside the functions that need them, so reading advice.json (the pre-run check) stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import bases, doctrine, models
from harness.cli_common import UserError, workspace_root
from harness.doctrine import DEFAULT_COMPONENTS, Capacity, LearningRate, LinearRow, MethodChoice, Ratio

ADVICE_NAME = "advice.json"
ADVICE_FORMAT = 1


class AdviceError(ValueError):
    """advice.json is unreadable or not in this format; the message names the file."""


USER_ERRORS: tuple[type[Exception], ...] = (AdviceError, bases.BaseError)


@dataclass(frozen=True)
class Advice:
    """The doctrine's advice for one base and one dataset (what `advise` prints and advice.json holds)."""

    base: dict[str, Any]  # name, kind, spec, fingerprint, origin, model summary (from base.json)
    data: dict[str, Any]  # armath.describe: spec, source, fields, verifiable, per split rows/skipped, fingerprint
    method: MethodChoice
    linears: tuple[LinearRow, ...]  # every nn.Linear: (module name, d_in, d_out, component)
    completion_tokens: int  # the train split's weight-1 tokens under the base's tokenizer
    components: tuple[str, ...]  # what the capacity and the recommended rank assume (train.py's default targets)
    rank: int  # the recommended rank
    capacity: Capacity  # at the rank asked for, else the recommended one
    lr: LearningRate
    lora_over_full: Ratio
    per_rank: dict[str, int] = field(default_factory=dict)  # derived from `linears`

    def __post_init__(self) -> None:
        if not self.per_rank:
            object.__setattr__(self, "per_rank", doctrine.params_per_rank_from_linears(self.linears))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ADVICE_FORMAT,
            "base": self.base,
            "data": self.data,
            "method": self.method.to_json(),
            "components": list(self.components),
            "per_rank": self.per_rank,
            "completion_tokens": self.completion_tokens,
            "rank": self.rank,
            "capacity": self.capacity.to_json(),
            "lr": self.lr.to_json(),
            "lora_over_full": {"value": self.lora_over_full.value, "reason": self.lora_over_full.reason},
            "linears": [list(x) for x in self.linears],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Advice:
        """Raises KeyError / TypeError / ValueError on a malformed object (read_advice names the file)."""
        if obj.get("format") != ADVICE_FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, not {ADVICE_FORMAT}")
        cap = dict(obj["capacity"])
        cap["components"] = tuple(cap["components"])
        m = obj["method"]
        return cls(
            base=dict(obj["base"]), data=dict(obj["data"]),
            method=MethodChoice(m["method"], tuple(m["then"]), m["why"]),
            linears=tuple(doctrine.linear_row((str(n), int(i), int(o), str(c))) for n, i, o, c in obj["linears"]),
            completion_tokens=int(obj["completion_tokens"]), components=tuple(obj["components"]),
            rank=int(obj["rank"]), capacity=Capacity(**cap), lr=LearningRate(**obj["lr"]),
            lora_over_full=Ratio(**obj["lora_over_full"]), per_rank={k: int(v) for k, v in obj["per_rank"].items()},
        )

    def render(self) -> str:
        return render(self)


def compose(base: Mapping[str, Any], data: Mapping[str, Any], linears: Sequence[doctrine.LinearLike | LinearRow],
            completion_tokens: int, *, verifiable: bool, hidden_size: int | None, rank: int | None = None,
            components: Collection[str] = DEFAULT_COMPONENTS) -> Advice:
    """The advice from the facts (pure): method from the data's fields (and whether its rows have gold answers
    a program checks), the capacity at rank 1 gives the minimum rank, the recommended rank is the next power of
    two, and the verdict is given at `rank` when asked."""
    rows = tuple(doctrine.linear_row(x) for x in linears)
    per_rank = doctrine.params_per_rank_from_linears(rows)
    method = doctrine.choose_method(data.get("fields", ()), verifiable=verifiable)
    comps = tuple(c for c in doctrine.COMPONENTS if c in components)
    at_one = doctrine.capacity(per_rank, comps, 1, completion_tokens, method.method)
    recommended = doctrine.recommend_rank(at_one)
    cap = doctrine.capacity(per_rank, comps, rank if rank is not None else recommended, completion_tokens,
                            method.method)
    lr = doctrine.lr_for_base(str(base.get("kind")), _lr_name(base), hidden_size)
    return Advice(dict(base), dict(data), method, rows, completion_tokens, comps, recommended, cap, lr,
                  doctrine.lora_over_full_ratio(hidden_size), per_rank)


def _lr_name(base: Mapping[str, Any]) -> str:
    """The name the LR rule matches: a hub id says the family best, else the base's display name."""
    origin = base.get("origin") or {}
    return str(origin.get("id") or base.get("name") or base.get("spec") or "")


# ------------------------------------------------------------------ the edges


def advise(base_dir: str | os.PathLike[str], data: str, *, rank: int | None = None,
           components: Collection[str] = DEFAULT_COMPONENTS, cache_dir: str | None = None) -> Advice:
    """The advice for a materialized base directory (`<cache>/bases/<fp16>/`, with its base.json) and a data
    spec (`offline-math`, `gsm8k`, a local file, ...). Loads the model's structure only (meta device) and its
    tokenizer; reads the data from `cache_dir` (default: the cache root) and never downloads."""
    from harness.resources import kit_module

    arbase, armath = kit_module("arbase"), kit_module("armath")
    try:
        base = arbase.base_from_dir(str(base_dir), meta=True)
        described = armath.describe(data, cache_dir=cache_dir)
        train = armath.load_split(data, "train", cache_dir=cache_dir)
    except (arbase.BaseError, armath.DataError) as exc:
        raise AdviceError(str(exc)) from None
    tokens = sum(len(base.completion_ids(item.solution)) for item in train.items)
    info = {k: base.info.get(k) for k in ("name", "kind", "spec", "fingerprint", "origin", "model")}
    # armath keeps only rows whose gold answer parses (the rest are counted as skipped): its items are verifiable
    verifiable = bool(train.items) and all(item.gold for item in train.items)
    return compose(info, described, arbase.linear_modules(base.model), tokens, verifiable=verifiable,
                   hidden_size=_hidden(base), rank=rank, components=components)


def _hidden(base: Any) -> int | None:
    """The hidden size the LR rule takes: an HF model's config (our GPT's is never calibrated)."""
    size = getattr(getattr(base.model, "config", None), "hidden_size", None)
    return size if base.kind == "hf" and isinstance(size, int) else None


def write_advice(ws: str | os.PathLike[str], advice: Advice) -> Path:
    """Write the workspace's advice.json (init commits it as a fixed file). Returns its path."""
    path = Path(ws) / ADVICE_NAME
    tmp = path.with_name(ADVICE_NAME + ".tmp")
    tmp.write_text(json.dumps(advice.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_advice(ws: str | os.PathLike[str]) -> Advice | None:
    """The workspace's advice.json; None when there is none. Raises AdviceError naming the file when it
    cannot be read."""
    path = Path(ws) / ADVICE_NAME
    if not path.exists():
        return None
    try:
        return Advice.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AdviceError(f"{path} is not a readable advice file ({type(exc).__name__}: {exc}); it is written by "
                          "`autoresearch init --target sft` and fixed") from None


_LR_LINE = re.compile(r"^(LR\s*=\s*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)


def set_lr(train_py: str, lr: float) -> str:
    """train.py's text with its first module-level `LR = ...` value set to `lr` (the comment kept).
    Raises ValueError when there is no such line."""
    text, n = _LR_LINE.subn(lambda m: f"{m.group(1)}{lr:.4g}{m.group(3)}", train_py, count=1)
    if n == 0:
        raise ValueError("train.py has no `LR = ...` line to set")
    return text


# ------------------------------------------------------------------------ text


def _n(x: int) -> str:
    return f"{x:,}"


def render(a: Advice) -> str:
    """The advice as `autoresearch advise` prints it: the facts, then the verdicts and why."""
    b, d, c = a.base, a.data, a.capacity
    splits = d.get("splits") or {}
    rows = ", ".join(f"{k} {_n(v.get('rows', 0))}" for k, v in splits.items())
    skipped = ", ".join(f"{k} {v.get('skipped', 0)}" for k, v in splits.items())
    contaminated = sum(int(v.get("contaminated", 0)) for v in splits.values())
    per = "  ".join(f"{k} {_n(a.per_rank[k])}" for k in doctrine.COMPONENTS if k in a.per_rank)
    lr = (f"{a.lr.value:.4g}" if a.lr.value is not None else "not calibrated") + f": {a.lr.reason}"
    bits = f"{c.bits_verdict}" + (f", rank {c.bits_min_rank} passes" if c.bits_min_rank else "")
    lines = [
        f"base               {b.get('name')} ({b.get('kind')}, fingerprint {str(b.get('fingerprint') or '')[:16]})",
        f"data               {d.get('spec')} (" + (f"{d.get('source')}; " if d.get("source") != d.get("spec") else "")
        + f"fields {'/'.join(d.get('fields', ()))})",
        f"rows               {rows}",
        f"unparseable gold   {skipped} (skipped, never trained on or rewarded)"
        + (f"; {contaminated} eval items dropped as contaminated" if contaminated else ""),
        f"completion tokens  {_n(a.completion_tokens)} (train split, the base's tokenizer, end token included)",
        f"method             {a.method.method}" + (f", then {', '.join(a.method.then)}" if a.method.then else "")
        + f": {a.method.why}",
        f"LoRA params/rank   {per}",
        f"capacity           rank {c.rank} on {'+'.join(c.components)}: {_n(c.params)} params, {c.verdict}: {c.why}",
        f"  2 bits/param     {bits} (the seed's variant: 2 x params >= tokens)",
        f"recommended rank   {a.rank} (the smallest power of two at or above the minimum passing rank "
        f"{c.min_rank if c.min_rank is not None else '-'}; on {'+'.join(a.components)})",
        f"recommended LR     {lr}",
        f"LoRA/FullFT LR     {a.lora_over_full.value:g}x: {a.lora_over_full.reason}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ the command


def cmd_advise(args: argparse.Namespace) -> int:
    """`autoresearch advise --base BASE --data DATA [--rank R] [--json]`: resolve the base (materializing it in
    the cache, as init does), then print the advice."""
    if args.rank is not None and args.rank < 1:
        raise UserError("--rank must be >= 1")
    root = workspace_root(args)
    spec = args.base
    if not os.path.isabs(spec) and (root / spec).exists():  # relative paths are relative to -C DIR, like git
        spec = str(root / spec)
    cache = bases.cache_root()
    info = models.resolve_base(spec, cache, say=lambda line: print(line, file=sys.stderr))  # stdout stays the advice
    advice = advise(info.dir, _data_spec(args.data, root), rank=args.rank, cache_dir=str(cache))
    print(json.dumps(advice.to_json(), indent=1) if args.json else render(advice))
    return 0


def _data_spec(data: str, root: Path) -> str:
    return str(root / data) if not os.path.isabs(data) and (root / data).exists() else data
