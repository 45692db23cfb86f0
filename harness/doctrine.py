"""The post-training doctrine as pure functions: LoRA parameter counts, the capacity rule, the
learning-rate rule, and the choice of method.

Sources (../shared/reference/posttrain.md, with its citations):
- parameter counts (§1.2): one adapted matrix costs `r * (d_in + d_out)`; for a dense Llama/Qwen decoder
  the per-rank counts of tinker-cookbook's `hyperparam_utils` table, reproduced exactly by `params_per_rank`;
- capacity (§1.2, "LoRA Without Regret"): supervised LoRA works well while its parameter count is at least
  the number of completion tokens (weight-1 tokens); policy-gradient RL learns about one bit per episode,
  so rank 1 is enough. The seed doctrine's variant (an LM stores ~2 bits per parameter, ~1 bit per token)
  is shown beside it: twice as lenient;
- learning rate (§1.3): tinker-cookbook's `get_lr`, `5e-5 * (10 if lora) * (2000 / hidden) ** P`, with P
  fitted for the Llama-3 and Qwen families only; the LoRA/FullFT ratio is 10;
- method (seed 001's decision tree): preference pairs -> DPO; verifiable answers -> GRPO, after SFT when
  there are worked solutions to imitate; instruction-output pairs -> SFT.

Nothing here reads a file, a model or a dataset: `harness.advise` gathers those and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Component = Literal["attn", "mlp", "unembed", "other"]
COMPONENTS: tuple[Component, ...] = ("mlp", "attn", "unembed", "other")
# What the sft target's train.py adapts by default (its LORA_TARGETS: attention, MLP and lm_head), as tinker-cookbook's
# LoraConfig does (train_mlp, train_attn, train_unembed all true; reference/posttrain.md §1.1).
DEFAULT_COMPONENTS: tuple[Component, ...] = ("attn", "mlp", "unembed")
Method = Literal["sft", "dpo", "grpo", "synthesize"]
RL_METHODS: frozenset[str] = frozenset({"grpo", "rl", "ppo"})  # policy gradient: ~1 bit per episode
Verdict = Literal["OK", "UNDERCAPACITY"]
LORA_ALPHA = 32  # LWR: alpha fixed at 32, scale alpha/r, so the best LR hardly depends on the rank


# ------------------------------------------------------------------ parameter counts


@dataclass(frozen=True)
class Shape:
    """A dense decoder's dimensions, as far as LoRA's parameter count needs them."""

    n_layer: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # tied embeddings: lm_head shares the embedding's weight (its LoRA is still its own A and B)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> Shape:
        """From a Hugging Face `config.json` (Llama, Qwen, Mistral, SmolLM naming; a nested `text_config`
        of a multimodal config is used when the top level has no layers)."""
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
            config = config["text_config"]
        missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                               "vocab_size") if not isinstance(config.get(k), int)]
        if missing:
            raise ValueError(f"the model config has no integer {', '.join(missing)}: not a dense decoder this "
                             "formula knows; count its linears instead (params_per_rank_from_linears)")
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = config.get("head_dim") or hidden // heads  # Qwen3 sets head_dim apart from hidden/heads
        return cls(
            n_layer=int(config["num_hidden_layers"]), hidden=hidden, intermediate=int(config["intermediate_size"]),
            n_heads=heads, n_kv_heads=int(config.get("num_key_value_heads") or heads), head_dim=int(head_dim),
            vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)),
        )


def params_per_rank(shape: Shape) -> dict[str, int]:
    """LoRA parameters per unit of rank, per component (§1.2): gate/up/down, q/k/v/o, lm_head."""
    h, q, kv = shape.hidden, shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    return {
        "mlp": shape.n_layer * 3 * (h + shape.intermediate),
        "attn": shape.n_layer * ((h + q) + 2 * (h + kv) + (q + h)),
        "unembed": shape.vocab + h,
    }


class LinearLike(Protocol):
    """What `arbase.linear_modules` returns for each nn.Linear (its `Linear` dataclass)."""

    @property
    def name(self) -> str: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def component(self) -> str: ...


LinearRow = tuple[str, int, int, str]  # (module name, d_in, d_out, component): advice.json's form


def linear_row(x: LinearLike | LinearRow) -> LinearRow:
    if isinstance(x, tuple):
        name, d_in, d_out, component = x
        return str(name), int(d_in), int(d_out), str(component)
    return x.name, int(x.d_in), int(x.d_out), str(x.component)


def params_per_rank_from_linears(linears: Iterable[LinearLike | LinearRow]) -> dict[str, int]:
    """Per-rank counts per component from a model's own linears: for any layout (our GPT's is not
    Llama's), it is what PEFT adds for those modules. Components with no linear are absent."""
    out: dict[str, int] = {}
    for name, d_in, d_out, component in map(linear_row, linears):
        if component not in COMPONENTS:
            raise ValueError(f"{name}: unknown component {component!r} (one of {', '.join(COMPONENTS)})")
        out[component] = out.get(component, 0) + d_in + d_out
    return out


