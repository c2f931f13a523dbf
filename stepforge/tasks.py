"""The Task seam: everything a layer needs to know about a problem family.

A :class:`Task` says how to prompt for a problem (plain text or chat), which string ends a
step, whether a generated step ends the solution, how to read the answer back and compare
it, and (when there is one) an exact step checker. A :class:`World` is a built-in problem
family with ground truth: a Task plus a problem generator and where its trained policy and
PRM live. Layers below the CLI know tasks and worlds only through this module; user code
adds its own with :func:`register_task` / :func:`register_world`.

Built-in worlds register themselves when their package is imported; :func:`get_task` and
:func:`get_world` import them on first use, so nothing here names a world's module.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from stepforge.schema import Problem
from stepforge.segment import get_segmenter, split_steps
from stepforge.verify.answers import AnswerMode, answers_match, extract_answer
from stepforge.verify.equations import first_arithmetic_error

BUILTIN_WORLDS = ("stepforge.worlds.arith", "stepforge.worlds.agent")  # imported on first lookup; each registers itself


@dataclass(frozen=True)
class Chat:
    """A chat prompt: messages (role/content dicts). When the last one is the assistant's, the
    backend continues it (``continue_final_message``) instead of starting a new turn."""

    messages: tuple[dict[str, str], ...]

    @property
    def continues(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"

    @property
    def text(self) -> str:
        """A plain rendering for logs and for backends without a chat template."""
        return "\n".join(m["content"] for m in self.messages)


Prompt = str | Chat


# PRefLexOR's thinking tags (arXiv 2410.12375): a scratchpad before the answer
THINK_OPEN, THINK_CLOSE = "<|thinking|>", "<|/thinking|>"
THINKING_INSTRUCTION = (f"Use {THINK_OPEN}: first think step by step between {THINK_OPEN} and {THINK_CLOSE}, each on "
                        "its own line, then write the solution.")


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text (a chat's messages joined), e.g. for length checks."""
    return prompt.text if isinstance(prompt, Chat) else prompt


@dataclass(frozen=True)
class Task:
    name: str
    build_prompt: Callable[[Problem], str]  # plain-text prompt (base models)
    extract_answer: Callable[[str], str | None]
    answer_mode: AnswerMode = "math"
    segmenter: str = "line"
    step_stop: str = "\n"  # stop string that ends one step when generating step by step
    solution_stop: tuple[str, ...] = ()  # stop strings that end a whole solution (besides EOS)
    first_error: Callable[[Problem, list[str]], int | None] | None = None
    truth_is_exact: bool = False  # first_error is ground truth (not a lower bound)
    is_final_step: Callable[[str], bool] = lambda step: False  # the step that states the answer
    # chat rendering: system prompt and the user turn (default: the question itself)
    system_prompt: str | None = None
    user_message: Callable[[Problem], str] = lambda p: p.question
    chat: bool = False  # render prompts as Chat (set per run from --chat / the tokenizer)
    # the problem behind a question when the question alone determines the answer (worlds)
    recover_problem: Callable[[str, str], Problem] | None = None

    def __post_init__(self) -> None:
        get_segmenter(self.segmenter)  # fail at construction on an unknown segmenter

    def with_chat(self, chat: bool) -> Task:
        return self if chat == self.chat else replace(self, chat=chat)

    def with_thinking(self) -> Task:
        """PRefLexOR's format on real data: the prompt (the system turn in chat mode, a first line
        otherwise) asks for a scratchpad inside the thinking tags before the solution. The tags'
        lines are steps like any other; answers are read after them as before."""
        ask = THINKING_INSTRUCTION
        system = f"{self.system_prompt}\n{ask}" if self.system_prompt else ask
        build = self.build_prompt
        return replace(self, name=f"{self.name}-thinking", system_prompt=system,
                       build_prompt=lambda p: f"{ask}\n{build(p)}")

    def steps(self, completion: str) -> list[str]:
        return split_steps(completion, self.segmenter)

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return answers_match(problem.answer, answer, self.answer_mode)

    def prompt(self, problem: Problem) -> Prompt:
        """The prompt for a whole solution."""
        return self.prefix_prompt(problem, ())

    def prefix_prompt(self, problem: Problem, steps: Sequence[str]) -> Prompt:
        """Prompt that continues after ``steps`` (the state p_t of DESIGN.md §4). In chat mode
        the steps are the assistant's partial answer, continued by the backend."""
        partial = "".join(s + self.step_stop for s in steps)
        if not self.chat:
            return self.build_prompt(problem) + partial
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.user_message(problem)})
        if partial:
            messages.append({"role": "assistant", "content": partial})
        return Chat(tuple(messages))

    def solution_text(self, steps: Sequence[str]) -> str:
        return self.step_stop.join(steps)

    def answer_of(self, steps: Sequence[str]) -> str | None:
        """The final answer stated by these steps (None when none is)."""
        return self.extract_answer(self.solution_text(steps)) if steps else None

    def solution_correct(self, problem: Problem, steps: Sequence[str]) -> bool:
        return self.is_correct(problem, self.answer_of(steps))

    def step_ends_solution(self, text: str, finish_reason: str) -> bool:
        """Whether a step generated with ``stop=[step_stop, *solution_stop]`` ends the solution,
        decided from the text and ``finish_reason`` only (servers differ in what else they say):
        an empty step (the model stopped), the answer step, or a step cut by the token limit.
        A step that ended at EOS without an answer is continued once more: that call returns
        an empty step, which ends it."""
        step = text.strip()
        return not step or self.is_final_step(step) or finish_reason == "length"


