"""
Fixed data preparation, rollouts and evaluation for the autoresearch dpo target (DPO on the base's own
graded samples, correctness first).

The agent edits train.py; this file is fixed (the harness hashes it), as are the kit modules beside it:
arpost.py (the prepared data, the evaluation and the command line, shared with sft and grpo), arsample.py
(batched sampling with a KV cache, sequence log-probs), arpairs.py (grading and the pair rules), arbase.py
(the base, adapters, generation), armath.py (the data and the answer convention), arkit.py (the channel,
atomic writes, manifests).

    python prepare.py --data offline-math:levels=1-2   # once: the data (arpost), then the rollouts and pairs
    python train.py                                    # DPO for the time budget; saves the adapter
    python prepare.py --evaluate [CHECKPOINT_DIR]      # val_accuracy + heldout_pref_accuracy (the harness)
    python prepare.py --evaluate-heldout [DIR]         # heldout_accuracy on the test split (kept runs)

Rollouts: the session's base (the base policy: typically an SFT session's best run, merged into a base by
`init --base <sft session>`) samples ROLLOUT_K completions for each of the first ROLLOUT_QUESTIONS training
questions (arsample.sample: temperature ROLLOUT_TEMPERATURE, top-p ROLLOUT_TOP_P, at most MAX_NEW_TOKENS new
tokens, seed ROLLOUT_SEED), and for the first EVAL_ITEMS validation questions (the held-out pairs). Each
completion is graded (armath) and each question's group becomes preference pairs (arpairs.build_pairs:
correct vs incorrect first, then a coherence preference among correct ones; pair_type recorded). The flags
--k, --temperature, --questions and --rollout-seed change the settings for a session.

The pair set lives in <cache>/posttrain/<base fp16>/dpo-pairs-<fp16>/ (train.pairs.jsonl, val.pairs.jsonl,
manifest.json), keyed by the base's fingerprint, the prepared data's fingerprint and every setting above
(and PAIRS_FORMAT), so every experiment of a session trains on the same pairs and a second prepare samples
nothing. train.py reads the train pairs only (load_pairs); the val pairs are the evaluation's.

The evaluation (a process of its own; train.py is never imported): the adapter in $AUTORESEARCH_CHECKPOINT
merged into the base; greedy accuracy on the first EVAL_ITEMS validation items -> val_accuracy, the primary
metric (arpost.evaluate, as sft's), through the result channel; secondary: heldout_pref_accuracy, the
fraction of held-out pairs whose chosen completion gains more log-probability over the base than the
rejected one (log pi(c) - log pi_ref(c) > log pi(r) - log pi_ref(r), strict, as TRL's rewards/accuracies),
heldout_pref_margin (the mean of that difference, nats), plus arpost's val_nll, format_rate,
mean_completion_len and base_accuracy.

`autoresearch status` prints the lines prepare writes: the data, the pairs by type, the questions with no
pair, the held-out pairs and the rollouts' settings and speed.

Environment: as sft's (AUTORESEARCH_CACHE_DIR, AUTORESEARCH_DATA, AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_SEED,
AUTORESEARCH_CHECKPOINT, AUTORESEARCH_RESULT_FILE).
"""

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass

import arbase
import arkit
import arpairs
import arpost
import arsample
import numpy as np
import torch
from arpost import (  # noqa: F401  (what train.py and the tests import from here)
    CHECKPOINT_DIR,
    EVAL_ITEMS,
    MAX_LEN,
    MAX_NEW_TOKENS,
    ON_CUDA,
    SEED,
    TIME_BUDGET,
    Prepared,
    Rows,
    load_prepared,
    make_batch,
)

arpost.set_target("dpo")

# ---------------------------------------------------------------------------
# Rollout and pair settings (fixed per session; the pair cache is keyed by them)
# ---------------------------------------------------------------------------

ROLLOUT_K = 8  # completions per question (TRL's num_generations default; more finds more mixed groups)
ROLLOUT_TEMPERATURE = 1.0  # the base policy's own distribution (tinker-cookbook and TRL sample at 1.0)
ROLLOUT_TOP_P = 1.0
ROLLOUT_QUESTIONS = 2000 if ON_CUDA else 512  # the first N training questions are sampled
ROLLOUT_SEED = 0
ROLLOUT_CHUNK = 64 if ON_CUDA else 32  # questions per sample() call (progress, and the seed of each chunk)
PAIR_SETTINGS = arpairs.PairSettings()  # caps per question, the coherence proxy's length weight and least gap
PAIRS_FORMAT = 1
PAIRS_DIR = "dpo-pairs"


