"""Concept-seeded synthesis of problems with stepwise solutions, kept only when a prover
verifies them, with correction rounds: MUSTARD (Huang et al., ICLR 2024, arXiv 2402.08957).

1. Seeds: a level and k concepts, either k from one group or one from each of k groups
   (MUSTARD's two seeding modes), drawn uniformly.
2. Draft: a generator writes a problem from the seed and a stepwise solution (in a world, the
   world's seeded problem generator writes the problem and its policy the solution).
3. Prove: a checker returns the first failing line and a message that names it without the
   expected value (a prover does not hand out the proof).
4. Correct (up to ``rounds`` times): in a world, keep the lines before the failure and
   regenerate from there; elsewhere, show the generator its solution with line numbers and
   the checker's messages and ask for a corrected one.
5. Keep what verifies; near-identical problems are dropped (similarity > ``dedup``).

Records (:class:`SynthRecord`) keep problem, solution, concepts, level, rounds used, every
message and the generation cost; verified ones also become Trajectories with exact labels
(worlds) for PRM or SFT data.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from stepforge.backends.base import GenerationCost, Policy
from stepforge.data.fim import more_similar_than
from stepforge.jobs import Batch, run_resumable
from stepforge.schema import Problem, read_jsonl, write_jsonl
from stepforge.seeds import derive_seed
from stepforge.tasks import Task, World
from stepforge.verify.answers import numeric_equal
from stepforge.verify.equations import check_equations

SeedMode = Literal["one_group", "across_groups"]


# --- concepts and seeds -----------------------------------------------------------------------

@dataclass(frozen=True)
class ConceptLibrary:
    """Concepts by level and group: ``levels[level][group] = (concept, ...)``."""

    levels: dict[str, dict[str, tuple[str, ...]]]

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a concept library needs at least one level")
        for level, groups in self.levels.items():
            if not groups or any(not concepts for concepts in groups.values()):
                raise ValueError(f"concept level {level!r}: every group needs at least one concept")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ConceptLibrary:
        """``level: {group: [concept, ...]}``; errors name the file and the key."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"{path}: expected a mapping level -> group -> list of concepts")
        levels: dict[str, dict[str, tuple[str, ...]]] = {}
        for level, groups in raw.items():
            if not isinstance(groups, dict) or not groups:
                raise ValueError(f"{path}: level {level!r} must map groups to lists of concepts")
            levels[str(level)] = {}
            for group, concepts in groups.items():
                if not isinstance(concepts, list) or not concepts or not all(isinstance(c, str) for c in concepts):
                    raise ValueError(f"{path}: {level}/{group} must be a non-empty list of concept names")
                levels[str(level)][str(group)] = tuple(concepts)
        return cls(levels)


@dataclass(frozen=True)
class Seed:
    id: str
    level: str
    concepts: tuple[str, ...]
    groups: tuple[str, ...]


def draw_seeds(library: ConceptLibrary, n: int, k: int = 1, mode: SeedMode = "one_group", seed: int = 0,
               prefix: str = "synth") -> list[Seed]:
    """``n`` seeds, deterministic in ``seed``: a level uniformly, then k distinct concepts of
    one group (``one_group``) or one concept from each of k distinct groups
    (``across_groups``); groups too small (or too few) for k are skipped."""
    rng = random.Random(seed)
    options = []  # (level, [groups]) that can host k concepts in this mode
    for level, groups in library.levels.items():
        fitting = [g for g, cs in groups.items() if len(cs) >= k] if mode == "one_group" else list(groups)
        if fitting and (mode == "one_group" or len(fitting) >= k):
            options.append((level, fitting))
    if not options:
        raise ValueError(f"no level of the concept library has room for k={k} concepts ({mode})")
    seeds = []
    for i in range(n):
        level, groups = rng.choice(options)
        if mode == "one_group":
            group = rng.choice(groups)
            chosen = tuple(rng.sample(library.levels[level][group], k))
            names = (group,) * k
        else:
            names = tuple(rng.sample(groups, k))
            chosen = tuple(rng.choice(library.levels[level][g]) for g in names)
        seeds.append(Seed(id=f"{prefix}-{seed}-{i}", level=level, concepts=chosen, groups=names))
    return seeds


