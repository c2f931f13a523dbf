"""A Task says how to prompt for a problem and how to read a solution back: the step
separator, the answer extractor, the equivalence check, and (when there is one) an exact
step checker giving ground-truth first errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stepforge.schema import Problem
from stepforge.segment import get_segmenter, split_steps
from stepforge.verify.answers import AnswerMode, answers_match, extract_answer
from stepforge.verify.equations import first_arithmetic_error
from stepforge.worlds.arith import problems as arith


@dataclass(frozen=True)
class Task:
    name: str
    build_prompt: Callable[[Problem], str]
    extract_answer: Callable[[str], str | None]
    answer_mode: AnswerMode = "math"
    segmenter: str = "line"
    step_stop: str = "\n"  # stop string that ends one step when generating step by step
    solution_stop: tuple[str, ...] = ()  # stop strings that end a whole solution (besides EOS)
    first_error: Callable[[Problem, list[str]], int | None] | None = None
    truth_is_exact: bool = False  # first_error is ground truth (not a lower bound)
    is_final_step: Callable[[str], bool] = lambda step: False  # the step that states the answer

    def __post_init__(self) -> None:
        get_segmenter(self.segmenter)  # fail at construction on an unknown segmenter

    def steps(self, completion: str) -> list[str]:
        return split_steps(completion, self.segmenter)

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return answers_match(problem.answer, answer, self.answer_mode)

    def prefix_prompt(self, problem: Problem, steps: Sequence[str]) -> str:
        """Prompt that continues after ``steps`` (the state p_t of DESIGN.md §4)."""
        return self.build_prompt(problem) + "".join(s + self.step_stop for s in steps)

    def solution_correct(self, problem: Problem, steps: Sequence[str]) -> bool:
        return self.is_correct(problem, self.extract_answer(self.step_stop.join(steps)))


def _arith_first_error(problem: Problem, steps: list[str]) -> int | None:
    return arith.first_error(problem.question, steps)


ARITH = Task(
    name="arith",
    build_prompt=lambda p: p.question + "\n",
    extract_answer=arith.extract_answer,
    answer_mode="exact",
    first_error=_arith_first_error,
    truth_is_exact=True,
    is_final_step=lambda step: step.startswith(arith.ANSWER_PREFIX),
)

GSM8K_FEWSHOT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n"
    "Natalia sold 48/2 = 24 clips in May.\n"
    "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
    "The answer is 72.\n\n"
)


_FINAL_STEP = re.compile(r"####|\\boxed|answer is|^\s*(?:Answer|A)\s*:", re.IGNORECASE)


def _gsm8k_first_error(problem: Problem, steps: list[str]) -> int | None:
    return first_arithmetic_error(steps)


GSM8K = Task(
    name="gsm8k",
    build_prompt=lambda p: f"{GSM8K_FEWSHOT}Question: {p.question}\n",
    extract_answer=extract_answer,
    answer_mode="math",
    solution_stop=("\n\n", "\nQuestion:"),
    first_error=_gsm8k_first_error,  # arithmetic errors only: a lower bound on real errors
    is_final_step=lambda step: extract_answer(step) is not None and bool(_FINAL_STEP.search(step)),
)

TASKS: dict[str, Task] = {"arith": ARITH, "gsm8k": GSM8K}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None
