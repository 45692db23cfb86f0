"""
autoresearch sft target: LoRA supervised fine-tuning of the session's base model on math word problems, for a
fixed time budget; the fixed evaluation then scores the saved adapter (val_accuracy, higher is better) in a
process of its own.

This is the file the research agent edits. It reads top to bottom: hyperparameters, the LoRA layer, the
schedule, then the run (load the base, inject adapters, train on completion tokens only, save the adapter in
PEFT's format, summary). prepare.py and the kit modules (arbase.py, armath.py) are fixed: they own the base,
the data, the time budget and the evaluation, which never imports this file.

    python prepare.py --data offline-math:levels=1   # once
    python train.py                                  # trains, then writes the adapter to $AUTORESEARCH_CHECKPOINT
    python prepare.py --evaluate                     # val_accuracy (the harness runs it, sandboxed)

LoRA (Hu et al. 2021; reference/posttrain.md §1.1): W x + (alpha / r) B A x, A uniform in +-1/sqrt(d_in), B zero,
so the model starts exactly as the base. The loss is the mean NLL over completion tokens (prompt weight 0).
"""

import math
import os
import re
import sys
import time

import arbase
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import CHECKPOINT_DIR, SEED, TIME_BUDGET, load_prepared, make_batch

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no command-line flags)
# ---------------------------------------------------------------------------

# tunable: begin (the offline `mutate` agent proposes changes only to the numbers from here to `tunable: end`)
LORA_RANK = 32             # r: adapter rank; with alpha fixed the 1/r scale keeps the best LR roughly rank-free
LORA_ALPHA = 32            # the scale is LORA_ALPHA / LORA_RANK (LoRA Without Regret keeps alpha at 32)
LORA_TARGETS = (           # module-name patterns (re.search) of the nn.Linear layers to adapt
    r"attn\.(c_q|c_k|c_v|c_proj|q_proj|k_proj|v_proj|o_proj)$",  # attention (ours; Llama/Qwen-style)
    r"mlp\.(c_fc|c_proj|gate_proj|up_proj|down_proj)$",          # MLP: adapt it, attention alone underperforms
    r"^lm_head$",          # the unembedding: a briefly pretrained small base's logits are too flat to be sure
)
LR = 6e-3                  # peak AdamW LR (init writes the doctrine's rate here when it is calibrated for the base)
BATCH_SIZE = 8             # rows per step (LoRA prefers small batches: LoRA Without Regret; on CPU, more steps)
SCHEDULE = "linear"        # LR over the time budget: "linear" (1 - progress), "cosine" or "constant"
WARMUP = 0.05              # fraction of the budget over which the LR ramps up from 0 (then the schedule)
WEIGHT_DECAY = 0.0         # AdamW decoupled weight decay on the adapter
# tunable: end

ADAM_BETAS = (0.9, 0.95)   # tinker-cookbook's SL defaults (beta1, beta2), eps 1e-8
ADAM_EPS = 1e-8
LOG_EVERY_S = 5.0          # progress line period when stdout is not a terminal


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * x A^T B^T, the base frozen; A (r, d_in), B (d_out, r), PEFT's init."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / r
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and PEFT
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.to(x.dtype).t() @ self.lora_B.to(x.dtype).t()) * self.scale


def inject_lora(model: nn.Module, patterns, r: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every nn.Linear whose module name matches a pattern; returns name -> its LoRALinear."""
    wanted = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and any(re.search(p, name) for p in patterns)]
    if not wanted:
        sys.exit(f"error: LORA_TARGETS {patterns} match no linear layer of the base")
    adapters = {}
    for name in wanted:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapters[name] = LoRALinear(getattr(parent, attr), r, alpha)
        setattr(parent, attr, adapters[name])
    return adapters


def lr_multiplier(progress: float) -> float:
    """The schedule over the time budget (tinker-cookbook lr_scheduling.py), after a linear warmup."""
    if progress < WARMUP:
        return progress / WARMUP
    if SCHEDULE == "linear":
        return max(0.0, 1.0 - progress)
    if SCHEDULE == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if SCHEDULE == "constant":
        return 1.0
    sys.exit(f"error: SCHEDULE = {SCHEDULE!r} is not linear, cosine or constant")


class CompletionHead(nn.Module):
    """Stands in for the model's lm_head while training: unembeds only the positions whose target is trained
    (w > 0), as one (1, N, d) row. On a small base with a vocabulary of 8192 the unembedding is most of the
    cost, and two thirds of a math row is prompt (weight 0): this about halves a step. What follows lm_head
    in the model (a float cast, a softcap) is elementwise, so those logits equal the full forward's there."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.keep: torch.Tensor | None = None  # bool (B, T): the positions to unembed

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h if self.keep is None else h[self.keep][None])


