"""Multi-turn RL for agents with turn-level credit (issue #12): OPRL/iStar, GiGPO and baselines.

One iteration: roll out ``episodes_per_task`` episodes of each of ``tasks_per_iteration``
fresh tasks (every live episode in one backend call per turn) → outcomes r_o (the episode's
return) → turn rewards → advantages → ``ppo_epochs`` PPO-clip updates without KL; θ_old is
the policy that rolled out. Only action tokens carry loss (:func:`episode_tokens`); prompt
and observation tokens are masked. Credit:

- ``outcome``: A = A^E on every action token (GRPO (r_o − mean)/std, or RLOO).
- ``merged``: the implicit PRM's turn rewards summed into the outcome, r_o + Σ_t r_φ(a_t),
  then as ``outcome`` (PRIME-style "merged rewards").
- ``gigpo``: A = A^E + ω·A^S with A^S from anchor groups (turns of a prompt group that
  start from the same environment state), G_t = Σ_{k≥t} γ^{k−t} r_k of the environment's
  turn rewards (Feng et al. 2025).
- ``oprl``: A = A^E + α·A^S with r_φ(a_t) = β·Σ_{tokens of a_t} log π_φ − log π_old, an
  implicit PRM φ (a copy of the initial policy) trained each iteration by trajectory DPO
  against the moving reference π_old (Liu et al. 2025, iStar). Paper defaults; the released
  code's variants are options (``turn_score="mean"``, ``pairing="all"``,
  ``step_baseline="trajectories"``, ``score_before_update=True``, ``norm_std=False``).

Metrics and hacking monitors (episode length, invalid-action share, the PRM's disagreement
with outcomes on success/failure pairs) go to ``metrics.jsonl`` every iteration; scored
episodes (with their turn rewards) to ``episodes.jsonl``; a checkpoint every ``save_every``
iterations, from which a re-run resumes.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stepforge.backends.causal_lm import pad_id, pad_right
from stepforge.backends.device import model_device
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.env.rollout import episode_summary, episode_tokens, rollout
from stepforge.schema import Problem, Trajectory
from stepforge.seeds import derive_seed
from stepforge.tasks import get_environment
from stepforge.train.credit import (
    anchor_groups,
    gigpo_advantages,
    group_normalize,
    oprl_advantages,
    rloo_advantages,
    sum_form_returns,
    trajectory_dpo_loss,
    trajectory_dpo_pairs,
)
from stepforge.train.rl import _logprobs, _trainable_parameters, resume_checkpoint, save_checkpoint

AGENT_CREDITS = ("outcome", "merged", "gigpo", "oprl")


@dataclass
class AgentRLConfig:
    credit: str = "oprl"
    iterations: int = 40
    tasks_per_iteration: int = 16
    episodes_per_task: int = 8
    lr: float = 1e-2  # suits trainable=("norm",) (the world policy's RL recipe, bench/credit_assignment.py)
    trainable: tuple[str, ...] = ("norm",)
    clip: float = 0.2
    ppo_epochs: int = 2
    baseline: str = "grpo"  # episode baseline: grpo | rloo
    beta: float = 0.05  # OPRL: implicit reward scale
    alpha: float = 1.0  # OPRL: weight of the step advantage
    omega: float = 1.0  # GiGPO: weight of the step advantage
    gamma: float = 0.95  # GiGPO: discount of the environment's turn rewards
    norm_std: bool = True  # GiGPO / OPRL normalisation: (x − mean)/std, or centre only (iStar code's mean_norm)
    # the implicit PRM trains every parameter: on a development seed its step rewards separated
    # progress turns better so (AUC 0.63) than with RMSNorm gains only at 1e-2 (0.56); README
    prm_lr: float = 1e-3
    prm_trainable: tuple[str, ...] = ()
    prm_updates: int = 1  # DPO steps on the implicit PRM per iteration
    pairing: str = "matched"  # matched (paper) | all (released code: every success × every failure)
    turn_score: str = "sum"  # a trajectory's DPO score: sum of its turn log-ratios (paper) | mean (code)
    step_baseline: str = "steps"  # OPRL's A^S baseline: steps (paper) | trajectories (code)
    score_before_update: bool = False  # the released code scores turns before the PRM's DPO step
    # oprl / merged with the environment's exact per-turn labels (1 progress, 0 not, 0 unknown) as
    # r(a_t) instead of the implicit PRM: the step signal's ceiling, for benchmarks
    exact_turn_rewards: bool = False
    temperature: float = 1.0
    # episodes per forward pass (None: the whole batch at once); gradients are accumulated, so the
    # update is the same, only memory changes: what a real model on one GPU needs
    micro_batch: int | None = None
    max_turns: int = 16
    max_new_tokens: int = 8
    save_every: int = 10
    seed: int = 0
    env: str = "agent"  # a multi-turn world or registered environment (stepforge.tasks.get_environment)
    min_distance: int = 2
    max_distance: int = 5

    def __post_init__(self) -> None:
        if self.credit not in AGENT_CREDITS:
            raise ValueError(f"unknown agent credit {self.credit!r}; choose from {', '.join(AGENT_CREDITS)}")
        for name, value, allowed in (("baseline", self.baseline, ("grpo", "rloo")),
                                     ("pairing", self.pairing, ("matched", "all")),
                                     ("turn_score", self.turn_score, ("sum", "mean")),
                                     ("step_baseline", self.step_baseline, ("steps", "trajectories"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"RL samples from the policy: temperature must be > 0, got {self.temperature}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch is a number of episodes >= 1, got {self.micro_batch}")

    @property
    def uses_prm(self) -> bool:
        return self.credit in ("oprl", "merged") and not self.exact_turn_rewards


def turn_sums(values: torch.Tensor, turn_index: torch.Tensor, n_turns: Sequence[int]) -> list[torch.Tensor]:
    """Per row, the sum of ``values`` over the tokens of each turn (``turn_index`` −1: no turn)."""
    out = []
    for b, n in enumerate(n_turns):
        keep = turn_index[b] >= 0
        sums = torch.zeros(n, dtype=values.dtype, device=values.device)
        out.append(sums.index_add(0, turn_index[b][keep], values[b][keep]))
    return out


ALARM_WINDOW = 5  # iterations averaged on each side: one batch of 16 tasks is too noisy to alarm on


def agent_alarms(history: Sequence[dict[str, Any]], window: int = ALARM_WINDOW) -> list[str]:
    """Reward-hacking alarms for agents, comparing the mean of the first ``window`` iterations
    with the mean of the last ``window``: episodes growing longer (> 30%) while success does not
    rise, invalid actions rising (> 0.1), the PRM ranking failures above successes more often
    (disagreement up > 0.2, or above 0.5: worse than chance)."""
    if len(history) <= window:
        return []

    def mean(rows, key):
        xs = [r[key] for r in rows if r.get(key) is not None]
        return sum(xs) / len(xs) if xs else None

    first, now = history[:window], history[-window:]
    alarms = []
    t0, t1, s0, s1 = (mean(first, "mean_turns"), mean(now, "mean_turns"), mean(first, "success"),
                      mean(now, "success"))
    if t0 and t1 > 1.3 * t0 and s1 <= s0:
        alarms.append(f"episodes grew {t0:.2f} -> {t1:.2f} turns without success")
    i0, i1 = mean(first, "invalid_share"), mean(now, "invalid_share")
    if i1 - i0 > 0.1:
        alarms.append(f"invalid actions rose {i0:.2f} -> {i1:.2f}")
    d0, d1 = mean(first, "prm_disagreement"), mean(now, "prm_disagreement")
    if d0 is not None and d1 is not None and (d1 - d0 > 0.2 or d1 > 0.5):
        alarms.append(f"PRM disagrees with outcomes {d0:.2f} -> {d1:.2f}")
    return alarms


def _chunks(rows: int, size: int | None) -> list[slice]:
    size = size or rows
    return [slice(k, min(k + size, rows)) for k in range(0, rows, size)]


def implicit_turn_rewards(prm, ids: torch.Tensor, attn: torch.Tensor, old: torch.Tensor, turn: torch.Tensor,
                          n_turns: Sequence[int], cfg: AgentRLConfig, grad: bool = False) -> list[torch.Tensor]:
    """OPRL's r_φ(a_t) = β·Σ_{tokens of a_t} (log π_φ − log π_old), per episode and turn."""
    with torch.set_grad_enabled(grad):
        ratio = (_logprobs(prm, ids, attn, cfg.temperature) - old) * (turn >= 0)
        return [cfg.beta * s for s in turn_sums(ratio, turn.clamp(min=0), n_turns)]


