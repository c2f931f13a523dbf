"""Step-DPO on the built-in world: does it raise the policy's greedy accuracy on held-out
problems?

Pairs target the policy's own greedy mistakes: greedy solutions to fresh training problems
are labeled (``--labels truth``: the world's exact checker; ``binary``: first errors found by
rollouts alone, k = 8, as on a task without a step checker), and for each first wrong step a
rollout-verified alternative from the same prefix becomes "chosen" (train/pairs.py). TRL's
DPOTrainer then trains with the library defaults (constant lr 3e-6, β 0.5, batch 64, one
epoch). Greedy accuracy is measured before and after on held-out problems the pairs never
saw; "fixed" and "broken" count the held-out problems that changed either way.

    python bench/step_dpo.py [--train-problems 20000 --held-out 2000 --lr 3e-6]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.label.methods import label_binary, label_truth
from stepforge.label.rollouts import RolloutEstimator
from stepforge.sample import sample_trajectories
from stepforge.schema import Problem, Trajectory
from stepforge.train.dpo import train_dpo
from stepforge.train.pairs import step_dpo_pairs
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.problems import ArithConfig, generate_problems

WORLD = ArithConfig(min_steps=4, max_steps=8)


def greedy(policy, problems: list[Problem]) -> list[Trajectory]:
    return [t for b in sample_trajectories(policy, problems, ARITH, n=1, temperature=0.0, max_new_tokens=96,
                                           batch_problems=256) for t in b.trajectories]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-problems", type=int, default=20_000)
    ap.add_argument("--held-out", type=int, default=2_000)
    ap.add_argument("--lr", type=float, default=3e-6)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--labels", choices=("truth", "binary"), default="truth")
    args = ap.parse_args()
    quiet_cpu()
    t0 = time.perf_counter()
    base = make_policy("world")
    train = generate_problems(args.train_problems, WORLD, seed=777, prefix="dpo-train")
    held_out = generate_problems(args.held_out, WORLD, seed=99_001, prefix="heldout")

    solutions = greedy(base, train)
    if args.labels == "truth":
        labeled = label_truth(solutions, train, ARITH)
    else:
        labeled = label_binary(solutions, train, RolloutEstimator(base, ARITH, 8, max_new_tokens=96, seed=1))
    wrong = [(t, p) for t, p in zip(labeled, train, strict=True) if t.first_error is not None]
    truth = {t.id: t.first_error for t in label_truth([t for t, _ in wrong], [p for _, p in wrong], ARITH)}
    first_right = sum(truth[t.id] == t.first_error for t, _ in wrong)
    pairs = step_dpo_pairs([t for t, _ in wrong], [p for _, p in wrong], base, ARITH, candidates=8, k=4)
    source = {t.id: (t, p) for t, p in wrong}  # pair.meta["trajectory"] names its wrong trajectory
    chosen_right = 0
    for x in pairs:
        t, p = source[x.meta["trajectory"]]
        chosen_right += ARITH.first_error(p, [*t.steps[:x.step_index], x.chosen.strip()]) is None
    t_pairs = time.perf_counter() - t0

    before = greedy(base, held_out)
    model = copy.deepcopy(base.model)
    train_dpo(model, base.tokenizer, pairs, beta=args.beta, lr=args.lr, epochs=args.epochs,
              batch_size=args.batch_size)
    after = greedy(TransformersPolicy(model, base.tokenizer), held_out)
    ok_before = [bool(t.correct) for t in before]
    ok_after = [bool(t.correct) for t in after]
    n = len(held_out)
    print(json.dumps({
        "bench": "step_dpo", "labels": args.labels, "train_problems": len(train), "greedy_wrong": len(wrong),
        "first_error_right": round(first_right / max(1, len(wrong)), 4), "pairs": len(pairs),
        "chosen_step_right": round(chosen_right / max(1, len(pairs)), 4),
        "lr": args.lr, "beta": args.beta, "epochs": args.epochs, "batch_size": args.batch_size,
        "held_out": n, "greedy_acc_before": round(sum(ok_before) / n, 4),
        "greedy_acc_after": round(sum(ok_after) / n, 4),
        "fixed": sum(a and not b for a, b in zip(ok_after, ok_before, strict=True)),
        "broken": sum(b and not a for a, b in zip(ok_after, ok_before, strict=True)),
        "seconds": {"pairs": round(t_pairs, 1), "total": round(time.perf_counter() - t0, 1)},
    }))


if __name__ == "__main__":
    main()
