"""Token alignment, in one place: where steps sit in a text and which tokens hold them.

Step boundaries are always located by character offsets (a tokenizer's ``offset_mapping``,
or the decoded length of generated tokens), never by counting tokens, so any tokenizer
works (DESIGN.md §4). Pure functions over offsets; the callers own the tokenizers.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

Offsets = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class StepLayout:
    """``question + question_sep + step_1 + step_sep + step_2 + step_sep ...``: the text, each
    step's own span (start, end) and the index of the last character of its separator."""

    text: str
    spans: list[tuple[int, int]]
    ends: list[int]


def layout_steps(question: str, steps: Sequence[str], question_sep: str, step_sep: str) -> StepLayout:
    text = question + question_sep
    spans, ends = [], []
    for s in steps:
        spans.append((len(text), len(text) + len(s)))
        text += s + step_sep
        ends.append(len(text) - 1)
    return StepLayout(text, spans, ends)


def locate_steps(text: str, steps: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    """Spans of ``steps`` found in order in ``text`` from ``start`` (steps are stripped pieces
    of it, so each is found after the previous one)."""
    spans, cursor = [], start
    for s in steps:
        at = text.find(s, cursor)
        if at < 0:
            raise ValueError(f"step {s[:40]!r} not found in the text after character {cursor}")
        spans.append((at, at + len(s)))
        cursor = at + len(s)
    return spans


def token_starts(offsets: Offsets) -> list[int]:
    """Start character of each token; −1 for special tokens (empty spans)."""
    return [a if b > a else -1 for a, b in offsets]


def tokens_at_chars(offsets: Offsets, chars: Sequence[int]) -> list[int]:
    """For each character index, the token holding it: the last token starting at or before
    it, skipping special tokens."""
    starts = token_starts(offsets)
    out = []
    for c in chars:
        j = bisect.bisect_right(starts, c) - 1
        while j > 0 and starts[j] == -1:
            j -= 1
        out.append(j)
    return out


def token_steps(offsets: Offsets, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per token, the index of the step whose span holds its first character; −1 for tokens
    outside every step (question, separators, special tokens). Spans must be sorted."""
    bounds = [a for a, _ in spans]
    out = []
    for a, b in offsets:
        k = bisect.bisect_right(bounds, a) - 1
        out.append(k if b > a and k >= 0 and a < spans[k][1] else -1)
    return out


def generated_offsets(tokenizer, token_ids: Sequence[int], window: int = 6) -> list[tuple[int, int]]:
    """Character spans of generated tokens in their decoded text (special tokens decode to
    nothing), by incremental detokenisation over a short window, as vLLM does: token k covers
    the characters it adds to the decoding of the few tokens before it. Linear in length."""
    out, end = [], 0
    for k in range(len(token_ids)):
        lo = max(0, k - window)
        before = tokenizer.decode(token_ids[lo:k], skip_special_tokens=True)
        added = len(tokenizer.decode(token_ids[lo:k + 1], skip_special_tokens=True)) - len(before)
        added = max(0, added)
        out.append((end, end + added))
        end += added
    return out
