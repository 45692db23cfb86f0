"""
autoresearch pretrain target: train a small GPT for a fixed time budget and save it; the fixed evaluation then
scores it (val_bpb, lower is better) in a process of its own.

This is the file the research agent edits. It reads top to bottom: hyperparameters, model, optimizer, then
the run (setup, training loop, export, checkpoint, summary). prepare.py is fixed: it owns the data, the
tokenizer, the time budget and the evaluation, which reads the model this run exports (model.pt2: ATen
operators and weights, as data) and never imports this file.

    python prepare.py --dataset local    # once (offline); or --dataset climbmix
    python train.py                      # trains, then writes the checkpoint
    python prepare.py --evaluate         # val_bpb of the checkpoint (the harness runs it, sandboxed)

The same file runs on CUDA (bf16 autocast, torch.compile, FA3 if installed locally, else FlexAttention),
on CPU (fp32, eager, SDPA) and on Apple MPS. Environment, all optional and set by the harness:
AUTORESEARCH_TIME_BUDGET (training seconds, default 300), AUTORESEARCH_TOKEN_BUDGET (when set: train on this many
tokens instead, whatever the time; `[session] budget = "tokens"`), AUTORESEARCH_SEED (default 42),
AUTORESEARCH_CHECKPOINT (directory for the final model, default ~/.cache/autoresearch/pretrain/checkpoint),
AUTORESEARCH_DATASET (default: the dataset prepared last), AUTORESEARCH_CACHE_DIR.
"""

import contextlib
import gc
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import CHECKPOINT_DIR, MAX_SEQ_LEN, SEED, TIME_BUDGET, Tokenizer, load_prepared, make_dataloader

# A token budget, for machines shared by nature: stop after this many training tokens instead of TIME_BUDGET
# seconds (never more: the harness checks total_tokens_M against it). 0 = the time budget.
TOKEN_BUDGET = int(os.environ.get("AUTORESEARCH_TOKEN_BUDGET") or 0)

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no command-line flags)
# ---------------------------------------------------------------------------

# tunable: begin (the offline `mutate` agent proposes changes only to the constants from here to `tunable: end`)

# Model size. On the machine class SIZED_FOR names (a row of PRESETS below), or a larger GPU, the run uses
# these as written; they are karpathy's H100 sizes. On any other machine (a CPU, a smaller GPU) it scales that
# machine's row of PRESETS by them: doubling DEPTH here doubles the depth it runs there, and any change moves
# what runs by at least one. The `preset:` and `model:` lines say what ran. For exact sizes on such a machine,
# write its row here and name it in SIZED_FOR.
SIZED_FOR = "80gb"         # the PRESETS row the five constants below start from
DEPTH = 8                  # transformer layers
ASPECT_RATIO = 64          # model dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128             # channels per attention head
DEVICE_BATCH_SIZE = 128    # rows of MAX_SEQ_LEN tokens per micro-batch (2048 on CUDA, 256 elsewhere)
TOTAL_BATCH_SIZE = 2**19   # tokens per optimizer step; gradient accumulation makes up the difference

# Model
WINDOW_PATTERN = "SSSL"    # per-layer attention window, repeated over depth: S short, L full; last layer is L
SHORT_WINDOW_DIV = 2       # S layers see MAX_SEQ_LEN // SHORT_WINDOW_DIV keys
ROPE_BASE = 10000.0        # rotary embedding base
LOGIT_SOFTCAP = 15.0       # logits = cap * tanh(logits / cap)
VE_GATE_CHANNELS = 32      # value-embedding gate reads this many channels of the layer input

# Optimization
EMBEDDING_LR = 0.6         # AdamW, token and value embeddings (scaled by (dim/768)^-0.5)
UNEMBEDDING_LR = 0.004     # AdamW, lm_head (scaled by (dim/768)^-0.5)
MATRIX_LR = 0.04           # Muon, every matrix inside the blocks
SCALAR_LR = 0.5            # AdamW, per-layer residual mixing scalars
WEIGHT_DECAY = 0.2         # Muon cautious weight decay, decayed linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)   # AdamW betas
MUON_MOMENTUM = (0.85, 0.95, 300)  # Nesterov momentum: from, to, over this many steps
MUON_BETA2 = 0.95          # NorMuon: decay of the per-neuron second moment
POLAR_EXPRESS_STEPS = 5    # orthogonalization iterations
WARMUP_RATIO = 0.0         # share of the time budget spent warming the LR up
WARMDOWN_RATIO = 0.5       # share of the time budget spent decaying the LR
FINAL_LR_FRAC = 0.0        # LR at the end, as a share of the peak

# tunable: end

