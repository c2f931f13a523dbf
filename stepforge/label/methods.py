"""Step labels from rollouts (MC, binary search, OmegaPRM) and from exact step checkers.

Every labeler takes a batch of trajectories and returns them labeled, in the same order,
with ``cost`` = the rollouts and generated tokens spent on that trajectory (its sampling
tokens move to ``cost.sample_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stepforge.label.rollouts import Estimate, Query, RolloutEstimator
from stepforge.schema import Cost, LabelSource, Problem, Trajectory, truth_labels
from stepforge.tasks import Task


def problem_of(t: Trajectory, task: Task, problems: Mapping[str, Problem] | None) -> Problem:
    """The problem behind a trajectory: from ``problems`` by id, or rebuilt from the question
    when the task can (worlds, whose answer follows from the question)."""
    if problems and t.problem_id in problems:
        return problems[t.problem_id]
    if task.recover_problem is not None:
        try:
            return task.recover_problem(t.problem_id, t.question)
        except ValueError as err:
            raise ValueError(f"trajectory {t.id!r}: {err}") from None
    raise ValueError(f"trajectory {t.id!r}: problem {t.problem_id!r} not found; pass the problems file "
                     "(--problems) so labels can check answers")


def _labeled(t: Trajectory, labels: list[float | None], first_error: int | None, source: LabelSource,
             spent: Sequence[Estimate] = (), meta: dict[str, Any] | None = None) -> Trajectory:
    cost = Cost(rollouts=sum(e.rollouts for e in spent), generated_tokens=sum(e.generated_tokens for e in spent))
    cost.sample_tokens = t.cost.generated_tokens  # type: ignore[attr-defined]  # Cost allows extras
    return t.model_copy(update={"step_labels": labels, "first_error": first_error, "label_source": source,
                                "cost": cost, "meta": {**t.meta, **(meta or {})}})


def label_mc(trajectories: Sequence[Trajectory], problems: Sequence[Problem], est: RolloutEstimator, *,
             hard: bool = False, early_stop: bool = False) -> list[Trajectory]:
    """Math-Shepherd labels: from each prefix p_t, k rollouts, c correct;
    soft_t = c/k, hard_t = 1[c > 0]; the first error is the first t with c = 0.

    All prefixes of all trajectories go to the backend in one call. ``early_stop`` instead
    walks t = 1, 2, ... in waves and stops a trajectory at its first c = 0 prefix, labeling
    the rest 0 (hard labels after it are fixed; this is the honest MC baseline for cost).
    """
    spent: list[list[Estimate]] = [[] for _ in trajectories]
    values: list[list[float | None]] = [[None] * len(t.steps) for t in trajectories]
    if early_stop:
        alive = [i for i, t in enumerate(trajectories) if t.steps]
        depth = 0
        while alive:
            ests = est.estimate([Query(problems[i], tuple(trajectories[i].steps[:depth + 1])) for i in alive])
            still = []
            for i, e in zip(alive, ests, strict=True):
                spent[i].append(e)
                values[i][depth] = e.value
                if e.correct == 0:
                    values[i][depth + 1:] = [0.0] * (len(trajectories[i].steps) - depth - 1)
                elif depth + 1 < len(trajectories[i].steps):
                    still.append(i)
            alive, depth = still, depth + 1
    else:
        index = [(i, t) for i, tr in enumerate(trajectories) for t in range(len(tr.steps))]
        ests = est.estimate([Query(problems[i], tuple(trajectories[i].steps[:t + 1])) for i, t in index])
        for (i, t), e in zip(index, ests, strict=True):
            spent[i].append(e)
            values[i][t] = e.value
    out = []
    for i, tr in enumerate(trajectories):
        vals = [float(v) for v in values[i]]  # every entry is set above
        first = next((t for t, v in enumerate(vals) if v == 0.0), None)
        labels = [float(v > 0) for v in vals] if hard else vals
        out.append(_labeled(tr, labels, first, "mc", spent[i], {"mc_k": est.k}))
    return out


def label_binary(trajectories: Sequence[Trajectory], problems: Sequence[Problem], est: RolloutEstimator,
                 min_correct: int = 1) -> list[Trajectory]:
    """First error by binary search (OmegaPRM, Luo et al. 2024), all trajectories in lockstep.

    For a wrong trajectory of T steps: lo = 1, hi = T; while lo < hi: m = ⌊(lo+hi)/2⌋, estimate
    MC(p_m) with k rollouts; if MC(p_m) > 0 then lo = m + 1 else hi = m. First error (1-based)
    = lo: steps before it are labeled 1, it and every later step 0; the measured MC values go
    to ``meta.mc_probes``. Correct trajectories are labeled all 1 without rollouts. About
    k·log2(T) rollouts per wrong trajectory instead of k·T.

    With ``est.reuse`` this is OmegaPRM's search over its rollout tree: the batch's correct
    samples prove their prefixes good, a probe stops sampling once a correct continuation is
    known, and rollouts answer later probes of the prefixes they pass through.

    ``min_correct`` > 1 asks for that many correct rollouts before calling a prefix positive
    (the paper's rule is MC > 0, i.e. 1), guarding against compensating errors.
    """
    for p, t in zip(problems, trajectories, strict=True):
        if est.reuse and t.correct:
            est.prove(p, t.steps)
    wrong = {i: (1, len(t.steps)) for i, t in enumerate(trajectories) if not t.correct and t.steps}
    found = binary_search(est, [(problems[i], trajectories[i].steps, lo, hi) for i, (lo, hi) in wrong.items()],
                          min_correct)
    results = dict(zip(wrong, found, strict=True))
    out = []
    for i, t in enumerate(trajectories):
        first, spent, probes = results.get(i, (None, [], {}))
        source: LabelSource = "omegaprm" if est.reuse else "binary"
        out.append(_labeled(t, truth_labels(len(t.steps), first), first, source, spent,
                            {"mc_probes": {str(m): v for m, v in sorted(probes.items())}, "mc_k": est.k}))
    return out


SearchResult = tuple[int, list[Estimate], dict[int, float]]


def binary_search(est: RolloutEstimator, searches: Sequence[tuple[Problem, Sequence[str], int, int]],
                  min_correct: int = 1) -> list[SearchResult]:
    """Lockstep binary searches. Each search is (problem, steps, lo, hi) with 1-based prefix
    lengths: p_{lo-1} is known good and p_hi known bad. Returns the 0-based first error, the
    estimates spent and the MC value of each probed prefix length."""
    bounds = [[lo, hi] for _, _, lo, hi in searches]
    spent: list[list[Estimate]] = [[] for _ in searches]
    probes: list[dict[int, float]] = [{} for _ in searches]
    while True:
        active = [j for j, (lo, hi) in enumerate(bounds) if lo < hi]
        if not active:
            break
        mids = {j: (bounds[j][0] + bounds[j][1]) // 2 for j in active}
        ests = est.estimate([Query(searches[j][0], tuple(searches[j][1][:mids[j]])) for j in active],
                            stop_when_positive=est.reuse and min_correct == 1)
        for j, e in zip(active, ests, strict=True):
            spent[j].append(e)
            probes[j][mids[j]] = round(e.value, 6)
            if e.correct >= min_correct:
                bounds[j][0] = mids[j] + 1
            else:
                bounds[j][1] = mids[j]
    return [(bounds[j][0] - 1, spent[j], probes[j]) for j in range(len(searches))]


def label_truth(trajectories: Sequence[Trajectory], problems: Sequence[Problem], task: Task) -> list[Trajectory]:
    """Labels from the task's step checker: exact for the world; for GSM8K-style text the
    first wrong calculator annotation or equation (a lower bound: logic errors are not seen)."""
    if task.first_error is None:
        raise ValueError(f"task {task.name!r} has no step checker for truth labels")
    out = []
    for t, p in zip(trajectories, problems, strict=True):
        first = task.first_error(p, t.steps) if t.steps else None
        kind = "exact" if task.truth_is_exact else "arithmetic lower bound"
        out.append(_labeled(t, truth_labels(len(t.steps), first), first, "truth", meta={"truth_kind": kind}))
    return out
