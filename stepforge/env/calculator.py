"""GSM8K (or any word problem with a numeric answer) as a tool-use episode (issue #12).

Each turn the model writes one step; a step that computes something ends in a calculator
call in GSM8K's own annotation, with the value the model claims, and the generation stops at
``>>``::

    In May Natalia sold 48/2 = <<48/2=24          <- the agent's turn (claims 24)
    >>24                                          <- the calculator's answer and a newline

The calculator evaluates the expression (:func:`stepforge.verify.equations.safe_eval`, never
``eval``) and the turn's exact label is whether the claimed value agrees with it (a turn
without a call, or without a claim, has no label). A step that gives the final answer ("The
answer is 72.") ends the episode with reward 1 if it is right; an expression the calculator
cannot evaluate costs −0.1. The state key (GiGPO's anchors) is the sequence of values the
calculator has returned so far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stepforge.schema import Problem
from stepforge.tasks import GSM8K, EnvStep, Task, register_environment, register_task
from stepforge.verify.answers import extract_answer
from stepforge.verify.equations import UnsafeExpression, safe_eval, values_agree

CALL_OPEN, CALL_CLOSE = "<<", ">>"
BAD_CALL_PENALTY = -0.1
MAX_TURNS = 12
_CALL = re.compile(r"<<([^<>=]*)(?:=([^<>]*))?$")

GSM8K_TOOL_FEWSHOT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\n"
    "In May Natalia sold 48/2 = <<48/2=24>>24\n"
    "Altogether she sold 48+24 = <<48+24=72>>72\n"
    "The answer is 72.\n\n"
)
GSM8K_TOOL_SYSTEM = ("Solve the math problem one step per line. End a step that computes with a calculator call "
                     "<<expression=value>>; the calculator writes the exact value after it. Finish with a line "
                     "'The answer is N.'")


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@dataclass
class CalculatorEnv:
    """One tool-use episode of a word problem."""

    problem: Problem | None = None
    values: list[str] = field(default_factory=list)
    turns: int = 0
    max_turns: int = MAX_TURNS

    @property
    def state(self) -> str:
        """The values the calculator has returned so far (GiGPO's anchor key)."""
        return "|".join(self.values)

    def reset(self, problem: Problem) -> tuple[str, str]:
        self.problem, self.values, self.turns = problem, [], 0
        return GSM8K_TOOL.build_prompt(problem), self.state

    def step(self, action: str) -> EnvStep:
        if self.problem is None:
            raise RuntimeError("reset the environment before stepping it")
        self.turns += 1
        out_of_turns = self.turns >= self.max_turns
        call = _CALL.search(action.strip())
        if call is None:  # a plain step: the final answer ends the episode
            final = GSM8K_TOOL.is_final_step(action)
            reward = float(GSM8K_TOOL.is_correct(self.problem, extract_answer(action))) if final else 0.0
            return EnvStep("\n", reward, final or out_of_turns, self.state, None)
        try:
            value = safe_eval(call.group(1))
        except (UnsafeExpression, ZeroDivisionError):
            return EnvStep(CALL_CLOSE + "error\n", BAD_CALL_PENALTY, out_of_turns, self.state, False)
        self.values.append(_format(value))
        claimed = call.group(2)
        label = None
        if claimed is not None and claimed.strip():
            try:
                label = values_agree(value, float(claimed.replace(",", "").strip()))
            except ValueError:
                label = False  # a claim that is not a number
        return EnvStep(f"{CALL_CLOSE}{self.values[-1]}\n", 0.0, out_of_turns, self.state, label)


GSM8K_TOOL = register_task(Task(
    name="gsm8k-tool",
    build_prompt=lambda p: f"{GSM8K_TOOL_FEWSHOT}Question: {p.question}\n",
    extract_answer=extract_answer,
    answer_mode="math",
    step_stop=CALL_CLOSE,  # the turn ends where the calculator answers (or at the end of a plain line)
    solution_stop=("\n\n", "\nQuestion:"),
    is_final_step=GSM8K.is_final_step,
    system_prompt=GSM8K_TOOL_SYSTEM,
), replace_existing=True)
register_environment("gsm8k-tool", GSM8K_TOOL, CalculatorEnv)
