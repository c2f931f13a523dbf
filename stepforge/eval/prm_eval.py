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
from stepforge.tasks import get_task


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


def evaluate_prm(prm_dir: str | Path, data: str | Path, task_name: str = "arith", dev_share: float = 0.3,
                 policy: str | None = None, seed: int = 0) -> dict[str, Any]:
    task = get_task(task_name)
    trajectories = [t for t in read_records(data, Trajectory) if t.steps]
    if task.truth_is_exact:
        problems = [problem_of(t, task, None) for t in trajectories]
        truth = label_truth(trajectories, problems, task)
    else:
        truth = trajectories
        if any(t.label_source not in ("truth", "human") for t in truth):
            raise ValueError(f"{data}: task {task_name!r} has no exact checker; give trajectories labeled "
                             "'truth' or 'human'")
        problems = [problem_of(t, task, None) for t in trajectories]
    gold = [t.first_error for t in truth]
    labels = [t.step_labels for t in truth]
    dev, test = split_by_problem(trajectories, dev_share, seed)

    prm = ProcessRewardModel.from_pretrained(prm_dir)
    scores = prm.score(trajectories)
    report: dict[str, Any] = {"test_trajectories": len(test), "dev_trajectories": len(dev), "first_error": {}}
    report["first_error"]["prm"] = _calibrated("prm", scores, gold, labels, dev, test)
    # trivial baselines: both score F1 = 0 by construction (ProcessBench's harmonic mean)
    report["first_error"]["always correct"] = first_error_f1([None] * len(test), [gold[i] for i in test])
    policy_model = _policy_for_baselines(task_name, policy)
    if policy_model is not None:
        model, tok = policy_model
        lp = [x.tolist() for x in step_logprob_sums(model, tok, trajectories, PRMConfig())]
        argmin = [min(range(len(r)), key=r.__getitem__) for r in lp]
        report["first_error"]["lowest policy log-prob step"] = first_error_f1([argmin[i] for i in test],
                                                                              [gold[i] for i in test])
        running = [[math.exp(min(r[: k + 1])) for k in range(len(r))] for r in lp]
        report["first_error"]["policy log-prob, calibrated θ"] = _calibrated("lp", running, gold, labels, dev, test)
    test_trajs = [trajectories[i] for i in test]
    test_problems = {problems[i].id: problems[i] for i in test}
    report["best_of_n"] = best_of_n_table(list(test_problems.values()), test_trajs, [scores[i] for i in test],
                                          task.is_correct, seed=seed)
    report["bon_problems"] = len(test_problems)
    report["n"] = round(len(test_trajs) / max(1, len(test_problems)), 2)
    return report


def _policy_for_baselines(task_name: str, policy: str | None):
    if policy is None and task_name != "arith":
        return None
    if task_name == "arith" and policy is None:
        from stepforge.worlds.arith.policy import load_policy

        return load_policy()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(policy).eval(), AutoTokenizer.from_pretrained(policy)
