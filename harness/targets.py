"""Targets: what a target folder's `target.toml` declares, read and validated.

A built-in target is a folder under `assets/` holding a `target.toml` and the files it lists;
the fixed kit (`assets/arkit.py`) sits beside the targets and init copies it into every
workspace made from one of them. A target may also name shared kit modules that sit beside it
(`[target] kit = ["armath.py", "arbase.py"]`): init copies them to the workspace root as fixed
files too. A post-training target says it starts from a base model (`[target] base = "required"`):
init then resolves `--base` (harness.bases) and writes the base's record into the workspace. A custom target (init's --command/--metric flags) is a
`Target` built by the CLI, with no folder.

Every mistake in a target.toml ends in one `InitError` line that names the file and the key:
    assets/x/target.toml: [target] command is missing; unknown [metric] key(s): dir
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from harness import resources
from harness.config import Config, ConfigError, MetricSpec
from harness.config import validate as validate_config

KIT = resources.KIT_NAME
BaseNeed = Literal["none", "required"]  # does the target start from a base model (init's --base)?
BASE_NEEDS: tuple[BaseNeed, ...] = get_args(BaseNeed)
TABLES = ("target", "metric", "session", "session_cpu")
# Config fields a target's [session] may not set: [target]/[metric] hold them, or init fills them in.
SET_BY_INIT = frozenset({"name", "command", "metric", "editable", "fixed", "fixed_hashes", "guards", "target",
                         "time_budget_s", "prepare_command", "checks_command", "branch"})


class InitError(Exception):
    """init cannot go on: a bad target, flag or workspace. The message says what to fix."""


@dataclass(frozen=True)
class Target:
    """What `assets/<name>/target.toml` declares, or what the init flags describe."""

    name: str
    description: str
    command: str
    metric: MetricSpec
    editable: tuple[str, ...]
    fixed: tuple[str, ...]
    time_budget_s: float
    cpu_time_budget_s: float | None = None
    prepare: str | None = None
    source_dir: Path | None = None  # where the files are copied from (None: already in the workspace)
    settings: dict[str, Any] = field(default_factory=dict)  # [session] keys the target sets (integrity, held-out)
    cpu_settings: dict[str, Any] = field(default_factory=dict)  # [session_cpu]: over [session] without CUDA
    kit: Path | None = None  # the fixed kit copied to the workspace as arkit.py (built-in targets)
    kit_modules: tuple[str, ...] = ()  # [target] kit: shared modules of assets/, copied beside arkit.py, fixed
    base: BaseNeed = "none"  # "required": init resolves --base and writes base.json (harness.bases)
    data: str | None = None  # [target] data: what {data} in `prepare` is when init has no --data

    @property
    def fixed_files(self) -> tuple[str, ...]:
        """The session's fixed files: the target's, then the shared kit modules, then the kit."""
        return (*self.fixed, *self.kit_modules, *((KIT,) if self.kit is not None else ()))

    def sources(self) -> dict[str, Path]:
        """Workspace path -> the file init copies there; empty when the files are already in place."""
        if self.source_dir is None:
            return {}
        files = {rel: self.source_dir / rel for rel in (*self.fixed, *self.editable)}
        for name in self.kit_modules:  # validated by read_target: a file of assets/, beside the target folder
            files[name] = self.source_dir.parent / name
        if self.kit is not None:
            files[KIT] = self.kit
        return files


def available_targets(assets: Path | None = None) -> list[str]:
    root = assets if assets is not None else resources.assets_dir()
    return sorted(p.parent.name for p in root.glob("*/target.toml"))


def load_target(name: str, assets: Path | None = None) -> Target:
    """The built-in target `name` (a folder of `assets`, by default the installed assets/)."""
    root = assets if assets is not None else resources.assets_dir()
    known = available_targets(root)
    if name not in known:
        raise InitError(f"unknown target {name!r} (available: {', '.join(known) or 'none installed'})")
    return read_target(root / name)


# ------------------------------------------------------------------------ schema


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_paths(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(p, str) for p in x)


def _is_positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


# table -> key -> (required, check, what the value must be)
Schema = dict[str, tuple[bool, Callable[[Any], bool], str]]
SCHEMA: dict[str, Schema] = {
    "target": {
        "name": (True, _is_str, "a string"),
        "description": (False, _is_str, "a string"),
        "command": (True, _is_str, "a string"),
        "prepare": (False, _is_str, "a string"),
        "editable": (True, _is_paths, "a list of paths"),
        "fixed": (False, _is_paths, "a list of paths"),
        "time_budget_s": (False, _is_positive, "a number > 0"),
        "cpu_time_budget_s": (False, _is_positive, "a number > 0"),
        "kit": (False, _is_paths, "a list of file names"),
        "base": (False, lambda x: x in BASE_NEEDS, " or ".join(f'"{b}"' for b in BASE_NEEDS)),
        "data": (False, lambda x: isinstance(x, str) and bool(x.strip()), "a data spec (a non-empty string)"),
    },
    "metric": {
        "name": (True, _is_str, "a string"),
        "unit": (False, _is_str, "a string"),
        "direction": (False, lambda x: x in ("lower", "higher"), '"lower" or "higher"'),
    },
}


def _table_problems(data: dict[str, Any], table: str) -> list[str]:
    """Presence, known keys and value types of [target] or [metric]."""
    if table not in data:
        return [f"missing [{table}] table"]
    values = data[table]
    if not isinstance(values, dict):
        return [f"{table} must be written as a table, [{table}]"]
    schema = SCHEMA[table]
    problems = []
    unknown = sorted(set(values) - set(schema))
    if unknown:
        problems.append(f"unknown [{table}] key(s): {', '.join(unknown)}")
    for key, (required, ok, what) in schema.items():
        if key not in values:
            if required:
                problems.append(f"[{table}] {key} is missing")
        elif not ok(values[key]):
            problems.append(f"[{table}] {key} must be {what}, not {values[key]!r}")
    return problems


def _file_problems(folder: Path, t: dict[str, Any], kit: Path | None) -> list[str]:
    """The listed files: relative, inside the folder, present, each either editable or fixed."""
    problems = []
    if not t["command"].strip():
        problems.append("[target] command is empty")
    if t["name"] != folder.name:
        problems.append(f"[target] name is {t['name']!r} but the folder is {folder.name!r}; make them the same")
    if not t["editable"]:
        problems.append("[target] editable lists no files")
    both = sorted(set(t["editable"]) & set(t.get("fixed", [])))
    if both:
        problems.append(f"[target] {', '.join(both)}: both editable and fixed")
    for key in ("editable", "fixed"):
        for rel in t.get(key, []):
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                problems.append(f"[target] {key}: {rel!r} must be a path inside the target folder")
            elif kit is not None and rel == KIT:
                problems.append(f"[target] {key}: {KIT} is the fixed kit, which init adds itself; remove it")
            elif not (folder / rel).is_file():
                problems.append(f"[target] {key}: {rel} is not a file in {folder}")
    for name in t.get("kit", []):
        # a shared module lands at the workspace root under its own name: a bare file name, nothing else
        if not name or Path(name).name != name or name in (".", ".."):
            problems.append(f"[target] kit: {name!r} must be the bare name of a file in {folder.parent}")
        elif name == KIT:
            problems.append(f"[target] kit: {KIT} is the fixed kit, which init adds itself; remove it")
        elif not name.endswith(".py"):
            problems.append(f"[target] kit: {name} is not a Python module (.py)")
        elif name in (*t["editable"], *t.get("fixed", [])):
            problems.append(f"[target] kit: {name} is also one of the target's own files; name it once")
        elif not (folder.parent / name).is_file():
            problems.append(f"[target] kit: {name} is not a file in {folder.parent}")
    if len(set(t.get("kit", []))) != len(t.get("kit", [])):
        problems.append("[target] kit names a module twice")
    return problems


def _session_problems(data: dict[str, Any]) -> list[str]:
    """[session] and [session_cpu]: tables of Config settings a target may give, of valid values."""
    problems = []
    known = {f.name for f in fields(Config)}
    merged: dict[str, Any] = {}
    for table in ("session", "session_cpu"):
        values = data.get(table, {})
        if not isinstance(values, dict):
            problems.append(f"{table} must be written as a table, [{table}]")
            continue
        unknown = sorted(set(values) - known)
        if unknown:
            problems.append(f"unknown [{table}] key(s): {', '.join(unknown)}")
        owned = sorted(set(values) & SET_BY_INIT)
        if owned:
            problems.append(f"[{table}] cannot set {', '.join(owned)} (init sets it from [target], [metric] or its flags)")
        if problems:  # a bad [session] would be reported again through [session_cpu]
            continue
        merged.update(values)  # [session_cpu] is checked as init applies it: over [session]
        try:
            validate_config(Config(name="target", command="target", **merged), f"[{table}]")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def read_target(folder: Path) -> Target:
    """Read and validate `folder/target.toml`; the kit is `arkit.py` beside the folder, if there is one."""
    path = folder / "target.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InitError(f"{path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InitError(f"{path}: not valid TOML: {exc}") from None
    kit = folder.parent / KIT
    kit_or_none = kit if kit.is_file() else None
    outside = sorted(set(data) - set(TABLES))
    problems = [f"unknown table(s) or key(s) outside the tables: {', '.join(outside)}"] if outside else []
    problems += _table_problems(data, "target") + _table_problems(data, "metric")
    if not problems:  # the file checks need the types right
        problems += _file_problems(folder, data["target"], kit_or_none)
        if "data" in data["target"] and "{data}" not in data["target"].get("prepare", ""):
            problems.append("[target] data: the prepare command has no {data} for it to fill")
    problems += _session_problems(data)
    if problems:
        raise InitError(f"{path}: " + "; ".join(problems))
    t, m = data["target"], data["metric"]
    return Target(
        name=t["name"],
        description=t.get("description", ""),
        command=t["command"],
        metric=MetricSpec(m["name"], m.get("unit", ""), m.get("direction", "lower")),
        editable=tuple(t["editable"]),
        fixed=tuple(t.get("fixed", ())),
        time_budget_s=float(t.get("time_budget_s", 300)),
        cpu_time_budget_s=float(t["cpu_time_budget_s"]) if "cpu_time_budget_s" in t else None,
        prepare=t.get("prepare"),
        source_dir=folder,
        settings=dict(data.get("session", {})),
        cpu_settings=dict(data.get("session_cpu", {})),
        kit=kit_or_none,
        kit_modules=tuple(t.get("kit", ())),
        base=t.get("base", "none"),
        data=t.get("data"),
    )