# Machine presets: the model size each machine class starts from, after the seed's VRAM table. The run picks
# the row by device (cpu, mps) or, on CUDA, the largest row whose min_gib fits the GPU. The 32gb and 80gb rows
# keep karpathy's depth-8 baseline (50M params, 45 GB peak, val_bpb 0.998 on an H100) instead of the table's
# depth 12/16, which would see 2-4x fewer tokens in 300 s. On CPU the (tokens x vocab) logits dominate the
# cost, so the cpu row is small, with 2-row micro-batches (logits that small are reused by the allocator
# instead of being page-faulted in afresh each step: 2x faster) and many small steps. A 30 s sweep on 2 cores
# preferred 2**10 tokens per step to 2**9, 2**11 and 2**12, and depth 2 / dim 128 to depth 4 / 128 and 3 / 192.
PRESETS = {
    "cpu":  dict(min_gib=None, depth=2, aspect=64, head_dim=64,  device_batch=2,   total_batch=2**10),
    "mps":  dict(min_gib=None, depth=4, aspect=64, head_dim=128, device_batch=16,  total_batch=2**14),  # untested
    "4gb":  dict(min_gib=0,    depth=2, aspect=64, head_dim=128, device_batch=8,   total_batch=2**15),
    "8gb":  dict(min_gib=6,    depth=4, aspect=64, head_dim=128, device_batch=16,  total_batch=2**16),
    "12gb": dict(min_gib=10,   depth=6, aspect=64, head_dim=128, device_batch=16,  total_batch=2**17),
    "16gb": dict(min_gib=14,   depth=8, aspect=64, head_dim=128, device_batch=16,  total_batch=2**17),
    "24gb": dict(min_gib=20,   depth=8, aspect=64, head_dim=128, device_batch=32,  total_batch=2**18),
    "32gb": dict(min_gib=28,   depth=8, aspect=64, head_dim=128, device_batch=64,  total_batch=2**18),
    "80gb": dict(min_gib=60,   depth=8, aspect=64, head_dim=128, device_batch=128, total_batch=2**19),  # karpathy's baseline
}

# Run plumbing: how the run executes and reports, never what it learns. Outside the tunable block: a change
# here cannot move val_bpb, so an experiment on it would measure nothing.
EVAL_BATCH_SIZE = 0        # rows per batch of the exported model, which the evaluation runs; 0 = device_batch, at least 8 (the metric does not depend on it; on the cpu preset's 2-row micro-batches, 8-row batches evaluate 2x faster)
COMPILE = "auto"           # torch.compile: "auto" = CUDA only (on 2 CPU cores: 1.6x faster steps, but ~30 s to build and a C++ compiler)
ATTENTION = "auto"         # "auto" = fa3 > flex > sdpa by what this machine has; or force one of them
UNTIMED_STEPS = {"cuda": 10, "mps": 2, "cpu": 1}  # warm-up steps before the clock starts (compile, allocator); undone, see warm_up
LOG_EVERY_S = 5.0          # progress line period when stdout is not a terminal

