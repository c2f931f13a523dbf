import copy
import json

import pytest

from stepforge.schema import Trajectory
from stepforge.train.rl import RLConfig, drift_warnings, hacking_monitors, train_rl
from stepforge.worlds.arith.problems import ArithConfig


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


def test_drift_warnings():
    first = {"mean_tokens": 40.0, "empty_share": 0.0, "no_answer_share": 0.0, "no_separator_share": 0.0,
             "prm_verifier_gap": 0.0}
    assert drift_warnings(first, dict(first)) == []
    now = {**first, "mean_tokens": 70.0, "empty_share": 0.3, "prm_verifier_gap": 0.4}
    text = " ".join(drift_warnings(first, now))
    assert "mean length drifted" in text and "empty_share" in text and "outruns the verifier" in text


def test_bad_credit_form():
    with pytest.raises(ValueError, match="unknown credit form"):
        RLConfig(credit="max")


@pytest.mark.slow
@pytest.mark.parametrize("credit", ["outcome", "min_vr"])
def test_rl_resumes_from_its_checkpoint(tmp_path, world_policy, credit):
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.worlds.arith.policy import SHIPPED_PRM

    prm = ProcessRewardModel.from_pretrained(SHIPPED_PRM) if credit != "outcome" else None
    cfg = dict(credit=credit, problems_per_step=3, samples_per_problem=4, save_every=2, max_new_tokens=64,
               world=ArithConfig(min_steps=2, max_steps=3), vr_share=0.5)
    tok = world_policy.tokenizer
    straight = train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "a", RLConfig(steps=4, **cfg), prm)
    train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "b", RLConfig(steps=2, **cfg), prm)
    resumed = train_rl(copy.deepcopy(world_policy.model), tok, tmp_path / "b", RLConfig(steps=4, **cfg), prm)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed == straight  # same samples, same updates: the checkpoint carried model and optimizer
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (tmp_path / "b" / "checkpoint.pt").exists()
