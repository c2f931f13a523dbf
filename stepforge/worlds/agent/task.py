"""The agent world's Task and World, registered with :mod:`stepforge.tasks`."""

from __future__ import annotations

import re
from pathlib import Path

from stepforge.tasks import Task, World, register_world
from stepforge.worlds.agent.game import ReachEnv, generate

_VALUE = re.compile(r"=(\d+)(?: no)?\s*$")


def _final_value(text: str) -> str | None:
    """The value after the last turn (the episode's answer)."""
    for line in reversed(text.strip().splitlines()):
        m = _VALUE.search(line.strip())
        if m:
            return m.group(1)
    return None


AGENT = Task(
    name="agent",
    build_prompt=lambda p: p.question + "\n",
    extract_answer=_final_value,
    answer_mode="exact",
    step_stop="=",  # the agent writes an action; the environment writes "=value\n"
    truth_is_exact=True,
)


def _no_policy(path: str | Path | None = None):
    raise FileNotFoundError("the agent world has no trained policy yet (issue #12); pass --model DIR")


AGENT_WORLD = register_world(World(
    name="agent", task=AGENT, generate=generate, policy_dir=lambda path=None: Path(path) if path else None,
    load_policy=_no_policy, make_env=ReachEnv, defaults={"min_steps": 2, "max_steps": 5},
))
