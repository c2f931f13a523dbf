"""Batched multi-turn rollouts (issue #12).

Every live episode of every problem is continued in one backend call per turn: the policy
writes one action (stopping at the task's ``step_stop``), the environment answers with an
observation that is appended to the transcript, and the episode ends when the environment
says so or after ``max_turns``. An episode is a Trajectory whose steps are the actions;
observations, rewards, state keys and the exact per-turn progress labels (where the
environment knows them) go to ``meta.episode``, so observation tokens can be kept out of
every loss (:func:`action_spans`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stepforge.backends.base import GenerationCost, Policy
from stepforge.schema import Cost, Problem, Trajectory
from stepforge.seeds import derive_seed
from stepforge.tasks import Environment, Task


@dataclass
class _Episode:
    problem: Problem
    env: Environment
    transcript: str
    states: list[str]
    prompt_chars: int = 0  # the first observation's length: the answer is read after it
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    progress: list[bool | None] = field(default_factory=list)
    tokens: int = 0
    done: bool = False


def rollout(policy: Policy, problems: Sequence[Problem], task: Task, make_env: Callable[[], Environment], *,
            n: int = 1, temperature: float = 1.0, max_turns: int = 16, max_new_tokens: int = 16, seed: int = 0
            ) -> tuple[list[Trajectory], GenerationCost]:
    """``n`` episodes per problem; returns them (problem order, then sample order) and the cost."""
    episodes = []
    for p in problems:
        for j in range(n):
            env = make_env()
            first, state = env.reset(p)
            episodes.append((j, _Episode(p, env, first, [state], len(first))))
    cost = GenerationCost()
    for turn in range(max_turns):
        live = [(j, e) for j, e in episodes if not e.done]
        if not live:
            break
        result = policy.generate([e.transcript for _, e in live], n=1, stop=[task.step_stop, "\n"],
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=[derive_seed(seed, e.problem.id, j, turn) for j, e in live])
        cost = cost + result.cost
        for (_, e), row in zip(live, result.completions, strict=True):
            action = row[0].text.strip()
            answer = e.env.step(action)
            e.transcript += action + answer.observation
            e.actions.append(action)
            e.observations.append(answer.observation)
            e.rewards.append(answer.reward)
            e.progress.append(answer.progress)
            e.states.append(answer.state)
            e.tokens += row[0].tokens
            e.done = answer.done
    out = []
    for j, e in episodes:
        answer = task.extract_answer(e.transcript[e.prompt_chars:])  # never the prompt's worked examples
        labels = [None if x is None else float(x) for x in e.progress]
        out.append(Trajectory(
            id=f"{e.problem.id}-e{j}", problem_id=e.problem.id, question=e.problem.question, steps=e.actions,
            final_answer=answer, correct=task.is_correct(e.problem, answer), step_labels=labels,
            label_source="truth" if e.actions and all(x is not None for x in labels) else None,
            cost=Cost(rollouts=0, generated_tokens=e.tokens),
            meta={"episode": {"observations": e.observations, "rewards": e.rewards, "states": e.states,
                              "return": sum(e.rewards), "turns": len(e.actions), "ended": e.done}}))
    return out, cost


def episode_text(problem: Problem, trajectory: Trajectory, task: Task) -> str:
    """The transcript the policy saw: prompt, then each action followed by its observation."""
    obs = trajectory.meta["episode"]["observations"]
    return task.build_prompt(problem) + "".join(a + o for a, o in zip(trajectory.steps, obs, strict=True))


def action_spans(problem: Problem, trajectory: Trajectory, task: Task) -> list[tuple[int, int]]:
    """Character spans of the actions in :func:`episode_text`: the only text a loss may train
    on (observations and the prompt are the environment's)."""
    at = len(task.build_prompt(problem))
    spans = []
    for a, o in zip(trajectory.steps, trajectory.meta["episode"]["observations"], strict=True):
        spans.append((at, at + len(a)))
        at += len(a) + len(o)
    return spans


def episode_tokens(tokenizer, problem: Problem, trajectory: Trajectory, task: Task) -> tuple[list[int], list[int]]:
    """The episode's transcript as token ids and, per token, the index of the turn whose action
    holds it; −1 for prompt, observation and special tokens (they are masked out of every
    loss). Turns are found by character offsets (:mod:`stepforge.alignment`), so any fast
    tokenizer works; the transcript is re-encoded as a whole, as multi-turn agent trainers do."""
    from stepforge.alignment import token_steps

    enc = tokenizer(episode_text(problem, trajectory, task), return_offsets_mapping=True)
    return list(enc["input_ids"]), token_steps(enc["offset_mapping"], action_spans(problem, trajectory, task))


def rollout_to_file(policy: Policy, problems: Sequence[Problem], task: Task, make_env: Callable[[], Environment],
                    path, *, n: int = 1, temperature: float = 1.0, max_turns: int = 16, max_new_tokens: int = 16,
                    seed: int = 0, batch_problems: int = 64, on_batch=None) -> list[Trajectory]:
    """:func:`rollout` over batches of problems, one fsync'd append per batch (resumable)."""
    from stepforge.jobs import Batch, run_resumable
    from stepforge.schema import read_jsonl

    batches = [Batch(b, list(problems[i:i + batch_problems]),
                     [f"{p.id}-e{j}" for p in problems[i:i + batch_problems] for j in range(n)])
               for b, i in enumerate(range(0, len(problems), batch_problems))]

    def process(batch: Batch[Problem]) -> list[Trajectory]:
        episodes, _ = rollout(policy, batch.items, task, make_env, n=n, temperature=temperature, max_turns=max_turns,
                              max_new_tokens=max_new_tokens, seed=seed)
        if on_batch:
            on_batch(len(batch.items))
        return episodes

    run_resumable(path, batches, Trajectory, process, id_of=lambda t: t.id)
    return read_jsonl(path, Trajectory)


def episode_summary(episodes: Sequence[Trajectory]) -> dict[str, float]:
    """Success, turns, invalid-action share, exact-label share, mean return and generated tokens
    per episode."""
    turns = [r for t in episodes for r in t.meta["episode"]["rewards"]]
    labels = [x for t in episodes for x in t.step_labels if x is not None]
    n = max(1, len(episodes))
    return {"episodes": len(episodes), "success": sum(bool(t.correct) for t in episodes) / n,
            "mean_turns": len(turns) / n, "invalid_share": sum(r < 0 for r in turns) / max(1, len(turns)),
            "progress_share": sum(labels) / max(1, len(labels)),
            "mean_return": sum(t.meta["episode"]["return"] for t in episodes) / n,
            "mean_tokens": sum(t.cost.generated_tokens for t in episodes) / n}
