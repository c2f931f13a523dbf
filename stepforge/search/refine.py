"""Recursive refinement with a critic: PRefLexOR's inference loop (Buehler 2024, arXiv
2410.12375), with the draft revised from the line a critic flags.

Round 0 answers each problem. In each later round a critic looks at the latest answer and
either accepts it or flags a line; the revision keeps the lines before the flagged one and
samples the rest again. After round r the integrated answer is the majority over the answers
of rounds 0..r (PRefLexOR's integrator). Critics:

- ``none``: no feedback (the self-refinement control): a uniformly random line is revised,
  so any gain over it comes from the critic's information, not from resampling;
- ``prm``: a process reward model flags the first line scored below a threshold (calibrate
  it on labeled data: ``stepforge eval-prm``); above it everywhere, the answer is accepted;
- ``oracle``: the task's exact checker flags the first wrong line (an upper bound, worlds only);
- ``judge``: an LLM judge names the earliest wrong step (real data, any backend).

Every round's cost is counted, so refinement can be compared with majority voting at equal
generated tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pydantic import BaseModel

from stepforge.backends.base import GenerationCost, Policy
from stepforge.sample import to_trajectory
from stepforge.schema import Problem, Trajectory
from stepforge.search.base import Scorer, scorable
from stepforge.search.vote import majority_vote
from stepforge.seeds import derive_seed
from stepforge.tasks import Task


class Critic(Protocol):
    name: str

    def flag(self, problems: Sequence[Problem], answers: Sequence[Trajectory], rng: random.Random
             ) -> list[int | None]:
        """Per answer, the index of the line to revise from, or None to accept it."""
        ...


@dataclass
class NoCritic:
    """No feedback: revise from a uniformly random line (never accepts)."""

    name: str = "none"

    def flag(self, problems, answers, rng):
        return [rng.randrange(len(t.steps)) if t.steps else 0 for t in answers]


@dataclass
class PRMCritic:
    """The first line a PRM scores below ``threshold`` (ProcessBench's first-error rule)."""

    scorer: Scorer
    threshold: float = 0.5
    name: str = "prm"
    prm_sequences: int = 0

    def flag(self, problems, answers, rng):
        scored = scorable(answers)
        self.prm_sequences += len(scored)
        return [next((i for i, s in enumerate(scores) if s < self.threshold), None)
                for scores in self.scorer.score(scored)]


@dataclass
class OracleCritic:
    """The task's exact checker: the first wrong line; an incomplete answer is revised from its end."""

    task: Task
    name: str = "oracle"

    def __post_init__(self) -> None:
        if self.task.first_error is None:
            raise ValueError(f"task {self.task.name!r} has no checker for the oracle critic")

    def flag(self, problems, answers, rng):
        out = []
        for p, t in zip(problems, answers, strict=True):
            wrong = self.task.first_error(p, t.steps) if t.steps else 0
            out.append(wrong if wrong is not None else (None if t.correct else len(t.steps)))
        return out


@dataclass
class JudgeCritic:
    """An LLM judge (any backend) names the earliest wrong step (stepforge.label.judge's prompt);
    "no error" or an unparseable reply accepts the answer."""

    judge: Policy
    chat: bool = True
    name: str = "judge"

    def flag(self, problems, answers, rng):
        from stepforge.label.judge import label_judge

        labeled = label_judge(answers, self.judge, chat=self.chat, seed=rng.randrange(2**31))
        return [t.first_error if t.steps else 0 for t in labeled]


@dataclass
class RefineResult:
    """Per problem, the answer of each round, the critic's flags and the generated tokens."""

    rounds: list[list[Trajectory]]  # rounds[r][i]: problem i's answer after round r
    tokens: list[int] = field(default_factory=list)  # cumulative generated tokens after each round
    flags: list[list[int | None]] = field(default_factory=list)  # flags[r][i]: line revised from (round 0: None)

    @property
    def revised(self) -> list[int]:
        """Answers revised in each round (0 for round 0)."""
        return [sum(f is not None for f in row) for row in self.flags]

    def integrated(self, task: Task, problems: Sequence[Problem], upto: int) -> list[bool]:
        """Majority over the answers of rounds 0..upto, per problem: correct or not."""
        return [task.is_correct(p, majority_vote([self.rounds[r][i].final_answer for r in range(upto + 1)]))
                for i, p in enumerate(problems)]


def refine(policy: Policy, problems: Sequence[Problem], task: Task, critic: Critic, rounds: int = 2, *,
           temperature: float = 1.0, max_new_tokens: int = 256, seed: int = 0) -> RefineResult:
    """Answer every problem, then ``rounds`` critic-guided revisions (one backend call per round)."""
    rng = random.Random(derive_seed(seed, "refine", critic.name))
    answers, cost = _continue(policy, task, [(p, []) for p in problems], temperature, max_new_tokens,
                              derive_seed(seed, "round", 0))
    result = RefineResult(rounds=[answers], tokens=[cost.generated_tokens], flags=[[None] * len(problems)])
    for r in range(1, rounds + 1):
        flags = critic.flag(problems, answers, rng)
        todo = [i for i, f in enumerate(flags) if f is not None]
        revised, more = _continue(policy, task, [(problems[i], answers[i].steps[:flags[i]]) for i in todo],
                                  temperature, max_new_tokens, derive_seed(seed, "round", r))
        answers = list(answers)
        for i, t in zip(todo, revised, strict=True):
            answers[i] = t
        result.rounds.append(answers)
        result.tokens.append(result.tokens[-1] + more.generated_tokens)
        result.flags.append(flags)
    return result


def _continue(policy: Policy, task: Task, items: Sequence[tuple[Problem, list[str]]], temperature: float,
              max_new_tokens: int, seed: int) -> tuple[list[Trajectory], GenerationCost]:
    """Complete each (problem, kept lines): the kept lines plus the sampled rest, as trajectories."""
    if not items:
        return [], GenerationCost()
    prompts = [task.prefix_prompt(p, kept) for p, kept in items]
    result = policy.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                             seed=[derive_seed(seed, p.id, len(kept)) for p, kept in items])
    out = []
    for (p, kept), row in zip(items, result.completions, strict=True):
        whole = replace(row[0], text=task.solution_text([*kept, *task.steps(row[0].text)]), token_ids=None)
        out.append(to_trajectory(p, whole, task, f"{p.id}-refine", meta={"kept": len(kept)}))
    return out, result.cost


