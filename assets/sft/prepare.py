"""
Fixed data preparation and evaluation for the autoresearch sft target (LoRA supervised fine-tuning on math).

The agent edits train.py; this file is fixed (the harness hashes it), as are the kit modules beside it:
arpost.py (the prepared data, the evaluation and this command line, shared with the dpo and grpo targets),
arbase.py (the base model, adapters, generation), armath.py (the math data and the answer convention) and
arkit.py (the result channel, atomic writes, manifests).

    python prepare.py --data offline-math:levels=1   # once: tokenize train/val/test for the session's base,
                                                     # and score the base itself on the evaluation items
    python train.py                                  # LoRA SFT for the time budget; saves the adapter
    python prepare.py --evaluate [CHECKPOINT_DIR]    # val_accuracy of the adapter (the harness runs it)
    python prepare.py --evaluate-heldout [DIR]       # heldout_accuracy on the test split (kept runs)

The base is the workspace's base.json (written by `autoresearch init --base`); the data spec is what
`--data` names (armath: offline-math[:options], gsm8k, gsm8k-platinum, or a local .jsonl/.parquet). Prepared
data lives in <cache>/posttrain/<base fp16>-<data fp16>/, keyed by both fingerprints and shared with dpo and
grpo sessions on the same base and data: per split the token ids of each row (prompt, then completion and the
end token; rows longer than MAX_LEN are cut from the right, as tinker-cookbook does), each row's prompt length
(the loss weights are 0 there and 1 on the completion), and the items (id, gold answer) the evaluation
scores. The manifest records rows, skipped rows (gold that did
not parse), contaminated items (an evaluation question also in train: refused, never scored), completion
tokens and truncations. It also holds the base model's own scores on the same evaluation items (computed
here, once: the runs' cache is read-only), so every run reports before (base_accuracy) and after.

The evaluation (a process of its own; train.py is never imported): the saved adapter (or merged weights) in
$AUTORESEARCH_CHECKPOINT applied to the base (arbase.load_adapted), greedy generation on the first EVAL_ITEMS
validation items, exact match of the extracted answer (armath) -> val_accuracy, the primary metric, through
the result channel; secondary: val_nll (mean NLL per completion token, teacher-forced), format_rate (an
answer could be extracted), mean_completion_len (generated tokens), base_accuracy. `autoresearch status` prints
the data line prepare writes (arpost.write_status).

Environment (all optional): AUTORESEARCH_CACHE_DIR (cache root), AUTORESEARCH_DATA (the data spec train.py
and the evaluation use; default: the one prepared last for this base), AUTORESEARCH_TIME_BUDGET (training
seconds, default 300), AUTORESEARCH_SEED (default 42), AUTORESEARCH_CHECKPOINT (where train.py saves the
adapter and the evaluation reads it), AUTORESEARCH_RESULT_FILE (the harness's channel, for --evaluate).
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
    prepare,
    score,
)

arpost.set_target("sft")  # the data this target prepared last for the base is its own default

if __name__ == "__main__":
    sys.exit(arpost.command_line(target="sft", default_data="offline-math:levels=1"))
