"""
Fixed data preparation and evaluation for the autoresearch grpo target (GRPO with LoRA on math word problems,
rewarded by the verifiable grader).

The agent edits train.py; this file is fixed (the harness hashes it), as are the kit modules beside it:
arpost.py (the prepared data, the evaluation and this command line, shared with sft and dpo), arsample.py
(batched sampling with a KV cache), arbase.py (the base, adapters, generation), armath.py (the data and the
answer convention, which train.py's reward uses too) and arkit.py (the channel, atomic writes, manifests).

    python prepare.py --data offline-math:levels=1-2   # once: tokenize train/val/test for the session's base,
                                                       # and score the base itself on the evaluation items
    python train.py                                    # GRPO for the time budget; saves the adapter
    python prepare.py --evaluate [CHECKPOINT_DIR]      # val_accuracy of the adapter (the harness runs it)
    python prepare.py --evaluate-heldout [DIR]         # heldout_accuracy on the test split (kept runs)

The prepared data is sft's (arpost): <cache>/posttrain/<base fp16>-<data fp16>/, keyed by both fingerprints,
shared with sft and dpo sessions on the same base and data. GRPO uses the prompts and gold answers of the
train split only; its completions are the policy's own samples, drawn in train.py.

The evaluation (a process of its own; train.py is never imported) is sft's: the adapter in
$AUTORESEARCH_CHECKPOINT applied to the base, greedy answers to the first EVAL_ITEMS validation items, exact
match of the extracted answer -> val_accuracy through the result channel; val_nll, format_rate,
mean_completion_len and base_accuracy beside it. The training reward lives in train.py and may be edited:
the metric never reads it, so a reward that is easier to earn than a right answer gains nothing.

Environment: as sft's (AUTORESEARCH_CACHE_DIR, AUTORESEARCH_DATA, AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_SEED,
AUTORESEARCH_CHECKPOINT, AUTORESEARCH_RESULT_FILE).
"""

import sys

import arpost
from arpost import (  # noqa: F401  (what train.py and the tests import from here)
    CHECKPOINT_DIR,
    EVAL_ITEMS,
    MAX_LEN,
    SEED,
    TIME_BUDGET,
    Prepared,
    Rows,
    evaluate,
    load_prepared,
    make_batch,
    score,
)

arpost.set_target("grpo")  # the data this target prepared last for the base is its own default

if __name__ == "__main__":
    sys.exit(arpost.command_line(target="grpo", default_data="offline-math:levels=1-2"))
