"""The kit's model side (assets/arbase.py) and the sft target's LoRA (assets/sft/train.py), on tiny real models.

A tiny random LlamaForCausalLM with a tokenizer trained here (an HF base directory, as `init --base DIR`
materializes one) and our own GPT from a 2 s pretrain run (a base of kind "ours"). Every test is CPU-only and
offline. What they prove: a base is loaded only when every file matches base.json; LoRA trains its adapters and
nothing else, with a finite, falling loss on completion tokens only; the merged model computes what the adapted
one does; the real `peft` library loads our saved adapter onto the same base and gives the same logits; a bad
adapter is refused with the reason; batched greedy generation equals one prompt at a time.

Run: .venv/bin/python -m pytest tests/test_arbase.py -q   (~30 s on 2 cores, most of it the pretrain run)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import ASSETS, kit_module, load_by_path, trained_pretrain

PRETRAIN_ARGS = ("--dataset", "local", "--vocab-size", "512", "--max-bytes", "300000", "--eval-tokens", "4096")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------
# Bases made here, laid out as harness/bases.py materializes them (base.json with every file's sha256)
# ---------------------------------------------------------------------------


def _modules():
    """assets/arbase.py, armath.py and the sft prepare.py/train.py, loaded by path (their imports answered)."""
    cache = _modules.__dict__.setdefault("cache", {})
    if not cache:
        kit = kit_module()
        cache["arbase"] = load_by_path(ASSETS / "arbase.py", "arbase_under_test", {"arkit": kit})
        cache["armath"] = load_by_path(ASSETS / "armath.py", "armath_under_test", {"arkit": kit})
        deps = {"arkit": kit, "arbase": cache["arbase"], "armath": cache["armath"]}
        deps["arpost"] = cache["arpost"] = load_by_path(ASSETS / "arpost.py", "arpost_under_test", deps)
        cache["prepare"] = load_by_path(ASSETS / "sft" / "prepare.py", "sft_prepare", deps)
        cache["train"] = load_by_path(ASSETS / "sft" / "train.py", "sft_train", {**deps, "prepare": cache["prepare"]})
    return cache


def arbase():
    return _modules()["arbase"]


def write_base_json(directory: Path, kind: str, name: str = "tiny", origin: dict | None = None) -> dict:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != "base.json":
            files[path.relative_to(directory).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    fingerprint = hashlib.sha256("".join(f"{r}\0{files[r]}\n" for r in sorted(files)).encode()).hexdigest()
    info = {"format": 1, "kind": kind, "spec": str(directory), "name": name, "origin": origin or {"type": "test"},
            "files": files, "fingerprint": fingerprint, "model": {}}
    (directory / "base.json").write_text(json.dumps(info, indent=1))
    return info


def make_hf_base(directory: Path, *, chat: bool = True, seed: int = 0) -> Path:
    """A tiny random Llama (2 layers, hidden 32, GQA, tied embeddings) and a byte-level BPE trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Question: Ava has 3 pens. How many?\nAnswer: 3 + 4 = <<3+4=7>>7\n#### 7"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    write_base_json(directory, "hf", origin={"type": "hf-dir", "path": str(directory)})
    return directory


def make_our_base(directory: Path, ckpt: Path, tokenizer_dir: Path) -> Path:
    """A base of kind "ours" from a pretrain checkpoint, as harness/bases.py lays it out."""
    (directory / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "config.json"):
        shutil.copy(ckpt / name, directory / name)
    shutil.copy(ckpt / "train.py", directory / "base_model.py")
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        shutil.copy(tokenizer_dir / name, directory / "tokenizer" / name)
    write_base_json(directory, "ours", origin={"type": "checkpoint", "path": str(ckpt)})
    return directory


def install_base(base_dir: Path, cache: Path) -> dict:
    """Put a base directory where the cache keeps bases; returns its base.json with `dir` as a workspace holds it."""
    info = json.loads((base_dir / "base.json").read_text())
    rel = f"bases/{info['fingerprint'][:16]}"
    if not (cache / rel).exists():
        shutil.copytree(base_dir, cache / rel)
    return {**info, "dir": rel}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return make_hf_base(tmp_path_factory.mktemp("hf") / "base")


@pytest.fixture(scope="module")
def ours_dir(tmp_path_factory) -> Path:
    t = trained_pretrain(tmp_path_factory.mktemp("pretrain"), PRETRAIN_ARGS)
    return make_our_base(t.root / "base", t.ckpt, t.data_dir / "tokenizer")


