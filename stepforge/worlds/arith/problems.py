"""The arithmetic world: multi-step problems whose every step is checked exactly.

A problem is a start value and a chain of tagged operations; the solution writes one
step a line, running value last, then ``Answer: N``::

    40 a-6 b*2 c-4 d+3        <- question
    a-6=34                    <- step 0
    b*2=68
    c-4=64
    d+3=67
    Answer: 67                <- step T (the answer is a step too)

Tags make "which operation is step i" a content match for a tiny model (DESIGN.md §3).

The *detailed* style adds a partial-product line before each multiplication whose input is
>= 10 (``b 34*3=90+12`` before ``b*3=102``). Such a line is optional: the checker accepts a
solution with or without it, checks it on its own (the running value, both partial products)
and gives it its own step label; it never shifts which terse step is which.

The *padded* style adds check lines that restate the running value (``check 34``) at random
gaps before the answer line, any number of them: harmless padding, right when the value is
the current one, as reasoning models restate and re-check. They give a policy room to game
a step-level reward by length (PURE's reward hacking; bench/credit_assignment.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepforge.schema import Problem
from stepforge.tasks import THINK_CLOSE, THINK_OPEN

TAGS = "abcdefghijklmnop"
OPERATORS = "+-*"
ANSWER_PREFIX = "Answer:"
_STEP_RE = re.compile(r"^([a-p])([+\-*])(\d)=(\d+)$")
_ANSWER_RE = re.compile(r"^Answer:\s*(-?\d+)\s*$")
_DETAIL_RE = re.compile(r"^([a-p]) (\d+)\*(\d)=(\d+)\+(\d+)$")
CHECK_PREFIX = "check"
_CHECK_RE = re.compile(r"^check (-?\d+)$")
STYLES = ("terse", "detailed", "padded", "thinking")

PAD_RATE = 0.15  # padded style: chance of (another) check line at each gap


@dataclass(frozen=True)
class ArithConfig:
    """Difficulty knobs of the world."""

    min_steps: int = 4
    max_steps: int = 6
    max_start: int = 50
    max_value: int = 99
    max_addend: int = 9
    max_factor: int = 5
    operators: str = OPERATORS

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= len(TAGS):
            raise ValueError(f"need 1 <= min_steps <= max_steps <= {len(TAGS)}, got "
                             f"{self.min_steps}..{self.max_steps}")
        if not (1 <= self.max_addend <= 9 and 2 <= self.max_factor <= 9):
            raise ValueError("operands are single digits: max_addend in 1..9, max_factor in 2..9")
        if not self.operators or set(self.operators) - set(OPERATORS):
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS!r}, got {self.operators!r}")
        if not 0 < self.max_start <= self.max_value:
            raise ValueError("need 0 < max_start <= max_value")


@dataclass(frozen=True)
class ArithProblem:
    start: int
    ops: tuple[tuple[str, int], ...]
    values: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        values, v = [], self.start
        for op, k in self.ops:
            v = apply_op(v, op, k)
            values.append(v)
        object.__setattr__(self, "values", tuple(values))

    @property
    def answer(self) -> int:
        return self.values[-1] if self.values else self.start

    @property
    def question(self) -> str:
        return " ".join([str(self.start)] + [f"{TAGS[i]}{op}{k}" for i, (op, k) in enumerate(self.ops)])

    @property
    def steps(self) -> list[str]:
        lines = [f"{TAGS[i]}{op}{k}={v}" for i, ((op, k), v) in enumerate(zip(self.ops, self.values, strict=True))]
        return [*lines, f"{ANSWER_PREFIX} {self.answer}"]

    @property
    def solution(self) -> str:
        return "\n".join(self.steps)

    @property
    def detailed_steps(self) -> list[str]:
        """``steps`` with a partial-product line before each multiplication of a value >= 10."""
        out, before = [], self.start
        for i, (step, (op, k)) in enumerate(zip(self.steps, self.ops, strict=False)):
            if op == "*" and (line := detail_line(TAGS[i], before, k)) is not None:
                out.append(line)
            out.append(step)
            before = self.values[i]
        return [*out, self.steps[-1]]

    def padded_steps(self, rng: random.Random, rate: float = PAD_RATE) -> list[str]:
        """``steps`` with check lines restating the running value at the gaps before the answer
        line: at each gap, another one with probability ``rate`` (so 0, 1, 2... of them)."""
        out, value = [], self.start
        for i, step in enumerate(self.steps):
            if i < len(self.ops) + 1:
                while rng.random() < rate:
                    out.append(check_line(value))
            out.append(step)
            value = self.values[i] if i < len(self.ops) else value
        return out

    @property
    def thinking_steps(self) -> list[str]:
        """PRefLexOR's format: a thinking block holding the detailed draft (partial-product lines
        included, no answer), then the terse solution and its answer."""
        return [THINK_OPEN, *self.detailed_steps[:-1], THINK_CLOSE, *self.steps]

    def solution_in(self, style: str = "terse", rng: random.Random | None = None) -> str:
        """The solution in one of ``STYLES``; ``padded`` draws its check lines from ``rng``
        (default: seeded by the question, so a problem's padded solution is fixed)."""
        if style not in STYLES:
            raise ValueError(f"unknown solution style {style!r}; expected one of {STYLES}")
        if style == "padded":
            return "\n".join(self.padded_steps(rng or random.Random(self.question)))
        if style == "thinking":
            return "\n".join(self.thinking_steps)
        return "\n".join(self.steps if style == "terse" else self.detailed_steps)

    def to_problem(self, problem_id: str) -> Problem:
        return Problem(id=problem_id, question=self.question, answer=str(self.answer),
                       meta={"world": "arith", "start": self.start, "ops": [list(o) for o in self.ops]})


def apply_op(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    raise ValueError(f"unknown operator {op!r}")


def sample_problem(rng: random.Random, config: ArithConfig, max_tries: int = 1000) -> ArithProblem:
    """One problem; every running value stays within [0, max_value].

    A chain that reaches a value where no allowed operation fits (possible when "-" is not
    among the operators) is drawn again.
    """
    return sample_seeded_problem(rng, config, (), max_tries=max_tries)  # no seeds: the same draws


# Skill atoms (MUSTARD's concepts, issue #13): what one operation asks of the solver, grouped
# by operator. Levels grow chain length and value range.
ATOM_GROUPS: dict[str, tuple[str, ...]] = {
    "addition": ("add_no_carry", "add_carry"),
    "subtraction": ("sub_no_borrow", "sub_borrow"),
    "multiplication": ("mul_2", "mul_3", "mul_4", "mul_5"),
}
LEVELS: dict[int, ArithConfig] = {
    1: ArithConfig(min_steps=2, max_steps=3, max_start=20, max_value=60),
    2: ArithConfig(min_steps=4, max_steps=6),
    3: ArithConfig(min_steps=7, max_steps=10),
}


def operation_atom(value: int, op: str, operand: int) -> str:
    """The skill atom of ``value op operand``: a carry/borrow in the units digit, or the factor."""
    if op == "+":
        return "add_carry" if value % 10 + operand >= 10 else "add_no_carry"
    if op == "-":
        return "sub_borrow" if value % 10 < operand else "sub_no_borrow"
    return f"mul_{operand}"


def problem_atoms(problem: ArithProblem) -> list[str]:
    """The atom of each operation, in order."""
    before = (problem.start, *problem.values[:-1])
    return [operation_atom(v, op, k) for v, (op, k) in zip(before, problem.ops, strict=True)]


def sample_seeded_problem(rng: random.Random, config: ArithConfig, atoms: Sequence[str], rate: float = 0.7,
                          max_tries: int = 1000) -> ArithProblem:
    """A problem whose operations are, with probability ``rate`` each, drawn among those of the
    seeded ``atoms`` (when one fits the running value), so seeded atoms occur often; the rest
    are drawn uniformly among the operations that keep the value in range. No atoms: the
    world's natural distribution (:func:`sample_problem`)."""
    known = {a for group in ATOM_GROUPS.values() for a in group}
    if set(atoms) - known:
        raise ValueError(f"unknown skill atoms {sorted(set(atoms) - known)}; known: {sorted(known)}")
    for _ in range(max_tries):
        n_steps = rng.randint(config.min_steps, config.max_steps)
        start = v = rng.randint(1, config.max_start)
        ops: list[tuple[str, int]] = []
        for _ in range(n_steps):
            choices = [(op, k) for op in config.operators for k in _operands(op, config)
                       if 0 <= apply_op(v, op, k) <= config.max_value]
            seeded = [c for c in choices if operation_atom(v, *c) in atoms]
            if seeded and rng.random() < rate:
                choices = seeded
            if not choices:
                break
            op, k = rng.choice(choices)
            ops.append((op, k))
            v = apply_op(v, op, k)
        else:
            return ArithProblem(start=start, ops=tuple(ops))
    raise ValueError(f"no {config.min_steps}-step chain fits within [0, {config.max_value}] with operators "
                     f"{config.operators!r}{f' and atoms {list(atoms)}' if atoms else ''} after {max_tries} tries; "
                     "allow '-' or raise max_value")


def _operands(op: str, config: ArithConfig) -> range:
    return range(2, config.max_factor + 1) if op == "*" else range(1, config.max_addend + 1)


def generate_problems(n: int, config: ArithConfig | None = None, seed: int = 0,
                      prefix: str = "arith") -> list[Problem]:
    """``n`` problems, deterministic in ``seed``; ids are ``{prefix}-{seed}-{i}``."""
    config = config or ArithConfig()
    rng = random.Random(seed)
    return [sample_problem(rng, config).to_problem(f"{prefix}-{seed}-{i}") for i in range(n)]


def parse_question(question: str) -> ArithProblem:
    """Inverse of ``ArithProblem.question``; raises ValueError naming the bad token."""
    tokens = question.split()
    if not tokens or not tokens[0].isdigit():
        raise ValueError(f"arith question must start with a number: {question!r}")
    ops = []
    for i, tok in enumerate(tokens[1:]):
        m = re.fullmatch(r"([a-p])([+\-*])(\d)", tok)
        if not m or m.group(1) != TAGS[i]:
            raise ValueError(f"arith question token {i + 1} {tok!r} is not '{TAGS[i]}<op><digit>': {question!r}")
        ops.append((m.group(2), int(m.group(3))))
    return ArithProblem(start=int(tokens[0]), ops=tuple(ops))


def detail_line(tag: str, value: int, factor: int) -> str | None:
    """The partial-product line of ``value*factor`` (``b 34*3=90+12``); None below 10."""
    if value < 10:
        return None
    tens, units = divmod(value, 10)
    return f"{tag} {value}*{factor}={tens * 10 * factor}+{units * factor}"


def is_detail_line(step: str) -> bool:
    return bool(_DETAIL_RE.match(step.strip()))


def check_line(value: int) -> str:
    """The padded style's restatement of the running value: ``check 34``."""
    return f"{CHECK_PREFIX} {value}"


def is_check_line(step: str) -> bool:
    return bool(_CHECK_RE.match(step.strip()))


def step_operations(question: str, steps: list[str]) -> list[int | None]:
    """Per step, the index of the operation it belongs to on the true path (a partial-product
    line belongs to the multiplication after it; the answer line to ``len(ops)``), up to and
    including the first wrong step; None past it."""
    problem = parse_question(question)
    wrong = first_error(question, steps)
    out: list[int | None] = []
    j = 0
    for i, step in enumerate(steps):
        if wrong is not None and i > wrong:
            out.append(None)
            continue
        out.append(j)
        if not (is_detail_line(step) or is_check_line(step)):
            j = min(j + 1, len(problem.ops))
    return out


def first_error(question: str, steps: list[str]) -> int | None:
    """Index of the first wrong step against the exact solution path, None if none is wrong.

    Terse step j < T must read ``{tag_j}{op_j}{k_j}={true value_j}``; step T must be
    ``Answer: {answer}``; any step past T is wrong. A partial-product line may stand right
    before a multiplication step j of a true value v >= 10 and must then read
    ``detail_line(tag_j, v, k_j)`` (at most one per multiplication). Check lines may stand
    anywhere before the answer line, any number of them, and must read ``check_line(v)`` for
    the running value v (the start value before the first step). A chain that stops early
    with every step right has no wrong step (it is incomplete, not wrong): callers see that
    through ``correct``. A solution that opens with a thinking block (``THINK_OPEN``) has its
    draft checked as a chain on its own (a draft may stop before the answer), then what follows
    ``THINK_CLOSE`` as a solution.
    """
    if steps and steps[0].strip() == THINK_OPEN:  # a thinking block: its draft is a chain of its own
        close = next((i for i, x in enumerate(steps) if x.strip() == THINK_CLOSE), None)
        draft = steps[1:close] if close is not None else steps[1:]
        wrong = first_error(question, draft)
        if wrong is not None:
            return wrong + 1
        if close is None:
            return None
        wrong = first_error(question, steps[close + 1:])
        return None if wrong is None else close + 1 + wrong
    problem = parse_question(question)
    expected = problem.steps
    j, detailed = 0, False
    for i, raw in enumerate(steps):
        step = raw.strip()
        if is_check_line(step):
            if j >= len(expected) or step != check_line(problem.values[j - 1] if j else problem.start):
                return i
            continue
        if is_detail_line(step):
            before = problem.values[j - 1] if j else problem.start
            ok = (not detailed and j < len(problem.ops) and problem.ops[j][0] == "*"
                  and step == detail_line(TAGS[j], before, problem.ops[j][1]))
            if not ok:
                return i
            detailed = True
            continue
        if j >= len(expected) or step != expected[j]:
            return i
        j, detailed = j + 1, False
    return None


def step_is_consistent(step: str, previous_value: int) -> bool:
    """Local check: is ``step`` right given the value the chain had before it (not the true path)?"""
    m = _STEP_RE.match(step.strip())
    return bool(m) and apply_op(previous_value, m.group(2), int(m.group(3))) == int(m.group(4))


def extract_answer(text: str) -> str | None:
    """The N of the last ``Answer: N`` line, or None when there is none."""
    for line in reversed(text.strip().splitlines()):
        m = _ANSWER_RE.match(line.strip())
        if m:
            return m.group(1)
    return None
