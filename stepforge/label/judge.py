"""LLM-judge labels: ask any Policy for the index of the first wrong step (ProcessBench style)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from stepforge.backends.base import Policy
from stepforge.label.methods import _labeled
from stepforge.label.rollouts import Estimate
from stepforge.schema import Trajectory, truth_labels
from stepforge.seeds import derive_seed
from stepforge.tasks import Chat

JUDGE_PROMPT = """The following is a math problem and a solution split into numbered steps.
Find the earliest step that contains an error. Reply with its index in \\boxed{{}},
or \\boxed{{-1}} if every step is correct.

Problem: {question}

{steps}

Earliest wrong step:"""

_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_NONE = re.compile(r"\b(?:no (?:wrong |incorrect )?step|all (?:the )?steps are correct|every step is correct|none)\b",
                   re.IGNORECASE)
_INDEX = re.compile(r"(?:step|index|paragraph)\s*#?\s*(-?\d+)", re.IGNORECASE)
_BARE = re.compile(r"^\s*(-?\d+)\s*\.?\s*$")


def judge_prompt(t: Trajectory) -> str:
    steps = "\n".join(f"Step {i}: {s}" for i, s in enumerate(t.steps))
    return JUDGE_PROMPT.format(question=t.question, steps=steps)


def parse_judgement(reply: str, n_steps: int) -> int | str | None:
    """The judged first-error index, None for "no error", or the string "unparseable".

    Reads ``\\boxed{k}`` first, then "step k", then a bare number; -1 or "all steps are
    correct" mean no error. An index outside 0..n_steps-1 is unparseable.
    """
    for pattern in (_BOXED, _INDEX, _BARE):
        m = pattern.search(reply)
        if m:
            k = int(m.group(1))
            if k == -1:
                return None
            return k if 0 <= k < n_steps else "unparseable"
    return None if _NONE.search(reply) else "unparseable"


def label_judge(trajectories: Sequence[Trajectory], judge: Policy, *, max_new_tokens: int = 64,
                seed: int = 0, chat: bool = False) -> list[Trajectory]:
    """One greedy judgement per trajectory, all in one backend call (``chat``: as a user turn
    for instruct models). An unparseable reply leaves the labels unset
    (``meta.judge_unparseable``) instead of failing the batch."""
    todo = [i for i, t in enumerate(trajectories) if t.steps]
    prompts = [judge_prompt(trajectories[i]) for i in todo]
    if chat:
        prompts = [Chat(({"role": "user", "content": p},)) for p in prompts]
    result = judge.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0,
                            seed=[derive_seed(seed, trajectories[i].id, "judge") for i in todo])
    replies = {i: row[0] for i, row in zip(todo, result.completions, strict=True)}
    out = []
    for i, t in enumerate(trajectories):
        if i not in replies:
            out.append(_labeled(t, [], None, "judge", meta={"judge_unparseable": True, "judge_reply": ""}))
            continue
        reply = replies[i]
        verdict = parse_judgement(reply.text, len(t.steps))
        spent = [Estimate(0, 0, 0, reply.tokens)]
        meta = {"judge_reply": reply.text[:500], "judge": getattr(judge, "name", "")}
        if verdict == "unparseable":
            out.append(_labeled(t, [None] * len(t.steps), None, "judge", spent, {**meta, "judge_unparseable": True}))
        else:
            first = verdict if isinstance(verdict, int) else None
            out.append(_labeled(t, truth_labels(len(t.steps), first), first, "judge", spent, meta))
    return out
