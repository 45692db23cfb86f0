"""
The fixed kit: what the fixed side of every built-in autoresearch target needs, in one file.

`autoresearch init` copies this file into the workspace as `arkit.py` and hashes it like the target's own
fixed files, so a session's metric depends on it and any change to it is refused. A target's prepare.py
does `import arkit` and writes only what is specific to it. The agent's editable files have no reason to
import it.

    report(name, value)          the result channel: the harness takes the primary metric only from here
    echo(...), Progress          progress output that reads well on a terminal and in a log file
    atomic_output, atomic_write_text, atomic_write_bytes
                                 a file appears whole or not at all
    hub_revision, hub_download   the Hugging Face Hub, explicitly: retries, one-line errors, never implicit
    band, split_of               hash-based train / val / heldout splits, the same on every machine
    sha256_hex, file_digest, fingerprint, write_manifest, read_manifest
                                 what a prepared dataset is, recorded once, written last
    read_checkpoint, import_code, load_checkpoint_model
                                 evaluation from a checkpoint, with the model code saved inside it

Standard library only at import: numpy, torch and huggingface_hub are imported by the functions that use
them, so a target that does not use torch does not pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

# ---------------------------------------------------------------------------
# The result channel
# ---------------------------------------------------------------------------

# The harness names a fresh file for each run in this variable and, for targets with
# metric_source = "result_file", takes the primary metric only from it: a number printed by train.py cannot
# stand in for the fixed evaluation. The path is read once, here, when the fixed side first imports the kit,
# and removed from os.environ, so the agent's code that runs later in the same process (train.py imports
# prepare.py, which imports this) does not find it by reading the environment. That is not a security
# boundary: code in the same process can still reach this module's globals or the process's memory, and the
# harness's static audit of train.py is what looks for that. Moving the evaluation into a process of its own
# (the sandbox work) is what will close it.
_RESULT_FILE = os.environ.pop("AUTORESEARCH_RESULT_FILE", None) or None


def report(name: str, value: float) -> None:
    """Append `{"name": name, "value": value}` as one JSON line to the run's result file, the format the
    harness's reader (harness/integrity.py read_results) takes. Does nothing outside the harness (no file)."""
    if _RESULT_FILE:
        with open(_RESULT_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "value": float(value)}) + "\n")


# ---------------------------------------------------------------------------
# Progress output
# ---------------------------------------------------------------------------


def echo(*parts: object) -> None:
    """print, flushed at once: the harness streams the log while the process runs."""
    print(*parts, flush=True)


