import numpy as np
import pytest
import torch

from stepforge.train.credit import min_form_returns
from stepforge.train.verl_plugin import make_estimator, step_credit_advantages

# two prompts x two samples; step rewards sit on each step's last token
REWARDS = torch.tensor([
    [0.0, 0.5, 0.0, -0.5, 0.0],   # steps: tokens 0-1 (r=0.5), 2-3 (r=-0.5); token 4 is padding
    [0.0, 0.0, 0.8, 0.0, 0.0],    # one step: tokens 0-2
    [0.3, 0.0, 0.0, 0.0, 0.2],
    [0.0, 0.0, 0.0, 0.0, 0.0],    # no reward written
])
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
INDEX = np.array(["p", "p", "q", "q"], dtype=object)


def test_tensor_contract_and_min_form_returns_by_hand():
    adv, ret = step_credit_advantages(REWARDS, MASK, INDEX, min_form_returns, norm_by_std=False)
    assert adv.shape == ret.shape == REWARDS.shape
    assert ret[0].tolist() == pytest.approx([-0.5, -0.5, -0.5, -0.5, 0.0])  # min over future steps
    assert ret[1].tolist() == pytest.approx([0.8, 0.8, 0.8, 0.0, 0.0])
    assert ret[2].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2])
    assert ret[3].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0])
    # group p: step values -0.5, -0.5, 0.8 -> mean -0.0667; masked tokens stay 0
    assert adv[0, 0].item() == pytest.approx(-0.5 + 0.2 / 3, abs=1e-5)
    assert adv[1, 0].item() == pytest.approx(0.8 + 0.2 / 3, abs=1e-5)
    assert adv[0, 4].item() == 0.0 and adv[1, 3].item() == 0.0


def test_estimator_signature_matches_verl():
    est = make_estimator("stepforge_min")
    adv, ret = est(token_level_rewards=REWARDS, response_mask=MASK, index=INDEX, config=None)
    assert adv.shape == ret.shape == REWARDS.shape and est.__name__ == "stepforge_min"


def test_registration_with_verl_when_installed():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is an optional extra")
    from stepforge.train.verl_plugin import register_verl_estimators

    names = register_verl_estimators()
    fn = core_algos.get_adv_estimator_fn("stepforge_min")
    adv, _ = fn(token_level_rewards=REWARDS, response_mask=MASK, index=INDEX, config=None)
    assert names == ["stepforge_min", "stepforge_sum", "stepforge_gigpo", "stepforge_oprl"]
    assert adv.shape == REWARDS.shape


def test_groups_whose_hashes_collide_stay_separate():
    # 5 and 5 + 2**31 have equal 31-bit hashes: the old `hash(x) & 0x7FFFFFFF` merged their groups
    index = np.array([5, 5, 5 + 2**31, 5 + 2**31], dtype=object)
    adv, _ = step_credit_advantages(REWARDS, MASK, index, min_form_returns, norm_by_std=False)
    apart, _ = step_credit_advantages(REWARDS, MASK, INDEX, min_form_returns, norm_by_std=False)
    assert torch.allclose(adv, apart)  # same as two distinct uids "p" and "q"


def test_a_zero_step_reward_keeps_its_boundary_with_the_step_end_mask():
    # row 0: steps end at tokens 1 (r = 0.5) and 3 (r = 0, exactly); token 4 is padding
    rewards = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0]])
    ends = torch.tensor([[0, 1, 0, 1, 0]])
    mask, index = MASK[:1], INDEX[:1]
    _, ret = step_credit_advantages(rewards, mask, index, min_form_returns, norm_by_std=False, step_end_mask=ends)
    assert ret[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0])  # min(0.5, 0) = 0 for both steps
    # read from non-zero rewards, the last step vanishes and the first one keeps 0.5: min-form's
    # protection against a high-scoring step before a bad one is lost
    _, legacy = step_credit_advantages(rewards, mask, index, min_form_returns, norm_by_std=False)
    assert legacy[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.0])
    adv, _ = make_estimator("stepforge_min")(rewards, mask, index, step_end_mask=ends)  # verl's signature
    assert adv.shape == rewards.shape


def test_compute_step_advantages_reads_the_mask_from_a_dataproto_like_batch():
    from types import SimpleNamespace

    from stepforge.train.verl_plugin import compute_step_advantages

    ends = (REWARDS != 0).int()
    data = SimpleNamespace(batch={"token_level_rewards": REWARDS, "response_mask": MASK, "step_end_mask": ends},
                           non_tensor_batch={"uid": INDEX})
    compute_step_advantages(data, "stepforge_min", norm_by_std=False)
    expected, _ = step_credit_advantages(REWARDS, MASK, INDEX, min_form_returns, norm_by_std=False,
                                         step_end_mask=ends)
    assert torch.allclose(data.batch["advantages"], expected) and data.batch["returns"].shape == REWARDS.shape


