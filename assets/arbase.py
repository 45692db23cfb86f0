"""
The kit's model side for post-training targets: load a base model, apply or read LoRA adapters in PEFT's
on-disk format, and generate greedily.

`autoresearch init --base` materializes the base once in the cache (`<cache>/bases/<fp16>/`, with a base.json
listing every file's sha256) and writes that base.json, plus "dir", into the workspace; for our own pretrain
checkpoints it also commits the model's code as base_model.py. This module, copied into the workspace as a
fixed file, is how the fixed side (prepare.py) and the editable side (train.py) both see that base:

    load_base(workspace=".", device=None, meta=False) -> Base   the session's base (base.json of the workspace)
    base_from_dir(base_dir, device=None, meta=False) -> Base     a materialized base directory
    Base.model, Base.tok, Base.prompt_ids(question), Base.completion_ids(solution)
    linear_modules(model) -> list[Linear], component_of(name)   what LoRA can adapt, by component
    save_adapter(dir, base, lora, r, alpha)                      adapter_config.json + adapter_model.safetensors
    load_adapted(base, ckpt_dir) -> nn.Module                   the base with a run's adapter (or weights) merged
    generate(model, base, prompts, max_new_tokens)              greedy, batched, stopping at the end token
    logits_of(model, x)                                          logits of either kind of model

Every file of a base is checked against base.json's sha256 before use: a base changed since init is an error
naming the file. Two kinds of base:
  ours   our pretrain checkpoint: model.pt (state dict), config.json ("model" = GPTConfig's fields), and
         base_model.py (the pretrain train.py that made it), imported under a private name with a stand-in
         `prepare` module; the tokenizer is the pretrain data's tiktoken BPE, whose <|bos|> is also our end token
  hf     a Hugging Face causal LM directory (config, safetensors, tokenizer), loaded with transformers
         (imported only for this kind)

Self-contained: torch, safetensors, the kit (arkit) and, for HF bases, transformers; never the harness.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import arkit
import torch
import torch.nn as nn

CACHE_DIR = os.environ.get("AUTORESEARCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
BOS_TOKEN = "<|bos|>"  # our pretrain tokenizer's document separator: the start of a prompt and the end of an answer
BASE_JSON = "base.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_WEIGHTS = "model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's key prefix: PeftModel wraps LoraModel wraps the model


class BaseError(RuntimeError):
    """Why a base (or an adapter for it) cannot be used: one line that says what is wrong."""


# ---------------------------------------------------------------------------
# Linear layers and their components
# ---------------------------------------------------------------------------

Component = Literal["attn", "mlp", "unembed", "other"]

# By the module's own (last) name first; `c_proj`/`out_proj`-style names that both attention and MLP use are
# placed by the name of the module holding them. Tinker's three groups (train_attn, train_mlp, train_unembed).
_ATTN_NAMES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_q", "c_k", "c_v", "c_attn",
                         "query", "key", "value", "wq", "wk", "wv", "wo"})
_MLP_NAMES = frozenset({"gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3"})
_UNEMBED_NAMES = frozenset({"lm_head", "embed_out", "output"})
_ATTN_PARENT = re.compile(r"(^|_)(attn|attention)$")
_MLP_PARENT = re.compile(r"(^|_)(mlp|ffn|feed_forward)$")


@dataclass(frozen=True)
class Linear:
    """One nn.Linear of a model: its module path (e.g. "model.layers.0.self_attn.q_proj"), sizes, component."""

    name: str
    d_in: int
    d_out: int
    component: Component


def component_of(name: str) -> Component:
    """The component a linear module belongs to, from its module path. Our GPT's value-embedding gate
    (attn.ve_gate, 32 -> heads) is "other": too small to adapt, and not one of the groups the doctrine counts."""
    parts = name.split(".")
    last = parts[-1]
    if last in _UNEMBED_NAMES:
        return "unembed"
    if last in _ATTN_NAMES:
        return "attn"
    if last in _MLP_NAMES:
        return "mlp"
    if last in ("c_proj", "out_proj", "dense", "proj"):
        parent = parts[-2] if len(parts) > 1 else ""
        if _ATTN_PARENT.search(parent):
            return "attn"
        if _MLP_PARENT.search(parent):
            return "mlp"
    return "other"


def linear_modules(model: nn.Module) -> list[Linear]:
    """Every nn.Linear of the model, in module order (works on the meta device: only shapes are read)."""
    return [
        Linear(name, m.in_features, m.out_features, component_of(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]


# ---------------------------------------------------------------------------
# Tokenizers: one small interface over tiktoken (ours) and transformers (HF)
# ---------------------------------------------------------------------------


class Tok:
    """encode(text) -> ids (no special tokens added), decode(ids) -> text; eos_id ends an answer (the token
    generation stops at), stop_ids every id that ends one; bos_id starts a document, if the tokenizer has one."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str], eos_id: int,
                 bos_id: int | None, pad_id: int, vocab_size: int, stop_ids: frozenset[int] = frozenset()):
        self._encode, self._decode = encode, decode
        self.eos_id, self.bos_id, self.pad_id, self.vocab_size = eos_id, bos_id, pad_id, vocab_size
        self.stop_ids = stop_ids | {eos_id}

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(list(ids))