class RefineRecord(BaseModel):
    """One problem's refinement: the answer after each round and the tokens generated for it."""

    problem_id: str
    critic: str
    answers: list[str | None]  # final answer after round 0..R
    correct: list[bool]  # per round: the latest answer
    integrated: list[bool]  # per round: the majority over rounds 0..r
    steps: list[list[str]]  # the solution after each round
    revised_from: list[int | None]  # per round: the line revised from (None: accepted or round 0)
    generated_tokens: list[int]  # per round, this problem's own tokens


def refine_to_file(policy: Policy, problems: Sequence[Problem], task: Task, critic: Critic, path,
                   rounds: int = 2, *, temperature: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                   batch_problems: int = 64, on_batch=None) -> list[RefineRecord]:
    """:func:`refine` over batches of problems, one fsync'd append per batch (resumable)."""
    from stepforge.jobs import Batch, run_resumable
    from stepforge.schema import read_jsonl

    batches = [Batch(b, list(problems[i:i + batch_problems]), [p.id for p in problems[i:i + batch_problems]])
               for b, i in enumerate(range(0, len(problems), batch_problems))]

    def process(batch: Batch[Problem]) -> list[RefineRecord]:
        res = refine(policy, batch.items, task, critic, rounds, temperature=temperature,
                     max_new_tokens=max_new_tokens, seed=derive_seed(seed, "batch", batch.index))
        integrated = [res.integrated(task, batch.items, r) for r in range(rounds + 1)]
        records = []
        for i, p in enumerate(batch.items):
            mine = [res.rounds[r][i] for r in range(rounds + 1)]
            records.append(RefineRecord(
                problem_id=p.id, critic=critic.name, answers=[t.final_answer for t in mine],
                correct=[bool(t.correct) for t in mine], integrated=[integrated[r][i] for r in range(rounds + 1)],
                steps=[t.steps for t in mine], revised_from=[res.flags[r][i] for r in range(rounds + 1)],
                generated_tokens=[t.cost.generated_tokens if r == 0 or res.flags[r][i] is not None else 0
                                  for r, t in enumerate(mine)]))
        if on_batch:
            on_batch(len(records))
        return records

    run_resumable(path, batches, RefineRecord, process, id_of=lambda r: r.problem_id)
    return read_jsonl(path, RefineRecord)
