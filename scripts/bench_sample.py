"""How much does the KV cache save? assets/arsample.py's sample(), cached against full recompute, side by side.

Two tiny bases built here (nothing is downloaded): our GPT (the pretrain target's train.py, the CPU preset's
shape: 2 layers, d 128, 256 positions, random weights) and a tiny random Llama (4 layers, hidden 128). Each is
sampled once per path on the same prompts and seed, so both paths draw the same tokens (checked); the
figures are samples/s and generated tokens/s, and the ratio.

Run:
  OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_sample.py                   # 64 prompts x n=4 x 48 tokens
  .venv/bin/python scripts/bench_sample.py --prompts 16 --n 8 --new 96 --ours /path/to/a/materialized/base
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tiny-base builders live with the tests

import torch  # noqa: E402
from test_arbase import make_hf_base, write_base_json  # noqa: E402
from test_arsample import arbase, arsample, make_tiny_our_base  # noqa: E402

OURS_CPU_PRESET = {"vocab_size": 264, "sequence_len": 256, "n_layer": 2, "n_embd": 128, "head_dim": 64,
                   "window_pattern": "SSSL", "short_window": 128, "rope_base": 10000.0, "softcap": 15.0,
                   "ve_gate_channels": 32}


def questions(k: int) -> list[str]:
    names = ["Ava", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gus", "Hana"]
    return [f"{names[i % 8]} has {3 + i} pens and buys {i % 7 + 2} boxes of {i % 5 + 3} more."
            + " How many pens does " + names[i % 8] + " have now?" * (1 + i % 2) for i in range(k)]


def tiny_llama(directory: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    make_hf_base(directory)  # its tokenizer and chat template; the model is replaced by a larger one
    tok_len = len(__import__("transformers").AutoTokenizer.from_pretrained(directory))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok_len, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    write_base_json(directory, "hf")
    return directory


def timed(base, prompts, n: int, new: int, use_cache: bool, batch: int):
    start = time.perf_counter()
    out = arsample().sample(base.model, base, prompts, n=n, temperature=1.0, max_new_tokens=new, seed=0,
                            batch_size=batch, use_cache=use_cache)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new", type=int, default=48, help="max_new_tokens")
    ap.add_argument("--batch", type=int, default=64, help="rows per forward")
    ap.add_argument("--ours", help="a materialized base of ours to use instead of the built one")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours_dir = args.ours or str(make_tiny_our_base(Path(tmp) / "ours", model_config=OURS_CPU_PRESET))
        bases = {"ours": arbase().base_from_dir(ours_dir, device=args.device),
                 "llama": arbase().base_from_dir(str(tiny_llama(Path(tmp) / "llama")), device=args.device)}
        print(f"{args.prompts} prompts x n={args.n} x {args.new} new tokens, {args.batch} rows per forward, "
              f"{args.device}, {torch.get_num_threads()} threads")
        print(f"{'base':<7}{'path':<8}{'seconds':>9}{'samples/s':>11}{'tokens/s':>10}  (prompt tokens: mean)")
        for name, base in bases.items():
            prompts = [base.prompt_ids(q) for q in questions(args.prompts)]
            arsample().sample(base.model, base, prompts[:2], max_new_tokens=4, seed=0)  # warm-up
            results = {}
            for use_cache in (True, False):
                out, dt = timed(base, prompts, args.n, args.new, use_cache, args.batch)
                generated = sum(len(s.tokens) for row in out for s in row)
                results[use_cache] = (out, dt)
                print(f"{name:<7}{'cached' if use_cache else 'full':<8}{dt:>9.2f}{args.prompts * args.n / dt:>11.1f}"
                      f"{generated / dt:>10.0f}  ({sum(map(len, prompts)) / len(prompts):.0f})")
            pairs = [(a, b) for ra, rb in zip(results[True][0], results[False][0], strict=True)
                     for a, b in zip(ra, rb, strict=True)]
            same = sum(a == b for a, b in pairs)
            # A sample can part where its uniform falls within float rounding (~1e-6) of a CDF boundary.
            print(f"{name:<7}ratio   {results[False][1] / results[True][1]:>8.1f}x faster with the cache; "
                  f"{same}/{len(pairs)} samples identical on both paths")


if __name__ == "__main__":
    main()
