"""Reference tests for the pretrain target's math: optimizer, model, tokenizer, dataloader and val_bpb.

Run: .venv/bin/python -m pytest tests/test_pretrain_reference.py -q   (CPU only, no network, ~10 s)

They load assets/pretrain/prepare.py and train.py by path (tests/conftest.py; never `import prepare`, a
name every target has) and build a tiny dataset in a temporary directory, so they need no prepared cache.
"""

import contextlib
import dataclasses
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
from conftest import ASSETS, pretrain_prepare, pretrain_train

prepare = pretrain_prepare()
train = pretrain_train()

# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------


def _quadratic_steps(param, optimizer, target, steps, lr_schedule=None):
    weights = torch.arange(1.0, param.numel() + 1).view_as(param)
    for i in range(steps):
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule(i)
        loss = (weights * (param - target) ** 2).sum()
        param.grad = None
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("tensor_hyperparameters", [False, True])
def test_adamw_half_matches_torch_adamw(tensor_hyperparameters):
    """Our AdamW (used for embeddings, lm_head, scalars) is torch.optim.AdamW, schedules included. The
    tensor variant passes hyperparameters as 0-d tensors, as the compiled CUDA path does."""
    torch.manual_seed(0)
    start, target = torch.randn(6, 5), torch.randn(6, 5)
    ours, ref = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    hyper = dict(lr=0.02, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)
    opt = train.MuonAdamW([dict(kind="adamw", params=[ours], **hyper)])
    opt.compiled = tensor_hyperparameters  # only switches how hyperparameters are passed; nothing is compiled
    ref_opt = torch.optim.AdamW([ref], **hyper)
    schedule = lambda i: 0.02 * (1 - i / 40)  # noqa: E731
    _quadratic_steps(ours, opt, target, 30, schedule)
    _quadratic_steps(ref, ref_opt, target, 30, schedule)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (128, 512)])
def test_polar_express_orthogonalizes(shape):
    torch.manual_seed(1)
    G = torch.randn(3, *shape)
    s = torch.linalg.svdvals(train.polar_express(G))
    assert s.min() > 0.8 and s.max() < 1.2, (s.min(), s.max())
    # Ill-conditioned input (singular values from 1e-3 to 1): every direction is still pushed up a lot.
    U, _, Vh = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    G = U @ torch.diag(torch.logspace(-3, 0, min(shape))) @ Vh
    s = torch.linalg.svdvals(train.polar_express(G))
    assert s.min() > 0.25 and s.max() < 1.2, (s.min(), s.max())
    # POLAR_EXPRESS_STEPS beyond the five tabulated iterations still changes (and improves) the result
    s7 = torch.linalg.svdvals(train.polar_express(G, steps=7))
    assert s7.min() > s.min() and s7.max() < 1.2 and not torch.equal(s7, s), (s7.min(), s7.max())


def _muon_group(param, weight_decay=0.0, momentum=0.0):
    return dict(kind="muon", params=[param], lr=0.01, momentum=momentum, beta2=0.95, weight_decay=weight_decay, ns_steps=5)


def test_muon_update_is_near_orthogonal():
    """The first Muon step on a wide matrix is lr times a near-orthogonal matrix (NorMuon leaves the
    already equal row norms of an orthogonal matrix alone)."""
    torch.manual_seed(2)
    p = nn.Parameter(torch.randn(48, 160))
    before = p.detach().clone()
    opt = train.MuonAdamW([_muon_group(p)])
    p.grad = torch.randn(48, 160)
    opt.step()
    update = (before - p.detach()) / 0.01
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.8 and s.max() < 1.2, (s.min(), s.max())
    # and it is the polar factor of the gradient's direction, not some other orthogonal matrix
    U, _, Vh = torch.linalg.svd(p.grad)
    cos = (update * (U[:, :48] @ Vh[:48])).sum() / (update.norm() * math.sqrt(48))
    assert cos > 0.97