# --- provers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: int | None = None  # 0-based index of the first failing line (None: ok, or no line to blame)
    message: str = ""


class Prover(Protocol):
    def __call__(self, problem: Problem, steps: Sequence[str]) -> Verdict: ...


def world_prover(task: Task) -> Prover:
    """A world's exact checker as the prover: names the first wrong line, never its value."""
    if task.first_error is None:
        raise ValueError(f"task {task.name!r} has no checker to prove with")
    first_error = task.first_error

    def prove(problem: Problem, steps: Sequence[str]) -> Verdict:
        if not steps:
            return Verdict(False, 0, "the solution is empty")
        wrong = first_error(problem, list(steps))
        if wrong is not None:
            return Verdict(False, wrong, f"line {wrong + 1} is wrong")
        if not task.solution_correct(problem, steps):
            return Verdict(False, len(steps), "the solution stops before its answer")
        return Verdict(True)

    return prove


_FINAL = re.compile(r"^####\s*(.+?)\s*$")
_ANNOTATED = re.compile(r"<<[^<>]*=\s*([^<>]+?)\s*>>")


def equation_prover(problem: Problem, steps: Sequence[str]) -> Verdict:
    """For GSM8K-style solutions (``<<expr=value>>`` annotations, a last line ``#### N``): every
    equation holds, there is at least one, and N equals the last computed value. Messages
    name the line and what fails, never the right value."""
    if not steps:
        return Verdict(False, 0, "the solution is empty")
    last_value = None
    for i, step in enumerate(steps[:-1]):
        for check in check_equations(step):
            if not check.ok:
                return Verdict(False, i, f"line {i + 1}: {check.expression} = {check.written} does not hold")
        values = _ANNOTATED.findall(step)
        if values:
            last_value = values[-1]
    final = _FINAL.match(steps[-1].strip())
    if final is None:
        return Verdict(False, len(steps) - 1, f"line {len(steps)}: the last line must be '#### <answer>'")
    if last_value is None:
        return Verdict(False, None, "no line shows its computation as <<expression=value>>")
    if not numeric_equal(final.group(1).replace(",", ""), last_value.replace(",", "")):
        return Verdict(False, len(steps) - 1, f"line {len(steps)}: the answer is not the last computed value")
    return Verdict(True)


# --- generators -------------------------------------------------------------------------------

@dataclass
class Draft:
    seed: Seed
    problem: Problem
    steps: list[str]
    answer_in_solution: bool = False  # the generator wrote the answer too (then it follows corrections)


def final_answer(steps: Sequence[str]) -> str:
    """N of the last ``#### N`` line ('' when there is none)."""
    return next((m.group(1) for m in map(_FINAL.match, reversed(steps)) if m), "")


class Generator(Protocol):
    """Writes drafts from seeds and corrects failed ones; one backend call per batch."""

    def draft(self, seeds: Sequence[Seed], rng_seed: int) -> tuple[list[Draft | None], GenerationCost]: ...

    def correct(self, drafts: Sequence[Draft], verdicts: Sequence[Verdict], rng_seed: int
                ) -> tuple[list[list[str]], GenerationCost]: ...


