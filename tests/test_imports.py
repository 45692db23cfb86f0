"""The harness package has no import cycle: its modules form a layered graph.

Every `import` counts, wherever it is written: at the top, inside a function (a lazy import
that keeps `--help` instant is still a dependency), or under `if TYPE_CHECKING:`, and so does
a `"module:function"` handler in harness.cli's command table, imported when the command runs.
Edges go to the exact module named; `harness.agents.base` is not an edge to `harness.agents`.

Run: python -m pytest tests/test_imports.py -q
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
HANDLER = re.compile(r"[a-z_][a-z0-9_.]*:[a-z_][a-z0-9_]*")  # "commands:cmd_init"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (by `ast`, nothing is executed)."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from harness import ledger` names the submodule harness.ledger when there is one
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and HANDLER.fullmatch(node.value):
                targets = [f"{package.name}.{node.value.partition(':')[0]}"]  # a lazy handler reference
            else:
                continue
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        colour[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_on_literal_graphs() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]


def test_import_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "harness"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from harness import b\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nimport os\n")
    (pkg / "d.py").write_text('TABLE = {"x": "a:run", "y": "a: just text", "z": "b:run is text too"}\n')
    g = import_graph(pkg)
    assert g["harness.a"] == {"harness.b"} and g["harness.b"] == {"harness.sub.c"}
    assert g["harness.sub.c"] == {"harness.a"}  # `from .. import a` is the submodule, `os` is outside
    assert g["harness.d"] == {"harness.a"}
    assert find_cycle(g) == ["harness.a", "harness.b", "harness.sub.c", "harness.a"]


def test_harness_has_no_import_cycle() -> None:
    graph = import_graph(HARNESS)
    assert "harness.cli" in graph and graph["harness.cli"], "the graph is empty: wrong directory?"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_help_stays_instant() -> None:
    # --help pays for argparse and the command table only: no handler module, no torch, git or rich
    code = ("import sys; from harness.cli import build_parser; build_parser(); "
            "heavy = {'torch', 'matplotlib', 'anthropic', 'git', 'rich', 'numpy', 'harness.commands', "
            "'harness.inspect_cli'} & set(sys.modules); print(sorted(heavy))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"building the parser imported {out.strip()}"
    assert time.perf_counter() - t0 < 5
