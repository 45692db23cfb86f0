"""
autoresearch dpo target: Direct Preference Optimization of the session's base on its own graded samples,
with LoRA, for a fixed time budget; the fixed evaluation then scores the saved adapter (val_accuracy, higher
is better) in a process of its own.

This is the file the research agent edits. It reads top to bottom: hyperparameters, the LoRA layer, the
sequence log-probs and the DPO loss, then the run (load the base and the pairs, inject adapters, train,
save the adapter in PEFT's format, summary). prepare.py and the kit modules are fixed: they own the base, the
preference pairs (sampled once per session from the base, correct vs incorrect first), the time budget and
the evaluation, which never imports this file.

    python prepare.py --data offline-math:levels=1-2   # once: data, rollouts, pairs
    python train.py                                    # trains, then writes the adapter to $AUTORESEARCH_CHECKPOINT
    python prepare.py --evaluate                       # val_accuracy (the harness runs it, sandboxed)

DPO (Rafailov et al. 2023; reference/posttrain.md §1.5, as tinker-cookbook's compute_dpo_loss and TRL's
default "sigmoid" loss): with log-probs summed over each completion's tokens (not averaged),
    chosen_logratio   = log pi(y+) - log pi_ref(y+),   rejected_logratio = log pi(y-) - log pi_ref(y-)
    loss = mean(-logsigmoid(BETA * (chosen_logratio - rejected_logratio)))
The frozen reference pi_ref is the base: the same model with its LoRA adapters switched off (LoRALinear.enabled,
as TRL does with a PEFT model and no ref_model), computed under no_grad, once per pair (kept: it never changes).
At the first step the adapters are zero (B = 0), so policy == reference: loss ln 2 = 0.693147, margins 0; the
summary reports first_loss and first_margin so a broken reference shows at once (posttrain.md §6: a loss pinned
at 0.6931 means the reference is the policy, or the policy does not move).
"""

import math
import os
import re
import sys
import time
from contextlib import contextmanager

import arbase
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import CHECKPOINT_DIR, SEED, TIME_BUDGET, load_pairs

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no command-line flags)
# ---------------------------------------------------------------------------

# tunable: begin (the offline `mutate` agent proposes changes only to the numbers from here to `tunable: end`)
BETA = 0.1                 # DPO's beta (tinker-cookbook and TRL default): higher keeps the policy nearer the base
NLL_WEIGHT = 0.0           # + this times the chosen completions' per-token NLL (Iterative RPO, Pang et al. 2024: 1.0)
LORA_RANK = 16             # r: adapter rank; with alpha fixed the 1/r scale keeps the best LR roughly rank-free
LORA_ALPHA = 32            # the scale is LORA_ALPHA / LORA_RANK (LoRA Without Regret keeps alpha at 32)
LORA_TARGETS = (           # module-name patterns (re.search) of the nn.Linear layers to adapt
    r"attn\.(c_q|c_k|c_v|c_proj|q_proj|k_proj|v_proj|o_proj)$",  # attention (ours; Llama/Qwen-style)
    r"mlp\.(c_fc|c_proj|gate_proj|up_proj|down_proj)$",          # MLP: adapt it, attention alone underperforms
    r"^lm_head$",          # the unembedding
)
LR = 3e-4                  # peak AdamW LR, 20x below sft's CPU 6e-3 (tinker-cookbook: DPO 1e-5 vs SFT 2e-4); 1e-3 collapsed greedy accuracy on CPU
BATCH_SIZE = 8             # pairs per step
SCHEDULE = "linear"        # LR over the time budget: "linear" (1 - progress), "cosine" or "constant"
WARMUP = 0.05              # fraction of the budget over which the LR ramps up from 0 (then the schedule)
WEIGHT_DECAY = 0.0         # AdamW decoupled weight decay on the adapter
# tunable: end

ADAM_BETAS = (0.9, 0.95)   # tinker-cookbook's DPO defaults (beta1, beta2), eps 1e-8
ADAM_EPS = 1e-8
LOG_EVERY_S = 5.0          # progress line period when stdout is not a terminal


# ---------------------------------------------------------------------------
# LoRA, with an off switch for the reference
# ---------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * x A^T B^T, the base frozen; A (r, d_in), B (d_out, r), PEFT's init. With
    enabled False it is the base layer alone: the reference model."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale, self.enabled = base, alpha / r, True
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and PEFT
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device))

    def forward(self, x):
        if not self.enabled:
            return self.base(x)
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


@contextmanager
def adapters_off(adapters: dict[str, LoRALinear]):
    """The model as the base (every adapter switched off) inside the block: the frozen DPO reference."""
    for a in adapters.values():
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters.values():
            a.enabled = True


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