@dataclass(frozen=True)
class RolloutSettings:
    k: int = ROLLOUT_K
    temperature: float = ROLLOUT_TEMPERATURE
    top_p: float = ROLLOUT_TOP_P
    max_new_tokens: int = MAX_NEW_TOKENS
    questions: int = ROLLOUT_QUESTIONS
    heldout_questions: int = EVAL_ITEMS
    seed: int = ROLLOUT_SEED
    chunk: int = ROLLOUT_CHUNK


def pairs_key(base_fingerprint: str, data_fingerprint: str, settings: RolloutSettings,
              pair_settings: arpairs.PairSettings = PAIR_SETTINGS) -> str:
    """The pair set's fingerprint: the base, the prepared data and every setting it depends on."""
    parts = [f"{k}={v}" for k, v in sorted({**asdict(settings), **asdict(pair_settings)}.items())]
    return arkit.fingerprint(base_fingerprint, data_fingerprint, f"pairs-format={PAIRS_FORMAT}", *parts)


def _base_dir(base_fingerprint: str) -> str:
    return os.path.join(arpost.POSTTRAIN_DIR, base_fingerprint[:16])


def pairs_dir(base_fingerprint: str, key: str) -> str:
    return os.path.join(_base_dir(base_fingerprint), f"{PAIRS_DIR}-{key[:16]}")


LAST_PAIRS = "last_pairs-dpo"  # which pair set this base's dpo sessions train on: the one prepared last


# ---------------------------------------------------------------------------
# Reading the pairs (train.py: the train split only)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSet:
    """Preference pairs as token rows: row 2i is pair i's prompt + chosen completion, row 2i+1 its prompt +
    rejected completion (the end token appended to a finished completion: stopping is part of what is
    preferred); `pairs` the records (question id, pair_type, texts, coherence scores)."""

    pairs: tuple[arpairs.Pair, ...]
    rows: Rows

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices, device, max_len: int = MAX_LEN):
        """(x, y, w) of pairs `indices`, interleaved (even rows chosen, odd rejected, as tinker-cookbook's DPO):
        w is 1 on each completion's tokens (and its end token), 0 on the prompt and the padding."""
        return make_batch(self.rows, [r for i in indices for r in (2 * i, 2 * i + 1)], device, max_len)


def pair_rows(pairs, eos_id: int) -> Rows:
    tokens: list[int] = []
    offsets, prompt_lens = [0], []
    for p in pairs:
        for t in (p.chosen, p.rejected):
            completion = [*t.tokens, eos_id] if t.finished else list(t.tokens)
            tokens.extend([*p.prompt, *completion])
            offsets.append(len(tokens))
            prompt_lens.append(len(p.prompt))
    ids = tuple(p.question_id for p in pairs for _ in (0, 1))
    return Rows(np.asarray(tokens, dtype=np.int32), np.asarray(offsets, dtype=np.int64),
                np.asarray(prompt_lens, dtype=np.int32), ids, ("",) * len(ids))


def _current_pairs_dir(base_fingerprint: str) -> str:
    try:
        with open(os.path.join(_base_dir(base_fingerprint), LAST_PAIRS), encoding="utf-8") as f:
            return os.path.join(_base_dir(base_fingerprint), f.read().strip())
    except OSError:
        sys.exit("error: no preference pairs for this base; run `python prepare.py --data ...` first")


def load_pairs(split: str = "train") -> PairSet:
    """The session's pair set (the one prepared last for this base): train (what train.py trains on) or val
    (the evaluation's held-out pairs). Exits with one line when there is none."""
    info = arpost.session_base_info()
    directory = _current_pairs_dir(str(info.get("fingerprint", "")))
    manifest = arkit.read_manifest(directory)
    if manifest is None:
        sys.exit(f"error: the pair set {directory} is incomplete; run `python prepare.py --data ...` again")
    pairs = arpairs.load_pairs(os.path.join(directory, f"{split}.pairs.jsonl"))
    return PairSet(tuple(pairs), pair_rows(pairs, int(manifest["eos_id"])))


