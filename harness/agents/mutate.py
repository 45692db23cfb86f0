"""Offline agent `mutate`: a hill climber over the UPPER_CASE constants of the editable file.

No network and no model. Each proposal perturbs one or two module-level numeric or boolean
constants (multiplicative steps for floats, x2 / ÷2 for powers of two, +/-1 for small ints, a
flip for bools), repeats directions that paid off according to the ledger, and never proposes a
point (full assignment of the file's constants) that was already run. `--agent auto` uses it
when no ANTHROPIC_API_KEY is set; it is also the baseline an LLM agent has to beat.

What counts as a constant: a statement directly in the module body, `NAME = <literal>` or
`NAME: T = <literal>`, with NAME matching [A-Z][A-Z0-9_]* and the literal an int, a float
(optionally signed, 3e-4 included), a bool, or `a ** b` of ints (2**19). Anything inside a
function, a class or a module-level if/for/with/try block is left alone, and so is a top-level
constant that is bound anywhere else at module scope (a device preset such as
`if DEVICE == "cpu": DEPTH = 4`, or `global DEPTH` in a function): the edited default could be
overridden on the machine that runs it, and the run would measure nothing.

What is proposed: a file may mark its tunable block with two full-line comments,

    # tunable: begin (anything may follow)
    DEPTH = 8
    MATRIX_LR = 0.04
    # tunable: end

and then only the constants between them are changed. The rest of the file's constants (plumbing
such as an evaluation batch size, a logging period, a compile switch: they change how a run executes
or reports, never what it learns) stay part of the point, but are never proposed: a change to them
costs a full run and measures nothing. A file without the markers is tuned whole; a `begin`
without its `end` runs to the end of the file. SEED is never proposed either.
"""

from __future__ import annotations

import ast
import io
import itertools
import math
import random
import re
import tokenize
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.agents.base import AgentError, PastRun, Proposal, ProposalContext

Value = bool | int | float
Step = Literal["up", "down"]  # the numeric direction of a change; for bools "up" means True
Strategy = Literal["exploit", "explore"]
Point = frozenset[tuple[str, Value]]

_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_MARKER = re.compile(r"#\s*tunable\s*:\s*(begin|end)\b")  # a full-line comment that opens or closes the block
_VALUE_TYPES = (bool, int, float)
FLOAT_LADDER = (2.0, 1.5, 1.25)  # step factors; a constant moves down the ladder each time it pays off
SIG_DIGITS = 4  # new floats are rounded so the file stays readable (0.05, not 0.05000000000000001)
SMALL_INT = 16  # ints up to this size step by 1 (depths, head counts); larger non-powers of two by the ladder
ZERO_FLOAT_START = 0.01  # first value tried for a 0.0 constant (dropout, weight decay, a warmup ratio)
EXPLOIT_PROB = 0.8  # how often a move that paid off is repeated rather than something new tried
SINGLE_CHANGE_PROB = 0.6  # single changes are easier to attribute, so they are the common case
EXPLORE_SAMPLES = 64  # random draws before falling back to an exhaustive scan of nearby points
FALLBACK_LIMIT = 5000  # bound on the exhaustive scan (singles, then pairs)
_FRACTION_WORDS = ("RATIO", "FRAC", "DROPOUT", "PROB", "BETA", "MOMENTUM")  # floats in [0, 1] stay <= 1
_NOT_TUNABLE = ("SEED",)  # a new seed only samples noise: a "keep" on it would be luck, not research


@dataclass(frozen=True)
class Constant:
    name: str
    value: Value
    text: str  # the literal as written, to keep its style (3e-4, 2**19, 524_288)
    start: tuple[int, int]  # (line, utf-8 byte column) of the value, as ast reports it
    end: tuple[int, int]
    power_of_two_form: bool  # written as 2**k
    tunable: bool = True  # inside the file's tunable block (or the file marks none): mutate may propose it


@dataclass(frozen=True)
class Change:
    name: str
    old: Value
    new: Value

    @property
    def step(self) -> Step:
        return "up" if self.new > self.old else "down"


@dataclass(frozen=True)
class Attempt:
    """One of our past mutations of a file, as read back from the ledger."""

    run: int
    kept: bool
    changes: tuple[Change, ...]
    point: Point  # all constants after the change

    @property
    def base(self) -> Point:
        """The point the mutation started from."""
        return freeze_point({**dict(self.point), **{ch.name: ch.old for ch in self.changes}})


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    strategy: Strategy
    paid_by: tuple[int, ...] = ()  # for exploit: the runs whose kept move is being repeated


