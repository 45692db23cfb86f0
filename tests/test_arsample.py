"""The kit's sampler (assets/arsample.py) on tiny real models built in-process.

Two bases, both made here in milliseconds: our GPT (the pretrain target's own train.py, imported as a base's
base_model.py, random weights scaled so its choices are sharp, a short attention window the prompts reach
past, a byte-level tiktoken tokenizer) and a tiny random LlamaForCausalLM (test_arbase's make_hf_base).
CPU only, offline. What they prove: greedy sampling is arbase.generate; the KV-cached path draws exactly the
tokens the full recompute does, with the same first logits, and computes the prompt once then one position
per step; a sample depends on (seed, prompt, draw) only; `finished` is False exactly when a completion is
cut; top_p; the fallback for a model the cache does not fit (said once); the model is restored, even after
an exception; a LoRA-wrapped model; sequence_logprobs against a hand loop, with gradients.

Run: .venv/bin/python -m pytest tests/test_arsample.py -q
"""

from __future__ import annotations

import base64
import copy
import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ASSETS, kit_module, load_by_path
from test_arbase import make_hf_base, write_base_json

QUESTIONS = ["Ava has 3 pens.", "How many?", "Ben has 12 cards and gets 4 more. How many cards now?"]
OUR_MODEL = {"vocab_size": 264, "sequence_len": 128, "n_layer": 2, "n_embd": 64, "head_dim": 32,
             "window_pattern": "SL", "short_window": 24, "rope_base": 10000.0, "softcap": 15.0,
             "ve_gate_channels": 16}  # prompts of 40-90 tokens reach past the 24-key window of layer 0


def _modules():
    cache = _modules.__dict__.setdefault("cache", {})
    if not cache:
        kit = kit_module()
        cache["arbase"] = load_by_path(ASSETS / "arbase.py", "arbase_for_arsample", {"arkit": kit})
        cache["arsample"] = load_by_path(ASSETS / "arsample.py", "arsample_under_test",
                                         {"arkit": kit, "arbase": cache["arbase"]})
    return cache


def arbase():
    return _modules()["arbase"]


def arsample():
    return _modules()["arsample"]