def _scored_chunks(prm, ids, attn, old, turn, n_turns, cfg: AgentRLConfig, grad: bool = False
                   ) -> list[tuple[slice, list[torch.Tensor]]]:
    return [(c, implicit_turn_rewards(prm, ids[c], attn[c], old[c], turn[c], n_turns[c], cfg, grad))
            for c in _chunks(ids.shape[0], cfg.micro_batch)]


def _score_turns(prm, batch: tuple, cfg: AgentRLConfig) -> list[torch.Tensor]:
    """r_φ(a_t) of every episode's turns, on the CPU, without gradients."""
    return [r.detach().cpu() for _, per_turn in _scored_chunks(prm, *batch, cfg) for r in per_turn]


def _prm_dpo_step(prm, prm_opt, pairs: list[tuple[int, int]], batch: tuple, cfg: AgentRLConfig) -> float:
    """One trajectory-DPO step on the implicit PRM, ``cfg.micro_batch`` episodes per forward. The
    loss depends on the episodes only through their scores s_i, so it is computed once from
    detached scores and its gradient dL/ds_i is pushed through each chunk's own forward: exact,
    with one chunk's activations in memory at a time."""

    def trajectory_score(per_turn: list[torch.Tensor]) -> torch.Tensor:  # Δ = Σ (or mean) of turn log-ratios
        return torch.stack([(r.mean() if cfg.turn_score == "mean" and r.numel() else r.sum())
                            for r in per_turn]) / cfg.beta

    with torch.no_grad():
        scores = torch.cat([trajectory_score(r) for _, r in _scored_chunks(prm, *batch, cfg)])
    scores.requires_grad_(True)
    chosen, rejected = (torch.tensor(x, device=scores.device) for x in zip(*pairs, strict=True))
    loss = trajectory_dpo_loss(scores[chosen], scores[rejected], cfg.beta)
    (d_scores,) = torch.autograd.grad(loss, scores)
    prm_opt.zero_grad()
    for c, per_turn in _scored_chunks(prm, *batch, cfg, grad=True):
        (trajectory_score(per_turn) * d_scores[c]).sum().backward()
    torch.nn.utils.clip_grad_norm_(prm.parameters(), 1.0)
    prm_opt.step()
    return loss.item()