def lora_params(per_rank: Mapping[str, int], rank: int, components: Collection[str]) -> int:
    """LoRA parameters at `rank` for the enabled components (a component the model lacks adds 0)."""
    return rank * sum(per_rank.get(c, 0) for c in components)


# ------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class Capacity:
    """The low-regret capacity rule at one rank, with the seed's 2-bits-per-parameter variant beside it."""

    method: str
    rank: int
    components: tuple[str, ...]
    params: int  # LoRA parameters at this rank
    completion_tokens: int  # weight-1 tokens of the training set
    ratio: float | None  # params / completion_tokens; None without tokens
    verdict: Verdict
    min_rank: int | None  # the smallest rank that passes; None when the components have no parameters
    bits_verdict: Verdict  # the seed's variant: 2 bits per parameter >= 1 bit per token
    bits_min_rank: int | None
    why: str

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _min_rank(per: int, need: int) -> int | None:
    return None if per <= 0 else max(1, math.ceil(need / per))


def capacity(per_rank: Mapping[str, int], components: Collection[str], rank: int, completion_tokens: int,
             method: str = "sft") -> Capacity:
    """The verdict for LoRA at `rank` on `components`, trained on `completion_tokens` weight-1 tokens.
    SFT (and DPO, for which no rule is published: the supervised one is the conservative choice) needs
    params >= tokens; RL needs rank >= 1."""
    comps = tuple(c for c in COMPONENTS if c in components)
    per = lora_params(per_rank, 1, comps)
    params = rank * per
    ratio = params / completion_tokens if completion_tokens > 0 else None
    if per <= 0 or rank < 1:
        why = (f"rank {rank} on {', '.join(comps) or 'no components'} adapts no parameters: nothing would train")
        return Capacity(method, rank, comps, params, completion_tokens, ratio, "UNDERCAPACITY",
                        _min_rank(per, 1), "UNDERCAPACITY", _min_rank(per, 1), why)
    if method in RL_METHODS:
        why = ("policy-gradient RL learns about one bit per episode, so any rank >= 1 holds it "
               "(LoRA Without Regret: rank 1 matches full fine-tuning for RL)")
        return Capacity(method, rank, comps, params, completion_tokens, ratio, "OK", 1, "OK", 1, why)
    need_bits = _min_rank(per, math.ceil(completion_tokens / 2)) or 1
    min_rank = _min_rank(per, completion_tokens) or 1
    verdict: Verdict = "OK" if params >= completion_tokens else "UNDERCAPACITY"
    bits: Verdict = "OK" if 2 * params >= completion_tokens else "UNDERCAPACITY"
    if verdict == "OK":
        why = (f"{params:,} LoRA parameters for {completion_tokens:,} completion tokens ({_ratio(ratio)} per token): "
               "at least one parameter per completion token, the low-regret regime")
    else:
        why = (f"{params:,} LoRA parameters for {completion_tokens:,} completion tokens ({_ratio(ratio)} per token): "
               f"below one per token, training would fall behind full fine-tuning; rank {min_rank} passes"
               + ("" if bits == "UNDERCAPACITY" else
                  f" (the 2-bits-per-parameter variant passes already; it needs rank {need_bits})"))
    return Capacity(method, rank, comps, params, completion_tokens, ratio, verdict, min_rank, bits, need_bits, why)


def _ratio(r: float | None) -> str:
    return "inf" if r is None else f"{r:.3g}"


def recommend_rank(cap: Capacity) -> int:
    """The rank to start from: the smallest power of two at or above the minimum passing rank (RL: 1),
    so the agent tunes around a rank that holds the data rather than one that cannot."""
    need = cap.min_rank or 1
    return 1 << (need - 1).bit_length()


# --------------------------------------------------------------------- learning rate

LRFamily = Literal["llama", "qwen"]
# tinker-cookbook hyperparam_utils.get_lr: the exponent fitted per family (<0.5% regret vs sweeps, TC's claim)
_LR_EXPONENT: dict[LRFamily, float] = {"llama": 0.781, "qwen": 0.0775}


@dataclass(frozen=True)
class LearningRate:
    """The LR rule's answer: a rate where it is calibrated, else none, and why either way."""

    value: float | None
    family: LRFamily | None
    lora: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_family(model_name: str) -> LRFamily | None:
    """The calibrated family, by name as tinker-cookbook matches it ("llama" / "qwen" in the name).
    The architecture is not the family: SmolLM2 is a LlamaForCausalLM (model_type "llama") but was
    never in the sweeps the exponent was fitted on, and its name says so; our own GPT neither."""
    low = model_name.lower()
    if "llama" in low:
        return "llama"
    if "qwen" in low:
        return "qwen"
    return None


