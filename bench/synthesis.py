"""MUSTARD in the built-in world: concept-seeded synthesis with the world policy as the solver
and the exact checker as the prover (its messages name the failing line only), with up to two
correction rounds (keep the lines before the failure, sample the rest again).

1. Pass rate by level and correction round (cumulative share verified after round 0, 1, 2),
   for k = 1 and k = 2 concepts per seed (one group, and across groups).
2. Fine-tune the shipped policy for one epoch on N synthetic solutions that verified (valid),
   on N drawn from all of them (random: unfiltered) and on N that failed (invalid); held-out
   greedy accuracy on ``--held-out`` problems of 4–8 steps, with a paired sign test of valid
   against random (and one sample each at temperature 1: ``sampled_acc``).
3. Concept-uniform seeding against natural problems: fine-tune on N verified solutions of
   each and compare the per-step error on the atom rarest under natural sampling.

Synthetic sets are cached under runs/bench/synthesis/ (delete to regenerate).

    python bench/synthesis.py [--seeds 12000 --n 2000 --held-out 2000 --lr 3e-4]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

from _common import paired_sign_test, quiet_cpu

from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.data.synthesize import (
    ConceptLibrary,
    Seed,
    SynthConfig,
    SynthRecord,
    WorldGenerator,
    draw_seeds,
    synthesize_to_file,
    world_prover,
)
from stepforge.sample import sample_trajectories
from stepforge.schema import read_jsonl
from stepforge.tasks import get_world
from stepforge.worlds.arith.policy import SHIPPED_CHECKPOINT, PolicyTrainConfig, load_policy, train_policy
from stepforge.worlds.arith.problems import parse_question, problem_atoms, step_operations

CACHE = Path("runs/bench/synthesis")  # default of --cache
WORLD = get_world("arith")
TASK = WORLD.task


def synthesize(cache: Path, name: str, seeds: list[Seed], rounds: int = 2) -> list[SynthRecord]:
    path = cache / f"{name}.jsonl"
    if not path.exists():  # synthesize_to_file writes it last
        policy = TransformersPolicy(*load_policy())
        synthesize_to_file(WorldGenerator(WORLD, policy), world_prover(TASK), seeds, path,
                           SynthConfig(rounds=rounds, batch_size=256, dedup=1.0))
    return read_jsonl(cache / f"{name}.jsonl.all.jsonl", SynthRecord)


def pass_rates(records: list[SynthRecord], rounds: int = 2) -> dict[str, list[float]]:
    """Per level: the cumulative share verified after each round."""
    out = {}
    for level in sorted({r.level for r in records}):
        mine = [r for r in records if r.level == level]
        out[level] = [round(sum(r.verified and r.rounds <= i for r in mine) / len(mine), 4) for i in range(rounds + 1)]
    return out


def fine_tune(records: list[SynthRecord], out: Path, lr: float, seed: int = 0) -> Path:
    if not (out / "config.json").exists():
        corpus = [(r.problem + "\n", "\n".join(r.solution)) for r in records]
        cfg = PolicyTrainConfig(steps=math.ceil(len(corpus) / 16), batch_size=16, lr=lr, warmup=10, seed=seed,
                                init_from=str(SHIPPED_CHECKPOINT))
        train_policy(out, cfg, corpus=corpus)
    return out


def greedy(model_dir: Path, problems, temperature: float = 0.0) -> list:
    policy = TransformersPolicy(*load_policy(model_dir))
    return [t for b in sample_trajectories(policy, problems, TASK, n=1, temperature=temperature, max_new_tokens=160,
                                           seed=11, batch_problems=256) for t in b.trajectories]


def atom_errors(trajectories) -> dict[str, float]:
    """Per atom: first errors at steps of that atom / steps of that atom attempted (up to and
    including the first error)."""
    tried, wrong = Counter(), Counter()
    for t in trajectories:
        atoms = problem_atoms(parse_question(t.question))
        for i, op in enumerate(step_operations(t.question, t.steps)):
            if op is None or op >= len(atoms):
                continue
            tried[atoms[op]] += 1
            wrong[atoms[op]] += t.first_error == i
    return {a: round(wrong[a] / tried[a], 4) for a in tried}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=12000, help="k=1 seeds (enough failures for N invalid)")
    ap.add_argument("--k2-seeds", type=int, default=1500)
    ap.add_argument("--n", type=int, default=2000, help="fine-tuning set size (equal for every arm)")
    ap.add_argument("--held-out", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--cache", default=str(CACHE))
    args = ap.parse_args()
    cache = Path(args.cache)
    quiet_cpu()
    cache.mkdir(parents=True, exist_ok=True)
    library = ConceptLibrary(WORLD.concepts)
    k1 = synthesize(cache, "k1", draw_seeds(library, args.seeds, k=1, seed=1))
    k2_one = synthesize(cache, "k2_one_group", draw_seeds(library, args.k2_seeds, k=2, mode="one_group", seed=2))
    k2_across = synthesize(cache, "k2_across", draw_seeds(library, args.k2_seeds, k=2, mode="across_groups", seed=3))
    rates = {"k1": pass_rates(k1), "k2_one_group": pass_rates(k2_one), "k2_across_groups": pass_rates(k2_across)}

    rng = random.Random(0)
    valid = [r for r in k1 if r.verified]
    invalid = [r for r in k1 if not r.verified]
    n = min(args.n, len(valid), len(invalid))
    arms = {"valid": rng.sample(valid, n), "random": rng.sample(k1, n), "invalid": rng.sample(invalid, n)}
    held_out = WORLD.generate(args.held_out, seed=77_001, prefix="synth-heldout", min_steps=4, max_steps=8)
    results = {"base": greedy(SHIPPED_CHECKPOINT, held_out)}
    sampled = {"base": greedy(SHIPPED_CHECKPOINT, held_out, temperature=1.0)}
    for name, records in arms.items():
        trained = fine_tune(records, cache / f"policy-{name}", args.lr)
        results[name] = greedy(trained, held_out)
        sampled[name] = greedy(trained, held_out, temperature=1.0)
    acc = {name: round(sum(bool(t.correct) for t in ts) / len(ts), 4) for name, ts in results.items()}
    ok = {name: [bool(t.correct) for t in ts] for name, ts in results.items()}
    versus = paired_sign_test(ok["valid"], ok["random"])

    # concept-uniform seeding vs natural problems, equal N of verified solutions
    natural_seeds = [Seed(id=f"natural-{i}", level=s.level, concepts=(), groups=())
                     for i, s in enumerate(draw_seeds(library, args.seeds // 4, seed=4))]
    natural = [r for r in synthesize(cache, "natural", natural_seeds) if r.verified]
    m = min(n, len(natural), len(valid))
    natural_counts = Counter(a for r in natural for a in problem_atoms(parse_question(r.problem)))
    rarest = min(natural_counts, key=natural_counts.get)
    rare = {}
    for name, records in (("seeded", rng.sample(valid, m)), ("natural", rng.sample(natural, m))):
        trained = fine_tune(records, cache / f"policy-atoms-{name}", args.lr)
        rare[name] = atom_errors(greedy(trained, held_out)).get(rarest)
    rare["base"] = atom_errors(results["base"]).get(rarest)
    print(json.dumps({
        "bench": "synthesis", "pass_rate": rates, "acc": acc, "n": n,
        "sampled_acc": {name: round(sum(bool(t.correct) for t in ts) / len(ts), 4) for name, ts in sampled.items()},
        "valid_vs_random": {"fixed": versus["fixed"], "broken": versus["broken"]},
        "p_valid_vs_random": round(versus["p"], 4),
        "rare_atom": rarest, "rare_atom_share_natural": round(natural_counts[rarest] / sum(natural_counts.values()), 4),
        "rare_atom_error": rare, "rare_atom_n": m, "lr": args.lr, "held_out": args.held_out,
        "kept_share": {name: round(sum(r.verified for r in rs) / len(rs), 4)
                       for name, rs in (("k1", k1), ("k2_one_group", k2_one), ("k2_across_groups", k2_across))},
    }))


if __name__ == "__main__":
    main()
