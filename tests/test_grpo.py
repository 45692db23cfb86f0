"""The grpo target: its train.py's pieces on tensors and a tiny in-process model (rewards, group advantages,
token-level aggregation, the k3 KL, the clip), then prepare.py -> train.py -> the fixed evaluation as a user
runs them, as separate processes in a workspace laid out as `autoresearch init --target grpo` lays it out.

CPU only, offline. The pure pieces take well under a second; the end-to-end test shares the pretrain
checkpoint the other post-training tests use (made once per pytest run) and runs a 3 s GRPO budget.

Run: .venv/bin/python -m pytest tests/test_grpo.py -q
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import ASSETS, kit_module, load_by_path, run_py, trained_pretrain
from test_arbase import PRETRAIN_ARGS, install_base, make_our_base

METRIC_LINE = re.compile(r"^METRIC ([A-Za-z_][A-Za-z0-9_]*)=(\S+)$", re.M)
SMALL_DATA = "offline-math:levels=1,train=200,val=8,test=8"
KIT = ("arkit.py", "arbase.py", "armath.py", "arpost.py", "arsample.py")


@pytest.fixture(scope="module")
def train():
    """assets/grpo/train.py loaded by path, its imports (the kit, the grpo prepare.py) answered."""
    kit = kit_module()
    deps = {"arkit": kit}
    for name in ("arbase", "armath"):
        deps[name] = load_by_path(ASSETS / f"{name}.py", f"{name}_grpo_test", deps)
    deps["arsample"] = load_by_path(ASSETS / "arsample.py", "arsample_grpo_test", deps)
    deps["arpost"] = load_by_path(ASSETS / "arpost.py", "arpost_grpo_test", deps)
    deps["prepare"] = load_by_path(ASSETS / "grpo" / "prepare.py", "grpo_prepare_test", deps)
    return load_by_path(ASSETS / "grpo" / "train.py", "grpo_train_test", deps)


class Tiny(nn.Module):
    """Embedding -> Linear -> lm_head: enough of a causal LM for token log-probs and LoRA."""

    def __init__(self, vocab: int = 11, d: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(vocab, d)
        self.mlp = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
            p.requires_grad_(False)

    def forward(self, x):
        return self.lm_head(torch.tanh(self.mlp(self.emb(x))))


def _adapted(train, seed: int = 1):
    model = Tiny()
    adapters = train.inject_lora(model, (r"^mlp$", r"^lm_head$"), 2, 4)
    g = torch.Generator().manual_seed(seed)
    for a in adapters.values():  # B != 0: the policy differs from the reference
        a.lora_B.data = torch.randn(a.lora_B.shape, generator=g) * 0.3
    return model, adapters


# ---------------------------------------------------------------------------
# Reward and advantages
# ---------------------------------------------------------------------------


def test_reward_is_tcs_format_term_plus_the_answer(train):
    """format_coef * (correct_format - 1) + correct_answer: {-0.1, 0, 0.9, 1}, graded as the evaluation grades."""
    assert train.FORMAT_COEF == 0.1
    assert train.reward("2 + 3 = 5\n#### 5", True, "5") == (pytest.approx(1.0), True)
    assert train.reward("2 + 3 = 5\n#### 5", False, "5") == (pytest.approx(0.9), True)  # cut: no stop
    assert train.reward("#### 6", True, "5") == (pytest.approx(0.0), False)
    assert train.reward("I do not know", True, "5") == (pytest.approx(-0.1), False)
    assert train.reward("I do not know", True, "5", format_coef=0.0) == (0.0, False)


def test_advantages_are_centered_per_group_without_std_scaling_by_default(train):
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.9, -0.1], [0.0, 0.0, 0.0, 0.0]])
    a = train.group_advantages(r)
    assert torch.allclose(a, r - r.mean(dim=1, keepdim=True))
    assert torch.allclose(a.sum(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.equal(a[2], torch.zeros(4))  # a zero-variance group: every advantage 0
    assert train.SCALE_BY_STD == 0  # off by default (Dr. GRPO: std scaling is a difficulty bias)
    scaled = train.group_advantages(r, scale_by_std=True)
    for k in (0, 1):  # each mixed group comes out with a (Bessel) std of 1, up to TRL's 1e-4
        assert scaled[k].std(unbiased=True).item() == pytest.approx(1.0, rel=1e-3)
        assert torch.allclose(scaled[k], a[k] / (r[k].std(unbiased=True) + 1e-4))
    assert torch.equal(scaled[2], torch.zeros(4))  # not NaN, not a blow-up


def _rollouts(train):
    prompts = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
    completions = [[6, 7], [8, 9, 10, 6], [7], [6, 6, 6]]
    return train.rollout_batch(prompts, completions, "cpu"), completions


def test_rollout_batch_masks_exactly_the_completion_tokens(train):
    (x, y, mask), completions = _rollouts(train)
    assert mask.sum(dim=1).tolist() == [len(c) for c in completions]
    for b, c in enumerate(completions):
        assert y[b][mask[b] > 0].tolist() == c


def test_completion_head_gives_the_full_forwards_logprobs(train):
    """token_logprobs through CompletionHead (only the completion positions unembedded) equals the full
    forward's at those positions, gradients included."""
    model, adapters = _adapted(train)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    (x, y, mask), _ = _rollouts(train)
    full = train.token_logprobs(model, x, y) * mask
    g_full = torch.autograd.grad(full.sum(), params)
    model.lm_head = train.CompletionHead(model.lm_head)
    picked = train.token_logprobs(model, x, y, mask)
    g_picked = torch.autograd.grad(picked.sum(), params)
    assert torch.allclose(picked, full, atol=1e-6) and picked[mask == 0].abs().max() == 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_full, g_picked, strict=True))
    assert model.lm_head.keep is None  # reset: sampling sees the whole head