@dataclass
class WorldGenerator:
    """A world's seeded problem generator writes the problem, its policy the solution; a
    correction keeps the lines before the failing one and samples the rest again."""

    world: World
    policy: Policy
    temperature: float = 1.0
    max_new_tokens: int = 160

    def draft(self, seeds: Sequence[Seed], rng_seed: int) -> tuple[list[Draft | None], GenerationCost]:
        if self.world.generate_seeded is None:
            raise ValueError(f"world {self.world.name!r} has no seeded problem generator")
        problems = [self.world.generate_seeded(s.level, s.concepts, derive_seed(rng_seed, "problem", s.id), s.id)
                    for s in seeds]
        texts, cost = self._continue([(p, []) for p in problems], rng_seed)
        task = self.world.task
        return [Draft(s, p, task.steps(t)) for s, p, t in zip(seeds, problems, texts, strict=True)], cost

    def correct(self, drafts: Sequence[Draft], verdicts: Sequence[Verdict], rng_seed: int
                ) -> tuple[list[list[str]], GenerationCost]:
        kept = [d.steps[:v.line if v.line is not None else len(d.steps)] for d, v in zip(drafts, verdicts, strict=True)]
        texts, cost = self._continue([(d.problem, k) for d, k in zip(drafts, kept, strict=True)], rng_seed)
        return [k + self.world.task.steps(t) for k, t in zip(kept, texts, strict=True)], cost

    def _continue(self, items: Sequence[tuple[Problem, list[str]]], rng_seed: int
                  ) -> tuple[list[str], GenerationCost]:
        task = self.world.task
        prompts = [task.prefix_prompt(p, steps) for p, steps in items]
        seeds = [derive_seed(rng_seed, "solve", p.id, len(steps)) for p, steps in items]
        result = self.policy.generate(prompts, n=1, max_new_tokens=self.max_new_tokens,
                                      temperature=self.temperature, seed=seeds)
        return [row[0].text for row in result.completions], result.cost


DRAFT_PROMPT = (
    "Write a new {level} math word problem that uses these concepts: {concepts}. Then solve it step by step, "
    "one step per line. Show every calculation as <<expression=value>> (for example: He pays 3*4 = <<3*4=12>>12 "
    "dollars.) and end with a line '#### <answer>'.\n"
    "Reply exactly in this form:\nProblem: <the problem>\nSolution:\n<step 1>\n<step 2>\n...\n#### <answer>"
)
CORRECT_PROMPT = (
    "Problem: {problem}\n\nYour solution, with line numbers:\n{numbered}\n\nA checker found: {messages}\n"
    "Write a corrected solution: one step per line, every calculation as <<expression=value>>, and a last line "
    "'#### <answer>'. Reply with the solution lines only."
)


def parse_draft(text: str) -> tuple[str, list[str]] | None:
    """``Problem: ...`` then ``Solution:`` and its lines; None when the reply has neither."""
    m = re.search(r"Problem:\s*(.+?)\s*Solution:\s*(.*)", text, re.DOTALL | re.IGNORECASE)
    if not m:
        return None
    question = " ".join(m.group(1).split())
    steps = [line.strip() for line in m.group(2).strip().splitlines() if line.strip()]
    return (question, steps) if question and steps else None


