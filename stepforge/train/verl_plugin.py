"""stepforge credit assignment as verl advantage estimators (no fork of verl).

verl calls an advantage estimator as ``fn(token_level_rewards, response_mask, index, config=None, **kw)``
with (bs, L) tensors and a per-row group id array, and expects ``(advantages, returns)``
of shape (bs, L). Here a process-reward manager writes each step's reward r_t on the last
token of that step and marks those tokens in a ``step_end_mask`` (bs, L): a step whose reward
is exactly 0 keeps its boundary. Each row's step rewards are turned into step returns
(min-form or sum-form), spread over the step's tokens, and normalised GRPO-style within the
group of samples of one prompt. Tokens outside ``response_mask`` get 0.

verl's own ``compute_advantage`` hands an estimator only the rewards, the mask, the uids and
``reward_baselines``; :func:`compute_step_advantages` is the call that also passes
``data.batch["step_end_mask"]`` (use it where the trainer computes advantages). Without a
step-end mask the estimator falls back to reading step ends as the non-zero rewards.

    from stepforge.train.verl_plugin import register_verl_estimators
    register_verl_estimators()          # then algorithm.adv_estimator=stepforge_min in the verl config

Multi-turn agents (issue #12): ``stepforge_gigpo`` and ``stepforge_oprl`` take verl-agent's
layout, one row per turn with ``traj_index`` naming the episode (:func:`turn_credit_advantages`,
:func:`compute_turn_advantages`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stepforge.alignment import generated_offsets, locate_steps, tokens_at_chars
from stepforge.schema import Trajectory
from stepforge.search.base import Scorer
from stepforge.tasks import Task
from stepforge.train.credit import (
    gigpo_advantages,
    group_normalize,
    min_form_returns,
    oprl_advantages,
    step_returns_to_tokens,
    sum_form_returns,
)

ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "stepforge_min": min_form_returns,
    "stepforge_sum": sum_form_returns,
}


def step_credit_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any,
                           returns_fn: Callable[[torch.Tensor], torch.Tensor] = min_form_returns,
                           epsilon: float = 1e-6, norm_by_std: bool = True,
                           step_end_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's estimator contract with step-level credit; see the module docstring."""
    bs = token_level_rewards.shape[0]
    returns = torch.zeros_like(token_level_rewards, dtype=torch.float32)
    step_values, owners = [], []
    spans: list[list[tuple[int, int]]] = []
    group_ids: dict[Any, int] = {}
    for i in range(bs):
        valid = response_mask[i].bool()
        marks = step_end_mask[i].bool() if step_end_mask is not None else token_level_rewards[i] != 0
        ends = torch.nonzero(marks & valid).squeeze(-1).tolist()
        if not ends:  # no reward written: treat the whole response as one step with reward 0
            last = int(valid.nonzero().max()) if valid.any() else 0
            ends = [last]
        r = token_level_rewards[i, ends].float()
        g = returns_fn(r)
        row_spans, start = [], 0
        for e in ends:
            row_spans.append((start, e + 1))
            start = e + 1
        spans.append(row_spans)
        returns[i] = step_returns_to_tokens(g, row_spans, returns.shape[1])
        step_values.append(g)
        owners.append(torch.full((len(g),), group_ids.setdefault(_group_key(index[i]), len(group_ids))))
    norm = group_normalize(torch.cat(step_values), torch.cat(owners), std=norm_by_std, eps=epsilon)
    advantages = torch.zeros_like(returns)
    k = 0
    for i, row_spans in enumerate(spans):
        advantages[i] = step_returns_to_tokens(norm[k:k + len(row_spans)].float(), row_spans, returns.shape[1])
        k += len(row_spans)
    mask = response_mask.to(returns.dtype)
    return advantages * mask, returns * mask


def _group_key(value: Any) -> Any:
    """A prompt's group key as verl gives it (a uid string, a numpy scalar...), compared by
    equality: dense ids are assigned per call, so two prompts never share a group (a hash
    truncated to 31 bits did merge groups whose hashes collided)."""
    return value.item() if hasattr(value, "item") else value


