"""GSM8K as a tool-use episode (issue #12): the calculator environment, replayed reference
solutions, and a real backend (the world policy behind `stepforge serve`'s HTTP server)."""

import re

import pytest

from stepforge.backends.base import Completion, GenerationCost, GenerationResult
from stepforge.env.calculator import GSM8K_TOOL, CalculatorEnv
from stepforge.env.rollout import action_spans, episode_text, rollout
from stepforge.loaders import load_gsm8k
from stepforge.schema import Problem
from stepforge.tasks import get_environment

JANET = Problem(id="j", question="Janet's ducks lay 16 eggs per day...", answer="18")


def test_calculator_env_checks_claims_exactly():
    env = CalculatorEnv()
    first, state = env.reset(JANET)
    assert first.endswith("Question: Janet's ducks lay 16 eggs per day...\n") and state == ""
    r = env.step("Janet sells 16 - 3 - 4 = <<16-3-4=9")
    assert (r.observation, r.reward, r.done, r.state, r.progress) == (">>9\n", 0.0, False, "9", True)
    r = env.step("She makes 9 * 2 = $<<9*2=20")  # a wrong claim: the calculator says 18
    assert (r.observation, r.state, r.progress) == (">>18\n", "9|18", False)
    assert env.step("So <<9*2").progress is None  # a call without a claim: no label
    r = env.step("Then <<import os=1")
    assert (r.observation, r.reward, r.progress) == (">>error\n", -0.1, False)
    assert env.step("She is happy.").done is False  # a plain step: no label, no end
    r = env.step("The answer is 18.")
    assert (r.reward, r.done) == (1.0, True)
    assert get_environment("gsm8k-tool")[:2] == (GSM8K_TOOL, CalculatorEnv)


class Replay:
    """Replays each problem's GSM8K reference solution as tool turns: every annotation ends a
    turn (written up to its claimed value), then 'The answer is N.'."""

    name = "replay"

    def __init__(self, problems, corrupt: bool = False) -> None:
        self.turns = {p.question: self._turns(p, corrupt) for p in problems}

    @staticmethod
    def _turns(p: Problem, corrupt: bool) -> list[str]:
        turns = []
        for line in p.meta["reference_steps"]:
            for piece in re.findall(r"[^<]*<<[^=>]*=[^>]*(?=>>)", line):
                expr, claim = piece.rsplit("=", 1)
                turns.append(f"{expr}={float(claim) + 1:g}" if corrupt else piece)
        return [*turns, f"The answer is {p.answer}."]

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=16, temperature=1.0, seed=None):
        assert stop == [">>", "\n"]
        rows = []
        for prompt in prompts:
            question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
            done = prompt.rsplit("Question: ", 1)[1].count("\n") - 1
            rows.append([Completion(self.turns[question][done], 5, "stop", ">>")])
        return GenerationResult(rows, GenerationCost(0, 5 * len(prompts), 1))


def test_reference_solutions_replayed_as_tool_episodes_are_right_at_every_turn():
    problems = load_gsm8k("test", limit=5)
    episodes, _ = rollout(Replay(problems), problems, GSM8K_TOOL, CalculatorEnv, max_new_tokens=64)
    assert all(t.correct for t in episodes)
    assert all(x in (1.0, None) for t in episodes for x in t.step_labels)
    assert sum(x == 1.0 for t in episodes for x in t.step_labels) >= 5
    t, p = episodes[0], problems[0]
    text = episode_text(p, t, GSM8K_TOOL)
    assert text.endswith("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9\nShe makes 9 * 2 = $<<9*2=18>>18\n"
                         "The answer is 18.\n")
    assert [text[a:b] for a, b in action_spans(p, t, GSM8K_TOOL)] == t.steps
    wrong, _ = rollout(Replay(problems, corrupt=True), problems, GSM8K_TOOL, CalculatorEnv)
    assert all(x in (0.0, None) for t in wrong for x in t.step_labels)  # every claim is off by one


def test_gsm8k_tool_episodes_through_the_served_world_policy(world_policy, tmp_path):
    """Any backend: the world policy behind the OpenAI-compatible server `stepforge serve` runs,
    driven by `stepforge rollout --env gsm8k-tool --backend openai`."""
    from typer.testing import CliRunner

    from stepforge.backends.server import PolicyServer, serve_in_thread
    from stepforge.cli import app
    from stepforge.schema import Trajectory, read_jsonl

    srv = PolicyServer(world_policy)
    serve_in_thread(srv)
    try:
        out = tmp_path / "episodes.jsonl"
        args = ["rollout", "-o", str(out), "--env", "gsm8k-tool", "--data", "gsm8k:test", "--limit", "3", "--n", "2",
                "--max-turns", "3", "--max-new-tokens", "12", "--backend", "openai", "--model", "stepforge",
                "--base-url", srv.base_url]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        episodes = read_jsonl(out, Trajectory)
        assert len(episodes) == 6 and all(1 <= len(t.steps) <= 3 for t in episodes)
        assert all(len(t.meta["episode"]["observations"]) == len(t.steps) for t in episodes)
        r = CliRunner().invoke(app, ["rollout", "-o", str(tmp_path / "x.jsonl"), "--env", "gsm8k-tool"])
        assert r.exit_code != 0 and "needs --data" in r.output
    finally:
        srv.shutdown()
        srv.server_close()


def test_unknown_environment_lists_the_known_ones():
    with pytest.raises(ValueError, match="agent, gsm8k-tool"):
        get_environment("webshop")