@pytest.fixture(scope="module", params=["hf", "ours"])
def base(request, hf_dir, ours_dir):
    return arbase().base_from_dir(str(hf_dir if request.param == "hf" else ours_dir), device="cpu")


def random_lora(base, r: int = 4, seed: int = 1, components=("attn", "mlp", "unembed")):
    g = torch.Generator().manual_seed(seed)
    return {lin.name: (torch.randn(r, lin.d_in, generator=g) * 0.1, torch.randn(lin.d_out, r, generator=g) * 0.1)
            for lin in arbase().linear_modules(base.model) if lin.component in components}


def prompt_batch(base) -> torch.Tensor:
    rows = [base.prompt_ids("Ava has 3 pens. How many?") + base.completion_ids("3 + 4 = 7\n#### 7")]
    return torch.tensor(rows)


# ---------------------------------------------------------------------------
# Components and loading
# ---------------------------------------------------------------------------


def test_component_of_names_llama_and_our_modules():
    c = arbase().component_of
    assert [c(f"model.layers.3.self_attn.{n}") for n in ("q_proj", "k_proj", "v_proj", "o_proj")] == ["attn"] * 4
    assert [c(f"model.layers.3.mlp.{n}") for n in ("gate_proj", "up_proj", "down_proj")] == ["mlp"] * 3
    assert [c(f"blocks.0.attn.{n}") for n in ("c_q", "c_k", "c_v", "c_proj")] == ["attn"] * 4
    assert [c(f"blocks.0.mlp.{n}") for n in ("c_fc", "c_proj")] == ["mlp"] * 2
    assert c("lm_head") == "unembed" and c("blocks.1.attn.ve_gate") == "other"


def test_linear_modules_of_both_kinds_on_meta(hf_dir, ours_dir):
    hf = arbase().base_from_dir(str(hf_dir), meta=True)
    assert hf.device.type == "meta" and all(p.is_meta for p in hf.model.parameters())
    names = [lin.name for lin in arbase().linear_modules(hf.model)]
    assert names[:7] == [f"model.layers.0.{n}" for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                          "mlp.down_proj")]
    k = next(lin for lin in arbase().linear_modules(hf.model) if lin.name.endswith("k_proj"))
    assert (k.d_in, k.d_out, k.component) == (32, 16, "attn")  # 2 KV heads of 8
    ours = arbase().base_from_dir(str(ours_dir), meta=True)
    comps = {lin.name: lin.component for lin in arbase().linear_modules(ours.model)}
    assert comps["blocks.0.attn.c_proj"] == "attn" and comps["blocks.0.mlp.c_proj"] == "mlp"
    assert comps["lm_head"] == "unembed"