def test_zero_variance_groups_give_zero_gradient(train):
    """Through the real model and loss: the rows of a group whose rewards are all equal move no parameter;
    a mixed group's rows do."""
    model, adapters = _adapted(train)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    (x, y, mask), _ = _rollouts(train)
    adv = train.group_advantages(torch.tensor([[1.0, 0.0], [0.9, 0.9]])).flatten()  # group 2: constant
    logp = train.token_logprobs(model, x, y)
    mixed = torch.autograd.grad(train.policy_loss(logp[:2], logp[:2].detach(), adv[:2], mask[:2]), params,
                                retain_graph=True)
    constant = torch.autograd.grad(train.policy_loss(logp[2:], logp[2:].detach(), adv[2:], mask[2:]), params,
                                   retain_graph=True)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in constant)
    assert max(float(g.abs().max()) for g in mixed) > 0


def test_token_level_aggregation_by_hand(train):
    """The loss is sum over completion tokens / completion tokens of the whole batch (DAPO): d loss / d logp
    at a completion token of row b is -A_b / N, not -A_b / (len_b * B) as a per-sequence mean would give."""
    (x, y, mask), completions = _rollouts(train)
    logp = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    adv = torch.tensor([0.5, -0.5, 0.05, -0.05])
    loss = train.policy_loss(logp, logp.detach(), adv, mask)
    n = sum(len(c) for c in completions)
    assert loss.item() == pytest.approx(-float((adv[:, None] * mask).sum()) / n, abs=1e-6)  # ratio 1
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, -adv[:, None] * mask / n, atol=1e-7)
    # a denominator given: the rows left out of the forward (zero advantage) still count their tokens
    loss_n = train.policy_loss(logp, logp.detach(), adv, mask, n_tokens=2.0 * n)
    assert loss_n.item() == pytest.approx(loss.item() / 2, abs=1e-6)


def test_the_clip_stops_the_gradient_beyond_the_trust_region(train):
    """With an older policy (INNER_STEPS > 1): a positive-advantage token whose ratio is already above
    1 + eps gets no gradient; one inside the region does."""
    logp_old = torch.zeros(1, 2)
    logp = torch.tensor([[0.5, 0.05]], requires_grad=True)  # ratios e^0.5 = 1.65 (clipped), e^0.05 = 1.05
    loss = train.policy_loss(logp, logp_old, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0].item() == 0.0 and grad[0, 1].item() < 0


def test_k3_kl_is_nonnegative_and_zero_at_the_reference(train):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    assert float(train.k3_kl(a, b).min()) >= 0.0
    assert torch.equal(train.k3_kl(a, a), torch.zeros(1000))
    # the reference is the same model with the adapters off: at B = 0 (LoRA's init) the KL is exactly 0
    model, adapters = _adapted(train)
    (x, y, _), _ = _rollouts(train)
    with torch.no_grad():
        policy = train.token_logprobs(model, x, y)
        with train.adapters_off(adapters):
            ref = train.token_logprobs(model, x, y)
    assert float(train.k3_kl(policy, ref).min()) >= 0 and float(train.k3_kl(policy, ref).max()) > 0
    for a_ in adapters.values():
        a_.lora_B.data.zero_()
    with torch.no_grad():
        assert torch.equal(train.k3_kl(train.token_logprobs(model, x, y), ref), torch.zeros_like(ref))
    assert all(a_.enabled for a_ in adapters.values())  # adapters_off restores them


# ---------------------------------------------------------------------------
# prepare -> train -> evaluate, as processes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    t = trained_pretrain(tmp_path_factory.mktemp("grpo"), PRETRAIN_ARGS)
    t.env = {**t.env, "OMP_NUM_THREADS": "1"}
    return t


