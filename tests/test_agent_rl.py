"""Multi-turn RL (issue #12): turn sums, the implicit PRM's DPO step, the loop for every credit."""

import json

import pytest
import torch

from stepforge.env.rollout import rollout
from stepforge.tasks import get_world
from stepforge.train.agent_rl import (
    AgentRLConfig,
    _batch,
    agent_alarms,
    implicit_turn_rewards,
    train_agent_rl,
    turn_sums,
)
from stepforge.train.credit import trajectory_dpo_loss

WORLD = get_world("agent")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    where = WORLD.train_policy(tmp_path_factory.mktemp("agent") / "pol", steps=60, episodes=200, hidden_size=16,
                               num_layers=1, intermediate_size=32, num_heads=2)
    return where


def test_turn_sums_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    turn = torch.tensor([[-1, 0, 0, -1, 1], [0, -1, -1, -1, -1]])
    # the caller zeroes tokens of no turn (ratio * act) and clamps their index to 0
    sums = turn_sums(values * (turn >= 0), turn.clamp(min=0), [2, 1])
    assert sums[0].tolist() == [5.0, 5.0] and sums[1].tolist() == [1.0]


def test_agent_alarms_compare_windows_of_iterations():
    calm = {"mean_turns": 4.0, "success": 0.5, "invalid_share": 0.05, "prm_disagreement": 0.2}
    assert agent_alarms([calm] * 5) == []  # not enough iterations to compare two windows
    assert agent_alarms([calm] * 12, window=5) == []
    hacked = {"mean_turns": 6.0, "success": 0.5, "invalid_share": 0.2, "prm_disagreement": 0.45}
    assert len(agent_alarms([calm] * 5 + [hacked] * 5, window=5)) == 3
    # one noisy iteration does not alarm; an improving agent with shorter episodes does not either
    assert agent_alarms([calm] * 9 + [hacked], window=5) == []
    better = {**calm, "mean_turns": 3.0, "success": 0.7}
    assert agent_alarms([calm] * 5 + [better] * 5, window=5) == []
    assert agent_alarms([calm] * 5 + [{**calm, "prm_disagreement": 0.55}] * 5, window=5) == [
        "PRM disagrees with outcomes 0.20 -> 0.55"]


def test_dpo_step_raises_the_success_trajectorys_implicit_reward(tiny_policy):
    """One trajectory-DPO step on a (success, failure) pair against π_old: the success's
    implicit reward Σ_t r_φ(a_t) rises relative to the failure's."""
    import copy

    model, tok = WORLD.load_policy(tiny_policy)
    problems = WORLD.generate(1, seed=5)
    pair = [rollout(_Play(invalid), problems, WORLD.task, WORLD.make_env)[0][0] for invalid in (False, True)]
    assert [t.correct for t in pair] == [True, False]
    cfg = AgentRLConfig(credit="oprl", beta=0.5)
    ids, attn, turn = _batch(tok, problems[:1], pair, WORLD.task, 2, "cpu")
    with torch.no_grad():
        old = torch.nn.functional.log_softmax(model(input_ids=ids, attention_mask=attn).logits, -1)[:, :-1]
        old = old.gather(-1, ids[:, 1:, None]).squeeze(-1)
    prm = copy.deepcopy(model)
    n_turns = [len(t.steps) for t in pair]
    before = [r.sum().item() for r in implicit_turn_rewards(prm, ids, attn, old, turn, n_turns, cfg)]
    assert before == pytest.approx([0.0, 0.0], abs=1e-5)  # φ = π_old: no reward yet
    opt = torch.optim.SGD(prm.parameters(), lr=0.5)
    score = torch.stack([r.sum() for r in implicit_turn_rewards(prm, ids, attn, old, turn, n_turns, cfg, grad=True)])
    loss = trajectory_dpo_loss(score[:1] / cfg.beta, score[1:] / cfg.beta, cfg.beta)
    assert loss.item() == pytest.approx(0.693147, abs=1e-4)
    loss.backward()
    opt.step()
    after = [r.sum().item() for r in implicit_turn_rewards(prm, ids, attn, old, turn, n_turns, cfg)]
    assert after[0] - after[1] > 0.01


class _Play:
    """The BFS expert, or (``invalid``) an action no task has, forever: a success and a failure."""

    name = "play"

    def __init__(self, invalid: bool = False) -> None:
        self.invalid = invalid

    def generate(self, prompts, *, n=1, stop=None, max_new_tokens=16, temperature=1.0, seed=None):
        from stepforge.backends.base import Completion, GenerationCost, GenerationResult
        from stepforge.worlds.agent.game import parse_game

        rows = []
        for prompt in prompts:
            lines = prompt.strip().split("\n")
            g, value = parse_game(lines[0]), int(lines[-1].split("=")[1].split()[0])
            d = g.distances()
            action = "d" if self.invalid else min(g.moves(value), key=lambda m: d.get(m[1], 99))[0]
            rows.append([Completion(action, 1, "stop", "=")])
        return GenerationResult(rows, GenerationCost(0, len(prompts), 1))