def test_a_changed_base_file_is_refused_by_name(hf_dir, tmp_path):
    broken = tmp_path / "base"
    shutil.copytree(hf_dir, broken)
    with open(broken / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(arbase().BaseError, match=r"config\.json changed since init"):
        arbase().base_from_dir(str(broken))
    (broken / "config.json").unlink()
    with pytest.raises(arbase().BaseError, match=r"config\.json is missing"):
        arbase().base_from_dir(str(broken))


def test_workspace_base_checks_its_model_code(ours_dir, tmp_path, monkeypatch):
    cache, ws = tmp_path / "cache", tmp_path / "ws"
    ws.mkdir()
    info = install_base(ours_dir, cache)
    (ws / "base.json").write_text(json.dumps(info))
    shutil.copy(ours_dir / "base_model.py", ws / "base_model.py")
    monkeypatch.setattr(arbase(), "CACHE_DIR", str(cache))
    loaded = arbase().load_base(str(ws), device="cpu")
    assert loaded.kind == "ours" and loaded.dir == str(cache / info["dir"])
    (ws / "base_model.py").write_text((ws / "base_model.py").read_text() + "\n# edited\n")
    with pytest.raises(arbase().BaseError, match="base_model.py is missing or differs"):
        arbase().load_base(str(ws), device="cpu")


def test_prompt_formats(hf_dir, ours_dir, tmp_path):
    ours = arbase().base_from_dir(str(ours_dir), device="cpu")
    bos = ours.tok.eos_id
    assert ours.prompt_ids("q?") == [bos, *ours.tok.encode("Question: q?\nAnswer:")]
    assert ours.completion_ids("#### 7") == [*ours.tok.encode(" #### 7"), bos]
    chat = arbase().base_from_dir(str(hf_dir), device="cpu")
    im_end = chat.hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert chat.tok.eos_id == im_end  # the end of an assistant turn, not <|endoftext|>
    assert chat.hf_tokenizer.decode(chat.prompt_ids("q?")) == "<|im_start|>user\nq?<|im_end|>\n<|im_start|>assistant\n"
    assert chat.completion_ids("#### 7")[-1] == im_end
    plain = arbase().base_from_dir(str(make_hf_base(tmp_path / "plain", chat=False)), device="cpu")
    assert plain.hf_tokenizer.decode(plain.prompt_ids("q?")) == "<|endoftext|>Question: q?\nAnswer:"


# ---------------------------------------------------------------------------
# LoRA training (the sft train.py's LoRALinear), merging, and the loss weights
# ---------------------------------------------------------------------------


def _train_steps(base, steps: int = 10, lr: float = 3e-3):
    train = _modules()["train"]
    model = copy.deepcopy(base.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapters = train.inject_lora(model, train.LORA_TARGETS, 4, 32)
    params = [p for a in adapters.values() for p in (a.lora_A, a.lora_B)]
    initial = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8)
    x = prompt_batch(base)
    p = len(base.prompt_ids("Ava has 3 pens. How many?"))
    w = torch.zeros(1, x.size(1) - 1)
    w[0, p - 1:] = 1.0
    losses = []
    for _ in range(steps):
        loss = train.completion_loss(model, x[:, :-1], x[:, 1:], w)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, adapters, params, initial, before, losses


def test_lora_trains_every_adapter_parameter_and_no_base_weight(base):
    model, adapters, params, initial, before, losses = _train_steps(base)
    names = set(adapters)
    expected = {lin.name for lin in arbase().linear_modules(base.model) if lin.component in ("attn", "mlp", "unembed")}
    assert names == expected  # the default targets: every attention and MLP linear and the unembedding, nothing else
    assert all(not torch.equal(p, q) for p, q in zip(params, initial, strict=True)), "a LoRA parameter did not move"
    after = model.state_dict()
    for key, value in before.items():  # the base's weights sit under `.base.` in the wrapped model
        wrapped = key if key in after else key.replace(".weight", ".base.weight")
        assert torch.equal(after[wrapped], value), f"base weight {key} changed"
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.2 and losses[-1] == min(losses), losses


def test_merged_model_equals_the_adapted_one(base, tmp_path):
    model, adapters, *_ = _train_steps(base)
    x = prompt_batch(base)
    adapted = arbase().logits_of(model.eval(), x)
    lora = {n: (a.lora_A.detach(), a.lora_B.detach()) for n, a in adapters.items()}
    arbase().save_adapter(str(tmp_path / "ad"), base, lora, 4, 32)
    merged = arbase().load_adapted(base, str(tmp_path / "ad"))
    assert torch.allclose(arbase().logits_of(merged, x), adapted, atol=1e-4)
    assert not torch.allclose(arbase().logits_of(base.model, x), adapted, atol=1e-3)  # the adapter matters


def test_prompt_tokens_carry_zero_loss_weight():
    m = _modules()
    prepare, train = m["prepare"], m["train"]
    import numpy as np

    rows = prepare.Rows(np.array([5, 6, 7, 8, 9, 1, 2, 3], dtype=np.int32), np.array([0, 5, 8]),
                        np.array([3, 1], dtype=np.int32), ("a", "b"), ("9", "3"))
    x, y, w = prepare.make_batch(rows, [0, 1], "cpu")
    assert x.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]] and y.tolist() == [[6, 7, 8, 9], [2, 3, 0, 0]]
    # row 0: prompt 5 6 7, completion 8 9 -> targets 6 7 (prompt) weigh 0, 8 9 weigh 1; row 1: padding weighs 0
    assert w.tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]
    # and the loss does not see a prompt target at all: changing one leaves it as it was
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    y2 = y.clone()
    y2[0, 0] = 3
    assert torch.equal(train.completion_loss(model, x, y, w), train.completion_loss(model, x, y2, w))


# ---------------------------------------------------------------------------
# PEFT reads what we write
# ---------------------------------------------------------------------------


def test_peft_loads_our_adapter_and_the_logits_match(base, tmp_path):
    from peft import LoraConfig, PeftModel

    lora = random_lora(base)
    arbase().save_adapter(str(tmp_path / "ad"), base, lora, 4, 32)
    saved = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and saved["lora_alpha"] == 32
    assert saved["target_modules"] == sorted(lora)
    merged = arbase().load_adapted(base, str(tmp_path / "ad"))
    if base.kind == "hf":
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(tmp_path / "ad"))
    else:  # a plain nn.Module: PEFT's CAUSAL_LM wrapper wants HF's generation hooks, so load it task-free
        config = LoraConfig.from_pretrained(str(tmp_path / "ad"))
        config.task_type = None
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(tmp_path / "ad"), config=config)
    peft_model.eval()
    x = prompt_batch(base)
    with torch.no_grad():
        theirs, ours = arbase().logits_of(peft_model, x), arbase().logits_of(merged, x)
    assert (theirs - ours).abs().max().item() < 1e-4
    assert (arbase().logits_of(base.model, x) - ours).abs().max().item() > 1e-2