def grpo_workspace(t, ws: Path) -> Path:
    """The grpo workspace by hand, as init writes it: the target's and the kit's files, base.json and
    base_model.py for a base of ours installed in the cache."""
    base_dir = make_our_base(t.root / "base", t.ckpt, t.data_dir / "tokenizer")
    info = install_base(base_dir, t.root / "cache")
    ws.mkdir(parents=True)
    for name in ("prepare.py", "train.py"):
        shutil.copy(ASSETS / "grpo" / name, ws / name)
    for name in KIT:
        shutil.copy(ASSETS / name, ws / name)
    shutil.copy(base_dir / "base_model.py", ws / "base_model.py")
    (ws / "base.json").write_text(json.dumps(info))
    return ws


def metrics_of(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in METRIC_LINE.findall(text)}


@pytest.fixture(scope="module")
def prepared_ws(pretrained, tmp_path_factory):
    """A grpo workspace whose prepare.py has run (once for the module), and that run's output."""
    ws = grpo_workspace(pretrained, tmp_path_factory.mktemp("grpo-ws") / "ws")
    prepared = run_py(ws, pretrained.env, "prepare.py", "--data", SMALL_DATA)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    return ws


def test_prepare_train_evaluate(pretrained, prepared_ws, tmp_path):
    """prepare.py (arpost: data, base scores, the status line); train.py samples groups, updates and saves a
    PEFT adapter, its diagnostics in METRIC lines; the evaluation reports val_accuracy through the channel
    only, and needs no train.py."""
    ws, env = prepared_ws, pretrained.env
    fp16 = json.loads((ws / "base.json").read_text())["fingerprint"][:16]
    status = json.loads((pretrained.root / "cache" / "posttrain" / fp16 / "status-grpo.json").read_text())
    assert status["lines"][0].startswith(f"{SMALL_DATA}, 200 train rows, base accuracy"), status
    ckpt = tmp_path / "ckpt"
    run_env = {**env, "AUTORESEARCH_TIME_BUDGET": "3", "AUTORESEARCH_CHECKPOINT": str(ckpt)}
    trained = run_py(ws, run_env, "train.py")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert {p.name for p in ckpt.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    m = metrics_of(trained.stdout)
    assert set(m) >= {"reward", "train_accuracy", "frac_zero_variance", "clipped_ratio", "entropy", "num_steps",
                      "samples"}, sorted(m)
    assert "kl" not in m  # KL_COEF is 0 by default
    assert m["num_steps"] >= 1 and m["samples"] == m["num_steps"] * 8 * 8
    assert 0 <= m["frac_zero_variance"] <= 1 and 0 <= m["clipped_ratio"] <= 1 and m["entropy"] > 0
    assert re.search(r"^step 00000 .*\| reward .*\| acc .*\| zero_var .*\| clipped .*\| entropy ", trained.stdout, re.M)
    assert json.loads((ckpt / "adapter_config.json").read_text())["r"] == 1  # rank 1 by default
    channel = tmp_path / "result.jsonl"
    evaluated = run_py(ws, {**env, "AUTORESEARCH_RESULT_FILE": str(channel)}, "prepare.py", "--evaluate", str(ckpt))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    e = metrics_of(evaluated.stdout)
    assert set(e) >= {"val_accuracy", "base_accuracy", "val_nll", "format_rate", "mean_completion_len"}
    assert [json.loads(line) for line in channel.read_text().splitlines()] == [
        {"name": "val_accuracy", "value": e["val_accuracy"]}]
    (ws / "train.py").rename(ws / "train.py.away")  # the evaluation reads the adapter as data, never train.py
    try:
        again = run_py(ws, env, "prepare.py", "--evaluate", str(ckpt))
    finally:
        (ws / "train.py.away").rename(ws / "train.py")
    assert again.returncode == 0 and metrics_of(again.stdout) == e, again.stderr


def test_kl_term_on_reports_kl(pretrained, prepared_ws, tmp_path):
    """KL_COEF > 0: the k3 KL to the base (adapters off) is in the loss and in the METRIC lines, >= 0."""
    source = (ASSETS / "grpo" / "train.py").read_text()
    edited = re.sub(r"^KL_COEF = 0\.0", "KL_COEF = 0.05", source, count=1, flags=re.M)
    assert edited != source
    (prepared_ws / "train_kl.py").write_text(edited)
    trained = run_py(prepared_ws, {**pretrained.env, "AUTORESEARCH_TIME_BUDGET": "1",
                                   "AUTORESEARCH_CHECKPOINT": str(tmp_path / "ckpt")}, "train_kl.py")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    m = metrics_of(trained.stdout)
    assert "kl" in m and m["kl"] >= 0