# ---------------------------------------------------------------------------
# Model: GPT with RoPE, QK-norm, ReLU^2, sliding windows, value embeddings, logit softcap
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    sequence_len: int
    n_layer: int
    n_embd: int
    head_dim: int = 128
    window_pattern: str = "SSSL"
    short_window: int = 1024
    rope_base: float = 10000.0
    softcap: float = 15.0
    ve_gate_channels: int = 32

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_dim

    def windows(self) -> list[int]:
        """Keys each layer's queries see, themselves included. The last layer always sees everything."""
        sizes = {"S": self.short_window, "L": self.sequence_len}
        out = [sizes[self.window_pattern[i % len(self.window_pattern)]] for i in range(self.n_layer)]
        out[-1] = self.sequence_len
        return out

    def has_value_embedding(self, layer: int) -> bool:
        # Every other layer, counted from the last (which always has one), as in karpathy/autoresearch.
        return layer % 2 == (self.n_layer - 1) % 2


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (seq_len, head_dim // 2), for rotary position embeddings (Su et al. 2021)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x_BTHD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by position-dependent angles."""
    half = x_BTHD.size(-1) // 2
    x1, x2 = x_BTHD[..., :half], x_BTHD[..., half:]
    cos, sin = cos[None, :, None, :].type_as(x_BTHD), sin[None, :, None, :].type_as(x_BTHD)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sliding_window_mask(seq_len: int, window: int, device) -> torch.Tensor:
    """(T, T) bool, True where query i may attend key j: j <= i and i - j < window."""
    i = torch.arange(seq_len, device=device)
    delta = i[:, None] - i[None, :]
    return (delta >= 0) & (delta < window)


class SDPAAttention:
    """PyTorch scaled_dot_product_attention: the causal kernel for full layers, an explicit mask for
    sliding-window layers (correct everywhere, but the masked path is slower on GPUs)."""

    name = "sdpa"

    def __init__(self):
        self.masks = {}

    def build_masks(self, seq_len: int, windows, device) -> None:
        for w in windows:
            if w < seq_len:
                self.masks[(seq_len, w)] = sliding_window_mask(seq_len, w, device)

    def __call__(self, q, k, v, window: int):
        T = q.size(1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if (T, window) not in self.masks:
                self.build_masks(T, [window], q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.masks[(T, window)])
        return y.transpose(1, 2)


class FlexAttention:
    """torch FlexAttention with a block-sparse sliding-window mask; fast only under torch.compile."""

    name = "flex"

    def __init__(self):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask, self._flex = create_block_mask, flex_attention
        self.masks = {}

    def build_masks(self, seq_len: int, windows, device) -> None:
        for w in windows:
            def mask_mod(b, h, q_idx, kv_idx, w=w):
                return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

            self.masks[(seq_len, w)] = self._create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)

    def __call__(self, q, k, v, window: int):
        T = q.size(1)
        if (T, window) not in self.masks:
            self.build_masks(T, [window], q.device)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return self._flex(q, k, v, block_mask=self.masks[(T, window)]).transpose(1, 2)


class FA3Attention:
    """FlashAttention-3 (Hopper), which takes (B, T, H, D) and a (left, right) window directly."""

    name = "fa3"

    def __init__(self, flash_attn_func):
        self.fn = flash_attn_func

    def build_masks(self, seq_len: int, windows, device) -> None:
        pass

    def __call__(self, q, k, v, window: int):
        left = -1 if window >= q.size(1) else window - 1  # FA3 counts keys to the left, not including self
        out = self.fn(q, k, v, causal=True, window_size=(left, 0))
        return out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the log-sum-exp


def load_fa3() -> tuple[object | None, str]:
    """FA3's flash_attn_func from what is installed here, never from the network, and why not if absent."""
    try:
        import flash_attn_interface  # FA3 built from Dao-AILab/flash-attention/hopper

        return flash_attn_interface.flash_attn_func, "flash_attn_interface"
    except ImportError:
        pass
    try:
        import kernels
    except ImportError:
        return None, "neither flash_attn_interface nor the `kernels` package is installed"
    # The kernels hub package downloads on first use; allow it only what is already in the local cache.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True  # in case huggingface_hub was imported before
    except ImportError:
        pass
    for repo in ("varunneal/flash-attention-3", "kernels-community/flash-attn3"):
        try:
            return kernels.get_kernel(repo).flash_attn_interface.flash_attn_func, f"kernels:{repo} (cached)"
        except Exception:  # noqa: BLE001 - not cached, wrong version, wrong arch: all mean "not available"
            continue
    return None, "no FA3 kernel in the local kernels cache"


def pick_attention(device: torch.device, compiled: bool):
    """The attention backend and a line saying why it was chosen."""
    notes = []
    if device.type == "cuda" and ATTENTION in ("auto", "fa3"):
        if torch.cuda.get_device_capability(device) == (9, 0):
            fn, where = load_fa3()
            if fn is not None:
                return FA3Attention(fn), f"fa3 via {where}"
            notes.append(f"FA3 unavailable: {where}")
        else:
            notes.append("FA3 needs a Hopper (sm90) GPU")
        if ATTENTION == "fa3":
            sys.exit(f"error: ATTENTION = 'fa3' but {notes[-1]}")
    if device.type == "cuda" and ATTENTION in ("auto", "flex"):
        if compiled:
            return FlexAttention(), "flex" + (f" ({notes[-1]})" if notes else "")
        notes.append("FlexAttention needs torch.compile")
    if ATTENTION == "flex" and device.type != "cuda":
        notes.append("FlexAttention is used on CUDA only")
    return SDPAAttention(), "sdpa" + (f" ({'; '.join(notes)})" if notes else "")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, attention):
        super().__init__()
        d, self.n_head, self.head_dim = config.n_embd, config.n_head, config.head_dim
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d, bias=False)
        self.c_v = nn.Linear(d, d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.gate_channels = config.ve_gate_channels
        self.ve_gate = nn.Linear(self.gate_channels, self.n_head, bias=False) if config.has_value_embedding(layer) else None
        self.window = config.windows()[layer]
        self.attention = attention

    def forward(self, x, ve, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            # Value embeddings (modded-nanogpt): token-indexed vectors added to v, through a per-head gate
            # in (0, 2) that starts at 1.
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim).type_as(v)  # keep autocast's bf16
        q = rms_norm(apply_rotary(q, cos, sin))  # QK-norm bounds the attention logits
        k = rms_norm(apply_rotary(k, cos, sin))
        y = self.attention(q.type_as(v), k.type_as(v), v, self.window)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2 (So et al. 2021, Primer)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, attention):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer, attention)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin):
        x = x + self.attn(rms_norm(x), ve, cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, attention):
        super().__init__()
        self.config = config
        V, d, L = config.vocab_size, config.n_embd, config.n_layer
        self.wte = nn.Embedding(V, d)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, d) for i in range(L) if config.has_value_embedding(i)})
        self.blocks = nn.ModuleList(Block(config, i, attention) for i in range(L))
        self.lm_head = nn.Linear(d, V, bias=False)
        # Each block's input is resid_lambdas[i] * x + x0_lambdas[i] * x0, x0 being the normed embedding.
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        cos, sin = rotary_tables(config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        d = self.config.n_embd
        bound = 3**0.5 * d**-0.5  # uniform with std 1/sqrt(d)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)  # start near the uniform distribution over tokens
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None):
        """Logits (B, T, vocab) when targets is None (what evaluate_bpb calls), else the mean loss."""
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        logits = self.lm_head(rms_norm(x)).float()
        logits = self.config.softcap * torch.tanh(logits / self.config.softcap)  # Gemma 2 style softcap
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight of every matmul (embedding lookups are not matmuls),
        plus attention's 12 * heads * head_dim * keys seen per layer (the PaLM appendix B convention)."""
        matmul = sum(
            p.numel()
            for name, p in self.named_parameters()
            if p.dim() == 2 and not name.startswith(("wte.", "value_embeds."))
        )
        c = self.config
        attn = sum(12 * c.n_head * c.head_dim * min(w, c.sequence_len) for w in c.windows())
        return 6 * matmul + attn


