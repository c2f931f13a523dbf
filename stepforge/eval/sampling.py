"""Accuracy figures of a policy's samples: greedy, mean sample, majority vote, oracle, step errors."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import mean
from typing import Any

from stepforge.schema import Problem, Trajectory
from stepforge.search.vote import majority_vote
from stepforge.tasks import Task


def step_error_rate(trajectories: Sequence[Trajectory]) -> float | None:
    """Per-step error hazard: first errors / steps taken up to and including the first error.

    Steps after a trajectory's first error are off the correct path and are not counted, so
    this is P(step t is wrong | steps before t are right). None without ground truth.
    """
    errors = at_risk = 0
    for t in trajectories:
        if t.label_source != "truth":
            return None
        if t.first_error is None:
            at_risk += len(t.steps)
        else:
            errors += 1
            at_risk += t.first_error + 1
    return errors / at_risk if at_risk else None


def _by_problem(trajectories: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[t.problem_id].append(t)
    return groups


def sampling_report(problems: Sequence[Problem], sampled: Sequence[Trajectory], task: Task,
                    greedy: Sequence[Trajectory] = ()) -> dict[str, Any]:
    """Summary of ``sampled`` (several per problem) and optional ``greedy`` (one per problem)."""
    groups = _by_problem(sampled)
    greedy_by = {t.problem_id: t for t in greedy}
    rows = []
    for p in problems:
        samples = groups.get(p.id, [])
        if not samples:
            continue
        voted = majority_vote([t.final_answer for t in samples])
        rows.append({
            "n_steps": len(p.meta["ops"]) if "ops" in p.meta else None,
            "sample": mean(bool(t.correct) for t in samples),
            "majority": task.is_correct(p, voted),
            "oracle": any(t.correct for t in samples),
            "greedy": bool(greedy_by[p.id].correct) if p.id in greedy_by else None,
        })
    if not rows:
        raise ValueError("no sampled trajectories match the given problems")

    def summary(subset: list[dict]) -> dict[str, Any]:
        out = {"problems": len(subset),
               "sample_accuracy": mean(r["sample"] for r in subset),
               "majority_accuracy": mean(r["majority"] for r in subset),
               "oracle_accuracy": mean(r["oracle"] for r in subset)}
        if all(r["greedy"] is not None for r in subset):
            out["greedy_accuracy"] = mean(r["greedy"] for r in subset)
        return out

    report = summary(rows)
    report["samples_per_problem"] = round(len(sampled) / len(rows), 3)
    report["step_error_rate"] = step_error_rate(sampled)
    report["unparseable_rate"] = mean(bool(t.meta.get("unparseable")) for t in sampled)
    report["mean_generated_tokens"] = mean(t.cost.generated_tokens for t in sampled)
    by_steps: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if r["n_steps"] is not None:
            by_steps[r["n_steps"]].append(r)
    if by_steps:
        report["by_steps"] = {str(k): summary(v) for k, v in sorted(by_steps.items())}
    return report
