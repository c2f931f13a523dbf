"""Step segmentation strategies, pluggable by name.

``segment(text, name)`` returns pieces that concatenate back to ``text`` exactly (each
separator stays at the end of the piece before it); ``split_steps`` returns the cleaned
steps a :class:`~stepforge.schema.Trajectory` stores (stripped, empty pieces dropped).

Register a new strategy with ``@register_segmenter("name")`` on a ``(text, **options) -> list[str]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

Segmenter = Callable[..., list[str]]
_REGISTRY: dict[str, Segmenter] = {}


class UnknownSegmenterError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register_segmenter(name: str) -> Callable[[Segmenter], Segmenter]:
    def decorate(fn: Segmenter) -> Segmenter:
        _REGISTRY[name] = fn
        return fn

    return decorate


def available_segmenters() -> list[str]:
    return sorted(_REGISTRY)


def get_segmenter(name: str) -> Segmenter:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSegmenterError(
            f"unknown segmenter {name!r}; available: {', '.join(available_segmenters())}") from None


def segment(text: str, name: str = "line", **options) -> list[str]:
    """Lossless split: ``"".join(segment(text, name)) == text``."""
    pieces = get_segmenter(name)(text, **options)
    return [p for p in pieces if p]


def split_steps(text: str, name: str = "line", **options) -> list[str]:
    """Steps as stored in a trajectory: each piece stripped, blank pieces dropped."""
    return [p.strip() for p in segment(text, name, **options) if p.strip()]


def _split_after(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Cut after every match of ``pattern`` (the match stays with the piece before it)."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start:
            pieces.append(text[start:m.end()])
            start = m.end()
    pieces.append(text[start:])
    return pieces


def _split_before(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Cut before every match of ``pattern`` (the match starts the next piece)."""
    cuts = [m.start() for m in pattern.finditer(text) if m.start() > 0]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


_LINE = re.compile(r"\n")
_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
_STEP_MARKER = re.compile(r"(?im)^[ \t]*(?:#+\s*)?(?:\*\*)?step\s*\d+\s*[:.)]")
_TURN = re.compile(r"(?m)^(?:user|assistant|tool|observation|action)\s*:", re.IGNORECASE)


@register_segmenter("line")
def by_line(text: str) -> list[str]:
    """One step per line."""
    return _split_after(text, _LINE)


@register_segmenter("blank_line")
def by_blank_line(text: str) -> list[str]:
    """Steps separated by one or more blank lines (``\\n\\n``)."""
    return _split_after(text, _BLANK_LINE)


@register_segmenter("step_marker")
def by_step_marker(text: str) -> list[str]:
    """Each "Step k:" (also "## Step k." or "**Step k)**") starts a step; text before the first
    marker is a step of its own."""
    return _split_before(text, _STEP_MARKER)


@register_segmenter("turns")
def by_turn(text: str) -> list[str]:
    """Agent transcripts: each ``user:``/``assistant:``/``tool:``/``observation:``/``action:`` line
    starts a turn."""
    return _split_before(text, _TURN)


@register_segmenter("token_chunks")
def by_token_chunks(text: str, size: int = 64, tokenizer=None) -> list[str]:
    """Fixed chunks of ``size`` tokens. With a HF ``tokenizer`` chunks are cut at its tokens'
    character offsets; without one, at whitespace-delimited words (whitespace kept)."""
    if size < 1:
        raise ValueError(f"token_chunks needs size >= 1, got {size}")
    if tokenizer is not None:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = [s for s, _ in offsets]
    else:
        starts = [m.start() for m in re.finditer(r"\S+\s*", text)]
    cuts = [starts[i] for i in range(size, len(starts), size)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]