def completion_loss(model: nn.Module, x, y, w):
    """Mean NLL over the completion tokens of the batch (weights w: 1 on completion targets, 0 elsewhere)."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, CompletionHead):
        keep = w > 0
        head.keep = keep
        logits = arbase.logits_of(model, x).float()[0]  # (N, vocab): the kept positions only
        nll = F.cross_entropy(logits, y[keep], reduction="none")
        return (nll * w[keep]).sum() / w.sum().clamp_min(1.0)
    logits = arbase.logits_of(model, x).float()
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (nll * w).sum() / w.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def say(*parts) -> None:
    print(*parts, flush=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def main() -> None:
    t_start = time.time()
    torch.manual_seed(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepared = load_prepared()  # exits with a one-line message if prepare.py has not run
    base = arbase.load_base(os.path.dirname(os.path.abspath(__file__)), device=device)
    model = base.model
    adapters = inject_lora(model, LORA_TARGETS, LORA_RANK, LORA_ALPHA)
    if isinstance(getattr(model, "lm_head", None), nn.Module):  # after inject_lora: it may wrap lm_head
        model.lm_head = CompletionHead(model.lm_head)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    train = prepared.rows("train")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_lora = sum(p.numel() for p in params)
    say(f"base: {base.info.get('name')} ({base.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)")
    say(f"data: {prepared.data} (fingerprint {prepared.fingerprint}): {len(train):,} rows, "
        f"{train.completion_tokens():,} completion tokens")
    say(f"lora: rank {LORA_RANK}, alpha {LORA_ALPHA}, {len(adapters)} layers, {n_lora:,} params")
    say(f"budget: {TIME_BUDGET:.0f}s of training, batch {BATCH_SIZE}, LR {LR:g} ({SCHEDULE}), seed {SEED}")
    say(f"startup: {time.time() - t_start:.1f}s")

    g = torch.Generator().manual_seed(SEED)
    order, cursor, epoch = torch.randperm(len(train), generator=g).tolist(), 0, 0
    step, training_time, smooth, last_log, tokens, completion = 0, 0.0, 0.0, 0.0, 0, 0
    model.train()
    while training_time < TIME_BUDGET:
        t0 = time.time()
        if cursor + BATCH_SIZE > len(order):
            order, cursor, epoch = torch.randperm(len(train), generator=g).tolist(), 0, epoch + 1
        x, y, w = make_batch(train, order[cursor:cursor + BATCH_SIZE], device)
        cursor += BATCH_SIZE
        progress = min(training_time / TIME_BUDGET, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = LR * lr_multiplier(progress)
        with autocast:
            loss = completion_loss(model, x, y, w)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_f = loss.item()
        if not math.isfinite(loss_f):
            say(f"loss {loss_f} at step {step}: diverged")
            say("FAIL")
            sys.exit(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.time() - t0
        training_time += dt
        tokens += x.numel()  # every position computed (padding included), for throughput
        completion += int(w.sum().item())  # the trained tokens
        smooth = 0.9 * smooth + 0.1 * loss_f
        if time.time() - last_log >= LOG_EVERY_S or step < 3:
            last_log = time.time()
            say(f"step {step:05d} ({100 * progress:5.1f}%) | loss {smooth / (1 - 0.9 ** (step + 1)):.4f} | "
                f"lrm {lr_multiplier(progress):.2f} | dt {1000 * dt:.0f}ms | epoch {epoch} | "
                f"left {max(0.0, TIME_BUDGET - training_time):.0f}s")
        step += 1

    # The run's result is its adapter: the fixed evaluation applies it to the base and scores it.
    t_save = time.time()
    lora = {name: (a.lora_A.detach(), a.lora_B.detach()) for name, a in adapters.items()}
    try:
        arbase.save_adapter(CHECKPOINT_DIR, base, lora, LORA_RANK, LORA_ALPHA)
    except (OSError, arbase.BaseError) as e:
        sys.exit(f"error: adapter not saved to {CHECKPOINT_DIR} ({e}); the evaluation reads it from there")
    say(f"checkpoint: {CHECKPOINT_DIR} (PEFT adapter, saved in {time.time() - t_save:.1f}s)")
    summary = {
        "training_seconds": training_time,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_memory_mb(device),
        "train_loss": smooth / (1 - 0.9 ** max(step, 1)),
        "num_steps": step,
        "epochs": epoch + cursor / max(1, len(order)),
        "completion_tokens_M": completion / 1e6,
        "tokens_per_sec": tokens / max(training_time, 1e-9),
        "lora_params_M": n_lora / 1e6,
    }
    say("---")
    for key, value in summary.items():
        say(f"{key + ':':<22}{value:d}" if isinstance(value, int) else f"{key + ':':<22}{value:.4f}")
    for key, value in summary.items():
        say(f"METRIC {key}={value:.10g}" if isinstance(value, float) else f"METRIC {key}={value}")


if __name__ == "__main__":
    main()