# ---------------------------------------------------------------------------
# Optimizer: Muon (Polar Express + NorMuon + cautious weight decay) for matrices, AdamW for the rest
# ---------------------------------------------------------------------------

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): per-iteration coefficients (a, b, c)
# of the odd quintic X <- aX + b(XX^T)X + c(XX^T)^2 X that drives every singular value towards 1 fastest,
# here for 5 iterations with the paper's 2e-2 safety margin (the values nanochat and modded-nanogpt use).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalize the last two dims of G: U S V^T -> U V^T (singular values near 1).

    Runs in bf16 on CUDA (tensor cores; the iteration is stable in bf16) and in fp32 elsewhere.
    """
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the wide side so that X X^T is the smaller Gram matrix
    # The Frobenius norm bounds the spectral norm, so this puts every singular value in [0, 1/1.01].
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    for i in range(steps):
        # Past the table's last iteration, its polynomial again: by then the singular values are near 1,
        # which it keeps them near, so more steps still mean a more orthogonal update, never the same one.
        a, b, c = POLAR_EXPRESS_COEFFS[min(i, len(POLAR_EXPRESS_COEFFS) - 1)]
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay) -> None:
    """One AdamW step in place (Loshchilov & Hutter 2019), the same arithmetic as torch.optim.AdamW."""
    p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    p.add_(exp_avg / denom * (-lr / (1 - beta1**step)))


def normuon_scale(ortho: torch.Tensor, second_moment: torch.Tensor, beta2) -> torch.Tensor:
    """NorMuon (Li et al. 2025, arXiv:2510.05491): divide each row (output neuron) of the orthogonalized
    update (N, m, n) by the running RMS of that row, kept in second_moment (N, m, 1), then restore the input's
    Frobenius norm so only the balance between neurons changes, not the step size."""
    second_moment.lerp_(ortho.square().mean(dim=-1, keepdim=True), 1 - beta2)
    scaled = ortho * second_moment.clamp_min(1e-20).rsqrt()
    return scaled * (ortho.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-20))


def muon_update(params, grads, momentum_buffer, second_moment, momentum, lr, weight_decay, beta2, ns_steps: int) -> None:
    """One Muon step in place on a stack of same-shaped matrices params (N, m, n) (Jordan et al. 2024,
    kellerjordan.github.io/posts/muon): Nesterov momentum, Polar Express orthogonalization, NorMuon
    rescaling, then cautious weight decay (Chen et al. 2025, arXiv:2510.12402): decay only the
    coordinates where the update already pushes the weight towards zero."""
    momentum_buffer.lerp_(grads, 1 - momentum)
    nesterov = grads.lerp(momentum_buffer, momentum)
    ortho = polar_express(nesterov, ns_steps).float()
    update = normuon_scale(ortho, second_moment, beta2).to(params.dtype)
    # Orthogonal updates have RMS 1/sqrt(max(m, n)); this scale (from Keller Jordan's Muon) keeps tall
    # matrices' per-coordinate steps the same size as square ones'.
    lr = lr * max(1.0, params.size(-2) / params.size(-1)) ** 0.5
    decay = (update * params >= 0).to(params.dtype)
    params.sub_(lr * update + lr * weight_decay * decay * params)


class MuonAdamW(torch.optim.Optimizer):
    """Each param group has kind "adamw" (lr, betas, eps, weight_decay) or "muon" (lr, momentum, beta2,
    weight_decay, ns_steps; all params of one shape, stepped together as a stack). `initial_lr` and
    `initial_wd` keep the base values that the schedules in the training loop multiply."""

    def __init__(self, param_groups: list[dict], compile_steps: bool = False):
        for g in param_groups:
            g["initial_lr"], g["initial_wd"] = g["lr"], g["weight_decay"]
            if g["kind"] == "muon" and len({p.shape for p in g["params"]}) != 1:
                raise ValueError("a muon group must hold parameters of one shape")
        super().__init__(param_groups, defaults={})
        # Compiled, hyperparameters go in as 0-d CPU tensors so that changing them does not recompile.
        self.compiled = compile_steps
        self._adamw = torch.compile(adamw_update, dynamic=False, fullgraph=True) if compile_steps else adamw_update
        self._muon = torch.compile(muon_update, dynamic=False, fullgraph=True) if compile_steps else muon_update

    def _h(self, value: float):
        return torch.tensor(value, dtype=torch.float32) if self.compiled else value

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            elif group["kind"] == "muon":
                self._step_muon(group)
            else:
                raise ValueError(f"unknown param group kind {group['kind']!r}")

    def _step_adamw(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            h = self._h
            self._adamw(
                p, p.grad, state["exp_avg"], state["exp_avg_sq"], h(state["step"]), h(group["lr"]),
                h(beta1), h(beta2), h(group["eps"]), h(group["weight_decay"]),
            )

    def _step_muon(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        state = self.state[params[0]]  # the group's stacked buffers live with its first parameter
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(len(params), *params[0].shape, device=params[0].device)
            state["second_moment"] = torch.zeros(len(params), params[0].size(0), 1, device=params[0].device)
        stacked = torch.stack(params)
        grads = torch.stack([p.grad for p in params]).float()
        h = self._h
        self._muon(
            stacked, grads, state["momentum_buffer"], state["second_moment"], h(group["momentum"]),
            h(group["lr"]), h(group["weight_decay"]), h(group["beta2"]), group["ns_steps"],
        )
        torch._foreach_copy_(params, list(stacked.unbind(0)))


def build_optimizer(model: GPT, compile_steps: bool) -> MuonAdamW:
    """Muon for the matrices inside the blocks; AdamW for embeddings, lm_head and scalars."""
    # AdamW LRs were tuned at width 768 (nanochat); scale them as 1/sqrt(width) elsewhere.
    width_scale = (model.config.n_embd / 768) ** -0.5
    adam = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adam, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(adam, params=[model.wte.weight, *model.value_embeds.parameters()], lr=EMBEDDING_LR * width_scale),
        # The residual scalars multiply everything downstream, so they move 100x slower (karpathy/autoresearch).
        dict(adam, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(adam, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    by_shape: dict[tuple, list] = {}
    for p in model.blocks.parameters():
        by_shape.setdefault(tuple(p.shape), []).append(p)
    for shape in sorted(by_shape):
        groups.append(
            dict(
                kind="muon", params=by_shape[shape], lr=MATRIX_LR, momentum=MUON_MOMENTUM[0], beta2=MUON_BETA2,
                weight_decay=WEIGHT_DECAY, ns_steps=POLAR_EXPRESS_STEPS,
            )
        )
    covered = sum(len(g["params"]) for g in groups)
    assert covered == len(list(model.parameters())), "every parameter must be in exactly one optimizer group"
    return MuonAdamW(groups, compile_steps=compile_steps)


def lr_multiplier(progress: float) -> float:
    """Trapezoid schedule over the time budget: warmup, flat, linear warmdown to FINAL_LR_FRAC."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = max(0.0, (1.0 - progress) / WARMDOWN_RATIO)
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def muon_momentum(step: int) -> float:
    start, end, steps = MUON_MOMENTUM
    frac = min(step / steps, 1.0)
    return start + frac * (end - start)


