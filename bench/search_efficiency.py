"""Does PRM beam search at budget N match majority vote at 4N? Same generated-token accounting.

300 world problems of 6–8 steps, the shipped policy and PRM. Prints one JSON line with both
accuracies and the generated tokens per problem each method used.

    python bench/search_efficiency.py [--problems 300 --n 16]
"""

from __future__ import annotations

import argparse
import json

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.prm.model import ProcessRewardModel
from stepforge.search.base import whole_sample_search
from stepforge.search.beam import beam_search
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.policy import SHIPPED_PRM
from stepforge.worlds.arith.problems import ArithConfig, generate_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args()
    quiet_cpu(1)
    policy = make_policy("world")
    prm = ProcessRewardModel.from_pretrained(SHIPPED_PRM)
    problems = generate_problems(args.problems, ArithConfig(min_steps=6, max_steps=8), seed=32)
    res = {}
    for name, fn in {
        "beam_N": lambda: beam_search(problems, policy, prm, ARITH, args.n),
        "majority_N": lambda: whole_sample_search(problems, policy, None, ARITH, args.n, rule="majority"),
        "majority_4N": lambda: whole_sample_search(problems, policy, None, ARITH, 4 * args.n, rule="majority"),
    }.items():
        results = fn()
        res[name] = {"acc": sum(r.correct for r in results) / len(results),
                     "tokens_per_problem": sum(r.cost.generated_tokens for r in results) / len(results)}
    print(json.dumps({"bench": "search_efficiency", "problems": args.problems, "N": args.n,
                      "beam_acc_N": res["beam_N"]["acc"], "majority_acc_4N": res["majority_4N"]["acc"],
                      "majority_acc_N": res["majority_N"]["acc"], "detail": res}))


if __name__ == "__main__":
    main()
