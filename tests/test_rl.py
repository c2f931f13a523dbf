import copy
import json

import pytest

from stepforge.schema import Trajectory
from stepforge.train.rl import RLConfig, drift_warnings, hacking_monitors, train_rl


def t(steps, answer, correct):
    return Trajectory(id=str(len(steps)), problem_id="p", question="q", steps=steps, final_answer=answer,
                      correct=correct)


def test_hacking_monitors_by_hand():
    batch = [t(["a", "b", "Answer: 1"], "1", True), t([], None, False), t(["Answer: 2"], "2", False),
             t(["a", "b"], None, False)]
    m = hacking_monitors(batch, [[0.9, 0.8, 0.7], [0.5], [0.9], [0.6, 0.1]], [10, 0, 4, 6])
    assert m["mean_tokens"] == 5 and m["mean_steps"] == pytest.approx(1.5)
    assert m["empty_share"] == 0.25 and m["no_answer_share"] == 0.5 and m["no_separator_share"] == 0.5
    assert m["accuracy"] == 0.25 and m["prm_final_mean"] == pytest.approx(0.55)
    assert m["prm_verifier_gap"] == pytest.approx(0.30)
    assert "padding_share" not in m
    padded = hacking_monitors(batch, None, [10, 0, 4, 6], is_padding=lambda s: s == "b")
    assert padded["padding_share"] == pytest.approx(2 / 6) and "prm_verifier_gap" not in padded


def test_verifiable_reward_mix_by_hand():
    import random

    import torch

    from stepforge.train.rl import _advantages

    batch = [t(["a", "b"], "1", True), t(["a", "b"], "2", False)]
    rewards = [torch.tensor([0.5, -0.5]), torch.tensor([0.5, 0.5])]
    cfg = RLConfig(credit="sum_vr", vr_share=1.0, baseline="rloo")
    # R − 1 on the last step: the right one keeps [0.5, -0.5], the wrong one becomes [0.5, -0.5]; sum-form
    # returns [0, -0.5] for both; leave-one-out baseline = mean of the other's returns = -0.25
    a = _advantages(batch, [0, 0], rewards, cfg, random.Random(0))
    assert [x.tolist() for x in a] == [pytest.approx([0.25, -0.25]), pytest.approx([0.25, -0.25])]
    # without it the wrong solution, rated higher by the PRM, wins: returns [0, -0.5] vs [1, 0.5]
    no_vr = _advantages(batch, [0, 0], rewards, RLConfig(credit="sum_vr", vr_share=0.0, baseline="rloo"),
                        random.Random(0))
    assert [x.tolist() for x in no_vr] == [pytest.approx([-0.75, -1.25]), pytest.approx([1.25, 0.75])]
    min_vr = _advantages(batch, [0, 0], rewards, RLConfig(credit="min_vr", vr_share=1.0, baseline="rloo"),
                         random.Random(0))
    # min-form of [0.5, -0.5] = [-0.5, -0.5]; of [0.5, -0.5] (0.5 − 1 on the last) = [-0.5, -0.5]: equal
    assert [x.tolist() for x in min_vr] == [pytest.approx([0.0, 0.0]), pytest.approx([0.0, 0.0])]


def test_drift_warnings():
    first = {"mean_tokens": 40.0, "empty_share": 0.0, "no_answer_share": 0.0, "no_separator_share": 0.0,
             "prm_verifier_gap": 0.0}
    assert drift_warnings(first, dict(first)) == []
    now = {**first, "mean_tokens": 70.0, "empty_share": 0.3, "prm_verifier_gap": 0.4}
    text = " ".join(drift_warnings(first, now))
    assert "mean_tokens drifted" in text and "empty_share" in text and "outruns the verifier" in text
    # fewer steps at a similar length (steps skipped or merged) is its own alarm
    shorter = drift_warnings({**first, "mean_steps": 7.7}, {**first, "mean_tokens": 36.0, "mean_steps": 4.2})
    assert shorter == ["mean_steps drifted 7.7 -> 4.2 steps"]
    assert drift_warnings({**first, "accuracy": 0.46}, {**first, "accuracy": 0.03}) == ["accuracy fell 0.46 -> 0.03"]
    assert drift_warnings({**first, "accuracy": 0.46}, {**first, "accuracy": 0.30}) == []  # batch noise


def test_bad_credit_form():
    with pytest.raises(ValueError, match="unknown credit form"):
        RLConfig(credit="max")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        RLConfig(temperature=0.0)
    with pytest.raises(ValueError, match="unknown baseline"):
        RLConfig(baseline="ppo")
    with pytest.raises(ValueError, match="vr_share"):
        RLConfig(credit="min_vr", vr_share=1.5)


