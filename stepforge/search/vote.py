"""Answer voting over sampled solutions."""

from __future__ import annotations

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
