"""Label efficiency: per-step MC vs binary search for the first error, same k, same inputs.

Wrong trajectories are sampled from the shipped world policy on 8–12-step chains (DESIGN.md
§5: the log2(T)/T saving only shows on long chains). Every method labels the same
trajectories with the same k and is scored against the exact step checker. Two MC baselines:
full per-step MC (k rollouts from every prefix) and early-stop MC (stops at the first prefix
with no correct rollout, since hard labels after it are fixed), the honest one. Prints one
JSON line; ``ratio`` = binary / full MC tokens.

    python bench/label_efficiency.py [--trajectories 200 --k 8]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.label.methods import label_binary, label_mc, problem_of
from stepforge.label.rollouts import RolloutEstimator
from stepforge.sample import sample_trajectories
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import ArithConfig, generate_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trajectories", type=int, default=200)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    quiet_cpu(1)
    policy = make_policy("world")
    problems = generate_problems(args.trajectories, ArithConfig(min_steps=8, max_steps=12), seed=args.seed + 77)
    sampled = [t for b in sample_trajectories(policy, problems, ARITH, n=4, max_new_tokens=160, seed=args.seed)
               for t in b.trajectories]
    wrong = [t for t in sampled if not t.correct and t.first_error is not None][:args.trajectories]
    if len(wrong) < args.trajectories:
        raise SystemExit(f"only {len(wrong)} wrong trajectories sampled; ask for fewer")
    probs = [problem_of(t, ARITH, None) for t in wrong]

    def est(reuse: bool = False) -> RolloutEstimator:
        return RolloutEstimator(policy, ARITH, args.k, max_new_tokens=160, seed=args.seed, reuse=reuse)

    methods = {
        "mc": lambda: label_mc(wrong, probs, est()),
        "mc_early_stop": lambda: label_mc(wrong, probs, est(), early_stop=True),
        "binary": lambda: label_binary(wrong, probs, est()),
        "binary_min2": lambda: label_binary(wrong, probs, est(), min_correct=2),
        "omegaprm": lambda: label_binary(wrong, probs, est(reuse=True)),
    }
    res = {}
    for name, run in methods.items():
        start = time.perf_counter()
        labeled = run()
        res[name] = {
            "tokens": sum(t.cost.generated_tokens for t in labeled),
            "rollouts": sum(t.cost.rollouts for t in labeled),
            "first_error_acc": round(sum(a.first_error == b.first_error for a, b in zip(labeled, wrong, strict=True))
                                     / len(wrong), 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    mc, binary = res["mc"], res["binary"]
    print(json.dumps({
        "bench": "label_efficiency", "trajectories": len(wrong), "k": args.k,
        "mean_steps": round(sum(len(t.steps) for t in wrong) / len(wrong), 2),
        "mc_tokens": mc["tokens"], "binary_tokens": binary["tokens"],
        "ratio": round(binary["tokens"] / mc["tokens"], 3),
        "mc_first_error_acc": mc["first_error_acc"], "binary_first_error_acc": binary["first_error_acc"],
        "ratio_vs_early_stop_mc": round(binary["tokens"] / res["mc_early_stop"]["tokens"], 3),
        "omegaprm_ratio": round(res["omegaprm"]["tokens"] / mc["tokens"], 3),
        "methods": res,
    }))


if __name__ == "__main__":
    main()
