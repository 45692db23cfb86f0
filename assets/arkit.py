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
    read_checkpoint              a checkpoint's config.json, once its files are all there
    load_program, Program        a torch.export program (model.pt2) read as data and run as ATen operator
                                 calls: nothing unpickled, evaluated or imported from the file

Standard library only at import: numpy, torch and huggingface_hub are imported by the functions that use
them, so a target that does not use torch does not pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# The result channel
# ---------------------------------------------------------------------------

# The harness names a fresh file for each run in this variable and, for targets with
# metric_source = "result_file", takes the primary metric only from it: a number printed by train.py cannot
# stand in for the fixed evaluation. The path is read once, here, when the fixed side first imports the kit,
# and removed from os.environ, so code that runs later in the same process does not find it by reading the
# environment. That is not a security boundary (code in the same process can reach this module's globals);
# what is one is the process: for targets with a separate evaluation (pretrain's `prepare.py --evaluate`),
# the harness gives the variable only to that process, which never runs a line of the agent's code.
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
# A run's checkpoint holds its model as data: model.pt2, the model traced by torch.export (ATen operator calls
# over named tensors, for one fixed input shape) and saved by torch.export.save, and config.json. The fixed
# evaluation runs that program in a process of its own, which never imports or executes a line of the run's
# code; the checkpoint's files are read as data, never as code.


class CheckpointError(KitError):
    """Why a checkpoint cannot be evaluated: printed as one line, exit status 1."""