def _batch(tokenizer, problems, episodes: list[Trajectory], task, n: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded ids and attention mask, and per next-token position the turn of the token it
    predicts (−1: prompt, observation, padding)."""
    rows = [episode_tokens(tokenizer, problems[i // n], t, task) for i, t in enumerate(episodes)]
    ids, attn = pad_right([r[0] for r in rows], pad_id(tokenizer))
    turn = torch.full((len(rows), ids.shape[1] - 1), -1, dtype=torch.long)
    for b, (_, owner) in enumerate(rows):
        turn[b, :len(owner) - 1] = torch.tensor(owner[1:])
    return ids.to(device), attn.to(device), turn.to(device)


def train_agent_rl(model, tokenizer, out_dir: str | Path, cfg: AgentRLConfig,
                   on_iteration: Callable[[dict[str, Any], list[Trajectory]], None] | None = None,
                   problems: Sequence[Problem] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) multi-turn RL in environment ``cfg.env``; returns the metrics of every
    iteration. Tasks come from the world (fresh each iteration) or, for a real-data
    environment, from ``problems``: each iteration a seeded draw of ``tasks_per_iteration``.

    ``model`` must be the initial policy: OPRL's implicit PRM starts as a copy of it."""
    task, make_env, world = get_environment(cfg.env)
    if world is None and not problems:
        raise ValueError(f"environment {cfg.env!r} has no built-in tasks: pass problems (e.g. GSM8K)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prm = copy.deepcopy(model) if cfg.uses_prm else None
    opt = torch.optim.AdamW(_trainable_parameters(model, cfg.trainable), lr=cfg.lr)
    prm_opt = torch.optim.AdamW(_trainable_parameters(prm, cfg.prm_trainable), lr=cfg.prm_lr) if prm else None
    start = _resume(out, model, opt, prm, prm_opt)
    metrics_path, episodes_path = out / "metrics.jsonl", out / "episodes.jsonl"
    history = [json.loads(x) for x in metrics_path.read_text().splitlines()][:start] if metrics_path.exists() else []
    policy = TransformersPolicy(model, tokenizer)
    device = model_device(model)
    n = cfg.episodes_per_task
    for it in range(start, cfg.iterations):
        if world is not None:
            batch = world.generate(cfg.tasks_per_iteration, seed=cfg.seed * 100_000 + it, prefix="agent-rl",
                                   min_steps=cfg.min_distance, max_steps=cfg.max_distance)
        else:
            batch = random.Random(derive_seed(cfg.seed, "agent-rl-draw", it)).sample(
                list(problems), min(cfg.tasks_per_iteration, len(problems)))
        model.eval()
        episodes, _ = rollout(policy, batch, task, make_env, n=n, temperature=cfg.temperature,
                              max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                              seed=derive_seed(cfg.seed, "agent-rl", it))
        groups = [i // n for i in range(len(episodes))]
        n_turns = [len(t.steps) for t in episodes]
        outcome = torch.tensor([float(t.meta["episode"]["return"]) for t in episodes])
        success = [bool(t.correct) for t in episodes]
        ids, attn, turn = _batch(tokenizer, batch, episodes, task, n, device)
        act = turn >= 0
        chunks = _chunks(len(episodes), cfg.micro_batch)
        with torch.no_grad():
            old = torch.cat([_logprobs(model, ids[c], attn[c], cfg.temperature) for c in chunks])
        row: dict[str, Any] = {"iteration": it + 1}
        step_rewards = None
        if prm is not None:
            pairs = trajectory_dpo_pairs(success, groups, cfg.pairing)
            scored = (ids, attn, old, turn, n_turns)
            if cfg.score_before_update:
                step_rewards = _score_turns(prm, scored, cfg)
            prm.train()
            for _ in range(cfg.prm_updates if pairs else 0):
                row["prm_loss"] = round(_prm_dpo_step(prm, prm_opt, pairs, scored, cfg), 5)
            prm.eval()
            if step_rewards is None:
                step_rewards = _score_turns(prm, scored, cfg)
            totals = torch.stack([r.sum() for r in step_rewards])
            row["prm_disagreement"] = round(sum(float(totals[w] <= totals[x]) for w, x in pairs) / len(pairs), 5) \
                if pairs else None
            for t, r in zip(episodes, step_rewards, strict=True):
                t.meta["turn_rewards"] = [round(float(x), 6) for x in r]
        for t in episodes:
            t.meta["iteration"] = it + 1
        if cfg.exact_turn_rewards:
            step_rewards = [torch.tensor([x or 0.0 for x in t.step_labels]) for t in episodes]
        gr = torch.tensor(groups)
        if cfg.credit in ("outcome", "merged"):
            r_o = outcome + torch.stack([r.sum() for r in step_rewards]) if cfg.credit == "merged" else outcome
            a = rloo_advantages(r_o, gr) if cfg.baseline == "rloo" else group_normalize(r_o, gr)
            adv_turns = [torch.full((k,), float(a[i])) for i, k in enumerate(n_turns)]
        elif cfg.credit == "gigpo":
            returns = [sum_form_returns(torch.tensor(t.meta["episode"]["rewards"]), cfg.gamma) for t in episodes]
            states = [t.meta["episode"]["states"][:-1] for t in episodes]  # the state each turn starts from
            adv_turns = gigpo_advantages(outcome, gr, returns, states, cfg.omega, std=cfg.norm_std)
            anchored = sum(len(m) for m in anchor_groups(groups, states) if len(m) > 1)
            row["anchor_share"] = round(anchored / max(1, sum(n_turns)), 5)
        else:
            adv_turns = oprl_advantages(outcome, gr, step_rewards, cfg.alpha, cfg.step_baseline, cfg.baseline,
                                        std=cfg.norm_std)
        adv = torch.zeros_like(old)
        for b, a in enumerate(adv_turns):
            if a.numel():
                adv[b] = a.to(device)[turn[b].clamp(min=0, max=a.numel() - 1)]
        adv = adv * act
        model.train()
        n_act = act.sum().clamp(min=1)
        for _ in range(cfg.ppo_epochs):
            opt.zero_grad()
            loss = torch.zeros((), device=device)
            for c in chunks:  # token-mean over the whole batch, accumulated chunk by chunk
                ratio = torch.exp(_logprobs(model, ids[c], attn[c], cfg.temperature) - old[c])
                pg = -torch.min(ratio * adv[c], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv[c])
                part = (pg * act[c]).sum() / n_act
                part.backward()
                loss = loss + part.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        row.update({"loss": round(loss.item(), 5), **{k: round(v, 5) for k, v in episode_summary(episodes).items()}})
        row["alarms"] = agent_alarms([*history, row])
        history.append(row)
        for path, lines in ((episodes_path, [t.model_dump_json() for t in episodes]),
                            (metrics_path, [json.dumps(row)])):
            with path.open("a") as f:
                f.write("".join(x + "\n" for x in lines))
                f.flush()
                os.fsync(f.fileno())
        if on_iteration:
            on_iteration(row, episodes)
        if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
            save_checkpoint(out, it + 1, cfg, model=model, optimizer=opt, prm=prm, prm_optimizer=prm_opt)
    return history


def _resume(out: Path, model, opt, prm=None, prm_opt=None) -> int:
    """:func:`resume_checkpoint`, and the scored episodes of iterations after it dropped too."""
    step = resume_checkpoint(out, model, optimizer=opt, prm=prm, prm_optimizer=prm_opt)
    episodes = out / "episodes.jsonl"
    if episodes.exists():
        kept = [x for x in episodes.read_text().splitlines() if json.loads(x)["meta"]["iteration"] <= step]
        episodes.write_text("".join(x + "\n" for x in kept))
    return step
