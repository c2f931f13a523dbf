"""Monte Carlo estimates of prefix values MC(p_t) = c/k, batched, with an optional rollout tree.

Every query is a prefix p = (question, s_1..s_t). The estimator sends the rollouts of all
queries of one call to the backend together (prompt = the prefix, n = rollouts wanted), so
the prefix is encoded once per query, and returns (correct, total) per query plus its cost.

With ``reuse=True`` (OmegaPRM, Luo et al. 2024) every rollout is also stored in a prefix tree:
a rollout from p that continues with steps r_1..r_j is a policy sample from each of
p, p+r_1, ..., p+r_1..r_j, so it counts towards MC of all of them, and a later query of any
of those prefixes only samples what is still missing. (A rollout is *not* a sample from p's
ancestors: it was conditioned on passing through p.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stepforge.backends.base import Policy
from stepforge.schema import Problem
from stepforge.seeds import derive_seed
from stepforge.tasks import Task

PrefixKey = tuple[str, tuple[str, ...]]


@dataclass
class PrefixStats:
    total: int = 0
    correct: int = 0


@dataclass
class Estimate:
    correct: int
    total: int
    rollouts: int  # sampled for this query (0 if known or reused)
    generated_tokens: int

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class Query:
    problem: Problem
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Rollout:
    """One sampled continuation ``steps`` from ``state`` (kept by the tree for OmegaPRM)."""

    problem: Problem
    state: tuple[str, ...]
    steps: tuple[str, ...]
    correct: bool
    length: int  # generated tokens


class RolloutEstimator:
    def __init__(self, policy: Policy, task: Task, k: int, *, max_new_tokens: int = 256, seed: int = 0,
                 reuse: bool = False, temperature: float = 1.0) -> None:
        if k < 1:
            raise ValueError(f"k (rollouts per prefix) must be >= 1, got {k}")
        self.policy, self.task, self.k = policy, task, k
        self.max_new_tokens, self.seed, self.reuse, self.temperature = max_new_tokens, seed, reuse, temperature
        self.tree: dict[PrefixKey, PrefixStats] = {}
        self.proven: set[PrefixKey] = set()  # prefixes with a known correct continuation
        self.rollouts: list[Rollout] = []  # with reuse: every rollout, for OmegaPRM's selection
        self.calls = 0
        self.draws: dict[PrefixKey, int] = {}  # sampling rounds per prefix (fresh seeds on re-query)

    def observe(self, problem: Problem, steps: Sequence[str], correct: bool, start: int = 0) -> None:
        """Count a solution as one sample through each of its prefixes of length > ``start``
        (``start=0``: sampled from the question, so every prefix counts)."""
        for t in range(max(start, 1), len(steps) + 1):
            stats = self.tree.setdefault((problem.id, tuple(steps[:t])), PrefixStats())
            stats.total += 1
            stats.correct += int(correct)

    def prove(self, problem: Problem, steps: Sequence[str]) -> None:
        """Record a correct solution: each of its prefixes has a correct continuation.

        Used for solutions picked by their outcome (e.g. a file's correct samples): they prove
        reachability but are not unbiased MC samples, so they do not enter the counts.
        """
        for t in range(1, len(steps) + 1):
            self.proven.add((problem.id, tuple(steps[:t])))

    def known(self, query: Query) -> PrefixStats:
        return self.tree.get((query.problem.id, query.steps), PrefixStats())

    def estimate(self, queries: Sequence[Query], stop_when_positive: bool = False) -> list[Estimate]:
        """MC(p) for each query. A prefix ending in the answer step is exact (no rollouts).

        With reuse, a query samples only ``k - known`` rollouts; with ``stop_when_positive``
        it samples none once a correct continuation is known (all a hard decision needs).
        Duplicate queries in one call are sampled once; the first holder is charged.
        """
        out: list[Estimate | None] = [None] * len(queries)
        need: dict[tuple[str, tuple[str, ...]], tuple[int, int]] = {}  # key -> (first query index, rollouts)
        for i, q in enumerate(queries):
            if q.steps and self.task.is_final_step(q.steps[-1]):
                ok = self.task.solution_correct(q.problem, q.steps)
                out[i] = Estimate(int(ok), 1, 0, 0)
                continue
            key = (q.problem.id, q.steps)
            if key in need:
                continue
            have = self.known(q) if self.reuse else PrefixStats()
            positive = have.correct > 0 or key in self.proven
            missing = 0 if stop_when_positive and positive else max(0, self.k - have.total)
            need[key] = (i, missing)
        fresh: dict[tuple[str, tuple[str, ...]], Estimate] = {}
        by_count: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
        for key, (_, missing) in need.items():
            by_count.setdefault(missing, []).append(key)
        for missing, keys in by_count.items():
            if missing == 0:
                for key in keys:
                    fresh[key] = Estimate(0, 0, 0, 0)
                continue
            qs = [queries[need[key][0]] for key in keys]
            seeds = []
            for key in keys:  # a prefix's rollouts are seeded by the prefix itself, not its batch
                seeds.append(derive_seed(self.seed, "rollout", key, self.draws.get(key, 0)))
                self.draws[key] = self.draws.get(key, 0) + 1
            result = self.policy.generate([self.task.prefix_prompt(q.problem, q.steps) for q in qs], n=missing,
                                          stop=list(self.task.solution_stop) or None,
                                          max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                          seed=seeds)
            self.calls += 1
            for key, q, row in zip(keys, qs, result.completions, strict=True):
                correct = 0
                for c in row:
                    full = [*q.steps, *self.task.steps(c.text)]
                    ok = self.task.solution_correct(q.problem, full)
                    correct += int(ok)
                    if self.reuse:
                        self.rollouts.append(Rollout(q.problem, q.steps, tuple(full[len(q.steps):]), ok, c.tokens))
                        self.observe(q.problem, full, ok, start=len(q.steps))
                        if ok:
                            self.prove(q.problem, full)
                fresh[key] = Estimate(correct, len(row), len(row), sum(c.tokens for c in row))
        for key, (i, _) in need.items():
            est = fresh[key]
            if self.reuse:  # the tree holds these rollouts and every earlier one through the prefix
                stats = self.known(queries[i])
                correct = stats.correct if stats.correct or key not in self.proven else 1  # proven: c > 0
                est = Estimate(correct, max(stats.total, 1), est.rollouts, est.generated_tokens)
            out[i] = est
        for i, q in enumerate(queries):  # duplicates share the value, not the cost
            if out[i] is None:
                first = out[need[(q.problem.id, q.steps)][0]]
                out[i] = Estimate(first.correct, first.total, 0, 0)
        return out  # type: ignore[return-value]