# ---------------------------------------------------------------------------
# Rollouts and pairs (prepare)
# ---------------------------------------------------------------------------


def _chunk_seed(seed: int, split: str, start: int) -> int:
    """Each chunk's sampling seed: a hash of the session seed, the split and the chunk's first question."""
    return int(arkit.fingerprint(str(seed), split, str(start))[:12], 16)


def rollouts(base: arbase.Base, rows: Rows, n: int, settings: RolloutSettings, split: str):
    """(trajectories, pairs) for each of the first n questions of `rows`, and the samples per second."""
    count = min(n, len(rows))
    progress = arkit.Progress(f"rollouts {split}", count * settings.k, " samples")
    groups = []
    t0 = time.time()
    for start in range(0, count, settings.chunk):
        indices = list(range(start, min(start + settings.chunk, count)))
        prompts = [rows.prompt(i) for i in indices]
        samples = arsample.sample(base.model, base, prompts, n=settings.k, temperature=settings.temperature,
                                  top_p=settings.top_p, max_new_tokens=settings.max_new_tokens,
                                  seed=_chunk_seed(settings.seed, split, start))
        for i, prompt, group in zip(indices, prompts, samples, strict=True):
            trajectories = [arpairs.grade(s.tokens, base.tok.decode(s.tokens), s.finished, rows.golds[i])
                            for s in group]
            groups.append((trajectories, arpairs.build_pairs(rows.ids[i], prompt, trajectories, PAIR_SETTINGS)))
        progress.update(len(indices) * settings.k)
    progress.close()
    return groups, count * settings.k / max(time.time() - t0, 1e-9)


def prepare_pairs(prepared: Prepared, settings: RolloutSettings, force: bool = False) -> dict:
    """The session's pair set, sampled once (or found in the cache); returns its manifest. Raises
    arpost.PrepareError when the rollouts give no training pair at all."""
    base_fp = str(prepared.manifest["base_fingerprint"])
    key = pairs_key(base_fp, prepared.fingerprint, settings)
    directory = pairs_dir(base_fp, key)
    manifest = arkit.read_manifest(directory)
    if manifest is None or force:
        manifest = _sample_pairs(prepared, settings, key, directory)
    else:
        arkit.echo(f"Pairs: already sampled for this base and these settings at {directory}")
    arkit.atomic_write_text(os.path.join(_base_dir(base_fp), LAST_PAIRS), os.path.basename(directory))
    return manifest


def _sample_pairs(prepared: Prepared, settings: RolloutSettings, key: str, directory: str) -> dict:
    t0 = time.time()
    base = arbase.load_base(arpost.WORKSPACE, device="cuda" if ON_CUDA else "cpu")
    arkit.echo(f"Rollouts: {settings.k} per question, temperature {settings.temperature:g}, top-p "
               f"{settings.top_p:g}, at most {settings.max_new_tokens} new tokens, seed {settings.seed}")
    counts, speed = {}, {}
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", settings.questions), ("val", settings.heldout_questions)):
        groups, speed[split] = rollouts(base, prepared.rows(split), n, settings, split)
        counts[split] = arpairs.summarize(groups)
        if split == "train" and not counts[split].pairs:
            raise arpost.PrepareError(arpairs.no_pairs_reason(
                counts[split], "raise --k or --temperature, or prepare other data (a harder offline-math level)"))
        arpairs.save_pairs(os.path.join(directory, f"{split}.pairs.jsonl"), [p for _, ps in groups for p in ps])
        arkit.echo(f"  {counts[split].line(split)} ({speed[split]:.1f} samples/s)")
    manifest = {
        "format": PAIRS_FORMAT, "fingerprint": key, "base_fingerprint": prepared.manifest["base_fingerprint"],
        "data": prepared.data, "data_fingerprint": prepared.fingerprint, "eos_id": base.tok.eos_id,
        "rollouts": asdict(settings), "pair_settings": asdict(PAIR_SETTINGS),
        "samples_per_s": speed, "seconds": time.time() - t0,
        "counts": {s: {**asdict(c), "pairs": c.pairs} for s, c in counts.items()},
    }
    arkit.write_manifest(directory, manifest)
    arkit.echo(f"Pairs: sampled in {time.time() - t0:.1f}s at {directory}")
    return manifest


