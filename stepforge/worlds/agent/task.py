"""The agent world's Task and World, registered with :mod:`stepforge.tasks`."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from stepforge.tasks import Task, World, register_world
from stepforge.worlds.agent.game import ReachEnv, generate, parse_game
from stepforge.worlds.arith import task as arith_task

_VALUE = re.compile(r"=(\d+)(?: [+-]\d+)?(?: no)?\s*$")


def _final_value(text: str) -> str | None:
    """The value after the last turn (the episode's answer)."""
    for line in reversed(text.strip().splitlines()):
        m = _VALUE.search(line.strip())
        if m:
            return m.group(1)
    return None


AGENT = Task(
    name="agent",
    build_prompt=lambda p: parse_game(p.question).prompt,
    extract_answer=_final_value,
    answer_mode="exact",
    step_stop="=",  # the agent writes an action; the environment writes "=value\n"
    truth_is_exact=True,
)


def _train_policy(out: str | Path, steps: int = 2000, seed: int = 0, threads: int = 1, progress=None,
                  episodes: int = 6000, noise: float = 0.3, record: dict | None = None, **config) -> Path:
    """The world's tiny Llama (arith tokenizer) imitating noisy-expert turns: each example is
    the transcript so far -> the next action and its ``=`` (observations are never targets)."""
    import random

    from stepforge.worlds.agent.game import expert_turns, sample_game
    from stepforge.worlds.arith.policy import PolicyTrainConfig, train_policy

    rng = random.Random(seed)
    corpus = [(text, action + "=") for _ in range(episodes) for text, action in expert_turns(sample_game(rng), rng,
                                                                                            noise)]
    info = {"corpus": f"{len(corpus)} turns of {episodes} noisy-expert episodes (noise {noise})", **(record or {})}
    return train_policy(out, PolicyTrainConfig(steps=steps, seed=seed, threads=threads, **config), progress=progress,
                        corpus=corpus, record=info)


# shipped: 6,000 steps of `train-world --world agent`, then 4,000 more from it at lr 3e-3 (its json);
# T = 1 success 44.2% on 1,000 tasks
SHIPPED_CHECKPOINT = Path(__file__).parent / "checkpoint"

# the arith world's lazy policy plumbing, for this world's checkpoint and cache (same model family and tokenizer)
AGENT_WORLD = register_world(World(
    name="agent", task=AGENT, generate=generate,
    policy_dir=partial(arith_task._policy_dir, world="agent", shipped=SHIPPED_CHECKPOINT),
    load_policy=partial(arith_task._load_policy, world="agent", shipped=SHIPPED_CHECKPOINT), train_policy=_train_policy,
    cache_dir=partial(arith_task._cache_dir, "agent"), make_env=ReachEnv, defaults={"min_steps": 2, "max_steps": 5},
))
