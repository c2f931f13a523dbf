"""Reach-the-target: a multi-turn world whose every turn has an exact label (issue #12).

A task is a start value, a target and 3–4 tagged operations::

    34 71 a+3 b-2 c*2        <- the first observation (start, target, operations)
    c=68                     <- the agent names an operation by its tag, the environment answers "=68"
    a=71                     <- target reached: success, reward 1

An action that is not one of the tags, or whose operation would leave [0, 99], is answered
with the unchanged value and ``no`` (``=68 no``) and costs −0.1. The episode ends on success or after
a budget of (BFS distance from the start) + 2 turns. A turn is *progress* iff it lowers the
BFS distance to the target: exact per-turn labels that no agent benchmark has.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field

from stepforge.schema import Problem
from stepforge.tasks import EnvStep
from stepforge.worlds.arith.problems import TAGS, apply_op

MAX_VALUE = 99
INVALID_PENALTY = -0.1
_ACTION = re.compile(r"^([a-d])([+\-*])(\d)$")


@dataclass(frozen=True)
class Game:
    start: int
    target: int
    ops: tuple[tuple[str, int], ...]

    @property
    def question(self) -> str:
        ops = [f"{TAGS[i]}{op}{k}" for i, (op, k) in enumerate(self.ops)]
        return " ".join([str(self.start), str(self.target), *ops])

    def moves(self, value: int) -> list[tuple[str, int]]:
        """(action: the operation's tag, next value) of every operation that keeps the value in range."""
        out = []
        for i, (op, k) in enumerate(self.ops):
            nxt = apply_op(value, op, k)
            if 0 <= nxt <= MAX_VALUE:
                out.append((TAGS[i], nxt))
        return out

    def distances(self) -> dict[int, int]:
        """BFS distance from every reachable value to the target (over reversed moves)."""
        # forward BFS from each value would be O(V²); search backwards from the target instead
        back: dict[int, list[int]] = {}
        for v in range(MAX_VALUE + 1):
            for _, nxt in self.moves(v):
                back.setdefault(nxt, []).append(v)
        dist, queue = {self.target: 0}, deque([self.target])
        while queue:
            v = queue.popleft()
            for u in back.get(v, []):
                if u not in dist:
                    dist[u] = dist[v] + 1
                    queue.append(u)
        return dist

    def to_problem(self, problem_id: str) -> Problem:
        return Problem(id=problem_id, question=self.question, answer=str(self.target),
                       meta={"world": "agent", "start": self.start, "ops": [list(o) for o in self.ops]})


def parse_game(question: str) -> Game:
    tokens = question.split()
    if len(tokens) < 3 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        raise ValueError(f"agent question must be 'start target op...': {question!r}")
    ops = []
    for i, tok in enumerate(tokens[2:]):
        m = _ACTION.match(tok)
        if not m or m.group(1) != TAGS[i]:
            raise ValueError(f"agent question token {i + 3} {tok!r} is not '{TAGS[i]}<op><digit>': {question!r}")
        ops.append((m.group(2), int(m.group(3))))
    return Game(int(tokens[0]), int(tokens[1]), tuple(ops))


def sample_game(rng: random.Random, min_distance: int = 2, max_distance: int = 5) -> Game:
    """3–4 distinct operations and a target whose BFS distance from the start is in range."""
    while True:
        n_ops = rng.randint(3, 4)
        ops: list[tuple[str, int]] = []
        while len(ops) < n_ops:
            op = rng.choice("+-*")
            k = rng.randint(2, 5) if op == "*" else rng.randint(1, 9)
            if (op, k) not in ops:
                ops.append((op, k))
        start = rng.randint(1, 50)
        probe = Game(start, start, tuple(ops))
        reach, frontier = {start: 0}, [start]
        for d in range(1, max_distance + 1):
            frontier = [n for v in frontier for _, n in probe.moves(v) if n not in reach]
            for n in frontier:
                reach.setdefault(n, d)
        targets = [v for v, d in reach.items() if min_distance <= d]
        if targets:
            game = Game(start, rng.choice(sorted(targets)), tuple(ops))
            if min_distance <= game.distances()[start] <= max_distance:
                return game


def generate(n: int, seed: int = 0, prefix: str = "agent", min_steps: int | None = None,
             max_steps: int | None = None) -> list[Problem]:
    """``n`` games, deterministic in ``seed``; min/max_steps bound the BFS distance (2–5)."""
    rng = random.Random(seed)
    return [sample_game(rng, min_steps or 2, max_steps or 5).to_problem(f"{prefix}-{seed}-{i}") for i in range(n)]


@dataclass
class ReachEnv:
    """One episode of reach-the-target."""

    game: Game | None = None
    value: int = 0
    turns: int = 0
    budget: int = 0
    dist: dict[int, int] = field(default_factory=dict)

    def reset(self, problem: Problem) -> tuple[str, str]:
        self.game = parse_game(problem.question)
        self.value, self.turns = self.game.start, 0
        self.dist = self.game.distances()
        self.budget = self.dist[self.value] + 2
        return self.game.question + "\n", str(self.value)

    def step(self, action: str) -> EnvStep:
        if self.game is None:
            raise RuntimeError("reset the environment before stepping it")
        self.turns += 1
        moves = dict(self.game.moves(self.value))
        before = self.dist.get(self.value)
        if action.strip() in moves:
            self.value = moves[action.strip()]
            after = self.dist.get(self.value)
            progress = after is not None and before is not None and after < before
            success = self.value == self.game.target
            done = success or self.turns >= self.budget
            return EnvStep(f"={self.value}\n", 1.0 if success else 0.0, done, str(self.value), progress)
        done = self.turns >= self.budget
        return EnvStep(f"={self.value} no\n", INVALID_PENALTY, done, str(self.value), False)


def expert_turns(game: Game, rng: random.Random, noise: float = 0.3) -> list[tuple[str, str]]:
    """One noisy-expert episode as (transcript so far, action) pairs: the BFS-optimal move,
    or with probability ``noise`` a uniformly random legal one, until the target or the budget."""
    dist = game.distances()
    value, text, turns = game.start, game.question + "\n", []
    for _ in range(dist[game.start] + 2):
        moves = game.moves(value)
        if not moves:  # a dead end (every operation leaves the range): nothing to imitate
            break
        best = min(moves, key=lambda m: dist.get(m[1], 10**6))
        action, value = rng.choice(moves) if rng.random() < noise else best
        turns.append((text, action))
        text += f"{action}={value}\n"
        if value == game.target:
            break
    return turns
