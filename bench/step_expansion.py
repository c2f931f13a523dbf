"""MathFimer in the built-in world: does fill-in-the-middle step expansion (with and without
the exact checker) teach a policy what oracle detailed solutions teach it?

Stages (cached under --work; delete a stage's output to redo it):
1. problems: a terse corpus (default 32,000, the policy trainer's 2–12-step chains), disjoint
   FIM-source problems, and held-out 4–8-step evaluation problems.
2. expander: the world Llama with three FIM tokens, trained from scratch on FIM examples
   (3 cut points each) of the *detailed* solutions of the FIM-source problems.
3. expansion of the terse corpus, one round, greedy at every gap, η = 0.8
   (stepforge.data.expand). "+check" keeps only the inserted lines the world checker
   accepts; for one round this is exactly the unchecked output minus the rejected lines
   (all gaps of a round are generated from the same solution), so it is derived, not rerun.
   Rounds 1–3 are run with and without the check on a subset (--rounds-problems).
4. downstream: fresh policies (trainer defaults, same steps and seed per arm) on (a) terse,
   (b) FIM-expanded, (c) FIM-expanded + check, (d) oracle detailed, (e) terse with as many
   completion tokens as (c); --seeds seeds each; held-out accuracy greedy and at T = 1
   (--samples per problem), per-operator step error (first errors / steps reached).

    python bench/step_expansion.py [--corpus 32000 --seeds 3 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from _common import quiet_cpu

from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.data.expand import ExpandConfig, expand_to_file
from stepforge.data.fim import KNOWN_FIM_TOKENS, fim_examples, fim_tokens_of
from stepforge.sample import sample_trajectories
from stepforge.schema import Trajectory, read_jsonl
from stepforge.tasks import get_world
from stepforge.worlds.arith.problems import ArithConfig, generate_problems, parse_question, step_operations
from stepforge.worlds.arith.tokenizer import FIM_TOKENS, build_tokenizer

WORLD = get_world("arith")
TASK = WORLD.task
TRAINER_WORLD = ArithConfig(min_steps=2, max_steps=12)  # PolicyTrainConfig's default chains
EVAL_WORLD = ArithConfig(min_steps=4, max_steps=8)
ARMS = ("terse", "fim", "fim_checked", "oracle", "terse_token_matched")


def problems(args) -> tuple[list, list, list]:
    """FIM-source problems first (as drawn), then the corpus and held-out problems without any of
    their questions (and the corpus without the held-out ones)."""
    fim_source = generate_problems(args.fim_problems, TRAINER_WORLD, seed=12, prefix="fim")
    seen = {p.question for p in fim_source}
    held_out = [p for p in generate_problems(args.held_out * 2, EVAL_WORLD, seed=13, prefix="eval")
                if p.question not in seen][:args.held_out]
    seen |= {p.question for p in held_out}
    corpus = [p for p in generate_problems(args.corpus + args.corpus // 5, TRAINER_WORLD, seed=11, prefix="corpus")
              if p.question not in seen][:args.corpus]
    assert len(corpus) == args.corpus and len(held_out) == args.held_out
    return corpus, fim_source, held_out


def train_expander(work: Path, fim_source: list, args) -> Path:
    out = work / "expander"
    if (out / "config.json").exists():
        return out
    rng = random.Random(0)
    tokens = KNOWN_FIM_TOKENS[1]
    assert (tokens.prefix, tokens.suffix, tokens.middle) == FIM_TOKENS
    corpus = [ex for p in fim_source for ex in fim_examples(p.question, WORLD.reference_steps(p, "detailed"), tokens,
                                                            rng, draws=3, order=args.fim_order)]
    init = None if args.init_from == "scratch" else str(WORLD.policy_dir(None) if args.init_from == "policy"
                                                         else args.init_from)
    WORLD.train_policy(out, steps=args.expander_steps, seed=0, threads=1, corpus=corpus, special_tokens=FIM_TOKENS,
                       batch_size=args.expander_batch, lr=args.expander_lr, prompt_loss=args.prompt_loss,
                       init_from=init, record={"corpus": f"FIM examples (3 cuts, {args.fim_order}) of "
                                                         f"{len(fim_source)} detailed solutions"})
    return out


def terse_records(corpus: list) -> list[Trajectory]:
    return [Trajectory(id=p.id, problem_id=p.id, question=p.question, steps=WORLD.reference_steps(p, "terse"),
                       final_answer=p.answer, correct=True) for p in corpus]


def expand(expander: Path, records: list[Trajectory], path: Path, config: ExpandConfig) -> list[Trajectory]:
    config = replace(config, max_new_tokens=16)  # a world step is at most 12 tokens
    policy = TransformersPolicy.from_pretrained(expander, device="cpu", dtype="float32")
    tokens = fim_tokens_of(policy.tokenizer)
    expand_to_file(policy, records, TASK, path, config, tokens)
    return read_jsonl(path, Trajectory)


def without_wrong(t: Trajectory) -> list[str]:
    wrong = {i for i, ok in zip(t.meta["expand"]["inserted_at"], t.meta["expand"]["inserted_right"], strict=True)
             if not ok}
    return [s for i, s in enumerate(t.steps) if i not in wrong]


def insert_stats(expanded: list[Trajectory]) -> list[dict]:
    rounds = []
    for r in range(len(expanded[0].meta["expand"]["rounds"])):
        c: Counter = Counter()
        for t in expanded:
            row = t.meta["expand"]["rounds"][r]
            c.update({"gaps": row["gaps"], "inserted": row["inserted"], "right": row["right"], **row["dropped"]})
        rounds.append({"round": r + 1, "gaps": c["gaps"], "rate": c["inserted"] / c["gaps"],
                       "redundant": c["redundant"] / c["gaps"], "answer_line": c["answer_line"] / c["gaps"],
                       "wrong_dropped": c["wrong"] / c["gaps"],
                       "correct": c["right"] / c["inserted"] if c["inserted"] else None})
    return rounds


def oracle_lines(problems: list) -> int:
    """Gaps where the detailed style has a line: multiplications of a running value >= 10."""
    return sum(len(WORLD.reference_steps(p, "detailed")) - len(WORLD.reference_steps(p, "terse")) for p in problems)


def right_lines(expanded: list[Trajectory]) -> int:
    return sum(sum(map(bool, t.meta["expand"]["inserted_right"])) for t in expanded)


def arm_corpora(corpus: list, expanded: list[Trajectory]) -> dict[str, list[tuple[str, str]]]:
    by_id = {t.id: t for t in expanded}
    q = {p.id: p.question + "\n" for p in corpus}
    return {
        "terse": [(q[p.id], "\n".join(WORLD.reference_steps(p, "terse"))) for p in corpus],
        "fim": [(q[p.id], "\n".join(by_id[p.id].steps)) for p in corpus],
        "fim_checked": [(q[p.id], "\n".join(without_wrong(by_id[p.id]))) for p in corpus],
        "oracle": [(q[p.id], "\n".join(WORLD.reference_steps(p, "detailed"))) for p in corpus],
    }


def completion_tokens(examples: list[tuple[str, str]]) -> int:
    tok = build_tokenizer()
    return sum(len(ids) + 1 for ids in tok([c for _, c in examples], add_special_tokens=False).input_ids)


def operator_errors(trajectories: list[Trajectory]) -> dict[str, float | None]:
    """Per operator: first errors at its steps / its steps reached (a partial-product line
    belongs to its multiplication; the answer line is "answer")."""
    err: Counter = Counter()
    reached: Counter = Counter()
    for t in trajectories:
        ops = parse_question(t.question).ops
        kinds = [op for op, _ in ops] + ["answer"]
        where = step_operations(t.question, t.steps)
        for j in sorted({j for j in where if j is not None}):
            reached[kinds[j]] += 1
        if t.first_error is not None:
            err[kinds[where[t.first_error]]] += 1
    return {k: (err[k] / reached[k] if reached[k] else None) for k in ("+", "-", "*", "answer")}


def train_and_eval(job: tuple) -> dict:
    arm, seed, examples, steps, out, held_out, samples = job
    quiet_cpu()
    result_path = Path(out) / "eval.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    if not (Path(out) / "config.json").exists():
        WORLD.train_policy(out, steps=steps, seed=seed, threads=1, corpus=examples,
                           record={"corpus": f"{arm}: {len(examples)} examples"})
    policy = TransformersPolicy.from_pretrained(out, device="cpu", dtype="float32")
    greedy = [t for b in sample_trajectories(policy, held_out, TASK, n=1, temperature=0.0, max_new_tokens=160,
                                             batch_problems=200) for t in b.trajectories]
    sampled = [t for b in sample_trajectories(policy, held_out, TASK, n=samples, temperature=1.0, seed=seed,
                                              max_new_tokens=160, batch_problems=100) for t in b.trajectories]
    per_problem: dict[str, list[bool]] = {}
    for t in sampled:
        per_problem.setdefault(t.problem_id, []).append(bool(t.correct))
    result = {"arm": arm, "seed": seed, "steps": steps,
              "greedy": [bool(t.correct) for t in greedy],
              "sampled": [statistics.mean(per_problem[p.id]) for p in held_out],
              "mul_error": operator_errors(sampled)["*"], "op_error": operator_errors(sampled)}
    result_path.write_text(json.dumps(result))
    return result


def bootstrap_ci(values: list[float], rng: random.Random, reps: int = 2000) -> list[float]:
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(reps))
    return [round(means[int(0.025 * reps)], 4), round(means[int(0.975 * reps)], 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/step_expansion"))
    ap.add_argument("--corpus", type=int, default=32_000)
    ap.add_argument("--fim-problems", type=int, default=16_000)
    ap.add_argument("--expander-steps", type=int, default=1500)
    ap.add_argument("--expander-batch", type=int, default=32)
    ap.add_argument("--expander-lr", type=float, default=3e-3)
    ap.add_argument("--fim-order", choices=("psm", "spm"), default="spm")
    ap.add_argument("--middle-loss-only", dest="prompt_loss", action="store_false",
                    help="expander: loss on the middle only (MathFimer's; default: prefix and suffix too)")
    ap.add_argument("--init-from", default="scratch", help="expander start: scratch | policy (the world policy) | DIR")
    ap.add_argument("--held-out", type=int, default=600)
    ap.add_argument("--samples", type=int, default=4, help="samples per held-out problem at T = 1")
    ap.add_argument("--steps", type=int, default=2000, help="policy training steps (terse token-matched: more)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds-problems", type=int, default=1000)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--expander-only", type=int, default=0, metavar="N",
                    help="train the expander, expand the first N corpus problems, print the insertion figures")
    args = ap.parse_args()
    quiet_cpu()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus, fim_source, held_out = problems(args)
    expander = train_expander(args.work, fim_source, args)
    t_expander = time.perf_counter() - t0

    if args.expander_only:
        rows = expand(expander, terse_records(corpus[:args.expander_only]), args.work / "expanded-head.jsonl",
                      ExpandConfig(batch_trajectories=256, fim_order=args.fim_order))
        r1 = insert_stats(rows)[0]
        oracle, right = oracle_lines(corpus[:args.expander_only]), right_lines(rows)
        print(json.dumps({"bench": "step_expansion", "expander": {
            "order": args.fim_order, "prompt_loss": args.prompt_loss, "init": args.init_from,
            "steps": args.expander_steps, "batch": args.expander_batch, "lr": args.expander_lr,
            "final_loss_ema": round(json.loads((expander / "stepforge_train.json").read_text())["final_loss_ema"], 4)},
            "problems": len(rows), "insert": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r1.items()},
            "right_lines": right, "oracle_lines": oracle, "recall": round(right / oracle, 4)}))
        return
    expanded = expand(expander, terse_records(corpus), args.work / "expanded.jsonl",
                      ExpandConfig(batch_trajectories=256, fim_order=args.fim_order))
    t_expand = time.perf_counter() - t0 - t_expander
    rounds = {}
    subset = terse_records(corpus[:args.rounds_problems])
    for check in (False, True):
        name = "checked" if check else "unchecked"
        rows = expand(expander, subset, args.work / f"rounds-{name}.jsonl",
                      ExpandConfig(rounds=3, check=check, batch_trajectories=256, fim_order=args.fim_order))
        rounds[name] = insert_stats(rows)
    answers_kept = all(TASK.answer_of(t.steps) == p.answer for t, p in zip(expanded, corpus, strict=True))

    corpora = arm_corpora(corpus, expanded)
    tokens = {arm: completion_tokens(ex) for arm, ex in corpora.items()}
    matched_steps = round(args.steps * tokens["fim_checked"] / tokens["terse"])
    corpora["terse_token_matched"] = corpora["terse"]
    arms = args.arms.split(",")
    jobs = [(arm, seed, corpora[arm], matched_steps if arm == "terse_token_matched" else args.steps,
             str(args.work / "arms" / f"{arm}-s{seed}"), held_out, args.samples)
            for seed in range(args.seeds) for arm in arms]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(train_and_eval, jobs))

    rng = random.Random(0)
    acc, greedy_acc, ci, mul = {}, {}, {}, {}
    for arm in arms:
        rows = [r for r in results if r["arm"] == arm]
        per_problem = [statistics.mean(vals) for vals in zip(*(r["sampled"] for r in rows), strict=True)]
        acc[arm] = round(statistics.mean(per_problem), 4)
        ci[arm] = bootstrap_ci(per_problem, rng)
        greedy_acc[arm] = round(statistics.mean(statistics.mean(r["greedy"]) for r in rows), 4)
        mul[arm] = round(statistics.mean(r["mul_error"] for r in rows), 4)
    round1 = insert_stats(expanded)[0]
    oracle, right = oracle_lines(corpus), right_lines(expanded)
    print(json.dumps({
        "bench": "step_expansion", "seeds": args.seeds, "corpus": len(corpus), "held_out": len(held_out),
        "acc": acc, "acc_ci95": ci, "greedy": greedy_acc, "mul_error": mul,
        "acc_by_seed": {arm: [round(statistics.mean(r["sampled"]), 4) for r in results if r["arm"] == arm]
                        for arm in arms},
        "insert": {"rate": round(round1["rate"], 4), "redundant": round(round1["redundant"], 4),
                   "correct": round(round1["correct"], 4) if round1["correct"] is not None else None,
                   "answers_unchanged": answers_kept, "oracle_lines": oracle,
                   "recall": round(right / oracle, 4)},
        "rounds": rounds, "completion_tokens": tokens, "token_matched_steps": matched_steps,
        "seconds": {"expander": round(t_expander), "expand": round(t_expand), "total": round(time.perf_counter() - t0)},
    }))


if __name__ == "__main__":
    main()
