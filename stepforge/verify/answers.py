"""Final-answer extraction and equivalence: exact, numeric (with tolerance), math-verify.

An answer that cannot be parsed is ``None`` and never equals anything: callers record it
as unparseable instead of crashing the run.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from typing import Literal

AnswerMode = Literal["exact", "numeric", "math"]

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANCHORS = (
    re.compile(r"####\s*(.+?)\s*$", re.MULTILINE),  # GSM8K reference
    re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"),  # LaTeX boxed
    re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*(.+?)(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*(?:Answer|A)\s*:\s*(.+?)\s*$", re.MULTILINE),
)


def extract_answer(text: str) -> str | None:
    """The text of the final answer: the last anchored answer (``#### N``, ``\\boxed{}``,
    "the answer is", ``Answer:``), else the last number, else None."""
    for pattern in _ANCHORS:
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def to_number(text: str | None) -> float | None:
    """A float from text like ``$1,234.5``, ``72.``, ``-3``; None if there is no single number."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    cleaned = re.sub(r"\s*(?:dollars?|units?|%)$", "", cleaned, flags=re.IGNORECASE)
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric_equal(a: str | None, b: str | None, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    x, y = to_number(a), to_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)


def exact_equal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip() == b.strip()


def math_equal(gold: str | None, pred: str | None) -> bool:
    """Equivalence via math-verify (LaTeX, fractions, sets, units), numeric first as a fast path."""
    if gold is None or pred is None:
        return False
    if numeric_equal(gold, pred):
        return True
    from math_verify import verify

    # math-verify's timeouts use SIGALRM, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    g, p = _parse_math(gold, timeout), _parse_math(pred, timeout)
    return bool(g) and bool(p) and verify(g, p, timeout_seconds=timeout)


def _parse_math(text: str, timeout: int | None) -> list:
    from math_verify import parse

    # An extracted answer is one expression: read it as math ("2x + x^2" raw would give 2);
    # math-verify only reads bare LaTeX inside delimiters. Text with its own delimiters is kept.
    if "$" not in text and "\\boxed" not in text:
        found = parse(f"${text}$", parsing_timeout=timeout)
        if found:
            return found
    return parse(text, parsing_timeout=timeout)


_MATCHERS: dict[str, Callable[[str | None, str | None], bool]] = {
    "exact": exact_equal, "numeric": numeric_equal, "math": math_equal,
}


def answers_match(gold: str | None, pred: str | None, mode: AnswerMode = "math") -> bool:
    try:
        return _MATCHERS[mode](gold, pred)
    except KeyError:
        raise ValueError(f"unknown answer mode {mode!r}; choose from {sorted(_MATCHERS)}") from None
