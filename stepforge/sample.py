"""Sample whole solutions from any Policy and turn them into Trajectory records."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepforge.backends.base import Completion, GenerationCost, Policy
from stepforge.guards import refuse_too_long, too_long
from stepforge.jobs import Batch, JobStats, run_resumable
from stepforge.schema import Cost, Problem, Trajectory, truth_labels
from stepforge.seeds import derive_seed
from stepforge.tasks import Prompt, Task, prompt_text


@dataclass
class SampleBatch:
    """Trajectories of one batch of problems (``n`` each, in problem order), their cost, and the
    completions they were read from (same order)."""

    trajectories: list[Trajectory]
    cost: GenerationCost
    completions: list[Completion] = field(default_factory=list)


def to_trajectory(problem: Problem, completion: Completion, task: Task, trajectory_id: str,
                  meta: dict | None = None) -> Trajectory:
    """Read a completion back: steps, final answer, correctness and (if the task has an exact
    checker) the ground-truth first error and step labels."""
    steps = task.steps(completion.text)
    answer = task.extract_answer(completion.text) if completion.text.strip() else None
    record_meta = {"finish_reason": completion.finish_reason, **(meta or {})}
    if answer is None:
        record_meta["unparseable"] = True
    first_error, labels, source = None, None, None
    if task.first_error is not None and steps:
        first_error = task.first_error(problem, steps)
        if task.truth_is_exact:
            labels = truth_labels(len(steps), first_error)
            source = "truth"
    return Trajectory(
        id=trajectory_id, problem_id=problem.id, question=problem.question, steps=steps,
        final_answer=answer, correct=task.is_correct(problem, answer),
        step_labels=labels or [], label_source=source, first_error=first_error,
        cost=Cost(rollouts=0, generated_tokens=completion.tokens), meta=record_meta,
    )


def prompts_too_long(policy: Policy, names: Sequence[str], prompts: Sequence[Prompt], reserve: int,
                     skip: bool = False, what: str = "") -> list[str | None]:
    """Per prompt, None if it plus ``reserve`` generated tokens fits the policy's context (when
    it says what that is), else why not. Without ``skip`` the first over-long prompt is an
    error naming it (``names``), raised before any generation."""
    reasons = too_long([prompt_text(p) for p in prompts], getattr(policy, "max_context", None),
                       getattr(policy, "count_tokens", None), reserve=reserve)
    if not skip:
        refuse_too_long(names, reasons, f"{getattr(policy, 'name', 'the policy')}'s context{what}")
    return reasons


def check_prompt_lengths(policy: Policy, problems: Sequence[Problem], task: Task, max_new_tokens: int,
                         skip: bool = False) -> tuple[list[Problem], dict[str, str]]:
    """Problems whose prompt plus ``max_new_tokens`` fits the policy's context, and why the
    others do not (see :func:`prompts_too_long`)."""
    reasons = prompts_too_long(policy, [f"problem {q.id!r}" for q in problems], [task.prompt(q) for q in problems],
                               max_new_tokens, skip, " (prompt + --max-new-tokens)")
    skipped = {q.id: r for q, r in zip(problems, reasons, strict=True) if r is not None}
    return [q for q in problems if q.id not in skipped], skipped


def problem_seed(seed: int, problem: Problem, purpose: str = "sample") -> int:
    """The seed of a problem's whole-solution samples in a run seeded ``seed``."""
    return derive_seed(seed, problem.id, purpose)


def sample_trajectories(policy: Policy, problems: Sequence[Problem], task: Task, *, n: int,
                        temperature: float = 1.0, seed: int = 0, max_new_tokens: int = 256,
                        batch_problems: int = 64, id_suffix: str = "s") -> Iterator[SampleBatch]:
    """Yield one :class:`SampleBatch` per ``batch_problems`` problems, so callers can write
    results incrementally. Trajectory ids are ``{problem_id}/{id_suffix}{j}``; sample j of
    problem p is seeded by (seed, p.id, "sample", j) (:mod:`stepforge.seeds`), so the samples
    do not depend on batching, resuming or the backend, and the first k of n samples are
    the k samples of a run with n = k."""
    for start in range(0, len(problems), batch_problems):
        chunk = problems[start:start + batch_problems]
        result = policy.generate([task.prompt(p) for p in chunk], n=n,
                                 stop=list(task.solution_stop) or None, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=[problem_seed(seed, p) for p in chunk])
        trajectories = [
            to_trajectory(p, c, task, f"{p.id}/{id_suffix}{j}", {"temperature": temperature})
            for p, row in zip(chunk, result.completions, strict=True) for j, c in enumerate(row)
        ]
        yield SampleBatch(trajectories, result.cost, [c for row in result.completions for c in row])


def sample_to_file(policy: Policy, problems: Sequence[Problem], task: Task, path: str | Path, *, n: int,
                   temperature: float = 1.0, seed: int = 0, max_new_tokens: int = 256, batch_problems: int = 64,
                   id_suffix: str = "s", on_batch: Callable[[SampleBatch], None] | None = None) -> JobStats:
    """Sample to a JSONL file, one fsync'd append per batch, resuming a previous run.

    Batches are fixed by ``batch_problems`` over ``problems``; every sample is seeded by its
    problem and index, so a run interrupted at any point and restarted writes the same file as
    one uninterrupted run (see :mod:`stepforge.jobs`).
    """
    batches = [Batch(b, chunk, [f"{p.id}/{id_suffix}{j}" for p in chunk for j in range(n)])
               for b, chunk in enumerate(problems[i:i + batch_problems]
                                         for i in range(0, len(problems), batch_problems))]

    last: dict[int, SampleBatch] = {}

    def process(batch: Batch[Problem]) -> list[Trajectory]:
        last[batch.index] = next(sample_trajectories(
            policy, batch.items, task, n=n, temperature=temperature, seed=seed,
            max_new_tokens=max_new_tokens, batch_problems=len(batch.items), id_suffix=id_suffix))
        return last[batch.index].trajectories

    def written(batch: Batch[Problem], _records: list[Trajectory]) -> None:
        if on_batch:  # called once the batch is on disk
            on_batch(last.pop(batch.index))

    return run_resumable(path, batches, Trajectory, process, id_of=lambda t: t.id, on_batch=written)
