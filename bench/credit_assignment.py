"""The PURE claim in the built-in world: outcome-only GRPO vs sum-form PRM credit vs min-form
vs min-form + 10% verifiable rewards. Same policy, same learned PRM, same seed, same steps.

Held-out accuracy (500 problems of 6–8 steps, 4 samples each at temperature 1; greedy too)
is measured before training and every ``--eval-every`` steps; the hacking monitors of the
last step are reported per variant. Prints one JSON line and writes a plot of accuracy vs RL
step.

By default RL trains only the policy's RMSNorm gains (``--trainable norm``, ~450 of 0.2M
parameters): the full-parameter policy gradient of this tiny policy is dominated by sharp
directions, and even an exact big-batch gradient step lowers its accuracy at every step size
(README, "Policy training"). ``--trainable ''`` trains everything.

    python bench/credit_assignment.py [--steps 80 --lr 1e-2 --trainable norm]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
from pathlib import Path

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.eval.sampling import sampling_report
from stepforge.prm.implicit import ImplicitPRM
from stepforge.prm.model import ProcessRewardModel
from stepforge.sample import sample_trajectories
from stepforge.train.rl import RLConfig, train_rl
from stepforge.worlds.arith import ARITH
from stepforge.worlds.arith.policy import SHIPPED_PRM
from stepforge.worlds.arith.problems import ArithConfig, generate_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--trainable", default="norm", help="comma-separated parameter-name parts; '' = all")
    ap.add_argument("--variants", default="outcome,sum,min,min_vr",
                    help="credit forms to run; min_implicit = min-form on an implicit PRM refit online (PRIME)")
    ap.add_argument("--plot", default="runs/bench/credit_assignment_world.png",
                    help="plot path (default under runs/; pass docs/... to refresh the README figure)")
    args = ap.parse_args()
    quiet_cpu()
    trainable = tuple(x for x in args.trainable.split(",") if x)
    base = make_policy("world")
    prm = ProcessRewardModel.from_pretrained(SHIPPED_PRM)
    held_out = generate_problems(500, ArithConfig(min_steps=6, max_steps=8), seed=99_001, prefix="heldout")

    def accuracy(model, greedy: bool = False) -> float:
        policy = TransformersPolicy(model, base.tokenizer)
        samples = [t for b in sample_trajectories(policy, held_out, ARITH, n=1 if greedy else 4, seed=7,
                                                  temperature=0.0 if greedy else 1.0, max_new_tokens=96)
                   for t in b.trajectories]
        return round(sampling_report(held_out, samples, ARITH)["sample_accuracy"], 4)

    start_acc = accuracy(base.model)
    greedy_acc = {"start": accuracy(base.model, greedy=True)}
    curves, hacking = {}, {}
    for variant in args.variants.split(","):
        credit = "min" if variant == "min_implicit" else variant
        curve = [(0, start_acc)]
        out = Path(tempfile.mkdtemp(prefix=f"rl-{credit}-"))
        for upto in range(args.eval_every, args.steps + 1, args.eval_every):
            # a fresh copy of the initial policy each time: it is the KL reference, and the run
            # resumes its trained weights from the checkpoint
            model = copy.deepcopy(base.model)
            cfg = RLConfig(credit=credit, steps=upto, lr=args.lr, trainable=trainable, save_every=args.eval_every,
                           prm_online_steps=4 if variant == "min_implicit" else 0)
            scorer = ImplicitPRM(copy.deepcopy(base.model), base.tokenizer) if variant == "min_implicit" else prm
            history = train_rl(model, base.tokenizer, out, cfg, scorer=scorer)
            curve.append((upto, accuracy(model)))
        greedy_acc[variant] = accuracy(model, greedy=True)
        shutil.rmtree(out, ignore_errors=True)
        curves[variant] = curve
        last = history[-1]
        hacking[variant] = {k: last[k] for k in ("mean_tokens", "mean_steps", "empty_share", "no_answer_share",
                                                "no_separator_share", "prm_verifier_gap", "kl")}
        # the step at which each kind of alarm first fired, and how many steps it fired on
        alarms: dict[str, dict[str, int]] = {}
        for h in history:
            for w in h["warnings"]:
                kind = w.split(" ")[0]
                alarms.setdefault(kind, {"first_step": h["step"], "steps": 0})["steps"] += 1
        hacking[variant]["alarms"] = alarms
    final = {k: v[-1][1] for k, v in curves.items()}
    target = final.get("outcome")
    # reaching outcome-only's final accuracy only means something if outcome-only improved
    reach = next((s for s, a in curves["min"] if s > 0 and a >= target), None) \
        if target is not None and "min" in curves and target > start_acc else None
    _plot(curves, args.plot)
    print(json.dumps({"bench": "credit_assignment", "steps": args.steps, "start_acc": start_acc, "acc": final,
                      "greedy_acc": greedy_acc, "curves": curves, "steps_to_outcome_final_acc": {"min": reach},
                      "lr": args.lr, "trainable": list(trainable), "hacking": hacking}))


def _plot(curves, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in curves.items():
        ax.plot([s for s, _ in curve], [a for _, a in curve], marker="o", label=name)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out sampled accuracy")
    ax.set_title("credit assignment in the arithmetic world")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
