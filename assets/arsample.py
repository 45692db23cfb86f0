"""
The kit's sampler for post-training targets: n sampled continuations per prompt, batched, with a KV cache so
a completion of N tokens costs N one-token steps after the prompt instead of N forwards of the whole window,
and the summed log-probabilities of given completions (what DPO and GRPO losses are made of).

    sample(model, base, prompts, n=, temperature=, top_p=, max_new_tokens=, seed=) -> [[Sample]]   n per prompt
    sequence_logprobs(model, x, y, w) -> (B,)   sum_t w[b, t] * log p(y[b, t] | x[b, :t+1]), fp32

Randomness is per sample: sample (i, j) (prompt i, draw j) reads its uniforms from a generator seeded by
(seed, i, j) only, one uniform per step, turned into a token by the inverse CDF of its own next-token
distribution. So it depends on the seed, i, j and the model, never on the batch size, on how the rows were
grouped or on the other prompts (up to the float rounding a different batch shape can cause). Temperature 0
is greedy (argmax, what arbase.generate does); top_p < 1 samples from the nucleus (Holtzman et al. 2020):
the most likely tokens whose mass before them is below top_p.

How each kind of base is run:
  hf     transformers' own cache (past_key_values), the batch left-padded, position ids from the mask
  ours   our GPT (base_model.py: the pretrain train.py) has no cache API, and it is agent-edited code, so
         nothing is assumed that is not checked: a caching attention is installed on every
         `block.attn.attention` (the call that takes q, k, v (B, T, H, D) after rotary and QK-norm), the
         rotary tables `model.cos`/`model.sin` are swapped for views starting at the current position
         (forward slices them `[:T]`), and lm_head sees only the last position. Rows are left-padded; the
         padding keys are masked (RoPE is relative: a padded row computes what it would alone, up to float
         error). Before sampling, a short probe checks that the cached path's logits equal a full forward
         (fp32); if the model is not built that way, or the check fails, sampling recomputes the whole window
         each step (correct, quadratic) and says so once on stderr. The model is restored exactly afterwards
         (attention objects, buffers, head, train/eval flags), also when sampling raises.
  either the full recompute (use_cache=False), which the cached path is tested against.

The model may be base.model or a copy whose nn.Linear modules are wrapped (train.py's LoRALinear): nothing here
assumes lm_head is an nn.Linear. Self-contained: torch and the kit's arbase; never the harness.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import arbase
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Sample:
    """One sampled completion."""

    tokens: tuple[int, ...]  # the completion, cut before its first stop token (which is not included)
    finished: bool           # True: it stopped at a stop token; False: cut at max_new_tokens or the base's max_len


# ---------------------------------------------------------------------------
# Randomness and the choice of a token (pure)
# ---------------------------------------------------------------------------


def row_seed(seed: int, i: int, j: int) -> int:
    """The generator seed of sample j of prompt i: a hash, so nearby (seed, i, j) give unrelated streams."""
    digest = hashlib.sha256(f"arsample:{int(seed)}:{int(i)}:{int(j)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_uniforms(seed: int, i: int, j: int, steps: int) -> torch.Tensor:
    """(steps,) uniforms in [0, 1) for sample (i, j), one per generated token (CPU, fp32)."""
    return torch.rand(steps, generator=torch.Generator().manual_seed(row_seed(seed, i, j)))


def choose(logits_R_V: torch.Tensor, u_R: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0; else the inverse CDF at u of softmax(logits / T),
    restricted to the nucleus when top_p < 1 (the highest-probability tokens, in order, while the mass
    before each is below top_p: the most likely token is always in). Row-wise, so a row's token depends on
    its own logits and u only."""
    logits = logits_R_V.float()
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # stable: ties keep vocabulary order
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    k = torch.searchsorted(cdf, (u_R.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # The first index whose cdf exceeds u * total has mass > 0; if rounding puts u * total at the total,
    # take the last token with mass (the cumsum of the mass indicator first reaches its maximum there).
    k = torch.minimum(k, (probs > 0).cumsum(-1).argmax(-1))
    return k if order is None else order.gather(-1, k.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------
# Decoders: the logits of each row's next token, step by step
# ---------------------------------------------------------------------------


class Decoder(Protocol):
    def start(self, prompts: list[list[int]], owner: list[int]) -> torch.Tensor:
        """Logits (R, V) of the first new token of each row; row r continues prompts[owner[r]]."""
        ...

    def step(self, tokens_R: torch.Tensor) -> torch.Tensor:
        """Append one token to every current row; logits (R, V) of the next one."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these current rows (indices into the current ones), in this order."""
        ...


class Unsupported(Exception):
    """The model is not built the way the cached path needs (the reason is the message)."""


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


class _LastOnly(nn.Module):
    """Stands in for lm_head: unembeds one position per row (the last, or `where`) instead of all of them.
    What follows lm_head in our GPT (float cast, softcap) is elementwise, so those logits are the full
    forward's; the (rows x T x vocab) others are never computed. Any module head (a LoRA wrapper too)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.where: torch.Tensor | None = None  # (B,) positions; None = the last

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.where is None:
            return self.head(h[:, -1:])
        return self.head(h[torch.arange(h.size(0), device=h.device), self.where][:, None])


@contextlib.contextmanager
def _head_swapped(model: nn.Module) -> Iterator[_LastOnly | None]:
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        yield None
        return
    picker = _LastOnly(head)
    model.lm_head = picker
    try:
        yield picker
    finally:
        model.lm_head = head


class FullDecoder:
    """No cache: every step runs the whole window (rows right-padded; causal attention keeps the padding after a
    row's last token out of its logits). Works for any model `arbase.logits_of` works for; quadratic."""

    def __init__(self, model: nn.Module, base: arbase.Base, picker: _LastOnly | None):
        self.model, self.pad, self.picker = model, base.tok.pad_id, picker
        self.device = _device(model)
        self.rows: list[list[int]] = []

    def _logits(self) -> torch.Tensor:
        width = max(len(r) for r in self.rows)
        x = torch.full((len(self.rows), width), self.pad, dtype=torch.long)
        for k, r in enumerate(self.rows):
            x[k, :len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in self.rows], device=self.device)
        with _autocast(self.device):
            if self.picker is not None:
                self.picker.where = last
                return arbase.logits_of(self.model, x.to(self.device))[:, 0].float()
            logits = arbase.logits_of(self.model, x.to(self.device))
            return logits[torch.arange(len(self.rows), device=self.device), last].float()

    def start(self, prompts: list[list[int]], owner: list[int]) -> torch.Tensor:
        self.rows = [list(prompts[o]) for o in owner]
        return self._logits()

    def step(self, tokens_R: torch.Tensor) -> torch.Tensor:
        for r, t in zip(self.rows, tokens_R.tolist(), strict=True):
            r.append(t)
        return self._logits()

    def keep(self, rows: torch.Tensor) -> None:
        self.rows = [self.rows[k] for k in rows.tolist()]


def _left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    x = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for k, p in enumerate(prompts):
        x[k, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[k, width - len(p):] = True
    return x, mask


class HFDecoder:
    """transformers' KV cache: the distinct prompts prefilled once (left-padded, attention mask, position ids
    counted from each row's first real token), the cache then gathered to the rows (n per prompt), and one
    token per row per step."""

    def __init__(self, model: nn.Module, base: arbase.Base):
        self.model, self.pad, self.device = model, base.tok.pad_id, _device(model)
        params = inspect.signature(model.forward).parameters
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5 renames past_key_values to `cache` (deprecated name kept until 5.40)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.past: Any = None
        self.mask = self.pos = torch.empty(0)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device):
            out = self.model(input_ids=x, attention_mask=self.mask.long(), position_ids=self.pos, use_cache=True,
                             **{self.cache_arg: self.past}, **self.extra)
        self.past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return out.logits[:, -1].float()

    def start(self, prompts: list[list[int]], owner: list[int]) -> torch.Tensor:
        x, mask = _left_padded(prompts, self.pad)
        self.mask, self.past = mask.to(self.device), None
        self.pos = (self.mask.long().cumsum(-1) - 1).clamp_min(0)
        logits = self._forward(x.to(self.device))
        rows = torch.tensor(owner, device=self.device)
        if not hasattr(self.past, "reorder_cache"):
            raise Unsupported("the model's cache cannot be gathered by row (no reorder_cache)")
        self.past.reorder_cache(rows)
        self.mask, self.pos = self.mask[rows], self.pos[rows, -1:]
        return logits[rows]

    def step(self, tokens_R: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)
        self.pos = self.pos + 1
        return self._forward(tokens_R.to(self.device)[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.past.reorder_cache(rows)
        self.mask, self.pos = self.mask[rows], self.pos[rows]


# --- ours: a cache installed into the model's attention calls ---


class _KV:
    """The cache of one sampling call: per-layer key/value buffers (B, L, H, D) in the left-padded frame,
    which keys are real (B, L), and the frame position the next forward starts at."""

    def __init__(self, length: int):
        self.length, self.pos = length, 0
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.valid = torch.empty(0, dtype=torch.bool)
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}

    def mask(self, T: int, window: int) -> torch.Tensor:
        """(B, 1, T, pos+T) bool: query pos+a sees key b when b <= pos+a, pos+a-b < window and b is a real
        token; a padding query also sees itself, so no row of the softmax is all -inf."""
        key = (self.pos, T, window)
        if key not in self._masks:
            device = self.valid.device
            q = torch.arange(self.pos, self.pos + T, device=device)[:, None]
            k = torch.arange(self.pos + T, device=device)[None, :]
            causal = (k <= q) & (q - k < window)
            self._masks[key] = ((causal[None] & self.valid[:, None, :self.pos + T]) | (k == q)[None])[:, None]
        return self._masks[key]

    def advance(self, T: int) -> None:
        self.pos += T
        self._masks.clear()

    def keep(self, rows: torch.Tensor) -> None:
        for d in (self.k, self.v):
            for layer, t in d.items():
                d[layer] = t[rows]
        self.valid = self.valid[rows]
        self._masks.clear()


class _CachedAttention:
    """Stands in for our GPT's `attention(q, k, v, window)` (q, k, v (B, T, H, D), rotary and QK-norm applied):
    writes k, v at the current frame positions and attends q to every cached key the mask allows."""

    def __init__(self, kv: _KV, layer: int):
        self.kv, self.layer = kv, layer

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
        kv, T, p = self.kv, q.size(1), self.kv.pos
        if self.layer not in kv.k:
            kv.k[self.layer] = k.new_zeros((k.size(0), kv.length, *k.shape[2:]))
            kv.v[self.layer] = v.new_zeros((v.size(0), kv.length, *v.shape[2:]))
        keys, values = kv.k[self.layer], kv.v[self.layer]
        keys[:, p:p + T], values[:, p:p + T] = k, v
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys[:, :p + T].transpose(1, 2),
                                           values[:, :p + T].transpose(1, 2), attn_mask=kv.mask(T, int(window)))
        return y.transpose(1, 2)


def _rotary_extended(table_cos: torch.Tensor, table_sin: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables to `length` positions: the model's own rows, then (beyond them) angle addition
    cos(a + b) = cos a cos b - sin a sin b from its rows, so no formula of the model's code is assumed."""
    n = table_cos.size(0)
    if length <= n:
        return table_cos, table_sin
    if length > 2 * n - 1:
        raise Unsupported(f"a frame of {length} positions is beyond twice the model's rotary table ({n})")
    b = torch.arange(length - n, device=table_cos.device) + 1  # positions n .. length-1 = (n-1) + b
    ca, sa = table_cos[n - 1].float(), table_sin[n - 1].float()
    cb, sb = table_cos[b].float(), table_sin[b].float()
    cos = torch.cat([table_cos, (ca * cb - sa * sb).to(table_cos.dtype)])
    sin = torch.cat([table_sin, (sa * cb + ca * sb).to(table_sin.dtype)])
    return cos, sin


def _attentions_of(model: nn.Module) -> list[nn.Module]:
    """The modules whose `attention` attribute the cache replaces (each block's attn), or Unsupported."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise Unsupported("no model.blocks")
    attns = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.Module) or not callable(getattr(attn, "attention", None)):
            raise Unsupported(f"blocks[{i}].attn has no attention callable")
        if isinstance(attn.attention, nn.Module) or "attention" not in attn.__dict__:
            raise Unsupported(f"blocks[{i}].attn.attention is not a plain attribute")
        attns.append(attn)
    for name in ("cos", "sin"):
        t = model._buffers.get(name)
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise Unsupported(f"model.{name} is not a (positions, dim) buffer")
    return attns


class OursDecoder:
    """Our GPT with the cache installed (see the module docstring). Use inside `installed()`."""

    def __init__(self, model: nn.Module, base: arbase.Base, length: int, *, autocast: bool = True):
        self.model, self.pad, self.device = model, base.tok.pad_id, _device(model)
        self.autocast = autocast  # bf16 on CUDA while sampling; the check compares fp32 with fp32
        self.attns = _attentions_of(model)
        self.kv = _KV(length)
        self.cos, self.sin = _rotary_extended(model._buffers["cos"], model._buffers["sin"], length)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def installed(self) -> Iterator[OursDecoder]:
        model = self.model
        saved = [attn.__dict__["attention"] for attn in self.attns]
        cos, sin = model._buffers["cos"], model._buffers["sin"]
        head = getattr(model, "lm_head", None)
        try:
            for layer, attn in enumerate(self.attns):
                attn.__dict__["attention"] = _CachedAttention(self.kv, layer)
            if isinstance(head, nn.Module):
                model.lm_head = _LastOnly(head)
            yield self
        finally:
            for attn, original in zip(self.attns, saved, strict=True):
                attn.__dict__["attention"] = original
            model._buffers["cos"], model._buffers["sin"] = cos, sin
            if isinstance(head, nn.Module):
                model.lm_head = head

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        p, T = self.kv.pos, x.size(1)
        self.model._buffers["cos"], self.model._buffers["sin"] = self.cos[p:p + T], self.sin[p:p + T]
        with _autocast(self.device) if self.autocast else contextlib.nullcontext():
            logits = arbase.logits_of(self.model, x)
        self.kv.advance(T)
        return logits[:, -1].float()

    def start(self, prompts: list[list[int]], owner: list[int]) -> torch.Tensor:
        x, mask = _left_padded(prompts, self.pad)
        self.kv.valid = torch.zeros((len(prompts), self.kv.length), dtype=torch.bool, device=self.device)
        self.kv.valid[:, :x.size(1)] = mask.to(self.device)
        logits = self._forward(x.to(self.device))
        rows = torch.tensor(owner, device=self.device)
        self.kv.keep(rows)  # n rows per prompt share its prefill
        return logits[rows]

    def step(self, tokens_R: torch.Tensor) -> torch.Tensor:
        self.kv.valid[:, self.kv.pos] = True
        return self._forward(tokens_R.to(self.device)[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        self.kv.keep(rows.to(self.device))


def probe_ours(model: nn.Module, base: arbase.Base, tokens: list[int]) -> None:
    """Check that the cached path computes what a full forward does, on two rows of different lengths (so the
    padding mask is exercised), long enough to reach past the shortest attention window. Raises Unsupported."""
    windows = [w for b in getattr(model, "blocks", []) if isinstance(w := getattr(getattr(b, "attn", None), "window", None), int)]
    n = min(base.max_len, max(8, min(windows, default=0) + 4))
    if n < 8:
        raise Unsupported(f"max_len {base.max_len} is too short to check the cache on")
    seq = [tokens[k % len(tokens)] if tokens else k % base.tok.vocab_size for k in range(n)]
    rows = [seq, seq[1:n - 1]]  # lengths n and n - 2: the second is left-padded by 2
    device = _device(model)
    decoder = OursDecoder(model, base, n, autocast=False)
    steps = 4
    with torch.autocast(device.type, enabled=False):  # fp32 with fp32, even inside the caller's autocast
        full = [arbase.logits_of(model, torch.tensor([r], device=device))[0].float() for r in rows]
        with decoder.installed():
            got = [decoder.start([r[:len(r) - steps] for r in rows], [0, 1])]
            for s in range(steps):
                got.append(decoder.step(torch.tensor([r[len(r) - steps + s] for r in rows])))
    want = torch.stack([torch.stack([f[len(r) - steps - 1 + s] for f, r in zip(full, rows, strict=True)])
                        for s in range(steps + 1)])
    have = torch.stack(got)
    tol = (2e-2 if device.type == "cuda" else 2e-3) * max(1.0, float(want.abs().max()))
    err = float((have - want).abs().max())
    if not err <= tol:
        raise Unsupported(f"the cached logits differ from a full forward by {err:.3g} (tolerance {tol:.3g})")


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------

_NOTED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose fallback was already reported


def _note_once(model: nn.Module, why: str) -> None:
    if model not in _NOTED:
        _NOTED.add(model)
        print(f"arsample: no KV cache for this model ({why}); recomputing the whole window each step", file=sys.stderr)


@contextlib.contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Eval mode while sampling; every module's own train/eval flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _decode(decoder: Decoder, prompts: list[list[int]], owner: list[int], u_R_S: torch.Tensor, caps: list[int],
            stops: frozenset[int], temperature: float, top_p: float) -> list[Sample]:
    """Run one group of rows to the end: row r continues prompts[owner[r]] for at most caps[r] tokens."""
    R = len(owner)
    out: list[list[int]] = [[] for _ in range(R)]
    finished = [False] * R
    current = list(range(R))  # the decoder's rows, by row id
    live = [True] * R
    logits = decoder.start(prompts, owner)
    for t in range(max(caps)):
        nxt = choose(logits, u_R_S[current, t], temperature, top_p).tolist()
        for r, tok in zip(current, nxt, strict=True):
            if not live[r]:
                continue
            if tok in stops:
                live[r], finished[r] = False, True
            else:
                out[r].append(tok)
                live[r] = len(out[r]) < caps[r]
        alive = [k for k, r in enumerate(current) if live[r]]
        if not alive:
            break
        if len(current) - len(alive) >= max(1, len(current) // 8):  # drop finished rows once enough have
            decoder.keep(torch.tensor(alive))
            current = [current[k] for k in alive]
            nxt = [nxt[k] for k in alive]
        feed = [tok if live[r] and tok not in stops else 0 for r, tok in zip(current, nxt, strict=True)]
        logits = decoder.step(torch.tensor(feed, dtype=torch.long))
    return [Sample(tuple(o), f) for o, f in zip(out, finished, strict=True)]


@torch.no_grad()
def sample(model: nn.Module, base: arbase.Base, prompts: list[list[int]], *, n: int = 1, temperature: float = 1.0,
           top_p: float = 1.0, max_new_tokens: int, seed: int, batch_size: int = 64,
           use_cache: bool = True) -> list[list[Sample]]:
    """n sampled completions of each prompt (token ids): result[i][j] is draw j of prompts[i], at most
    max_new_tokens tokens and at most base.max_len with its prompt (a longer prompt keeps its last max_len
    tokens), cut before its first stop token (base.tok.stop_ids). Temperature 0 = greedy. Sample (i, j)
    depends only on (seed, i, j) and the model, not on batch_size (rows per forward) or the other prompts.
    use_cache=False recomputes the whole window each step (the reference the cache is tested against)."""
    if n < 1 or max_new_tokens < 0 or batch_size < 1:
        raise ValueError(f"need n >= 1, max_new_tokens >= 0 and batch_size >= 1 (got {n}, {max_new_tokens}, {batch_size})")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    limit, stops = base.max_len, base.tok.stop_ids
    trimmed = [list(p[-limit:]) for p in prompts]
    result: list[list[Sample]] = [[Sample((), False)] * n for _ in prompts]
    # Rows (i, j) that can generate at all, grouped by prompt length (less padding per group).
    rows = [(i, j) for i in sorted(range(len(trimmed)), key=lambda i: len(trimmed[i])) for j in range(n)
            if min(max_new_tokens, limit - len(trimmed[i])) > 0 and trimmed[i]]
    if not rows:
        return result
    cache = use_cache
    if cache and base.kind == "ours":
        try:
            with _modes_kept(model):
                probe_ours(model, base, trimmed[rows[0][0]])
        except Unsupported as e:
            _note_once(model, str(e))
            cache = False
        except Exception as e:  # noqa: BLE001 - agent-edited model code the cache does not fit: recompute instead
            _note_once(model, f"{type(e).__name__}: {e}")
            cache = False
    with _modes_kept(model):
        for g in range(0, len(rows), batch_size):
            group = rows[g:g + batch_size]
            distinct = sorted({i for i, _ in group})
            owner = [distinct.index(i) for i, _ in group]
            group_prompts = [trimmed[i] for i in distinct]
            caps = [min(max_new_tokens, limit - len(trimmed[i])) for i, _ in group]
            u = torch.stack([row_uniforms(seed, i, j, max(caps)) for i, j in group])
            args = (group_prompts, owner, u, caps, stops, float(temperature), float(top_p))
            if not cache:
                with _head_swapped(model) if base.kind == "ours" else contextlib.nullcontext() as picker:
                    samples = _decode(FullDecoder(model, base, picker), *args)
            elif base.kind == "hf":
                try:
                    samples = _decode(HFDecoder(model, base), *args)
                except Unsupported as e:  # raised before any token is drawn: nothing to undo
                    _note_once(model, str(e))
                    samples = _decode(FullDecoder(model, base, None), *args)
            else:
                try:
                    ours = OursDecoder(model, base, max(len(p) for p in group_prompts) + max(caps))
                except Unsupported as e:
                    _note_once(model, str(e))
                    with _head_swapped(model) as picker:
                        samples = _decode(FullDecoder(model, base, picker), *args)
                else:
                    with ours.installed():
                        samples = _decode(ours, *args)
            for (i, j), s in zip(group, samples, strict=True):
                result[i][j] = s
    return result


# ---------------------------------------------------------------------------
# Log-probabilities of given completions
# ---------------------------------------------------------------------------


class _KeptPositions(nn.Module):
    """Stands in for lm_head in sequence_logprobs: unembeds only the positions that carry weight, as one
    (1, N, d) row (sft's CompletionHead does the same in training). Prompts are most of a math row, and at a
    large vocabulary the (B, T, V) logits are most of the memory; what follows lm_head is elementwise."""

    def __init__(self, head: nn.Module, keep: torch.Tensor):
        super().__init__()
        self.head, self.keep = head, keep

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h[self.keep][None])


def _token_logprobs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) sum over t of w[b, t] * log softmax(logits[b, t])[y[b, t]], in fp32: x (B, T) the inputs, y (B, T)
    the next tokens, w (B, T) the weights (1 on completion targets, 0 on prompt and padding). Differentiable
    (call it under no_grad for reference log-probs); rows may be right-padded (attention is causal). Only the
    weighted positions are unembedded when the model has an lm_head module (else all, then picked)."""
    keep = w != 0
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module) and not isinstance(head, _KeptPositions):
        model.lm_head = _KeptPositions(head, keep)
        try:
            logits = arbase.logits_of(model, x)
        finally:
            model.lm_head = head
        n = int(keep.sum())
        if logits.dim() == 3 and logits.shape[:2] == (1, n):  # the head saw (B, T, d), as expected
            per = torch.zeros(w.shape, dtype=torch.float32, device=logits.device)
            per = per.masked_scatter(keep, _token_logprobs(logits[0], y[keep]) * w[keep].float())
            return per.sum(-1)
    return (_token_logprobs(arbase.logits_of(model, x), y) * w.float()).sum(-1)
