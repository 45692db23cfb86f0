"""`autoresearch advise` and advice.json: the doctrine on a real model structure, tokenizer and dataset.

The base is a Hugging Face directory with SmolLM2-135M's config (hidden 576, 30 layers, 9 heads, 3 KV heads,
vocab 49152, tied) and a small BPE tokenizer trained here (no download); its weights file is a placeholder,
since advice loads the structure on the meta device and never reads weights.

Run: .venv/bin/python -m pytest -q tests/test_advise.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import advise, doctrine
from harness.cli import main

SMOLLM2_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 30,
                "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
                "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
TEXT = ["Ava has 3 apples and buys 4 more. How many apples does Ava have?", "3 + 4 = <<3+4=7>>7\n#### 7",
        "Question: Answer: the total is 12 pens, so #### 12", "0 1 2 3 4 5 6 7 8 9 + - * / = << >> ####"]


def make_hf_dir(d: Path, config: dict | None = None) -> Path:
    """An HF causal-LM directory: config.json, a BPE tokenizer.json trained on TEXT, a placeholder weights file."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config or SMOLLM2_135M))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TEXT * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
    save_file({"placeholder": torch.zeros(1)}, str(d / "model.safetensors"))
    return d


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(root))
    return root


@pytest.fixture
def smol_base(tmp_path, cache) -> Path:
    from harness import models

    return Path(models.resolve_base(str(make_hf_dir(tmp_path / "SmolLM2-135M-like")), cache).dir)


def test_advise_counts_the_models_linears_and_the_train_completions(smol_base, tmp_path, cache):
    from harness.resources import kit_module

    a = advise.advise(smol_base, "offline-math:train=300,val=20,test=20", cache_dir=str(cache))
    # the model's own linears give the reference formula's counts for this Llama-layout config
    want = doctrine.params_per_rank(doctrine.Shape.from_hf_config(SMOLLM2_135M))
    assert a.per_rank == want == {"mlp": 30 * 3 * (576 + 1536), "attn": 30 * (2 * 1152 + 2 * (576 + 192)),
                                  "unembed": 49152 + 576}
    assert len(a.linears) == 30 * 7 + 1
    # completion tokens: every train answer as the base tokenizes it, with its end token
    base = kit_module("arbase").base_from_dir(str(smol_base), meta=True)
    train = kit_module("armath").load_split("offline-math:train=300,val=20,test=20", "train", cache_dir=str(cache))
    assert a.completion_tokens == sum(len(base.completion_ids(x.solution)) for x in train.items) > 300
    assert (a.method.method, a.method.then) == ("sft", ("grpo",))
    assert a.capacity.verdict == "OK" and a.rank == 1  # 300 short answers need far less than one rank
    assert a.lr.value is None and "neither" in a.lr.reason  # SmolLM2 is a Llama architecture, not the family
    assert a.data["splits"]["train"]["rows"] == 300


def test_undercapacity_at_a_small_rank_names_the_rank_that_passes(tmp_path, cache):
    """A tiny model and a larger dataset: rank 1 is under capacity; the recommended rank passes."""
    from harness import models

    tiny = {**SMOLLM2_135M, "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 300}
    base_dir = models.resolve_base(str(make_hf_dir(tmp_path / "tiny", tiny)), cache).dir
    low = advise.advise(base_dir, "offline-math:train=200,val=10,test=10", rank=1, cache_dir=str(cache))
    assert low.per_rank["attn"] + low.per_rank["mlp"] == (16 + 16) + 2 * (16 + 8) + (16 + 16) + 3 * (16 + 32)  # q, k+v, o; gate+up+down
    assert low.per_rank["unembed"] == 16 + 300  # lm_head: hidden + vocab
    per = low.per_rank["attn"] + low.per_rank["mlp"] + low.per_rank["unembed"]  # train.py's default targets
    assert low.capacity.verdict == "UNDERCAPACITY" and low.capacity.params == per
    assert low.capacity.min_rank == -(-low.completion_tokens // per)
    assert low.rank >= low.capacity.min_rank and low.rank & (low.rank - 1) == 0
    ok = advise.advise(base_dir, "offline-math:train=200,val=10,test=10", cache_dir=str(cache))
    assert ok.capacity.rank == ok.rank and ok.capacity.verdict == "OK"


def test_advice_json_round_trips_and_a_broken_file_is_named(smol_base, tmp_path, cache):
    a = advise.advise(smol_base, "offline-math:train=50,val=10,test=10", rank=4, cache_dir=str(cache))
    ws = tmp_path / "ws"
    ws.mkdir()
    assert advise.read_advice(ws) is None
    path = advise.write_advice(ws, a)
    assert path == ws / "advice.json"
    back = advise.read_advice(ws)
    assert back == a and back.to_json() == a.to_json()
    path.write_text('{"format": 1, "base": {}}')
    with pytest.raises(advise.AdviceError, match="advice.json is not a readable advice file"):
        advise.read_advice(ws)


def test_set_lr_rewrites_only_the_lr_line():
    text = "LORA_RANK = 8\nLR = 3e-3           # peak learning rate\nLR_MIN = 0\n"
    assert advise.set_lr(text, 4.9082e-4) == "LORA_RANK = 8\nLR = 0.0004908           # peak learning rate\nLR_MIN = 0\n"
    with pytest.raises(ValueError, match="no `LR = ...` line"):
        advise.set_lr("RANK = 1\n", 1e-3)


def test_the_advise_command_prints_the_advice_and_json(tmp_path, cache, capsys):
    hf = make_hf_dir(tmp_path / "SmolLM2-135M-like")
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(40)
    ] + [{"question": "no gold here", "answer": "it is seven"}])
    assert main(["-C", str(tmp_path), "advise", "--base", "SmolLM2-135M-like", "--data", "train.jsonl"]) == 0
    out = capsys.readouterr().out
    for needle in ("rows               train", "unparseable gold   train 1", "completion tokens", "method             sft",
                   "LoRA params/rank   mlp 190,080  attn 115,200  unembed 49,728", "capacity           rank 1 on",
                   "2 bits/param", "recommended rank   1", "recommended LR     not calibrated", "LoRA/FullFT LR     10x"):
        assert needle in out, needle
    assert main(["-C", str(tmp_path), "advise", "--base", str(hf), "--data", str(data), "--rank", "2", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["capacity"]["rank"] == 2 and obj["capacity"]["verdict"] == "OK"
    assert obj["data"]["splits"]["train"]["skipped"] == 1
    assert obj["per_rank"] == {"mlp": 190080, "attn": 115200, "unembed": 49728}


def test_the_advise_command_says_what_is_wrong_in_one_line(tmp_path, cache, capsys):
    assert main(["-C", str(tmp_path), "advise", "--base", "no/such-model", "--data", "offline-math"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoresearch: error:") and len(err.strip().splitlines()) == 1
    make_hf_dir(tmp_path / "m")
    assert main(["-C", str(tmp_path), "advise", "--base", "m", "--data", "gsm8k"]) == 2
    assert "autoresearch: error:" in capsys.readouterr().err
