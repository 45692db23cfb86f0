"""A post-training session's best run as a base: the session's own base with the run's adapter merged.

`--base ../sft-run` names an sft (or dpo, grpo) session. Its kept runs' checkpoints hold a LoRA adapter in
PEFT's format (or merged weights), not a model: the model is the session's base (its base.json names the
materialized directory in the cache) with that adapter applied. This module makes that model a base of its
own, materialized in `<cache>/bases/<fp16>/` like any other, so the next stage of the pipeline starts from it
and `status` shows the chain (grpo, from a run of an sft session, from a run of a pretrain session).

    ours  model.pt = the merged state dict; config.json, base_model.py and the tokenizer as the upstream base's
    hf    model.safetensors as transformers saves the merged model; the upstream's config and tokenizer files

The merge is the kit's own (`arbase.load_adapted`, the function the fixed evaluation scores runs with), so
the base is exactly the model the session's metric measured. It is computed once per (upstream base,
checkpoint content): `<cache>/bases/.adapted/<key>` remembers which base it made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.bases import (
    ADAPTER_FILES,
    BASE_JSON,
    MERGED_FILE,
    BaseError,
    BaseInfo,
    _existing,
    _link_or_copy,
    bases_dir,
    materialize,
    read_base,
)
from harness.resources import kit_module

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pt")


def _checkpoint_digest(ckpt: Path) -> str:
    h = hashlib.sha256()
    for name in (*ADAPTER_FILES, MERGED_FILE):
        p = ckpt / name
        if p.is_file():
            h.update(name.encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def upstream_dir(workspace: Path, cache: Path) -> BaseInfo:
    """The base a post-training workspace was initialized on (its base.json's `dir`, in this cache)."""
    try:
        record = json.loads((workspace / BASE_JSON).read_text(encoding="utf-8"))
        rel = str(record["dir"])
        fingerprint = str(record["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseError(f"{workspace / BASE_JSON}: not a readable base record ({exc})") from None
    d = cache / rel
    if not (d / BASE_JSON).is_file():
        raise BaseError(f"{workspace}: its base {record.get('name')!r} is not in this cache ({d}); resolve it there "
                        f"again (`autoresearch init --base {record.get('spec')}` in a scratch directory), or set "
                        "AUTORESEARCH_CACHE_DIR to the cache that session used")
    info = read_base(d)
    if info.fingerprint != fingerprint:
        raise BaseError(f"{d} holds another base than {workspace / BASE_JSON} names; remove {d} and resolve again")
    return info


def _weights(rel: str) -> bool:
    return rel.endswith(WEIGHT_SUFFIXES) or rel == "model.pt"


def resolve_adapted(ckpt: Path, workspace: Path, cache: Path, *, spec: str, origin: dict[str, Any],
                    name: str) -> BaseInfo:
    """The base `workspace`'s base with the run checkpoint `ckpt` merged, materialized (once) in the cache."""
    up = upstream_dir(workspace, cache)
    key = hashlib.sha256(f"{up.fingerprint}\0{_checkpoint_digest(ckpt)}".encode()).hexdigest()
    memo = bases_dir(cache) / ".adapted" / key
    try:
        have = _existing(cache, memo.read_text(encoding="utf-8").strip())
    except (OSError, BaseError):
        have = None
    if have is not None:
        return BaseInfo(have.kind, name, spec, origin, have.dir, have.fingerprint, have.model, have.files)

    arbase = kit_module("arbase")
    import torch

    def fill(tmp: Path) -> dict[str, Any]:
        try:
            base = arbase.base_from_dir(str(up.dir), device="cpu")
            model = arbase.load_adapted(base, str(ckpt), inplace=True)
        except arbase.BaseError as exc:
            raise BaseError(f"{ckpt}: {exc}") from None
        for rel in up.files:  # config, model code, tokenizer: as the upstream base's
            if not _weights(rel):
                _link_or_copy(up.dir / rel, tmp / rel)
        if up.kind == "ours":
            torch.save(model.state_dict(), tmp / "model.pt")
        else:
            with tempfile.TemporaryDirectory(dir=tmp.parent) as out:
                model.save_pretrained(out, safe_serialization=True)  # transformers' layout: tied weights once
                for p in Path(out).iterdir():
                    if _weights(p.name):
                        shutil.move(str(p), tmp / p.name)
        params = int(sum(p.numel() for p in model.parameters()))
        return {**up.model, "params": params, "adapted_from": up.fingerprint}

    info = materialize(cache, fill, kind=up.kind, name=name, spec=spec, origin=origin)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp_memo = memo.with_name(f".{key}.{os.getpid()}")
    tmp_memo.write_text(info.fingerprint, encoding="utf-8")
    os.replace(tmp_memo, memo)
    return info
