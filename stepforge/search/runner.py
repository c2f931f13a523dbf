"""Run search methods over budgets, resumably, and summarise accuracy against compute."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from stepforge.backends.base import Policy
from stepforge.jobs import Batch, JobStats, run_resumable
from stepforge.schema import Problem
from stepforge.search.base import Scorer, SearchResult, sample_and_score, select_from_samples, whole_sample_search
from stepforge.search.beam import beam_search, dvts
from stepforge.search.mcts import mcts
from stepforge.search.vote import AGGREGATIONS
from stepforge.tasks import Task

NEEDS_PRM = {"bon", "bon_mean", "weighted", "beam", "dvts", "mcts"}


@dataclass(frozen=True)
class SearchConfig:
    """Settings of every search method; the CLI reads its defaults from here."""

    temperature: float = 1.0  # sampling temperature of every method but greedy
    width: int = 4  # beam / DVTS: expansions per beam (M); budgets below it use M = N
    aggregation: str = "min"  # bon / weighted: step scores -> solution score
    beam_aggregation: str = "last"  # beam / DVTS ranking of partial solutions
    mcts_children: int = 2
    c_puct: float = 0.2
    max_step_tokens: int = 64
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"search samples: temperature must be > 0, got {self.temperature}")
        if self.width < 1 or self.mcts_children < 1 or self.max_step_tokens < 1 or self.max_new_tokens < 1:
            raise ValueError("width, mcts_children, max_step_tokens and max_new_tokens must be >= 1")
        for how in (self.aggregation, self.beam_aggregation):
            if how not in AGGREGATIONS:
                raise ValueError(f"unknown aggregation {how!r}; choose from {', '.join(AGGREGATIONS)}")


def _beam_like(fn, problems, policy, scorer, task, n, seed=0, cfg: SearchConfig = SearchConfig()):
    return fn(problems, policy, scorer, task, n, width=min(cfg.width, n), seed=seed, aggregation=cfg.beam_aggregation,
              max_step_tokens=cfg.max_step_tokens, temperature=cfg.temperature)


def greedy(problems, policy, scorer, task, n, seed=0, cfg: SearchConfig = SearchConfig()):
    """One greedy (temperature 0) solution per problem, whatever the budget: the baseline that
    every sampling method has to beat."""
    return whole_sample_search(problems, policy, None, task, 1, rule="majority", temperature=0.0, seed=seed,
                               max_new_tokens=cfg.max_new_tokens)


def _mcts(problems, policy, scorer, task, n, seed=0, cfg: SearchConfig = SearchConfig()):
    return mcts(problems, policy, scorer, task, n, children=cfg.mcts_children, c_puct=cfg.c_puct, seed=seed,
                max_step_tokens=cfg.max_step_tokens, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)


def _whole_sample(problems, policy, scorer, task, n, seed=0, cfg: SearchConfig = SearchConfig(), *, rule: str,
                  aggregation: str | None = None):
    return whole_sample_search(problems, policy, scorer, task, n, seed=seed, rule=rule,
                               aggregation=aggregation or cfg.aggregation, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature)


# whole-sample rules: every budget selects among the first N of one shared set of samples
WHOLE_SAMPLE: dict[str, tuple[str, str | None]] = {
    "majority": ("majority", None), "bon": ("bon", None), "bon_mean": ("bon", "mean"),
    "weighted": ("weighted", None), "oracle": ("oracle", None),
}

METHODS: dict[str, Callable[..., list[SearchResult]]] = {
    "greedy": greedy,
    **{name: partial(_whole_sample, rule=rule, aggregation=agg) for name, (rule, agg) in WHOLE_SAMPLE.items()},
    "beam": partial(_beam_like, beam_search),
    "dvts": partial(_beam_like, dvts),
    "mcts": _mcts,
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
               seed: int = 0, on_batch: Callable[[Batch, list[SearchRecord]], None] | None = None,
               cfg: SearchConfig | None = None) -> JobStats:
    """Every method at every budget on every problem; one fsync'd append per (method, budget,
    problem batch), and a restart skips what is done.

    Whole-sample rules (majority, best-of-N, weighted vote, oracle) share one set of samples
    per problem, drawn once at the largest budget: every rule at every N selects among the
    first N of the same samples, so their comparison is paired. Every draw is seeded by the
    problem (:mod:`stepforge.seeds`), so a resumed run draws the same samples."""
    cfg = cfg or SearchConfig()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown search method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if scorer is None and NEEDS_PRM & set(methods):
        raise ValueError(f"methods {', '.join(sorted(NEEDS_PRM & set(methods)))} need a PRM (--prm)")
    if not problems:
        raise ValueError("no problems to search")
    chunks = [list(problems[i:i + batch_problems]) for i in range(0, len(problems), batch_problems)]
    jobs = [(m, n, c) for n in budgets for m in methods for c in range(len(chunks))]
    batches = [Batch(b, [(m, n, c)], [f"{m}/{n}/{p.id}" for p in chunks[c]]) for b, (m, n, c) in enumerate(jobs)]
    pool_n = max(budgets)
    pool_scored = any(WHOLE_SAMPLE[m][0] in ("bon", "weighted") for m in methods if m in WHOLE_SAMPLE)
    pools: dict[int, tuple] = {}

    def shared_samples(c: int):
        if c not in pools:
            pools[c] = sample_and_score(chunks[c], policy, scorer if pool_scored else None, task, pool_n, seed,
                                        cfg.max_new_tokens, cfg.temperature)
        return pools[c]

    def process(batch: Batch) -> list[SearchRecord]:
        method, n, c = batch.items[0]
        if method in WHOLE_SAMPLE:
            rule, agg = WHOLE_SAMPLE[method]
            groups, scores, cost = shared_samples(c)
            results = select_from_samples(chunks[c], groups, scores, cost, task, n, rule, agg or cfg.aggregation)
        else:
            results = METHODS[method](chunks[c], policy, scorer, task, n, seed=seed, cfg=cfg)
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