@pytest.mark.parametrize("credit", ["outcome", "merged", "gigpo", "oprl"])
def test_agent_rl_runs_resumes_and_reports(tiny_policy, tmp_path, credit):
    model, tok = WORLD.load_policy(tiny_policy)
    cfg = AgentRLConfig(credit=credit, iterations=2, tasks_per_iteration=3, episodes_per_task=3, save_every=1,
                        max_turns=6)
    history = train_agent_rl(model, tok, tmp_path, cfg)
    assert [h["iteration"] for h in history] == [1, 2]
    assert all(0 <= h["success"] <= 1 and h["episodes"] == 9 for h in history)
    if credit == "gigpo":
        assert 0 < history[0]["anchor_share"] <= 1  # all episodes of a task start from the same state
    episodes = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 18
    if credit in ("oprl", "merged"):
        assert "prm_disagreement" in history[0]
        assert all(len(e["meta"]["turn_rewards"]) == len(e["steps"]) for e in episodes)
    # resume: a longer run continues from the checkpoint of iteration 2
    model2, _ = WORLD.load_policy(tiny_policy)
    more = train_agent_rl(model2, tok, tmp_path, AgentRLConfig(**{**cfg.__dict__, "iterations": 3}))
    assert [h["iteration"] for h in more] == [1, 2, 3] and more[:2] == history
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 27


def test_micro_batches_give_the_same_update_as_the_whole_batch(tmp_path):
    """OPRL's PRM step (scores once, dL/ds pushed through each chunk) and the accumulated PPO
    step equal the whole-batch ones: same losses, same weights after an iteration (the shipped
    agent policy: its batches have success/failure pairs)."""
    results = []
    for micro in (None, 3):
        model, tok = WORLD.load_policy(None)
        cfg = AgentRLConfig(credit="oprl", iterations=1, tasks_per_iteration=3, episodes_per_task=4, max_turns=6,
                            micro_batch=micro)
        [row] = train_agent_rl(model, tok, tmp_path / str(micro), cfg)
        results.append((row, dict(model.named_parameters())))
    (whole, w_params), (micro, m_params) = results
    assert whole["prm_loss"] == pytest.approx(micro["prm_loss"], abs=1e-5)
    assert whole["loss"] == pytest.approx(micro["loss"], abs=1e-5)
    assert all(torch.allclose(w_params[k], m_params[k], atol=1e-5) for k in w_params)
    assert any(not torch.allclose(w_params[k], WORLD.load_policy(None)[0].state_dict()[k]) for k in w_params)


def test_oprl_with_exact_turn_rewards_needs_no_prm(tiny_policy, tmp_path):
    model, tok = WORLD.load_policy(tiny_policy)
    cfg = AgentRLConfig(credit="oprl", exact_turn_rewards=True, iterations=1, tasks_per_iteration=2,
                        episodes_per_task=2, max_turns=4)
    assert not cfg.uses_prm
    [row] = train_agent_rl(model, tok, tmp_path, cfg)
    assert "prm_disagreement" not in row and 0 <= row["success"] <= 1


def test_agent_rl_config_errors():
    with pytest.raises(ValueError, match="unknown agent credit"):
        AgentRLConfig(credit="ppo")
    with pytest.raises(ValueError, match="pairing"):
        AgentRLConfig(pairing="some")


def test_rl_cli_with_env_runs_and_resumes(tiny_policy, tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app

    args = ["rl", "--out", str(tmp_path / "run"), "--env", "agent", "--credit", "oprl", "--steps", "2",
            "--problems-per-step", "2", "--samples-per-problem", "2", "--policy", str(tiny_policy), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in rows] == [1, 2] and (tmp_path / "run" / "policy" / "config.json").exists()
    r = CliRunner().invoke(app, [*args[:8], "3", *args[9:]])  # --steps 3: resumes from iteration 2
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    r = CliRunner().invoke(app, ["rl", "--out", str(tmp_path / "g"), "--env", "gsm8k-tool", "--credit", "oprl"])
    assert r.exit_code != 0 and "needs --data" in r.output


def test_rl_cli_on_gsm8k_tool_episodes_runs_end_to_end(tmp_path):
    """The real-data agent path through `stepforge rl --env gsm8k-tool`: a causal LM (here the
    arith world's, which cannot read GSM8K: the mechanics are what is tested), GSM8K tasks,
    calculator turns, OPRL's implicit PRM, checkpoint and policy written."""
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.tasks import get_world

    args = ["rl", "--out", str(tmp_path / "run"), "--env", "gsm8k-tool", "--data", "gsm8k:test", "--limit", "4",
            "--credit", "oprl", "--steps", "1", "--problems-per-step", "2", "--samples-per-problem", "2",
            "--max-new-tokens", "6", "--policy", str(get_world("arith").policy_dir(None)), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    episodes = [json.loads(x) for x in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and all(e["problem_id"].startswith("gsm8k-") for e in episodes)
    assert all(len(e["meta"]["turn_rewards"]) == len(e["steps"]) >= 1 for e in episodes)


def test_the_shipped_agent_policy_starts_between_40_and_60_percent():
    """The agent world ships its policy (package data) and it is neither solved nor hopeless:
    T = 1 success on 300 tasks (44.2% measured on 1,000)."""
    from stepforge.backends.transformers_backend import TransformersPolicy
    from stepforge.env.rollout import episode_summary

    model, tok = WORLD.load_policy(None)
    problems = WORLD.generate(300, seed=4242, prefix="ship")
    episodes, _ = rollout(TransformersPolicy(model, tok), problems, WORLD.task, WORLD.make_env, max_new_tokens=8,
                          seed=1)
    s = episode_summary(episodes)
    assert 0.33 <= s["success"] <= 0.6 and s["invalid_share"] < 0.2