def status_lines(manifest: dict) -> list[str]:
    """What `autoresearch status` prints about the pairs."""
    lines = []
    for split in ("train", "val"):
        c = manifest["counts"][split]
        kinds = ", ".join(f"{k} {c['by_type'].get(k, 0):,}" for k in arpairs.PAIR_TYPES)
        if split == "train":
            lines.append(f"pairs: {c['pairs']:,} train ({kinds}), {c['no_pair']:,} of {c['questions']:,} questions "
                         f"with no pair ({c['all_correct']:,} all right, {c['all_wrong']:,} all wrong); held-out "
                         f"{manifest['counts']['val']['pairs']:,}")
        acc = c["correct_samples"] / max(1, c["samples"])
        clipped = c["clipped_samples"] / max(1, c["samples"])
        lines.append(f"rollouts {split}: {c['samples']:,} samples, {acc:.3f} correct, {clipped:.3f} clipped, "
                     f"{manifest['samples_per_s'][split]:.1f} samples/s")
    r = manifest["rollouts"]
    lines.append(f"rollout settings: K={r['k']}, temperature {r['temperature']:g}, top-p {r['top_p']:g}, "
                 f"{r['max_new_tokens']} new tokens, seed {r['seed']}")
    return lines


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=ROLLOUT_K, help=f"completions per question (default {ROLLOUT_K})")
    parser.add_argument("--temperature", type=float, default=ROLLOUT_TEMPERATURE,
                        help=f"sampling temperature of the rollouts (default {ROLLOUT_TEMPERATURE:g})")
    parser.add_argument("--questions", type=int, default=ROLLOUT_QUESTIONS,
                        help=f"training questions to sample, the first N (default {ROLLOUT_QUESTIONS})")
    parser.add_argument("--rollout-seed", type=int, default=ROLLOUT_SEED, help="the rollouts' seed")


def _on_prepared(prepared: Prepared, args: argparse.Namespace) -> list[str]:
    if args.k < 2 or not args.temperature >= 0 or args.questions < 1:
        raise arpost.PrepareError("--k must be at least 2, --temperature >= 0 and --questions >= 1")
    settings = RolloutSettings(k=args.k, temperature=args.temperature, questions=args.questions,
                               seed=args.rollout_seed)
    return status_lines(prepare_pairs(prepared, settings, args.force))


# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE: this is the fixed metric)
# ---------------------------------------------------------------------------

PAIR_BATCH = 16  # pairs per forward in the evaluation (the result does not depend on it)


@torch.no_grad()
def pair_logratios(model, reference, pairs: PairSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-ratios log pi(y) - log pi_ref(y) of every pair, summed over completion tokens."""
    device = arbase._device(model)
    chosen, rejected = [], []
    for k in range(0, len(pairs), PAIR_BATCH):
        x, y, w = pairs.batch(range(k, min(k + PAIR_BATCH, len(pairs))), device)
        diff = arsample.sequence_logprobs(model, x, y, w) - arsample.sequence_logprobs(reference, x, y, w)
        chosen.append(diff[0::2].float().cpu())
        rejected.append(diff[1::2].float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(model, base: arbase.Base, prepared: Prepared, split: str) -> dict[str, float]:
    """heldout_pref_accuracy and heldout_pref_margin on the held-out (val) pairs; none on other splits."""
    if split != "val":
        return {}
    pairs = load_pairs("val")
    if not len(pairs):
        arkit.echo("held-out pairs: none (every held-out question's samples were all right or all wrong)")
        return {}
    chosen, rejected = pair_logratios(model, base.model, pairs)
    return {"heldout_pref_accuracy": float((chosen > rejected).float().mean()),
            "heldout_pref_margin": float((chosen - rejected).mean()), "heldout_pairs": float(len(pairs))}


if __name__ == "__main__":
    sys.exit(arpost.command_line(
        target="dpo", default_data="offline-math:levels=1-2",
        description="Prepare math data and the base's preference pairs for this session (once), or evaluate a "
        "run's adapter.", add_arguments=_add_arguments, on_prepared=_on_prepared, extra_metrics=pair_metrics))