@dataclass
class PromptedGenerator:
    """Any instruct model (chat or completion, through any backend) writes problem and
    GSM8K-style solution from the seed, and rewrites a failed solution from the checker's
    messages (MUSTARD's correction prompt: the solution with line numbers and the messages)."""

    policy: Policy
    chat: bool = True
    temperature: float = 0.7
    max_new_tokens: int = 512

    def _prompt(self, text: str):
        from stepforge.tasks import Chat

        return Chat(({"role": "user", "content": text},)) if self.chat else text + "\n"

    def draft(self, seeds: Sequence[Seed], rng_seed: int) -> tuple[list[Draft | None], GenerationCost]:
        prompts = [self._prompt(DRAFT_PROMPT.format(level=s.level, concepts="; ".join(s.concepts))) for s in seeds]
        result = self.policy.generate(prompts, n=1, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      seed=[derive_seed(rng_seed, "draft", s.id) for s in seeds])
        drafts: list[Draft | None] = []
        for s, row in zip(seeds, result.completions, strict=True):
            parsed = parse_draft(row[0].text)
            if parsed is None:
                drafts.append(None)
                continue
            question, steps = parsed
            problem = Problem(id=s.id, question=question, answer=final_answer(steps),
                              meta={"concepts": list(s.concepts)})
            drafts.append(Draft(s, problem, steps, answer_in_solution=True))
        return drafts, result.cost

    def correct(self, drafts: Sequence[Draft], verdicts: Sequence[Verdict], rng_seed: int
                ) -> tuple[list[list[str]], GenerationCost]:
        prompts = [self._prompt(CORRECT_PROMPT.format(
            problem=d.problem.question, numbered="\n".join(f"{i + 1}: {s}" for i, s in enumerate(d.steps)),
            messages=v.message)) for d, v in zip(drafts, verdicts, strict=True)]
        result = self.policy.generate(prompts, n=1, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      seed=[derive_seed(rng_seed, "correct", d.seed.id) for d in drafts])
        return [[line.strip() for line in row[0].text.strip().splitlines() if line.strip()]
                for row in result.completions], result.cost


# --- the loop ---------------------------------------------------------------------------------

class SynthRecord(BaseModel):
    """One MUSTARD data point, verified or not."""

    id: str
    level: str
    concepts: list[str]
    groups: list[str]
    problem: str
    answer: str
    solution: list[str]
    verified: bool
    rounds: int  # correction rounds used (0: the first draft verified or none was tried)
    messages: list[str] = Field(default_factory=list)  # the prover's message after each failed attempt
    duplicate_of: str | None = None  # a near-identical earlier problem (then not kept)
    generated_tokens: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class SynthConfig:
    rounds: int = 2  # MUSTARD: up to 2 correction rounds
    batch_size: int = 64  # seeds per batch (one backend call per batch and round)
    dedup: float = 0.9  # drop a problem this similar to an earlier kept one (1.0: exact duplicates only)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if not 0.0 < self.dedup <= 1.0:
            raise ValueError(f"dedup is a similarity in (0, 1], got {self.dedup}")


def synthesize_batch(generator: Generator, prover: Prover, seeds: Sequence[Seed], config: SynthConfig
                     ) -> tuple[list[SynthRecord], GenerationCost]:
    """Draft, prove, and correct failed drafts up to ``config.rounds`` times."""
    drafts, cost = generator.draft(seeds, config.seed)
    records: dict[str, SynthRecord] = {}
    live: list[tuple[Draft, Verdict]] = []
    for s, d in zip(seeds, drafts, strict=True):
        if d is None:  # unparseable: nothing to prove or correct
            records[s.id] = SynthRecord(id=s.id, level=s.level, concepts=list(s.concepts), groups=list(s.groups),
                                        problem="", answer="", solution=[], verified=False, rounds=0,
                                        messages=["the reply has no 'Problem:' and 'Solution:'"])
            continue
        live.append((d, prover(d.problem, d.steps)))
    used = {d.seed.id: 0 for d, _ in live}
    messages: dict[str, list[str]] = {d.seed.id: [] for d, _ in live}
    for round_ in range(1, config.rounds + 1):
        failed = [(d, v) for d, v in live if not v.ok]
        if not failed:
            break
        for d, v in failed:
            messages[d.seed.id].append(v.message)
        fixed, more = generator.correct([d for d, _ in failed], [v for _, v in failed],
                                        derive_seed(config.seed, "round", round_))
        cost = cost + more
        updated = {}
        for (d, _), steps in zip(failed, fixed, strict=True):
            d.steps = steps
            used[d.seed.id] = round_
            updated[d.seed.id] = prover(d.problem, steps)
        live = [(d, updated.get(d.seed.id, v)) for d, v in live]
    for d, v in live:
        if not v.ok:
            messages[d.seed.id].append(v.message)
        s = d.seed
        records[s.id] = SynthRecord(id=s.id, level=s.level, concepts=list(s.concepts), groups=list(s.groups),
                                    problem=d.problem.question, solution=list(d.steps),
                                    answer=final_answer(d.steps) if d.answer_in_solution else d.problem.answer,
                                    verified=v.ok, rounds=used[s.id], messages=messages[s.id],
                                    meta=dict(d.problem.meta))
    # the batch's tokens, corrections included, spread evenly over its seeds
    per_seed_tokens = round(cost.generated_tokens / max(1, len(seeds)))
    out = [records[s.id] for s in seeds]
    for r in out:
        r.generated_tokens = per_seed_tokens
    return out, cost