def make_tiny_our_base(directory: Path, seed: int = 0, model_config: dict | None = None) -> Path:
    """A base of kind "ours" laid out as harness/bases.py does, without a pretrain run: the pretrain target's
    train.py as base_model.py, a GPT of OUR_MODEL with random weights (every projection nonzero, so attention
    matters; the unembedding scaled up, so the next-token distributions are peaked), a byte-level tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "base_model.py").write_bytes((ASSETS / "pretrain" / "train.py").read_bytes())
    cfg = {"model": model_config or OUR_MODEL}
    (directory / "config.json").write_text(json.dumps(cfg))
    code = arbase().import_model_code(str(directory / "base_model.py"), cfg, str(directory))
    torch.manual_seed(seed)
    model = code.GPT(code.GPTConfig(**cfg["model"]), code.SDPAAttention())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=(3.0 if name == "lm_head.weight" else 1.0) / math.sqrt(p.size(1)))
        model.x0_lambdas.fill_(0.1)
    torch.save(model.state_dict(), directory / "model.pt")
    tok = directory / "tokenizer"
    tok.mkdir(exist_ok=True)
    (tok / "tokenizer.tiktoken").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    (tok / "tokenizer.json").write_text(json.dumps({"pattern": r"\S+|\s+", "special_tokens": {"<|bos|>": 256}}))
    write_base_json(directory, "ours")
    return directory


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return arbase().base_from_dir(str(make_tiny_our_base(tmp_path_factory.mktemp("ours") / "base")), device="cpu")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    b = arbase().base_from_dir(str(make_hf_base(tmp_path_factory.mktemp("hf") / "base")), device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # sharper than Llama's init (std 0.02 gives near-uniform, context-blind predictions)
        for name, p in b.model.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                p.mul_(10)
        head = b.model.lm_head.weight  # untied: a tied head makes every token predict itself
        b.model.lm_head.weight = nn.Parameter(torch.randn_like(head) * 3 / math.sqrt(head.size(1)), requires_grad=False)
    return b


@pytest.fixture(scope="module", params=["ours", "hf"])
def base(request, ours, hf):
    return ours if request.param == "ours" else hf


def prompts_of(base, questions=QUESTIONS) -> list[list[int]]:
    return [base.prompt_ids(q) for q in questions]


def tokens(samples) -> list[list[tuple[int, ...]]]:
    return [[s.tokens for s in row] for row in samples]


def count_positions(base, model) -> tuple[list[int], object]:
    """A hook recording how many positions each forward computes (the first block's input length)."""
    block = model.blocks[0] if base.kind == "ours" else model.model.layers[0]
    sizes: list[int] = []

    def hook(module, args, kwargs):
        sizes.append((args[0] if args else kwargs["hidden_states"]).size(1))

    return sizes, block.register_forward_pre_hook(hook, with_kwargs=True)


# ---------------------------------------------------------------------------
# Greedy, cache against full recompute, the number of positions computed
# ---------------------------------------------------------------------------


def test_greedy_is_arbase_generate_batched_and_single(base):
    prompts = prompts_of(base)
    want = arbase().generate(base.model, base, prompts, 16)
    got = arsample().sample(base.model, base, prompts, temperature=0, max_new_tokens=16, seed=0)
    assert tokens(got) == [[tuple(w)] for w in want]
    assert len({tuple(w) for w in want}) > 1, "the prompts should not all continue alike"
    for p, w in zip(prompts, want, strict=True):
        assert tokens(arsample().sample(base.model, base, [p], temperature=0, max_new_tokens=16, seed=5)) == [[tuple(w)]]


def test_cached_draws_the_tokens_the_full_recompute_draws(base, capsys):
    prompts = prompts_of(base)
    kw = dict(n=4, temperature=1.0, max_new_tokens=40, seed=11)
    cached = arsample().sample(base.model, base, prompts, **kw)
    full = arsample().sample(base.model, base, prompts, use_cache=False, **kw)
    pairs = [(a, b) for ra, rb in zip(cached, full, strict=True) for a, b in zip(ra, rb, strict=True)]
    # Equal but for a draw whose uniform lands within float rounding (~1e-6) of a CDF boundary: on another
    # CPU's kernels one such near-tie in these 480 draws is possible, so one sample may part (here none does).
    assert sum(a == b for a, b in pairs) >= len(pairs) - 1
    assert "arsample:" not in capsys.readouterr().err  # the cached path was used (no fallback note)
    # and the first step's logits are the full forward's
    m = arsample()
    owner = [0, 0, 1, 2]
    if base.kind == "ours":
        dec = m.OursDecoder(base.model, base, max(map(len, prompts)) + 1)
        with dec.installed():
            first = dec.start(prompts, owner)
    else:
        first = m.HFDecoder(base.model, base).start(prompts, owner)
    want = torch.stack([arbase().logits_of(base.model, torch.tensor([prompts[o]]))[0, -1] for o in owner])
    assert torch.allclose(first, want, atol=1e-4), float((first - want).abs().max())


def test_rows_of_very_different_lengths_reach_past_the_rotary_table(ours):
    """A long and a short prompt in one batch: left-padded to the long one, the short row's frame positions
    run past the model's rotary table (max_len) though its own length never does; the table is extended."""
    long, short = ours.prompt_ids("x " * 50), ours.prompt_ids("How many?")
    assert len(long) + 60 > ours.model.cos.size(0) > len(long) and len(short) + 60 < ours.max_len
    kw = dict(n=3, max_new_tokens=60, seed=5)
    cached = arsample().sample(ours.model, ours, [long, short], **kw)
    full = arsample().sample(ours.model, ours, [long, short], use_cache=False, **kw)
    assert [len(s.tokens) for s in cached[1]] == [60] * 3 and all(len(s.tokens) <= ours.max_len - len(long) for s in cached[0])
    pairs = [(a, b) for ra, rb in zip(cached, full, strict=True) for a, b in zip(ra, rb, strict=True)]
    assert sum(a == b for a, b in pairs) >= len(pairs) - 1  # one near-tie allowed, as above


def test_the_cache_computes_the_prompt_once_then_one_position_per_step(base, monkeypatch):
    m = arsample()
    monkeypatch.setattr(m, "probe_ours", lambda *a: None)  # count the sampling's forwards only
    prompts = prompts_of(base)
    width = max(map(len, prompts))
    for use_cache in (True, False):
        model = copy.deepcopy(base.model)
        sizes, handle = count_positions(base, model)
        try:
            out = m.sample(model, base, prompts, n=2, max_new_tokens=12, seed=3, use_cache=use_cache,
                           temperature=0.5)
        finally:
            handle.remove()
        steps = max(len(s.tokens) for row in out for s in row)
        assert steps == 12
        if use_cache:
            assert sizes == [width] + [1] * (steps - 1)  # prefill of the 3 distinct prompts (2 draws each), then 1
        else:
            assert sizes == [width + t for t in range(steps)]  # the whole window every step: quadratic


# ---------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------


def test_a_sample_depends_on_its_seed_prompt_and_draw_only(base):
    s = arsample().sample
    prompts = prompts_of(base)
    kw = dict(n=4, max_new_tokens=20, temperature=1.0)
    ref = s(base.model, base, prompts, seed=7, **kw)
    assert s(base.model, base, prompts, seed=7, batch_size=3, **kw) == ref  # rows grouped otherwise
    assert s(base.model, base, prompts, seed=7, batch_size=1, **kw) == ref
    assert s(base.model, base, prompts[2:] + prompts[:1], seed=7, **kw)[0] != ref[2]  # prompt 2 as prompt 0: new draws
    alone = s(base.model, base, [prompts[0]], seed=7, **kw)[0]
    assert alone == ref[0]  # the other prompts do not matter
    assert s(base.model, base, prompts + [prompts[0]], seed=7, **kw)[:3] == ref
    draws = [x.tokens for x in ref[0]]
    assert len(set(draws)) == 4  # the draws of one prompt differ from each other
    other = s(base.model, base, prompts, seed=8, **kw)
    assert all(a.tokens != b.tokens for ra, rb in zip(ref, other, strict=True) for a, b in zip(ra, rb, strict=True))


def test_tiny_top_p_is_greedy_and_top_p_narrows_the_choice(base):
    s = arsample().sample
    prompts = prompts_of(base)
    greedy = s(base.model, base, prompts, temperature=0, max_new_tokens=16, seed=0)
    nucleus = s(base.model, base, prompts, n=3, temperature=1.0, top_p=1e-6, max_new_tokens=16, seed=4)
    assert tokens(nucleus) == [[row[0].tokens] * 3 for row in greedy]
    # the nucleus rule on a distribution whose masses are known: 0.5, 0.3, 0.15, 0.05
    choose = arsample().choose
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]])).repeat(1000, 1)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert set(choose(logits, u, 1.0, 0.75).tolist()) == {1, 3}  # 0.5 + 0.3 covers 0.75: token 2 (0.15) is out
    assert set(choose(logits, u, 1.0, 0.8).tolist()) == {1, 3}   # the mass before token 0 is 0.8, not below
    assert set(choose(logits, u, 1.0, 0.81).tolist()) == {0, 1, 3}
    counts = torch.bincount(choose(logits, u, 1.0, 1.0), minlength=4) / 1000
    assert torch.allclose(counts, torch.tensor([0.15, 0.5, 0.05, 0.3]), atol=0.05)