# ---------------------------------------------------------------------------
# What load_adapted refuses
# ---------------------------------------------------------------------------


def _write_adapter(directory: Path, base, tensors: dict, r: int = 4, **config) -> str:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 32, **config}))
    return str(directory)


def test_load_adapted_refuses_a_bad_adapter(hf_dir, tmp_path):
    base = arbase().base_from_dir(str(hf_dir), device="cpu")
    a, b = torch.zeros(4, 32), torch.zeros(32, 4)
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    cases = {
        "unknown": ({"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": a,
                     "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": b}, "is not a linear module"),
        "shape": ({f"{q}.lora_A.weight": torch.zeros(4, 31), f"{q}.lora_B.weight": b}, r"needs \(4, 32\)"),
        "nan": ({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": torch.full((32, 4), float("nan"))}, "non-finite"),
        "half": ({f"{q}.lora_A.weight": a}, "needs lora_A and lora_B"),
        "extra": ({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b, "base_model.model.lm_head.weight": b.clone()},
                  "unexpected tensor"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(arbase().BaseError, match=message):
            arbase().load_adapted(base, _write_adapter(tmp_path / name, base, tensors))
    ok = {f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b}
    with pytest.raises(arbase().BaseError, match="only plain LoRA"):
        arbase().load_adapted(base, _write_adapter(tmp_path / "dora", base, ok, use_dora=True))
    with pytest.raises(arbase().BaseError, match="r must be a positive integer"):
        arbase().load_adapted(base, _write_adapter(tmp_path / "r0", base, ok, r=0))
    with pytest.raises(arbase().BaseError, match="neither an adapter"):
        (tmp_path / "empty").mkdir()
        arbase().load_adapted(base, str(tmp_path / "empty"))
    arbase().load_adapted(base, _write_adapter(tmp_path / "fine", base, ok))  # the same, well-formed: accepted


def test_merged_weights_in_the_base_layout_are_read(hf_dir, tmp_path):
    from safetensors.torch import save_model

    base = arbase().base_from_dir(str(hf_dir), device="cpu")
    changed = copy.deepcopy(base.model)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.add_(0.5)
    (tmp_path / "full").mkdir()
    save_model(changed, str(tmp_path / "full" / "model.safetensors"))  # stores the tied embedding once
    loaded = arbase().load_adapted(base, str(tmp_path / "full"))
    x = prompt_batch(base)
    assert torch.allclose(arbase().logits_of(loaded, x), arbase().logits_of(changed, x), atol=1e-5)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    from safetensors.torch import save_file

    (tmp_path / "bad").mkdir()
    save_file({"model.norm.weight": torch.ones(31)}, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(arbase().BaseError, match=r"model\.norm\.weight is \(31,\)"):
        arbase().load_adapted(base, str(tmp_path / "bad"))


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def test_batched_greedy_generation_equals_one_prompt_at_a_time(base):
    questions = ["Ava has 3 pens.", "How many?", "Ben has 12 cards and gets 4 more. How many cards now?"]
    prompts = [base.prompt_ids(q) for q in questions]
    batched = arbase().generate(base.model, base, prompts, 12)
    single = [arbase().generate(base.model, base, [p], 12)[0] for p in prompts]
    assert batched == single
    assert all(0 < len(o) <= 12 for o in batched) or base.kind == "hf"
    # against a plain argmax loop over the full logits: the same tokens
    x = list(prompts[2])
    for _ in range(len(single[2])):
        x.append(int(arbase().logits_of(base.model, torch.tensor([x]))[0, -1].argmax()))
    assert x[len(prompts[2]):] == single[2]


def test_generation_stops_at_the_end_token(ours_dir):
    base = arbase().base_from_dir(str(ours_dir), device="cpu")
    end = base.tok.eos_id

    class SaysSevenThenEnds(nn.Module):
        """Predicts token 7 after anything but 7, and the end token after 7."""

        def forward(self, x):
            logits = torch.zeros(*x.shape, base.tok.vocab_size)
            logits[..., 7] = (x != 7).float()
            logits[..., end] = (x == 7).float()
            return logits

    out = arbase().generate(SaysSevenThenEnds(), base, [base.prompt_ids("q"), [end, 3, 7]], 10)
    assert out == [[7], []]
