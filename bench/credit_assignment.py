"""PURE's claims in a world with room to hack: outcome-only GRPO vs sum-form PRM credit vs
min-form vs min-form + 10% verifiable rewards vs PRIME's online implicit PRM + verifiable
reward. Same policy, same PRM, same seed, same steps; full-parameter updates by default.

The default world, ``arith-padded``, lets a solution carry any number of ``check N`` lines
(restatements of the running value: right, and rated high by its PRM), so a policy can bank
step rewards by padding, as PURE's policies did with "thank you" steps.

Held-out accuracy (``--held-out`` problems of 6–8 steps, 4 samples each at temperature 1) is
measured before training and every ``--eval-every`` steps; the hacking monitors run every
RL step. Prints one JSON line and writes a two-panel plot (held-out accuracy; padding share
and step count per RL step).

- ``collapse``: the first RL step whose batch accuracy fell > 0.25 below the first step's
  (the monitors' accuracy alarm), per variant; null if never.
- ``hacking``: per variant, the first step each kind of drift alarm fired.
- ``steps_to_outcome_final_acc``: the first evaluation step at which min / min_vr reach
  outcome-only's final held-out accuracy (null if never, or if outcome-only did not improve).

    python bench/credit_assignment.py [--world arith-padded --steps 80 --lr 3e-5 --jobs 2 --device cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import quiet_cpu, save_figure

VARIANTS = {  # name -> RLConfig overrides (and the PRM it uses)
    "outcome": {"credit": "outcome"},
    "sum": {"credit": "sum"},
    "min": {"credit": "min"},
    "min_vr": {"credit": "min_vr", "vr_share": 0.1},  # PURE: VR in 10% of the groups
    # PRIME: implicit PRM refit online on each batch's outcomes, its step rewards summed, the
    # verifiable reward on every sample, leave-one-out baselines
    "prime": {"credit": "sum_vr", "vr_share": 1.0, "prm_online_steps": 4, "baseline": "rloo"},
}


def held_out_accuracy(model, tokenizer, problems, task, greedy: bool = False) -> float:
    from stepforge.backends.transformers_backend import TransformersPolicy
    from stepforge.eval.sampling import sampling_report
    from stepforge.sample import sample_trajectories

    policy = TransformersPolicy(model, tokenizer)
    samples = [t for b in sample_trajectories(policy, problems, task, n=1 if greedy else 4, seed=7,
                                              temperature=0.0 if greedy else 1.0, max_new_tokens=96)
               for t in b.trajectories]
    return round(sampling_report(problems, samples, task)["sample_accuracy"], 4)


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One RL run, evaluated every ``eval_every`` steps; its curves and alarms."""
    quiet_cpu()
    from stepforge.backends.device import resolve_device
    from stepforge.prm.implicit import ImplicitPRM
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.tasks import get_world
    from stepforge.train.rl import RLConfig, train_rl

    world = get_world(args.world)
    base, tok = world.load_policy(args.policy)
    device = resolve_device(args.device)
    base = base.to(device)
    held_out = world.generate(args.held_out, seed=99_001, prefix="heldout", min_steps=6, max_steps=8)
    settings = {"trainable": tuple(x for x in args.trainable.split(",") if x), "lr": args.lr, "world": world.name,
                "seed": args.seed,
                "save_every": args.eval_every, "max_new_tokens": 96, **VARIANTS[variant]}
    implicit = variant == "prime"
    prm = None if variant == "outcome" or implicit else ProcessRewardModel.from_pretrained(
        args.prm or world.prm_dir, device=str(device))
    curve = [(0, held_out_accuracy(base, tok, held_out, world.task))]
    out = Path(tempfile.mkdtemp(prefix=f"rl-{variant}-"))
    for upto in range(args.eval_every, args.steps + 1, args.eval_every):
        # a fresh copy of the initial policy each time: it is the KL reference, and the run
        # resumes its trained weights (and an online PRM) from the checkpoint
        model = copy.deepcopy(base)
        scorer = ImplicitPRM(copy.deepcopy(base), tok) if implicit else prm
        history = train_rl(model, tok, out, RLConfig(steps=upto, **settings), scorer=scorer)
        curve.append((upto, held_out_accuracy(model, tok, held_out, world.task)))
    greedy = held_out_accuracy(model, tok, held_out, world.task, greedy=True)
    shutil.rmtree(out, ignore_errors=True)
    alarms: dict[str, int] = {}
    for h in history:
        for w in h["warnings"]:
            alarms.setdefault(w.split(" ")[0], h["step"])
    monitors = ("mean_tokens", "mean_steps", "padding_share", "no_answer_share", "empty_share",
                "prm_verifier_gap", "kl", "accuracy")
    return {"curve": curve, "greedy": greedy, "alarms": alarms,
            "first": {k: history[0].get(k) for k in monitors}, "last": {k: history[-1].get(k) for k in monitors},
            "per_step": {k: [h.get(k) for h in history] for k in ("padding_share", "mean_steps", "accuracy")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="arith-padded")
    ap.add_argument("--policy", default=None, help="policy dir (default: the world's)")
    ap.add_argument("--prm", default=None, help="PRM dir (default: the world's)")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--held-out", type=int, default=500)
    ap.add_argument("--lr", type=float, default=3e-5, help="the best outcome-only rate in bench/rl_movability.py")
    ap.add_argument("--trainable", default="", help="comma-separated parameter-name parts; '' = all")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--jobs", type=int, default=2, help="variants run in parallel processes (one thread each)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (the processes share it)")
    ap.add_argument("--seed", type=int, default=0, help="RL seed (problems, samples, VR groups)")
    ap.add_argument("--out", default=None, help="also append each variant's result here as it finishes (JSONL)")
    ap.add_argument("--plot", default="runs/bench/credit_assignment_world.png",
                    help="plot path (default under runs/; pass docs/... to refresh the README figure)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_variant, v, args): v for v in variants}
        for done in as_completed(futures):
            results[futures[done]] = done.result()
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({"variant": futures[done], "seed": args.seed, **results[futures[done]]}) + "\n")
    results = {v: results[v] for v in variants}
    final = {v: r["curve"][-1][1] for v, r in results.items()}
    start = results[variants[0]]["curve"][0][1]
    target = final.get("outcome")
    reach = {}
    for v in ("min", "min_vr"):
        if v in results and target is not None and target > start:  # reaching it means something only then
            reach[v] = next((s for s, a in results[v]["curve"] if s > 0 and a >= target), None)
    _plot(results, args.plot)
    print(json.dumps({
        "bench": "credit_assignment", "world": args.world, "steps": args.steps, "lr": args.lr, "seed": args.seed,
        "trainable": args.trainable, "device": args.device, "start_acc": start, "acc": final,
        "greedy_acc": {v: r["greedy"] for v, r in results.items()},
        "steps_to_outcome_final_acc": reach,
        "collapse": {v: r["alarms"].get("accuracy") for v, r in results.items()},
        "hacking": {v: r["alarms"] for v, r in results.items()},
        "curves": {v: r["curve"] for v, r in results.items()},
        "monitors": {v: {"first": r["first"], "last": r["last"]} for v, r in results.items()},
    }))


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, pad) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for name, r in results.items():
        line, = acc.plot([s for s, _ in r["curve"]], [a for _, a in r["curve"]], marker="o", label=name)
        share = r["per_step"]["padding_share"]
        if any(x is not None for x in share):
            pad.plot(range(1, len(share) + 1), share, color=line.get_color(), label=name)
    acc.set_xlabel("RL step")
    acc.set_ylabel("held-out sampled accuracy")
    acc.set_title("accuracy")
    pad.set_xlabel("RL step")
    pad.set_ylabel("share of steps that are padding (batch)")
    pad.set_title("padding (check lines)")
    save_figure(fig, (acc, pad), path)


if __name__ == "__main__":
    main()