# ---------------------------------------------------------------------------
# Where a completion ends
# ---------------------------------------------------------------------------


class SevenOrEnd(nn.Module):
    """Logits over two tokens only, 7 and the end token, equally likely: completions end at random lengths.
    No blocks: not a model the cache fits, so this also runs the fallback."""

    def __init__(self, vocab: int, end: int):
        super().__init__()
        self.vocab, self.end = vocab, end
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.full((*x.shape, self.vocab), -1e9)
        logits[..., 7] = 0.0
        logits[..., self.end] = 0.0
        return logits


def test_finished_is_false_exactly_when_cut(ours, capsys):
    model = SevenOrEnd(ours.tok.vocab_size, ours.tok.eos_id)
    out = arsample().sample(model, ours, [[1, 2, 3], [4]], n=50, max_new_tokens=4, seed=0)
    flat = [x for row in out for x in row]
    assert all(set(x.tokens) <= {7} for x in flat)
    assert all(x.finished == (len(x.tokens) < 4) for x in flat)  # stopped at the end token, or cut at 4
    assert {len(x.tokens) for x in flat} == {0, 1, 2, 3, 4}
    # the base's max_len cuts too: a prompt of max_len - 2 tokens gets at most 2 new ones
    long = [1] * (ours.max_len - 2)
    cut = [x for x in arsample().sample(model, ours, [long], n=20, max_new_tokens=4, seed=1)[0]]
    assert all(x.finished == (len(x.tokens) < 2) and len(x.tokens) <= 2 for x in cut)
    assert arsample().sample(model, ours, [[1] * ours.max_len], max_new_tokens=4, seed=1) == [[arsample().Sample((), False)]]
    assert arsample().sample(model, ours, [[1]], max_new_tokens=0, seed=1) == [[arsample().Sample((), False)]]
    err = capsys.readouterr().err
    assert err.count("arsample: no KV cache") == 1  # said once for this model, not once per call


