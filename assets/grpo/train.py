"""
autoresearch grpo target: GRPO with LoRA on math word problems, for a fixed time budget. The policy samples a
group of completions per training prompt, the verifiable grader rewards them, and each completion's tokens
are pushed up or down by its reward relative to its group's mean. The fixed evaluation then scores the saved
adapter (val_accuracy, greedy, higher is better) in a process of its own.

This is the file the research agent edits. It reads top to bottom: hyperparameters, the LoRA layer, the
reward, the advantages, the loss, then the run (load the base, inject adapters, sample, grade, update, save
the adapter in PEFT's format, summary). prepare.py and the kit modules (arpost.py, arsample.py, arbase.py,
armath.py) are fixed: they own the base, the data, the time budget and the evaluation, which never imports
this file.

    python prepare.py --data offline-math:levels=1-2   # once
    python train.py                                    # trains, then writes the adapter to $AUTORESEARCH_CHECKPOINT
    python prepare.py --evaluate                       # val_accuracy (the harness runs it, sandboxed)

The reward below is this file's and may be changed: the metric never uses it (the evaluation grades greedy
answers to held-out questions by exact match), so a reward that is easier to earn than a right answer gains
nothing there.

The method (reference/posttrain.md §1.6, with its sources):
  reward     TC's math envs: FORMAT_COEF * (correct_format - 1) + correct_answer, in {-0.1, 0, 0.9, 1}
  advantage  A_i = r_i - mean(r of its group), broadcast to the completion's tokens; no std scaling by default
  loss       per token -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) (+ KL_COEF * k3 KL to the reference),
             summed over the batch's completion tokens and divided by their number (token-level, DAPO/TRL's
             "dapo" loss_type); one update per batch by default, so ratio = 1 (DeepSeekMath's single update
             per exploration stage) and the clip never acts
  LoRA       rank 1 (LoRA Without Regret: RL carries ~1 bit per episode, and rank 1 matches full fine-tuning)
"""

import math
import os
import re
import sys
import time
from contextlib import contextmanager

import arbase
import armath
import arsample
import torch
import torch.nn as nn
from prepare import CHECKPOINT_DIR, SEED, TIME_BUDGET, load_prepared

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no command-line flags)
# ---------------------------------------------------------------------------

# tunable: begin (the offline `mutate` agent proposes changes only to the numbers from here to `tunable: end`)
LORA_RANK = 1              # r: RL needs little capacity (posttrain.md §1.2: rank 1 matches full FT for RL)
LORA_ALPHA = 32            # the scale is LORA_ALPHA / LORA_RANK (LoRA Without Regret's GRPO runs: r=1, alpha=32)
LORA_TARGETS = (           # module-name patterns (re.search) of the nn.Linear layers to adapt
    r"attn\.(c_q|c_k|c_v|c_proj|q_proj|k_proj|v_proj|o_proj)$",  # attention (ours; Llama/Qwen-style)
    r"mlp\.(c_fc|c_proj|gate_proj|up_proj|down_proj)$",          # MLP: all linear layers, as LWR's runs
    r"^lm_head$",          # the unembedding, as the sft target adapts it
)
LR = 5e-4                  # AdamW LR, constant (decay can stall RL reward: posttrain.md §6.18); on CPU 5e-3 collapsed
GROUP_SIZE = 8             # G completions per prompt (TRL's num_generations default; TC's tutorials 2-16)
PROMPTS_PER_STEP = 8       # groups per update
TEMPERATURE = 1.0          # sampling temperature (TC and TRL: 1.0; the KL estimate assumes it)
TOP_P = 1.0                # nucleus sampling (1.0: off)
MAX_COMPLETION_TOKENS = 48 # per completion (TRL: max_completion_length); longer ones are cut: clipped_ratio
FORMAT_COEF = 0.1          # TC's format term: a completion without an extractable answer or stop loses this
SCALE_BY_STD = 0           # 1: divide advantages by the group's std (DeepSeekMath, TRL); 0: mean-centering only
KL_COEF = 0.0              # weight of the k3 KL to the base (adapters off) in the loss (TRL's beta: 0.0 since v0.19)
INNER_STEPS = 1            # updates per sampled batch; >1 makes ratio != 1 and the clip act (PPO-style)
CLIP_EPS = 0.2             # PPO/TRL clip range (used only when INNER_STEPS > 1)
WEIGHT_DECAY = 0.0         # AdamW decoupled weight decay on the adapter
# tunable: end

