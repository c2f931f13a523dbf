r"""Step checker for arithmetic written in text: GSM8K ``<<expr=value>>`` calculator annotations,
plain ``a op b = c`` equations and chains ``a = b = c``, in plain text or LaTeX (``\times``,
``\cdot``, ``\div``, ``\frac{a}{b}``, ``$…$``).

Equations are found by a linear scan outward from each ``=`` (no backtracking regex: a long
sum costs time proportional to its length), each side bounded to ``MAX_SIDE_CHARS``.
Expressions are parsed with :mod:`ast` and evaluated over numbers, + − × ÷, unary minus and
parentheses only; anything else (names, calls, powers) is rejected, never ``eval``-ed.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}  # GSM8K annotations are Python: 560//10
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
MAX_SIDE_CHARS = 2000  # longer sides are not judged (and never parsed, which bounds ast's recursion too)
_SIDE_CHARS = frozenset("0123456789.,$ \t()+-*/")
_LATEX_OPS = ((r"\times", "*"), (r"\cdot", "*"), (r"\div", "/"), (r"\left", ""), (r"\right", ""),
              (r"\!", ""), (r"\,", ""))
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_TIMES_X = re.compile(r"(?<=[\d)])[ \t]*x[ \t]*(?=[\d(])")  # "3 x 4", "3x4": x between numbers
_HAS_OPERATOR = re.compile(r"[\d)][ \t]*[-+*/][ \t]*[-\d($.]")


def _normalise(text: str) -> str:
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    if "\\" in text:
        for latex, op in _LATEX_OPS:
            text = text.replace(latex, op)
        text = _FRAC.sub(r"((\1)/(\2))", text)
        text = text.replace("{", "(").replace("}", ")")
    return _TIMES_X.sub("*", text.replace("$", " "))


class UnsafeExpression(ValueError):
    """The text is not plain arithmetic."""


def safe_eval(expr: str) -> float:
    """Value of an arithmetic expression: numbers, + - * / // % (also × ÷ x), parentheses, unary ±."""
    cleaned = _normalise(expr).replace(",", "")
    if len(cleaned) > MAX_SIDE_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_SIDE_CHARS} characters")
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
        return _eval(tree.body, expr)
    except (SyntaxError, RecursionError, MemoryError):
        raise UnsafeExpression(f"not an arithmetic expression: {expr[:80]!r}") from None
    except OverflowError:
        raise UnsafeExpression(f"overflows: {expr[:80]!r}") from None


def _eval(node: ast.AST, expr: str) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, expr), _eval(node.right, expr)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise UnsafeExpression(f"division by zero in {expr!r}")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, expr))
    raise UnsafeExpression(f"only numbers, + - * / and parentheses are allowed: {expr!r}")


def values_agree(computed: float, written: float) -> bool:
    """True if ``written`` equals ``computed`` up to the rounding its own decimals imply
    (GSM8K writes 10/3 as 3.33), with a small relative slack for float noise."""
    if math.isclose(computed, written, rel_tol=1e-6, abs_tol=1e-9):
        return True
    text = repr(written)
    decimals = len(text.split(".")[1]) if "." in text and not text.endswith(".0") else 0
    # rounded or truncated to its own decimals: 10/3 = 3.33, 1547/3 = 515.66
    return abs(computed - written) < 10 ** (-decimals) and decimals > 0


@dataclass(frozen=True)
class EquationCheck:
    expression: str
    written: str
    computed: float | None
    ok: bool
    written_value: float | None = None


def _parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def check_equations(step: str) -> list[EquationCheck]:
    """Every checkable equation in ``step``: calculator annotations first, then plain equations
    and chains outside them (GSM8K writes most equations both ways; each is checked once).

    Annotations are strict: one that does not parse counts as wrong. Plain text is ambiguous,
    so a link ``left = right`` of a chain is judged only when the left side has an operator, both
    sides parse, the left side cannot continue further left ("60 students x 2/3 = 40") and the
    right side does not run on into text ("= 5A/5", "= 50%"); mixed numbers ("3 1/2 - 2") and
    "27(1/3)" do not parse, so they are skipped too.
    """
    checks: dict[tuple[str, str], EquationCheck] = {}
    for expr, value in _ANNOTATION.findall(step):
        checks.setdefault(_key(expr, value), _check(expr, value))
    plain = _normalise(_ANNOTATION.sub(" ", step))
    for left, right in _plain_links(plain):
        if not _HAS_OPERATOR.search(left):
            continue  # "20% of $20 = 0.20 * 20": a bare number on the left is part of a phrase
        check = _check(left, right)
        if check.computed is not None and check.written_value is not None:
            checks.setdefault(_key(left, right), check)
    return list(checks.values())


