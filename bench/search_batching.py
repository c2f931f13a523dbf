"""Beam search batched across problems vs one problem at a time, against best-of-N.

64 world problems (6–8 steps), N = 16, width 4, the shipped policy and PRM. Seconds per
generated token for: best-of-N, beam search batched (one backend and one PRM call per depth
for all problems), and beam search run problem by problem (search-and-learn's way). Prints
one JSON line; ``ratio`` = batched beam / best-of-N, ``unbatched_ratio`` = unbatched beam /
best-of-N.

    python bench/search_batching.py
"""

from __future__ import annotations

import argparse
import json
import time

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.prm.model import ProcessRewardModel
from stepforge.search.base import whole_sample_search
from stepforge.search.beam import beam_search
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.policy import SHIPPED_PRM
from stepforge.worlds.arith.problems import ArithConfig, generate_problems


def per_token(fn) -> tuple[float, float, float]:
    start = time.perf_counter()
    results = fn()
    seconds = time.perf_counter() - start
    tokens = sum(r.cost.generated_tokens for r in results)
    return seconds / tokens, sum(r.correct for r in results) / len(results), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args()
    quiet_cpu(1)
    policy = make_policy("world")
    prm = ProcessRewardModel.from_pretrained(SHIPPED_PRM)
    problems = generate_problems(args.problems, ArithConfig(min_steps=6, max_steps=8), seed=31)
    bon = per_token(lambda: whole_sample_search(problems, policy, prm, ARITH, args.n))
    beam = per_token(lambda: beam_search(problems, policy, prm, ARITH, args.n))
    one = per_token(lambda: [r for i, p in enumerate(problems)
                             for r in beam_search([p], policy, prm, ARITH, args.n, seed=i)])
    print(json.dumps({"bench": "search_batching", "problems": args.problems, "n": args.n,
                      "beam_s_per_token": round(beam[0], 8), "bon_s_per_token": round(bon[0], 8),
                      "ratio": round(beam[0] / bon[0], 3), "unbatched_ratio": round(one[0] / bon[0], 3),
                      "batching_speedup": round(one[0] / beam[0], 2),
                      "seconds": {"bon": round(bon[2], 1), "beam": round(beam[2], 1),
                                  "beam_unbatched": round(one[2], 1)},
                      "accuracy": {"bon": bon[1], "beam": beam[1], "beam_unbatched": one[1]}}))


if __name__ == "__main__":
    main()