@dataclass(frozen=True)
class EnvStep:
    """What an environment answers to one action (DESIGN.md: env/)."""

    observation: str  # text appended after the action (the policy never trains on it)
    reward: float
    done: bool
    state: str  # a hashable key of the state after the action (GiGPO's anchor states)
    progress: bool | None = None  # exact per-turn label where the environment knows it


class Environment(Protocol):
    """A multi-turn task: ``reset`` gives the first observation (the prompt), ``step`` consumes
    one action (the agent's whole turn) and answers. One instance per episode."""

    def reset(self, problem: Problem) -> tuple[str, str]:
        """(first observation, state key)."""
        ...

    def step(self, action: str) -> EnvStep: ...


@dataclass(frozen=True)
class World:
    """A built-in problem family with exact ground truth (DESIGN.md §3)."""

    name: str
    task: Task
    # (n, seed, prefix, min_steps, max_steps) -> problems, deterministic in seed
    generate: Callable[..., list[Problem]]
    policy_dir: Callable[[str | Path | None], Path | None]  # a trained policy (given dir, shipped, cache)
    load_policy: Callable[[str | Path | None], tuple[Any, Any]]  # (model, tokenizer)
    # (out, steps=, seed=, threads=, progress=, style=, corpus=, special_tokens=, record=,
    # **trainer settings) -> dir; corpus: (prompt, completion) pairs instead of fresh problems;
    # special_tokens: added to the tokenizer (e.g. FIM tokens)
    train_policy: Callable[..., Path] | None = None
    prm_dir: Path | None = None  # the shipped PRM, if any
    cache_dir: Callable[[], Path] | None = None  # where train_policy writes by default
    defaults: dict[str, Any] = field(default_factory=dict)  # e.g. min_steps / max_steps of its demo
    # (problem, style) -> the reference solution's steps in one of ``styles`` (oracle corpora)
    reference_steps: Callable[[Problem, str], list[str]] | None = None
    styles: tuple[str, ...] = ("terse",)
    # multi-turn worlds: a fresh Environment per episode (None: single-turn)
    make_env: Callable[[], Environment] | None = None
    # a step that adds nothing (the padded world's check lines): the RL padding monitor
    padding_step: Callable[[str], bool] | None = None
    # concept-seeded synthesis (MUSTARD): level -> group -> concepts; (level, concepts, seed, id)
    # -> one problem in which the concepts occur often; problem -> the concept of each step
    concepts: dict[str, dict[str, tuple[str, ...]]] | None = None
    generate_seeded: Callable[[str, Sequence[str], int, str], Problem] | None = None
    concepts_of: Callable[[Problem], list[str]] | None = None


