"""Run search methods over budgets, resumably, and summarise accuracy against compute."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from stepforge.backends.base import Policy
from stepforge.jobs import Batch, JobStats, run_resumable
from stepforge.schema import Problem
from stepforge.search.base import Scorer, SearchResult, whole_sample_search
from stepforge.search.beam import beam_search, dvts
from stepforge.search.mcts import mcts
from stepforge.tasks import Task

NEEDS_PRM = {"bon", "weighted", "beam", "dvts", "mcts"}


def _beam_like(fn, problems, policy, scorer, task, n, seed=0):
    return fn(problems, policy, scorer, task, n, width=min(4, n), seed=seed)


def greedy(problems, policy, scorer, task, n, seed=0):
    """One greedy (temperature 0) solution per problem, whatever the budget: the baseline that
    every sampling method has to beat."""
    return whole_sample_search(problems, policy, None, task, 1, rule="majority", temperature=0.0, seed=seed)


METHODS: dict[str, Callable[..., list[SearchResult]]] = {
    "greedy": greedy,
    "majority": partial(whole_sample_search, rule="majority"),
    "bon": partial(whole_sample_search, rule="bon", aggregation="min"),
    "bon_mean": partial(whole_sample_search, rule="bon", aggregation="mean"),
    "weighted": partial(whole_sample_search, rule="weighted", aggregation="min"),
    "oracle": partial(whole_sample_search, rule="oracle"),
    "beam": partial(_beam_like, beam_search),
    "dvts": partial(_beam_like, dvts),
    "mcts": mcts,
}


class SearchRecord(BaseModel):
    id: str
    problem_id: str
    method: str
    n: int
    answer: str | None
    correct: bool
    steps: list[str]
    cost: dict[str, Any]
    trace: dict[str, Any] = Field(default_factory=dict)


def run_search(problems: Sequence[Problem], policy: Policy, scorer: Scorer | None, task: Task,
               methods: Sequence[str], budgets: Sequence[int], out: str | Path, *, batch_problems: int = 64,
               seed: int = 0, on_batch: Callable[[Batch, list[SearchRecord]], None] | None = None) -> JobStats:
    """Every method at every budget on every problem; one fsync'd append per (method, budget,
    problem batch), and a restart skips what is done."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown search method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if scorer is None and NEEDS_PRM & set(methods):
        raise ValueError(f"methods {', '.join(sorted(NEEDS_PRM & set(methods)))} need a PRM (--prm)")
    chunks = [list(problems[i:i + batch_problems]) for i in range(0, len(problems), batch_problems)]
    jobs = [(m, n, chunk) for n in budgets for m in methods for chunk in chunks]
    batches = [Batch(b, [(m, n, chunk)], [f"{m}/{n}/{p.id}" for p in chunk]) for b, (m, n, chunk) in enumerate(jobs)]

    def process(batch: Batch) -> list[SearchRecord]:
        method, n, chunk = batch.items[0]
        results = METHODS[method](chunk, policy, scorer, task, n, seed=seed + batch.index)
        return [SearchRecord(id=f"{method}/{n}/{r.problem_id}", **r.as_record(method, n)) for r in results]

    return run_resumable(out, batches, SearchRecord, process, id_of=lambda r: r.id, on_batch=on_batch)


def summarize(records: Sequence[SearchRecord], resamples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Accuracy with a 95% bootstrap CI over problems, and mean compute per problem, for each
    (method, budget)."""
    groups: dict[tuple[str, int], list[SearchRecord]] = defaultdict(list)
    for r in records:
        groups[(r.method, r.n)].append(r)
    rng = random.Random(seed)
    rows = []
    for (method, n), rs in sorted(groups.items()):
        vals = [float(r.correct) for r in rs]
        k = len(vals)
        means = sorted(sum(vals[rng.randrange(k)] for _ in range(k)) / k for _ in range(resamples))
        rows.append({"method": method, "n": n, "problems": k, "accuracy": sum(vals) / k,
                     "ci_low": means[int(0.025 * resamples)], "ci_high": means[int(0.975 * resamples) - 1],
                     "generated_tokens": sum(r.cost["generated_tokens"] for r in rs) / k,
                     "prm_sequences": sum(r.cost["prm_sequences"] for r in rs) / k,
                     "wall_seconds": sum(r.cost["wall_seconds"] for r in rs) / k})
    return rows


def plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy vs generated tokens per problem, one line per method, bootstrap CIs as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    for method, rs in sorted(by_method.items()):
        rs = sorted(rs, key=lambda r: r["generated_tokens"])
        x = [r["generated_tokens"] for r in rs]
        y = [r["accuracy"] for r in rs]
        err = [[r["accuracy"] - r["ci_low"] for r in rs], [r["ci_high"] - r["accuracy"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method, linestyle="--" if method == "oracle" else "-")
        for r in rs:
            ax.annotate(f"N={r['n']}", (r["generated_tokens"], r["accuracy"]), fontsize=6, alpha=0.6,
                        textcoords="offset points", xytext=(2, 3))
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs test-time compute (95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
