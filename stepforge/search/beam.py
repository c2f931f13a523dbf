"""Step-level beam search and DVTS (Snell et al. 2024; Beeching et al., search-and-learn),
batched across problems: per depth, ONE backend call expands every live beam of every
problem and ONE PRM call scores every candidate (search-and-learn runs one problem at a time).

Beam search with budget N and width M: N first steps per problem, keep the best N/M, expand
each with M (N candidates per depth), repeat. DVTS: N/M independent subtrees of width M that
each keep only their best candidate (a greedy beam), which keeps the finals diverse. A
candidate whose step ends the solution (answer step, EOS, or the token limit) leaves the
search; the answer is the finished candidate with the best aggregated score.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepforge.backends.base import Policy
from stepforge.schema import Problem, Trajectory
from stepforge.search.base import Scorer, SearchCost, SearchResult, score_unique, split_cost
from stepforge.search.vote import aggregate
from stepforge.seeds import derive_seed
from stepforge.tasks import Task


@dataclass
class _Node:
    steps: tuple[str, ...]
    score: float = 1.0
    scores: tuple[float, ...] = ()
    done: bool = False


@dataclass
class _Group:
    keep: int
    beams: list[_Node] = field(default_factory=list)


def _expand(problems: Sequence[Problem], states: list[list[_Group]], policy: Policy, scorer: Scorer, task: Task,
            widths: list[list[list[int]]], cost: SearchCost, seed: int, max_step_tokens: int, temperature: float
            ) -> list[list[list[_Node]]]:
    """Candidates per (problem, group): every live beam expanded with its width, scored."""
    prompts, owners, seeds = [], [], []
    for pi, groups in enumerate(states):
        for gi, g in enumerate(groups):
            for bi, beam in enumerate(g.beams):
                prompts.append(task.prefix_prompt(problems[pi], beam.steps))
                owners.append((pi, gi, bi))
                seeds.append(derive_seed(seed, problems[pi].id, "expand", gi, beam.steps))
    if not prompts:
        return [[[] for _ in groups] for groups in states]
    n = max(widths[pi][gi][bi] for pi, gi, bi in owners)
    result = policy.generate(prompts, n=n, stop=[task.step_stop, *task.solution_stop],
                             max_new_tokens=max_step_tokens, temperature=temperature, seed=seeds)
    cost.add_generation(result.cost)
    cands: list[tuple[tuple[int, int], _Node]] = []
    for (pi, gi, bi), row in zip(owners, result.completions, strict=True):
        beam = states[pi][gi].beams[bi]
        for c in row[:widths[pi][gi][bi]]:
            step = c.text.strip()
            finished = task.step_ends_solution(c.text, c.finish_reason)
            steps = (*beam.steps, step) if step else beam.steps
            cands.append(((pi, gi), _Node(steps, done=finished or not step)))
    scorable = [(pi, node) for (pi, _), node in cands if node.steps]
    trajs = [Trajectory(id=f"c{i}", problem_id=problems[pi].id, question=problems[pi].question, steps=list(node.steps))
             for i, (pi, node) in enumerate(scorable)]
    if trajs:
        for (_, node), s in zip(scorable, score_unique(scorer, trajs, cost), strict=True):
            node.scores = tuple(s)
    out: list[list[list[_Node]]] = [[[] for _ in groups] for groups in states]
    for (pi, gi), node in cands:
        out[pi][gi].append(node)
    return out


def tree_search(problems: Sequence[Problem], policy: Policy, scorer: Scorer, task: Task, n: int, *,
                width: int = 4, subtrees: bool = False, seed: int = 0, aggregation: str = "last",
                max_depth: int = 24, max_step_tokens: int = 64, temperature: float = 1.0) -> list[SearchResult]:
    """Beam search (``subtrees=False``) or DVTS (``subtrees=True``) with budget ``n`` and width M."""
    if n < width or n % width:
        raise ValueError(f"the budget n={n} must be a positive multiple of the width M={width}")
    start = time.perf_counter()
    cost = SearchCost()
    k = n // width
    # beam search: one group keeping N/M beams, first expansion N; DVTS: N/M groups keeping 1, first expansion M
    states = [[_Group(keep=1, beams=[_Node(())]) for _ in range(k)] if subtrees
              else [_Group(keep=k, beams=[_Node(())])] for _ in problems]
    first = width if subtrees else n
    finals: list[list[_Node]] = [[] for _ in problems]
    depth = 0
    while depth < max_depth and any(g.beams for groups in states for g in groups):
        widths = [[[first if depth == 0 else width for _ in g.beams] for g in groups] for groups in states]
        cands = _expand(problems, states, policy, scorer, task, widths, cost, seed, max_step_tokens, temperature)
        for pi, groups in enumerate(states):
            for gi, g in enumerate(groups):
                for node in cands[pi][gi]:
                    node.score = aggregate(node.scores, aggregation) if node.scores else 0.0
                live = sorted((c for c in cands[pi][gi] if not c.done), key=lambda c: -c.score)
                finals[pi].extend(c for c in cands[pi][gi] if c.done)
                g.beams = live[:g.keep]
        depth += 1
    for pi, groups in enumerate(states):  # out of depth: unfinished beams compete as they are
        for g in groups:
            finals[pi].extend(g.beams)
    cost.wall_seconds = time.perf_counter() - start
    share = split_cost(cost, len(problems))
    results = []
    for p, pool in zip(problems, finals, strict=True):
        best = max(pool, key=lambda c: c.score, default=None)
        steps = list(best.steps) if best else []
        answer = task.answer_of(steps)
        results.append(SearchResult(p.id, answer, task.is_correct(p, answer), steps, share,
                                    {"finals": len(pool), "depth": depth,
                                     "final_answers": [task.answer_of(c.steps)
                                                       for c in sorted(pool, key=lambda c: -c.score)[:8]],
                                     "best_score": round(best.score, 4) if best else None}))
    return results


def beam_search(problems, policy, scorer, task, n, **kw) -> list[SearchResult]:
    return tree_search(problems, policy, scorer, task, n, subtrees=False, **kw)


def dvts(problems, policy, scorer, task, n, **kw) -> list[SearchResult]:
    return tree_search(problems, policy, scorer, task, n, subtrees=True, **kw)
