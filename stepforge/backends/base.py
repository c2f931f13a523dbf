"""The one Protocol every generation backend implements (DESIGN.md §1).

A backend takes text prompts (each a shared prefix) and returns ``n`` continuations of
each, stopping at a stop string (a step boundary) or at the end, plus the compute spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from stepforge.tasks import Chat, Prompt

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One continuation. ``text`` excludes the stop string; ``stop_reason`` is the stop string
    that ended it when the backend says (None otherwise: decide from the text, see
    :meth:`~stepforge.tasks.Task.step_ends_solution`); ``token_ids`` are the generated ids
    (EOS included when generated) where the backend has them, for training on exactly what
    was sampled."""

    text: str
    tokens: int
    finish_reason: FinishReason
    stop_reason: str | None = None
    token_ids: list[int] | None = None


@dataclass
class GenerationCost:
    """Compute of one or more calls. ``prompt_tokens`` counts each prompt once per call, as
    OpenAI-compatible servers report it; ``forward_passes`` counts model invocations."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    forward_passes: int = 0

    def __add__(self, other: GenerationCost) -> GenerationCost:
        return GenerationCost(self.prompt_tokens + other.prompt_tokens,
                              self.generated_tokens + other.generated_tokens,
                              self.forward_passes + other.forward_passes)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "forward_passes": self.forward_passes}


@dataclass
class GenerationResult:
    """``completions[i][j]`` is sample j of prompt i."""

    completions: list[list[Completion]]
    cost: GenerationCost = field(default_factory=GenerationCost)

    def texts(self) -> list[list[str]]:
        return [[c.text for c in row] for row in self.completions]


class BackendError(RuntimeError):
    """A backend could not produce completions (server unreachable, bad reply, ...)."""


@runtime_checkable
class Policy(Protocol):
    """Anything that continues prompts: plain text, or :class:`~stepforge.tasks.Chat` messages
    (a final assistant message is continued)."""

    name: str

    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, stop: Sequence[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 1.0, seed: int | Sequence[int] | None = None
                 ) -> GenerationResult:
        """``n`` continuations of every prompt; temperature 0 means greedy. ``seed``: one per
        prompt (see :mod:`stepforge.seeds`), or an int from which they are derived."""
        ...


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, str | None]:
    """Text before the earliest stop string, and that stop string (None if none occurs)."""
    best, which = len(text), None
    for s in stop or ():
        i = text.find(s)
        if s and i != -1 and i < best:
            best, which = i, s
    return text[:best], which


def validate_request(prompts: Sequence[Prompt], n: int, max_new_tokens: int, temperature: float) -> None:
    if isinstance(prompts, (str, Chat)):
        raise TypeError("prompts must be a sequence of prompts, not one prompt")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