def read_checkpoint(
    checkpoint: str, files: tuple[str, ...] = ("config.json", "model.pt2"), required: tuple[str, ...] = ()
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


# ---------------------------------------------------------------------------
# Exported programs, read as data
# ---------------------------------------------------------------------------
# Why not torch.export.load: in torch 2.13 it executes what the file says. A crafted model.pt2 runs code of
# its author's choosing in the evaluation's process (each seen to do so here, with a marker file):
#   - a weight or constant marked use_pickle is unpickled with torch.load(weights_only=False)
#     (torch/export/pt2_archive/_package.py:892 and :950), an opaque constant with pickle.loads (:978);
#   - the example inputs are torch.load-ed, falling back to weights_only=False when the safe load fails
#     (torch/_export/serde/serialize.py:438-441);
#   - a symbolic size is parsed with sympy.sympify, which is eval (serialize.py:2412);
#   - the program's guards_code strings are exec-ed into a function that ExportedProgram.module() calls on
#     every forward (torch/export/_unlift.py:213, installed at :876);
#   - AOTInductor entries are loaded as native shared libraries (_package.py:1040-1068, from load_pt2).
# torch's own docstring says as much (torch/export/__init__.py:296, "uses pickle under the hood ... Never load
# data from an untrusted source"). So this reader takes the same archive and reads only data from it: JSON
# (json.loads), raw tensor bytes (torch.frombuffer), and operator names, each resolved in the registry of ATen
# operators (torch.ops.aten) and refused unless it names a registered ATen operator that writes to none of
# its arguments. Nothing is unpickled, nothing is evaluated or exec-ed; entries it does not need (example
# inputs, AOTInductor code, extra files) are never read. What it cannot read without doing one of those
# things (pickled tensors, custom objects, symbolic shapes, operators of other namespaces, higher-order
# operators with subgraphs, programs that mutate their state) it refuses, with a ProgramError naming it.


class ProgramError(CheckpointError):
    """Why an exported program cannot be read or run safely: one line."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the program takes: its dtype, fixed shape and the device it was exported on."""

    dtype: object  # torch.dtype
    shape: tuple[int, ...]
    device: str


@dataclass(frozen=True)
class Ref:
    """An operator argument that is a value of the graph, by name."""

    name: str


@dataclass(frozen=True)
class Step:
    """One operator call: op(*args, **kwargs), whose results get the names in `outputs` (a name, None for a
    result nobody reads, or a tuple of those for list results); `release` names the values no later step
    reads, dropped after this one so that a forward holds only live activations."""

    op: object  # torch._ops.OpOverload
    args: tuple
    kwargs: tuple[tuple[str, object], ...]
    outputs: tuple
    single: bool  # the operator returns one value (outputs has one entry for all of it)
    release: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Program:
    """A torch.export program as ATen operator calls: call it with its inputs (shapes and dtypes fixed at
    export) for its outputs (one value, or a tuple). parameters() and to() behave as an nn.Module's do."""

    inputs: tuple[TensorSpec, ...]
    input_names: tuple[str, ...]
    bound: Mapping[str, object]  # graph input name -> tensor: parameters, buffers, constants
    parameter_names: tuple[str, ...]
    steps: tuple[Step, ...]
    outputs: tuple  # Refs (or literals) of the graph's outputs
    ops: tuple[str, ...]  # the distinct operators, for the record

    @property
    def device(self) -> str:
        """The device type the program was exported for (its first input's)."""
        return self.inputs[0].device if self.inputs else "cpu"

    def parameters(self) -> Iterator:
        return (self.bound[n] for n in self.parameter_names)

    def buffers(self) -> Iterator:
        """The bound tensors that are not parameters: buffers and constants."""
        return (t for n, t in self.bound.items() if n not in self.parameter_names)

    def num_params(self) -> int:
        return sum(t.numel() for t in self.parameters())  # type: ignore[attr-defined]

    def to(self, device) -> Program:
        return dataclasses.replace(self, bound={k: t.to(device) for k, t in self.bound.items()})  # type: ignore[attr-defined]

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            raise ProgramError(f"the program takes {len(self.inputs)} inputs, not {len(args)}")
        for i, (spec, x) in enumerate(zip(self.inputs, args, strict=True)):
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise ProgramError(
                    f"input {i} is {x.dtype} {tuple(x.shape)}; the program was exported for {spec.dtype} {spec.shape}"
                )
        env = dict(self.bound)
        env.update(zip(self.input_names, args, strict=True))
        for step in self.steps:
            result = step.op(*[_resolve(a, env) for a in step.args], **{k: _resolve(v, env) for k, v in step.kwargs})
            if step.single:
                _bind(step.outputs[0], result, env)
            elif step.outputs:  # operators that return nothing (asserts) have no outputs
                for name, value in zip(step.outputs, result, strict=True):
                    _bind(name, value, env)
            for name in step.release:
                del env[name]
        out = tuple(_resolve(o, env) for o in self.outputs)
        return out[0] if len(out) == 1 else out


def _resolve(value, env: Mapping[str, object]):
    if isinstance(value, Ref):
        return env[value.name]
    if isinstance(value, list):  # tensor lists (as_tensors, as_optional_tensors); literal lists are tuples
        return [env[v.name] if isinstance(v, Ref) else v for v in value]
    return value


def _bind(names, value, env: dict) -> None:
    if names is None:
        return
    if isinstance(names, tuple):
        for name, v in zip(names, value, strict=True):
            _bind(name, v, env)
    else:
        env[names] = value


# torch/_export/serde/schema.py's enumerations (ScalarType, MemoryFormat, Layout), as torch names them.
_DTYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz", 34: "uint32", 35: "uint64",
}
_MEMORY_FORMATS = {1: "contiguous_format", 2: "channels_last", 3: "channels_last_3d", 4: "preserve_format"}
_STRIDED = 7
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ATEN_TARGET = re.compile(rf"torch\.ops\.aten\.({_NAME})\.({_NAME})")
_RECORD = re.compile(r"(weight|tensor)_[0-9]+")


def _union(value, what: str) -> tuple[str, object]:
    """The one (field, value) of a serialized union (torch's _Union: an object with exactly one key)."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ProgramError(f"{what} is not a serialized union: {str(value)[:80]}")
    return next(iter(value.items()))


def _int(value, what: str) -> int:
    """A SymInt that must be a plain integer: symbolic shapes would need sympy's parser, which evaluates."""
    kind, n = _union(value, what)
    if kind != "as_int" or type(n) is not int:
        raise ProgramError(f"{what} is symbolic ({kind}); only programs exported for fixed shapes are read")
    return n


def _dtype(code, what: str):
    import torch

    name = _DTYPES.get(code) if type(code) is int else None
    if name is None or not hasattr(torch, name):
        raise ProgramError(f"{what} has a dtype this reader does not know ({code!r})")
    return getattr(torch, name)


def _tensor_meta(meta, what: str) -> tuple[object, tuple[int, ...], tuple[int, ...], int, str]:
    """(dtype, sizes, strides, storage offset, device type) of a serialized TensorMeta."""
    if not isinstance(meta, dict):
        raise ProgramError(f"{what} has no tensor metadata")
    if meta.get("layout") != _STRIDED:
        raise ProgramError(f"{what} is not a strided (dense) tensor")
    sizes = tuple(_int(s, what) for s in meta.get("sizes", ()))
    strides = tuple(_int(s, what) for s in meta.get("strides", ()))
    device = meta.get("device")
    if not (isinstance(device, dict) and isinstance(device.get("type"), str)):
        raise ProgramError(f"{what} has no device")
    return _dtype(meta.get("dtype"), what), sizes, strides, _int(meta.get("storage_offset"), what), device["type"]


