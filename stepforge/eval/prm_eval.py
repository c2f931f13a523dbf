"""``stepforge eval-prm``: a PRM against ground truth and baselines on held-out problems."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from stepforge.eval.prm_metrics import (
    best_of_n_table,
    calibrate_threshold,
    first_error_f1,
    predict_first_error,
    step_auc,
)
from stepforge.label.methods import label_truth, problem_of
from stepforge.prm.implicit import step_logprob_sums
from stepforge.prm.model import PRMConfig, ProcessRewardModel
from stepforge.schema import Trajectory, read_records
from stepforge.tasks import get_task, world_of


def split_by_problem(trajectories: list[Trajectory], dev_share: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of dev and test trajectories; a problem's samples stay on one side."""
    problems = sorted({t.problem_id for t in trajectories})
    random.Random(seed).shuffle(problems)
    dev = set(problems[: max(1, int(len(problems) * dev_share))])
    dev_idx = [i for i, t in enumerate(trajectories) if t.problem_id in dev]
    test_idx = [i for i, t in enumerate(trajectories) if t.problem_id not in dev]
    if not test_idx:
        raise ValueError("no test problems left after the dev split; lower --dev-share or add problems")
    return dev_idx, test_idx


def _calibrated(name: str, scores: list[list[float]], gold: list[int | None], labels, dev: list[int],
                test: list[int]) -> dict[str, Any]:
    theta, _ = calibrate_threshold([scores[i] for i in dev], [gold[i] for i in dev])
    r = first_error_f1([predict_first_error(scores[i], theta) for i in test], [gold[i] for i in test])
    return {**r, "threshold": theta, "auc": step_auc([scores[i] for i in test], [labels[i] for i in test])}


GOLD_SOURCES = ("truth", "human")


def gold_of(trajectories: list[Trajectory], task, where: str) -> list[Trajectory]:
    """Ground truth for each trajectory: its own labels when they are 'truth' or 'human'
    (ProcessBench, PRM800K, checker-labeled files: no problems file needed), else the task's
    exact checker."""
    if all(t.label_source in GOLD_SOURCES for t in trajectories):
        return trajectories
    if task.truth_is_exact:
        return label_truth(trajectories, [problem_of(t, task, None) for t in trajectories], task)
    odd = next(t for t in trajectories if t.label_source not in GOLD_SOURCES)
    raise ValueError(f"{where}: trajectory {odd.id!r} is labeled {odd.label_source!r}, not ground truth "
                     f"('truth' or 'human'), and task {task.name!r} has no exact checker to supply it")


def scores_from_file(path: str | Path, trajectories: list[Trajectory]) -> list[list[float]]:
    """Step scores by trajectory id from a scored file (``meta.prm_scores``, as written by
    ``stepforge score``) or any labeled file (its ``step_labels``, e.g. MC labels)."""
    by_id = {t.id: t for t in read_records(path, Trajectory, unique_ids=True)}
    out = []
    for t in trajectories:
        s = by_id.get(t.id)
        if s is None:
            raise ValueError(f"{path}: no scores for trajectory {t.id!r}")
        values = s.meta.get("prm_scores", s.step_labels)
        if not isinstance(values, list) or len(values) != len(t.steps) or any(v is None for v in values):
            raise ValueError(f"{path}: trajectory {t.id!r} needs one score per step ({len(t.steps)}), got {values!r}")
        out.append([float(v) for v in values])
    return out


def evaluate_prm(prm_dir: str | Path | None, data: str | Path, task_name: str = "arith", dev_share: float = 0.3,
                 policy: str | None = None, seed: int = 0, *, scorer=None, scores_file: str | Path | None = None,
                 baselines: bool = True) -> dict[str, Any]:
    """First-error F1 (θ calibrated on a dev split of problems), step AUC and best-of-N of a
    PRM dir, any ``scorer`` (e.g. an adapter) or a scores file against ground truth."""
    task = get_task(task_name)
    trajectories = [t for t in read_records(data, Trajectory, unique_ids=True) if t.steps]
    if not trajectories:
        raise ValueError(f"{data}: no trajectories with steps")
    truth = gold_of(trajectories, task, str(data))
    gold = [t.first_error for t in truth]
    labels = [t.step_labels for t in truth]
    dev, test = split_by_problem(trajectories, dev_share, seed)

    if scores_file is not None:
        scores = scores_from_file(scores_file, trajectories)
    else:
        scorer = scorer or ProcessRewardModel.from_pretrained(prm_dir)
        scores = scorer.score(trajectories)
    report: dict[str, Any] = {"test_trajectories": len(test), "dev_trajectories": len(dev), "first_error": {}}
    report["first_error"]["prm"] = _calibrated("prm", scores, gold, labels, dev, test)
    # trivial baselines: both score F1 = 0 by construction (ProcessBench's harmonic mean)
    report["first_error"]["always correct"] = first_error_f1([None] * len(test), [gold[i] for i in test])
    policy_model = _policy_for_baselines(task_name, policy) if baselines else None
    if policy_model is not None:
        model, tok = policy_model
        lp = [x.tolist() for x in step_logprob_sums(model, tok, trajectories, PRMConfig())]
        argmin = [min(range(len(r)), key=r.__getitem__) for r in lp]
        report["first_error"]["lowest policy log-prob step"] = first_error_f1([argmin[i] for i in test],
                                                                              [gold[i] for i in test])
        running = [[math.exp(min(r[: k + 1])) for k in range(len(r))] for r in lp]
        report["first_error"]["policy log-prob, calibrated θ"] = _calibrated("lp", running, gold, labels, dev, test)
    test_trajs = [trajectories[i] for i in test]
    per_problem = len(test_trajs) / max(1, len({t.problem_id for t in test_trajs}))
    report["best_of_n"], report["bon_problems"], report["n"] = {}, 0, round(per_problem, 2)
    if per_problem > 1 and task.recover_problem is not None:  # several samples with checkable answers
        problems = {t.problem_id: problem_of(t, task, None) for t in test_trajs}
        report["best_of_n"] = best_of_n_table(list(problems.values()), test_trajs, [scores[i] for i in test],
                                              task.is_correct, seed=seed)
        report["bon_problems"] = len(problems)
    return report


def _policy_for_baselines(task_name: str, policy: str | None):
    """The policy whose log-probs make the baselines: ``policy`` (a dir), else the task's
    world policy, else none."""
    if policy is not None:
        from stepforge.backends.device import load_causal_lm

        return load_causal_lm(policy)
    world = world_of(get_task(task_name))
    return world.load_policy(None) if world is not None else None
