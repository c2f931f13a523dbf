import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepforge.train.credit import (
    add_verifiable_reward,
    anchor_groups,
    gigpo_advantages,
    group_normalize,
    min_form_returns,
    oprl_advantages,
    pure_soft_min_rewards,
    rloo_advantages,
    rloo_step_advantages,
    soft_min_returns,
    step_returns_to_tokens,
    sum_form_returns,
    trajectory_dpo_loss,
    trajectory_dpo_pairs,
)

rewards = st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=1, max_size=12).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64))


def test_hand_examples():
    r = torch.tensor([0.5, -0.2, 0.8])
    assert sum_form_returns(r).tolist() == pytest.approx([1.1, 0.6, 0.8])
    assert sum_form_returns(r, gamma=0.5).tolist() == pytest.approx([0.5 - 0.1 + 0.2, -0.2 + 0.4, 0.8])
    assert min_form_returns(r).tolist() == pytest.approx([-0.2, -0.2, 0.8])
    w = [math.exp(-x / 0.1) for x in (0.5, -0.2, 0.8)]
    expect = [wi / sum(w) * x for wi, x in zip(w, (0.5, -0.2, 0.8), strict=True)]
    assert pure_soft_min_rewards(r, 0.1).tolist() == pytest.approx(expect, rel=1e-5)
    assert add_verifiable_reward(r, 1.0).tolist() == pytest.approx([0.5, -0.2, 1.8])


@given(rewards)
def test_min_form_return_is_at_most_every_future_reward(r):
    g = min_form_returns(r)
    for t in range(len(r)):
        assert torch.all(g[t] <= r[t:] + 1e-12)
        assert g[t] in r[t:]


@given(rewards)
def test_sum_form_with_gamma_one_is_reversed_cumsum(r):
    assert torch.allclose(sum_form_returns(r, 1.0), torch.flip(torch.cumsum(torch.flip(r, [0]), 0), [0]))


@settings(deadline=None)
@given(rewards)
def test_soft_min_tends_to_strict_min_as_tau_shrinks(r):
    assert torch.allclose(soft_min_returns(r, 1e-4), min_form_returns(r), atol=1e-3)
    # PURE's variant: the return from the first step tends to the minimum
    assert float(sum_form_returns(pure_soft_min_rewards(r, 1e-4))[0]) == pytest.approx(float(r.min()), abs=1e-3)


@given(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=16),
       st.integers(1, 4))
def test_group_baselines_have_zero_mean_per_group(values, n_groups):
    v = torch.tensor(values, dtype=torch.float64)
    groups = torch.arange(len(values)) % n_groups
    for adv in (group_normalize(v, groups), group_normalize(v, groups, std=False), rloo_advantages(v, groups)):
        for g in torch.unique(groups):
            assert float(adv[groups == g].mean()) == pytest.approx(0.0, abs=1e-5)


def test_rloo_by_hand():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 1]))
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0])


def test_tokens_and_separator_masking():
    values = torch.tensor([0.5, -1.0])
    spans = [(0, 3), (4, 6)]  # token 3 is the separator between the steps
    sep = torch.tensor([False, False, False, True, False, False, True])
    out = step_returns_to_tokens(values, spans, 7, separator_mask=sep)
    assert out.tolist() == [0.5, 0.5, 0.5, 0.0, -1.0, -1.0, 0.0]


def test_gigpo_by_hand():
    # two episodes of one group that share their first state "s0"
    ep = torch.tensor([1.0, 0.0])
    groups = torch.tensor([0, 0])
    step_returns = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])]
    states = [["s0", "a"], ["s0", "b"]]
    adv = gigpo_advantages(ep, groups, step_returns, states, omega=0.5)
    # A^E = ±1; at s0 the step returns 1 vs 0 normalise to ±1; "a"/"b" are seen once
    assert adv[0].tolist() == pytest.approx([1.5, 1.0], abs=1e-4)
    assert adv[1].tolist() == pytest.approx([-1.5, -1.0], abs=1e-4)


