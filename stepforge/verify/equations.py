"""Step checker for arithmetic written in text: GSM8K ``<<expr=value>>`` calculator annotations
and plain ``a op b = c`` equations.

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
# An arithmetic expression (at least one operator) '=' a number, e.g. "48/2 = 24" or "3 x 4 = 12".
_EQUATION = re.compile(
    r"(?<![\w.])((?:[-(]\s*)*\$?\d[\d,]*(?:\.\d+)?\)*(?:\s*[-+*/x×÷]\s*\(*\s*\$?\d[\d,]*(?:\.\d+)?\s*\)*)+)"
    r"\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)"
)


def _normalise(text: str) -> str:
    return text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")


class UnsafeExpression(ValueError):
    """The text is not plain arithmetic."""


def safe_eval(expr: str) -> float:
    """Value of an arithmetic expression: numbers, + - * / // % (also × ÷ x), parentheses, unary ±."""
    cleaned = _normalise(expr).replace("$", "").replace(",", "")
    cleaned = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", cleaned)
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except SyntaxError:
        raise UnsafeExpression(f"not an arithmetic expression: {expr!r}") from None
    return _eval(tree.body, expr)


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
    return abs(computed - written) <= 0.5 * 10 ** (-decimals) + 1e-9


@dataclass(frozen=True)
class EquationCheck:
    expression: str
    written: str
    computed: float | None
    ok: bool


def _parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def check_equations(step: str) -> list[EquationCheck]:
    """Every checkable equation in ``step``: calculator annotations first, then plain equations
    outside them (GSM8K writes most equations both ways; each is checked once).

    Annotations are strict: one that does not parse counts as wrong. Plain text is ambiguous,
    so a plain equation is skipped (not judged) when its left side may continue further left
    ("60 students x 2/3 = 40", mixed numbers "3 1/2 - 2"), its right side continues
    ("= 1/4", "= 5A/5"), or it does not parse ("27(1/3)=9").
    """
    checks: dict[tuple[str, str], EquationCheck] = {}
    for expr, value in _ANNOTATION.findall(step):
        checks.setdefault(_key(expr, value), _check(expr, value))
    plain = _normalise(_ANNOTATION.sub(" ", step))
    for m in _EQUATION.finditer(plain):
        if _ambiguous(plain, m):
            continue
        check = _check(m.group(1), m.group(2))
        if check.computed is not None:
            checks.setdefault(_key(m.group(1), m.group(2)), check)
    return list(checks.values())


def _key(expr: str, value: str) -> tuple[str, str]:
    return re.sub(r"\s+", "", expr), value.strip()


def _ambiguous(text: str, m: re.Match[str]) -> bool:
    before = text[:m.start()].rstrip()
    after = text[m.end():]
    if before and (before[-1] in "0123456789+-*/×÷().^" or re.search(r"(?:^|\s)x$", before)):
        return True
    return bool(re.match(r"\s*[-+\d/*×÷^(%]|[A-Za-z]|\s+x\s", after))


def _check(expr: str, value: str) -> EquationCheck:
    written = _parse_number(value)
    if written is None:  # annotations may write the value as an expression: <<3/4=3/4>>
        try:
            written = safe_eval(value)
        except UnsafeExpression:
            written = None
    try:
        computed = safe_eval(expr)
    except UnsafeExpression:
        return EquationCheck(expr.strip(), value.strip(), None, False)
    ok = written is not None and values_agree(computed, written)
    return EquationCheck(expr.strip(), value.strip(), computed, ok)


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
