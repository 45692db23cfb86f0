"""Static resolution for the audit (`harness.audit`): what a name or an expression in one Python file stands for.

The audit's rules (`harness.audit_rules`) ask two questions of an expression, answered here, statically and
flow-insensitively, from every binding of every name in the file:
- `Index.paths(e)`: the dotted names `e` may refer to (`import prepare as P` makes `P.x` `prepare.x`;
  `from os import environ as E`, `importlib.import_module("prepare")`, `sys.modules["prepare"]`,
  `getattr(m, "x")`, `vars(m)` resolve too, through simple assignments anywhere in the file);
- `Index.fold(e)`: the strings `e` may be, with unknown parts (`"prep" + "are.py"`, f-strings, `%`,
  `.format`, `os.path.join`, `Path(...) / ...`, `.with_name`), through simple assignments.
Both carry the lines they were derived from, so a finding can be tied to the lines a proposal changed, and
both stop at `_CAP` candidates. Nothing here knows a rule; everything is a pure function of the source text.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

Lines = frozenset[int]
Part = str | None  # None: an unknown piece of a string
Str = tuple[tuple[Part, ...], Lines]  # a string the expression may be, and the lines it came from
Ref = tuple[str, Lines]  # a dotted name the expression may refer to
UNKNOWN: Str = ((None,), frozenset())
_CAP = 16  # candidates per expression: an ambiguous name cannot make the audit slow
GLOBALS = "<globals>"  # what globals() (and vars() without arguments) refers to
_BUILTINS = frozenset(dir(builtins))


def lines_of(node: ast.AST) -> Lines:
    """The lines a node spans."""
    start = getattr(node, "lineno", 1)
    return frozenset(range(start, (getattr(node, "end_lineno", None) or start) + 1))


def _concat(a: tuple[Part, ...], b: tuple[Part, ...]) -> tuple[Part, ...]:
    out: list[Part] = list(a)
    for p in b:
        if out and isinstance(out[-1], str) and isinstance(p, str):
            out[-1] += p
        elif not (p is None and out and out[-1] is None):
            out.append(p)
    return tuple(out)


def product(parts: Sequence[list[Str]], sep: str = "") -> list[Str]:
    out: list[Str] = []
    for combo in itertools.islice(itertools.product(*parts), _CAP):
        acc: tuple[Part, ...] = ()
        lines: set[int] = set()
        for i, (p, ln) in enumerate(combo):
            acc = _concat(acc, ((sep,) if i and sep else ()) + p)
            lines |= ln
        out.append((acc, frozenset(lines)))
    return out


def exact(s: tuple[Part, ...]) -> str | None:
    return "".join(s) if all(isinstance(p, str) for p in s) else None  # type: ignore[arg-type]


def tail(s: tuple[Part, ...]) -> str:
    """The known end of a string (after its last unknown piece)."""
    last = s[-1] if s else ""
    return last if isinstance(last, str) else ""


def text_of(s: tuple[Part, ...]) -> str:
    return "".join("\0" if p is None else p for p in s)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[a-zA-Z%]")
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_PATH_CLASSES = frozenset({"Path", "PurePath", "PosixPath", "PurePosixPath"})  # from pathlib, or not imported
_PATH_CTORS = frozenset({"os.path.join", "posixpath.join"})
_SAME_PATH = frozenset({"builtins.str", "os.fspath", "os.fsdecode", "os.path.abspath", "os.path.realpath",
                        "os.path.normpath", "os.path.expanduser", "os.path.expandvars", "builtins.bytes"})
_SAME_METHODS = frozenset({"resolve", "absolute", "expanduser", "as_posix", "__fspath__", "strip", "lower"})


_BINDERS = frozenset({ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.AugAssign, ast.For, ast.AsyncFor,
                      ast.comprehension, ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                      ast.ClassDef, ast.arg, ast.ExceptHandler, ast.withitem})


class Index:
    """Every binding of every name in one file, whatever its scope (flow-insensitive, so an alias made in
    one function counts in another: more findings, never fewer), and what names and strings resolve to."""

    def __init__(self, nodes: list[ast.AST], file: str, modules: frozenset[str]) -> None:
        self.file, self.modules = file, modules  # modules: the import names of the fixed modules
        self.values: dict[str, list[tuple[ast.expr, Lines]]] = {}  # simple assignments
        self.imported: dict[str, list[Ref]] = {}  # names bound by import, to what
        self.opaque: set[str] = set()  # names bound to something unknown (parameters, defs, loop variables)
        self.defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef] = {}
        self._paths: dict[str, list[Ref]] = {}
        self._folds: dict[str, list[Str]] = {}
        self._busy: set[str] = set()  # names being resolved (a = b; b = a ends there)
        self._busy_folds: set[str] = set()
        for node in nodes:
            if type(node) in _BINDERS:
                self._collect(node)

    def _bind(self, target: ast.expr, value: ast.expr | None, lines: Lines) -> None:
        if isinstance(target, ast.Name):
            if value is None:
                self.opaque.add(target.id)
            else:
                self.values.setdefault(target.id, []).append((value, lines))
        elif isinstance(target, ast.Tuple | ast.List):
            pair = isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts)
            for i, t in enumerate(target.elts):
                self._bind(t, value.elts[i] if pair else None, lines)  # type: ignore[union-attr]
        elif isinstance(target, ast.Starred):
            self._bind(target.value, None, lines)

    def _collect(self, node: ast.AST) -> None:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                self._bind(t, node.value, lines_of(node))
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
            self._bind(node.target, node.value, lines_of(node))
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            grown = ast.BinOp(ast.Name(node.target.id, ast.Load()), node.op, node.value)
            self._bind(node.target, ast.copy_location(grown, node), lines_of(node))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            if isinstance(node.iter, ast.Tuple | ast.List | ast.Set) and isinstance(node.target, ast.Name):
                for e in node.iter.elts:
                    self._bind(node.target, e, lines_of(node.iter))
            else:
                self._bind(node.target, None, frozenset())
        elif isinstance(node, ast.Import):
            for a in node.names:
                local, dotted = (a.asname, a.name) if a.asname else (a.name.split(".")[0],) * 2
                self.imported.setdefault(local, []).append((dotted, lines_of(node)))
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level if node.level and not node.module else "") + (node.module or "")
            for a in node.names:
                if a.name != "*":
                    ref = f"{base}.{a.name}" if base and not base.endswith(".") else base + a.name
                    self.imported.setdefault(a.asname or a.name, []).append((ref, lines_of(node)))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.opaque.add(node.name)
            self.defs[node.name] = node
        elif isinstance(node, ast.arg):
            self.opaque.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self.opaque.add(node.name)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._bind(node.optional_vars, None, frozenset())

    def bound(self, name: str) -> bool:
        return name in self.values or name in self.imported or name in self.opaque

    # ---- what an expression refers to

    def paths(self, e: ast.AST) -> list[Ref]:
        if isinstance(e, ast.Name):
            return self._name_paths(e.id)
        if isinstance(e, ast.Attribute):
            return [(f"{d}.{e.attr}", ln) for d, ln in self.paths(e.value)]
        if isinstance(e, ast.Subscript):
            out: list[Ref] = []
            for d, ln in self.paths(e.value):
                keys = [(k, kl) for k, kl in self.fold(e.slice) if exact(k) is not None]
                if d == "sys.modules" and keys:
                    out += [(exact(k) or "", ln | kl) for k, kl in keys]
                elif d.endswith(".__dict__") and keys:
                    out += [(f"{d[:-9]}.{exact(k)}", ln | kl) for k, kl in keys]
                elif d == GLOBALS and keys:
                    out += [(p, ln | kl | pl) for k, kl in keys for p, pl in self._name_paths(exact(k) or "")]
                else:
                    out.append((d + "[]", ln))
            return out[:_CAP]
        if isinstance(e, ast.Call):
            return self._call_paths(e)
        if isinstance(e, ast.NamedExpr):
            return self.paths(e.value)
        if isinstance(e, ast.IfExp):
            return (self.paths(e.body) + self.paths(e.orelse))[:_CAP]
        if isinstance(e, ast.BoolOp):
            return [r for v in e.values for r in self.paths(v)][:_CAP]
        return []

    def _name_paths(self, name: str) -> list[Ref]:
        if name in self._paths:
            return self._paths[name]
        if name in self._busy:
            return []
        self._busy.add(name)
        out: list[Ref] = list(self.imported.get(name, []))
        for value, ln in self.values.get(name, []):
            out += [(d, ln | dl) for d, dl in self.paths(value)]
        if not self.bound(name):  # `prepare.x = 1` with no import still means the module
            if name in self.modules or name not in _BUILTINS:
                out.append((name, frozenset()))
            if name in _BUILTINS:
                out.append((f"builtins.{name}", frozenset()))
        self._busy.discard(name)
        self._paths[name] = out[:_CAP]
        return self._paths[name]

    def _call_paths(self, e: ast.Call) -> list[Ref]:
        out: list[Ref] = []
        callee = {d for d, _ in self.paths(e.func)}
        first = e.args[0] if e.args else None
        if first is None:
            return [(GLOBALS, frozenset())] if callee & {"builtins.globals", "builtins.vars"} else []
        if callee & {"importlib.import_module", "builtins.__import__", "sys.modules.get"}:
            out += [(s, ln) for p, ln in self.fold(first) if (s := exact(p)) is not None]
        if "builtins.getattr" in callee and len(e.args) >= 2:
            names = [(s, ln) for p, ln in self.fold(e.args[1]) if (s := exact(p)) is not None]
            out += [(f"{d}.{s}", dl | ln) for d, dl in self.paths(first) for s, ln in names]
        if "builtins.vars" in callee:
            out += [(f"{d}.__dict__", dl) for d, dl in self.paths(first)]
        return out[:_CAP]

    # ---- the strings an expression may be

    def fold(self, e: ast.AST) -> list[Str]:
        if isinstance(e, ast.Constant):
            if isinstance(e.value, str):
                return [((e.value,), frozenset())]
            if isinstance(e.value, bytes):
                return [((e.value.decode("latin-1"),), frozenset())]
            return [UNKNOWN]
        if isinstance(e, ast.JoinedStr):
            pieces = [self.fold(v.value) if isinstance(v, ast.FormattedValue) and v.format_spec is None
                      and v.conversion in (-1, 115) else self.fold(v) if isinstance(v, ast.Constant) else [UNKNOWN]
                      for v in e.values]
            return product(pieces)
        if isinstance(e, ast.BinOp):
            if isinstance(e.op, ast.Add):
                return product([self.fold(e.left), self.fold(e.right)])
            if isinstance(e.op, ast.Div):
                return product([self.fold(e.left), self.fold(e.right)], "/")
            if isinstance(e.op, ast.Mod):
                args = e.right.elts if isinstance(e.right, ast.Tuple) else [e.right]
                return [r for t, ln in self.fold(e.left) if (s := exact(t)) is not None
                        for r in self._format(_PERCENT, s, args, {}, ln)][:_CAP] or [UNKNOWN]
            return [UNKNOWN]
        if isinstance(e, ast.Name):
            return self._name_fold(e.id)
        if isinstance(e, ast.Attribute) and e.attr == "__file__":
            mods = [(d, ln) for d, ln in self.paths(e.value) if d in self.modules]
            return [((None, f"/{d.rsplit('.', 1)[-1]}.py"), ln) for d, ln in mods] or [UNKNOWN]
        if isinstance(e, ast.Call):
            return self._call_fold(e)
        if isinstance(e, ast.IfExp):
            return (self.fold(e.body) + self.fold(e.orelse))[:_CAP]
        if isinstance(e, ast.NamedExpr):
            return self.fold(e.value)
        return [UNKNOWN]

    def _name_fold(self, name: str) -> list[Str]:
        if name in self._folds:
            return self._folds[name]
        if name == "__file__" and not self.bound(name):
            return [((None, "/" + Path(self.file).name), frozenset())]
        if name not in self.values or name in self._busy_folds:
            return [UNKNOWN]
        self._busy_folds.add(name)
        # The assignments that do not mention the name first; those that grow it (`p += "are.py"`) then
        # see those values (one step of growth, not a fixed point: enough for code written in steps).
        values = self.values[name]
        grows = [len(values) > 1 and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(v))
                 for v, _ in values]
        out = [(s, ln | sl) for (v, ln), g in zip(values, grows, strict=True) if not g for s, sl in self.fold(v)]
        self._folds[name] = out[:_CAP] or [UNKNOWN]
        out += [(s, ln | sl) for (v, ln), g in zip(values, grows, strict=True) if g for s, sl in self.fold(v)]
        self._busy_folds.discard(name)
        self._folds[name] = out[:_CAP] or [UNKNOWN]
        return self._folds[name]

    def _format(self, pattern: re.Pattern[str], template: str, args: Sequence[ast.expr],
                kwargs: dict[str, ast.expr], lines: Lines) -> list[Str]:
        pieces: list[list[Str]] = []
        pos, index = 0, 0
        for m in pattern.finditer(template):
            pieces.append([((template[pos:m.start()],), lines)])
            token = m.group(0)
            if token in ("%%", "{{", "}}"):
                pieces.append([((token[0],), frozenset())])
            else:
                key = m.group(1) if m.groups() else None
                plain = token[-1] in "sr" if token.startswith("%") else not re.search(r"[!:]", key or "")
                if key and not key.isdigit():
                    arg: ast.expr | None = kwargs.get(key)
                elif key:
                    arg = args[int(key)] if int(key) < len(args) else None
                else:
                    arg, index = (args[index] if index < len(args) else None), index + 1
                pieces.append(self.fold(arg) if arg is not None and plain else [UNKNOWN])
            pos = m.end()
        pieces.append([((template[pos:],), lines)])
        return product(pieces)

    def _call_fold(self, e: ast.Call) -> list[Str]:
        callee = {d for d, _ in self.paths(e.func)}
        if callee & _PATH_CTORS or any(c.rsplit(".", 1)[-1] in _PATH_CLASSES for c in callee):
            return product([self.fold(a) for a in e.args], "/") if e.args else [((".",), frozenset())]
        if callee & _SAME_PATH and e.args:
            return self.fold(e.args[0])
        if callee & {"inspect.getfile", "inspect.getsourcefile"} and e.args:
            return self.fold(ast.copy_location(ast.Attribute(e.args[0], "__file__", ast.Load()), e))
        if not isinstance(e.func, ast.Attribute):
            return [UNKNOWN]
        method, receiver = e.func.attr, e.func.value
        if method in _SAME_METHODS and not e.args:
            return self.fold(receiver)
        if method == "joinpath":
            return product([self.fold(receiver), *(self.fold(a) for a in e.args)], "/")
        if method in ("with_name", "with_stem", "with_suffix") and len(e.args) == 1:
            if method == "with_name":
                return product([[UNKNOWN], self.fold(e.args[0])], "/")
            out: list[Str] = []
            for (s, ln), (new, nl) in itertools.product(self.fold(receiver), self.fold(e.args[0])):
                name, new_s = tail(s).rsplit("/", 1)[-1], exact(new)
                if new_s is None or not name:
                    out.append(UNKNOWN)
                    continue
                stem, dot, suffix = name.rpartition(".")
                stem, suffix = (stem, "." + suffix) if dot and stem else (name, "")
                new_name = stem + new_s if method == "with_suffix" else new_s + suffix
                out.append((_concat(s[:-1], (tail(s)[: len(tail(s)) - len(name)] + new_name,)), ln | nl))
            return out[:_CAP]
        if method == "format":
            kwargs = {k.arg: k.value for k in e.keywords if k.arg}
            return [r for t, ln in self.fold(receiver) if (template := exact(t)) is not None
                    for r in self._format(_BRACES, template, e.args, kwargs, ln)][:_CAP] or [UNKNOWN]
        if method == "join" and len(e.args) == 1 and isinstance(e.args[0], ast.List | ast.Tuple):
            seps = [sep for t, _ in self.fold(receiver) if (sep := exact(t)) is not None]
            return [r for sep in seps for r in product([self.fold(x) for x in e.args[0].elts], sep)][:_CAP]
        return [UNKNOWN]
