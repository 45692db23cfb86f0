"""Local data for a post-training session, snapshotted into the cache at init.

`init --target sft --data ~/math/train.jsonl`: the session's commands run sandboxed, and the sandbox hides
HOME, /tmp and every workspace but the run's own, so a path on the user's disk is not where `prepare` can
read it. The cache is: prepare may write it, runs and evaluations see it read-only. So init copies the data
files into `<cache>/data/<fp16>/` (content-addressed: the same files are one copy) and the session's data
spec names that copy. It also pins the data: editing the original file later does not change what the
session trains and scores on, silently, between two runs.

Only what the math data kit reads is copied (assets/armath.py `_local_files`): a single .jsonl/.parquet
file, or a directory's train / val|validation|valid / test files of those kinds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from harness.cli_common import UserError

STEMS = ("train", "val", "validation", "valid", "test")
SUFFIXES = (".jsonl", ".parquet")


def data_files(path: Path) -> list[Path]:
    """The files of local data `path` that the kit reads; [] when it is not local data of that shape."""
    if path.is_file():
        return [path] if path.suffix in SUFFIXES else []
    if path.is_dir():
        return [path / f"{s}{x}" for s in STEMS for x in SUFFIXES if (path / f"{s}{x}").is_file()]
    return []


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def snapshot(spec: str, cache: Path) -> tuple[str, str | None]:
    """(the data spec the session uses, a line saying what was copied or None). A spec that is not a local
    path (offline-math, gsm8k) is returned unchanged; a local one is copied once into the cache."""
    path = Path(spec).expanduser()
    if not path.exists():
        return spec, None
    files = data_files(path)
    if not files:
        raise UserError(f"--data {spec}: neither a .jsonl/.parquet file nor a directory holding train.jsonl "
                        "(or .parquet), with val/test beside it if you have them")
    digest = _digest(files)
    root = cache / "data"
    final = root / digest[:16]
    target = final / files[0].name if path.is_file() else final
    if final.is_dir():
        return str(target), f"data: {spec} is already in the cache at {final} (the session reads that copy)"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        for p in files:
            shutil.copyfile(p, tmp / p.name)
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(final)
        except OSError:  # another init copied the same files first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in files)
    return str(target), (f"data: copied {spec} ({len(files)} file{'s' if len(files) > 1 else ''}, {size:,} bytes) "
                         f"into the cache at {final}: runs are sandboxed away from your files, and the session "
                         "keeps this copy even if the original changes")
