"""MCTS over steps with a PRM value, batched across problems.

Each simulation, in every problem's tree at once: select a leaf by PUCT,
    a* = argmax_a  Q(s,a) + c_puct · P(s,a) · √N(s) / (1 + N(s,a)),   P uniform over the k children,
expand it with k sampled next steps (one backend call for all problems), value each new
node with the PRM's score of its prefix (one PRM call; with ``rollout=True`` the PRM score
of one sampled completion instead), and back the mean child value up the path (Q = W/N).
A finished step makes a terminal node whose value is backed up again when selected. The
answer is the best-valued terminal node (or, if none, the best leaf completed greedily).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepforge.backends.base import Policy
from stepforge.schema import Problem, Trajectory
from stepforge.search.base import Scorer, SearchCost, SearchResult, score_unique, split_cost
from stepforge.seeds import derive_seed
from stepforge.tasks import Task


@dataclass
class Node:
    steps: tuple[str, ...]
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    value: float = 0.0  # the PRM's value of this prefix
    terminal: bool = False

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else self.value


def puct_select(node: Node, c_puct: float) -> Node:
    """Descend by PUCT to a node that is unexpanded or terminal."""
    while node.children and not node.terminal:
        prior = 1.0 / len(node.children)
        sqrt_n = math.sqrt(max(1, node.visits))
        node = max(node.children, key=lambda ch: ch.q + c_puct * prior * sqrt_n / (1 + ch.visits))
    return node


def backup(node: Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent


def mcts(problems: Sequence[Problem], policy: Policy, scorer: Scorer, task: Task, n: int, *, children: int = 2,
         c_puct: float = 0.2, rollout: bool = False, seed: int = 0, max_step_tokens: int = 64,
         max_new_tokens: int = 256, temperature: float = 1.0) -> list[SearchResult]:
    """``n`` simulations per problem, each expanding one leaf into ``children`` next steps."""
    start = time.perf_counter()
    cost = SearchCost()
    roots = [Node(()) for _ in problems]
    for sim in range(n):
        leaves = [puct_select(r, c_puct) for r in roots]
        expand = [i for i, leaf in enumerate(leaves) if not leaf.terminal]
        for leaf in leaves:
            if leaf.terminal:
                backup(leaf, leaf.value)
        if not expand:
            continue
        result = policy.generate([task.prefix_prompt(problems[i], leaves[i].steps) for i in expand], n=children,
                                 stop=[task.step_stop, *task.solution_stop], max_new_tokens=max_step_tokens,
                                 temperature=temperature,
                                 seed=[derive_seed(seed, problems[i].id, "mcts", sim) for i in expand])
        cost.add_generation(result.cost)
        new: list[tuple[int, Node]] = []
        for i, row in zip(expand, result.completions, strict=True):
            leaf = leaves[i]
            for c in row:
                step = c.text.strip()
                done = task.step_ends_solution(c.text, c.finish_reason)
                child = Node((*leaf.steps, step) if step else leaf.steps, parent=leaf, terminal=done)
                leaf.children.append(child)
                new.append((i, child))
        values = _values(problems, policy, scorer, task, new, cost, rollout, seed, sim, max_new_tokens, temperature)
        for (_, child), v in zip(new, values, strict=True):
            child.value = v
        for i in expand:
            kids = leaves[i].children
            backup(leaves[i], sum(k.value for k in kids) / len(kids))
    bests = [max((nd for nd in _walk(r) if nd.terminal and nd.steps), key=lambda nd: nd.value, default=None)
             for r in roots]
    completed = _complete_greedily(policy, task, [(p, r) for p, r, b in zip(problems, roots, bests, strict=True)
                                                  if b is None], cost, max_new_tokens)
    cost.wall_seconds = time.perf_counter() - start
    share = split_cost(cost, len(problems))
    out = []
    for p, root, best in zip(problems, roots, bests, strict=True):
        finals = [nd for nd in _walk(root) if nd.terminal and nd.steps]
        steps = list(best.steps) if best else completed.get(id(root), [])
        answer = task.answer_of(steps)
        out.append(SearchResult(p.id, answer, task.is_correct(p, answer), steps, share,
                                {"simulations": n, "tree_size": sum(1 for _ in _walk(root)), "terminals": len(finals),
                                 "best_value": round(best.value, 4) if best else None}))
    return out


def _complete_greedily(policy, task, pairs: list[tuple[Problem, Node]], cost: SearchCost, max_new_tokens: int
                       ) -> dict[int, list[str]]:
    """For trees without a finished solution: follow the most-visited children from the root
    and let the policy finish that prefix greedily (one call for all such problems)."""
    if not pairs:
        return {}
    leaves = []
    for _, root in pairs:
        node = root
        while node.children:
            node = max(node.children, key=lambda ch: (ch.visits, ch.value))
        leaves.append(node)
    res = policy.generate([task.prefix_prompt(p, leaf.steps) for (p, _), leaf in zip(pairs, leaves, strict=True)],
                          n=1, stop=list(task.solution_stop) or None, max_new_tokens=max_new_tokens, temperature=0.0)
    cost.add_generation(res.cost)
    return {id(root): [*leaf.steps, *task.steps(row[0].text)]
            for (_, root), leaf, row in zip(pairs, leaves, res.completions, strict=True)}


def _values(problems, policy, scorer, task, new, cost, rollout, seed, sim, max_new_tokens, temperature
            ) -> list[float]:
    """PRM value of each new node's prefix, or of one sampled completion from it."""
    if not new:
        return []
    steps = [list(child.steps) for _, child in new]
    if rollout:
        open_ = [j for j, (_, child) in enumerate(new) if not child.terminal]
        if open_:
            res = policy.generate([task.prefix_prompt(problems[new[j][0]], new[j][1].steps) for j in open_], n=1,
                                  stop=list(task.solution_stop) or None, max_new_tokens=max_new_tokens,
                                  temperature=temperature,
                                  seed=[derive_seed(seed, problems[new[j][0]].id, "mcts-rollout", sim, j)
                                        for j in open_])
            cost.add_generation(res.cost)
            for j, row in zip(open_, res.completions, strict=True):
                steps[j] = steps[j] + task.steps(row[0].text)
    scorable = [j for j, s in enumerate(steps) if s]
    trajs = [Trajectory(id=f"m{j}", problem_id=problems[new[j][0]].id, question=problems[new[j][0]].question,
                        steps=steps[j]) for j in scorable]
    values = [0.0] * len(new)
    for j, s in zip(scorable, score_unique(scorer, trajs, cost) if trajs else [], strict=True):
        values[j] = s[-1]
    return values


def _walk(node: Node):
    yield node
    for ch in node.children:
        yield from _walk(ch)