def test_anchor_groups_and_gigpo_with_discounted_returns_by_hand():
    # group 0: episodes 0 and 1 both start at "34"; episode 1 passes "37" twice; group 1 has its own "34"
    states = [["34", "68"], ["34", "37", "37"], ["34"]]
    assert anchor_groups([0, 0, 1], states) == [[(0, 0), (1, 0)], [(0, 1)], [(1, 1), (1, 2)], [(2, 0)]]
    # GiGPO, γ = 0.95: episode 0 rewards (0, 1) -> G = (0.95, 1); episode 1 (0, 0, 0) -> G = 0
    g0 = sum_form_returns(torch.tensor([0.0, 1.0]), 0.95)
    assert g0.tolist() == pytest.approx([0.95, 1.0])
    adv = gigpo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 1]), [g0, torch.zeros(3), torch.zeros(1)],
                           states, omega=1.0, std=False)
    # A^E centred only: +0.5 / −0.5 (group 0), 0 (group 1 alone); anchor "34": 0.95 vs 0 -> ±0.475;
    # anchor "37" (both in episode 1): returns 0 and 0 -> 0; singletons 0
    assert adv[0].tolist() == pytest.approx([0.975, 0.5])
    assert adv[1].tolist() == pytest.approx([-0.975, -0.5, -0.5])
    assert adv[2].tolist() == pytest.approx([0.0])


def test_oprl_advantages_by_hand():
    outcomes, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    r = [torch.tensor([0.3, 0.1]), torch.tensor([-0.1, -0.3])]
    # A^E = ±1; the group's step rewards {0.3, 0.1, −0.1, −0.3}: mean 0, std √0.05 = 0.2236
    adv = oprl_advantages(outcomes, groups, r, alpha=1.0)
    s = 0.05 ** 0.5
    assert adv[0].tolist() == pytest.approx([1 + 0.3 / s, 1 + 0.1 / s], abs=1e-4)
    assert adv[1].tolist() == pytest.approx([-1 - 0.1 / s, -1 - 0.3 / s], abs=1e-4)
    # the released code's baseline: one entry per trajectory (its first turn): {0.3, −0.1}, mean 0.1, std 0.2
    adv = oprl_advantages(outcomes, groups, r, alpha=0.5, step_baseline="trajectories")
    assert adv[0].tolist() == pytest.approx([1 + 0.5 * 1.0, 1 + 0.5 * 0.0], abs=1e-4)
    # centred only (the code's "mean_norm"): A^E = ±0.5, A^S = r − 0
    adv = oprl_advantages(outcomes, groups, r, alpha=1.0, std=False)
    assert adv[1].tolist() == pytest.approx([-0.6, -0.8], abs=1e-6)
    # RLOO episode baseline: a lone trajectory gets A^E = 0; its own two steps still normalise to ±1
    lone = oprl_advantages(torch.tensor([1.0]), torch.tensor([3]), [torch.tensor([0.2, 0.4])], episode_baseline="rloo")
    assert lone[0].tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)


def test_trajectory_dpo_pairs_and_loss_by_hand():
    success, groups = [True, False, False, True, True, False], [0, 0, 0, 0, 1, 1]
    assert trajectory_dpo_pairs(success, groups) == [(0, 1), (3, 2), (4, 5)]
    assert trajectory_dpo_pairs(success, groups, "all") == [(0, 1), (0, 2), (3, 1), (3, 2), (4, 5)]
    assert trajectory_dpo_pairs([True, True], [0, 0]) == []  # no failure: nothing to prefer
    # −log σ(β(Δ⁺ − Δ⁻)) with β = 0.5: Δ⁺ − Δ⁻ = 2 -> −log σ(1) = 0.31326
    loss = trajectory_dpo_loss(torch.tensor([1.5]), torch.tensor([-0.5]), beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-5)


@pytest.mark.parametrize("reward", [0.5, -0.5])
def test_per_step_baseline_length_bias(reward):
    """PURE #2: with a per-step group baseline, sum-form credit rewards length when step rewards
    are positive and brevity when they are negative, for answers of equal per-step quality;
    min-form gives both lengths the same credit."""
    short, long = torch.full((2,), reward), torch.full((6,), reward)

    def mean_advantage(returns_fn) -> tuple[float, float]:
        flat = torch.cat([returns_fn(short), returns_fn(long)])
        adv = group_normalize(flat, torch.zeros(8, dtype=torch.long))
        return adv[:2].mean().item(), adv[2:].mean().item()

    a_short, a_long = mean_advantage(sum_form_returns)
    assert (a_long > a_short) == (reward > 0)  # here: 2 vs 6 steps of +0.5 → the long answer wins
    assert mean_advantage(min_form_returns) == (0.0, 0.0)


def test_rloo_over_steps_by_hand():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.5]), torch.tensor([2.0, 2.0])
    out = rloo_step_advantages([a, b, c], [0, 0, 1])
    assert out[0].tolist() == [0.5, -0.5] and out[1].tolist() == [0.0] and out[2].tolist() == [0.0, 0.0]
    one_step = [torch.tensor([x]) for x in (1.0, 0.0, 0.0)]  # one return each: plain RLOO
    assert torch.cat(rloo_step_advantages(one_step, [0, 0, 0])).tolist() == \
        rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0])).tolist()