ADAM_BETAS = (0.9, 0.95)   # tinker-cookbook's RL Adam (rl/train.py: AdamParams(lr, 0.9, 0.95, 1e-8))
ADAM_EPS = 1e-8
SAMPLE_BATCH = 64          # rows per sampling forward (the samples do not depend on it)
LOG_EVERY_S = 5.0          # progress line period


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * x A^T B^T, the base frozen; A (r, d_in), B (d_out, r), PEFT's init. `enabled`
    False gives the base's output: the frozen reference for the KL term is the base with adapters off."""

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
    """The reference policy: the same model with every adapter disabled (TRL disables adapters likewise)."""
    for a in adapters.values():
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters.values():
            a.enabled = True


# ---------------------------------------------------------------------------
# Reward, advantages, loss (pure functions of tensors and numbers)
# ---------------------------------------------------------------------------


def reward(text: str, finished: bool, gold: str, format_coef: float = FORMAT_COEF) -> tuple[float, bool]:
    """TC's ProblemEnv reward: format_coef * (correct_format - 1) + correct_answer, where the format is right
    when the completion stopped by itself and an answer can be extracted (armath's `#### N`), and the answer
    is right when it matches the gold (armath's convention, the evaluation's). Returns (reward, correct)."""
    answer = armath.extract_answer(text)
    correct = answer is not None and armath.answers_match(answer, gold)
    well_formed = finished and answer is not None
    return format_coef * (float(well_formed) - 1.0) + float(correct), correct


def group_advantages(rewards_P_G: torch.Tensor, scale_by_std: bool = False) -> torch.Tensor:
    """A = r - mean(r over the group), per row of (prompts, G). Std scaling is off by default: dividing by the
    group's std up-weights the prompts that are nearly always or nearly never solved (a difficulty bias) and
    blows up for near-constant groups (Dr. GRPO, arXiv 2503.20783; tinker-cookbook issue #579, whose
    maintainers center only). With it on: TRL's Bessel-corrected std + 1e-4. A group whose rewards are all
    equal gets A = 0 on every completion, so it contributes no gradient (posttrain.md §6.7)."""
    centered = rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered
    return centered / (rewards_P_G.std(dim=1, keepdim=True, unbiased=True).nan_to_num(0.0) + 1e-4)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) (Schulman 2020; DeepSeekMath, TRL): exp(ref - logp) -
    (ref - logp) - 1, >= 0, and 0 where the two agree."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1.0


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = CLIP_EPS, kl: torch.Tensor | None = None, kl_coef: float = 0.0,
                n_tokens: float | None = None) -> torch.Tensor:
    """The clipped surrogate per token (ratio = exp(logp - logp_old); with logp_old = logp.detach() it is 1 and
    the gradient is -A * grad logp), plus kl_coef * KL, summed over the completion tokens (mask 1) and divided
    by the number of completion tokens in the batch (n_tokens, default mask.sum()): token-level aggregation,
    TRL's "dapo" loss_type, so a long completion weighs by its tokens, not as one sequence (the per-sequence
    mean favours short right answers and long wrong ones: posttrain.md §6.10). adv is (B,) or (B, T)."""
    a = adv[:, None] if adv.dim() == 1 else adv
    ratio = torch.exp(logp - logp_old)
    per_token = -torch.minimum(ratio * a, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a)
    if kl is not None and kl_coef:
        per_token = per_token + kl_coef * kl
    denom = float(mask.sum()) if n_tokens is None else n_tokens
    return (per_token * mask).sum() / max(denom, 1.0)