# ---------------------------------------------------------------------------
# Machine: device, preset, peak FLOPs, memory
# ---------------------------------------------------------------------------

# Dense bf16 tensor-core peaks for MFU, matched against torch.cuda.get_device_name(), most specific first.
# Sources: karpathy/nanochat common.py get_peak_flops (H100, H200, A100, RTX 4090/3090) and NVIDIA data
# sheets (the dense figure, half of the "with sparsity" one) for the rest.
GPU_PEAK_FLOPS = (
    ("h100 nvl", 835e12), ("h100 pcie", 756e12), ("h100", 989.5e12), ("h200 nvl", 836e12), ("h200", 989.5e12),
    ("gh200", 989.5e12), ("b200", 2250e12), ("a100", 312e12), ("l40s", 362e12), ("l40", 181e12), ("l4", 121e12),
    ("a10g", 125e12), ("a10", 125e12), ("rtx 4090", 165.2e12), ("rtx 3090", 71e12),
)


def gpu_peak_flops(name: str) -> float | None:
    lower = name.lower()
    for key, flops in GPU_PEAK_FLOPS:
        if key in lower:
            return flops
    return None


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def machine_class(device: torch.device) -> tuple[str, str]:
    """(the PRESETS row of this machine, why): cpu or mps by device; on CUDA the largest row that fits."""
    if device.type != "cuda":
        return device.type, f"{device.type} device"
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    fitting = [(p["min_gib"], name) for name, p in PRESETS.items() if p["min_gib"] is not None and gib >= p["min_gib"]]
    return max(fitting)[1], f"{gib:.0f} GiB of GPU memory"


