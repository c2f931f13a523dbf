"""Prefix KV reuse vs re-encoding the prefix per row (transformers backend).

16 continuations of one step each from 32 shared prefixes, batched into one call, with the
shipped world policy. Prefixes are realistic for step-level labeling and search: a few-shot
block of solved 10-step problems, then a question and a late-step partial solution, so the
prefix is many times the continuation. Both runs use the same seed and must give the same
outputs. Prints one JSON line; the headline ratio is at the longest prefix.

    python bench/prefix_reuse.py [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import quiet_cpu

from stepforge.backends import make_policy
from stepforge.backends.transformers_backend import TransformersPolicy
from stepforge.worlds.arith.problems import ArithConfig, generate_problems, parse_question


def build_prefixes(n_prefixes: int, shots: int, seed: int = 0) -> list[str]:
    long = ArithConfig(min_steps=10, max_steps=10)
    examples = generate_problems(shots, long, seed=seed + 1)
    block = "".join(f"{p.question}\n" + "\n".join(parse_question(p.question).steps) + "\n\n" for p in examples)
    prefixes = []
    for p in generate_problems(n_prefixes, long, seed=seed + 2):
        steps = parse_question(p.question).steps
        prefixes.append(f"{block}{p.question}\n" + "\n".join(steps[:7]) + "\n")  # step 8 of 10 comes next
    return prefixes


def timed(policy: TransformersPolicy, prompts: list[str], n: int, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = policy.generate(prompts, n=n, stop=["\n"], max_new_tokens=12, temperature=1.0, seed=0)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefixes", type=int, default=32)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = ap.parse_args()
    quiet_cpu(args.threads)
    reuse = make_policy("world", device=args.device, dtype="float32")
    naive = TransformersPolicy(reuse.model, reuse.tokenizer, reuse_prefix=False)
    rows = []
    for shots in (0, 2, 4):
        prompts = build_prefixes(args.prefixes, shots)
        prefix_tokens = sum(len(reuse.tokenizer(p).input_ids) for p in prompts) / len(prompts)
        t_reuse, r_reuse = timed(reuse, prompts, args.n, args.repeats)
        t_naive, r_naive = timed(naive, prompts, args.n, args.repeats)
        gen = r_reuse.cost.generated_tokens
        rows.append({
            "shots": shots, "mean_prefix_tokens": round(prefix_tokens, 1),
            "mean_continuation_tokens": round(gen / (args.prefixes * args.n), 2),
            "tokens_per_s_reuse": round(gen / t_reuse, 1),
            "tokens_per_s_naive": round(r_naive.cost.generated_tokens / t_naive, 1),
            "ratio": round(t_naive / t_reuse, 2), "identical_outputs": r_reuse.texts() == r_naive.texts(),
        })
    head = rows[-1]
    print(json.dumps({"bench": "prefix_reuse", "device": str(reuse.model.device), "prefixes": args.prefixes,
                      "n": args.n, "threads": args.threads,
                      "tokens_per_s_reuse": head["tokens_per_s_reuse"],
                      "tokens_per_s_naive": head["tokens_per_s_naive"],
                      "ratio": head["ratio"], "identical_outputs": all(r["identical_outputs"] for r in rows),
                      "by_prefix_length": rows}))


if __name__ == "__main__":
    main()
