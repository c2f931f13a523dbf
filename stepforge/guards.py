"""Input guards: refuse an item that cannot fit a model's context before any work on it.

A cheap character bound comes first (no tokenizer ever sees a multi-megabyte step); only
texts that pass it are tokenized to check exactly. Over-long items are an error naming the
item, or, when the caller allows skipping, a recorded reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stepforge.schema import RecordError

# No tokenizer we know packs more characters than this into one token on average over a
# long text, so a text longer than limit × this cannot fit in limit tokens.
MAX_CHARS_PER_TOKEN = 32


def too_long(texts: Sequence[str], limit: int | None, count_tokens: Callable[[Sequence[str]], list[int]] | None,
             reserve: int = 0) -> list[str | None]:
    """Per text: None if it fits ``limit − reserve`` tokens, else why not. Texts over the
    character bound are judged without tokenizing; the rest in one tokenizer call."""
    if limit is None:
        return [None] * len(texts)
    budget = limit - reserve
    if budget <= 0:
        raise ValueError(f"the model's context ({limit} tokens) leaves no room for {reserve} generated tokens; "
                         "lower --max-new-tokens")
    out: list[str | None] = [None] * len(texts)
    exact = []
    for i, t in enumerate(texts):
        if len(t) > budget * MAX_CHARS_PER_TOKEN:
            out[i] = f"{len(t):,} characters cannot fit {budget:,} tokens"
        else:
            exact.append(i)
    if count_tokens is not None and exact:
        for i, n in zip(exact, count_tokens([texts[i] for i in exact]), strict=True):
            if n > budget:
                out[i] = f"{n:,} tokens > {budget:,} ({limit:,} context − {reserve:,} to generate)"
    return out


def refuse_too_long(names: Sequence[str], reasons: Sequence[str | None], what: str, skippable: bool = True) -> None:
    """Raise naming the first over-long item (and how many there are)."""
    bad = [(n, r) for n, r in zip(names, reasons, strict=True) if r is not None]
    if bad:
        name, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        hint = "; shorten it or pass --skip-too-long" if skippable else ""
        raise RecordError(f"{name}: too long for {what}: {reason}{more}{hint}")