def test_step_reward_manager_scores_step_ends_with_a_prm_and_marks_them():
    from types import SimpleNamespace

    from scripted import CheckerScorer

    from stepforge.train.verl_plugin import StepRewardManager, compute_step_advantages
    from stepforge.worlds.arith import ARITH
    from stepforge.worlds.arith.tokenizer import build_tokenizer

    tok = build_tokenizer()
    texts = ["a-6=34\nb*2=69\nAnswer: 69", "a-6=34\nb*2=68\nAnswer: 68"]
    rows = [[*tok(t, add_special_tokens=False).input_ids, tok.eos_token_id] for t in texts]
    width = max(map(len, rows)) + 2
    responses = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
    data = SimpleNamespace(batch={"responses": responses, "response_mask": mask},
                           non_tensor_batch={"question": np.array(["40 a-6 b*2"] * 2, dtype=object),
                                             "uid": np.array(["p", "p"], dtype=object)})
    rewards = StepRewardManager(tok, CheckerScorer(), ARITH)(data)
    ends = data.batch["step_end_mask"]
    assert ends.sum(-1).tolist() == [3, 3]  # every step keeps its end, the zero-reward ones too
    for i, text in enumerate(texts):  # the marked token is each step's last (the line's last digit)
        marked = [tok.decode([responses[i, c]]) for c in ends[i].nonzero().squeeze(-1).tolist()]
        assert marked == [line[-1] for line in text.split("\n")]
    assert rewards[0][ends[0].bool()].tolist() == [1.0, 0.0, 0.0] and rewards[1][ends[1].bool()].tolist() == [1.0] * 3
    data.batch["token_level_rewards"] = rewards
    compute_step_advantages(data, "stepforge_min", norm_by_std=False)
    adv = data.batch["advantages"]
    # min-form: the wrong solution's returns are 0 everywhere, the right one's 1; group mean 0.5
    assert adv[0, 0].item() == pytest.approx(-0.5) and adv[1, 0].item() == pytest.approx(0.5)
    assert adv[0, len(rows[0]):].abs().sum() == 0  # padding gets nothing


def test_turn_estimators_in_verl_agent_layout_match_the_pure_functions():
    """One row per turn: episodes A (2 turns, success) and B (2 turns, failure) of one prompt,
    both starting from state "34"; the outcome sits on each episode's last row."""
    import numpy as np

    from stepforge.train.credit import gigpo_advantages, oprl_advantages
    from stepforge.train.verl_plugin import compute_turn_advantages, make_turn_estimator

    rewards = torch.zeros(4, 3)
    rewards[1, 1] = 1.0  # episode A's last turn: success
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    uid, traj = np.array(["p", "p", "p", "p"], dtype=object), np.array(["A", "A", "B", "B"], dtype=object)
    anchors = np.array(["34", "68", "34", "37"], dtype=object)
    adv, ret = make_turn_estimator("gigpo")(rewards, mask, uid, traj_index=traj, anchor_obs=anchors, gamma=0.5)
    expected = gigpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]),
                                [torch.tensor([0.5, 1.0]), torch.tensor([0.0, 0.0])], [["34", "68"], ["34", "37"]])
    assert adv[0, :2].tolist() == pytest.approx([float(expected[0][0])] * 2, abs=1e-5)  # 1 + 1
    assert adv[3].tolist() == pytest.approx([float(expected[1][1])] * 3, abs=1e-5)  # −1, "37" seen once
    assert adv[0, 2] == 0 and ret[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    turn_values = torch.tensor([0.2, 0.1, -0.1, -0.2])
    adv, _ = make_turn_estimator("oprl")(rewards, mask, uid, traj_index=traj, turn_values=turn_values)
    expected = oprl_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), [turn_values[:2], turn_values[2:]])
    assert adv[:, 0].tolist() == pytest.approx([*expected[0].tolist(), *expected[1].tolist()], abs=1e-5)

    from types import SimpleNamespace  # a DataProto stand-in: .batch and .non_tensor_batch

    proto = SimpleNamespace(batch={"token_level_rewards": rewards, "response_mask": mask, "turn_values": turn_values},
                            non_tensor_batch={"uid": uid, "traj_uid": traj})
    out = compute_turn_advantages(proto, "oprl")
    assert torch.allclose(out.batch["advantages"], adv)
    with pytest.raises(ValueError, match="traj_index"):
        make_turn_estimator("gigpo")(rewards, mask, uid)
