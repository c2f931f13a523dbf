"""Answer voting over sampled solutions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def majority_vote(answers: Sequence[str | None],
                  same: Callable[[str, str], bool] | None = None) -> str | None:
    """Most frequent answer (ties: the one seen first); None answers do not vote.

    With ``same`` answers are grouped by that equivalence (e.g. math equality) instead of
    string equality; each group is represented by its first member.
    """
    groups: list[tuple[str, int]] = []
    for a in answers:
        if a is None:
            continue
        for i, (rep, count) in enumerate(groups):
            if (same(rep, a) if same else rep == a):
                groups[i] = (rep, count + 1)
                break
        else:
            groups.append((a, 1))
    if not groups:
        return None
    return max(groups, key=lambda g: g[1])[0]  # max keeps the first of equal counts


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda s: s[-1],
    "prod": lambda s: math.prod(s),
    "mean": lambda s: sum(s) / len(s),
}


def aggregate(scores: Sequence[float], how: str) -> float:
    """Solution score from step scores (DESIGN.md §4): min, last, prod or mean."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose from {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[how](scores) if scores else 0.0


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """score(a) = Σ weights of solutions answering a; argmax (ties: first seen)."""
    totals: dict[str, float] = {}
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + w
    return max(totals, key=lambda a: totals[a]) if totals else None  # dict keeps first-seen order on ties
