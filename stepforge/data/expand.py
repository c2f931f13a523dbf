"""Expand trajectories with new intermediate steps from any Policy, resumably.

Two expanders behind the same Policy protocol: ``fim`` (a model with FIM tokens, e.g. the
world expander or Qwen2.5's ``<|fim_prefix|>``) and ``prompt`` (any instruct model asked to
write the one missing step). Every gap is asked greedily in one backend call per batch and
round; the filters of :func:`stepforge.data.fim.drop_reason` decide what is inserted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stepforge.backends.base import GenerationCost, Policy
from stepforge.data.fim import (
    DROP_REASONS,
    ETA,
    FIM_ORDERS,
    FimOrder,
    FimTokens,
    drop_reason,
    fim_prompt,
    insert_before,
    insert_steps,
)
from stepforge.jobs import Batch, JobStats, run_resumable
from stepforge.label.methods import problem_of
from stepforge.label.rollouts import Query, RolloutEstimator
from stepforge.schema import Cost, Problem, Trajectory, truth_labels
from stepforge.tasks import Chat, Prompt, Task
from stepforge.verify.equations import step_is_arithmetically_valid

ExpandMode = Literal["fim", "prompt"]
EXPAND_INSTRUCTION = ("Below is a problem and the start of a step-by-step solution, then the step that comes "
                      "next. Write exactly one new intermediate step that belongs between them, making the "
                      "reasoning more detailed. Output only that step.")


@dataclass(frozen=True)
class ExpandConfig:
    mode: ExpandMode = "fim"
    fim_order: FimOrder = "psm"  # the order the FIM model was trained in
    eta: float = ETA
    check: bool = False  # also drop steps the task's checker rejects (MathFimer + a verifier)
    rounds: int = 1
    max_new_tokens: int = 64
    batch_trajectories: int = 64
    # > 0: answer preservation by MC: k rollouts of a solver from prefix + step must succeed at
    # least as often as from the prefix alone
    mc_rollouts: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("fim", "prompt"):
            raise ValueError(f"unknown expansion mode {self.mode!r}; expected 'fim' or 'prompt'")
        if self.fim_order not in FIM_ORDERS:
            raise ValueError(f"unknown FIM order {self.fim_order!r}; expected one of {FIM_ORDERS}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


def prompted_expansion(task: Task, question: str, prefix: Sequence[str], next_step: str) -> Prompt:
    """The instruction prompt of ``prompt`` mode: a chat turn in chat mode, else plain text."""
    shown = "\n".join(prefix) if prefix else "(none yet)"
    body = (f"{EXPAND_INSTRUCTION}\n\nProblem:\n{question.strip()}\n\nSolution so far:\n{shown}\n\n"
            f"Next step:\n{next_step}")
    if task.chat:
        messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
        return Chat((*messages, {"role": "user", "content": body}))
    return body + "\n\nNew intermediate step:\n"


def insertion_is_right(task: Task, problem: Problem | None, steps: Sequence[str], i: int,
                       candidate: str) -> bool | None:
    """Whether inserting ``candidate`` before ``steps[i]`` is right. With an exact checker: the
    first error of the solution moves only by the inserted line (an error in the prefix leaves
    nothing to judge). Otherwise: no wrong equation in the candidate (None: none to check)."""
    if task.first_error is not None and task.truth_is_exact and problem is not None:
        before = task.first_error(problem, list(steps))
        after = task.first_error(problem, [*steps[:i], candidate.strip(), *steps[i:]])
        return after == (None if before is None else before + (before >= i))
    return step_is_arithmetically_valid(candidate)


def _problem_of(task: Task, t: Trajectory) -> Problem | None:
    if task.recover_problem is not None:
        return problem_of(t, task, None)
    if t.final_answer is not None:  # the trajectory's own answer stands in for the gold one
        return Problem(id=t.problem_id, question=t.question, answer=t.final_answer)
    return None


def _risky(estimator: RolloutEstimator, candidates: list[tuple[Problem, list[str], str]]
           ) -> tuple[list[bool], GenerationCost]:
    """Per (problem, prefix, step): do rollouts from prefix + step succeed less often than from
    the prefix? One estimator call for all; also what the rollouts cost."""
    queries = [Query(p, tuple(prefix)) for p, prefix, _ in candidates]
    queries += [Query(p, (*prefix, step)) for p, prefix, step in candidates]
    calls = estimator.calls
    est = estimator.estimate(queries)
    n = len(candidates)
    cost = GenerationCost(generated_tokens=sum(e.generated_tokens for e in est),
                          forward_passes=estimator.calls - calls)
    return [est[n + j].value < est[j].value for j in range(n)], cost


def expand_batch(policy: Policy, trajectories: Sequence[Trajectory], task: Task, config: ExpandConfig,
                 tokens: FimTokens | None = None, solver: Policy | None = None
                 ) -> tuple[list[Trajectory], GenerationCost]:
    """One expansion of each trajectory (``config.rounds`` rounds), all gaps of a round in one
    call; ``solver`` samples the rollouts of ``config.mc_rollouts``."""
    if config.mode == "fim" and tokens is None:
        raise ValueError("fim mode needs the model's FIM tokens (see stepforge.data.fim.fim_tokens_of)")
    if config.mc_rollouts and solver is None:
        raise ValueError("mc_rollouts needs a solver policy to roll out from the prefixes")
    estimator = (RolloutEstimator(solver, task, config.mc_rollouts, max_new_tokens=256)
                 if config.mc_rollouts and solver is not None else None)
    problems = [_problem_of(task, t) for t in trajectories]
    steps = [list(t.steps) for t in trajectories]
    # per step: "own" (the trajectory's), else the inserted line's exact rightness (None: unknown)
    origin: list[list[bool | str | None]] = [["own"] * len(s) for s in steps]
    generated = [0] * len(trajectories)
    rounds: list[list[dict]] = [[] for _ in trajectories]
    cost = GenerationCost()
    for _ in range(config.rounds):
        gaps = [(k, i) for k, s in enumerate(steps) for i in range(len(s))]
        prompts = [fim_prompt(tokens, trajectories[k].question, steps[k][:i], steps[k][i:], task.step_stop,
                              config.fim_order)
                   if config.mode == "fim" else
                   prompted_expansion(task, trajectories[k].question, steps[k][:i], steps[k][i])
                   for k, i in gaps]
        result = policy.generate(prompts, n=1, stop=[task.step_stop], max_new_tokens=config.max_new_tokens,
                                 temperature=0.0, seed=0) if prompts else None
        cost = cost + (result.cost if result else GenerationCost())
        inserted: list[dict[int, str]] = [{} for _ in trajectories]
        right: list[dict[int, bool | None]] = [{} for _ in trajectories]
        stats = [Counter() for _ in trajectories]
        survivors: list[tuple[int, int, str]] = []
        for (k, i), row in zip(gaps, result.completions if result else [], strict=True):
            candidate = row[0].text.strip()
            generated[k] += row[0].tokens
            check: Callable[[], bool | None] | None = (
                (lambda k=k, i=i, c=candidate: insertion_is_right(task, problems[k], steps[k], i, c))
                if config.check else None)
            reason = drop_reason(candidate, steps[k][i], eta=config.eta, is_final_step=task.is_final_step,
                                 is_right=check)
            stats[k]["gaps"] += 1
            if reason is not None:
                stats[k][reason] += 1
            else:
                survivors.append((k, i, candidate))
        if estimator is not None:
            judged = [(k, i, c) for k, i, c in survivors if problems[k] is not None]
            risky, rollout_cost = _risky(estimator, [(problems[k], steps[k][:i], c) for k, i, c in judged])
            dropped = {(k, i) for (k, i, _), r in zip(judged, risky, strict=True) if r}
            for k, _ in dropped:
                stats[k]["answer_risk"] += 1
            survivors = [s for s in survivors if (s[0], s[1]) not in dropped]
            cost = cost + rollout_cost
        for k, i, candidate in survivors:
            inserted[k][i] = candidate
            stats[k]["inserted"] += 1
            if problems[k] is not None and task.truth_is_exact:
                # judged in the solution without the wrong lines of earlier rounds, which would
                # otherwise hide any later error behind theirs
                clean = [j for j, o in enumerate(origin[k]) if o is not False]
                right[k][i] = bool(insertion_is_right(task, problems[k], [steps[k][j] for j in clean],
                                                      sum(j < i for j in clean), candidate))
                stats[k]["right"] += right[k][i]
        for k in range(len(trajectories)):
            origin[k] = insert_before(origin[k], {i: right[k].get(i) for i in inserted[k]})
            steps[k], _ = insert_steps(steps[k], inserted[k])
            rounds[k].append({"gaps": stats[k]["gaps"], "inserted": stats[k]["inserted"],
                              "dropped": {r: stats[k][r] for r in DROP_REASONS},
                              **({"right": stats[k]["right"]} if task.truth_is_exact and problems[k] else {})})
    out = []
    for k, t in enumerate(trajectories):
        out.append(_expanded(task, t, problems[k], steps[k], origin[k], rounds[k], generated[k]))
    return out, cost


def _expanded(task: Task, t: Trajectory, problem: Problem | None, steps: list[str],
              origin: list[bool | str | None], rounds: list[dict], generated: int) -> Trajectory:
    inserted_at = [i for i, o in enumerate(origin) if o != "own"]
    answer = task.answer_of(steps)
    first_error, labels, source = t.first_error, None, t.label_source
    if problem is not None and task.first_error is not None:
        first_error = task.first_error(problem, steps)
        if task.truth_is_exact:
            labels, source = truth_labels(len(steps), first_error), "truth"
    meta = {**t.meta, "expand": {"original_steps": len(t.steps), "inserted_at": inserted_at,
                                 "inserted_right": [origin[i] for i in inserted_at], "rounds": rounds}}
    if answer != task.answer_of(t.steps):  # cannot happen: answer lines are never inserted
        raise AssertionError(f"trajectory {t.id!r}: expansion changed the answer")
    return t.model_copy(update={
        "steps": steps, "step_labels": labels or [None] * len(steps), "label_source": source if labels else None,
        "first_error": first_error, "meta": meta,
        "cost": Cost(rollouts=t.cost.rollouts, generated_tokens=t.cost.generated_tokens + generated)})


def expand_to_file(policy: Policy, trajectories: Sequence[Trajectory], task: Task, path: str | Path,
                   config: ExpandConfig, tokens: FimTokens | None = None,
                   on_batch: Callable[[int, GenerationCost], None] | None = None,
                   solver: Policy | None = None) -> JobStats:
    """Expand into a JSONL file (same ids as the input), one fsync'd append per batch; a restart
    resumes after the last complete batch. ``on_batch(trajectories done, cost)`` after each."""
    size = config.batch_trajectories
    batches = [Batch(b, list(trajectories[i:i + size]), [t.id for t in trajectories[i:i + size]])
               for b, i in enumerate(range(0, len(trajectories), size))]

    def process(batch: Batch[Trajectory]) -> list[Trajectory]:
        records, cost = expand_batch(policy, batch.items, task, config, tokens, solver)
        if on_batch:
            on_batch(len(records), cost)
        return records

    return run_resumable(path, batches, Trajectory, process, id_of=lambda t: t.id)