class Progress:
    """A small progress bar: redrawn in place on a terminal, a line every few seconds in a log file."""

    def __init__(self, label: str, total: int, unit: str = ""):
        self.label, self.total, self.unit = label, max(1, total), unit
        self.n, self.t0, self.last = 0, time.time(), 0.0
        self.tty = sys.stdout.isatty()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= (0.2 if self.tty else 5.0):
            self.last = now
            self._draw(end="\r" if self.tty else "\n")

    def close(self) -> None:
        self._draw(end="\n")

    def _draw(self, end: str) -> None:
        frac = min(1.0, self.n / self.total)
        bar = "#" * int(24 * frac)
        print(
            f"{self.label} [{bar:<24}] {100 * frac:5.1f}% {self.n:,}/{self.total:,}{self.unit} "
            f"{time.time() - self.t0:5.1f}s",
            end=end,
            flush=True,
        )


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; when the block ends without an exception it replaces `path`
    (one rename on the same file system), otherwise it is removed. Readers see the old file or the new
    one, never a part: for writers that want a path (pyarrow, torch.save).

        with atomic_output(out) as tmp:
            pq.write_table(table, tmp)
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """UTF-8, newlines as given (no translation), all or nothing."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------
# The Hugging Face Hub: only when asked, with retries and one-line errors
# ---------------------------------------------------------------------------


class KitError(RuntimeError):
    """A failure with a message meant for the user: print it as one line, without a traceback."""


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it (it reads the variable once, at its import)."""
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def hub_revision(repo_id: str, revision: str | None = None, *, repo_type: str = "dataset", offline_hint: str = "") -> str:
    """The commit a repo's `revision` (default: main) points to, so that every file comes from one snapshot.
    Fails at once, with a KitError that says why, when offline or misnamed; offline_hint ends the offline
    message (what to use instead)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise KitError(
            f"the Hub has no {repo_type} {repo_id} that this machine may read ({type(e).__name__}); check the "
            f"name, or log in (`hf auth login`) for private and gated {repo_type}s"
        ) from e
    except RevisionNotFoundError as e:
        raise KitError(f"{repo_type} {repo_id} has no revision {revision}") from e
    except Exception as e:  # noqa: BLE001 - any other failure means "cannot use the hub now"; say why
        hint = f" {offline_hint}" if offline_hint else ""
        raise KitError(
            f"cannot reach the Hugging Face Hub for {repo_type} {repo_id} ({type(e).__name__}: {e}).{hint}"
        ) from e


def hub_download(
    repo_id: str,
    filename: str,
    revision: str,
    local_dir: str,
    attempts: int = 4,
    *,
    repo_type: str = "dataset",
    retry_hint: str = "run again to resume",
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Download one file of a pinned revision into local_dir and return its path. huggingface_hub resumes
    partial downloads (.incomplete files), skips files already there, and shows a byte progress bar; on top
    of its own request retries the whole file is retried a few times, visibly (waits of 2, 4, 8 s), because
    shard downloads are long and a dropped connection should not end the preparation. With HF_HUB_OFFLINE
    set, a file not already in local_dir fails at once: waiting cannot bring the network back."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    for attempt in range(1, attempts + 1):
        try:
            return hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision, local_dir=local_dir)
        except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError, GatedRepoError) as e:
            raise KitError(f"{repo_id}/{filename}: {type(e).__name__}: {e}") from e
        except Exception as e:  # noqa: BLE001 - network errors come in many types; all are worth a retry
            if isinstance(e, OfflineModeIsEnabled) or _hub_offline():
                raise KitError(
                    f"{repo_id}/{filename} is not in {local_dir} and the Hub is switched off here (HF_HUB_OFFLINE "
                    f"is set); unset HF_HUB_OFFLINE to download it, or {retry_hint}"
                ) from e
            if attempt == attempts:
                raise KitError(
                    f"download of {repo_id}/{filename} failed {attempts} times ({type(e).__name__}: {e}); {retry_hint}"
                ) from e
            wait = 2**attempt
            echo(f"  attempt {attempt}/{attempts} for {filename} failed ({type(e).__name__}); retrying in {wait}s")
            sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------
# Hash-based splits
# ---------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def band(key: str, salt: str = "") -> int:
    """A stable pseudo-random number in [0, 100) for a key (a file path, a document's text, a question id):
    the same on every machine and Python version. A salt gives an independent draw for the same key."""
    text = f"{salt}\0{key}" if salt else key
    return int(sha256_hex(text.encode())[:8], 16) % 100


def split_of(key: str, percents: Mapping[str, int], rest: str = "train", salt: str = "") -> str:
    """The split a key belongs to: the bands of `percents` in their order, then `rest` for what is left.

        split_of(path, {"val": 5, "heldout": 5})               -> "val" (band < 5), "heldout" (< 10), else "train"
        split_of(text, {"heldout": 50}, rest="val", salt="h")  -> an independent half of the val documents

    Deterministic, and disjoint by construction (one key, one split). The percents must add up to at most
    100; raises ValueError otherwise.
    """
    if any(p < 0 for p in percents.values()) or sum(percents.values()) > 100:
        raise ValueError(f"split percents must be >= 0 and add up to at most 100, not {dict(percents)}")
    b, edge = band(key, salt), 0
    for name, percent in percents.items():
        edge += percent
        if b < edge:
            return name
    return rest


# ---------------------------------------------------------------------------
# Manifests and fingerprints
# ---------------------------------------------------------------------------

MANIFEST = "manifest.json"


def file_digest(paths: Iterable[str]) -> str:
    """sha256 over the files' names (basename) and bytes, in the given order: changes when any file does."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: str) -> str:
    """16 hex digits naming what a prepared dataset is (content digest, settings): results are comparable
    only between equal fingerprints. The parts are joined with spaces before hashing."""
    return sha256_hex(" ".join(parts).encode())[:16]


def write_manifest(directory: str, manifest: Mapping[str, object]) -> None:
    """Write directory/manifest.json atomically. Write it last: it exists only when the data is complete."""
    atomic_write_text(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=1))


