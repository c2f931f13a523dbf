"""The arithmetic world's Task and World, registered with :mod:`stepforge.tasks`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from stepforge.schema import Problem
from stepforge.tasks import Task, World, register_world
from stepforge.worlds.arith import problems as arith


def _first_error(problem: Problem, steps: list[str]) -> int | None:
    return arith.first_error(problem.question, steps)


def _recover(problem_id: str, question: str) -> Problem:
    return arith.parse_question(question).to_problem(problem_id)


ARITH = Task(
    name="arith",
    build_prompt=lambda p: p.question + "\n",
    extract_answer=arith.extract_answer,
    answer_mode="exact",
    first_error=_first_error,
    truth_is_exact=True,
    is_final_step=lambda step: step.startswith(arith.ANSWER_PREFIX),
    recover_problem=_recover,
)


def generate(n: int, seed: int = 0, prefix: str = "arith", min_steps: int | None = None,
             max_steps: int | None = None) -> list[Problem]:
    base = arith.ArithConfig()
    lo = min_steps if min_steps is not None else base.min_steps
    hi = max_steps if max_steps is not None else max(base.max_steps, lo)
    return arith.generate_problems(n, arith.ArithConfig(min_steps=lo, max_steps=hi), seed=seed, prefix=prefix)


def _policy_dir(path: str | Path | None = None, world: str = "arith", shipped: Path | None = None) -> Path | None:
    from stepforge.worlds.arith.policy import resolve_policy_dir

    return resolve_policy_dir(path, world, shipped)


def _load_policy(path: str | Path | None = None, world: str = "arith", shipped: Path | None = None):
    from stepforge.worlds.arith.policy import load_policy

    return load_policy(path, world, shipped)


def _cache_dir(world: str = "arith") -> Path:
    from stepforge.worlds.arith.policy import default_cache_dir

    return default_cache_dir(world)


def _train_policy(out: str | Path, steps: int = 2000, seed: int = 0, threads: int = 1, progress=None,
                  style: str = "terse", corpus=None, special_tokens: tuple[str, ...] = (),
                  record: dict | None = None, **config) -> Path:
    """``config``: other PolicyTrainConfig fields (batch_size, lr, hidden_size...)."""
    from stepforge.worlds.arith.policy import PolicyTrainConfig, train_policy
    from stepforge.worlds.arith.tokenizer import THINKING_TOKENS, build_tokenizer_with

    plain = THINKING_TOKENS if style == "thinking" else ()  # the tags are words the policy writes
    tokenizer = build_tokenizer_with(special_tokens, plain) if special_tokens or plain else None
    return train_policy(out, PolicyTrainConfig(steps=steps, seed=seed, threads=threads, style=style, **config),
                        progress=progress, corpus=corpus, tokenizer=tokenizer, record=record)


def _generate_seeded(level: str, concepts, seed: int, problem_id: str) -> Problem:
    import random

    if level not in {str(k) for k in arith.LEVELS}:
        raise ValueError(f"unknown arith level {level!r}; levels: {', '.join(map(str, arith.LEVELS))}")
    return arith.sample_seeded_problem(random.Random(seed), arith.LEVELS[int(level)], concepts).to_problem(problem_id)


def _concepts_of(problem: Problem) -> list[str]:
    return arith.problem_atoms(arith.parse_question(problem.question))


CONCEPTS = {str(level): dict(arith.ATOM_GROUPS) for level in arith.LEVELS}


def _reference_steps(problem: Problem, style: str = "terse") -> list[str]:
    return arith.parse_question(problem.question).solution_in(style).split("\n")


ARITH_WORLD = register_world(World(
    name="arith", task=ARITH, generate=generate, policy_dir=_policy_dir, load_policy=_load_policy,
    train_policy=_train_policy, cache_dir=lambda: _cache_dir(), prm_dir=Path(__file__).parent / "prm",
    defaults={"min_steps": 4, "max_steps": 6, "search_min_steps": 6, "search_max_steps": 8},
    reference_steps=_reference_steps, styles=arith.STYLES, padding_step=arith.is_check_line,
    concepts=CONCEPTS, generate_seeded=_generate_seeded, concepts_of=_concepts_of,
))

# The same problems and checker, with a policy trained on padded solutions (check lines that
# restate the running value) and a PRM trained on its samples: room for a policy to game a
# step-level reward by padding, as PURE saw (bench/credit_assignment.py).
PADDED = "arith-padded"
ARITH_PADDED_WORLD = register_world(World(
    name=PADDED, task=ARITH, generate=generate, policy_dir=partial(_policy_dir, world=PADDED),
    load_policy=partial(_load_policy, world=PADDED), train_policy=partial(_train_policy, style="padded"),
    cache_dir=partial(_cache_dir, PADDED), prm_dir=Path(__file__).parent / "padded" / "prm",
    defaults=ARITH_WORLD.defaults, reference_steps=_reference_steps, styles=arith.STYLES,
    padding_step=arith.is_check_line, concepts=CONCEPTS, generate_seeded=_generate_seeded, concepts_of=_concepts_of,
))