def mark_duplicates(records: Sequence[SynthRecord], threshold: float, seen: list[SynthRecord] | None = None) -> None:
    """Mark each verified record whose problem is this similar (or identical after whitespace
    and case) to an earlier kept one; ``seen``: the kept records so far (updated)."""
    kept = seen if seen is not None else []
    exact = {" ".join(r.problem.lower().split()): r.id for r in kept}
    for r in records:
        if not r.verified:
            continue
        key = " ".join(r.problem.lower().split())
        twin = exact.get(key)
        if twin is None and threshold < 1.0:
            twin = next((k.id for k in kept if more_similar_than(k.problem, r.problem, threshold)), None)
        if twin is not None:
            r.duplicate_of = twin
            continue
        kept.append(r)
        exact[key] = r.id


def synthesize_to_file(generator: Generator, prover: Prover, seeds: Sequence[Seed], out: str | Path,
                       config: SynthConfig, on_batch: Callable[[int, GenerationCost], None] | None = None
                       ) -> tuple[list[SynthRecord], list[SynthRecord]]:
    """Every record, verified or not, goes to ``<out>.all.jsonl`` (one fsync'd append per batch;
    a restart resumes after the last complete batch); then the verified, non-duplicate ones
    are written to ``out`` and the rest to ``<out>.invalid.jsonl``. Returns (kept, rejected)."""
    out = Path(out)
    log = out.with_name(out.name + ".all.jsonl")
    size = config.batch_size
    batches = [Batch(b, list(seeds[i:i + size]), [s.id for s in seeds[i:i + size]])
               for b, i in enumerate(range(0, len(seeds), size))]

    def process(batch: Batch[Seed]) -> list[SynthRecord]:
        records, cost = synthesize_batch(generator, prover, batch.items, config)
        if on_batch:
            on_batch(len(records), cost)
        return records

    run_resumable(log, batches, SynthRecord, process, id_of=lambda r: r.id)
    records = read_jsonl(log, SynthRecord)
    for r in records:
        r.duplicate_of = None
    mark_duplicates(records, config.dedup)
    kept = [r for r in records if r.verified and r.duplicate_of is None]
    rejected = [r for r in records if not (r.verified and r.duplicate_of is None)]
    write_jsonl(out, kept)
    write_jsonl(out.with_name(out.name + ".invalid.jsonl"), rejected)
    return kept, rejected


def records_to_trajectories(records: Sequence[SynthRecord], task: Task) -> list:
    """Verified records as Trajectories (exact step labels where the task's checker is exact)."""
    from stepforge.schema import Trajectory, truth_labels

    out = []
    for r in records:
        problem = Problem(id=r.id, question=r.problem, answer=r.answer)
        exact = task.truth_is_exact and task.first_error is not None
        first = task.first_error(problem, r.solution) if exact else None
        out.append(Trajectory(id=r.id, problem_id=r.id, question=r.problem, steps=r.solution,
                              final_answer=task.answer_of(r.solution), correct=r.verified,
                              step_labels=truth_labels(len(r.solution), first) if exact else [],
                              label_source="truth" if exact else None, first_error=first,
                              meta={"synth": {"level": r.level, "concepts": r.concepts, "rounds": r.rounds}}))
    return out
