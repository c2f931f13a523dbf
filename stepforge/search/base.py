"""What every search method shares: the scorer protocol, the result with its compute, and
best-of-N style selection over whole samples.

Every method has the signature ``method(problems, policy, scorer, task, n, *, seed, ...)``,
works on all problems at once (batched backend and PRM calls), and returns one
:class:`SearchResult` per problem, with the answer, a trace and the compute it used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepforge.backends.base import GenerationCost, Policy
from stepforge.sample import sample_trajectories
from stepforge.schema import Problem, Trajectory
from stepforge.search.vote import aggregate, majority_vote, weighted_vote
from stepforge.tasks import Task


class Scorer(Protocol):
    """Anything that scores every step of trajectories in [0, 1] (PRMs, adapters, implicit PRMs)."""

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]: ...


@dataclass
class SearchCost:
    generated_tokens: int = 0
    prompt_tokens: int = 0
    policy_calls: int = 0
    prm_calls: int = 0
    prm_sequences: int = 0  # trajectories scored (one forward pass each)
    wall_seconds: float = 0.0

    def add_generation(self, cost: GenerationCost) -> None:
        self.generated_tokens += cost.generated_tokens
        self.prompt_tokens += cost.prompt_tokens
        self.policy_calls += 1

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class SearchResult:
    problem_id: str
    answer: str | None
    correct: bool
    steps: list[str]
    cost: SearchCost
    trace: dict[str, Any] = field(default_factory=dict)

    def as_record(self, method: str, n: int) -> dict[str, Any]:
        return {"problem_id": self.problem_id, "method": method, "n": n, "answer": self.answer,
                "correct": self.correct, "steps": self.steps, "cost": self.cost.as_dict(), "trace": self.trace}


def scorable(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The trajectories, an empty one standing in as one step "?" so that every trajectory gets
    a score (a PRM has nothing to read in no steps)."""
    return [t if t.steps else t.model_copy(update={"steps": ["?"], "step_labels": []}) for t in trajectories]


def score_unique(scorer: Scorer, trajectories: Sequence[Trajectory], cost: SearchCost) -> list[list[float]]:
    """Scores of ``trajectories``, running the scorer once per distinct (problem, steps) (samples
    repeat often when the policy is confident) and counting the PRM work in ``cost``."""
    index: dict[tuple[str, tuple[str, ...]], int] = {}
    unique: list[Trajectory] = []
    for t in trajectories:
        key = (t.problem_id, tuple(t.steps))
        if key not in index:
            index[key] = len(unique)
            unique.append(t)
    scores = scorer.score(unique) if unique else []
    cost.prm_calls += 1
    cost.prm_sequences += len(unique)
    return [scores[index[(t.problem_id, tuple(t.steps))]] for t in trajectories]


def split_cost(total: SearchCost, n_problems: int) -> SearchCost:
    """A batched run's compute, shared equally by its problems."""
    k = max(1, n_problems)
    return SearchCost(total.generated_tokens // k, total.prompt_tokens // k, total.policy_calls, total.prm_calls,
                      total.prm_sequences // k, total.wall_seconds / k)


def sample_and_score(problems: Sequence[Problem], policy: Policy, scorer: Scorer | None, task: Task, n: int,
                     seed: int, max_new_tokens: int = 256, temperature: float = 1.0
                     ) -> tuple[list[list[Trajectory]], list[list[list[float]]], SearchCost]:
    """n whole solutions per problem (one backend call) and their step scores (one PRM call)."""
    cost = SearchCost()
    start = time.perf_counter()
    batch = next(sample_trajectories(policy, problems, task, n=n, seed=seed, max_new_tokens=max_new_tokens,
                                     batch_problems=len(problems), temperature=temperature))
    cost.add_generation(batch.cost)
    flat = [t for t in batch.trajectories if t.steps]
    scores_flat: list[list[float]] = []
    if scorer is not None and flat:
        scores_flat = score_unique(scorer, flat, cost)
    by_id = {t.id: s for t, s in zip(flat, scores_flat, strict=False)}
    groups = [batch.trajectories[i * n:(i + 1) * n] for i in range(len(problems))]
    scores = [[by_id.get(t.id, [0.0]) for t in g] for g in groups]
    cost.wall_seconds = time.perf_counter() - start
    return groups, scores, cost


def select(problem: Problem, samples: list[Trajectory], scores: list[list[float]], task: Task, rule: str,
           aggregation: str = "min") -> tuple[str | None, int | None]:
    """Answer and chosen sample index by ``rule``: bon | weighted | majority | oracle."""
    answers = [t.final_answer for t in samples]
    if rule == "majority":
        return majority_vote(answers), None
    if rule == "oracle":
        good = next((i for i, t in enumerate(samples) if t.correct), 0)
        return answers[good], good
    agg = [aggregate(s, aggregation) if s else 0.0 for s in scores]
    if rule == "weighted":
        return weighted_vote(answers, agg), None
    if rule == "bon":
        best = max(range(len(samples)), key=lambda i: agg[i])
        return answers[best], best
    raise ValueError(f"unknown selection rule {rule!r}")


def whole_sample_search(problems: Sequence[Problem], policy: Policy, scorer: Scorer | None, task: Task, n: int, *,
                        seed: int = 0, rule: str = "bon", aggregation: str = "min", max_new_tokens: int = 256,
                        temperature: float = 1.0) -> list[SearchResult]:
    """Best-of-N (``bon``), PRM-weighted majority (``weighted``), majority vote or oracle over n
    independent samples per problem."""
    if rule in ("bon", "weighted") and scorer is None:
        raise ValueError(f"{rule} needs a PRM (scorer)")
    groups, scores, cost = sample_and_score(problems, policy, scorer if rule in ("bon", "weighted") else None,
                                            task, n, seed, max_new_tokens, temperature)
    return select_from_samples(problems, groups, scores, cost, task, n, rule, aggregation)


def select_from_samples(problems: Sequence[Problem], groups: list[list[Trajectory]], scores: list[list[list[float]]],
                        cost: SearchCost, task: Task, n: int, rule: str, aggregation: str = "min"
                        ) -> list[SearchResult]:
    """Apply a selection rule to the first ``n`` of each problem's samples (samples drawn once
    at a larger N serve every smaller budget: paired comparisons, as search-and-learn does).
    The compute charged is that of those n samples: their tokens, a share n/N of the rest."""
    out = []
    for p, all_samples, all_sc in zip(problems, groups, scores, strict=True):
        samples, sc = all_samples[:n], all_sc[:n]
        frac = n / max(1, len(all_samples)) / max(1, len(problems))
        share = SearchCost(sum(t.cost.generated_tokens for t in samples), int(cost.prompt_tokens * frac),
                           cost.policy_calls, cost.prm_calls if rule in ("bon", "weighted") else 0,
                           len(samples) if rule in ("bon", "weighted") else 0, cost.wall_seconds * frac)
        answer, idx = select(p, samples, sc, task, rule, aggregation)
        steps = samples[idx].steps if idx is not None else []
        out.append(SearchResult(p.id, answer, task.is_correct(p, answer), steps, share,
                                {"answers": [t.final_answer for t in samples],
                                 "scores": [round(x[-1], 4) if x else None for x in sc] if sc else []}))
    return out