def make_estimator(name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    returns_fn = ESTIMATORS[name]

    def estimator(token_level_rewards, response_mask, index, config=None, epsilon: float = 1e-6,
                  norm_adv_by_std_in_grpo: bool = True, step_end_mask=None, **kwargs):
        return step_credit_advantages(token_level_rewards, response_mask, index, returns_fn, epsilon,
                                      norm_adv_by_std_in_grpo, step_end_mask)

    estimator.__name__ = name
    return estimator


def turn_credit_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any,
                           traj_index: Any, method: str, turn_values: torch.Tensor | None = None,
                           anchor_obs: Any = None, gamma: float = 0.95, weight: float = 1.0, norm_by_std: bool = True,
                           epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-turn credit in verl-agent's layout: one row per turn, ``index`` the prompt group,
    ``traj_index`` the episode (rows in turn order). An episode's outcome is the sum of its
    rows' token rewards. ``gigpo``: ``turn_values`` are the turns' discounted returns
    (verl-agent's ``step_rewards``; without them, computed with ``gamma`` from each row's
    reward) and ``anchor_obs`` the state each turn starts from; ``oprl``: ``turn_values`` are the
    implicit turn rewards r_φ(a_t). Each row's response tokens get A^E + weight·A^S
    (:func:`~stepforge.train.credit.gigpo_advantages`, :func:`~stepforge.train.credit.oprl_advantages`)."""
    bs = token_level_rewards.shape[0]
    mask = response_mask.to(torch.float32)
    row_reward = (token_level_rewards.float() * mask).sum(-1)
    episodes: dict[Any, list[int]] = {}
    for i in range(bs):
        episodes.setdefault(_group_key(traj_index[i]), []).append(i)
    rows = list(episodes.values())
    group_ids: dict[Any, int] = {}
    groups = torch.tensor([group_ids.setdefault(_group_key(index[r[0]]), len(group_ids)) for r in rows])
    outcome = torch.stack([row_reward[r].sum() for r in rows])
    if method == "gigpo":
        if anchor_obs is None:
            raise ValueError("stepforge_gigpo needs anchor_obs: the state each turn starts from")
        returns = [turn_values[r].float() if turn_values is not None else sum_form_returns(row_reward[r], gamma)
                   for r in rows]
        states = [[str(_group_key(anchor_obs[i])) for i in r] for r in rows]
        per_turn = gigpo_advantages(outcome, groups, returns, states, weight, std=norm_by_std, eps=epsilon)
    elif method == "oprl":
        if turn_values is None:
            raise ValueError("stepforge_oprl needs turn_values: the implicit PRM's reward of each turn")
        per_turn = oprl_advantages(outcome, groups, [turn_values[r].float() for r in rows], weight, eps=epsilon)
    else:
        raise ValueError(f"unknown multi-turn method {method!r}; expected gigpo or oprl")
    advantages, ret = torch.zeros_like(mask), torch.zeros_like(mask)
    for k, (r, a) in enumerate(zip(rows, per_turn, strict=True)):
        advantages[r] = a.float()[:, None].expand(len(r), mask.shape[1])
        ret[r] = float(outcome[k])  # returns: the episode's outcome on each of its rows
    return advantages * mask, ret * mask


def make_turn_estimator(method: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def estimator(token_level_rewards, response_mask, index, traj_index=None, config=None, epsilon: float = 1e-6,
                  norm_adv_by_std_in_grpo: bool = True, turn_values=None, step_rewards=None, anchor_obs=None,
                  gamma: float = 0.95, weight: float = 1.0, **kwargs):
        if traj_index is None:
            raise ValueError(f"stepforge_{method} needs traj_index: the episode of each turn row")
        values = turn_values if turn_values is not None else step_rewards
        return turn_credit_advantages(token_level_rewards, response_mask, index, traj_index, method, values,
                                      anchor_obs, gamma, weight, norm_adv_by_std_in_grpo, epsilon)

    estimator.__name__ = f"stepforge_{method}"
    return estimator


TURN_ESTIMATORS = ("gigpo", "oprl")


def compute_turn_advantages(data: Any, method: str = "oprl", gamma: float = 0.95, weight: float = 1.0,
                            norm_by_std: bool = True) -> Any:
    """:func:`turn_credit_advantages` on a verl ``DataProto`` in verl-agent's layout:
    ``non_tensor_batch`` holds ``uid`` (prompt group), ``traj_uid`` (episode) and, for GiGPO,
    ``anchor_obs``; ``batch`` holds ``turn_values`` (OPRL's r_φ per row) or ``step_rewards``
    (GiGPO's discounted returns per row), optional for GiGPO."""
    batch, extra = data.batch, data.non_tensor_batch
    keys = batch.keys()
    values = batch["turn_values"] if "turn_values" in keys else batch["step_rewards"] if "step_rewards" in keys \
        else None
    adv, ret = turn_credit_advantages(batch["token_level_rewards"], batch["response_mask"], extra["uid"],
                                      extra["traj_uid"], method, values, extra.get("anchor_obs"), gamma, weight,
                                      norm_by_std)
    batch["advantages"], batch["returns"] = adv, ret
    return data


def compute_step_advantages(data: Any, estimator: str = "stepforge_min", norm_by_std: bool = True) -> Any:
    """Advantages and returns of a verl ``DataProto`` (anything with ``.batch`` and
    ``.non_tensor_batch``) with the step-end mask its reward manager wrote; fills
    ``data.batch["advantages"]`` and ``["returns"]`` as verl's ``compute_advantage`` does."""
    batch = data.batch
    # TensorDict (verl's batch) refuses `key in td`; `.keys()` works for it and for a dict
    ends = batch["step_end_mask"] if "step_end_mask" in batch.keys() else None  # noqa: SIM118
    adv, ret = step_credit_advantages(batch["token_level_rewards"], batch["response_mask"],
                                      data.non_tensor_batch["uid"], ESTIMATORS[estimator],
                                      norm_by_std=norm_by_std, step_end_mask=ends)
    batch["advantages"], batch["returns"] = adv, ret
    return data


class StepRewardManager:
    """A verl reward manager that scores every step of each response with a stepforge
    :class:`~stepforge.search.base.Scorer` (a PRM) and writes step t's score on the step's last
    response token, marking it in ``step_end_mask`` (so min-form credit can run inside verl end
    to end with :func:`compute_step_advantages`).

    Steps are the task's segmentation of the decoded response; a step's last token is found
    from incremental-detokenisation offsets (:func:`stepforge.alignment.generated_offsets`).
    The question comes from ``non_tensor_batch[question_key]``, else ``extra_info["question"]``,
    else the decoded prompt.
    """

    def __init__(self, tokenizer, scorer: Scorer, task: Task, question_key: str = "question") -> None:
        self.tokenizer, self.scorer, self.task, self.question_key = tokenizer, scorer, task, question_key

    def _question(self, data: Any, i: int) -> str:
        extra = data.non_tensor_batch
        if self.question_key in extra:
            return str(extra[self.question_key][i])
        if "extra_info" in extra and isinstance(extra["extra_info"][i], dict) and "question" in extra["extra_info"][i]:
            return str(extra["extra_info"][i]["question"])
        prompt = data.batch["prompts"][i]
        keep = data.batch["attention_mask"][i, :prompt.shape[0]].bool()
        return self.tokenizer.decode(prompt[keep].tolist(), skip_special_tokens=True)

    def __call__(self, data: Any, return_dict: bool = False) -> Any:
        batch = data.batch
        responses = batch["responses"]
        width = responses.shape[1]
        mask = (batch["response_mask"] if "response_mask" in batch.keys()  # noqa: SIM118 (TensorDict)
                else batch["attention_mask"][:, -width:])
        rewards = torch.zeros(responses.shape, dtype=torch.float32)
        ends = torch.zeros(responses.shape, dtype=torch.long)
        trajectories, where = [], []
        for i in range(responses.shape[0]):
            positions = mask[i].bool().nonzero().squeeze(-1).tolist()
            ids = responses[i, positions].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            steps = self.task.steps(text)
            if not steps:
                continue
            last_chars = [b - 1 for _, b in locate_steps(text, steps)]
            tokens = tokens_at_chars(generated_offsets(self.tokenizer, ids), last_chars)
            trajectories.append(Trajectory(id=str(i), problem_id=str(i), question=self._question(data, i), steps=steps))
            where.append((i, [positions[t] for t in tokens]))
        for (i, cols), scores in zip(where, self.scorer.score(trajectories) if trajectories else [], strict=True):
            rewards[i, cols] = torch.tensor(scores, dtype=torch.float32)
            ends[i, cols] = 1
        batch["step_end_mask"] = ends
        if return_dict:
            return {"reward_tensor": rewards, "reward_extra_info": {"step_end_mask": ends.tolist()}}
        return rewards


def register_verl_estimators() -> list[str]:
    """Register every stepforge estimator with verl (extra ``stepforge[verl]``); returns the names."""
    try:
        from verl.trainer.ppo.core_algos import register_adv_est
    except ImportError as err:
        raise ImportError("the verl plug-in needs verl: pip install 'stepforge[verl]'") from err
    for name in ESTIMATORS:
        register_adv_est(name)(make_estimator(name))
    for method in TURN_ESTIMATORS:
        register_adv_est(f"stepforge_{method}")(make_turn_estimator(method))
    return [*ESTIMATORS, *(f"stepforge_{m}" for m in TURN_ESTIMATORS)]