def test_normuon_equalizes_rows_and_keeps_the_norm():
    torch.manual_seed(3)
    ortho = torch.randn(2, 20, 8) * torch.linspace(0.1, 3, 20).view(1, 20, 1)  # rows of very different size
    second = torch.zeros(2, 20, 1)
    scaled = train.normuon_scale(ortho, second, 0.95)
    torch.testing.assert_close(scaled.norm(dim=(-2, -1)), ortho.norm(dim=(-2, -1)))
    row_rms = scaled.square().mean(-1).sqrt()
    assert (row_rms.max(-1).values / row_rms.min(-1).values < 1.01).all()  # first step: exactly the running RMS


def test_cautious_weight_decay_only_where_update_agrees_with_weight():
    torch.manual_seed(4)
    start, grad = torch.randn(16, 24), torch.randn(16, 24)
    results = {}
    for wd in (0.0, 0.5):
        p = nn.Parameter(start.clone())
        opt = train.MuonAdamW([_muon_group(p, weight_decay=wd)])
        p.grad = grad.clone()
        opt.step()
        results[wd] = p.detach()
    update = start - results[0.0]  # lr * update, no decay
    decay = results[0.0] - results[0.5]  # lr * wd * p where cautious, else 0
    agree = update * start >= 0
    assert agree.any() and (~agree).any()
    torch.testing.assert_close(decay[~agree], torch.zeros_like(decay[~agree]))
    torch.testing.assert_close(decay[agree], (0.01 * 0.5 * start)[agree])


def test_lr_schedule_and_momentum_warmup():
    assert train.lr_multiplier(0.0) == 1.0
    assert train.lr_multiplier(1.0 - train.WARMDOWN_RATIO / 2) == pytest.approx(0.5 + 0.5 * train.FINAL_LR_FRAC)
    assert train.lr_multiplier(1.0) == pytest.approx(train.FINAL_LR_FRAC)
    start, end, steps = train.MUON_MOMENTUM
    assert train.muon_momentum(0) == start and train.muon_momentum(10 * steps) == end


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def _tiny_config(**overrides):
    base = dict(vocab_size=97, sequence_len=32, n_layer=3, n_embd=64, head_dim=32, short_window=8)
    return train.GPTConfig(**{**base, **overrides})


def _tiny_model(**overrides):
    config = _tiny_config(**overrides)
    attention = train.SDPAAttention()
    model = train.GPT(config, attention)
    model.init_weights()
    return model


def test_window_pattern_ends_with_full_context():
    config = _tiny_config(n_layer=6, window_pattern="SSSL")
    assert config.windows() == [8, 8, 8, 32, 8, 32]
    assert [config.has_value_embedding(i) for i in range(6)] == [False, True, False, True, False, True]


