"""Fill-in-the-middle step expansion (MathFimer, arXiv 2502.11684): pure text functions.

A solution Y = (y_1..y_n) is cut at step i into prefix P = y_<i, middle M = y_i and suffix
S = y_>i. Training text, PSM order (MathFimer's), loss on M and EOS only::

    <fim_prefix> Q P <fim_suffix> S <fim_middle> M </s>

SPM order (Bavarian et al. 2022), ``<fim_suffix> S <fim_prefix> Q P <fim_middle> M``, puts the
prefix right before the middle; a small model then reads the running state from the line
next to the one it writes (bench/step_expansion.py measures both).

Expansion asks, at every gap before y_i, for a step ŷ = FIM(Q, y_<i, y_>=i) and inserts it
unless it is empty, states the answer, is near-identical to y_i (similarity > η = 0.8) or,
with a checker, is wrong. Original steps never change, so the answer never does.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")

# answer_risk: rollouts from the prefix succeed less often with the step (runner, mc_rollouts > 0)
DropReason = Literal["empty", "answer_line", "redundant", "wrong", "answer_risk"]
DROP_REASONS: tuple[DropReason, ...] = ("empty", "answer_line", "redundant", "wrong", "answer_risk")
FimOrder = Literal["psm", "spm"]
FIM_ORDERS: tuple[FimOrder, ...] = ("psm", "spm")
ETA = 0.8  # MathFimer's similarity threshold


@dataclass(frozen=True)
class FimTokens:
    prefix: str
    suffix: str
    middle: str


# Checked against a tokenizer by fim_tokens_of, never assumed: each must be one known token.
KNOWN_FIM_TOKENS = (
    FimTokens("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5 / Qwen2.5-Coder
    FimTokens("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, the world expander
)


def fim_tokens_of(tokenizer) -> FimTokens | None:
    """The tokenizer's own FIM tokens: the first known set whose three strings each encode to
    exactly one token id that is not the unknown token; None when it has none."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for tokens in KNOWN_FIM_TOKENS:
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in (tokens.prefix, tokens.suffix, tokens.middle)]
        if all(len(i) == 1 and i[0] != unk for i in ids):
            return tokens
    return None


def fim_prompt(tokens: FimTokens, question: str, prefix: Sequence[str], suffix: Sequence[str],
               sep: str = "\n", order: FimOrder = "psm") -> str:
    """PSM: ``<pre> Q sep y_1 sep .. y_{i-1} sep <suf> y_i sep .. y_n <mid>``; SPM:
    ``<suf> y_i sep .. y_n <pre> Q sep y_1 sep .. y_{i-1} sep <mid>`` (the middle follows)."""
    if order not in FIM_ORDERS:
        raise ValueError(f"unknown FIM order {order!r}; expected one of {FIM_ORDERS}")
    head = question.rstrip(sep) + sep + "".join(s + sep for s in prefix)
    if order == "spm":
        return f"{tokens.suffix}{sep.join(suffix)}{tokens.prefix}{head}{tokens.middle}"
    return f"{tokens.prefix}{head}{tokens.suffix}{sep.join(suffix)}{tokens.middle}"


def fim_examples(question: str, steps: Sequence[str], tokens: FimTokens, rng: random.Random, draws: int = 3,
                 sep: str = "\n", order: FimOrder = "psm") -> list[tuple[str, str]]:
    """(prompt, middle) training pairs: ``draws`` distinct random cut points of one solution."""
    cuts = rng.sample(range(len(steps)), min(draws, len(steps)))
    return [(fim_prompt(tokens, question, steps[:i], steps[i + 1:], sep, order), steps[i]) for i in cuts]


def similarity(a: str, b: str) -> float:
    """``difflib.SequenceMatcher`` ratio of the stripped texts (1.0 = identical)."""
    return difflib.SequenceMatcher(None, a.strip(), b.strip()).ratio()


def more_similar_than(a: str, b: str, threshold: float) -> bool:
    """``similarity(a, b) > threshold``, cheaply ruling out most pairs by difflib's upper bounds
    first (for all-pairs checks such as deduplication)."""
    m = difflib.SequenceMatcher(None, a.strip(), b.strip())
    return m.real_quick_ratio() > threshold and m.quick_ratio() > threshold and m.ratio() > threshold


def drop_reason(candidate: str, next_step: str, *, eta: float = ETA,
                is_final_step: Callable[[str], bool] = lambda s: False,
                is_right: Callable[[], bool | None] | None = None) -> DropReason | None:
    """Why the candidate step before ``next_step`` is dropped, or None to insert it.

    In order: empty; states the answer (it could change the solution's answer); similarity to
    ``next_step`` above ``eta``; ``is_right()`` (the checker, if any) says False.
    """
    step = candidate.strip()
    if not step:
        return "empty"
    if is_final_step(step):
        return "answer_line"
    if similarity(step, next_step) > eta:
        return "redundant"
    if is_right is not None and is_right() is False:
        return "wrong"
    return None


def insert_before(items: Sequence[T], inserted: Mapping[int, T]) -> list[T]:
    """``items`` with ``inserted[i]`` placed before ``items[i]``."""
    return [x for i, item in enumerate(items) for x in ((inserted[i], item) if i in inserted else (item,))]


def insert_steps(steps: Sequence[str], inserted: Mapping[int, str]) -> tuple[list[str], list[int]]:
    """``steps`` with ``inserted[i]`` (stripped) placed before ``steps[i]``; also the new lines' indices."""
    where = [i + n for n, i in enumerate(sorted(inserted))]
    return insert_before(steps, {i: s.strip() for i, s in inserted.items()}), where