class CompletionHead(nn.Module):
    """Stands in for the model's lm_head while training (as in the sft target): unembeds only the positions
    whose target is a completion token, as one (1, N, d) row. The vocabulary's unembedding is most of a small
    base's cost and half a row is prompt; what follows lm_head in the model is elementwise, so those logits
    equal the full forward's there."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head
        self.keep: torch.Tensor | None = None  # bool (B, T): the positions to unembed

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h if self.keep is None else h[self.keep][None])


def token_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None):
    """(B, T) log softmax(logits)[y] in fp32 (a low-precision log-softmax gives wrong ratios and KL). With a
    CompletionHead and a mask, only the mask's positions are computed (0 elsewhere)."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, CompletionHead) and mask is not None:
        keep = mask > 0
        head.keep = keep
        try:
            logits = arbase.logits_of(model, x).float()[0]  # (N, vocab): the kept positions only
        finally:
            head.keep = None
        picked = logits.gather(-1, y[keep].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return torch.zeros(y.shape, dtype=picked.dtype, device=y.device).masked_scatter(keep, picked)
    logits = arbase.logits_of(model, x).float()
    return logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def rollout_batch(prompts: list[list[int]], completions: list[list[int]], device):
    """(x, y, mask) for prompt + completion rows, right-padded: mask 1 where y is a completion token."""
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    y = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1, dtype=torch.float32)
    for k, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        t = torch.tensor(s, dtype=torch.long)
        x[k, :len(s) - 1], y[k, :len(s) - 1] = t[:-1], t[1:]
        mask[k, len(p) - 1:len(s) - 1] = 1.0
    return x.to(device), y.to(device), mask.to(device)


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
        model.lm_head = CompletionHead(model.lm_head)  # sampling calls it with keep None: the whole head
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY)
    train = prepared.rows("train")  # prompts and golds of the train split; the completions are the policy's
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_lora = sum(p.numel() for p in params)
    say(f"base: {base.info.get('name')} ({base.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)")
    say(f"data: {prepared.data} (fingerprint {prepared.fingerprint}): {len(train):,} train prompts")
    say(f"lora: rank {LORA_RANK}, alpha {LORA_ALPHA}, {len(adapters)} layers, {n_lora:,} params")
    say(f"budget: {TIME_BUDGET:.0f}s, {PROMPTS_PER_STEP} prompts x {GROUP_SIZE} samples per step, LR {LR:g}, "
        f"T {TEMPERATURE:g}, KL {KL_COEF:g}, seed {SEED}")
    say(f"startup: {time.time() - t_start:.1f}s")

    g = torch.Generator().manual_seed(SEED)
    order, cursor, epoch = torch.randperm(len(train), generator=g).tolist(), 0, 0
    step, skipped, training_time, last_log = 0, 0, 0.0, 0.0
    totals = {"reward": 0.0, "correct": 0.0, "zero_var": 0.0, "clipped": 0.0, "entropy": 0.0, "kl": 0.0}
    n_samples = n_groups = n_tokens_all = 0
    while training_time < TIME_BUDGET:
        t0 = time.time()
        if cursor + PROMPTS_PER_STEP > len(order):
            order, cursor, epoch = torch.randperm(len(train), generator=g).tolist(), 0, epoch + 1
        picked = order[cursor:cursor + PROMPTS_PER_STEP]
        cursor += PROMPTS_PER_STEP
        prompts = [train.prompt(i) for i in picked]
        # 1. Sample G completions per prompt from the current policy (seeded per step: reproducible).
        model.eval()
        with torch.no_grad(), autocast:
            groups = arsample.sample(model, base, prompts, n=GROUP_SIZE, temperature=TEMPERATURE, top_p=TOP_P,
                                     max_new_tokens=MAX_COMPLETION_TOKENS, seed=SEED * 1_000_003 + step,
                                     batch_size=SAMPLE_BATCH)
        # 2. Grade them; advantages relative to the group.
        graded = [[reward(base.tok.decode(list(s.tokens)), s.finished, train.golds[i]) for s in group]
                  for i, group in zip(picked, groups, strict=True)]
        rewards = torch.tensor([[r for r, _ in row] for row in graded], dtype=torch.float32)
        adv = group_advantages(rewards, bool(SCALE_BY_STD))  # (P, G)
        zero_var = (rewards.max(dim=1).values == rewards.min(dim=1).values)
        # The rows: the completion's tokens, and its end token when it stopped (stopping is an action too).
        rows_p, rows_c, rows_a = [], [], []
        for i, group in enumerate(groups):
            for j, s in enumerate(group):
                rows_p.append(prompts[i])
                rows_c.append(list(s.tokens) + ([base.tok.eos_id] if s.finished else []))
                rows_a.append(float(adv[i, j]))
        n_tok = sum(len(c) for c in rows_c)  # the token-level loss's denominator: every completion token
        # Rows with A = 0 (zero-variance groups) add nothing to the surrogate's gradient: leave them out of the
        # forward (the denominator still counts their tokens, so the loss is unchanged) unless the KL term needs them.
        live = [k for k in range(len(rows_c)) if rows_c[k] and (rows_a[k] != 0.0 or KL_COEF)]
        # 3. Update: INNER_STEPS passes over the batch (1: on-policy, ratio 1).
        model.train()
        loss_f, ent, kl_mean = 0.0, float("nan"), 0.0
        if live:
            x, y, mask = rollout_batch([rows_p[k] for k in live], [rows_c[k] for k in live], device)
            a = torch.tensor([rows_a[k] for k in live], device=device)
            with torch.no_grad(), autocast:
                # the sampling policy's log-probs: a forward of their own only when there are several updates
                # (with one, they are the update's own, detached: ratio 1)
                logp_old = token_logprobs(model, x, y, mask) if INNER_STEPS > 1 else None
                ref = None
                if KL_COEF:
                    with adapters_off(adapters):
                        ref = token_logprobs(model, x, y, mask)
            for inner in range(INNER_STEPS):
                with autocast:
                    logp = token_logprobs(model, x, y, mask)
                    old = logp.detach() if logp_old is None else logp_old
                    if inner == 0:
                        ent = float(-(old * mask).sum() / mask.sum().clamp_min(1.0))
                    kl = k3_kl(logp, ref) if ref is not None else None
                    loss = policy_loss(logp, old, a, mask, CLIP_EPS, kl, KL_COEF, float(n_tok))
                if not torch.isfinite(loss):  # a non-finite loss skips the step (posttrain.md §6.1)
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    break
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_f = loss.item()
                if kl is not None:
                    kl_mean = float((kl.detach() * mask).sum() / mask.sum().clamp_min(1.0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.time() - t0
        training_time += dt
        correct = sum(c for row in graded for _, c in row)
        clipped = sum(not s.finished for group in groups for s in group)
        n = len(rows_c)
        totals["reward"] += float(rewards.sum())
        totals["correct"] += correct
        totals["clipped"] += clipped
        totals["zero_var"] += float(zero_var.sum())
        if math.isfinite(ent):
            totals["entropy"] += ent * n_tok
        totals["kl"] += kl_mean * n_tok
        n_samples, n_groups, n_tokens_all = n_samples + n, n_groups + len(groups), n_tokens_all + n_tok
        if time.time() - last_log >= LOG_EVERY_S or step < 3:
            last_log = time.time()
            kl_part = f" | kl {kl_mean:.4f}" if KL_COEF else ""
            say(f"step {step:05d} ({100 * min(training_time / TIME_BUDGET, 1.0):5.1f}%) | reward "
                f"{float(rewards.mean()):.3f} | acc {correct / n:.3f} | zero_var {float(zero_var.float().mean()):.2f} "
                f"| clipped {clipped / n:.2f} | entropy {ent:.3f}{kl_part} | loss {loss_f:+.4f} | dt {1000 * dt:.0f}ms "
                f"| left {max(0.0, TIME_BUDGET - training_time):.0f}s")
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
        "num_steps": step,
        "skipped_steps": skipped,
        "samples": n_samples,
        "samples_per_sec": n_samples / max(training_time, 1e-9),
        "reward": totals["reward"] / max(n_samples, 1),
        "train_accuracy": totals["correct"] / max(n_samples, 1),
        "frac_zero_variance": totals["zero_var"] / max(n_groups, 1),
        "clipped_ratio": totals["clipped"] / max(n_samples, 1),
        "entropy": totals["entropy"] / max(n_tokens_all, 1),
        "mean_completion_tokens": n_tokens_all / max(n_samples, 1),
        "epochs": epoch + cursor / max(1, len(order)),
        "lora_params_M": n_lora / 1e6,
    }
    if KL_COEF:
        summary["kl"] = totals["kl"] / max(n_tokens_all, 1)
    say("---")
    for key, value in summary.items():
        say(f"{key + ':':<24}{value:d}" if isinstance(value, int) else f"{key + ':':<24}{value:.4f}")
    for key, value in summary.items():
        say(f"METRIC {key}={value:.10g}" if isinstance(value, float) else f"METRIC {key}={value}")


if __name__ == "__main__":
    main()