def _aten_op(target):
    """The ATen operator a node names, from the registry; refused unless it is one that mutates nothing."""
    import torch

    m = _ATEN_TARGET.fullmatch(target) if isinstance(target, str) else None
    packet = getattr(torch.ops.aten, m[1], None) if m else None
    op = getattr(packet, m[2], None) if m and isinstance(packet, torch._ops.OpOverloadPacket) else None
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten":
        raise ProgramError(
            f"operator {str(target)[:80]!r} is not a registered ATen operator (torch.ops.aten.*); the evaluation "
            "runs ATen operators only (no higher-order, custom or Python operators)"
        )
    if op._schema.is_mutable:
        raise ProgramError(f"operator {target} writes to its arguments; an evaluated program must be a pure function")
    return op


def _argument(arg, what: str):
    """A serialized Argument as a Python value: Ref for a graph value, a literal otherwise (tuples for
    literal lists). Kinds that would need code to rebuild (symbolic values, graphs, custom objects,
    operators) are refused."""
    import torch

    kind, v = _union(arg, what)
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return Ref(v["name"])
    if kind == "as_tensors":
        return [Ref(t["name"]) for t in v]
    if kind == "as_optional_tensor":
        return _optional_tensor(v, what)
    if kind == "as_optional_tensors":
        return [_optional_tensor(t, what) for t in v]
    literal = {"as_int": int, "as_float": (int, float), "as_bool": bool, "as_string": str}
    if kind in literal:
        if not isinstance(v, literal[kind]) or (kind == "as_int" and type(v) is not int):
            raise ProgramError(f"{what}: {kind} holds {type(v).__name__}")
        return float(v) if kind == "as_float" else v
    lists = {"as_ints": int, "as_floats": (int, float), "as_bools": bool, "as_strings": str}
    if kind in lists:
        if not isinstance(v, list) or not all(isinstance(x, lists[kind]) for x in v):
            raise ProgramError(f"{what}: {kind} is not a list of {kind[3:-1]}s")
        return tuple(float(x) for x in v) if kind == "as_floats" else tuple(v)
    if kind == "as_scalar_type":
        return _dtype(v, what)
    if kind == "as_memory_format":
        if v not in _MEMORY_FORMATS:
            raise ProgramError(f"{what}: unknown memory format {v!r}")
        return getattr(torch, _MEMORY_FORMATS[v])
    if kind == "as_layout":
        if v != _STRIDED:
            raise ProgramError(f"{what}: only the strided layout is read")
        return torch.strided
    if kind == "as_device":
        try:
            return torch.device(v["type"], v.get("index"))
        except (KeyError, TypeError, RuntimeError) as e:
            raise ProgramError(f"{what}: not a device: {v!r}") from e
    if kind in _SCALARS:  # an operator's int, float or bool result (by name), or a literal
        return _scalar(v, kind, what)
    if kind in _SCALAR_LISTS:
        if not isinstance(v, list):
            raise ProgramError(f"{what}: {kind} is not a list")
        return [_scalar(x, _SCALAR_LISTS[kind], what) for x in v]
    raise ProgramError(f"{what}: arguments of kind {kind} are not read (symbolic, graph or object values)")


_SCALARS = {"as_sym_int": "as_int", "as_sym_float": "as_float", "as_sym_bool": "as_bool"}
_SCALAR_LISTS = {"as_sym_ints": "as_sym_int", "as_sym_floats": "as_sym_float", "as_sym_bools": "as_sym_bool"}


def _scalar(v, kind: str, what: str):
    """A SymInt/SymFloat/SymBool argument: a Ref to a value an earlier operator returned ({"as_name": ...}),
    or a literal. Expressions never appear here (they live in the graph's tables, refused above)."""
    field, x = _union(v, what)
    if field == "as_name" and isinstance(x, str):
        return Ref(x)
    if field == _SCALARS[kind] and isinstance(x, bool if field == "as_bool" else (int, float)):
        return x
    raise ProgramError(f"{what}: {kind} of kind {field} is not read")