# ---------------------------------------------------------------------------
# The fallback, and the model left as it was
# ---------------------------------------------------------------------------


def _rotary_elsewhere(model):
    """A copy whose forward reads rotary tables it keeps under another name (an edit the cache cannot see):
    the cached path would give every step position 0, so the check must refuse it."""
    m = copy.deepcopy(model)
    m.rope = (m.cos.clone(), m.sin.clone())
    gpt_forward = type(m).forward

    def forward(self, idx, targets=None):
        saved = self._buffers["cos"], self._buffers["sin"]
        T = idx.size(1)
        self._buffers["cos"], self._buffers["sin"] = self.rope[0][:T], self.rope[1][:T]
        try:
            return gpt_forward(self, idx, targets)
        finally:
            self._buffers["cos"], self._buffers["sin"] = saved

    m.forward = types.MethodType(forward, m)
    return m


def test_the_check_is_fp32_inside_a_callers_autocast(ours, capsys):
    """grpo's train.py samples inside its bf16 autocast: the cache check still compares fp32 with fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = arsample().sample(ours.model, ours, prompts_of(ours), n=2, max_new_tokens=8, seed=0)
    assert [len(row) for row in out] == [2, 2, 2]
    assert "arsample:" not in capsys.readouterr().err  # the cache was used


def test_a_model_the_cache_does_not_fit_is_sampled_without_it(ours, capsys):
    prompts = prompts_of(ours)
    kw = dict(n=2, max_new_tokens=24, seed=2)
    want = arsample().sample(ours.model, ours, prompts, use_cache=False, **kw)
    assert "arsample:" not in capsys.readouterr().err
    changed = _rotary_elsewhere(ours.model)
    assert arsample().sample(changed, ours, prompts, **kw) == want
    err = capsys.readouterr().err
    assert "no KV cache" in err and "differ from a full forward" in err
    assert arsample().sample(changed, ours, prompts, **kw) == want
    assert capsys.readouterr().err == ""  # once per model
    opaque = copy.deepcopy(ours.model)
    for block in opaque.blocks:  # attention as a submodule, not the plain attribute the cache replaces
        block.attn.attention = ModuleAttention(block.attn.attention)
    assert arsample().sample(opaque, ours, prompts, **kw) == want
    assert "is not a plain attribute" in capsys.readouterr().err


class ModuleAttention(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, q, k, v, window):
        return self.fn(q, k, v, window)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [b.attn.attention for b in model.blocks], model._buffers["cos"], model._buffers["sin"], model.lm_head,
            [(m, m.training) for m in model.modules()])


def _assert_restored(model, snap):
    state, attns, cos, sin, head, flags = snap
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())
    assert [b.attn.attention for b in model.blocks] == attns
    assert model._buffers["cos"] is cos and model._buffers["sin"] is sin and model.lm_head is head
    assert [(m, m.training) for m in model.modules()] == flags


def test_the_model_is_restored_after_sampling_and_after_an_exception(ours):
    model = copy.deepcopy(ours.model)
    model.train()
    model.blocks[1].eval()  # a mix of modes, kept as it was
    snap = _snapshot(model)
    arsample().sample(model, ours, prompts_of(ours), n=2, max_new_tokens=8, seed=0)
    _assert_restored(model, snap)

    calls = []

    def fail_later(module, args):
        calls.append(1)
        if len(calls) == 12:  # after the check (7 forwards) and a few steps of sampling
            raise RuntimeError("boom")

    handle = model.blocks[0].register_forward_pre_hook(fail_later)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            arsample().sample(model, ours, prompts_of(ours), n=2, max_new_tokens=8, seed=0)
    finally:
        handle.remove()
    _assert_restored(model, snap)
    assert arsample().sample(model, ours, prompts_of(ours), n=2, max_new_tokens=8, seed=0) == \
        arsample().sample(ours.model, ours, prompts_of(ours), n=2, max_new_tokens=8, seed=0)


class LoRALinear(nn.Module):
    """As assets/sft/train.py's: base(x) + (alpha / r) x A^T B^T, here with B nonzero so the adapter matters."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, g: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, generator=g) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r, generator=g) * 0.3)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.to(x.dtype).t() @ self.lora_B.to(x.dtype).t()) * self.scale