def test_rl_trains_only_the_chosen_parameters(tmp_path, world_policy):
    model = copy.deepcopy(world_policy.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RLConfig(credit="outcome", steps=1, problems_per_step=4, samples_per_problem=4, max_new_tokens=64,
                   lr=1e-2, trainable=("norm",), temperature=0.7, baseline="rloo",
                   min_steps=2, max_steps=3)
    train_rl(model, world_policy.tokenizer, tmp_path, cfg)
    changed = {n for n, p in model.named_parameters() if not p.detach().equal(before[n])}
    assert changed and all("norm" in n for n in changed)
    with pytest.raises(ValueError, match="no parameter name contains"):
        train_rl(copy.deepcopy(world_policy.model), world_policy.tokenizer, tmp_path / "x",
                 RLConfig(credit="outcome", steps=1, trainable=("nothing",)))


@pytest.mark.slow
@pytest.mark.parametrize("credit", ["outcome", "min_vr"])
def test_rl_resumes_from_its_checkpoint(tmp_path, world_policy, credit):
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.worlds.arith.policy import SHIPPED_PRM

    prm = ProcessRewardModel.from_pretrained(SHIPPED_PRM) if credit != "outcome" else None
    cfg = dict(credit=credit, problems_per_step=3, samples_per_problem=4, save_every=2, max_new_tokens=64,
               min_steps=2, max_steps=3, vr_share=0.5)
    tok = world_policy.tokenizer
    straight = train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "a", RLConfig(steps=4, **cfg), prm)
    train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "b", RLConfig(steps=2, **cfg), prm)
    resumed = train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "b", RLConfig(steps=4, **cfg), prm)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed == straight  # same samples, same updates: the checkpoint carried model and optimizer
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (tmp_path / "b" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_cli_pairs_train_dpo_and_rl(tmp_path):
    from typer.testing import CliRunner

    from stepforge.cli import app
    from stepforge.schema import StepPair, read_jsonl

    run = CliRunner().invoke
    r = run(app, ["sample", "--data", "world", "--limit", "12", "--n", "4", "--out", str(tmp_path / "s"),
                  "--no-greedy"])
    assert r.exit_code == 0, r.output
    r = run(app, ["pairs", "-i", str(tmp_path / "s/trajectories.jsonl"), "-o", str(tmp_path / "pairs.jsonl")])
    assert r.exit_code == 0, r.output
    pairs = read_jsonl(tmp_path / "pairs.jsonl", StepPair)
    assert pairs and all(p.chosen != p.rejected for p in pairs)
    r = run(app, ["train-dpo", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "dpo")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "dpo" / "config.json").exists()
    args = ["rl", "--out", str(tmp_path / "rl"), "--credit", "min", "--steps", "2", "--problems-per-step", "2",
            "--samples-per-problem", "2", "--policy", str(tmp_path / "dpo")]
    r = run(app, args)
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    assert args[5:7] == ["--steps", "2"]
    r = run(app, [*args[:6], "3", *args[7:]])  # extend to 3 steps: resumes after step 2
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["step"] for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_online_implicit_prm_is_refit_and_resumed(tmp_path, world_policy):
    from stepforge.prm.implicit import ImplicitPRM

    tok = world_policy.tokenizer
    cfg = dict(credit="min", problems_per_step=3, samples_per_problem=4, save_every=2, max_new_tokens=64,
               min_steps=2, max_steps=3, prm_online_steps=2)

    def run(out, steps):
        prm = ImplicitPRM(copy.deepcopy(world_policy.model), tok)
        history = train_rl(copy.deepcopy(world_policy.model), tok, out, RLConfig(steps=steps, **cfg), prm)
        return history, prm

    straight, prm = run(tmp_path / "a", 4)
    first = next(iter(world_policy.model.state_dict().values()))
    assert not next(iter(prm.model.state_dict().values())).equal(first)  # the PRM was trained online
    run(tmp_path / "b", 2)
    resumed, _ = run(tmp_path / "b", 4)
    assert resumed == straight  # the checkpoint carried the online PRM too
    with pytest.raises(ValueError, match="implicit PRM"):
        train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "c", RLConfig(steps=1, **cfg),
                 scorer=object())


@pytest.mark.slow
def test_cli_rl_on_the_padded_world_with_primes_mix(tmp_path):
    """The fifth PURE comparison from the CLI: an online implicit PRM plus the verifiable reward on
    every group, in the padded world (its own policy; the padding monitor on); then resumed."""
    from typer.testing import CliRunner

    from stepforge.cli import app

    args = ["rl", "--world", "arith-padded", "--out", str(tmp_path / "rl"), "--credit", "sum_vr", "--vr-share", "1",
            "--prm", "implicit", "--prm-online-steps", "1", "--baseline", "rloo", "--trainable", "",
            "--lr", "1e-5", "--problems-per-step", "2", "--samples-per-problem", "2", "--steps", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text())
    assert 0.0 <= row["padding_share"] <= 1.0 and "prm_verifier_gap" in row
    run = json.loads((tmp_path / "rl" / "run.json").read_text())
    assert "arith-padded" in json.dumps(run)
    r = CliRunner().invoke(app, [*args[:-1], "2"])  # more steps: resumes after step 1
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    r = CliRunner().invoke(app, [*args[:-1], "2", "--world", "arith"])  # another world's policy: refused
    assert r.exit_code != 0
