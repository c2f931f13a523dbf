"""Rendering :class:`~stepforge.tasks.Chat` prompts with a tokenizer's chat template.

A chat whose last message is the assistant's partial answer is *continued*
(``continue_final_message``): the rendering stops right after that text, with no end-of-turn
token. Templates often strip a message's trailing whitespace; the partial answer's trailing
step separator (e.g. ``"\\n"``) is put back, or the model would continue the previous step.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepforge.tasks import Chat, Prompt


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, chat: Chat) -> str:
    if not has_chat_template(tokenizer):
        raise ValueError("this model's tokenizer has no chat template: sample without --chat")
    messages = [dict(m) for m in chat.messages]
    if not chat.continues:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    partial = messages[-1]["content"]
    tail = partial[len(partial.rstrip()):]
    if tail and not text.endswith(tail):
        text += tail
    return text


def render_prompts(tokenizer, prompts: Sequence[Prompt]) -> tuple[list[str], bool]:
    """Texts to tokenize and whether they are chat renderings (which already hold the special
    tokens, so the tokenizer must not add BOS again). Chat and plain prompts don't mix."""
    kinds = {isinstance(p, Chat) for p in prompts}
    if len(kinds) > 1:
        raise ValueError("one generate call takes either chat prompts or plain-text prompts, not both")
    if kinds == {True}:
        return [render_chat(tokenizer, p) for p in prompts], True  # type: ignore[arg-type]
    return list(prompts), False  # type: ignore[arg-type]
