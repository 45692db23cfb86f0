"""Where the files that ship beside the code are: the targets (`assets/`), the session
templates (`session/`) and `program.md`.

They stay at the top of the repository. A wheel carries them as package data under
`harness/_data/` (pyproject's `force-include`); a source checkout (an editable install, the
tests) has them next to `harness/`. Both are found from `importlib.resources.files("harness")`,
so an installed wheel and `pip install -e .` take the same path: the package's `_data/` when
it is there, else the folder that holds the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
