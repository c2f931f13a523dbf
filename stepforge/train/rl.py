"""RL with step-level credit on the built-in world: GRPO-style policy gradient with PPO
clipping and a KL penalty to the initial policy, token advantages from :mod:`credit`.

Per step: sample ``samples_per_problem`` solutions for each of ``problems_per_step`` fresh
problems, reward them (verifier outcome R ∈ {0, 1}; PRM step rewards r_t = 2·p_t − 1, as
PURE's P(good) − P(bad)), turn rewards into per-token advantages with the chosen credit
form, and take ``ppo_epochs`` clipped updates:

    L = −mean_tokens min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β_KL · mean_tokens KL_k3(π‖π_ref)

Baselines: ``grpo`` (group mean and std) or ``rloo`` (leave-one-out mean). Credit forms:
``outcome`` (the baselined R on every token), ``sum`` (γ-discounted
returns of r), ``min`` (PURE strict min-form), ``min_vr`` / ``sum_vr`` (those plus the
verifiable reward R − 1 on the last step, in a ``vr_share`` of the groups: PURE's mix is
min_vr at 0.1; PRIME's is sum_vr at 1.0 with an online implicit PRM and RLOO). An implicit
PRM's step rewards are its own r_t = β·log π_φ/π_ref over the step's tokens (PRIME), not
2p − 1 of its prefix values. Step-separator tokens
get no advantage (PURE #20). ``trainable`` restricts updates to some parameters (the world
policy improves only when RL trains its RMSNorm gains: see bench/credit_assignment.py);
``temperature`` samples from and trains softmax(logits / T), as verl does; with
``prm_online_steps`` an implicit PRM is refit to each batch's verifier outcomes before it
scores the batch (PRIME). Metrics and hacking monitors go to ``metrics.jsonl`` every step; a
checkpoint (model, optimizer, step) is written every ``save_every`` steps and a re-run
resumes from it.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stepforge.alignment import generated_offsets, locate_steps, token_steps
from stepforge.backends.base import Completion
from stepforge.backends.causal_lm import next_token_logprobs, pad_id, pad_right
from stepforge.backends.device import model_device
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.prm.implicit import prefix_values
from stepforge.sample import sample_trajectories
from stepforge.schema import Trajectory
from stepforge.search.base import scorable
from stepforge.seeds import derive_seed
from stepforge.tasks import DEFAULT_WORLD, Task, get_world
from stepforge.train.credit import (
    add_verifiable_reward,
    group_normalize,
    min_form_returns,
    rloo_advantages,
    rloo_step_advantages,
    step_values_to_tokens,
    sum_form_returns,
)

CREDITS = ("outcome", "sum", "min", "min_vr", "sum_vr")


@dataclass
class RLConfig:
    credit: str = "min"
    steps: int = 60
    problems_per_step: int = 16
    samples_per_problem: int = 8
    lr: float = 1e-2  # suits trainable=("norm",); full-parameter runs need ~1e-6
    clip: float = 0.2
    kl_coef: float = 0.05
    ppo_epochs: int = 2
    vr_share: float = 0.1  # min_vr / sum_vr: share of groups (problems) whose last step gets R − 1
    gamma: float = 1.0  # sum-form discount
    # train only parameters whose names contain one of these (empty: all); the others are left
    # with requires_grad=False
    trainable: tuple[str, ...] = ("norm",)  # the world policy improved only this way (README)
    baseline: str = "grpo"  # grpo: (x − group mean) / group std; rloo: x − mean of the other samples
    prm_online_steps: int = 0  # PRIME: update an implicit PRM on each batch's outcomes before it scores
    max_new_tokens: int = 96
    temperature: float = 1.0  # sampling temperature; the ratio and KL use the same tempered policy
    save_every: int = 10
    seed: int = 0
    world: str = DEFAULT_WORLD  # where training problems come from (a registered World)
    min_steps: int = 6
    max_steps: int = 8

    def __post_init__(self) -> None:
        if self.credit not in CREDITS:
            raise ValueError(f"unknown credit form {self.credit!r}; choose from {', '.join(CREDITS)}")
        if self.baseline not in ("grpo", "rloo"):
            raise ValueError(f"unknown baseline {self.baseline!r}; choose grpo or rloo")
        if not 0.0 <= self.vr_share <= 1.0:
            raise ValueError(f"vr_share is a share of groups in [0, 1], got {self.vr_share}")
        if self.temperature <= 0:
            raise ValueError(f"RL samples from the policy: temperature must be > 0, got {self.temperature}")


def hacking_monitors(trajectories: Sequence[Trajectory], prm_scores: Sequence[Sequence[float]] | None,
                     tokens: Sequence[int], is_padding: Callable[[str], bool] | None = None) -> dict[str, float]:
    """Signals of reward hacking, per batch: length and step count, share of empty outputs,
    of outputs without an answer, of outputs that never use the step separator (one line), the
    gap between the PRM's mean final score and the verifier's accuracy, and (``is_padding``:
    the world's test for a step that adds nothing) the share of padding steps."""
    n = max(1, len(trajectories))
    out = {
        "mean_tokens": sum(tokens) / n,
        "mean_steps": sum(len(t.steps) for t in trajectories) / n,
        "empty_share": sum(not t.steps for t in trajectories) / n,
        "no_answer_share": sum(t.final_answer is None for t in trajectories) / n,
        "no_separator_share": sum(len(t.steps) <= 1 for t in trajectories) / n,
        "accuracy": sum(bool(t.correct) for t in trajectories) / n,
    }
    if is_padding is not None:
        steps = [s for t in trajectories for s in t.steps]
        out["padding_share"] = sum(map(is_padding, steps)) / max(1, len(steps))
    if prm_scores is not None:
        finals = [s[-1] if s else 0.0 for s in prm_scores]
        out["prm_final_mean"] = sum(finals) / n
        out["prm_verifier_gap"] = out["prm_final_mean"] - out["accuracy"]
    return out


def drift_warnings(first: dict[str, float], now: dict[str, float]) -> list[str]:
    """Alerts when the monitors move far from where training started."""
    warnings = []
    for key, unit in (("mean_tokens", "tokens"), ("mean_steps", "steps")):
        if first.get(key) and abs(now[key] / first[key] - 1) > 0.3:
            warnings.append(f"{key} drifted {first[key]:.1f} -> {now[key]:.1f} {unit}")
    for key in ("empty_share", "no_answer_share", "no_separator_share", "padding_share"):
        if key in now and now[key] - first.get(key, 0.0) > 0.1:
            warnings.append(f"{key} rose {first[key]:.2f} -> {now[key]:.2f}")
    if "accuracy" in first and first["accuracy"] - now["accuracy"] > 0.25:  # collapse, whatever the reward says
        warnings.append(f"accuracy fell {first['accuracy']:.2f} -> {now['accuracy']:.2f}")
    if "prm_verifier_gap" in now and now["prm_verifier_gap"] - first.get("prm_verifier_gap", 0.0) > 0.2:
        warnings.append(f"PRM score outruns the verifier: gap {now['prm_verifier_gap']:+.2f}")
    return warnings


def _token_rows(tokenizer, prompt_ids: list[int], completion: Completion, steps: Sequence[str]
                ) -> tuple[list[int], list[int]]:
    """The ids the policy saw and sampled (prompt + generated ids, EOS only if it was generated)
    and, per generated token, its step index (−1: separators), by character offsets of the
    decoded tokens. A final EOS belongs to the last step: stopping is that step's decision."""
    gen = completion.token_ids
    if gen is None:  # a backend that returns no ids: the closest we can do is re-encode its text
        gen = tokenizer(completion.text, add_special_tokens=False).input_ids
    text = tokenizer.decode(gen, skip_special_tokens=True)
    step_of = token_steps(generated_offsets(tokenizer, gen), locate_steps(text, steps))
    if gen and steps and gen[-1] == tokenizer.eos_token_id:
        step_of[-1] = len(steps) - 1
    return [*prompt_ids, *gen], step_of


def _advantages(batch: list[Trajectory], groups: list[int], step_rewards: list[torch.Tensor] | None, cfg: RLConfig,
                rng: random.Random) -> list[torch.Tensor]:
    """Per-step advantages for each trajectory (outcome: one value per trajectory);
    ``step_rewards``: r_t per trajectory (an empty trajectory: one step of reward −1)."""
    outcome = torch.tensor([float(bool(t.correct)) for t in batch])
    g = torch.tensor(groups)
    if cfg.credit == "outcome":
        a = rloo_advantages(outcome, g) if cfg.baseline == "rloo" else group_normalize(outcome, g)
        return [torch.full((max(1, len(t.steps)),), float(a[i])) for i, t in enumerate(batch)]
    vr_groups = {gid for gid in set(groups) if rng.random() < cfg.vr_share}
    returns = []
    for i, r in enumerate(step_rewards):
        if cfg.credit.endswith("_vr") and groups[i] in vr_groups:
            r = add_verifiable_reward(r, float(outcome[i]) - 1.0)
        returns.append(sum_form_returns(r, cfg.gamma) if cfg.credit.startswith("sum") else min_form_returns(r))
    if cfg.baseline == "rloo":
        return rloo_step_advantages(returns, groups)
    # normalise every step's return within its group of samples (GRPO over steps)
    flat = torch.cat(returns)
    owner = torch.cat([torch.full((len(r),), groups[i]) for i, r in enumerate(returns)])
    norm = group_normalize(flat, owner)
    out, k = [], 0
    for r in returns:
        out.append(norm[k:k + len(r)])
        k += len(r)
    return out


def _step_rewards(scorer, trajectories: list[Trajectory]) -> tuple[list[list[float]], list[torch.Tensor]]:
    """The PRM's scores p_t (for the monitors) and step rewards r_t: 2p_t − 1 (P(good) −
    P(bad), PURE) for an explicit PRM, β·log-ratio per step for an implicit one (PRIME). An
    empty trajectory is scored as one step "?" and rewarded −1."""
    scored = scorable(trajectories)
    if hasattr(scorer, "step_rewards"):
        with torch.no_grad():
            implicit = [r.detach().float().cpu() for r in scorer.step_rewards(scored)]
        scores = [prefix_values(r) for r in implicit]  # what scorer.score would return, without a second pass
        rewards = [r if t.steps else torch.tensor([-1.0]) for r, t in zip(implicit, trajectories, strict=True)]
    else:
        scores = scorer.score(scored)
        rewards = [torch.tensor([2 * p - 1 for p in s]) if t.steps else torch.tensor([-1.0])
                   for s, t in zip(scores, trajectories, strict=True)]
    return scores, rewards


def _trainable_parameters(model, patterns: Sequence[str]) -> list[torch.nn.Parameter]:
    """The parameters RL updates; the others are frozen."""
    if not patterns:
        return list(model.parameters())
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(s in name for s in patterns))
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        raise ValueError(f"no parameter name contains any of {list(patterns)}")
    return chosen


