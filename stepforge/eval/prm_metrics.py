"""PRM evaluation: ProcessBench first-error F1 with a calibrated threshold, step AUC, and
best-of-N selection by aggregated step scores vs majority vote, with bootstrap CIs."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import pairwise
from statistics import mean
from typing import Any

from stepforge.schema import Problem, Trajectory
from stepforge.search.vote import AGGREGATIONS, aggregate, majority_vote, weighted_vote


def predict_first_error(scores: Sequence[float], threshold: float) -> int | None:
    """First step whose score is below ``threshold`` (ProcessBench), None when none is."""
    return next((i for i, s in enumerate(scores) if s < threshold), None)


def first_error_f1(predicted: Sequence[int | None], gold: Sequence[int | None]) -> dict[str, float]:
    """ProcessBench: acc_err = exact first-error accuracy on erroneous samples, acc_ok = share
    of correct samples predicted error-free; F1 = 2·acc_err·acc_ok / (acc_err + acc_ok)."""
    err = [p == g for p, g in zip(predicted, gold, strict=True) if g is not None]
    ok = [p is None for p, g in zip(predicted, gold, strict=True) if g is None]
    acc_err = mean(err) if err else 0.0
    acc_ok = mean(ok) if ok else 0.0
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    return {"f1": f1, "acc_err": acc_err, "acc_ok": acc_ok, "n_err": len(err), "n_ok": len(ok)}


def calibrate_threshold(scores: Sequence[Sequence[float]], gold: Sequence[int | None],
                        grid: Sequence[float] | None = None) -> tuple[float, float]:
    """θ maximising first-error F1 on a dev split; returns (θ, F1). The grid defaults to the
    midpoints between distinct scores (every distinct decision), thinned to ≤ 400 quantiles
    of them (scores of any scale: probabilities or exp(log-probs) near 1e-8)."""
    if grid is None:
        values = sorted({s for row in scores for s in row})
        grid = [(a + b) / 2 for a, b in pairwise(values)]
        if len(grid) > 400:
            grid = [grid[int(i * (len(grid) - 1) / 399)] for i in range(400)]
        grid = [values[0] - 1e-12, *grid, values[-1] + 1e-12] if values else [0.5]
    best = (0.5, -1.0)
    for th in grid:
        f1 = first_error_f1([predict_first_error(s, th) for s in scores], gold)["f1"]
        if f1 > best[1]:
            best = (th, f1)
    return best


def step_auc(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[float | None]]) -> float | None:
    """AUC of step scores for good (label ≥ 0.5) vs bad steps (Mann–Whitney, ties count half)."""
    pairs = [(s, lab >= 0.5) for row_s, row_l in zip(scores, labels, strict=True)
             for s, lab in zip(row_s, row_l, strict=True) if lab is not None]
    pos = sum(1 for _, good in pairs if good)
    neg = len(pairs) - pos
    if not pos or not neg:
        return None
    pairs.sort(key=lambda x: x[0])
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2
        rank_sum += avg_rank * sum(1 for _, good in pairs[i:j] if good)
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _bootstrap(values: Sequence[float], rng: random.Random, resamples: int) -> tuple[float, float]:
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def best_of_n_table(problems: Sequence[Problem], trajectories: Sequence[Trajectory], scores: Sequence[Sequence[float]],
                    is_correct: Callable[[Problem, str | None], bool], resamples: int = 1000, seed: int = 0
                    ) -> dict[str, dict[str, float]]:
    """Accuracy (and 95% bootstrap CI over problems) of picking one of each problem's samples:
    PRM best-of-N per aggregation, PRM-weighted majority per aggregation, majority vote,
    oracle. Every method sees the same samples."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.problem_id].append(i)
    per_method: dict[str, list[float]] = defaultdict(list)
    for p in problems:
        idx = groups.get(p.id)
        if not idx:
            continue
        answers = [trajectories[i].final_answer for i in idx]
        for how in AGGREGATIONS:
            agg = [aggregate(scores[i], how) for i in idx]
            best = max(range(len(idx)), key=lambda j: agg[j])
            per_method[f"bon_{how}"].append(float(is_correct(p, answers[best])))
            per_method[f"weighted_{how}"].append(float(is_correct(p, weighted_vote(answers, agg))))
        per_method["majority"].append(float(is_correct(p, majority_vote(answers))))
        per_method["oracle"].append(float(any(trajectories[i].correct for i in idx)))
    rng = random.Random(seed)
    table: dict[str, dict[str, Any]] = {}
    for name, vals in per_method.items():
        lo, hi = _bootstrap(vals, rng, resamples)
        table[name] = {"accuracy": mean(vals), "ci_low": lo, "ci_high": hi, "problems": len(vals)}
    return table