def scaled(base: int, written: int, reference: int) -> int:
    """base * written / reference, rounded, at least 1; a written value other than the reference moves the
    result at least one away from base, in the same direction (so no edit of a size is lost to rounding)."""
    value = max(1, round(base * written / reference))
    if written > reference:
        value = max(value, base + 1)
    elif written < reference:
        value = max(1, min(value, base - 1))
    return value


def model_size(device: torch.device) -> tuple[dict, str, str]:
    """(depth, aspect, head_dim, device_batch, total_batch; the PRESETS row; why): the constants as written
    when SIZED_FOR is this machine's class or a smaller GPU's, else this machine's row scaled by them."""
    if SIZED_FOR not in PRESETS:
        sys.exit(f"error: SIZED_FOR = {SIZED_FOR!r} is not one of {', '.join(PRESETS)}")
    machine, why = machine_class(device)
    written = dict(depth=DEPTH, aspect=ASPECT_RATIO, head_dim=HEAD_DIM, device_batch=DEVICE_BATCH_SIZE,
                   total_batch=TOTAL_BATCH_SIZE)
    reference, here = PRESETS[SIZED_FOR], PRESETS[machine]
    if machine == SIZED_FOR or (reference["min_gib"] is not None and here["min_gib"] is not None
                                and reference["min_gib"] <= here["min_gib"]):
        return written, SIZED_FOR, f"train.py's sizes; {why}"
    size = {k: scaled(here[k], v, reference[k]) for k, v in written.items()}
    edited = [k for k, v in written.items() if v != reference[k]]
    how = f"scaled by train.py's {', '.join(edited)} against the {SIZED_FOR} row" if edited else "as in PRESETS"
    return size, machine, f"{why}; train.py's sizes are for {SIZED_FOR}: this machine's row, {how}"


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; peak resident memory of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    except ImportError:  # Windows
        return 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Autocast(nn.Module):
    """`model` under autocast: exported through this, the casts autocast makes are recorded in the program as
    explicit operators, so the evaluation computes in the precision training did with no context around it."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, idx):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(idx)


def export_model(model: GPT, batch: int, device: torch.device, use_bf16: bool) -> torch.export.ExportedProgram:
    """The model as the fixed evaluation takes it: a torch.export program from int64 token ids (batch,
    MAX_SEQ_LEN) to logits (batch, MAX_SEQ_LEN, vocab), weights included, ATen operators only.

    FA3 (a custom kernel) and FlexAttention (compiled only) do not export, so the program attends with SDPA,
    from the same weights: the same math (a softmax over the same causal window of keys), another kernel.
    run_decompositions({}) turns export's training IR into ATen IR: autocast's casts become explicit
    operators and any in-place operator a functional one, which is what the evaluation's reader accepts."""
    attention = SDPAAttention()
    attention.build_masks(MAX_SEQ_LEN, set(model.config.windows()), device)
    for block in model.blocks:
        block.attn.attention = attention
    model.eval()
    exported = Autocast(model, device.type, torch.bfloat16) if use_bf16 else model
    example = torch.zeros(batch, MAX_SEQ_LEN, dtype=torch.long, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notes, not ours
        return torch.export.export(exported, (example,)).run_decompositions({})


def save_checkpoint(directory: str, model: GPT, program: torch.export.ExportedProgram, meta: dict) -> None:
    """Write model.pt2 (the exported program: what the evaluation reads), model.pt (the state dict, plain
    tensors, for resuming or fine-tuning), a copy of this train.py (the model's source, for whoever fine-tunes;
    the evaluation never imports it) and config.json (model config, data fingerprint, run) into directory.

    Each file is written in directory/.partial and renamed into place (the directory itself may be a mount
    point the harness gives the run, which cannot be replaced); the old config.json goes first and the new one
    last, so a directory with a config.json holds one complete checkpoint."""
    partial = os.path.join(directory, ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    config = os.path.join(directory, "config.json")
    if os.path.exists(config):
        os.remove(config)

    def write(name: str, save) -> None:
        save(os.path.join(partial, name))  # under its own name: torch.export.save names the archive after it
        os.replace(os.path.join(partial, name), os.path.join(directory, name))

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write("model.pt2", lambda path: torch.export.save(program, path))
    write("model.pt", lambda path: torch.save(state, path))
    write("train.py", lambda path: shutil.copyfile(os.path.abspath(__file__), path))

    def save_config(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"model": asdict(model.config), **meta}, f, indent=1)

    write("config.json", save_config)
    os.rmdir(partial)


def warm_up(train_model, model: GPT, optimizer: MuonAdamW, x, y, steps: int, autocast) -> None:
    """`steps` training steps on one batch before the clock starts, so that torch.compile builds its kernels
    and the allocator settles untimed; then the weights and the optimizer state are put back exactly as they
    were, and the data loader has not moved.

    This is what keeps UNTIMED_STEPS from being a way to train off the clock: the budget counts training
    time, and these steps are not timed, so none of what they learn is kept. Raised to any value, the run
    trains the same weights as with one warm-up step (tests/test_pretrain_reference.py checks it bit for bit)
    and only spends wall time. It guards the knob, not the loop: a train.py that stops undoing them, or stops
    counting time, is an edit to the training loop, and what bounds that is the harness's budget rule on this
    process's wall time (budget * (1 + startup_allowance_frac) + startup_allowance_s). The evaluation is a
    process of its own, so all of that allowance is for start-up, warm-up, export and checkpoint.
    """
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    for _ in range(steps):
        with autocast:
            loss = train_model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)
    optimizer.state.clear()  # moments and step counts start from zero again, as before the first step


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def say(*parts, end: str = "\n") -> None:
    print(*parts, end=end, flush=True)