def lr_for_base(kind: str, name: str, hidden_size: int | None) -> LearningRate:
    """The LR rule for a base of `kind` ("ours" | "hf"): our own GPT is never in the calibrated families,
    whatever its session is called (a pretrain session named "llama-test" is still our GPT)."""
    if kind != "hf" or hidden_size is None:
        what = "our own GPT (a pretrain checkpoint)" if kind == "ours" else f"{name!r} (no hidden size known)"
        return LearningRate(None, None, True, (
            f"the LR rule (tinker-cookbook get_lr) is fitted on the Llama-3 and Qwen families only, and the base is "
            f"{what}: no calibrated rate; train.py's own default LR stays"))
    return get_lr(name, hidden_size)


def get_lr(model_name: str, hidden_size: int, lora: bool = True) -> LearningRate:
    """tinker-cookbook's `get_lr`: `5e-5 * (10 if lora else 1) * (2000 / hidden_size) ** P_family`.
    For a name of neither family it gives no number (tinker-cookbook raises): the caller keeps its own
    default (the sft target's train.py `LR`, chosen by measurement)."""
    family = lr_family(model_name)
    if family is None:
        return LearningRate(None, None, lora, (
            f"the LR rule (tinker-cookbook get_lr) is fitted on the Llama-3 and Qwen families only, and "
            f"{model_name!r} is neither: no calibrated rate; train.py's own default LR stays"))
    p = _LR_EXPONENT[family]
    ratio = lora_over_full_ratio(hidden_size)
    value = 5e-5 * (ratio.value if lora else 1.0) * (2000 / hidden_size) ** p
    how = f"5e-5 x {ratio.value:g} (LoRA/FullFT) x (2000/{hidden_size})^{p}" if lora else f"5e-5 x (2000/{hidden_size})^{p}"
    return LearningRate(value, family, lora, f"tinker-cookbook get_lr for the {family} family: {how} = {value:.4g}")


@dataclass(frozen=True)
class Ratio:
    value: float
    reason: str


def lora_over_full_ratio(hidden_size: int | None = None, lora_alpha: int = LORA_ALPHA) -> Ratio:
    """LoRA's best LR over full fine-tuning's: 10 (tinker-cookbook since 2025-11; LWR's fit is 9.8).
    The older rule, hidden / (2 * alpha), is shown for comparison when the hidden size is known."""
    old = "" if hidden_size is None else (
        f"; the older rule hidden/(2*alpha) = {hidden_size}/{2 * lora_alpha} would say {hidden_size / (2 * lora_alpha):g}")
    return Ratio(10.0, "LoRA's optimal LR is about 10x full fine-tuning's (LoRA Without Regret, fitted 9.8)" + old)


# --------------------------------------------------------------------------- method

PREFERENCE_FIELDS = frozenset({"chosen", "rejected"})
SUPERVISED_FIELDS = frozenset({"solution", "completion", "answer", "messages", "output", "response"})
VERIFIABLE_FIELDS = frozenset({"gold"})


@dataclass(frozen=True)
class MethodChoice:
    method: Method
    then: tuple[Method, ...]  # what may follow once this has worked
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "then": list(self.then), "why": self.why}


def choose_method(fields: Collection[str], *, verifiable: bool = False) -> MethodChoice:
    """Seed 001's decision tree, from the fields a dataset's rows carry (`armath.describe`'s `fields`) and
    whether each row has a gold answer a program can check (its `verifiable`; a `gold` field says so too):
    preference pairs first, then verifiable answers, then instruction-output pairs."""
    have = set(fields)
    if have >= PREFERENCE_FIELDS:
        return MethodChoice("dpo", (), "the rows are preference pairs (chosen/rejected): DPO needs no reward model "
                            "and is stable")
    verifiable = verifiable or bool(VERIFIABLE_FIELDS & have)
    supervised = bool(SUPERVISED_FIELDS & have)
    if verifiable and supervised:
        return MethodChoice("sft", ("grpo",), "the rows have worked solutions and a verifiable gold answer: SFT "
                            "first teaches the format and the steps, then GRPO can train on the reward directly")
    if verifiable:
        return MethodChoice("grpo", (), "the rows have a verifiable gold answer but no solution to imitate: GRPO "
                            "trains on the reward directly")
    if supervised:
        return MethodChoice("sft", (), "the rows are instruction-output pairs: SFT with LoRA")
    return MethodChoice("synthesize", (), f"the rows ({', '.join(sorted(have)) or 'no fields'}) have neither "
                        "outputs, answers nor preferences: generate training data first")