# ---------------------------------------------------------------------------
# Sequence log-probs and the DPO loss
# ---------------------------------------------------------------------------


class CompletionHead(nn.Module):
    """Stands in for the model's lm_head: unembeds only the positions whose target is a completion token
    (w > 0), as one (1, N, d) row; on a small base the unembedding is most of the cost and most of a row is
    prompt. What follows lm_head in the model is elementwise, so those logits equal the full forward's."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.keep: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h if self.keep is None else h[self.keep][None])


def completion_logprobs(model: nn.Module, x, y, w) -> torch.Tensor:
    """(B,) sum over t of w[b, t] * log softmax(logits[b, t])[y[b, t]], the log-softmax in float32."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, CompletionHead):
        keep = w > 0
        head.keep = keep
        logits = arbase.logits_of(model, x).float()[0]  # (N, vocab): the kept positions only
        token_lp = -F.cross_entropy(logits, y[keep], reduction="none") * w[keep]
        rows = torch.arange(x.size(0), device=x.device)[:, None].expand_as(keep)[keep]
        return torch.zeros(x.size(0), device=x.device, dtype=torch.float32).index_add(0, rows, token_lp)
    logits = arbase.logits_of(model, x).float()
    token_lp = -F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (token_lp * w).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """The sigmoid DPO loss over a batch of pairs (sequence-summed log-probs), and its diagnostics (detached):
    the implicit rewards beta * logratio (TRL rewards/chosen, rewards/rejected), their margin, and the
    preference accuracy (strict >, so 0 at the start, as TRL and tinker-cookbook count it)."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    chosen_reward = beta * chosen_logratio.detach()
    rejected_reward = beta * rejected_logratio.detach()
    stats = {
        "chosen_reward": float(chosen_reward.mean()),
        "rejected_reward": float(rejected_reward.mean()),
        "margin": float((chosen_reward - rejected_reward).mean()),
        "accuracy": float((chosen_reward > rejected_reward).float().mean()),
    }
    return loss, stats


class Reference:
    """The reference log-probs of each pair (chosen, rejected), computed once with the adapters off."""

    def __init__(self, model: nn.Module, adapters: dict[str, LoRALinear]):
        self.model, self.adapters, self.cache = model, adapters, {}

    @torch.no_grad()
    def __call__(self, indices: list[int], x, y, w) -> torch.Tensor:
        missing = [k for k, i in enumerate(indices) if i not in self.cache]
        if missing:
            rows = [r for k in missing for r in (2 * k, 2 * k + 1)]
            with adapters_off(self.adapters):
                lp = completion_logprobs(self.model, x[rows], y[rows], w[rows])
            for n, k in enumerate(missing):
                self.cache[indices[k]] = lp[2 * n:2 * n + 2].clone()
        return torch.cat([self.cache[i] for i in indices])  # interleaved as x: chosen, rejected, ...


def dpo_step_loss(model, reference: Reference, pairs, indices: list[int], device):
    """The DPO loss of pairs `indices`, the chosen completions' mean per-token NLL, and the diagnostics."""
    x, y, w = pairs.batch(indices, device)
    ref = reference(indices, x, y, w)
    policy = completion_logprobs(model, x, y, w)
    loss, stats = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], BETA)
    # Iterative RPO's NLL term (arXiv 2404.19733): length-normalized, on the winner only; it keeps the chosen
    # answers likely while DPO pushes the pair apart (DPO alone can lower both, posttrain.md §6 item 4)
    nll = (-policy[0::2] / w[0::2].sum(-1).clamp_min(1.0)).mean()
    stats["nll"] = float(nll.detach())
    return loss, nll, stats, x, w


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
    pairs = load_pairs("train")  # exits with a one-line message if prepare.py has not run
    if not len(pairs):
        sys.exit("error: the session's pair set has no training pairs")
    base = arbase.load_base(os.path.dirname(os.path.abspath(__file__)), device=device)
    model = base.model
    adapters = inject_lora(model, LORA_TARGETS, LORA_RANK, LORA_ALPHA)
    if isinstance(getattr(model, "lm_head", None), nn.Module):  # after inject_lora: it may wrap lm_head
        model.lm_head = CompletionHead(model.lm_head)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    reference = Reference(model, adapters)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_lora = sum(p.numel() for p in params)
    by_type: dict[str, int] = {}
    for p in pairs.pairs:
        by_type[p.pair_type] = by_type.get(p.pair_type, 0) + 1
    say(f"base: {base.info.get('name')} ({base.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)")
    say(f"pairs: {len(pairs):,} ({', '.join(f'{k} {v:,}' for k, v in sorted(by_type.items()))})")
    say(f"lora: rank {LORA_RANK}, alpha {LORA_ALPHA}, {len(adapters)} layers, {n_lora:,} params")
    say(f"budget: {TIME_BUDGET:.0f}s of training, batch {BATCH_SIZE} pairs, LR {LR:g} ({SCHEDULE}), beta {BETA:g}, "
        f"NLL weight {NLL_WEIGHT:g}, seed {SEED}")
    say(f"startup: {time.time() - t_start:.1f}s")

    g = torch.Generator().manual_seed(SEED)
    batch = min(BATCH_SIZE, len(pairs))
    order, cursor, epoch = torch.randperm(len(pairs), generator=g).tolist(), 0, 0
    step, skipped, good, training_time, last_log, tokens = 0, 0, 0, 0.0, 0.0, 0
    first: dict[str, float] = {}
    ema: dict[str, float] = {}
    model.train()
    while training_time < TIME_BUDGET:
        t0 = time.time()
        if cursor + batch > len(order):
            order, cursor, epoch = torch.randperm(len(pairs), generator=g).tolist(), 0, epoch + 1
        indices = order[cursor:cursor + batch]
        cursor += batch
        progress = min(training_time / TIME_BUDGET, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = LR * lr_multiplier(progress)
        with autocast:
            loss, nll, stats, x, w = dpo_step_loss(model, reference, pairs, indices, device)
            total = loss + NLL_WEIGHT * nll if NLL_WEIGHT else loss
        loss_f = total.item()
        if math.isfinite(loss_f):
            total.backward()
            optimizer.step()
        else:  # a non-finite loss skips the step (posttrain.md §6: bad data or an overflow), counted
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.time() - t0
        training_time += dt
        tokens += int(w.sum().item())
        if math.isfinite(loss_f):
            values = {"loss": loss.item(), **stats}
            good += 1
            if not first:
                first = values
            for key, value in values.items():
                ema[key] = 0.9 * ema.get(key, 0.0) + 0.1 * value
        if time.time() - last_log >= LOG_EVERY_S or step < 3:
            last_log = time.time()
            d = 1 - 0.9 ** max(good, 1)  # the EMAs' bias correction
            say(f"step {step:05d} ({100 * progress:5.1f}%) | loss {ema.get('loss', float('nan')) / d:.4f} | "
                f"acc {ema.get('accuracy', 0) / d:.3f} | margin {ema.get('margin', 0) / d:+.4f} | "
                f"lrm {lr_multiplier(progress):.2f} | dt {1000 * dt:.0f}ms | epoch {epoch} | "
                f"left {max(0.0, TIME_BUDGET - training_time):.0f}s")
        step += 1
    if not first:
        say(f"every one of {step} steps had a non-finite loss")
        say("FAIL")
        sys.exit(1)

    # The run's result is its adapter: the fixed evaluation applies it to the base and scores it.
    t_save = time.time()
    lora = {name: (a.lora_A.detach(), a.lora_B.detach()) for name, a in adapters.items()}
    try:
        arbase.save_adapter(CHECKPOINT_DIR, base, lora, LORA_RANK, LORA_ALPHA)
    except (OSError, arbase.BaseError) as e:
        sys.exit(f"error: adapter not saved to {CHECKPOINT_DIR} ({e}); the evaluation reads it from there")
    say(f"checkpoint: {CHECKPOINT_DIR} (PEFT adapter, saved in {time.time() - t_save:.1f}s)")
    d = 1 - 0.9 ** good
    summary = {
        "training_seconds": training_time,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_memory_mb(device),
        "first_loss": first["loss"],  # ln 2 = 0.693147 when the reference is right
        "first_margin": first["margin"],  # 0 when the reference is right
        "train_loss": ema["loss"] / d,  # the DPO part (the NLL term is train_nll)
        "train_nll": ema["nll"] / d,
        "pref_accuracy": ema["accuracy"] / d,
        "margin": ema["margin"] / d,
        "chosen_reward": ema["chosen_reward"] / d,
        "rejected_reward": ema["rejected_reward"] / d,
        "num_steps": step,
        "skipped_steps": skipped,
        "num_pairs": len(pairs),
        "epochs": epoch + cursor / max(1, len(order)),
        "tokens_per_sec": tokens / max(training_time, 1e-9),
        "lora_params_M": n_lora / 1e6,
    }
    say("---")
    for key, value in summary.items():
        say(f"{key + ':':<22}{value:d}" if isinstance(value, int) else f"{key + ':':<22}{value:.6f}")
    for key, value in summary.items():
        say(f"METRIC {key}={value:.10g}" if isinstance(value, float) else f"METRIC {key}={value}")


if __name__ == "__main__":
    main()
