"""The LoRA-capacity pre-run check of post-training sessions (harness.capacity): train.py's LORA_RANK and
LORA_TARGETS read by AST against the workspace's advice.json, recorded in every run line, refusing only in
block mode. Through the real controller (git, ledger, checks) with the conftest fake executor.

Run: .venv/bin/python -m pytest -q tests/test_capacity.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from toy import EVAL, lines, make_toy, set_constant

from harness import advise, capacity, checks
from harness import config as config_mod
from harness.agents.base import Proposal
from harness.loop import Controller

ATTN, MLP = r"attn\.(c_q|c_k|c_v|c_proj|q_proj|k_proj|v_proj|o_proj)$", r"mlp\.(c_fc|c_proj|gate_proj|up_proj|down_proj)$"
TRAIN = f"""\
LR = 0.01          # learning rate
WIDTH = 8          # a power of two
USE_BIAS = False   # a flag
LORA_RANK = 2      # adapter rank
LORA_TARGETS = (   # module-name patterns (re.search)
    r"{ATTN}",
    r"{MLP}",
)
"""


def toy_linears(layers: int = 2, h: int = 16, i: int = 32) -> list[tuple[str, int, int, str]]:
    out = []
    for n in range(layers):
        p = f"model.layers.{n}"
        out += [(f"{p}.self_attn.{x}_proj", h, h, "attn") for x in "qkvo"]
        out += [(f"{p}.mlp.gate_proj", h, i, "mlp"), (f"{p}.mlp.up_proj", h, i, "mlp"), (f"{p}.mlp.down_proj", i, h, "mlp")]
    return [*out, ("lm_head", h, 100, "unembed")]


PER_RANK = 2 * (4 * 32 + 3 * 48)  # attn + mlp of the two layers: 544 parameters per unit of rank
TOKENS = 1000  # rank 2 holds them (1,088 parameters), rank 1 does not (544)


def toy_advice() -> advise.Advice:
    return advise.compose({"name": "toy", "kind": "hf"}, {"spec": "toy", "fields": ["question", "answer"]},
                          toy_linears(), TOKENS, verifiable=True, hidden_size=16)


def make_sft_toy(root: Path) -> Path:
    root.mkdir(parents=True)
    advise.write_advice(root, toy_advice())
    (root / "train.py").write_text(TRAIN)
    (root / "eval.py").write_text(EVAL)
    from toy import main

    assert main(["-C", str(root), "init", "--command", "python eval.py", "--metric", "score", "--direction", "higher",
                 "--editable", "train.py", "--fixed", "eval.py", "advice.json", "--budget", "5", "--tag", "t"]) == 0
    return root


class RankAgent:
    name = "scripted"

    def __init__(self, ranks: list[str]):
        self.ranks = list(ranks)

    def propose(self, ctx):
        r = self.ranks.pop(0)
        set_constant(ctx.root, "LORA_RANK", r)
        return Proposal(f"LORA_RANK {r}", {"hypothesis": "scripted"})


def controller(root: Path, executor, clock, *, block: bool = False) -> Controller:
    cfg = config_mod.load(root)
    if block:
        cfg = config_mod.with_overrides(cfg, capacity="block")  # `[session] capacity = "block"`
    return Controller(root, cfg, executor=executor, clock=clock, printer=[].append, progress=False)


# ----------------------------------------------------------------------------- pure parts


def test_read_lora_takes_literals_only_and_says_why_not():
    got = capacity.read_lora(TRAIN)
    assert got == capacity.TrainLoRA(2, (ATTN, MLP))
    assert capacity.read_lora("LORA_RANK = 4\nLORA_TARGETS = r'mlp'\nLORA_RANK = 8\n") == capacity.TrainLoRA(8, ("mlp",))
    assert "not a literal" in capacity.read_lora("R = 4\nLORA_RANK = R * 2\nLORA_TARGETS = ('x',)\n")
    assert "no module-level LORA_TARGETS" in capacity.read_lora("LORA_RANK = 4\n")
    assert "not an integer" in capacity.read_lora("LORA_RANK = 4.0\nLORA_TARGETS = ('x',)\n")
    assert "not a regular expression" in capacity.read_lora("LORA_RANK = 4\nLORA_TARGETS = ('(',)\n")
    assert "does not parse" in capacity.read_lora("LORA_RANK = \n")


def test_the_sft_targets_own_train_py_is_readable():
    """The constant names agreed with the sft target (assets/sft/train.py): LORA_RANK and LORA_TARGETS."""
    from harness.resources import assets_dir

    got = capacity.read_lora((assets_dir() / "sft" / "train.py").read_text())
    assert isinstance(got, capacity.TrainLoRA) and got.rank >= 1
    picked = capacity.selected(toy_linears(), got.targets)  # its default patterns: attention, MLP and lm_head
    assert {x[3] for x in picked} == {"attn", "mlp", "unembed"} and len(picked) == 15


def test_assess_counts_the_linears_the_patterns_select():
    a = toy_advice()
    ok = capacity.assess(a, capacity.TrainLoRA(2, (ATTN, MLP)), "sft")
    assert (ok.params, ok.verdict, ok.min_rank) == (2 * PER_RANK, "OK", 2)
    low = capacity.assess(a, capacity.TrainLoRA(1, (ATTN, MLP)), "sft")
    assert (low.params, low.verdict, low.min_rank, low.bits_verdict) == (PER_RANK, "UNDERCAPACITY", 2, "OK")
    mlp_only = capacity.assess(a, capacity.TrainLoRA(2, (r"mlp\.",)), "sft")
    assert (mlp_only.params, mlp_only.components) == (2 * 2 * 3 * 48, ("mlp",))
    with_head = capacity.assess(a, capacity.TrainLoRA(1, (ATTN, MLP, r"^lm_head$")), "sft")
    assert with_head.params == PER_RANK + 116
    assert capacity.assess(a, capacity.TrainLoRA(1, (ATTN,)), "grpo").verdict == "OK"  # RL: rank >= 1


# ----------------------------------------------------------------------- through the loop


def test_every_run_line_records_the_capacity_and_warn_mode_runs_anyway(tmp_path, fake_executor, fake_clock):
    root = make_sft_toy(tmp_path / "ws")
    executor = fake_executor(root, [1.0, 2.0])
    ctl = controller(root, executor, fake_clock)
    assert capacity.mode_of(ctl.cfg) == "warn"
    ctl.iterate(None)  # the baseline: train.py as committed, rank 2
    ctl.iterate(RankAgent(["1"]))
    base, low = [x for x in lines(root) if "run" in x]
    assert base["capacity"] == {
        "rank": 2, "modules": 14, "components": ["mlp", "attn"], "params": 2 * PER_RANK, "completion_tokens": TOKENS,
        "ratio": round(2 * PER_RANK / TOKENS, 4), "verdict": "OK", "min_rank": 2, "bits_verdict": "OK",
        "method": "sft", "why": base["capacity"]["why"],
    }
    assert low["capacity"]["verdict"] == "UNDERCAPACITY" and low["capacity"]["params"] == PER_RANK
    assert "rank 2 passes" in low["capacity"]["why"]
    assert low["status"] == "keep" and len(executor.calls) == 2  # warn: recorded, never refused


def test_block_mode_refuses_an_undercapacity_proposal_before_it_runs(tmp_path, fake_executor, fake_clock):
    root = make_sft_toy(tmp_path / "ws")
    executor = fake_executor(root, [1.0, 2.0])
    ctl = controller(root, executor, fake_clock, block=True)
    assert capacity.mode_of(ctl.cfg) == "block"
    ctl.iterate(None)
    refused = ctl.iterate(RankAgent(["1"]))
    assert refused.decision.status == "checks_failed"
    assert refused.decision.reason.startswith('LoRA under capacity (capacity = "block"): 544 LoRA parameters')
    assert refused.record["capacity"]["verdict"] == "UNDERCAPACITY"
    assert len(executor.calls) == 1  # only the baseline ran
    assert "LORA_RANK = 2" in (root / "train.py").read_text()  # the refused edit was undone
    ok = ctl.iterate(RankAgent(["4"]))
    assert ok.decision.status == "keep" and ok.record["capacity"]["verdict"] == "OK" and len(executor.calls) == 2


def test_block_mode_refuses_a_train_py_whose_rank_it_cannot_read(tmp_path, fake_executor, fake_clock):
    root = make_sft_toy(tmp_path / "ws")
    ctl = controller(root, fake_executor(root, [1.0]), fake_clock, block=True)
    ctl.iterate(None)

    class Computed(RankAgent):
        def propose(self, ctx):
            set_constant(ctx.root, "LORA_RANK", "int('1')")
            return Proposal("computed rank", {})

    res = ctl.iterate(Computed([]))
    assert res.decision.status == "checks_failed" and "cannot be checked" in res.decision.reason
    assert res.record["capacity"]["verdict"] == "unknown"


def test_no_advice_json_means_no_check_and_no_field(tmp_path, fake_executor, fake_clock):
    root = make_toy(tmp_path / "plain")
    ctl = controller(root, fake_executor(root, [1.0]), fake_clock, block=True)
    ctl.iterate(None)
    assert "capacity" not in [x for x in lines(root) if "run" in x][0]
    assert checks.lora_capacity in checks.PRE_RUN


@pytest.mark.parametrize("text", ["{not json", '{"format": 2}'])
def test_an_unreadable_advice_json_is_recorded_as_unknown(tmp_path, text):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "advice.json").write_text(text)
    cfg = config_mod.Config(name="x", command="true")
    field = capacity.observe(root, cfg)
    assert field is not None and field["verdict"] == "unknown" and "advice.json" in field["why"]
    assert capacity.refusal(root, cfg, "warn") is None and "cannot be checked" in capacity.refusal(root, cfg, "block")
