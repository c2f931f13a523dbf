"""The agent world (reach-the-target) and batched multi-turn rollouts."""

import random

import pytest

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.env.rollout import action_spans, episode_text, rollout
from stepforge.schema import Problem
from stepforge.tasks import get_world
from stepforge.worlds.agent.game import Game, ReachEnv, parse_game, sample_game

WORLD = get_world("agent")
TASK = WORLD.task


def test_bfs_distances_by_hand():
    g = Game(start=34, target=71, ops=(("+", 3), ("-", 2), ("*", 2)))
    d = g.distances()
    assert d[71] == 0 and d[68] == 1 and d[34] == 2  # 34*2=68, 68+3=71
    assert d[35] == 3  # 35*2=70, 70-2=68, 68+3=71
    # every value's distance is one more than its best move's
    for v, dv in d.items():
        if v != 71:
            assert dv == 1 + min(d[n] for _, n in g.moves(v) if n in d)
    assert parse_game(g.question) == g and g.question == "34 71 a+3 b-2 c*2"
    with pytest.raises(ValueError, match="token 3"):
        parse_game("34 71 b+3")


def test_generated_games_are_solvable_within_their_distance_range():
    rng = random.Random(0)
    for _ in range(50):
        g = sample_game(rng, 2, 5)
        assert 2 <= g.distances()[g.start] <= 5 and 3 <= len(g.ops) <= 4
    assert WORLD.generate(3, seed=1) == WORLD.generate(3, seed=1)


def test_environment_steps_rewards_and_exact_progress_labels():
    env = ReachEnv()
    first, state = env.reset(Problem(id="g", question="34 71 a+3 b-2 c*2", answer="71"))
    assert (first, state, env.budget) == ("34 71 a+3 b-2 c*2\n=34 +37\n", "34", 4)
    r = env.step("+3")  # 37, distance 3 -> not progress
    assert (r.observation, r.reward, r.done, r.state, r.progress) == ("=37 +34\n", 0.0, False, "37", False)
    r = env.step("d")  # not an operation: penalty, state unchanged
    assert (r.observation, r.reward, r.state, r.progress) == ("=37 +34 no\n", -0.1, "37", False)
    assert env.step("*3").reward == -0.1  # not one of this task's operations
    env.reset(Problem(id="g", question="34 71 a+3 b-2 c*2", answer="71"))
    assert env.step("c").progress and env.step("+3").reward == 1.0  # by tag or as written
    env.reset(Problem(id="g", question="34 71 a+3 b-2 c*2", answer="71"))
    assert [env.step("b").done for _ in range(4)] == [False, False, False, True]  # budget: distance 2 + 2


class Expert:
    """Plays the BFS-optimal move; with ``blunder``, writes an invalid action on the first turn."""

    name = "expert"

    def __init__(self, blunder: bool = False) -> None:
        self.blunder = blunder
        self.calls = 0

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=16, temperature=1.0, seed=None):
        self.calls += 1
        rows = []
        for prompt in prompts:
            lines = prompt.strip().split("\n")
            g = parse_game(lines[0])
            value = int(lines[-1].split("=")[1].split()[0])
            d = g.distances()
            action = min(g.moves(value), key=lambda m: d.get(m[1], 99))[0]
            if self.blunder and len(lines) == 2:
                action = "d"  # a tag this task does not have
            rows.append([Completion(action, 3, "stop", "=")])
        return GenerationResult(rows, GenerationCost(0, 3 * len(prompts), 1))


