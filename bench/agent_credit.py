"""Turn-level credit for agents (issue #12): outcome-only, merged rewards, GiGPO and OPRL on
the agent world (reach-the-target), same policy, seeds and iterations.

For each (variant, seed) the run is evaluated on ``--held-out`` tasks (one episode each at
T = 1, the same tasks for every run) before training and every ``--eval-every`` iterations.
The implicit step rewards of OPRL and merged are checked against the world's exact per-turn
labels (a turn is progress iff it lowers the BFS distance to the target): ``step_reward_auc``
is the AUC of r_φ(a_t) for progress vs non-progress turns over the training episodes of the
second half of the run. Prints one JSON line; ``--plot`` draws success vs iteration.

- ``iters_to_outcome_final``: the first evaluated iteration at which OPRL / GiGPO (mean over
  seeds) reach outcome-only's final mean success (null if never, or if outcome did not improve).
- ``anchor_share``: GiGPO's share of turns in anchor groups of two or more (mean over iterations).
- ``alarms``: per variant, every hacking alarm raised in any seed (episode growth, invalid
  actions, PRM disagreement with outcomes).

    python bench/agent_credit.py [--iterations 40 --seeds 0,1,2 --jobs 2 --out runs/bench/agent_credit.jsonl]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import quiet_cpu, save_figure

VARIANTS = ("outcome", "merged", "gigpo", "oprl", "oprl_exact", "oprl_code")
# not run unless asked (--variants): oprl_exact, OPRL's A^E + α·A^S with the world's exact progress
# labels as turn rewards (no PRM), the ceiling of what a perfect step reward could add; oprl_code,
# every variant of the released iStar code at once (mean turn scores, all pairs, first-turn
# baseline, centre-only normalisation, scoring before the PRM's update)
CODE_VARIANT = {"turn_score": "mean", "pairing": "all", "step_baseline": "trajectories", "norm_std": False,
                "score_before_update": True}
DEFAULT_VARIANTS = ("outcome", "merged", "gigpo", "oprl")
HELD_OUT_SEED = 777_001


def held_out_success(model, tokenizer, problems) -> float:
    from stepforge.backends.transformers_backend import TransformersPolicy
    from stepforge.env.rollout import rollout
    from stepforge.tasks import get_world

    world = get_world("agent")
    episodes, _ = rollout(TransformersPolicy(model, tokenizer), problems, world.task, world.make_env, n=1,
                          temperature=1.0, max_new_tokens=8, seed=HELD_OUT_SEED)
    return round(sum(bool(t.correct) for t in episodes) / len(episodes), 4)


def run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    quiet_cpu()
    from stepforge.backends.device import resolve_device
    from stepforge.eval.prm_metrics import step_auc
    from stepforge.tasks import get_world
    from stepforge.train.agent_rl import AgentRLConfig, train_agent_rl

    world = get_world("agent")
    device = str(resolve_device(args.device))
    model, tok = world.load_policy(args.policy)
    model = model.to(device)
    held_out = world.generate(args.held_out, seed=HELD_OUT_SEED, prefix="heldout")
    cfg = AgentRLConfig(credit=variant.split("_")[0], exact_turn_rewards=variant.endswith("_exact"),
                        **(CODE_VARIANT if variant.endswith("_code") else {}),
                        iterations=args.iterations, seed=seed, lr=args.lr,
                        trainable=tuple(x for x in args.trainable.split(",") if x), prm_lr=args.prm_lr,
                        prm_trainable=tuple(x for x in args.prm_trainable.split(",") if x),
                        prm_updates=args.prm_updates, tasks_per_iteration=args.tasks,
                        episodes_per_task=args.episodes, save_every=args.iterations)
    curve = [(0, held_out_success(model, tok, held_out))]
    scored: list[tuple[list[float], list[float | None]]] = []

    def on_iteration(row, episodes) -> None:
        if row["iteration"] % args.eval_every == 0:
            curve.append((row["iteration"], held_out_success(model, tok, held_out)))
        if "turn_rewards" in episodes[0].meta and row["iteration"] > args.iterations // 2:
            scored.extend((t.meta["turn_rewards"], t.step_labels) for t in episodes)

    out = Path(tempfile.mkdtemp(prefix=f"agent-{variant}-{seed}-"))
    try:
        history = train_agent_rl(model, tok, out, cfg, on_iteration=on_iteration)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    auc = step_auc([s for s, _ in scored], [labels for _, labels in scored]) if scored else None
    alarms = sorted({a.split(" ")[0] + " " + a.split(" ")[1] for h in history for a in h["alarms"]})
    anchor = [h["anchor_share"] for h in history if "anchor_share" in h]
    return {"variant": variant, "seed": seed, "curve": curve, "step_reward_auc": auc, "alarms": alarms,
            "anchor_share": sum(anchor) / len(anchor) if anchor else None,
            "batch_success": [h["success"] for h in history],
            "invalid_share": [h["invalid_share"] for h in history], "mean_turns": [h["mean_turns"] for h in history]}


def summarise(results: list[dict], variants: list[str], iterations: int) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return round(sum(xs) / len(xs), 4) if xs else None

    curves = {}
    for v in variants:
        runs = [r["curve"] for r in results if r["variant"] == v]
        if runs:
            curves[v] = [(it, mean([c[k][1] for c in runs])) for k, (it, _) in enumerate(runs[0])]
    final = {v: c[-1][1] for v, c in curves.items()}
    reach = {}
    start = next(iter(curves.values()))[0][1] if curves else None
    target = final.get("outcome")
    for v in ("oprl", "gigpo"):
        if v in curves and target is not None and target > start:
            reach[v] = next((it for it, s in curves[v] if it > 0 and s >= target), None)
    return {
        "bench": "agent_credit", "iterations": iterations,
        "seeds": sorted({r["seed"] for r in results}),
        "start_success": start, "success": final,
        "success_by_seed": {v: [r["curve"][-1][1] for r in results if r["variant"] == v] for v in variants},
        "iters_to_outcome_final": reach,
        "step_reward_auc": {v: mean([r["step_reward_auc"] for r in results if r["variant"] == v])
                            for v in ("oprl", "merged", "oprl_code") if v in variants},
        "anchor_share": mean([r["anchor_share"] for r in results if r["variant"] == "gigpo"]),
        "alarms": {v: sorted({a for r in results if r["variant"] == v for a in r["alarms"]}) for v in variants},
        "curves": curves,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="agent policy dir (default: the agent world's)")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--held-out", type=int, default=500)
    ap.add_argument("--tasks", type=int, default=16, help="tasks per iteration")
    ap.add_argument("--episodes", type=int, default=8, help="episodes per task (the group)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--trainable", default="norm", help="comma-separated parameter-name parts; '' = all")
    ap.add_argument("--prm-lr", type=float, default=1e-3)
    ap.add_argument("--prm-trainable", default="", help="the implicit PRM's parameters ('' = all)")
    ap.add_argument("--prm-updates", type=int, default=1, help="OPRL/merged: DPO steps on the PRM per iteration")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (one thread each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/bench/agent_credit.jsonl",
                    help="each run's result is appended as it finishes; runs already there are not redone")
    ap.add_argument("--plot", default="runs/bench/agent_credit.png")
    args = ap.parse_args()
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(set(variants) - set(VARIANTS))}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("policy", "iterations", "eval_every", "held_out", "tasks", "episodes",
                                               "lr", "trainable", "prm_lr", "prm_trainable", "prm_updates")}
    done = [r for r in (json.loads(x) for x in out.read_text().splitlines()) if r.get("settings") == settings] \
        if out.exists() else []
    have = {(r["variant"], r["seed"]) for r in done}
    todo = [(v, s) for s in seeds for v in variants if (v, s) not in have]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, v, s, args) for v, s in todo]
        for f in as_completed(futures):
            result = {**f.result(), "settings": settings}
            done.append(result)
            with out.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
    results = [r for r in done if r["variant"] in variants and r["seed"] in seeds]
    summary = summarise(results, variants, args.iterations)
    _plot(summary["curves"], args.plot)
    print(json.dumps(summary))


def _plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, c in curves.items():
        ax.plot([it for it, _ in c], [s for _, s in c], marker="o", label=name)
    ax.set_xlabel("RL iteration")
    ax.set_ylabel("held-out success at T = 1 (mean over seeds)")
    ax.set_title("agent world: turn-level credit")
    save_figure(fig, (ax,), path)


if __name__ == "__main__":
    main()