# ---------------------------------------------------------------- parsing and rewriting (pure)


def _literal(node: ast.expr) -> tuple[Value, bool] | None:
    """(value, written as 2**k) of a supported literal, or None."""
    value: Value
    if isinstance(node, ast.Constant) and isinstance(node.value, _VALUE_TYPES) and type(node.value) in _VALUE_TYPES:
        value = node.value
        pow2_form = False
    elif (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and type(node.operand.value) in (int, float)
    ):
        value = -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        pow2_form = False
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base = node.left.value if isinstance(node.left, ast.Constant) else None
        exp = node.right.value if isinstance(node.right, ast.Constant) else None
        if not (type(base) is int and type(exp) is int and base >= 2 and 0 <= exp <= 62):
            return None
        value, pow2_form = base**exp, base == 2
    else:
        return None
    # 1e999 parses as inf, and ints past 64 bits do not survive the JSON ledger
    if not math.isfinite(value) if isinstance(value, float) else abs(value) >= 2**63:
        return None
    return value, pow2_form


def _module_scope_bindings(tree: ast.Module) -> Counter[str]:
    """How often each name is bound at module scope; names declared `global` anywhere count twice."""
    counts: Counter[str] = Counter()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            counts[node.id] += 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            counts[node.name] += 1
            continue  # their bodies are another scope
        if not isinstance(node, ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            counts.update({name: 2 for name in node.names})
    return counts


def tunable_lines(source: str) -> list[range] | None:
    """The line ranges (1-based) of the file's tunable blocks, or None when it marks none (see the
    module docstring). Markers are comments alone on their line, found by the tokenizer, so a
    marker-like line inside a string is not one."""
    blocks: list[range] = []
    start: int | None = None
    lines = source.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    for tok in tokens:
        if tok.type != tokenize.COMMENT or lines[tok.start[0] - 1][: tok.start[1]].strip():
            continue
        m = _MARKER.match(tok.string)
        if m and m.group(1) == "begin" and start is None:
            start = tok.start[0]
        elif m and m.group(1) == "end" and start is not None:
            blocks.append(range(start, tok.start[0] + 1))
            start = None
    if start is not None:
        blocks.append(range(start, len(lines) + 1))
    found_any = any(_MARKER.match(t.string) for t in tokens if t.type == tokenize.COMMENT)
    return blocks if found_any else None


def parse_constants(source: str) -> dict[str, Constant]:
    """The constants of a module, in file order (see the module docstring for the rules), each marked
    tunable or not by the file's tunable block.

    Raises SyntaxError if `source` does not parse.
    """
    tree = ast.parse(source)
    bindings = _module_scope_bindings(tree)
    blocks = tunable_lines(source)
    # ast's offsets are utf-8 bytes on lines ended by \n, \r\n or \r, which is how bytes.splitlines cuts;
    # one split for the file, where ast.get_source_segment splits it again for every call.
    lines = source.encode().splitlines(keepends=True)
    out: dict[str, Constant] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value_node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value_node = stmt.target, stmt.value
        else:
            continue
        if not (isinstance(target, ast.Name) and _NAME.match(target.id) and bindings[target.id] == 1):
            continue
        literal = _literal(value_node)
        if literal is None or value_node.end_lineno is None or value_node.end_col_offset is None:
            continue
        first, last = value_node.lineno - 1, value_node.end_lineno - 1
        span = b"".join(lines[first : last + 1])
        cut = len(span) - len(lines[last]) + value_node.end_col_offset
        text = span[value_node.col_offset : cut].decode()
        out[target.id] = Constant(
            name=target.id,
            value=literal[0],
            text=text,
            start=(value_node.lineno, value_node.col_offset),
            end=(value_node.end_lineno, value_node.end_col_offset),
            power_of_two_form=literal[1],
            tunable=blocks is None or any(stmt.lineno in block for block in blocks),
        )
    return out


def freeze_point(values: Mapping[str, Any]) -> Point:
    """A hashable point; raises TypeError on a value that is not a bool, int or float."""
    if not all(type(v) in _VALUE_TYPES for v in values.values()):
        raise TypeError(f"point values must be bool, int or float: {dict(values)!r}")
    return frozenset(values.items())


def _round_sig(x: float) -> float:
    return float(f"{x:.{SIG_DIGITS}g}")


def render_value(constant: Constant, new: Value) -> str:
    """Source text for `new`, in the style of the literal it replaces."""
    if isinstance(new, bool):
        return repr(new)
    if isinstance(new, int):
        if constant.power_of_two_form and new >= 1 and new & (new - 1) == 0:
            sep = " ** " if " " in constant.text else "**"
            return f"2{sep}{new.bit_length() - 1}"
        return f"{new:_}" if "_" in constant.text else str(new)
    if "e" not in constant.text.lower():
        return repr(new)
    mantissa, exponent = f"{new:.{SIG_DIGITS - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"  # 3.750e-04 -> 3.75e-4


def _line_starts(data: bytes) -> list[int]:
    starts = [0]
    for line in data.splitlines(keepends=True):  # \n, \r\n and \r: the line ends ast counts
        starts.append(starts[-1] + len(line))
    return starts


def apply_changes(source: str, constants: Mapping[str, Constant], changes: Sequence[Change]) -> str:
    """`source` with each changed literal replaced in its exact span, comment columns kept.

    Raises AgentError if the result does not parse back to exactly the intended constants.
    """
    data = source.encode()
    starts = _line_starts(data)
    spans = []
    for ch in changes:
        c = constants[ch.name]
        lo, hi = starts[c.start[0] - 1] + c.start[1], starts[c.end[0] - 1] + c.end[1]
        spans.append((lo, hi, render_value(c, ch.new).encode(), len(c.text.encode())))
    for lo, hi, new_text, old_len in sorted(spans, reverse=True):  # from the end, so offsets stay valid
        # Keep an aligned `# why` comment in its column: absorb the length change in the padding.
        pad = re.match(rb" +(?=#)", data[hi:])
        if pad is not None:
            width = len(pad.group())
            hi += width
            new_text += b" " * max(width - (len(new_text) - old_len), min(width, 2))
        data = data[:lo] + new_text + data[hi:]
    result = data.decode()
    expected = {n: c.value for n, c in constants.items()} | {ch.name: ch.new for ch in changes}
    try:
        got = {n: c.value for n, c in parse_constants(result).items()}
    except SyntaxError as e:
        raise AgentError(f"refusing a rewrite that does not parse: {e}") from e
    if [(n, type(v), v) for n, v in got.items()] != [(n, type(v), v) for n, v in expected.items()]:
        raise AgentError(f"refusing a rewrite that reads back as {got}, not {expected}")
    return result


# ---------------------------------------------------------------- moves and choice (pure)


def _ladder(level: int) -> tuple[float, ...]:
    level = min(level, len(FLOAT_LADDER) - 1)
    return FLOAT_LADDER[level:] + FLOAT_LADDER[:level][::-1]  # preferred factor first


def _scale(v: float, factor: float, step: Step) -> float:
    grow = (step == "up") == (v > 0)  # "up" on a negative value shrinks its magnitude
    return v * factor if grow else v / factor


def candidate_values(c: Constant, step: Step, level: int = 0) -> tuple[Value, ...]:
    """New values for one step of `c` up or down, preferred first; () if the move is not allowed.

    `level` is how many times moves of this constant paid off: floats take smaller steps then.
    """
    v, up = c.value, step == "up"
    if isinstance(v, bool):
        return (up,) if v != up else ()
    if isinstance(v, int):
        if v >= 2 and v & (v - 1) == 0:
            raw: list[Value] = [v * 2 if up else v // 2]
            if v <= SMALL_INT and not c.power_of_two_form:  # a count like DEPTH = 8 must reach 9 too
                raw.append(v + 1 if up else v - 1)
        elif abs(v) <= SMALL_INT:
            raw = [v + 1 if up else v - 1]
        else:  # +/-1 on a width of 768 or 10_000 steps measures nothing
            raw = [round(_scale(v, f, step)) for f in _ladder(level)]
        # Never cross or touch zero: a depth of 0 or a negative size is a crash, not an experiment.
        allowed = [n for n in raw if (n > 0 if v >= 0 else n < 0)]
    else:
        if v == 0:
            raw = [ZERO_FLOAT_START] if up else []
        else:
            raw = [_round_sig(_scale(v, f, step)) for f in _ladder(level)]
        capped = any(w in c.name for w in _FRACTION_WORDS) and 0 <= v <= 1
        allowed = [n for n in raw if math.isfinite(n) and not (capped and n > 1)]
    return tuple(dict.fromkeys(n for n in allowed if n != v))  # rounding can collapse steps


def read_attempts(history: Sequence[PastRun], file: str) -> tuple[Attempt, ...]:
    """Our past mutations of `file`, oldest first; other agents' runs and malformed ASI are skipped."""
    out = []
    for run in history:
        mutation, point = run.asi.get("mutation"), run.asi.get("point")
        if not (isinstance(mutation, dict) and mutation.get("file") == file and isinstance(point, dict)):
            continue
        try:
            changes = tuple(Change(str(c["name"]), c["old"], c["new"]) for c in mutation["changes"])
            frozen = freeze_point(point)
        except (KeyError, TypeError):
            continue
        if not all(type(x) in _VALUE_TYPES for ch in changes for x in (ch.old, ch.new)):
            continue
        out.append(Attempt(run=run.run, kept=run.status == "keep", changes=changes, point=frozen))
    return tuple(out)


def choose_changes(
    constants: Mapping[str, Constant], attempts: Sequence[Attempt], rng: random.Random, max_changes: int = 2
) -> Plan | None:
    """The next mutation from the current constants, or None if every nearby point was tried.

    Exploit: repeat the most recent kept (name, step) move that has not failed from this point.
    Explore: 1..max_changes random moves, favouring constants that paid off and shunning moves
    that were discarded or crashed from this very point. Tried points are never proposed.
    """
    current = {n: c.value for n, c in constants.items()}
    here = freeze_point(current)
    # An attempt's starting point was run too (it was the kept file then): the baseline's
    # point is only known this way, since the baseline run records no mutation.
    tried = {a.point for a in attempts} | {a.base for a in attempts} | {here}
    level = Counter(ch.name for a in attempts if a.kept for ch in a.changes)
    failed_here = {(ch.name, ch.step) for a in attempts if not a.kept and a.base == here for ch in a.changes}
    paid: dict[tuple[str, Step], list[int]] = {}  # move -> runs that kept it, most recent first
    for a in reversed(attempts):
        if a.kept:
            for ch in a.changes:
                paid.setdefault((ch.name, ch.step), []).append(a.run)

    steps: tuple[Step, Step] = ("up", "down")
    moves = [
        (n, s)
        for n in constants
        if constants[n].tunable and not any(w in n for w in _NOT_TUNABLE)
        for s in steps
        if candidate_values(constants[n], s, level[n])
    ]

    def first_untried(picked: Sequence[tuple[str, Step]]) -> tuple[Change, ...] | None:
        options = [candidate_values(constants[n], s, level[n]) for n, s in picked]
        for values in itertools.product(*options):
            changes = tuple(Change(n, current[n], v) for (n, _), v in zip(picked, values, strict=True))
            if freeze_point(current | {ch.name: ch.new for ch in changes}) not in tried:
                return changes
        return None

    open_paid = [m for m in paid if m in moves and m not in failed_here]
    if open_paid and rng.random() < EXPLOIT_PROB:
        for move in open_paid:
            if changes := first_untried([move]):
                return Plan(changes, "exploit", tuple(paid[move]))

    weights = [(2.0 if n in level else 1.0) * (0.1 if (n, s) in failed_here else 1.0) for n, s in moves]
    n_names = len({n for n, _ in moves})
    for _ in range(EXPLORE_SAMPLES if moves else 0):
        k = 1 if max_changes == 1 or rng.random() < SINGLE_CHANGE_PROB else rng.randint(2, max_changes)
        pool, pool_w, picked = list(moves), list(weights), []
        for _ in range(min(k, n_names)):
            n, s = rng.choices(pool, pool_w)[0]
            picked.append((n, s))
            pool_w = [w if m[0] != n else 0.0 for m, w in zip(pool, pool_w, strict=True)]
        if changes := first_untried(picked):
            return Plan(changes, "explore")

    # Random draws found nothing new: scan every single move, then pairs, before giving up.
    singles = [[m] for m in moves]
    rng.shuffle(singles)
    pairs = ([a, b] for a, b in itertools.combinations(moves, 2) if a[0] != b[0] and max_changes >= 2)
    for picked in itertools.islice(itertools.chain(singles, pairs), FALLBACK_LIMIT):
        if changes := first_untried(picked):
            return Plan(changes, "explore")
    return None


# ---------------------------------------------------------------- the agent (file system here only)


def _hypothesis(plan: Plan, constants: Mapping[str, Constant], ctx: ProposalContext) -> str:
    clauses = []
    for ch in plan.changes:
        c = constants[ch.name]
        if isinstance(ch.new, bool):
            clauses.append(f"{'enabling' if ch.new else 'disabling'} {ch.name}")
        else:
            word = "higher" if ch.step == "up" else "lower"
            clauses.append(f"a {word} {ch.name} ({c.text} -> {render_value(c, ch.new)})")
    better = "lower" if ctx.direction == "lower" else "higher"
    verb = "gives" if len(clauses) == 1 else "give"
    text = f"{' and '.join(clauses)} {verb} a {better} {ctx.metric_name} within the fixed {ctx.time_budget_s:g}s budget"
    if plan.strategy == "exploit":
        ch, n = plan.changes[0], len(plan.paid_by)
        text += (
            f"; moving {ch.name} {ch.step} paid off in {n} earlier run{'s' * (n > 1)} "
            f"(latest #{plan.paid_by[0]}), so keep going"
        )
    return text[0].upper() + text[1:] + "."


class MutateAgent:
    name = "mutate"

    def __init__(self, *, max_changes: int = 2, rng_seed: int | None = None) -> None:
        if max_changes < 1:
            raise ValueError(f"max_changes must be >= 1, got {max_changes}")
        self.max_changes = max_changes
        self.rng_seed = rng_seed  # overrides ctx.seed when set

    def propose(self, ctx: ProposalContext) -> Proposal:
        seed = ctx.seed if self.rng_seed is None else self.rng_seed
        # A str seed goes through sha512, so the draw is the same in every process (hash() is not).
        # The refusal feedback is mixed in so a refused proposal is not simply proposed again.
        rng = random.Random(f"mutate:{seed}:{ctx.run_number}:{ctx.feedback or ''}")
        files: dict[str, tuple[str, dict[str, Constant]]] = {}
        problems = []
        for rel in ctx.editable:
            path = ctx.root / rel
            if not (rel.endswith(".py") and path.is_file()):
                continue
            source = path.read_bytes().decode()  # bytes, so line endings are left exactly as they are
            try:
                constants = parse_constants(source)
            except SyntaxError as e:
                problems.append(f"{rel} does not parse ({e.msg}, line {e.lineno})")
                continue
            if any(c.tunable for c in constants.values()):
                files[rel] = (source, constants)
        if not files:
            raise AgentError(
                "no editable .py file has module-level UPPER_CASE numeric or boolean constants to mutate "
                f"(editable: {', '.join(ctx.editable) or 'none'}{'; ' if problems else ''}{'; '.join(problems)}); "
                "write hyperparameters as `NAME = value` at the top level (inside the `# tunable: begin` / "
                "`# tunable: end` block, if the file marks one), or use an LLM agent"
            )
        order = sorted(files)
        rng.shuffle(order)
        for rel in order:
            source, constants = files[rel]
            plan = choose_changes(constants, read_attempts(ctx.history, rel), rng, self.max_changes)
            if plan is None:
                continue
            (ctx.root / rel).write_bytes(apply_changes(source, constants, plan.changes).encode())
            prefix = f"{rel}: " if len(files) > 1 else ""
            description = prefix + ", ".join(
                f"{ch.name} {constants[ch.name].text} -> {render_value(constants[ch.name], ch.new)}"
                for ch in plan.changes
            )
            point = {n: c.value for n, c in constants.items()} | {ch.name: ch.new for ch in plan.changes}
            asi = {
                "hypothesis": _hypothesis(plan, constants, ctx),
                "change": description,
                "strategy": plan.strategy,
                "mutation": {
                    "file": rel,
                    "changes": [{"name": ch.name, "old": ch.old, "new": ch.new} for ch in plan.changes],
                },
                "point": point,
            }
            return Proposal(description=description, asi=asi)
        raise AgentError(
            f"every nearby point has been tried in {', '.join(order)} "
            f"({sum(len(read_attempts(ctx.history, f)) for f in order)} mutations in this segment); "
            "change the constants by hand, start a new segment, or use an LLM agent"
        )