def _plain_links(text: str) -> list[tuple[str, str]]:
    """(left, right) sides of every '=' whose sides are arithmetic, found by scanning outward
    from each '=' over arithmetic characters only: linear in the length of the text."""
    eqs = [i for i, c in enumerate(text) if c == "="]
    links = []
    for k, pos in enumerate(eqs):
        lo = eqs[k - 1] + 1 if k else 0
        hi = eqs[k + 1] if k + 1 < len(eqs) else len(text)
        a = pos
        while a > lo and text[a - 1] in _SIDE_CHARS:
            a -= 1
        b = pos + 1
        while b < hi and text[b] in _SIDE_CHARS:
            b += 1
        if pos - a > MAX_SIDE_CHARS or b - pos > MAX_SIDE_CHARS:
            continue  # too long to judge
        # the left side starts at a number, "(" or a minus sign; the right side ends at one
        raw_left = text[a:pos]
        start = a + len(raw_left) - len(raw_left.lstrip(" \t,.)+*/"))
        raw_right = text[pos + 1:b]
        end = pos + 1 + len(raw_right.rstrip(" \t,.+-*/("))
        left, right = text[start:pos].strip(), text[pos + 1:end].strip()
        before, after = text[:start].rstrip(), text[end:]
        if not left or not right:
            continue
        if before and (before[-1] in "0123456789+-*/().^|" or re.search(r"(?:^|\s)x$", before)):
            continue  # the left side may continue further left
        if left[0] == "-" and before and before[-1].isalnum():
            continue  # "D - 8 = 60 - 8": a minus after a name is not a sign
        glued = text[start - 1:start]
        if glued and (glued.isalnum() or glued in "_^|!\\"):
            continue  # "r_3^2 - 10r_3 + 25", "\\sqrt(25/4)": glued to a name, a power or a function
        if left[0] == "(" and before[-1:].isalpha():
            continue  # "\\log_x (1/100)", "f (3)": the argument of a function
        if re.match(r"[A-Za-z%^_!|]|[ \t]*[-+*/(]", after):
            continue  # the right side runs on ("= 5A/5", "= 50%", "= 30 + rt", "0.0011_2")
        links.append((left, right))
    return links


def _key(expr: str, value: str) -> tuple[str, str]:
    return re.sub(r"\s+", "", expr), value.strip()


def _check(expr: str, value: str) -> EquationCheck:
    written = _parse_number(value)
    if written is None:  # the value may be an expression: <<3/4=3/4>>, or a chain "= 3 * 7 = 21"
        try:
            written = safe_eval(value)
        except UnsafeExpression:
            written = None
    try:
        computed = safe_eval(expr)
    except UnsafeExpression:
        return EquationCheck(expr.strip(), value.strip(), None, False, written)
    ok = written is not None and (values_agree(computed, written) or _quotient(expr, computed, written))
    return EquationCheck(expr.strip(), value.strip(), computed, ok, written)


def _quotient(expr: str, computed: float, written: float) -> bool:
    """"62 / 8 = 7" (remainder 6): a division written as its whole quotient."""
    return "/" in expr and written == int(written) and math.floor(computed + 1e-9) == written


def step_is_arithmetically_valid(step: str) -> bool | None:
    """True/False when the step has equations (all right / one wrong), None when none to check."""
    checks = check_equations(step)
    return None if not checks else all(c.ok for c in checks)


def first_arithmetic_error(steps: list[str]) -> int | None:
    """Index of the first step with a wrong equation (None if none): a lower bound on errors,
    since a step can be wrong in ways arithmetic does not show."""
    for i, step in enumerate(steps):
        if step_is_arithmetically_valid(step) is False:
            return i
    return None