def main() -> None:
    t_start = time.time()
    torch.manual_seed(SEED)
    device = pick_device()
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    compiled = COMPILE is True or (COMPILE == "auto" and device.type == "cuda")

    size, preset_name, preset_why = model_size(device)
    prepared = load_prepared()  # exits with a one-line message if prepare.py has not run
    tokenizer = Tokenizer.from_prepared(prepared)
    vocab_size = tokenizer.get_vocab_size()

    depth, head_dim = size["depth"], size["head_dim"]
    model_dim = -(-depth * size["aspect"] // head_dim) * head_dim
    config = GPTConfig(
        vocab_size=vocab_size, sequence_len=MAX_SEQ_LEN, n_layer=depth, n_embd=model_dim, head_dim=head_dim,
        window_pattern=WINDOW_PATTERN, short_window=MAX_SEQ_LEN // SHORT_WINDOW_DIV, rope_base=ROPE_BASE,
        softcap=LOGIT_SOFTCAP, ve_gate_channels=VE_GATE_CHANNELS,
    )
    attention, attention_why = pick_attention(device, compiled)
    attention.build_masks(MAX_SEQ_LEN, set(config.windows()), device)
    model = GPT(config, attention).to(device)
    model.init_weights()
    num_params = model.num_params()
    flops_per_token = model.flops_per_token()
    optimizer = build_optimizer(model, compile_steps=compiled)
    train_model = torch.compile(model, dynamic=False) if compiled else model

    device_batch, total_batch = size["device_batch"], size["total_batch"]
    tokens_per_micro = device_batch * MAX_SEQ_LEN
    if total_batch % tokens_per_micro:
        sys.exit(f"error: total_batch {total_batch} is not a multiple of device_batch * MAX_SEQ_LEN = {tokens_per_micro}")
    accum_steps = total_batch // tokens_per_micro
    if TOKEN_BUDGET and total_batch > TOKEN_BUDGET:
        sys.exit(f"error: the token budget {TOKEN_BUDGET:,} is less than one step ({total_batch:,} tokens)")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    peak_flops = gpu_peak_flops(device_name) if device.type == "cuda" else None

    say(f"device: {device_name} ({'bf16 autocast' if use_bf16 else 'fp32'}, {'compiled' if compiled else 'eager'})")
    say(f"attention: {attention_why}")
    say(f"preset: {preset_name} ({preset_why})")
    say(f"data: {prepared.dataset} (fingerprint {prepared.fingerprint}, vocab {vocab_size})")
    say(f"model: depth {depth}, dim {model_dim}, heads {config.n_head}, windows {config.windows()}, params {num_params / 1e6:.2f}M")
    say(f"batch: {device_batch} x {MAX_SEQ_LEN} tokens x {accum_steps} accumulation = {total_batch:,} tokens/step")
    say(f"budget: {f'{TOKEN_BUDGET:,} tokens' if TOKEN_BUDGET else f'{TIME_BUDGET:.0f}s'} of training, seed {SEED}")

    loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "train", device=device)
    x, y, epoch = next(loader)
    say(f"startup: {time.time() - t_start:.1f}s")
    untimed, t_warm = UNTIMED_STEPS.get(device.type, 1), time.time()
    warm_up(train_model, model, optimizer, x, y, untimed, autocast)
    sync(device)
    say(f"warmup: {untimed} step{'s' * (untimed != 1)} in {time.time() - t_warm:.1f}s, untimed and undone")
    fail_loss = math.log(vocab_size) + 2.0  # worse than guessing uniformly: the run has diverged
    tty = sys.stdout.isatty()
    step, training_time, smooth_loss, last_log = 0, 0.0, 0.0, 0.0

    while True:
        sync(device)
        t0 = time.time()
        for _ in range(accum_steps):
            with autocast:
                loss = train_model(x, y)
            (loss / accum_steps).backward()
            x, y, epoch = next(loader)
        progress = min(step * total_batch / TOKEN_BUDGET if TOKEN_BUDGET else training_time / TIME_BUDGET, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = group["initial_wd"] * (1.0 - progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_f = loss.item()  # also waits for the step to finish
        sync(device)
        dt = time.time() - t0

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        smoothed = smooth_loss / (1 - 0.9 ** (step + 1))
        if not math.isfinite(loss_f) or (step >= 10 and smoothed > fail_loss):
            say(f"\nloss {loss_f:.4f} (smoothed {smoothed:.4f}) at step {step}: diverged")
            say("FAIL")
            sys.exit(1)
        training_time += dt
        if step == 0:  # Python's cyclic GC pauses for ~0.5 s at random; everything long-lived exists by now
            gc.collect()
            gc.freeze()
            gc.disable()
        elif step % 5000 == 0:
            gc.collect()

        now = time.time()
        if tty or now - last_log >= LOG_EVERY_S or step < 3:
            last_log = now
            tok_per_s = total_batch / dt
            mfu = 100 * flops_per_token * tok_per_s / peak_flops if peak_flops else 0.0
            left = (f"{TOKEN_BUDGET - (step + 1) * total_batch:,} tokens" if TOKEN_BUDGET
                    else f"{max(0.0, TIME_BUDGET - training_time):.0f}s")
            line = (
                f"step {step:05d} ({100 * progress:5.1f}%) | loss {smoothed:.4f} | lrm {lr_multiplier(progress):.2f} | "
                f"dt {1000 * dt:.0f}ms | tok/s {tok_per_s:,.0f} | mfu {mfu:.1f}% | epoch {epoch} | left {left}"
            )
            say(f"\r{line}   " if tty else line, end="" if tty else "\n")
        step += 1
        if (step + 1) * total_batch > TOKEN_BUDGET if TOKEN_BUDGET else training_time >= TIME_BUDGET:
            break  # a token budget stops before the step that would exceed it
    if tty:
        say()

    total_tokens = step * total_batch
    tok_per_s = total_tokens / max(training_time, 1e-9)
    mfu = 100 * flops_per_token * tok_per_s / peak_flops if peak_flops else 0.0
    peak_mb = peak_memory_mb(device)  # training's peak, before the export adds its own
    gc.enable()

    # The run's result is its checkpoint: the fixed evaluation (`python prepare.py --evaluate`, a separate
    # process) reads model.pt2 from it and reports val_bpb. Exporting is untimed, but part of this process's
    # wall time, which the budget rule bounds.
    eval_batch = EVAL_BATCH_SIZE or max(device_batch, 8)
    t_export = time.time()
    program = export_model(model, eval_batch, device, use_bf16)
    checkpoint = {
        "dataset": prepared.dataset, "fingerprint": prepared.fingerprint, "num_steps": step, "seed": SEED,
        "preset": preset_name, "time_budget": TIME_BUDGET, "token_budget": TOKEN_BUDGET, "training_seconds": training_time,
        "device_batch": device_batch, "eval_batch": eval_batch, "sequence_len": MAX_SEQ_LEN, "device": device.type,
        "precision": "bf16 autocast" if use_bf16 else "fp32", "attention": attention.name, "exported_attention": "sdpa",
    }
    try:
        save_checkpoint(CHECKPOINT_DIR, model, program, checkpoint)
    except OSError as e:
        sys.exit(f"error: checkpoint not saved to {CHECKPOINT_DIR} ({e}); the evaluation reads the model from it")
    export_s = time.time() - t_export
    say(f"checkpoint: {CHECKPOINT_DIR} (model.pt2 for {eval_batch} x {MAX_SEQ_LEN} tokens; exported and saved in {export_s:.1f}s)")

    if peak_flops is None:
        say(f"note: mfu_percent is 0: no peak FLOPs known for {device_name}")
    if device.type != "cuda":
        say("note: peak_vram_mb is the peak resident memory of the process")
    summary = {
        "training_seconds": training_time,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_mb,
        "mfu_percent": mfu,
        "total_tokens_M": total_tokens / 1e6,
        "num_steps": step,
        "num_params_M": num_params / 1e6,
        "depth": depth,
        "export_seconds": export_s,
    }
    formats = {"mfu_percent": ".2f", "total_tokens_M": ".3f", "num_steps": "d", "depth": "d"}
    say("---")
    for key, value in summary.items():
        say(f"{key + ':':<18}{value:{formats.get(key, '.1f')}}")
    for key, value in {**summary, "tokens_per_sec": tok_per_s}.items():
        say(f"METRIC {key}={value:.10g}" if isinstance(value, float) else f"METRIC {key}={value}")


if __name__ == "__main__":
    main()