def load_encoding(tokenizer_dir: str):
    """Our BPE tokenizer as a tiktoken Encoding, built exactly as the pretrain target's prepare.py builds it."""
    import tiktoken

    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        settings = json.load(f)
    ranks = {}
    with open(os.path.join(tokenizer_dir, "tokenizer.tiktoken"), encoding="ascii") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="autoresearch", pat_str=settings["pattern"], mergeable_ranks=ranks, special_tokens=settings["special_tokens"]
    )


def _our_tok(tokenizer_dir: str) -> Tok:
    enc = load_encoding(tokenizer_dir)
    bos = enc.encode_single_token(BOS_TOKEN)
    return Tok(enc.encode_ordinary, enc.decode, eos_id=bos, bos_id=bos, pad_id=bos, vocab_size=enc.n_vocab)


def _end_of_turn(tokenizer) -> int | None:
    """The special token a chat template closes an assistant turn with (<|im_end|>, <|eot_id|>, ...): the
    first special token after the assistant's text in a rendered conversation, or None."""
    marker = "XYZZY 42"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that cannot render a plain turn: use the eos token
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    tail = tokenizer.encode(text.split(marker, 1)[1], add_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return next((t for t in tail if t in special), None)


def _hf_tok(tokenizer) -> Tok:
    eos = tokenizer.eos_token_id
    end = _end_of_turn(tokenizer) if tokenizer.chat_template else None
    end = end if end is not None else eos
    if end is None:
        raise BaseError("the tokenizer has no eos token and no chat template that ends a turn: answers cannot end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    stops = frozenset(t for t in (eos, end) if t is not None)
    return Tok(
        lambda text: tokenizer.encode(text, add_special_tokens=False),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        eos_id=end, bos_id=tokenizer.bos_token_id, pad_id=pad, vocab_size=len(tokenizer), stop_ids=stops,
    )


# ---------------------------------------------------------------------------
# The base
# ---------------------------------------------------------------------------


@dataclass
class Base:
    """A loaded base: `model` (eval mode, no gradients), `tok`, where it came from (`info`, its base.json)."""

    kind: Literal["ours", "hf"]
    info: dict
    dir: str
    model: nn.Module
    tok: Tok
    device: torch.device
    hf_tokenizer: Any = None  # the transformers tokenizer (kind hf), for its chat template
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # linear module -> (d_in, d_out), as loaded

    @property
    def fingerprint(self) -> str:
        return str(self.info.get("fingerprint", ""))

    @property
    def max_len(self) -> int:
        """The longest sequence the model takes (prompt + answer)."""
        if self.kind == "ours":
            return int(self.model.config.sequence_len)
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    def prompt_ids(self, question: str) -> list[int]:
        """The prompt for a question, ending where the answer begins. Ours: "<|bos|>Question: {q}\\nAnswer:".
        HF with a chat template: the user turn and the assistant's generation prompt; else "Question:/Answer:"."""
        if self.kind == "ours":
            return [self.tok.eos_id, *self.tok.encode(f"Question: {question}\nAnswer:")]
        tokenizer = self.hf_tokenizer
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            return list(tokenizer.encode(text, add_special_tokens=False))
        ids = self.tok.encode(f"Question: {question}\nAnswer:")
        return [self.tok.bos_id, *ids] if self.tok.bos_id is not None else ids

    def completion_ids(self, solution: str) -> list[int]:
        """The answer's tokens and the end token: what SFT trains on (weight 1) and generation should produce."""
        if self.kind == "hf" and self.hf_tokenizer.chat_template:
            return [*self.tok.encode(solution), self.tok.eos_id]
        return [*self.tok.encode(f" {solution}"), self.tok.eos_id]


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_of(files: Mapping[str, str]) -> str:
    """A base's fingerprint: sha256 over its sorted "rel\\0sha256\\n" lines (base.json's `fingerprint`)."""
    return hashlib.sha256("".join(f"{rel}\0{files[rel]}\n" for rel in sorted(files)).encode()).hexdigest()


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BaseError(f"cannot read {what} {path}: {e}") from e
    if not isinstance(data, dict):
        raise BaseError(f"{what} {path} is not a JSON object")
    return data


def verify_files(base_dir: str, files: Mapping[str, str], only: Sequence[str] | None = None) -> None:
    """Check the base's files (all of them, or `only` these) against their recorded sha256. Raises BaseError
    naming the first file that is missing or changed."""
    for rel in sorted(files) if only is None else only:
        path = os.path.join(base_dir, rel)
        if rel not in files:
            raise BaseError(f"{path} is not listed in {BASE_JSON}: the base directory is not what init recorded")
        if not os.path.isfile(path):
            raise BaseError(f"{path} is missing (the base changed since init; run init --base again)")
        if _sha256_file(path) != files[rel]:
            raise BaseError(f"{path} changed since init (sha256 differs from {BASE_JSON}); run init --base again")


def _checked_info(info: dict, where: str) -> dict:
    files = info.get("files")
    if info.get("kind") not in ("ours", "hf") or not isinstance(files, dict):
        raise BaseError(f"{where} is not a base description (needs kind ours|hf and files)")
    if info.get("fingerprint") != fingerprint_of(files):
        raise BaseError(f"{where}: the fingerprint does not match its file list")
    return info


def load_base(workspace: str = ".", device: str | torch.device | None = None, *, meta: bool = False) -> Base:
    """The session's base: the workspace's base.json names its directory in the cache (`dir`, relative to the
    cache root); for our own models the model code is the workspace's base_model.py (committed at init, and
    checked against base.json). Raises BaseError."""
    where = os.path.join(workspace, BASE_JSON)
    info = _checked_info(_read_json(where, "the session's base description"), where)
    rel = info.get("dir")
    if not isinstance(rel, str) or not rel:
        raise BaseError(f"{where} names no base directory (`dir`)")
    base_dir = rel if os.path.isabs(rel) else os.path.join(CACHE_DIR, rel)
    code = None
    if info["kind"] == "ours":
        code = os.path.join(workspace, "base_model.py")
        if not os.path.isfile(code) or _sha256_file(code) != info["files"].get("base_model.py"):
            raise BaseError(f"{code} is missing or differs from the base's model code recorded in {where}")
    return _load(base_dir, info, device, meta, code)


def base_from_dir(base_dir: str, device: str | torch.device | None = None, *, meta: bool = False) -> Base:
    """A materialized base directory (its own base.json, files and model code). Raises BaseError."""
    where = os.path.join(base_dir, BASE_JSON)
    info = _checked_info(_read_json(where, "the base description"), where)
    return _load(base_dir, info, device, meta, None)


def _load(base_dir: str, info: dict, device, meta: bool, code: str | None) -> Base:
    if not os.path.isdir(base_dir):
        raise BaseError(f"the base directory {base_dir} does not exist (run init --base again, or models pull)")
    on = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files: dict[str, str] = info["files"]
    # With meta=True no weights are read, so only the small files are checked (config, code, tokenizer).
    weights = [rel for rel in files if rel.endswith((".safetensors", ".pt", ".bin", ".pt2", ".gguf"))]
    verify_files(base_dir, files, [rel for rel in sorted(files) if not (meta and rel in weights)])
    if info["kind"] == "ours":
        model, tok = _load_ours(base_dir, code or os.path.join(base_dir, "base_model.py"), info, on, meta)
        hf_tokenizer = None
    else:
        model, tok, hf_tokenizer = _load_hf(base_dir, on, meta)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # The linear layers as loaded: adapters are checked against these even after train.py wraps the modules.
    shapes = {lin.name: (lin.d_in, lin.d_out) for lin in linear_modules(model)}
    return Base(info["kind"], info, base_dir, model, tok, torch.device("meta") if meta else on, hf_tokenizer, shapes)


# --- ours ---

# What the pretrain train.py imports from its prepare.py, given plain values here: the model code needs none
# of them to build a model, but a module-level use of MAX_SEQ_LEN (an agent's edit) should still import.
def _stand_in_prepare(names: set[str], cfg: dict, base_dir: str) -> types.ModuleType:
    module = types.ModuleType("prepare")
    values: dict[str, Any] = {
        "MAX_SEQ_LEN": int(cfg["model"]["sequence_len"]), "VOCAB_SIZE": int(cfg["model"]["vocab_size"]),
        "TIME_BUDGET": 300.0, "SEED": 42, "CHECKPOINT_DIR": base_dir, "ON_CUDA": torch.cuda.is_available(),
        "BOS_TOKEN": BOS_TOKEN,
    }

    def unavailable(name: str):
        def refuse(*args, **kwargs):
            raise BaseError(f"base_model.py called prepare.{name}, which the base's stand-in does not provide")

        return refuse

    for name in names:
        setattr(module, name, values.get(name, unavailable(name)))
    return module


def _names_from_prepare(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "prepare":
            names.update(alias.name for alias in node.names if alias.name != "*")
    return names


def import_model_code(path: str, cfg: dict, base_dir: str) -> types.ModuleType:
    """base_model.py as a module of its own private name, its `from prepare import ...` answered by a stand-in
    (the real prepare.py beside it, if any, is the sft target's, not the pretrain one)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    name = f"_arbase_model_{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BaseError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("prepare")
    sys.modules["prepare"] = _stand_in_prepare(_names_from_prepare(source), cfg, base_dir)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if isinstance(e, Exception):
            raise BaseError(f"importing the base's model code {path} failed: {type(e).__name__}: {e}") from e
        raise
    finally:
        if saved is None:
            sys.modules.pop("prepare", None)
        else:
            sys.modules["prepare"] = saved
    return module


def _load_ours(base_dir: str, code: str, info: dict, device: torch.device, meta: bool) -> tuple[nn.Module, Tok]:
    cfg = _read_json(os.path.join(base_dir, "config.json"), "the base's checkpoint config")
    if not isinstance(cfg.get("model"), dict):
        raise BaseError(f"{base_dir}/config.json has no `model` settings")
    module = import_model_code(code, cfg, base_dir)
    for needed in ("GPT", "GPTConfig", "SDPAAttention"):
        if not hasattr(module, needed):
            raise BaseError(f"the base's model code {code} defines no {needed}")
    config = module.GPTConfig(**cfg["model"])
    attention = module.SDPAAttention()
    with torch.device("meta" if meta else device):
        model = module.GPT(config, attention)
    if not meta:
        state = torch.load(os.path.join(base_dir, "model.pt"), map_location=device, weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BaseError(f"{base_dir}/model.pt does not fit the model its config describes: {e}") from e
        # Sliding-window masks for the lengths generation and training use are built on demand by SDPAAttention.
    return model, _our_tok(os.path.join(base_dir, "tokenizer"))


# --- hf ---


def _load_hf(base_dir: str, device: torch.device, meta: bool):
    try:
        import transformers
    except ImportError as e:
        raise BaseError("a Hugging Face base needs transformers: pip install 'autoresearch[posttrain]'") from e
    transformers.utils.logging.disable_progress_bar()  # a bar per load is noise in a run's log
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    if meta:
        config = transformers.AutoConfig.from_pretrained(base_dir)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    return model, _hf_tok(tokenizer), tokenizer


# ---------------------------------------------------------------------------
# LoRA adapters in PEFT's on-disk format
# ---------------------------------------------------------------------------

LoRA = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A (r, d_in), B (d_out, r))


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _check_lora(shapes: Mapping[str, tuple[int, int]], lora: LoRA, r: int, what: str) -> None:
    if not lora:
        raise BaseError(f"{what}: no adapted modules")
    for name, (a, b) in lora.items():
        if name not in shapes:
            raise BaseError(f"{what}: {name!r} is not a linear module of the base")
        d_in, d_out = shapes[name]
        if tuple(a.shape) != (r, d_in) or tuple(b.shape) != (d_out, r):
            raise BaseError(
                f"{what}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; rank {r} on this "
                f"{d_in} -> {d_out} layer needs ({r}, {d_in}) and ({d_out}, {r})"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise BaseError(f"{what}: {name} has non-finite values")


def save_adapter(directory: str, base: Base, lora: LoRA, r: int, alpha: float) -> None:
    """Write `lora` as a PEFT adapter: adapter_config.json (LORA, CAUSAL_LM, r, lora_alpha, the adapted module
    names) and adapter_model.safetensors (`base_model.model.<module>.lora_A.weight` (r, d_in) and `.lora_B.weight`
    (d_out, r)), so `PeftModel.from_pretrained(model, directory)` loads it. The weights go first and the config
    last, each written whole (a directory with a config holds a complete adapter)."""
    from safetensors.torch import save_file

    _check_lora(base.shapes, lora, r, "save_adapter")
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, ADAPTER_CONFIG)
    if os.path.exists(config_path):
        os.remove(config_path)
    tensors = {}
    for name, (a, b) in lora.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    with arkit.atomic_output(os.path.join(directory, ADAPTER_WEIGHTS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(r), "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": sorted(lora), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
        "base_model_name_or_path": str(base.info.get("name") or base.info.get("spec") or ""),
        "autoresearch_base_fingerprint": base.fingerprint,
    }
    arkit.atomic_write_text(config_path, json.dumps(config, indent=1))


def _read_adapter(ckpt_dir: str, base: Base) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """The adapter in ckpt_dir as (module -> (A, B), scale alpha/r), validated against the base."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = _read_json(os.path.join(ckpt_dir, ADAPTER_CONFIG), "the adapter config")
    if config.get("peft_type") != "LORA":
        raise BaseError(f"{ckpt_dir}/{ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}, not LORA")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
        raise BaseError(f"{ckpt_dir}/{ADAPTER_CONFIG}: r must be a positive integer, not {r!r}")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise BaseError(f"{ckpt_dir}/{ADAPTER_CONFIG}: lora_alpha must be a number, not {alpha!r}")
    if config.get("use_rslora") or config.get("use_dora") or config.get("bias", "none") != "none" \
            or config.get("fan_in_fan_out") or config.get("modules_to_save"):
        raise BaseError(f"{ckpt_dir}/{ADAPTER_CONFIG}: only plain LoRA is read (no rslora, DoRA, bias, "
                        "fan_in_fan_out or modules_to_save)")
    try:
        tensors = load_file(os.path.join(ckpt_dir, ADAPTER_WEIGHTS))
    except (OSError, SafetensorError) as e:
        raise BaseError(f"cannot read {ckpt_dir}/{ADAPTER_WEIGHTS}: {e}") from e
    parts: dict[str, dict[str, torch.Tensor]] = {}
    key_re = re.compile(rf"^{re.escape(PEFT_PREFIX)}(.+)\.(lora_A|lora_B)\.weight$")
    for key, value in tensors.items():
        m = key_re.match(key)
        if not m:
            raise BaseError(f"{ckpt_dir}/{ADAPTER_WEIGHTS}: unexpected tensor {key!r} (only "
                            f"{PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight are read)")
        parts.setdefault(m.group(1), {})[m.group(2)] = value
    lora = {}
    for name, ab in parts.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise BaseError(f"{ckpt_dir}/{ADAPTER_WEIGHTS}: {name} has {sorted(ab)} but needs lora_A and lora_B")
        lora[name] = (ab["lora_A"].float(), ab["lora_B"].float())
    _check_lora(base.shapes, lora, r, f"{ckpt_dir}/{ADAPTER_WEIGHTS}")
    return lora, alpha / r


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoRA, scale: float) -> nn.Module:
    """W <- W + scale * B A on each adapted module of `model`, in place; each merged weight becomes a Parameter
    of its own, which unties it from anything it was tied to (an HF lm_head tied to the embedding: the adapter
    changes the output projection only, as PEFT's unmerged forward does)."""
    linears = _linears(model)
    for name, (a, b) in lora.items():
        lin = linears[name]
        w = lin.weight
        delta = (b.to(device=w.device, dtype=torch.float32) @ a.to(device=w.device, dtype=torch.float32)) * scale
        lin.weight = nn.Parameter((w.float() + delta).to(w.dtype), requires_grad=False)
    return model


def _load_merged(model: nn.Module, ckpt_dir: str) -> None:
    """Full weights in the base's layout: every tensor names a state-dict entry of the base, with its shape
    and a finite value; an entry left out must be tied to one that is present (safetensors stores it once)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(ckpt_dir, MERGED_WEIGHTS)
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise BaseError(f"cannot read {path}: {e}") from e
    expected = model.state_dict()
    for key, value in tensors.items():
        if key not in expected:
            raise BaseError(f"{path}: {key!r} is not a weight of the base")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise BaseError(f"{path}: {key} is {tuple(value.shape)}, the base's is {tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BaseError(f"{path}: {key} has non-finite values")
    present = {expected[k].data_ptr(): k for k in tensors}
    missing = [k for k in expected if k not in tensors]
    untied = [k for k in missing if expected[k].data_ptr() not in present]
    if untied:
        raise BaseError(f"{path} lacks {untied[0]} (and {len(untied) - 1} more) of the base's weights")
    tied = {k: present[expected[k].data_ptr()] for k in missing}
    model.load_state_dict(tensors, strict=False, assign=True)
    for key, source in tied.items():  # a tied entry follows the tensor it shares, as in the base
        owner, _, attr = key.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))


def load_adapted(base: Base, ckpt_dir: str, *, inplace: bool = False) -> nn.Module:
    """The base with a run's result applied, for the evaluation (which never imports train.py): the PEFT
    adapter in ckpt_dir (adapter_config.json + adapter_model.safetensors) merged as W + (alpha/r) B A, or full
    weights (model.safetensors) in the base's layout. Works on a copy of base.model unless inplace. Raises
    BaseError naming what is wrong with anything else."""
    has_adapter = os.path.isfile(os.path.join(ckpt_dir, ADAPTER_CONFIG))
    has_merged = os.path.isfile(os.path.join(ckpt_dir, MERGED_WEIGHTS))
    if not os.path.isdir(ckpt_dir):
        raise BaseError(f"no checkpoint at {ckpt_dir} (train.py saves the adapter there at the end of a run)")
    if has_adapter == has_merged:
        raise BaseError(
            f"{ckpt_dir} holds {'both an adapter and merged weights' if has_adapter else 'neither an adapter'} "
            f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}){'' if has_adapter else f' nor merged weights ({MERGED_WEIGHTS})'}"
            + ("; keep one" if has_adapter else "")
        )
    model = base.model if inplace else copy.deepcopy(base.model)
    if has_adapter:
        lora, scale = _read_adapter(ckpt_dir, base)
        merge_lora(model, lora, scale)
    else:
        _load_merged(model, ckpt_dir)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------


@torch.no_grad()
def generate(model: nn.Module, base: Base, prompts: list[list[int]], max_new_tokens: int,
             batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids), at most max_new_tokens each, each cut before its first
    stop token (the end token is not included). Batched; the result is the same whatever the batch size."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        gen = _generate_ours if base.kind == "ours" else _generate_hf
        out.extend(gen(model, base, chunk, max_new_tokens))
    return out


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, vocab) of token ids x (B, T), for our GPT (which returns them) and HF models (`.logits`).
    Rows may be right-padded: attention is causal, so no position sees the padding after it."""
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


class _LastPositions(nn.Module):
    """Stands in for our GPT's lm_head during generation: the unembedding of one position per row (`where`)
    instead of all of them. What follows lm_head in the model (the float cast, the softcap) is elementwise, so
    the logits are those of the full forward at those positions; the (rows x T x vocab) ones, most of the cost
    at a vocabulary of 8192, are never computed."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head
        self.where: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        assert self.where is not None
        picked = h[torch.arange(h.size(0), device=h.device), self.where]  # (B, d)
        return self.head(picked)[:, None, :]


def _generate_ours(model: nn.Module, base: Base, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Our GPT has no KV cache and no attention mask: rows are right-padded, and each row's next token is read
    at its own last position, which (causal attention) the padding after it cannot reach. The whole window is
    recomputed each step (for a model this small that is fast enough), the unembedding only where it is read."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        return _generate_full(model, base, prompts, max_new)
    last_only = _LastPositions(head)
    model.lm_head = last_only
    try:
        return _generate_full(model, base, prompts, max_new, last_only)
    finally:
        model.lm_head = head


def _generate_full(model: nn.Module, base: Base, prompts: list[list[int]], max_new: int,
                   last_only: _LastPositions | None = None) -> list[list[int]]:
    device, limit, stops = _device(model), base.max_len, base.tok.stop_ids
    rows = [list(p[-limit:]) for p in prompts]
    new: list[list[int]] = [[] for _ in rows]
    live = [len(r) < limit for r in rows]
    for _ in range(max_new):
        active = [j for j, on in enumerate(live) if on]
        if not active:
            break
        width = max(len(rows[j]) for j in active)
        x = torch.full((len(active), width), base.tok.pad_id, dtype=torch.long)
        for k, j in enumerate(active):
            x[k, :len(rows[j])] = torch.tensor(rows[j])
        last = torch.tensor([len(rows[j]) - 1 for j in active], device=device)
        if last_only is not None:
            last_only.where = last
            nxt = logits_of(model, x.to(device))[:, 0].argmax(-1).tolist()
        else:
            logits = logits_of(model, x.to(device))
            nxt = logits[torch.arange(len(active), device=device), last].argmax(-1).tolist()
        for j, t in zip(active, nxt, strict=True):
            if t in stops:
                live[j] = False
                continue
            rows[j].append(t)
            new[j].append(t)
            if len(rows[j]) >= limit:
                live[j] = False
    return new


def _generate_hf(model: nn.Module, base: Base, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """transformers' generate, greedy, with the batch left-padded and an attention mask."""
    device, pad, stops = _device(model), base.tok.pad_id, base.tok.stop_ids
    width = max(len(p) for p in prompts)
    x = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for k, p in enumerate(prompts):
        x[k, width - len(p):] = torch.tensor(p)
        mask[k, width - len(p):] = 1
    out = model.generate(
        input_ids=x.to(device), attention_mask=mask.to(device), max_new_tokens=max_new, do_sample=False,
        eos_token_id=sorted(stops), pad_token_id=pad, temperature=None, top_p=None, top_k=None,
    )
    result = []
    for row in out[:, width:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result
