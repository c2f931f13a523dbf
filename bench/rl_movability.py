"""Can outcome-only GRPO with full-parameter updates raise a world policy's held-out accuracy?

PURE's comparisons mean something only on a policy that RL can move (issue #15: the shipped
0.2M arith policy lost accuracy under every full-parameter learning rate tried). This runs
outcome-only GRPO (verifiable reward, no PRM) for each policy × learning rate, in parallel
processes, and prints one JSON line with the held-out sampled accuracy curves (500 problems of
6–8 steps × 4 samples at temperature 1, as bench/credit_assignment.py).

    python bench/rl_movability.py --policies DIR[,DIR...] --lrs 1e-5,3e-5 [--steps 40 --device cuda --jobs 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

from credit_assignment import run_variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="arith-padded")
    ap.add_argument("--policies", default="", help="comma-separated policy dirs ('' = the world's)")
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--held-out", type=int, default=500)
    ap.add_argument("--trainable", default="", help="'' = all parameters")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also append each run's result here as it finishes (JSONL)")
    args = ap.parse_args()
    runs = []
    for policy, lr in itertools.product(args.policies.split(",") if args.policies else [None],
                                        [float(x) for x in args.lrs.split(",")]):
        runs.append(argparse.Namespace(world=args.world, policy=policy, prm=None, held_out=args.held_out,
                                       trainable=args.trainable, lr=lr, eval_every=args.eval_every,
                                       steps=args.steps, device=args.device, seed=0))
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_variant, "outcome", r): r for r in runs}
        for done in as_completed(futures):
            r, res = futures[done], done.result()
            rows.append({"policy": r.policy, "lr": r.lr, "curve": res["curve"], "greedy": res["greedy"],
                         "kl": res["last"]["kl"], "alarms": res["alarms"], "first": res["first"], "last": res["last"]})
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    rows.sort(key=lambda row: (str(row["policy"]), row["lr"]))
    print(json.dumps({"bench": "rl_movability", "world": args.world, "steps": args.steps,
                      "trainable": args.trainable or "all", "device": args.device, "runs": rows}))


if __name__ == "__main__":
    main()