def read_manifest(directory: str) -> dict | None:
    """directory/manifest.json, or None when it is missing or unreadable (preparation never completed)."""
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


# ---------------------------------------------------------------------------
# Evaluation from a checkpoint
# ---------------------------------------------------------------------------
# A kept run's checkpoint holds its weights, its config and a copy of the train.py that trained it. The fixed
# side rebuilds the model with that copy, so later edits to the workspace's train.py can neither break nor
# steer the evaluation of an earlier run.


class CheckpointError(KitError):
    """Why a checkpoint cannot be evaluated: printed as one line, exit status 1."""


def read_checkpoint(
    checkpoint: str, files: tuple[str, ...] = ("config.json", "model.pt", "train.py"), required: tuple[str, ...] = ()
) -> dict:
    """The checkpoint's config.json, after checking that the directory holds every one of `files` and that
    the config is an object with a dict under each `required` key. Raises CheckpointError."""
    if not os.path.isdir(checkpoint):
        raise CheckpointError(f"no checkpoint at {checkpoint} (train.py saves one at the end of a run)")
    missing = [n for n in files if not os.path.isfile(os.path.join(checkpoint, n))]
    if missing:
        raise CheckpointError(f"{checkpoint} is not a complete checkpoint: no {' or '.join(missing)}")
    try:
        with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        lacking = [k for k in required if not (isinstance(config, dict) and isinstance(config.get(k), dict))]
        if lacking:
            raise ValueError(f"no `{lacking[0]}` settings")
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}/config.json is not a checkpoint config: {e}") from e
    return config


def import_code(path: str, module_name: str, aliases: Mapping[str, object] | None = None):
    """Execute the Python file at `path` as a module named `module_name` and return it, without putting
    either name in sys.modules for good: the module is registered only while it runs (dataclasses need
    that), and so are `aliases` (module name -> module), through which its own imports resolve, e.g.
    {"prepare": <the fixed module>} for a train.py that does `from prepare import ...`. Whatever the file
    raises (SyntaxError, SystemExit, ...) propagates."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    names = {module_name: module, **(aliases or {})}
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(names)
    try:
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def load_checkpoint_model(
    checkpoint: str,
    build: Callable[[object], object],
    *,
    code: str = "train.py",
    weights: str = "model.pt",
    module_name: str = "_autoresearch_checkpoint_code",
    aliases: Mapping[str, object] | None = None,
):
    """(model, module): the checkpoint's own `code` imported under a private name (its `if __name__ ==
    "__main__"` training does not run), the model made by build(module), and the state dict in `weights`
    loaded into it strictly, on the CPU (move it after). Anything that goes wrong in the saved code becomes
    one CheckpointError line."""
    import torch

    path = os.path.join(checkpoint, code)
    try:
        module = import_code(path, module_name, aliases)
        model = build(module)
        state = torch.load(os.path.join(checkpoint, weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever the saved code does wrong, say it in one line
        why = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"cannot rebuild the model with {path}: {type(e).__name__}: {why}") from e
    return model, module


def halve_batch_on_oom(evaluate: Callable[[int], float], batch_size: int, label: str = "evaluation") -> float:
    """evaluate(batch_size), again with half the batch after each CUDA out-of-memory error, down to 1 row.
    For evaluations whose result does not depend on the batch size (eager evaluation of a checkpoint holds
    more memory than a compiled training run did)."""
    import torch

    while True:
        try:
            return evaluate(batch_size)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            echo(f"{label}: out of GPU memory; again with batches of {batch_size} rows (the metric does not change)")
