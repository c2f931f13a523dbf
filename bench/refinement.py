"""PRefLexOR's recursive refinement in the built-in world: answer, let a critic flag a line,
keep the lines before it and resample the rest, repeat. Critics: none (a random line: the
no-feedback control), the shipped world PRM (first line below its calibrated threshold) and
the exact checker (oracle). Compared with majority voting at the same generated tokens.

The PRM's threshold is calibrated for first-error F1 on a separate dev set (400 problems × 4
samples, exact labels), as ProcessBench does. Held-out: ``--problems`` of 6–8 steps,
answers and revisions sampled at temperature 1. Prints one JSON line and writes a plot of
accuracy against generated tokens per problem.

``--orpo`` adds PRefLexOR's Phase I: the shipped policy taught the thinking format (a
checked thinking block with the detailed draft, then the terse solution; 1,000 steps at lr
1e-3, as the padded world's policy) is trained further for ``--orpo-steps`` on 512 problems
with chosen = the reference thinking solution and rejected = its own wrong answers: ORPO with
the rejected answers regenerated every 25 steps (active) or sampled once (static), and the
control SFT on the chosen answers alone (same steps and rate). ``no_thinking``: the same
1,000 steps on terse solutions instead. Phase II, from the active-ORPO model: DPO (β 0.1)
of the reference against one of its own wrong answers per problem, with a random 20% of the
thinking tokens left out of the loss, or only the answer after the thinking block counted.
Greedy accuracy on the held-out problems (4–8 steps).

    python bench/refinement.py [--problems 2000 --rounds 3] [--orpo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import paired_sign_test, quiet_cpu, save_figure

from stepforge.backends import make_policy
from stepforge.eval.prm_metrics import calibrate_threshold
from stepforge.prm.model import ProcessRewardModel
from stepforge.sample import sample_trajectories
from stepforge.search.refine import NoCritic, OracleCritic, PRMCritic, refine
from stepforge.search.vote import majority_vote
from stepforge.tasks import get_world

WORLD = get_world("arith")
TASK = WORLD.task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--votes", type=int, default=8, help="samples per problem for the majority-vote curve")
    ap.add_argument("--plot", default="runs/bench/refinement_world.png")
    ap.add_argument("--orpo", action="store_true", help="also run the thinking-format ORPO comparison")
    ap.add_argument("--orpo-steps", type=int, default=150)
    ap.add_argument("--orpo-lr", type=float, default=1e-5)
    ap.add_argument("--cache", default="runs/bench/refinement", help="trained policies (delete to retrain)")
    ap.add_argument("--no-refine", action="store_true", help="only the ORPO comparison")
    args = ap.parse_args()
    if args.no_refine:
        print(json.dumps({"bench": "refinement", **orpo_comparison(Path(args.cache), args.orpo_steps, args.orpo_lr,
                                                                  args.problems)}))
        return
    quiet_cpu()
    policy = make_policy("world", device="cpu", dtype="float32")
    prm = ProcessRewardModel.from_pretrained(WORLD.prm_dir)

    dev = WORLD.generate(400, seed=61_001, prefix="refine-dev", min_steps=6, max_steps=8)
    dev_samples = [t for b in sample_trajectories(policy, dev, TASK, n=4, seed=3, temperature=1.0,
                                                  max_new_tokens=96) for t in b.trajectories if t.steps]
    threshold, dev_f1 = calibrate_threshold(prm.score(dev_samples), [t.first_error for t in dev_samples])

    problems = WORLD.generate(args.problems, seed=62_001, prefix="refine", min_steps=6, max_steps=8)
    refine_acc, integrated, tokens, revised = {}, {}, {}, {}
    for critic in (NoCritic(), PRMCritic(prm, threshold), OracleCritic(TASK)):
        res = refine(policy, problems, TASK, critic, args.rounds, temperature=1.0, max_new_tokens=96, seed=0)
        refine_acc[critic.name] = [round(sum(bool(t.correct) for t in r) / len(problems), 4) for r in res.rounds]
        integrated[critic.name] = [round(sum(res.integrated(TASK, problems, u)) / len(problems), 4)
                                   for u in range(args.rounds + 1)]
        tokens[critic.name] = [round(x / len(problems), 1) for x in res.tokens]
        revised[critic.name] = res.revised

    votes = [b.trajectories for b in sample_trajectories(policy, problems, TASK, n=args.votes, seed=9,
                                                         temperature=1.0, max_new_tokens=96, batch_problems=64)]
    groups: dict[str, list] = {}
    for batch in votes:
        for t in batch:
            groups.setdefault(t.problem_id, []).append(t)
    majority = []  # (tokens per problem, accuracy) for k = 1..votes
    for k in range(1, args.votes + 1):
        spent = sum(t.cost.generated_tokens for p in problems for t in groups[p.id][:k]) / len(problems)
        acc = sum(TASK.is_correct(p, majority_vote([t.final_answer for t in groups[p.id][:k]]))
                  for p in problems) / len(problems)
        majority.append((round(spent, 1), round(acc, 4)))

    def majority_at(budget: float) -> dict:
        fits = [(k + 1, s, a) for k, (s, a) in enumerate(majority) if s <= budget] or [(1, *majority[0])]
        k, s, a = fits[-1]
        return {"k": k, "tokens": s, "acc": a}

    _plot(refine_acc, tokens, majority, args.plot)
    orpo = orpo_comparison(Path(args.cache), args.orpo_steps, args.orpo_lr, args.problems) if args.orpo else {}
    print(json.dumps({**orpo,
        "bench": "refinement", "problems": args.problems, "prm_threshold": round(threshold, 4),
        "prm_dev_f1": round(dev_f1, 4), "refine": refine_acc, "integrated": integrated, "tokens": tokens,
        "revised": revised, "majority": majority,
        "majority_same_tokens": {c: majority_at(t[2]) for c, t in tokens.items() if len(t) > 2},
        "majority_same_tokens_final": {c: majority_at(t[-1]) for c, t in tokens.items()},
    }))


def orpo_comparison(cache: Path, steps: int, lr: float, n_held_out: int) -> dict:
    import copy

    from stepforge.backends.transformers_backend import TransformersPolicy
    from stepforge.train.dpo import train_dpo_masked, train_orpo_active
    from stepforge.worlds.arith.policy import SHIPPED_CHECKPOINT, load_policy
    from stepforge.worlds.arith.problems import parse_question

    def taught(style: str) -> Path:
        where = cache / f"policy-{style}"
        if not (where / "config.json").exists():
            WORLD.train_policy(where, steps=1000, seed=0, style=style, init_from=str(SHIPPED_CHECKPOINT), lr=1e-3)
        return where

    held_out = WORLD.generate(n_held_out, seed=63_001, prefix="orpo-heldout", min_steps=4, max_steps=8)

    def greedy_ok(model, tok) -> list[bool]:
        policy = TransformersPolicy(model, tok)
        return [bool(t.correct) for b in sample_trajectories(policy, held_out, TASK, n=1, temperature=0.0,
                                                             max_new_tokens=200, batch_problems=256)
                for t in b.trajectories]

    base, tok = load_policy(taught("thinking"))
    ok = {"thinking_start": greedy_ok(base, tok), "no_thinking": greedy_ok(*load_policy(taught("terse")))}
    pool = WORLD.generate(512, seed=64_001, prefix="orpo-train", min_steps=4, max_steps=8)

    def chosen(p):
        return parse_question(p.question).solution_in("thinking")

    histories = {}
    for name, kwargs in (("sft", {"lam": 0.0}), ("orpo_static", {"regenerate_every": 0}),
                         ("orpo_active", {"regenerate_every": 25})):
        model = copy.deepcopy(base)
        histories[name] = train_orpo_active(model, tok, TASK, pool, chosen, steps=steps, lr=lr, batch_size=16,
                                            samples=4, max_new_tokens=200, seed=0, **kwargs)
        ok[name] = greedy_ok(model, tok)
        if name == "orpo_active":
            active = model

    # Phase II from the active-ORPO model: DPO (β 0.1) of the reference thinking solution against
    # one of its own wrong answers per problem, counting a random 80% of thinking tokens, or
    # only the answer after the thinking block
    policy = TransformersPolicy(active, tok)
    rows, seen = [], set()
    for b in sample_trajectories(policy, pool, TASK, n=4, seed=5, temperature=1.0, max_new_tokens=200):
        for t, c in zip(b.trajectories, b.completions, strict=True):
            if not t.correct and t.problem_id not in seen:
                seen.add(t.problem_id)
                p = next(q for q in pool if q.id == t.problem_id)
                rows.append((p.question + "\n", chosen(p) + tok.eos_token, c.text + tok.eos_token))
    for mode in ("thinking_dropout", "answer_only"):
        model = copy.deepcopy(active)
        train_dpo_masked(model, tok, rows, mode, beta=0.1, lr=lr, steps=steps, batch_size=16, seed=0)
        ok[f"dpo_{mode}"] = greedy_ok(model, tok)

    def sign_p(a: list[bool], b: list[bool]) -> dict:
        test = paired_sign_test(a, b)
        return {**test, "p": round(test["p"], 4)}

    return {"acc": {k: round(sum(v) / len(v), 4) for k, v in ok.items()},
            "orpo_active_vs_sft": sign_p(ok["orpo_active"], ok["sft"]),
            "orpo_active_vs_static": sign_p(ok["orpo_active"], ok["orpo_static"]),
            "rejected_problems": {k: [h["rejected_problems"] for h in v[::25]] for k, v in histories.items()},
            "dpo_pairs": len(rows), "orpo_steps": steps, "orpo_lr": lr}


def _plot(refine_acc: dict, tokens: dict, majority: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, accs in refine_acc.items():
        ax.plot(tokens[name], accs, marker="o", label=f"refine, {name} critic")
    ax.plot([s for s, _ in majority], [a for _, a in majority], marker="s", linestyle="--",
            label="majority vote (k = 1, 2, ...)")
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy (latest answer / vote)")
    ax.set_title("recursive refinement vs majority vote, arith world")
    save_figure(fig, (ax,), path)


if __name__ == "__main__":
    main()
