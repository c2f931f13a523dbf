"""Step-level credit assignment: pure functions on plain tensors (torch only, no model code).

Inputs are per-step rewards r_1..r_T (a 1-D tensor), the token span of each step in the
response, and the outcome R. Outputs are per-step returns or per-token advantages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sum_form_returns(rewards: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{k≥t} γ^{k−t} r_k (the usual discounted return; PURE's "sum-form")."""
    out = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def min_form_returns(rewards: torch.Tensor) -> torch.Tensor:
    """PURE strict min-form (Cheng et al. 2025): G_t = min_{k≥t} r_k — a step is worth the
    worst step still ahead, so a policy cannot bank reward by adding "good-looking" steps."""
    return torch.flip(torch.cummin(torch.flip(rewards, [0]), 0).values, [0])


def pure_soft_min_rewards(rewards: torch.Tensor, tau: float = 0.1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PURE's implemented soft min-form (openrlhf/utils/utils.py, turn_process_reward_logits_to_reward):
    w = softmax(−r/τ) over ALL steps of the response, r'_k = w_k · r_k; the trainer then takes
    sum-form returns of r'. As τ → 0, w → one-hot on argmin r, so the return from the first
    step (and from any step up to the argmin) → min_k r_k; later steps get 0. (DESIGN.md also
    multiplies by T'; the code we read does not, so neither do we.)"""
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    weights = torch.softmax((-rewards / tau).masked_fill(~mask, float("-inf")), dim=-1)
    return (weights * rewards).masked_fill(~mask, 0.0)


def soft_min_returns(rewards: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """A soft version of the strict min-form for every step:
    G_t = Σ_{k≥t} softmax_{k≥t}(−r/τ)_k · r_k, which → min_{k≥t} r_k as τ → 0 for every t."""
    out = torch.empty_like(rewards)
    for t in range(rewards.shape[0]):
        future = rewards[t:]
        out[t] = (torch.softmax(-future / tau, 0) * future).sum()
    return out


def add_verifiable_reward(rewards: torch.Tensor, outcome: float, weight: float = 1.0) -> torch.Tensor:
    """Mix the verifiable reward into process rewards: r_T ← r_T + weight · R (PURE's VR mix;
    its "10% VR" applies this on 10% of the batch, which the caller decides)."""
    out = rewards.clone()
    if out.numel():
        out[-1] = out[-1] + weight * outcome
    return out


def step_values_to_tokens(step_values: torch.Tensor, token_steps: Sequence[int]) -> torch.Tensor:
    """Per-token values: a token of step t gets step_values[t]; a token of no step (index −1:
    separators, prompt) gets 0, so no gradient flows through it (PURE #20: unmasked
    separators let the policy collapse to empty outputs). The one credit spreader: the RL
    loop and the verl plug-in both use it."""
    index = torch.as_tensor(list(token_steps), dtype=torch.long)
    if step_values.numel() == 0:
        return torch.zeros(len(index), dtype=step_values.dtype)
    values = step_values[index.clamp(min=0, max=step_values.numel() - 1)]
    return values.masked_fill(index < 0, 0.0)


def step_returns_to_tokens(step_values: torch.Tensor, spans: Sequence[tuple[int, int]], length: int,
                           separator_mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`step_values_to_tokens` from token spans [start, end) per step; ``separator_mask``
    marks tokens inside a span that separate steps (they get 0 too)."""
    owner = [-1] * length
    for t, (start, end) in enumerate(spans):
        owner[start:end] = [t] * (end - start)
    if separator_mask is not None:
        owner = [-1 if bool(m) else k for k, m in zip(owner, separator_mask, strict=True)]
    return step_values_to_tokens(step_values, owner)


def group_normalize(values: torch.Tensor, groups: torch.Tensor, std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO / RLOO-style baseline: subtract the mean of each group (the n samples of one
    question) and, with ``std``, divide by its standard deviation. ``values`` is (B,) or
    (B, S) for per-step / per-token baselines (normalised over all entries of the group)."""
    dtype = torch.promote_types(values.dtype, torch.float32)  # keep float64 inputs in float64
    out = torch.empty_like(values, dtype=dtype)
    for g in torch.unique(groups):
        idx = groups == g
        v = values[idx].to(dtype)
        centred = v - v.mean()
        out[idx] = centred / (v.std(unbiased=False) + eps) if std and v.numel() > 1 else centred
    return out


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = R_i − mean_{j≠i, same group} R_j."""
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    out = torch.zeros_like(rewards, dtype=dtype)
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).squeeze(-1)
        r = rewards[idx].to(dtype)
        n = r.numel()
        out[idx] = r - (r.sum() - r) / (n - 1) if n > 1 else torch.zeros_like(r)
    return out


def rloo_step_advantages(step_returns: Sequence[torch.Tensor], groups: Sequence[int]) -> list[torch.Tensor]:
    """RLOO over steps: A_{i,t} = G_{i,t} − mean{G_{j,s} : j ≠ i in i's group, every step s};
    with one return per trajectory this is :func:`rloo_advantages`. A trajectory alone in its
    group gets 0."""
    totals: dict[int, tuple[float, int]] = {}  # group → (sum of returns, number of returns)
    for g_i, grp in zip(step_returns, groups, strict=True):
        total, count = totals.get(grp, (0.0, 0))
        totals[grp] = (total + g_i.double().sum().item(), count + g_i.numel())
    out = []
    for g_i, grp in zip(step_returns, groups, strict=True):
        total, count = totals[grp]
        others = count - g_i.numel()
        base = (total - g_i.double().sum().item()) / others if others else None
        out.append(g_i - base if base is not None else torch.zeros_like(g_i))
    return out


def anchor_groups(groups: Sequence[int], step_states: Sequence[Sequence[str]]) -> list[list[tuple[int, int]]]:
    """GiGPO's anchor groups: the (trajectory, step) pairs of one prompt group whose steps
    start from the same environment state (compared by its hashable key), in first-seen order;
    singletons included."""
    anchors: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for i, states in enumerate(step_states):
        for t, s in enumerate(states):
            anchors.setdefault((int(groups[i]), s), []).append((i, t))
    return list(anchors.values())


def gigpo_advantages(episode_returns: torch.Tensor, groups: torch.Tensor, step_returns: Sequence[torch.Tensor],
                     step_states: Sequence[Sequence[str]], omega: float = 1.0, std: bool = True, eps: float = 1e-6
                     ) -> list[torch.Tensor]:
    """GiGPO (Feng et al. 2025, verl-agent core_gigpo.py): episode advantage
    A^E_i = (R_i − mean R)/std R over the prompt group, plus a step advantage among the steps of
    the group that start from the same state (:func:`anchor_groups`):
    A^S_{i,t} = (G_{i,t} − mean G)/std G over that anchor group, G_t = Σ_{k≥t} γ^{k−t} r_k.
    Per-step advantage A^E + ω·A^S; ``std=False`` only centres both (GiGPO's "none"
    normalisation); a state seen once gets A^S = 0."""
    a_ep = group_normalize(episode_returns, groups, std=std)
    out = [torch.full((len(states),), float(a_ep[i])) for i, states in enumerate(step_states)]
    for members in anchor_groups([int(g) for g in groups], step_states):
        if len(members) < 2:
            continue
        g = torch.tensor([float(step_returns[i][t]) for i, t in members])
        centred = g - g.mean()
        norm = centred / (g.std(unbiased=False) + eps) if std else centred
        for (i, t), a in zip(members, norm, strict=True):
            out[i][t] += omega * a
    return out


def oprl_advantages(outcomes: torch.Tensor, groups: torch.Tensor, step_rewards: Sequence[torch.Tensor],
                    alpha: float = 1.0, step_baseline: str = "steps", episode_baseline: str = "grpo",
                    std: bool = True, eps: float = 1e-6) -> list[torch.Tensor]:
    """OPRL / iStar (Liu et al. 2025, arXiv 2509.19199): A_{i,t} = A^E_i + α·A^S_{i,t} with
    A^E_i = (r_o,i − mean r_o)/std r_o over the prompt group (``episode_baseline="rloo"``:
    r_o,i − mean of the others) and A^S_{i,t} = (r_φ(a_{i,t}) − mean)/std, the mean and std over
    every step reward of the group (the paper). ``step_baseline="trajectories"``: over one entry
    per trajectory, its first turn's reward, as the released code (core_istar.py) builds it from
    the first row it meets of each trajectory; ``std=False`` only centres both (the code's
    default "mean_norm")."""
    if step_baseline not in ("steps", "trajectories"):
        raise ValueError(f"step_baseline is 'steps' or 'trajectories', got {step_baseline!r}")
    a_ep = rloo_advantages(outcomes, groups) if episode_baseline == "rloo" else group_normalize(outcomes, groups, std)
    members: dict[int, list[torch.Tensor]] = {}  # group -> its non-empty trajectories' step rewards
    for g, r in zip(groups.tolist(), step_rewards, strict=True):
        if r.numel():
            members.setdefault(int(g), []).append(r)
    pools = {g: (torch.cat(rs) if step_baseline == "steps" else torch.stack([r[0] for r in rs])).double()
             for g, rs in members.items()}
    out = []
    for i, (g, r) in enumerate(zip(groups.tolist(), step_rewards, strict=True)):
        pool = pools.get(int(g))
        if pool is None or pool.numel() < 2:
            a_step = torch.zeros_like(r, dtype=torch.float64)
        else:
            centred = r.double() - pool.mean()
            a_step = centred / (pool.std(unbiased=False) + eps) if std else centred
        out.append((float(a_ep[i]) + alpha * a_step).float())
    return out


def trajectory_dpo_pairs(success: Sequence[bool], groups: Sequence[int], pairing: str = "matched"
                         ) -> list[tuple[int, int]]:
    """(chosen, rejected) trajectory indices from the same prompt group: ``matched`` pairs the
    k-th success with the k-th failure (min(#success, #failure) pairs per group, each
    trajectory used once: the paper's pairs); ``all`` pairs every success with every failure
    (the released iStar code)."""
    if pairing not in ("matched", "all"):
        raise ValueError(f"pairing is 'matched' or 'all', got {pairing!r}")
    by_group: dict[int, tuple[list[int], list[int]]] = {}
    for i, (ok, g) in enumerate(zip(success, groups, strict=True)):
        by_group.setdefault(int(g), ([], []))[0 if ok else 1].append(i)
    pairs = []
    for wins, losses in by_group.values():
        if pairing == "matched":
            pairs += list(zip(wins, losses, strict=False))
        else:
            pairs += [(w, x) for w in wins for x in losses]
    return pairs


def trajectory_dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float = 0.05
                        ) -> torch.Tensor:
    """OPRL's PRM objective, DPO over whole trajectories (Rafailov et al. 2023 with the moving
    reference π_old): L = −mean log σ(β·Δ⁺ − β·Δ⁻), Δ = Σ_{action tokens} log π_φ − log π_old
    (per pair; observation tokens are not in Δ)."""
    return -torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
