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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stepforge.alignment import generated_offsets, locate_steps, tokens_at_chars
from stepforge.schema import Trajectory
from stepforge.search.base import Scorer
from stepforge.tasks import Task
from stepforge.train.credit import group_normalize, min_form_returns, step_returns_to_tokens, sum_form_returns

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
    return list(ESTIMATORS)
