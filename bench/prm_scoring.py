"""PRM scoring: all steps in one forward pass vs one pass per step prefix (T passes).

256 eight-step world trajectories (7 operations + the answer), the world-recipe PRM
(policy backbone, prefix-min read-out with the token log-prob feature, head randomised so
scores vary). The baseline scores prefix p_t for t = 1..T and keeps its last step's score;
it is batched across trajectories as well, so the ratio is the one-pass saving alone.
Prints one JSON line.

    python bench/prm_scoring.py [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import quiet_cpu

from stepforge.prm.model import PRMConfig, ProcessRewardModel
from stepforge.sample import sample_trajectories
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.policy import resolve_policy_dir
from stepforge.worlds.arith.problems import ArithConfig, generate_problems


def per_step_prefix_scores(prm: ProcessRewardModel, trajectories, batch_size: int) -> list[list[float]]:
    prefixes = [t.model_copy(update={"steps": t.steps[:k + 1], "step_labels": []})
                for t in trajectories for k in range(len(t.steps))]
    flat = prm.score(prefixes, batch_size=batch_size)
    out, i = [], 0
    for t in trajectories:
        out.append([flat[i + k][-1] for k in range(len(t.steps))])
        i += len(t.steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trajectories", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = ap.parse_args()
    quiet_cpu(1)
    policy_dir = resolve_policy_dir()
    prm = ProcessRewardModel.from_backbone(policy_dir, PRMConfig(readout="prefix_min", token_logprob_feature=True),
                                           device=args.device, dtype="float32")
    torch.manual_seed(0)
    torch.nn.init.normal_(prm.head.weight, std=0.5)
    from stepforge.backends import make_policy

    policy = make_policy("world")
    problems = generate_problems(args.trajectories, ArithConfig(min_steps=7, max_steps=7), seed=5)
    trajs = [t for b in sample_trajectories(policy, problems, ARITH, n=1, temperature=0.0, max_new_tokens=80)
             for t in b.trajectories]
    trajs = [t if len(t.steps) == 8 else t.model_copy(update={"steps": (t.steps + ["Answer: 0"] * 8)[:8],
                                                             "step_labels": []}) for t in trajs]

    def best(fn):
        times, result = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return min(times), result

    t_one, one = best(lambda: prm.score(trajs, batch_size=args.batch_size))
    t_per, per = best(lambda: per_step_prefix_scores(prm, trajs, args.batch_size))
    diff = max(abs(a - b) for x, y in zip(one, per, strict=True) for a, b in zip(x, y, strict=True))
    print(json.dumps({"bench": "prm_scoring", "device": str(prm.device), "trajectories": len(trajs), "steps": 8,
                      "one_pass_traj_per_s": round(len(trajs) / t_one, 1),
                      "per_step_traj_per_s": round(len(trajs) / t_per, 1),
                      "ratio": round(t_per / t_one, 2), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