TASKS: dict[str, Task] = {}
WORLDS: dict[str, World] = {}
DEFAULT_WORLD = "arith"


def register_task(task: Task, *, replace_existing: bool = False) -> Task:
    """Make ``task`` available by name to every command (``--task NAME``)."""
    if task.name in TASKS and TASKS[task.name] is not task and not replace_existing:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def register_world(world: World) -> World:
    WORLDS[world.name] = world
    register_task(world.task, replace_existing=True)
    return world


# multi-turn environments that are not worlds (real-data agent paths): name -> (task, make_env)
ENVIRONMENTS: dict[str, tuple[Task, Callable[[], Environment]]] = {}
BUILTIN_ENVIRONMENTS = ("stepforge.env.calculator",)  # imported on first lookup; each registers itself


def register_environment(name: str, task: Task, make_env: Callable[[], Environment]) -> None:
    ENVIRONMENTS[name] = (task, make_env)


def get_environment(name: str) -> tuple[Task, Callable[[], Environment], World | None]:
    """A multi-turn environment by name: a world with ``make_env`` (its problems come from
    the world) or a registered real-data environment (problems come from ``--data``)."""
    _load_builtin_worlds()
    if name in WORLDS and WORLDS[name].make_env is not None:
        world = WORLDS[name]
        return world.task, world.make_env, world
    if name not in ENVIRONMENTS:
        for module in BUILTIN_ENVIRONMENTS:
            importlib.import_module(module)
    if name in ENVIRONMENTS:
        return (*ENVIRONMENTS[name], None)
    available = sorted([w.name for w in WORLDS.values() if w.make_env is not None] + list(ENVIRONMENTS))
    raise ValueError(f"unknown multi-turn environment {name!r}; available: {', '.join(available)}")


def _load_builtin_worlds() -> None:
    for module in BUILTIN_WORLDS:
        importlib.import_module(module)


def get_task(name: str) -> Task:
    if name not in TASKS:
        _load_builtin_worlds()
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None


def get_world(name: str | None = None) -> World:
    name = name or DEFAULT_WORLD
    if name not in WORLDS:
        _load_builtin_worlds()
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r}; available: {', '.join(sorted(WORLDS))}") from None


def world_of(task: Task) -> World | None:
    """The world a task belongs to (None for real-data tasks)."""
    _load_builtin_worlds()
    return next((w for w in WORLDS.values() if w.task.name == task.name), None)


# --- real-data tasks --------------------------------------------------------------------

GSM8K_FEWSHOT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n"
    "Natalia sold 48/2 = 24 clips in May.\n"
    "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
    "The answer is 72.\n\n"
)
GSM8K_SYSTEM = ("Solve the math problem step by step: one step per line, no blank lines, and finish with a line "
                "'The answer is N.'")
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

_FINAL_STEP = re.compile(r"####|\\boxed|answer is|^\s*(?:Answer|A)\s*:", re.IGNORECASE)


def _gsm8k_first_error(problem: Problem, steps: list[str]) -> int | None:
    return first_arithmetic_error(steps)


GSM8K = register_task(Task(
    name="gsm8k",
    build_prompt=lambda p: f"{GSM8K_FEWSHOT}Question: {p.question}\n",
    extract_answer=extract_answer,
    answer_mode="math",
    solution_stop=("\n\n", "\nQuestion:"),
    first_error=_gsm8k_first_error,  # arithmetic errors only: a lower bound on real errors
    is_final_step=lambda step: extract_answer(step) is not None and bool(_FINAL_STEP.search(step)),
    system_prompt=GSM8K_SYSTEM,
))

MATH = register_task(Task(
    name="math",
    build_prompt=lambda p: f"Problem: {p.question}\n{MATH_SYSTEM}\n\nSolution:\n",
    extract_answer=extract_answer,  # \boxed{} first among its anchors
    answer_mode="math",
    segmenter="blank_line",
    step_stop="\n\n",
    solution_stop=("\nProblem:",),
    first_error=_gsm8k_first_error,  # equations written in the text: a lower bound
    is_final_step=lambda step: "\\boxed" in step,
    system_prompt=MATH_SYSTEM,
))
