"""What each rule of the audit (`harness.audit`, which lists them in `RULES`) looks for in one parsed file.

`Checks(tree, file, scope).run()` yields a `Hit` per thing a rule objects to: the rule's id, the node whose
line is reported, the lines the hit depends on (the node's and those of every alias or string piece it was
resolved through, by `harness.resolve`), and a detail; `harness.audit.audit_source` turns hits into
findings. The scope (`AuditScope`, what the audit knows of the target) is defined here because every
check reads it.
In order: the scope, the names the rules know (callables, methods, files), the checks (`Checks`: each node,
then the module-level bindings of fixed names), and import-time code (`_ImportTime`, result_file targets).
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.resolve import GLOBALS, UNKNOWN, Index, Lines, Str, exact, lines_of, product, tail, text_of

KIT = "arkit"  # the fixed kit's module: its result-channel writer is for the fixed evaluation only


@dataclass(frozen=True)
class AuditScope:
    """What the audit knows of the target."""

    fixed_files: tuple[str, ...]  # workspace-relative paths of the fixed files
    fixed_names: frozenset[str] = frozenset()  # public top-level names of the fixed modules (not the kit's)
    fixed_imports: frozenset[str] = frozenset()  # top-level packages the fixed files import
    primary_metric: str | None = None  # stdout targets: the metric that editable code must not print
    import_time: bool = False  # the fixed evaluation imports the editable files (result_file targets)

    @functools.cached_property
    def modules(self) -> frozenset[str]:
        """Import names of the fixed modules, the kit always among them."""
        out = {KIT}
        for f in self.fixed_files:
            if f.endswith(".py"):
                rel = f[:-3].replace("\\", "/")
                out |= {rel.rsplit("/", 1)[-1], rel.replace("/", ".")}
        return frozenset(out)

    @functools.cached_property
    def file_names(self) -> frozenset[str]:
        return frozenset(Path(f).name for f in self.fixed_files)


# ------------------------------------------------------------------------------ the names the rules know

VAL_SPLITS = frozenset({"val", "valid", "validation", "heldout", "test"})
# load_split(s), rows: the post-training kit's data (armath.load_splits(spec)["val"], prepared.rows("val"))
_DATALOADERS = frozenset({"make_dataloader", "dataloader", "load_split", "load_splits", "rows", "iter_split",
                          "_split_files", "_document_batches"})
_VAL_ATTR = re.compile(r"^(?:val|valid|validation|heldout|test)_(?:files?|dir|docs|data|path|shards?|split)$")
_OPENERS = frozenset({"builtins.open", "io.open", "codecs.open", "os.open"})
_PATH_WRITERS = frozenset({"os.remove", "os.unlink", "os.truncate", "os.chmod", "os.chown", "os.utime", "os.rename",
                           "os.replace", "os.renames", "os.link", "os.symlink", "os.mkfifo", "os.rmdir",
                           "shutil.move", "shutil.rmtree", "py_compile.compile", "compileall.compile_file"})
_COPIERS = frozenset({"shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copytree", "shutil.copymode",
                      "shutil.copystat"})
_PATH_METHODS = frozenset({"write_text", "write_bytes", "unlink", "rename", "replace", "touch", "chmod", "lchmod",
                           "symlink_to", "hardlink_to", "rmdir"})
_HARNESS_FILES = frozenset({"autoresearch.jsonl", "autoresearch.toml"})
_HARNESS_DIRS = re.compile(r"/\.(?:autoresearch|git)/")
_SHELLS = ("os.system", "os.popen", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.")
_MUTATORS = frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__", "append",
                       "extend", "insert", "remove", "add", "discard", "sort", "reverse"})
_SETATTRS = frozenset({"builtins.setattr", "builtins.delattr", "builtins.object.__setattr__",
                       "builtins.object.__delattr__", "builtins.type.__setattr__"})
_STREAMS = frozenset({"stdout", "stderr", "__stdout__", "__stderr__", "displayhook"})
_PUBLIC_DUNDERS = frozenset({"__name__", "__doc__", "__file__", "__module__", "__qualname__", "__version__",
                             "__all__", "__spec__", "__annotations__"})
_CHANNEL = re.compile(r"AUTORESEARCH_RESULT")
_CHANNEL_NAMES = frozenset({"report_result", "_RESULT_FILE", "_RESULT"})
_BY_HAND = ("importlib.util.spec_from", "importlib.util.module_from_spec", "importlib.util.LazyLoader",
            "importlib.machinery.", "runpy.")
_DYNAMIC = frozenset({"builtins.exec", "builtins.eval", "builtins.compile", "types.FunctionType", "types.CodeType"})
_CALLABLE_MAKERS = frozenset({"functools.partial", "functools.wraps", "torch.compile", "types.MethodType",
                              "builtins.staticmethod", "builtins.classmethod"})


# ------------------------------------------------------------------------------------------- the checks

_CHECKED = frozenset({ast.Import, ast.ImportFrom, ast.Name, ast.Attribute, ast.Constant, ast.Assign, ast.AugAssign,
                      ast.AnnAssign, ast.Delete, ast.For, ast.AsyncFor, ast.withitem, ast.Call,
                      ast.Subscript})  # what _node reads
Hit = tuple[str, ast.AST, Lines, str]  # rule, node (its line is reported), lines it depends on, detail


def _rooted(d: str, roots: Iterable[str]) -> str | None:
    return next((r for r in roots if d == r or d.startswith((r + ".", r + "["))), None)


class Checks:
    """Every rule's hits in one parsed file: the per-node checks over one walk of the tree, then the
    module-level bindings of fixed names and, for result_file targets, the import-time code."""

    def __init__(self, tree: ast.Module, file: str, scope: AuditScope) -> None:
        self.tree, self.file, self.scope = tree, file, scope
        self.nodes = list(ast.walk(tree))  # one walk; every pass below reads this list
        self.ix = Index(self.nodes, file, scope.modules)
        self.docstrings: set[int] = set()
        self.membership: set[int] = set()  # `"x" in sys.modules` only asks whether a module is loaded
        self.global_names: set[str] = set()
        strings: list[ast.Constant] = []
        for n in self.nodes:
            if isinstance(n, ast.Constant):
                if isinstance(n.value, str):
                    strings.append(n)
            elif isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant):
                self.docstrings.add(id(n.value))
            elif isinstance(n, ast.Compare) and all(isinstance(op, ast.In | ast.NotIn) for op in n.ops):
                self.membership |= {id(c) for c in n.comparators}
            elif isinstance(n, ast.Global):
                self.global_names.update(n.names)
        self.constants = {n.value for n in strings if id(n) not in self.docstrings}
        name = re.escape(scope.primary_metric or "")
        self.metric_line = re.compile(rf"METRIC\s+{name}=|^\s*{name}:\s|(?P<computed>METRIC\s+\0)")

    def run(self) -> Iterator[Hit]:
        for node in self.nodes:
            if type(node) in _CHECKED:
                yield from self._node(node)
        yield from self._module_level()
        if self.scope.import_time:
            yield from _ImportTime(self.ix).check(self.tree.body)

    def _node(self, node: ast.AST) -> Iterator[Hit]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield from self._import(node)
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name == KIT:
                yield "kit-use", node, lines_of(node), ""
            if name == "__builtins__":
                yield "builtins-patch", node, lines_of(node), ""
            if name in _CHANNEL_NAMES:
                yield "result-channel", node, lines_of(node), name
            if isinstance(node.ctx, ast.Load):
                yield from self._reference(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in self.docstrings:
            if node.value == KIT:
                yield "kit-use", node, lines_of(node), ""
            if _CHANNEL.search(node.value):
                yield "result-channel", node, lines_of(node), ""
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete | ast.For | ast.AsyncFor):
            targets = (node.targets if isinstance(node, ast.Assign | ast.Delete)
                       else [node.target])
            value = None if isinstance(node, ast.Delete | ast.For | ast.AsyncFor) else node.value
            for t in targets:
                yield from self._store(node, t, value)
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and any(isinstance(t, ast.Name) and t.id == "split" for t in node.targets)
                    and str(node.value.value).lower() in VAL_SPLITS):
                yield "validation-data", node, lines_of(node), "split = " + repr(node.value.value)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield from self._store(node.context_expr, node.optional_vars, None)
        elif isinstance(node, ast.Call):
            yield from self._call(node)
        if isinstance(node, ast.Subscript):
            yield from self._val_subscript(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> Iterator[Hit]:
        mods = self.scope.modules
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == KIT:
                    yield "kit-use", node, lines_of(node), ""
            return
        module = node.module or ""
        if module.split(".")[0] == KIT:
            yield "kit-use", node, lines_of(node), ""
        if module in mods or (not module and node.level):
            for a in node.names:
                if a.name.startswith("_") and a.name not in _PUBLIC_DUNDERS:
                    yield "fixed-private", node, lines_of(node), f"{module}.{a.name}"
                if a.name == KIT:
                    yield "kit-use", node, lines_of(node), ""

    def _val_subscript(self, node: ast.Subscript) -> Iterator[Hit]:
        """`X["val"]` where X comes from a fixed module (a loader returning every split, such as the
        post-training kit's `armath.load_splits(spec)`): the validation or held-out data by key."""
        keys = [(exact(k), kl) for k, kl in self.ix.fold(node.slice)]
        hits = [(k, kl) for k, kl in keys if k is not None and k.lower() in VAL_SPLITS]
        if hits and (ln := self._from_fixed(node.value)) is not None:
            yield "validation-data", node, lines_of(node) | ln | hits[0][1], repr(hits[0][0])

    def _from_fixed(self, e: ast.expr, depth: int = 0) -> Lines | None:
        """The lines through which `e` is a value a fixed module made (a call of it, a name bound to one, an
        attribute or method of one), else None. Call results are not followed by harness.resolve."""
        if depth > 3:
            return None
        if isinstance(e, ast.Call):
            e = e.func
        if isinstance(e, ast.Attribute | ast.Name):
            for d, dl in self.ix.paths(e):
                if _rooted(d, self.scope.modules) or d.rsplit(".", 1)[-1] in _DATALOADERS:
                    return lines_of(e) | dl
        if isinstance(e, ast.Attribute):
            return self._from_fixed(e.value, depth + 1)
        if isinstance(e, ast.Name):
            for v, vl in self.ix.values.get(e.id, []):
                if (found := self._from_fixed(v, depth + 1)) is not None:
                    return found | vl
        return None

    def _reference(self, node: ast.Name | ast.Attribute) -> Iterator[Hit]:
        """A name or attribute read: what it resolves to may be the kit, a private name of a fixed module,
        or the module table."""
        if isinstance(node, ast.Attribute) and _VAL_ATTR.match(node.attr):
            yield "validation-data", node, lines_of(node), node.attr
        for d, ln in self.ix.paths(node):
            if d == "sys.modules" and id(node) not in self.membership:
                yield "fixed-module-table", node, lines_of(node) | ln, ""
            root = _rooted(d, self.scope.modules)
            if root is None:
                continue
            if root == KIT:
                yield "kit-use", node, lines_of(node) | ln, d
            rest = d[len(root):].replace("[]", "").split(".")
            if any(p.startswith("_") and p not in _PUBLIC_DUNDERS for p in rest[1:]):
                yield "fixed-private", node, lines_of(node) | ln, d

    def _store(self, stmt: ast.AST, target: ast.expr, value: ast.expr | None) -> Iterator[Hit]:
        if isinstance(target, ast.Tuple | ast.List):
            for t in target.elts:
                yield from self._store(stmt, t, None)
        elif isinstance(target, ast.Starred):
            yield from self._store(stmt, target.value, None)
        elif isinstance(target, ast.Attribute):
            for d, ln in self.ix.paths(target.value):
                yield from self._write(stmt, d, "attr", [((target.attr,), frozenset())], value, ln)
        elif isinstance(target, ast.Subscript):
            for d, ln in self.ix.paths(target.value):
                yield from self._write(stmt, d, "item", self.ix.fold(target.slice), value, ln)

    def _write(self, node: ast.AST, base: str, kind: str, keys: list[Str], value: ast.expr | None,
               lines: Lines) -> Iterator[Hit]:
        """A write of `base.key` (kind attr), `base[key]` (item), by setattr (setattr) or a mutating method
        (method, key: the method's first argument)."""
        scope, ln = self.scope, lines_of(node) | lines
        names = [exact(k) for k, _ in keys]
        key_lines = frozenset().union(*(kl for _, kl in keys)) if keys else frozenset()
        ln |= key_lines
        shown = f"{base}.{names[0]}" if names and names[0] is not None and kind != "item" else base
        if _rooted(base, ("sys.modules",)) or (base == "sys" and "modules" in names):
            yield "fixed-module-table", node, ln, ""
        elif base == "os.environ" or (base == "os" and "environ" in names):
            keyed = kind in ("item", "method-keyed") and all(n is not None for n in names)
            if not keyed or any(n is not None and n.startswith("AUTORESEARCH_") for n in names):
                yield "harness-env", node, ln, ", ".join(n or "?" for n in names) if keyed else ""
        elif base == GLOBALS:
            if not all(n is not None for n in names) or any(n in scope.fixed_names for n in names):
                yield "fixed-name-redefined", node, ln, "globals()"
        elif root := _rooted(base, scope.modules):
            setattr_like = kind == "setattr" or base.endswith(".__dict__")
            yield ("fixed-setattr" if setattr_like else "fixed-attr-assign"), node, ln, shown
            if any(n is None for n in names) and kind == "setattr":
                yield "fixed-private", node, ln, f"a computed name of {root}"
        elif _rooted(base, ("time",)):
            yield "clock-patch", node, ln, shown
        elif _rooted(base, ("builtins",)) or (base == "sys" and set(names) & _STREAMS):
            yield "builtins-patch", node, ln, shown
        elif base.split(".")[0] in scope.fixed_imports and kind != "item" and (
                value is None or self._callable_like(value)):
            yield "library-patch", node, ln, shown

    def _callable_like(self, e: ast.expr, seen: frozenset[str] = frozenset()) -> bool:
        """Whether a value written into a library is code (a function, a lambda, a partial) rather than a
        setting (`torch.backends.cudnn.benchmark = True`)."""
        if isinstance(e, ast.Lambda | ast.Attribute):
            return True
        if isinstance(e, ast.Name) and e.id not in seen:
            return e.id in self.ix.defs or e.id in self.ix.imported or any(
                self._callable_like(v, seen | {e.id}) for v, _ in self.ix.values.get(e.id, []))
        if isinstance(e, ast.Call):
            return bool({d for d, _ in self.ix.paths(e.func)} & _CALLABLE_MAKERS)
        return False

    def _call(self, node: ast.Call) -> Iterator[Hit]:
        ix, scope = self.ix, self.scope
        refs = ix.paths(node.func)
        callee = {d for d, _ in refs}
        cl = frozenset().union(*(ln for _, ln in refs)) if refs else frozenset()
        here = lines_of(node) | cl
        args = node.args
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        # writes by call: setattr, namespaces' and environ's mutating methods
        if callee & _SETATTRS and len(args) >= 2:
            for d, ln in ix.paths(args[0]):
                yield from self._write(node, d, "setattr", ix.fold(args[1]), args[2] if len(args) > 2 else None, ln)
        if isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in ("__setattr__", "__delattr__") and args:
                for d, ln in ix.paths(node.func.value):
                    yield from self._write(node, d, "setattr", ix.fold(args[0]), args[1] if len(args) > 1 else None, ln)
            elif method in _MUTATORS:
                keyed = method in ("pop", "setdefault", "__setitem__", "__delitem__") and args
                for d, ln in ix.paths(node.func.value):
                    if d in ("os.environ", GLOBALS, "sys.modules") or d.endswith(".__dict__") or (
                            _rooted(d, scope.modules) and d not in scope.modules):
                        keys = ix.fold(args[0]) if keyed else [UNKNOWN]
                        yield from self._write(node, d, "method-keyed" if keyed else "method", keys, None, ln)
        if callee & {"os.putenv", "os.unsetenv"}:
            yield "harness-env", node, here, ""
        if callee & {"importlib.reload", "builtins.__import__"} or any(c.startswith(_BY_HAND) for c in callee):
            yield "fixed-reload", node, here, ""
        if callee & {"importlib.import_module", "importlib.util.find_spec"} and args:
            names = [(exact(s), ln) for s, ln in ix.fold(args[0])]
            if any(n is None or _rooted(n, scope.modules) for n, _ in names):
                yield "fixed-reload", node, here | frozenset().union(*(ln for _, ln in names)), ""
        if callee & _DYNAMIC:
            yield "dynamic-code", node, here, ""
        if "builtins.getattr" in callee and len(args) >= 2:
            for d, ln in ix.paths(args[0]):
                if root := _rooted(d, scope.modules):
                    for s, sl in ix.fold(args[1]):
                        n = exact(s)
                        if n is None or (n.startswith("_") and n not in _PUBLIC_DUNDERS):
                            yield "fixed-private", node, here | ln | sl, f"getattr({root}, {n or '?'})"
        if "builtins.vars" in callee and args and any(_rooted(d, scope.modules) for d, _ in ix.paths(args[0])):
            yield "fixed-private", node, here, "vars() of a fixed module"
        yield from self._validation(node, callee, here, [*args, *kw.values()])
        yield from self._file_writes(node, callee, here, args, kw)
        if scope.primary_metric:
            yield from self._prints_metric(node, callee, here, args)
        for a in [*args, *kw.values()]:  # the channel's name assembled from pieces
            for s, ln in ix.fold(a):
                if _CHANNEL.search(text_of(s)) and not (isinstance(a, ast.Constant)):
                    yield "result-channel", node, here | ln, ""

    def _validation(self, node: ast.Call, callee: set[str], here: Lines, args: list[ast.expr]) -> Iterator[Hit]:
        # prepared.rows(...) on a value a fixed module made, or such a method bound to a name first
        # (rows = arpost.load_prepared().rows; rows("val")): the kit's loaders hand out every split
        made = node.func.value if isinstance(node.func, ast.Attribute) else node.func
        loads = any(_rooted(c, self.scope.modules) or c.rsplit(".", 1)[-1] in _DATALOADERS for c in callee) or (
            self._from_fixed(made) is not None)
        for a in args:
            is_split = any(k.value is a and k.arg == "split" for k in node.keywords)
            if not (loads or is_split):
                continue
            for s, ln in self.ix.fold(a):
                v = exact(s)
                if v is not None and v.lower() in VAL_SPLITS:
                    yield "validation-data", node, here | ln, repr(v)

    def _fixed_path(self, e: ast.expr, within: bool = False) -> tuple[str, Lines] | None:
        """The fixed file a path expression may name (with the lines it is built on), else None. `within`: any
        mention inside the string counts (a shell command line)."""
        for s, ln in self.ix.fold(e):
            text = text_of(s).replace("\\", "/")
            if within:
                hit = next((f for f in self.scope.file_names if f in text), None)
            else:
                t = tail(s).replace("\\", "/")
                name = os.path.basename(os.path.normpath(t)) if exact(s) is not None else t.rsplit("/", 1)[-1]
                hit = name if name in self.scope.file_names else None
                if hit is None and ("__pycache__" in text or any(
                        name.startswith(m + ".") and name.endswith(".pyc") for m in self.scope.modules)):
                    hit = name or "__pycache__"
                if hit is None and (name in _HARNESS_FILES or _HARNESS_DIRS.search("/" + text)):
                    hit = name  # the ledger, the state, the session's config or git: fixed for every target
            if hit:
                return hit, ln
        return None

    def _file_writes(self, node: ast.Call, callee: set[str], here: Lines, args: list[ast.expr],
                     kw: dict[str, ast.expr]) -> Iterator[Hit]:
        targets: list[ast.expr] = []
        if callee & _OPENERS and args:
            mode = args[1] if len(args) > 1 else kw.get("mode") or kw.get("flags")
            modes = [exact(s) for s, _ in self.ix.fold(mode)] if mode is not None else ["r"]
            if "os.open" in callee or any(m is None or set(m) & set("wax+") for m in modes):
                targets.append(args[0])
        if callee & _PATH_WRITERS:
            targets += [*args[:2], *(kw[k] for k in ("src", "dst", "path") if k in kw)]
        if callee & _COPIERS:
            targets += [*args[1:2], *(kw[k] for k in ("dst",) if k in kw)]
        if isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in _PATH_METHODS and (method not in ("replace", "rename") or len(args) <= 1):
                targets += [node.func.value, *args[:1]]
            elif method == "open":
                mode = args[0] if args else kw.get("mode")
                if mode is not None and any(m is None or set(m) & set("wax+") for m in
                                            (exact(s) for s, _ in self.ix.fold(mode))):
                    targets.append(node.func.value)
        for t in targets:
            if hit := self._fixed_path(t):
                yield "fixed-file-write", node, here | hit[1], hit[0]
        if any(c.startswith(_SHELLS) for c in callee):
            for a in [*args, *kw.values()]:
                for e in (a.elts if isinstance(a, ast.List | ast.Tuple) else [a]):
                    if hit := self._fixed_path(e, within=True):
                        yield "fixed-file-write", node, here | hit[1], f"a command naming {hit[0]}"

    def _prints_metric(self, node: ast.Call, callee: set[str], here: Lines, args: list[ast.expr]) -> Iterator[Hit]:
        candidates = [c for a in args for c in self.ix.fold(a)]
        if "builtins.print" in callee and len(args) > 1:
            candidates += product([self.ix.fold(a) for a in args], " ")
        for s, ln in candidates:
            m = self.metric_line.search(text_of(s))
            if m and (not m.group("computed") or self.scope.primary_metric in self.constants):
                yield "prints-primary-metric", node, here | ln, "a computed name" if m.group("computed") else ""
                return

    def _module_level(self) -> Iterator[Hit]:
        """Bindings of the fixed modules' names at module level, or anywhere when declared `global`."""
        fixed, modules = self.scope.fixed_names, self.scope.modules
        if not fixed:
            return

        def bad_import(node: ast.Import | ast.ImportFrom, alias: ast.alias) -> bool:
            """An import that binds a fixed name to something else than itself."""
            local = alias.asname or alias.name.split(".")[0]
            if local not in fixed:
                return False
            if isinstance(node, ast.Import):
                return not (alias.name in modules and local == alias.name)
            return not (node.module in modules and alias.name == local)

        found: list[tuple[str, ast.AST]] = []
        for stmt in self.tree.body:
            for node in _own_nodes(stmt):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    found.append((node.name, node))
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                    found.append((node.id, node))
                elif isinstance(node, ast.Import | ast.ImportFrom):
                    found += [(a.asname or a.name, node) for a in node.names if bad_import(node, a)]
        declared = self.global_names & fixed  # over-approximated: any store of such a name, in any function
        found += [(n.id, n) for n in self.nodes if isinstance(n, ast.Name) and n.id in declared
                  and isinstance(n.ctx, ast.Store | ast.Del)]
        for name, node in found:
            if name in fixed:
                yield "fixed-name-redefined", node, _binding_lines(node), name


def _own_nodes(stmt: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a statement in its own scope: into if/for/with/try bodies, not into def or class bodies
    (the def or class node itself is yielded)."""
    stack = [stmt]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _binding_lines(node: ast.AST) -> Lines:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return frozenset([node.lineno, *(d.lineno for d in node.decorator_list)])
    return lines_of(node)


# ------------------------------------------------------------------ import-time code (result_file targets)

# Calls allowed at module level: pure builtins and library functions that build a value without side
# effects. Anything else (a function of this file, print, open, a library call with effects, an attribute
# write, a loop) runs inside the fixed evaluation's process when it imports the file.
_PURE_BUILTINS = frozenset(f"builtins.{n}" for n in [
    "dict", "list", "tuple", "set", "frozenset", "float", "int", "str", "bool", "bytes", "complex", "range", "len",
    "min", "max", "abs", "round", "sorted", "reversed", "enumerate", "zip", "sum", "any", "all", "map", "filter",
    "isinstance", "issubclass", "hasattr", "getattr", "repr", "format", "chr", "ord", "hex", "oct", "bin", "divmod",
    "pow", "slice", "object", "property", "staticmethod", "classmethod", "type"])
_PURE_PREFIXES = (
    "math.", "os.path.", "os.environ.get", "os.getenv", "os.cpu_count", "typing.", "dataclasses.dataclass",
    "dataclasses.field", "collections.", "enum.", "functools.partial", "functools.lru_cache", "functools.cache",
    "functools.wraps", "re.compile", "platform.", "pathlib.", "abc.abstractmethod", "contextlib.contextmanager",
    "torch.device", "torch.dtype", "torch.finfo", "torch.iinfo", "torch.tensor", "torch.zeros", "torch.ones",
    "torch.arange", "torch.linspace", "torch.full", "torch.empty", "torch.cuda.is_available",
    "torch.cuda.device_count", "torch.cuda.get_device_capability", "torch.cuda.get_device_name",
    "torch.cuda.get_device_properties", "torch.cuda.is_bf16_supported", "torch.backends.mps.is_available",
    "torch.no_grad", "torch.inference_mode", "torch.enable_grad", "torch.compile", "torch.jit.script",
    "torch.jit.ignore", "torch.compiler.disable", "torch.autocast",
)
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})
_CONSTRUCTORS = frozenset({"__init__", "__new__", "__post_init__", "__init_subclass__", "__set_name__"})


class _ImportTime:
    """Module-level statements that are not imports (also in `try/except ImportError`), definitions,
    docstrings, constants (assignments of literals, names, attributes, pure calls on those), conditionals
    over those, or the `if __name__ == "__main__":` guard. Function and class bodies are not checked, but
    what runs when they are defined is: decorators, default values, class-level statements."""

    def __init__(self, ix: Index) -> None:
        self.ix = ix
        self.plain = {n for n, d in ix.defs.items() if isinstance(d, ast.ClassDef) and not any(
            isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name in _CONSTRUCTORS for s in d.body)}

    def check(self, body: list[ast.stmt], in_class: bool = False) -> Iterator[Hit]:
        for s in body:
            if not self._stmt(s, in_class):
                yield "import-time-code", s, lines_of(s), type(s).__name__.lower()
            elif isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for d in s.decorator_list:
                    if not self._call_ok(d if isinstance(d, ast.Call) else ast.Call(d, [], []), decorator=True):
                        yield "import-time-code", d, lines_of(d), "a decorator"
                if isinstance(s, ast.ClassDef):
                    for b in [*s.bases, *(k.value for k in s.keywords)]:
                        if not self._expr(b):
                            yield "import-time-code", b, lines_of(b), "a base class"
                    yield from self.check(s.body, in_class=True)
                else:
                    a = s.args
                    for e in [*a.defaults, *(d for d in a.kw_defaults if d is not None)]:
                        if not self._expr(e):
                            yield "import-time-code", e, lines_of(e), "a default value"
            elif isinstance(s, ast.If | ast.Try) and not _is_main_guard(s):
                inner = [*s.body, *s.orelse] + ([*s.finalbody, *(x for h in s.handlers for x in h.body)]
                                                if isinstance(s, ast.Try) else [])
                yield from self.check(inner, in_class)

    def _stmt(self, s: ast.stmt, in_class: bool) -> bool:
        if isinstance(s, ast.Import | ast.ImportFrom | ast.Pass | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return True
        if isinstance(s, ast.Expr):
            return isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
        if isinstance(s, ast.Assign):
            return all(_names_only(t) for t in s.targets) and self._expr(s.value)
        if isinstance(s, ast.AnnAssign):
            return _names_only(s.target) and (s.value is None or self._expr(s.value))
        if isinstance(s, ast.AugAssign):
            return _names_only(s.target) and self._expr(s.value)
        if isinstance(s, ast.If):
            return _is_main_guard(s) or self._expr(s.test)
        if isinstance(s, ast.Try):
            return all(h.type is not None and _catches_import_error(h.type) for h in s.handlers) and bool(s.handlers)
        return False

    def _expr(self, e: ast.expr | None) -> bool:
        if e is None or isinstance(e, ast.Constant | ast.Name | ast.Lambda):
            return True
        if isinstance(e, ast.Call):
            return self._call_ok(e)
        if isinstance(e, ast.Await | ast.Yield | ast.YieldFrom | ast.NamedExpr):
            return False
        if isinstance(e, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            parts: list[ast.AST] = [e.key, e.value] if isinstance(e, ast.DictComp) else [e.elt]
            for g in e.generators:
                parts += [g.iter, *g.ifs]
            return all(self._expr(p) for p in parts if isinstance(p, ast.expr))
        return all(self._expr(c) for c in ast.iter_child_nodes(e) if isinstance(c, ast.expr))

    def _call_ok(self, e: ast.Call, decorator: bool = False) -> bool:
        callee = {d for d, _ in self.ix.paths(e.func)}
        local_class = isinstance(e.func, ast.Name) and e.func.id in self.plain
        accessor = decorator and isinstance(e.func, ast.Attribute) and e.func.attr in ("setter", "getter", "deleter")
        pure = local_class or accessor or (
            bool(callee) and all(c in _PURE_BUILTINS or c.startswith(_PURE_PREFIXES) for c in callee))
        args = [*e.args, *(k.value for k in e.keywords)]
        return pure and all(self._expr(a) for a in args) and (
            not isinstance(e.func, ast.Attribute) or self._expr(e.func.value))


def _names_only(t: ast.expr) -> bool:
    if isinstance(t, ast.Name):
        return True
    if isinstance(t, ast.Tuple | ast.List):
        return all(_names_only(x) for x in t.elts)
    return isinstance(t, ast.Starred) and _names_only(t.value)


def _catches_import_error(t: ast.expr) -> bool:
    if isinstance(t, ast.Tuple):
        return all(_catches_import_error(x) for x in t.elts)
    return isinstance(t, ast.Name) and t.id in _IMPORT_ERRORS


def _is_main_guard(s: ast.stmt) -> bool:
    if not isinstance(s, ast.If) or not isinstance(s.test, ast.Compare) or len(s.test.ops) != 1:
        return False
    sides = [s.test.left, *s.test.comparators]
    return isinstance(s.test.ops[0], ast.Eq) and any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) \
        and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides)
