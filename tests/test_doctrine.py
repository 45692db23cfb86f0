"""The doctrine's pure functions against the reference's test vectors and the real PEFT library.

Run: .venv/bin/python -m pytest -q tests/test_doctrine.py
"""

from __future__ import annotations

import pytest

from harness import doctrine as d

LLAMA_32_1B = {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
               "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True}
QWEN3_8B = {"num_hidden_layers": 36, "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False}
LLAMA_31_8B = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 128256}  # no head_dim: hidden / heads = 128
SMOLLM2_135M = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


# reference/posttrain.md §1.2: tinker-cookbook's _LORA_PARAMS_PER_RANK_BY_COMPONENT
@pytest.mark.parametrize(("config", "want"), [
    (LLAMA_32_1B, {"mlp": 491_520, "attn": 212_992, "unembed": 130_304}),
    (QWEN3_8B, {"mlp": 1_769_472, "attn": 958_464, "unembed": 156_032}),
    (LLAMA_31_8B, {"mlp": 1_769_472, "attn": 851_968, "unembed": 132_352}),
])
def test_params_per_rank_reproduces_the_reference_table(config, want):
    assert d.params_per_rank(d.Shape.from_hf_config(config)) == want


def test_shape_from_a_config_without_the_needed_sizes_says_so():
    with pytest.raises(ValueError, match="intermediate_size"):
        d.Shape.from_hf_config({"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 9})


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=16, vocab_size=101, tie_word_embeddings=True)
    return cfg, LlamaForCausalLM(cfg)


def _component(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "attn"
    if leaf in ("gate_proj", "up_proj", "down_proj"):
        return "mlp"
    return "unembed" if leaf == "lm_head" else "other"


ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize(("targets", "components"), [
    (ATTN_MLP, ("attn", "mlp")),
    ([*ATTN_MLP, "lm_head"], ("attn", "mlp", "unembed")),
    (["gate_proj", "up_proj", "down_proj"], ("mlp",)),
])
def test_counts_equal_peft_trainable_parameters_on_a_real_llama(targets, components):
    """PEFT's own count for the same modules: from the config formula and from the model's linears."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg, model = _tiny_llama()
    linears = [(n, m.in_features, m.out_features, _component(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    from_config = d.params_per_rank(d.Shape.from_hf_config(cfg.to_dict()))
    from_linears = d.params_per_rank_from_linears(linears)
    assert {k: from_linears[k] for k in from_config} == from_config
    rank = 4
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=32, target_modules=targets))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == d.lora_params(from_config, rank, components) == d.lora_params(from_linears, rank, components)


def test_counts_from_linears_by_component_for_a_layout_that_is_not_llamas():
    class Lin:  # arbase.Linear's fields
        def __init__(self, name, d_in, d_out, component):
            self.name, self.d_in, self.d_out, self.component = name, d_in, d_out, component

    linears = [Lin("blocks.0.attn.c_q", 64, 64, "attn"), ("blocks.0.attn.ve_gate", 32, 4, "other"),
               Lin("blocks.0.mlp.c_fc", 64, 256, "mlp"), ("lm_head", 64, 512, "unembed")]
    per = d.params_per_rank_from_linears(linears)
    assert per == {"attn": 128, "other": 36, "mlp": 320, "unembed": 576}
    assert d.lora_params(per, 8, ("attn", "mlp")) == 8 * 448
    with pytest.raises(ValueError, match="unknown component"):
        d.params_per_rank_from_linears([("x", 1, 1, "embedding")])


def test_capacity_verdict_min_rank_and_the_two_bit_variant():
    per = {"attn": 100, "mlp": 300, "unembed": 1000}
    ok = d.capacity(per, ("attn", "mlp"), rank=8, completion_tokens=3000)
    assert (ok.params, ok.verdict, ok.min_rank, ok.ratio) == (3200, "OK", 8, pytest.approx(3200 / 3000))
    low = d.capacity(per, ("attn", "mlp"), rank=4, completion_tokens=3000)
    assert (low.params, low.verdict, low.min_rank) == (1600, "UNDERCAPACITY", 8)
    assert (low.bits_verdict, low.bits_min_rank) == ("OK", 4)  # 2 x 1600 >= 3000
    assert "rank 8 passes" in low.why
    worse = d.capacity(per, ("attn", "mlp"), rank=1, completion_tokens=3000)
    assert (worse.verdict, worse.bits_verdict, worse.bits_min_rank) == ("UNDERCAPACITY", "UNDERCAPACITY", 4)
    # exactly one parameter per token passes; the unembedding adds its own
    assert d.capacity(per, ("attn", "mlp"), 3, 1200).verdict == "OK"
    assert d.capacity(per, ("attn", "mlp", "unembed"), 1, 1400).verdict == "OK"
    assert d.recommend_rank(low) == 8 and d.recommend_rank(d.capacity(per, ("mlp",), 1, 301)) == 2


def test_rl_needs_rank_one_only_and_no_parameters_is_never_ok():
    per = {"attn": 10, "mlp": 10}
    for method in ("grpo", "rl"):
        c = d.capacity(per, ("attn", "mlp"), rank=1, completion_tokens=10**9, method=method)
        assert (c.verdict, c.min_rank) == ("OK", 1) and "bit per episode" in c.why
    assert d.capacity(per, ("attn", "mlp"), rank=1, completion_tokens=10**9, method="sft").verdict == "UNDERCAPACITY"
    none = d.capacity(per, ("unembed",), rank=32, completion_tokens=1)
    assert (none.verdict, none.min_rank, none.params) == ("UNDERCAPACITY", None, 0)
    assert d.capacity(per, ("attn",), rank=0, completion_tokens=0, method="grpo").verdict == "UNDERCAPACITY"


# reference/posttrain.md §1.3: tinker-cookbook get_lr, LoRA / FullFT
@pytest.mark.parametrize(("name", "hidden", "lora_lr"), [
    ("meta-llama/Llama-3.2-1B", 2048, 4.9082e-4),
    ("meta-llama/Llama-3.2-3B", 3072, 3.5760e-4),
    ("meta-llama/Llama-3.1-8B", 4096, 2.8564e-4),
    ("meta-llama/Llama-3.1-70B", 8192, 1.6623e-4),
    ("Qwen/Qwen3-8B", 4096, 4.7298e-4),
    ("Qwen/Qwen3-4B-Instruct-2507", 2560, 4.9053e-4),
    ("Qwen/Qwen3-32B", 5120, 4.6487e-4),
])
def test_get_lr_reproduces_the_reference_vectors(name, hidden, lora_lr):
    got = d.get_lr(name, hidden)
    assert got.value == pytest.approx(lora_lr, rel=5e-5)  # 4 significant digits
    assert float(f"{got.value:.4e}") == lora_lr
    assert got.family in ("llama", "qwen") and "get_lr" in got.reason


def test_get_lr_full_finetune_is_a_tenth():
    assert d.get_lr("meta-llama/Llama-3.2-1B", 2048, lora=False).value == pytest.approx(4.9082e-5, rel=5e-5)


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m", "ours: pretrain run 3"])
def test_get_lr_is_not_calibrated_for_other_families(name):
    """SmolLM2 is a Llama architecture, but the exponent was fitted on the Llama-3 family by name."""
    got = d.get_lr(name, 576)
    assert got.value is None and got.family is None
    assert "neither" in got.reason and "train.py's own default LR stays" in got.reason


def test_lora_over_full_ratio_is_ten_and_shows_the_older_rule():
    r = d.lora_over_full_ratio(2048)
    assert r.value == 10.0
    assert "2048/64 would say 32" in r.reason
    assert d.lora_over_full_ratio().value == 10.0


@pytest.mark.parametrize(("fields", "method", "then"), [
    ({"prompt", "chosen", "rejected"}, "dpo", ()),
    ({"question", "solution", "gold"}, "sft", ("grpo",)),
    ({"question", "gold"}, "grpo", ()),
    ({"prompt", "completion"}, "sft", ()),
    ({"messages"}, "sft", ()),
    ({"text"}, "synthesize", ()),
])
def test_method_follows_the_seed_decision_tree(fields, method, then):
    got = d.choose_method(fields)
    assert (got.method, got.then) == (method, then)
    assert got.why


def test_method_from_armath_describe_fields_and_verifiable():
    """armath.describe gives fields ["question", "answer"] and verifiable True for offline-math and gsm8k."""
    assert d.choose_method(["question", "answer"], verifiable=True).then == ("grpo",)
    assert d.choose_method(["question", "answer"]).then == ()


def test_lr_for_our_own_gpt_is_never_calibrated_whatever_the_session_is_called():
    assert d.lr_for_base("ours", "llama-pretrain run 3", 128).value is None
    assert "our own GPT" in d.lr_for_base("ours", "x", 128).reason
    assert d.lr_for_base("hf", "meta-llama/Llama-3.2-1B", 2048).value == pytest.approx(4.9082e-4, rel=5e-5)