def lora_wrapped(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    for name in [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]:  # lm_head included
        parent_name, _, attr = name.rpartition(".")
        parent = m.get_submodule(parent_name) if parent_name else m
        setattr(parent, attr, LoRALinear(getattr(parent, attr), 4, 8, g))
    return m


def test_a_lora_wrapped_model_samples_with_the_cache(base, capsys):
    model = lora_wrapped(base.model)
    assert not isinstance(model.lm_head, nn.Linear)
    prompts = prompts_of(base)
    kw = dict(n=2, max_new_tokens=24, seed=9)
    cached = arsample().sample(model, base, prompts, **kw)
    assert cached == arsample().sample(model, base, prompts, use_cache=False, **kw)
    assert "arsample:" not in capsys.readouterr().err
    assert cached != arsample().sample(base.model, base, prompts, **kw)  # the adapter changes what is sampled
    greedy = arsample().sample(model, base, prompts, temperature=0, max_new_tokens=16, seed=0)
    assert tokens(greedy) == [[tuple(w)] for w in arbase().generate(model, base, prompts, 16)]


# ---------------------------------------------------------------------------
# sequence_logprobs
# ---------------------------------------------------------------------------


WEIGHTS = (1.0, 0.5, 2.0)  # not all 1: the weights must multiply the right positions


def test_sequence_logprobs_is_the_sum_of_the_weighted_token_logprobs(base):
    prompts = prompts_of(base)
    rows = [p + [5, 6, 7] for p in prompts]
    T = max(map(len, rows)) - 1
    x = torch.full((len(rows), T), base.tok.pad_id)
    y = torch.zeros((len(rows), T), dtype=torch.long)
    w = torch.zeros((len(rows), T))
    for b, r in enumerate(rows):
        x[b, :len(r) - 1], y[b, :len(r) - 1] = torch.tensor(r[:-1]), torch.tensor(r[1:])
        w[b, len(prompts[b]) - 1:len(r) - 1] = torch.tensor(WEIGHTS)  # the three completion targets
    model = lora_wrapped(base.model)
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[:2])))
    got = arsample().sequence_logprobs(model, x, y, w)
    handle.remove()
    assert seen == [(1, 9)]  # only the 3 x 3 weighted positions were unembedded
    with torch.no_grad():
        for b, r in enumerate(rows):  # one row at a time, unpadded, position by position
            want = 0.0
            for t, weight in zip(range(len(prompts[b]) - 1, len(r) - 1), WEIGHTS, strict=True):
                logits = arbase().logits_of(model, torch.tensor([r[:t + 1]]))[0, -1].double()
                want += weight * float(F.log_softmax(logits, -1)[r[t + 1]])
            assert got[b].item() == pytest.approx(want, abs=1e-4)
    assert got.dtype == torch.float32 and got.shape == (3,)
    got.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        assert torch.allclose(arsample().sequence_logprobs(model, x, y, w), got.detach(), atol=1e-5)


def test_sequence_logprobs_of_a_model_without_an_lm_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    x, y = torch.randint(0, 10, (2, 5)), torch.randint(0, 10, (2, 5))
    w = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
    want = (F.log_softmax(model(x), -1).gather(-1, y[..., None])[..., 0] * w).sum(-1)
    assert torch.allclose(arsample().sequence_logprobs(model, x, y, w), want, atol=1e-6)