def test_rollouts_batch_every_live_episode_and_label_turns_exactly():
    problems = WORLD.generate(6, seed=3)
    policy = Expert()
    episodes, cost = rollout(policy, problems, TASK, WORLD.make_env, n=2)
    assert len(episodes) == 12 and all(t.correct for t in episodes)
    longest = max(parse_game(p.question).distances()[parse_game(p.question).start] for p in problems)
    assert policy.calls == longest  # one backend call per turn for all live episodes
    assert all(t.step_labels == [1.0] * len(t.steps) for t in episodes)  # optimal moves always progress
    assert all(t.meta["episode"]["return"] == 1.0 for t in episodes) and cost.generated_tokens == 3 * sum(
        len(t.steps) for t in episodes)
    from stepforge.env.rollout import episode_summary

    summary = episode_summary(episodes)
    assert summary["success"] == 1.0 and summary["mean_tokens"] == 3 * summary["mean_turns"]  # cost accounting
    blunders, _ = rollout(Expert(blunder=True), problems[:1], TASK, WORLD.make_env)
    t = blunders[0]
    assert t.steps[0] == "d" and t.step_labels[0] == 0.0 and t.meta["episode"]["rewards"][0] == -0.1
    assert t.correct and t.meta["episode"]["return"] == pytest.approx(0.9)


def test_transcript_and_action_spans_golden():
    problem = Problem(id="g", question="34 71 a+3 b-2 c*2", answer="71")
    [t], _ = rollout(Expert(blunder=True), [problem], TASK, WORLD.make_env)
    text = episode_text(problem, t, TASK)
    assert text == "34 71 a+3 b-2 c*2\n=34 +37\nd=34 +37 no\n*2=68 +3\n+3=71 +0\n"
    spans = action_spans(problem, t, TASK)
    assert [text[a:b] for a, b in spans] == ["d", "*2", "+3"]
    assert spans == [(26, 27), (38, 40), (47, 49)]  # everything else is the environment's
    assert t.final_answer == "71" and t.meta["episode"]["states"] == ["34", "34", "68", "71"]


def test_observation_tokens_are_masked_golden():
    """Only the agent's action tokens belong to a turn; the prompt, every observation (its "=",
    value, gap, "no", newline) and <s> are −1, so no loss ever trains on them."""
    from stepforge.env.rollout import episode_tokens

    problem = Problem(id="g", question="34 71 a+3 b-2 c*2", answer="71")
    [t], _ = rollout(Expert(blunder=True), [problem], TASK, WORLD.make_env)
    ids, owner = episode_tokens(_tokenizer(), problem, t, TASK)
    tokens = _tokenizer().convert_ids_to_tokens(ids)
    turns = {k: [tok for tok, o in zip(tokens, owner, strict=True) if o == k] for k in (-1, 0, 1, 2)}
    assert turns[0] == ["d"] and turns[1] == ["*2"] and turns[2] == ["+3"]
    assert "".join(turns[-1]) == "<s>34 71 a+3 b-2 c*2\n=34 +37\n=34 +37 no\n=68 +3\n=71 +0\n"
    assert len(ids) == len(owner)


def _tokenizer():
    from stepforge.worlds.arith.tokenizer import build_tokenizer

    return build_tokenizer()


def test_noisy_expert_turns_and_a_tiny_policy_through_the_rollout_cli(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.worlds.agent.game import expert_turns

    g = parse_game("34 71 a+3 b-2 c*2")
    turns = expert_turns(g, random.Random(0), noise=0.0)
    assert turns == [("34 71 a+3 b-2 c*2\n=34 +37\n", "*2"), ("34 71 a+3 b-2 c*2\n=34 +37\n*2=68 +3\n", "+3")]
    noisy = expert_turns(g, random.Random(1), noise=1.0)
    assert 1 <= len(noisy) <= 4  # the budget: distance 2 + 2

    where = WORLD.train_policy(tmp_path / "pol", steps=30, episodes=50, hidden_size=16, num_layers=1,
                               intermediate_size=32, num_heads=2)
    out = tmp_path / "episodes.jsonl"
    args = ["rollout", "-o", str(out), "--model", str(where), "--limit", "6", "--n", "2", "--batch-problems", "4",
            "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "episodes: success" in r.output
    from stepforge.schema import Trajectory as T
    from stepforge.schema import read_jsonl

    episodes = read_jsonl(out, T)
    assert len(episodes) == 12 and all(1 <= len(t.steps) <= 16 for t in episodes)
    assert all(len(t.meta["episode"]["states"]) == len(t.steps) + 1 for t in episodes)
    r = CliRunner().invoke(app, args)  # resumes: nothing left to do
    assert r.exit_code == 0 and len(read_jsonl(out, T)) == 12