@pytest.mark.parametrize("window", [1, 5, 16, 32])
def test_attention_backends_match_reference(window):
    """SDPA (mask) and FlexAttention (block mask; eager here) both equal a plain softmax over j in (i-w, i]."""
    torch.manual_seed(5)
    B, T, H, D = 2, 32, 2, 8
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~train.sliding_window_mask(T, window, "cpu"), float("-inf"))
    expected = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    torch.testing.assert_close(train.SDPAAttention()(q, k, v, window), expected, rtol=1e-5, atol=1e-5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
        torch.testing.assert_close(train.FlexAttention()(q, k, v, window), expected, rtol=1e-5, atol=1e-5)


def test_gpt_forward_shapes_softcap_and_initial_loss():
    torch.manual_seed(6)
    model = _tiny_model()
    idx = torch.randint(0, 97, (2, 32))
    logits = model(idx)
    assert logits.shape == (2, 32, 97) and logits.dtype == torch.float32
    assert logits.abs().max() <= model.config.softcap
    loss = model(idx, idx)
    assert abs(loss.item() - math.log(97)) < 0.05  # lm_head starts tiny: uniform predictions
    assert model.flops_per_token() > 6 * 3 * 12 * 64 * 64


def test_gpt_learns_a_batch_and_every_parameter_trains():
    torch.manual_seed(7)
    model = _tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = train.build_optimizer(model, compile_steps=False)
    idx = torch.randint(0, 97, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    losses = []
    for _ in range(25):
        loss = model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged


def _trained_after_warm_up(untimed: int, real_steps: int = 3) -> list[torch.Tensor]:
    """The weights of a tiny model after train.warm_up(untimed steps) and then real_steps optimizer steps,
    each on its own batch, as main() runs them."""
    torch.manual_seed(10)
    model = _tiny_model()
    opt = train.build_optimizer(model, compile_steps=False)
    batches = torch.randint(0, 97, (real_steps + 1, 4, 33))
    initial = [p.detach().clone() for p in model.parameters()]
    train.warm_up(model, model, opt, batches[0, :, :-1], batches[0, :, 1:], untimed, contextlib.nullcontext())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True)), "warm-up left updates"
    assert not opt.state and all(p.grad is None for p in model.parameters())
    for idx in batches[1:]:
        model(idx[:, :-1], idx[:, 1:]).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_untimed_steps_train_nothing_off_the_clock():
    """Raising UNTIMED_STEPS (warm-up steps the budget does not count) must not buy training: what the run
    learns is bit for bit the same after 1 or 12 warm-up steps, and the same as with none at all."""
    one, many, none = _trained_after_warm_up(1), _trained_after_warm_up(12), _trained_after_warm_up(0)
    for a, b, c in zip(one, many, none, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not all(torch.equal(a, b) for a, b in zip(one, _trained_after_warm_up(1, real_steps=4), strict=True))


def test_plumbing_constants_sit_outside_the_tunable_block():
    """UNTIMED_STEPS and the other plumbing constants are outside the block the offline agent tunes."""
    source = (ASSETS / "pretrain" / "train.py").read_text(encoding="utf-8")
    block = source[source.index("# tunable: begin"):source.index("# tunable: end")]
    for name in ("UNTIMED_STEPS", "EVAL_BATCH_SIZE", "LOG_EVERY_S", "COMPILE", "ATTENTION"):
        assert f"\n{name} = " in source and f"\n{name} = " not in block, name


SIZE_CONSTANTS = {"DEPTH": "depth", "ASPECT_RATIO": "aspect", "HEAD_DIM": "head_dim",
                  "DEVICE_BATCH_SIZE": "device_batch", "TOTAL_BATCH_SIZE": "total_batch"}


def test_model_size_on_another_machine_follows_every_edit(monkeypatch):
    """The shipped sizes are the 80gb row's. On a CPU the run scales the cpu row by them, so each value the
    offline `mutate` agent may propose for a size constant changes what runs, in its direction (an edit lost
    to the machine's preset would be a run that measures nothing); on the class named by SIZED_FOR the
    constants are used as written."""
    from harness.agents.mutate import candidate_values, parse_constants

    cpu = torch.device("cpu")
    base, preset, _ = train.model_size(cpu)
    assert preset == "cpu" and base == {k: v for k, v in train.PRESETS["cpu"].items() if k != "min_gib"}
    constants = parse_constants((ASSETS / "pretrain" / "train.py").read_text(encoding="utf-8"))
    assert train.SIZED_FOR == "80gb"
    for name, key in SIZE_CONSTANTS.items():
        c = constants[name]
        assert c.tunable and c.value == train.PRESETS["80gb"][key]
        for step in ("up", "down"):
            for value in candidate_values(c, step):
                monkeypatch.setattr(train, name, value)
                size = train.model_size(cpu)[0]
                assert (size[key] > base[key]) if step == "up" else (size[key] < base[key]), (name, value, size)
                assert {k: v for k, v in size.items() if k != key} == {k: v for k, v in base.items() if k != key}
        monkeypatch.setattr(train, name, c.value)
    monkeypatch.setattr(train, "DEPTH", 16)
    assert train.model_size(cpu)[0]["depth"] == 4  # twice the 80gb depth: twice the cpu depth
    monkeypatch.setattr(train, "SIZED_FOR", "cpu")
    monkeypatch.setattr(train, "DEVICE_BATCH_SIZE", 4)
    size, preset, why = train.model_size(cpu)
    assert preset == "cpu" and size["depth"] == 16 and size["device_batch"] == 4 and why.startswith("train.py's")
    # GPUs: sizes written for a smaller GPU fit a larger one as they are; for a larger one, they scale
    monkeypatch.setattr(train, "machine_class", lambda device: ("80gb", "80 GiB of GPU memory"))
    monkeypatch.setattr(train, "SIZED_FOR", "24gb")
    written = dict(depth=16, aspect=64, head_dim=128, device_batch=4, total_batch=2**19)
    assert train.model_size(cpu)[:2] == (written, "24gb")
    monkeypatch.setattr(train, "machine_class", lambda device: ("16gb", "16 GiB of GPU memory"))
    monkeypatch.setattr(train, "SIZED_FOR", "80gb")
    monkeypatch.setattr(train, "DEVICE_BATCH_SIZE", 64)
    assert train.model_size(cpu)[:2] == (dict(depth=16, aspect=64, head_dim=128, device_batch=8, total_batch=2**17),
                                         "16gb")


def test_gpu_peak_flops_table():
    assert train.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert train.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert train.gpu_peak_flops("NVIDIA H200") == 989.5e12
    assert train.gpu_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert train.gpu_peak_flops("NVIDIA L4") == 121e12
    assert train.gpu_peak_flops("NVIDIA L40S") == 362e12
    assert train.gpu_peak_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert train.gpu_peak_flops("Some Future GPU") is None


# ---------------------------------------------------------------------------
# Tokenizer, dataloader, evaluation (a tiny dataset built in a temporary directory)
# ---------------------------------------------------------------------------

UNICODE_SAMPLES = [
    "naïve café, Zürich — “quotes” and ellipsis…",
    "中文字符，日本語のかな、한국어",
    "emoji 🤖🚀 with ZWJ 👩‍💻 and flags 🇫🇷",
    "combining e\u0301 vs é, RTL עברית العربية",
    "def f(x):\n\treturn x ** 2  # 1234567890\r\n",
    "\x00 control \x7f and lone spaces   end",
]


def _corpus(n_docs=300, seed=0):
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "x", "=", "42", "\n", "ünï", "数据", "🤖"]
    # Lengths from a few tokens to far more than a 32-token row, so packing has to crop sometimes.
    return [" ".join(rng.choice(words) for _ in range(rng.choice([2, 5, 9, 20, 60, 150]))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Prepared dataset: parquet shards + a 300-token tokenizer, in the production formats."""
    root = tmp_path_factory.mktemp("tiny")
    docs = _corpus()
    pq.write_table(pa.table({"text": docs[:250]}), root / "train_00000.parquet", row_group_size=64)
    pq.write_table(pa.table({"text": docs[250:]}), root / "val_00000.parquet")
    prepare.train_tokenizer(docs[:250] + UNICODE_SAMPLES, 300, str(root / "tokenizer"))
    prepared = prepare.Prepared(
        dir=str(root), dataset="tiny", fingerprint="test", vocab_size=300,
        train_files=(str(root / "train_00000.parquet"),), val_files=(str(root / "val_00000.parquet"),),
        eval_tokens=40 * 32,
    )
    return prepare.Tokenizer.from_prepared(prepared), docs


def test_tokenizer_round_trips_unicode(tiny):
    tokenizer, _ = tiny
    token_bytes = prepare.get_token_bytes(tokenizer)
    assert tokenizer.get_vocab_size() == 300 and token_bytes.shape == (300,)
    assert tokenizer.get_bos_token_id() == 300 - len(prepare.SPECIAL_TOKENS)
    for text in UNICODE_SAMPLES + ["never seen: ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd"]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))  # bpb's byte count is exact
    with_bos = tokenizer.encode(UNICODE_SAMPLES, prepend=tokenizer.get_bos_token_id())
    assert all(row[0] == tokenizer.get_bos_token_id() for row in with_bos)
    assert int(token_bytes[tokenizer.get_bos_token_id()]) == 0
    # a saved tokenizer loads back identically
    again = prepare.load_encoding(tokenizer.prepared.tokenizer_dir)
    assert again.encode_ordinary(UNICODE_SAMPLES[2]) == tokenizer.encode(UNICODE_SAMPLES[2])


def test_dataloader_rows_start_with_bos_and_pack_whole_documents(tiny):
    tokenizer, docs = tiny
    bos = tokenizer.get_bos_token_id()
    encoded = {tuple(tokenizer.encode(d, prepend=bos)) for d in docs[:250]}
    loader = prepare.make_dataloader(tokenizer, 4, 32, "train", buffer_size=50, device="cpu")
    cropped = 0
    for _ in range(20):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
        assert (x[:, 0] == bos).all()
        assert ((x >= 0) & (x < 300)).all() and ((y >= 0) & (y < 300)).all()  # no padding or ignore ids
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            starts = [i for i, t in enumerate(row) if t == bos] + [len(row)]
            segments = [tuple(row[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
            assert all(s in encoded for s in segments[:-1])  # every segment but the last is a whole document
            last = segments[-1]
            if last not in encoded:  # the last may be a crop, made only when nothing fit whole
                assert any(d[: len(last)] == last for d in encoded)
                cropped += 1
    assert cropped > 0 and epoch >= 1


def test_dataloader_rows_do_not_depend_on_batch_size(tiny):
    tokenizer, _ = tiny
    small = prepare.make_dataloader(tokenizer, 2, 32, "val", device="cpu")
    big = prepare.make_dataloader(tokenizer, 8, 32, "val", device="cpu")
    rows_small = torch.cat([next(small)[0] for _ in range(4)])
    assert torch.equal(rows_small, next(big)[0])


class UniformModel(nn.Module):
    """Predicts every token with probability 1/V."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size) + 0 * self.dummy


def test_uniform_model_scores_log2_vocab_over_bytes_per_token(tiny):
    tokenizer, _ = tiny
    bpb = prepare.evaluate_bpb(UniformModel(300), tokenizer, batch_size=8)
    # Independently: the same rows, counting bytes and scored (non-special) targets.
    token_bytes = prepare.get_token_bytes(tokenizer)
    rows = tokenizer.prepared.eval_tokens // prepare.MAX_SEQ_LEN
    loader = prepare.make_dataloader(tokenizer, rows, prepare.MAX_SEQ_LEN, "val", device="cpu")
    _, y, _ = next(loader)
    nbytes = token_bytes[y]
    bytes_per_token = nbytes.sum().item() / (nbytes > 0).sum().item()
    assert bpb == pytest.approx(math.log2(300) / bytes_per_token, rel=1e-6)


def test_evaluate_bpb_does_not_depend_on_batch_size(tiny):
    tokenizer, _ = tiny
    torch.manual_seed(8)
    model = _tiny_model(vocab_size=300, sequence_len=prepare.MAX_SEQ_LEN, short_window=prepare.MAX_SEQ_LEN // 2)
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.5)  # make predictions non-uniform
    a = prepare.evaluate_bpb(model, tokenizer, batch_size=3)
    b = prepare.evaluate_bpb(model, tokenizer, batch_size=16)
    assert a == pytest.approx(b, rel=1e-5)
    assert 0 < a < 3 * math.log2(300)


def test_evaluate_bpb_uses_the_recorded_eval_size(tiny):
    tokenizer, _ = tiny
    short = prepare.Tokenizer(tokenizer.enc, dataclasses.replace(tokenizer.prepared, eval_tokens=2 * prepare.MAX_SEQ_LEN))
    model = _tiny_model(vocab_size=300, sequence_len=prepare.MAX_SEQ_LEN, short_window=prepare.MAX_SEQ_LEN // 2)
    calls = []
    original = model.forward
    model.forward = lambda idx: calls.append(idx.shape) or original(idx)
    prepare.evaluate_bpb(model, short, batch_size=5)
    assert calls == [(5, prepare.MAX_SEQ_LEN)]  # one batch; only its first 2 rows are scored
