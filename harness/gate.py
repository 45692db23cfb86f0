"""Noise-aware keeps: calibrating the noise floor and confirming a gain on more seeds.

The controller passes in `sample(i)`, which runs the experiment once more with seed
`cfg.seed + i` and returns a `Sample`; everything else here is statistics and bookkeeping,
so the rules are tested with a scripted sampler and no processes.

The gate (README "Noise-aware keeps"): a candidate that beat the best on its first run is
run again, always (one lucky run is what the winner's curse keeps), and up to `confirm`
re-runs in all, stopping as soon as the verdict is clear. It is kept only when the mean
gain reaches `min_effect_sigma` standard errors of the difference between its mean and the
best's: min_effect * sigma * sqrt(1/n + 1/m) for n runs of the candidate and m of the best.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.contention import Machine, measure
from harness.decision import Decision
from harness.ledger import Calibration, Segment
from harness.runner import RunResult
from harness.stats import Direction, gain, gate_threshold, mad_sigma, median, pooled_sd, z_score

Say = Callable[[str], None]


@dataclass(frozen=True)
class Sample:
    """One run of an experiment (one seed) and what it produced."""

    seed: int
    res: RunResult
    metrics: dict[str, float]
    failure: str | None  # crash reason
    checks_failure: str | None  # the first post-run check that failed (harness.checks)
    notes: dict[str, Any]  # integrity notes for the ASI
    channel_failure: str | None = None  # the result channel's own verdict (several evaluations), judged by the checks
    train_s: float | None = None  # with a separate evaluation process: the run's own wall time (its training)
    eval_s: float | None = None  # that evaluation's wall time, which never counts against the budget
    tampered: tuple[str, ...] = ()  # fixed files the run changed in its own checkout
    contended: str | None = None  # why the machine, not the code, made this sample (harness.contention)

    @property
    def machine(self) -> Machine:
        """What the machine gave the run (its own process: the training, never the evaluation)."""
        return measure(self.res.cpu_s, self.res.wall_s, self.res.gpu_others, self.metrics)

    def value(self, metric: str) -> float | None:
        """The sample's metric, None when it cannot count: failed, or measured on a contended machine."""
        return None if self.failure or self.checks_failure or self.contended else self.metrics.get(metric)

    def as_dict(self, metric: str) -> dict[str, Any]:
        return {"seed": self.seed, "metric": self.metrics.get(metric), "wall_s": round(self.res.wall_s, 3),
                "exit_code": self.res.exit_code, "log": self.res.log_path.name,
                "cpu_share": self.machine.as_dict()["cpu_share"], **({"contended": self.contended} if self.contended else {})}


@dataclass(frozen=True)
class GateRules:
    min_effect_sigma: float
    confirm: int  # re-runs allowed, >= 1
    tolerance: float
    direction: Direction


def _failed(x: Sample, metric: str) -> str | None:
    if x.failure or x.checks_failure:
        return x.failure or x.checks_failure
    if x.contended:
        return f"contended: {x.contended}"
    return None if x.value(metric) is not None else f"no {metric}"


def calibrate(first: Sample, sample: Callable[[int], Sample], *, runs: int, metric: str,
              say: Say) -> tuple[list[Sample], Decision, dict[str, Any] | None]:
    """Run the baseline `runs` times in all. Returns the samples, the baseline's decision and the
    calibration entry for the ledger (None when a run failed: then the baseline is a crash)."""
    samples = [first]
    for i in range(1, runs):
        say(f"       calibrating the noise floor: baseline run {i + 1} of {runs}")
        x = sample(i)
        samples.append(x)
        why = _failed(x, metric)
        if why:
            return samples, Decision("crash", f"calibration run {i + 1} (seed {x.seed}) failed: {why}"), None
    values = [v for v in (x.value(metric) for x in samples) if v is not None]
    sigma = mad_sigma(values)
    entry = {"type": "calibration", "n": len(values), "seeds": [x.seed for x in samples], "values": values,
             "median": median(values), "sigma": sigma, "method": "1.4826 * MAD (robust sigma)"}
    return samples, Decision("keep", f"baseline, mean of {len(values)} seeds; noise sigma {sigma:.3g}"), entry


def replicate_groups(seg: Segment) -> list[list[float]]:
    """Every repeated measurement of the segment: the calibration's values and the runs of each
    earlier candidate measured more than once. They all inform the noise estimate."""
    groups = [list(seg.calibration.raw.get("values") or [])] if seg.calibration else []
    for r in seg.runs:
        if r.raw.get("samples") and not r.raw.get("baseline"):
            groups.append([x["metric"] for x in r.raw["samples"]
                           if isinstance(x.get("metric"), int | float) and not x.get("contended")])
    return groups


def confirm(first: Sample, decision: Decision, sample: Callable[[int], Sample], *, rules: GateRules, metric: str,
            best: float, best_n: int, calibration: Calibration, replicates: list[list[float]], first_seed: int,
            say: Say) -> tuple[list[Sample], Decision, dict[str, Any]]:
    """Decide a candidate whose first run beat the best. Returns its samples, the decision and the
    evidence (n, mean, sigma, gain, threshold, z) for the ledger."""
    samples = [first]
    k = rules.min_effect_sigma

    def evidence(vals: list[float]) -> dict[str, Any]:
        # A handful of calibration runs can put MAD sigma several times too low, and an underestimate
        # lets noise through: use the pooled SD of every repeat too, whichever is larger.
        pooled, df = pooled_sd([*replicates, vals])
        sigma = max(calibration.sigma, pooled)
        n, mean = len(vals), statistics.fmean(vals)
        g = gain(mean, best, rules.direction)
        return {"n": n, "mean": mean, "best": best, "best_n": best_n, "sigma": sigma, "gain": g,
                "sigma_calibration": calibration.sigma, "sigma_pooled": pooled, "sigma_df": df,
                "threshold": gate_threshold(sigma, n, best_n, k) if sigma > 0 else 0.0, "min_effect_sigma": k,
                "z": z_score(g, sigma, n, best_n)}

    ev = evidence([first.value(metric) or 0.0])
    if ev["sigma"] == 0:
        return samples, decision, ev  # no noise measured: deterministic runs, one sample is the truth
    for i in range(1, rules.confirm + 1):
        say(f"       gain {ev['gain']:.4g} over {ev['n']} run(s) (threshold {ev['threshold']:.4g}): "
            f"confirming with seed {first_seed + i}")
        x = sample(i)
        samples.append(x)
        why = _failed(x, metric)
        if why:
            return samples, Decision("discard", f"not confirmed: confirmation run {i + 1} failed ({why})"), ev
        ev = evidence([v for v in (s.value(metric) for s in samples) if v is not None])
        if ev["gain"] >= ev["threshold"]:
            return samples, Decision("keep", f"confirmed over {ev['n']} runs: mean gain {ev['gain']:.4g} >= "
                                             f"threshold {ev['threshold']:.4g} (z={ev['z']:.2f})", ev["gain"]), ev
        if ev["gain"] <= rules.tolerance:
            break  # no better than the best any more: more runs will not rescue it
    return samples, Decision("discard", f"not confirmed: mean gain {ev['gain']:.4g} over {ev['n']} run(s) is under "
                                        f"the noise threshold {ev['threshold']:.4g} ({k:g} standard errors, sigma "
                                        f"{ev['sigma']:.3g})", ev["gain"]), ev