def _logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Token log-probs under the policy actually sampled from: softmax(logits / T)."""
    return next_token_logprobs(model(input_ids=ids, attention_mask=mask).logits / temperature, ids)


def train_rl(model, tokenizer, out_dir: str | Path, cfg: RLConfig, scorer=None, task: Task | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) RL; returns the metrics of every step, including resumed ones.

    ``model`` must be the initial policy: it is copied as the frozen KL reference before the
    checkpoint (if any) is loaded into it."""
    world = get_world(cfg.world)
    task = task or world.task
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.credit != "outcome" and scorer is None:
        raise ValueError(f"credit {cfg.credit!r} needs a PRM (scorer)")
    online = cfg.prm_online_steps > 0 and cfg.credit != "outcome"
    if online and not hasattr(scorer, "train_on_outcomes"):
        raise ValueError("online PRM updates need an implicit PRM (stepforge.prm.implicit.ImplicitPRM)")
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(_trainable_parameters(model, cfg.trainable), lr=cfg.lr)
    start = resume_checkpoint(out, model, optimizer=opt, prm=scorer.model if online else None)
    metrics_path = out / "metrics.jsonl"
    history = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    history = history[:start]
    policy = TransformersPolicy(model, tokenizer)
    pad = pad_id(tokenizer)
    for step in range(start, cfg.steps):
        rng = random.Random(cfg.seed * 1_000_003 + step)
        problems = world.generate(cfg.problems_per_step, seed=cfg.seed * 100_000 + step, prefix="rl",
                                  min_steps=cfg.min_steps, max_steps=cfg.max_steps)
        model.eval()
        batch = next(sample_trajectories(policy, problems, task, n=cfg.samples_per_problem,
                                         seed=derive_seed(cfg.seed, "rl-sample", step),
                                         temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                         batch_problems=len(problems)))
        trajs = batch.trajectories
        groups = [i // cfg.samples_per_problem for i in range(len(trajs))]
        if online:  # PRIME's order: fit the implicit PRM to these outcomes, then score with it
            scorer.train_on_outcomes([t for t in trajs if t.steps], steps=cfg.prm_online_steps,
                                     batch_size=min(32, len(trajs)), seed=cfg.seed * 1_000_003 + step)
        scores, rewards = _step_rewards(scorer, trajs) if scorer is not None else (None, None)
        adv_steps = _advantages(trajs, groups, rewards, cfg, rng)
        prompt_ids = [tokenizer(task.build_prompt(p)).input_ids for p in problems]
        rows = []
        for i, (t, completion, adv) in enumerate(zip(trajs, batch.completions, adv_steps, strict=True)):
            first = len(prompt_ids[i // cfg.samples_per_problem])
            ids, step_of = _token_rows(tokenizer, prompt_ids[i // cfg.samples_per_problem], completion, t.steps)
            if cfg.credit == "outcome":  # outcome credit: every token, separators too
                tok_adv, used = [float(adv[0])] * len(step_of), [True] * len(step_of)
            else:  # step credit: each token its step's advantage; separators none (PURE #20)
                tok_adv = step_values_to_tokens(adv, step_of).tolist()
                used = [k >= 0 for k in step_of]
            rows.append((ids, first, tok_adv, used))
        ids, attn = pad_right([r[0] for r in rows], pad)
        width = ids.shape[1]
        adv = torch.zeros(len(rows), width - 1)
        act = torch.zeros(len(rows), width - 1, dtype=torch.bool)
        for i, (_ids, first, tok_adv, used) in enumerate(rows):
            n = len(tok_adv)
            adv[i, first - 1:first - 1 + n] = torch.tensor(tok_adv)
            act[i, first - 1:first - 1 + n] = torch.tensor(used)
        device = model_device(model)  # inputs follow the model (CPU or GPU)
        ids, attn, adv, act = ids.to(device), attn.to(device), adv.to(device), act.to(device)
        with torch.no_grad():
            old = _logprobs(model, ids, attn, cfg.temperature)
            ref = _logprobs(reference, ids, attn, cfg.temperature)
        model.train()
        for _ in range(cfg.ppo_epochs):
            new = _logprobs(model, ids, attn, cfg.temperature)
            ratio = torch.exp(new - old)
            pg = -torch.min(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            kl = torch.exp(ref - new) - (ref - new) - 1  # k3 estimator of KL(π‖π_ref)
            loss = ((pg + cfg.kl_coef * kl) * act).sum() / act.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        row = {"step": step + 1, "loss": round(loss.item(), 5),
               "kl": round(float((kl.detach() * act).sum() / act.sum().clamp(min=1)), 5),
               **{k: round(v, 5) for k, v in hacking_monitors(trajs, scores, [t.cost.generated_tokens for t in trajs],
                                                              world.padding_step).items()}}
        row["warnings"] = drift_warnings(history[0], row) if history else []
        history.append(row)
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if on_step:
            on_step(row)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out, step + 1, cfg, model=model, optimizer=opt, prm=scorer.model if online else None)
    return history


def save_checkpoint(out: Path, step: int, cfg: Any, **state: Any) -> None:
    """``checkpoint.pt`` in ``out``: the state dict of every object given (None: skipped), the
    step and the config, written atomically (a kill never leaves half a checkpoint)."""
    payload = {k: v.state_dict() for k, v in state.items() if v is not None}
    payload.update(step=step, config=json.loads(json.dumps(asdict(cfg), default=str)))
    tmp = out / "checkpoint.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, out / "checkpoint.pt")


def resume_checkpoint(out: Path, model, **state: Any) -> int:
    """Load ``out``'s last checkpoint (if any) into ``model`` and every object of ``state`` that
    is not None, and drop the lines of ``metrics.jsonl`` after its step (those steps are
    redone); returns the step (0 without a checkpoint)."""
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False, map_location=model_device(model))
        for key, obj in {"model": model, **state}.items():
            if obj is not None:
                if key not in saved:
                    raise ValueError(f"{ckpt}: has no {key!r}; resume with the settings that wrote it")
                obj.load_state_dict(saved[key])
        step = int(saved["step"])
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        metrics.write_text("".join(x + "\n" for x in metrics.read_text().splitlines()[:step]))
    return step