def _optional_tensor(v, what: str):
    kind, t = _union(v, what)
    if kind == "as_tensor":
        return Ref(t["name"])
    if kind == "as_none":
        return None
    raise ProgramError(f"{what}: optional tensor of kind {kind}")


def _output(arg, what: str):
    """The name(s) an operator result is bound to: a name, None (unused), or a tuple of those."""
    kind, v = _union(arg, what)
    if kind == "as_tensor":
        return v["name"]
    if kind == "as_none":
        return None
    if kind == "as_tensors":
        return tuple(t["name"] for t in v)
    if kind in _SCALARS and _union(v, what)[0] == "as_name":  # an int, float or bool result, by name
        return _union(v, what)[1]
    raise ProgramError(f"{what}: results of kind {kind} are not read")


def _names_in(value) -> Iterator[str]:
    if isinstance(value, Ref):
        yield value.name
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _names_in(v)


def _flat(names) -> Iterator[str]:
    if isinstance(names, tuple):
        for n in names:
            yield from _flat(n)
    elif names is not None:
        yield names


def load_program(path: str, device=None) -> Program:
    """The program in a torch.export.save archive (model.pt2), its tensors on `device` (default: as stored,
    on the CPU). Reads data only (see above); raises ProgramError for anything it will not read."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ProgramError(f"{path} is not a torch.export archive: {e}") from e
    with archive:
        return _read_program(archive, path, device)


def _read_program(archive, path: str, device) -> Program:
    import torch

    roots = {name.split("/", 1)[0] for name in archive.namelist()}
    if len(roots) != 1:
        raise ProgramError(f"{path} is not a torch.export archive (entries under {len(roots)} roots)")
    root = roots.pop()

    def read(rel: str) -> bytes:
        try:
            return archive.read(f"{root}/{rel}")
        except KeyError:
            raise ProgramError(f"{path} has no {rel}: not a program saved by torch.export.save") from None

    def read_json(rel: str):
        try:
            return json.loads(read(rel))
        except (ValueError, UnicodeDecodeError) as e:
            raise ProgramError(f"{path}: {rel} is not JSON: {e}") from e

    if read("archive_format").strip() != b"pt2":
        raise ProgramError(f"{path} is not a pt2 archive")
    if f"{root}/byteorder" in archive.namelist() and read("byteorder").decode(errors="replace") != sys.byteorder:
        raise ProgramError(f"{path} was written on a machine of the other byte order")
    model = read_json("models/model.json")
    try:
        module = model["graph_module"]
        graph, signature = module["graph"], module["signature"]
        nodes, values = graph["nodes"], graph["tensor_values"]
    except (KeyError, TypeError) as e:
        raise ProgramError(f"{path}: models/model.json has no graph ({e})") from e
    if model.get("range_constraints") or graph.get("custom_obj_values"):
        raise ProgramError(f"{path} holds symbolic or object values; only programs exported for fixed shapes are read")
    for table in ("sym_int_values", "sym_float_values", "sym_bool_values"):
        for name, value in (graph.get(table) or {}).items():  # the scalar results of operators: concrete only
            if _union(value, f"{path}: {name}")[0] not in ("as_int", "as_float", "as_bool"):
                raise ProgramError(f"{path}: {name} is symbolic; only programs exported for fixed shapes are read")

    records: dict[str, object] = {}

    def payload(rel: str, directory: str) -> dict[str, object]:
        """fqn -> tensor, from a payload config and its raw records (several fqns may share one record)."""
        config = read_json(rel)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise ProgramError(f"{path}: {rel} has no config")
        tensors = {}
        for fqn, entry in entries.items():
            what = f"{path}: {fqn}"
            if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
                raise ProgramError(f"{what} is stored as a pickle, which this reader never unpickles")
            record = entry.get("path_name")
            if not isinstance(record, str) or not _RECORD.fullmatch(record):
                raise ProgramError(f"{what} is not a tensor record ({str(record)[:40]}): custom objects are not read")
            dtype, sizes, strides, offset, _ = _tensor_meta(entry.get("tensor_meta"), what)
            key = directory + record
            if key not in records:
                data = read(key)
                itemsize = torch.empty((), dtype=dtype).element_size()  # type: ignore[arg-type]
                if len(data) % itemsize:
                    raise ProgramError(f"{what}: {len(data)} bytes is not a whole number of {dtype} elements")
                records[key] = (torch.frombuffer(bytearray(data), dtype=dtype) if data  # type: ignore[arg-type]
                                else torch.zeros(0, dtype=dtype))  # type: ignore[arg-type]
            flat = records[key]
            if flat.dtype != dtype:  # type: ignore[attr-defined]
                raise ProgramError(f"{what}: record {record} is shared by tensors of different dtypes")
            try:
                tensor = flat.as_strided(sizes, strides, offset)  # type: ignore[attr-defined]
            except RuntimeError as e:  # sizes or strides beyond the record's bytes
                raise ProgramError(f"{what}: {(str(e).splitlines() or [''])[0][:200]}") from e
            tensors[fqn] = tensor if device is None else tensor.to(device)
        return tensors

    state = payload("data/weights/model_weights_config.json", "data/weights/")
    constants = payload("data/constants/model_constants_config.json", "data/constants/")

    bound: dict[str, object] = {}
    parameters: list[str] = []
    inputs: list[TensorSpec] = []
    input_names: list[str] = []
    for spec in signature.get("input_specs", ()):
        kind, v = _union(spec, f"{path}: input spec")
        try:
            name = v["arg"]["name"] if kind != "user_input" else _union(v["arg"], "user input")[1]["name"]
            fqn = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}
            if kind == "user_input":
                dtype, sizes, _, _, where = _tensor_meta(values.get(name), f"{path}: input {name}")
                inputs.append(TensorSpec(dtype, sizes, where))
                input_names.append(name)
                continue
            if kind not in fqn:
                raise ProgramError(f"{path}: inputs of kind {kind} are not read")
            target = v[fqn[kind]]
        except (KeyError, TypeError) as e:
            raise ProgramError(f"{path}: malformed input spec {kind}: {e}") from e
        tensor = state.get(target, constants.get(target))
        if tensor is None:
            raise ProgramError(f"{path}: {kind} {target} has no stored tensor")
        bound[name] = tensor
        if kind == "parameter":
            parameters.append(name)

    outputs = []
    for spec in signature.get("output_specs", ()):
        kind, v = _union(spec, f"{path}: output spec")
        if kind != "user_output":
            raise ProgramError(f"{path}: the program has a {kind} output (it changes its own state); it must be pure")
        outputs.append(_argument(v["arg"], f"{path}: output"))

    defined = set(bound) | set(input_names)
    steps: list[tuple] = []
    for i, node in enumerate(nodes):
        what = f"{path}: node {i}"
        try:
            op = _aten_op(node["target"])
            positional, keywords = [], []
            kwarg_only = {a.name for a in op._schema.arguments if a.kwarg_only}
            for named in node["inputs"]:
                value = _argument(named["arg"], f"{what} ({node['target']}, {named['name']})")
                kind = named.get("kind")
                if kind == 2 or (kind in (None, 0) and named["name"] in kwarg_only):
                    keywords.append((named["name"], value))
                elif keywords:
                    raise ProgramError(f"{what}: positional argument {named['name']} after keyword arguments")
                else:
                    positional.append(value)
            results = tuple(_output(o, what) for o in node["outputs"])
        except (KeyError, TypeError) as e:
            raise ProgramError(f"{what} is malformed: {type(e).__name__}: {e}") from e
        for name in _names_in((positional, [v for _, v in keywords])):
            if name not in defined:
                raise ProgramError(f"{what} reads {name}, which no earlier step defines")
        defined.update(_flat(results))
        steps.append((op, tuple(positional), tuple(keywords), results, len(op._schema.returns) == 1))
    for name in _names_in(outputs):
        if name not in defined:
            raise ProgramError(f"{path}: the output {name} is never defined")

    # The last step that reads each value: it is dropped from the forward's environment right after.
    last: dict[str, int] = {}
    for i, (_, args, kwargs, results, _) in enumerate(steps):
        for name in _flat(results):
            last[name] = i  # a result nobody reads goes at once
        for name in _names_in((args, [v for _, v in kwargs])):
            last[name] = i
    kept = set(_names_in(outputs))
    release: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in kept:
            release.setdefault(i, []).append(name)
    return Program(
        inputs=tuple(inputs),
        input_names=tuple(input_names),
        bound=bound,
        parameter_names=tuple(parameters),
        steps=tuple(Step(op, a, k, r, s, tuple(release.get(i, ()))) for i, (op, a, k, r, s) in enumerate(steps)),
        outputs=tuple(outputs),
        ops=tuple(sorted({str(s[0]) for s in steps})),
    )
