"""Where the files that ship beside the code are: the targets (`assets/`), the session
templates (`session/`) and `program.md`.

They stay at the top of the repository. A wheel carries them as package data under
`harness/_data/` (pyproject's `force-include`); a source checkout (an editable install, the
tests) has them next to `harness/`. Both are found from `importlib.resources.files("harness")`,
so an installed wheel and `pip install -e .` take the same path: the package's `_data/` when
it is there, else the folder that holds the package.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

DATA_DIR = "_data"  # in a wheel: harness/_data/{assets,session,program.md}
KIT_NAME = "arkit.py"  # the fixed kit every built-in target imports, in assets/ beside the targets


class MissingDataError(FileNotFoundError):
    """A shipped file is absent: a broken install. The message names the file."""


def data_root() -> Path:
    """The folder holding assets/, session/ and program.md."""
    package = resources.files("harness")
    if not isinstance(package, Path):  # a zipped install: init copies targets with shutil, which needs files
        raise MissingDataError(f"autoresearch is installed as {package}; install it unzipped (pip install)")
    shipped = package / DATA_DIR
    return shipped if shipped.is_dir() else package.parent


def assets_dir() -> Path:
    """The built-in targets, one folder each with a target.toml, and the fixed kit."""
    return data_root() / "assets"


def kit_path() -> Path:
    return assets_dir() / KIT_NAME


def kit_module(name: str) -> ModuleType:
    """A kit module of assets/ (`arbase`, `armath`, `arkit`) imported by path, for the harness's own use of
    it (`advise`, the advice init writes). It is registered under its bare name, as it is in a workspace,
    so the kit modules' imports of each other (`import arkit`) find the shipped files; once imported it is
    reused. The kit imports torch (arbase) or pyarrow (armath): call this only where they are needed."""
    if name in sys.modules:
        return sys.modules[name]
    kit = KIT_NAME.removesuffix(".py")
    if name != kit:
        kit_module(kit)  # every kit module may `import arkit`, at import or later
    path = assets_dir() / f"{name}.py"
    if not path.is_file():
        raise MissingDataError(f"{path} is missing from the autoresearch install; reinstall autoresearch")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a failed import is not cached half-made
        raise
    return module


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingDataError(f"{path} is missing from the autoresearch install; reinstall autoresearch") from None


def session_template(name: str) -> str:
    """The text of one `session/` template (autoresearch.md, autoresearch.sh, gitignore, ...)."""
    return _read(data_root() / "session" / name)


def program_path() -> Path:
    """The research instructions every agent reads (harness/context.py reads it)."""
    return data_root() / "program.md"
