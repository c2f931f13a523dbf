"""Step-level preference pairs.

Step-DPO (Lai et al. 2024): for a wrong trajectory with first error k, the prompt is the
prefix p_{k−1} = (question, s_1..s_{k−1}), rejected = s_k, and chosen = a step sampled from
p_{k−1} whose continuation is verified to reach the right answer by rollouts (the most
successful candidate wins if its MC value reaches ``min_value``: a policy that recomputes
from the question can finish a wrong step correctly now and then, so MC > 0 alone lets wrong
"chosen" steps through — in the world, 25% of chosen steps at MC = 1/4 were wrong against 4%
at MC ≥ 1/2). From search trees (MCTS-DPO): at a node with children,
chosen = the highest-Q child's step, rejected = the lowest-Q child's.

A completion ends with the step separator, except a final (answer) step, which ends with
nothing: the trainer appends the end-of-solution token there. (Ending an answer step with
the separator teaches the policy to keep writing after its answer.)
"""

from __future__ import annotations

from collections.abc import Sequence

from stepforge.backends.base import Policy
from stepforge.label.rollouts import Query, RolloutEstimator
from stepforge.schema import Problem, StepPair, Trajectory
from stepforge.search.mcts import Node
from stepforge.seeds import derive_seed
from stepforge.tasks import Task


def _completion(step: str, task: Task) -> str:
    return step if task.is_final_step(step) else step + task.step_stop


def step_dpo_pairs(trajectories: Sequence[Trajectory], problems: Sequence[Problem], policy: Policy, task: Task, *,
                   candidates: int = 8, k: int = 4, seed: int = 0, max_step_tokens: int = 64,
                   max_new_tokens: int = 256, min_value: float = 0.5, temperature: float = 1.0) -> list[StepPair]:
    """One pair per labeled wrong trajectory for which a verified alternative step is found.
    All candidate steps come from one backend call, all verifications from one estimator call."""
    if task.chat:
        raise ValueError("Step-DPO pairs hold plain-text prompts: build them without --chat")
    todo = [(t, p) for t, p in zip(trajectories, problems, strict=True)
            if t.first_error is not None and t.first_error < len(t.steps)]
    if not todo:
        return []
    prompts = [task.prefix_prompt(p, t.steps[:t.first_error]) for t, p in todo]
    result = policy.generate(prompts, n=candidates, stop=[task.step_stop], max_new_tokens=max_step_tokens,
                             temperature=temperature,
                             seed=[derive_seed(seed, t.id, "pair-candidates") for t, _ in todo])
    options: list[list[str]] = []
    queries: list[Query] = []
    for (t, p), row in zip(todo, result.completions, strict=True):
        bad = t.steps[t.first_error]
        steps = sorted({c.text.strip() for c in row if c.text.strip() and c.text.strip() != bad})
        options.append(steps)
        queries += [Query(p, (*t.steps[:t.first_error], s)) for s in steps]
    est = RolloutEstimator(policy, task, k, max_new_tokens=max_new_tokens, seed=derive_seed(seed, "pair-verify"),
                           temperature=temperature)
    values = iter(est.estimate(queries))
    pairs = []
    for (t, p), prompt, steps in zip(todo, prompts, options, strict=True):
        scored = [(next(values).value, s) for s in steps]
        best = max(scored, default=None)
        if best is None or best[0] <= 0 or best[0] < min_value:
            continue  # no verified alternative: no pair rather than a wrong "chosen"
        pairs.append(StepPair(prompt=prompt, chosen=_completion(best[1], task),
                              rejected=_completion(t.steps[t.first_error], task), problem_id=p.id,
                              step_index=t.first_error,
                              meta={"chosen_mc": round(best[0], 4), "trajectory": t.id, "question": p.question,
                                    "prefix": list(t.steps[:t.first_error])}))
    return pairs


def tree_pairs(problem: Problem, root: Node, task: Task, min_gap: float = 0.2) -> list[StepPair]:
    """Best vs worst child of every expanded node whose children's Q values differ by at least
    ``min_gap`` (and whose steps differ)."""
    pairs = []
    stack = [root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        kids = [c for c in node.children if len(c.steps) > len(node.steps)]
        if len(kids) < 2:
            continue
        hi = max(kids, key=lambda c: c.q)
        lo = min(kids, key=lambda c: c.q)
        if hi.q - lo.q >= min_gap and hi.steps[-1] != lo.steps[-1]:
            pairs.append(StepPair(prompt=task.prefix_prompt(problem, node.steps),
                                  chosen=_completion(hi.steps[-1], task),
                                  rejected=_completion(lo.steps[-1], task), problem_id=problem.id,
                                  step_index=len(node.steps), meta={"q_chosen": round(hi.q, 4),
                                                                    "question": problem.question,
                                                                    "prefix": list(node.steps),
                                                                    "q_rejected": round(lo.q, 4), "source": "tree"}))
    return pairs
