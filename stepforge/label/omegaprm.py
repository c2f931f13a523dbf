"""OmegaPRM's tree search beyond the input trajectories (Luo et al. 2024, "Improve Mathematical
Reasoning in Language Models by Automated Process Supervision").

Every rollout kept by a reusing :class:`RolloutEstimator` is a candidate (state s, rollout r).
Candidates whose rollout ended wrong from a state with 0 < MC(s) < 1 are scored

    Q(s, r) = α^(1 − MC(s)) · β^(len(r) / L)        U(s) = c_puct · √(Σ_s' N(s')) / (1 + N(s))

and the best Q + U ones are searched: binary search for the first error of s + r, inside r
(s is known good). Each search adds rollouts (new candidates) and one labeled trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from stepforge.label.methods import _labeled, binary_search
from stepforge.label.rollouts import Rollout, RolloutEstimator
from stepforge.schema import Trajectory, truth_labels


@dataclass(frozen=True)
class OmegaConfig:
    searches: int = 0  # (state, rollout) searches per batch beyond the input trajectories
    parallel: int = 16  # searches run in lockstep per selection round
    alpha: float = 0.5
    beta: float = 0.9
    length_scale: float = 500.0  # L, in generated tokens
    c_puct: float = 0.125
    balance: bool = False  # keep an extra trajectory only if it does not widen |#good − #bad| steps


def qu_score(mc: float, rollout_tokens: int, state_visits: int, total_visits: int, cfg: OmegaConfig) -> float:
    """Q + U of one (state, rollout) candidate: prefers likely-but-not-surely-good states
    (high MC), short wrong rollouts, and states searched less often."""
    q = cfg.alpha ** (1 - mc) * cfg.beta ** (rollout_tokens / cfg.length_scale)
    u = cfg.c_puct * math.sqrt(total_visits) / (1 + state_visits)
    return q + u


def select_candidates(est: RolloutEstimator, visits: dict, taken: set[int], cfg: OmegaConfig, limit: int
                      ) -> list[Rollout]:
    total = sum(visits.values())
    scored = []
    for idx, r in enumerate(est.rollouts):
        if r.correct or idx in taken or not r.steps:
            continue
        stats = est.tree.get((r.problem.id, r.state))
        if r.state == () or stats is None or stats.total == 0:
            continue  # the question itself is not a state we label
        mc = stats.correct / stats.total
        if not 0 < mc < 1:
            continue
        key = (r.problem.id, r.state)
        scored.append((qu_score(mc, r.length, visits.get(key, 0), total, cfg), idx, r))
    scored.sort(key=lambda x: (-x[0], x[1]))
    chosen = []
    for _, idx, r in scored[:limit]:
        taken.add(idx)
        key = (r.problem.id, r.state)
        visits[key] = visits.get(key, 0) + 1
        chosen.append(r)
    return chosen


def search_tree(est: RolloutEstimator, cfg: OmegaConfig, id_prefix: str, existing: Sequence[Trajectory] = ()
                ) -> list[Trajectory]:
    """Run ``cfg.searches`` Q+U-selected searches; returns the new labeled trajectories."""
    if not est.reuse:
        raise ValueError("OmegaPRM tree search needs a RolloutEstimator with reuse=True")
    visits: dict = {}
    taken: set[int] = set()
    found: list[Trajectory] = []
    while len(found) < cfg.searches:
        chosen = select_candidates(est, visits, taken, cfg, min(cfg.parallel, cfg.searches - len(found)))
        if not chosen:
            break
        fulls = [(*r.state, *r.steps) for r in chosen]
        results = binary_search(est, [(r.problem, full, len(r.state) + 1, len(full))
                                      for r, full in zip(chosen, fulls, strict=True)])
        for r, full, (first, spent, probes) in zip(chosen, fulls, results, strict=True):
            answer = est.task.answer_of(full)
            t = Trajectory(id=f"{r.problem.id}/{id_prefix}-{len(found)}", problem_id=r.problem.id,
                           question=r.problem.question, steps=list(full), final_answer=answer, correct=False,
                           meta={"omegaprm_state_steps": len(r.state)})
            found.append(_labeled(t, truth_labels(len(full), first), first, "omegaprm", spent,
                                  {"mc_probes": {str(m): v for m, v in sorted(probes.items())}, "mc_k": est.k}))
    return balance(existing, found) if cfg.balance else found


def balance(existing: Sequence[Trajectory], extra: Sequence[Trajectory]) -> list[Trajectory]:
    """Keep extra trajectories, in selection order, only while they do not widen the gap
    between good (label ≥ 0.5) and bad step labels over ``existing`` + kept ones."""
    def counts(ts: Sequence[Trajectory]) -> tuple[int, int]:
        labels = [v for t in ts for v in t.step_labels if v is not None]
        good = sum(v >= 0.5 for v in labels)
        return good, len(labels) - good

    good, bad = counts(existing)
    kept = []
    for t in extra:
        g, b = counts([t])
        if abs((good + g) - (bad + b)) <= abs(good - bad):
            kept.append(t)
            good, bad = good + g, bad + b
    return kept
