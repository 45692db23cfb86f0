"""The package as a user gets it: build a wheel from the repository, install it into a fresh
virtual environment, and from a folder outside the repository run `init --target pretrain` and a
short toy session with the installed `autoresearch`; and check that `pip install -e .` reads the
repository's own assets/ (about 4 s, offline).

The fresh environment has no site-packages of its own but one `.pth` line naming this
environment's site-packages, so the dependencies import without a network. Python runs no `.pth`
file of a directory added that way, so the editable install's hook there stays off and `harness`
can only come from the wheel, as test_the_installed_harness_reads_its_data_from_the_wheel checks.

Run: /work/main/.venv/bin/python -m pytest tests/test_wheel.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from toy import EVAL, TRAIN

import harness

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
DATA = "harness/_data"  # where pyproject's force-include puts assets/, session/ and program.md


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path  # the fresh environment's bin/
    outside: Path  # a working folder outside the repository

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANTHROPIC_API_KEY")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(list(args), cwd=cwd or self.outside, env=env, capture_output=True, text=True,
                              timeout=timeout)


def _check(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"{res.args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _fresh_venv(venv: Path) -> Path:
    """A venv without pip whose only other site-packages is this environment's (for the dependencies)."""
    _check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                          timeout=120))
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_autoresearch_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    _check(subprocess.run([*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", *args],
                          capture_output=True, text=True, timeout=300))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # offline: this environment's build backend (the dev extra has it), no isolated build env
    _check(subprocess.run([*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(REPO)],
                          capture_output=True, text=True, timeout=300))
    (wheel,) = (tmp / "dist").glob("autoresearch-*.whl")
    python = _fresh_venv(tmp / "venv")
    _pip_install(python, str(wheel))
    outside = tmp / "work"
    outside.mkdir()
    return Installed(wheel, python.parent, outside)


def test_the_wheel_carries_every_target_template_and_program_md(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "assets", "session", "program.md"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    shipped = {n.removeprefix(DATA + "/") for n in names if n.startswith(DATA + "/")}
    assert {"assets/pretrain/target.toml", "assets/pretrain/prepare.py", "session/autoresearch.md",
            "session/autoresearch.sh", "session/gitignore", "program.md"} <= shipped
    assert set(tracked) <= shipped
    assert "harness/cli.py" in names and "harness/resources.py" in names


def test_the_installed_harness_reads_its_data_from_the_wheel(installed: Installed) -> None:
    out = _check(installed.run(
        str(installed.bin / "python"), "-c",
        "import harness, harness.resources as r, harness.context as c, harness.session as s; "
        "print(harness.__file__); print(r.data_root()); print(s.available_targets()); print(len(c.program_text()))",
    ))
    module, root, targets, program_chars = out.splitlines()
    venv = installed.bin.parent
    assert Path(module).is_relative_to(venv) and not Path(module).is_relative_to(REPO)
    assert Path(root) == Path(module).parent / "_data"
    assert "pretrain" in targets
    assert int(program_chars) == len((REPO / "program.md").read_text(encoding="utf-8"))


def test_init_pretrain_from_the_wheel(installed: Installed) -> None:
    res = installed.run(str(installed.bin / "autoresearch"), "init", "ws", "--target", "pretrain", "--tag", "w")
    out = _check(res)
    ws = installed.outside / "ws"
    assert "workspace ready" in out
    for name in ("prepare.py", "train.py", "autoresearch.md", "autoresearch.ideas.md", "autoresearch.sh",
                 "autoresearch.toml", ".gitignore"):
        assert (ws / name).is_file(), name
    for name in ("prepare.py", "train.py"):
        assert (ws / name).read_bytes() == (REPO / "assets" / "pretrain" / name).read_bytes()
    header = json.loads((ws / "autoresearch.jsonl").read_text().splitlines()[0])
    assert header["target"] == "pretrain" and header["harness_version"] == harness.__version__
    kit = REPO / "assets" / "arkit.py"
    toml = (ws / "autoresearch.toml").read_text()
    assert '"prepare.py" = "' in toml
    if kit.is_file():  # the fixed kit, once the repository has one
        assert (ws / "arkit.py").read_bytes() == kit.read_bytes() and '"arkit.py" = "' in toml
        assert len(header["kit_sha256"]) == 64


def test_a_short_toy_session_from_the_wheel(installed: Installed) -> None:
    ws = installed.outside / "toy"
    ws.mkdir()
    (ws / "train.py").write_text(TRAIN)
    (ws / "eval.py").write_text(EVAL)
    ar = str(installed.bin / "autoresearch")
    _check(installed.run(ar, "-C", "toy", "init", "--command", "python eval.py", "--metric", "score",
                         "--direction", "higher", "--editable", "train.py", "--fixed", "eval.py", "--budget", "5",
                         "--tag", "t"))
    _check(installed.run(ar, "-C", "toy", "run", "--agent", "mutate", "--max-iterations", "2"))
    lines = [json.loads(x) for x in (ws / "autoresearch.jsonl").read_text().splitlines() if x.strip()]
    assert lines[0]["type"] == "config" and lines[0]["harness_version"] == harness.__version__
    runs = [x for x in lines if "run" in x and "type" not in x]
    assert [r["run"] for r in runs] == [1, 2]
    assert runs[0]["status"] == "keep" and isinstance(runs[0]["metric"], float)
    assert runs[1]["status"] in ("keep", "discard") and runs[1]["description"]  # mutate's proposal, measured


def test_an_editable_install_reads_the_repositorys_own_data(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", "-e", str(REPO))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _check(subprocess.run(
        [str(python), "-c", "import harness, harness.resources as r; print(harness.__file__); print(r.data_root())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    ))
    module, root = out.splitlines()
    assert Path(module) == REPO / "harness" / "__init__.py" and Path(root) == REPO  # live: edits show at once
