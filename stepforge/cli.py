"""The ``stepforge`` command line (typer)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Step-level supervision of LLM reasoning: sample, label, train PRMs, search, train.")
console = Console()

Threads = Annotated[int, typer.Option(help="torch CPU threads (1 is fastest for the tiny world model)")]


def _quiet_hf(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    return typer.Exit(code=2)


def _train_world(out: Path, steps: int, seed: int, threads: int) -> Path:
    from stepforge.worlds.arith.policy import PolicyTrainConfig, train_policy

    cfg = PolicyTrainConfig(steps=steps, seed=seed, threads=threads)
    with _progress() as bar:
        task = bar.add_task("training world policy", total=steps, rate="")

        def tick(step: int, total: int, loss: float) -> None:
            if step % 25 == 0 or step == total:
                bar.update(task, completed=step, rate=f"loss {loss:.3f}")

        return train_policy(out, cfg, progress=tick)


@app.command("train-world")
def train_world(
    out: Annotated[Path | None, typer.Option(help="output dir (default: the user cache)")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 2000,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Train the built-in world's tiny policy from scratch on CPU (about 2 min on 2 cores)."""
    from stepforge.worlds.arith.policy import default_cache_dir

    _quiet_hf(threads)
    where = _train_world(out or default_cache_dir(), steps, seed, threads)
    console.print(f"saved policy to [bold]{where}[/bold]")


def _sample_with_progress(policy, problems, task, path: Path, n: int, temperature: float, seed: int,
                          max_new_tokens: int, label: str, id_suffix: str, batch_problems: int):
    from stepforge.backends.base import GenerationCost
    from stepforge.sample import sample_to_file

    cost = GenerationCost()
    with _progress() as bar:
        t = bar.add_task(label, total=len(problems), rate="")
        start, samples = time.perf_counter(), 0

        def on_batch(batch) -> None:
            nonlocal cost, samples
            cost = cost + batch.cost
            samples += len(batch.trajectories)
            dt = max(time.perf_counter() - start, 1e-9)
            bar.update(t, advance=len(batch.trajectories) // n,
                       rate=f"{samples / dt:,.0f} samples/s {cost.generated_tokens / dt:,.0f} tok/s")

        stats = sample_to_file(policy, problems, task, path, n=n, temperature=temperature, seed=seed,
                               max_new_tokens=max_new_tokens, batch_problems=batch_problems,
                               id_suffix=id_suffix, on_batch=on_batch)
        bar.update(t, completed=len(problems))
    if stats.batches_skipped:
        console.print(f"resumed {path}: {stats.batches_skipped} batches were already done")
    return cost


def _report_table(title: str, report: dict) -> Table:
    table = Table(title=title)
    table.add_column("problems")
    cols = [("greedy_accuracy", "greedy"), ("sample_accuracy", "mean sample"),
            ("majority_accuracy", "majority vote"), ("oracle_accuracy", "oracle (any)")]
    for _, name in cols:
        table.add_column(name, justify="right")
    rows = [("all", report)] + [(f"{k} steps", v) for k, v in report.get("by_steps", {}).items()]
    for name, r in rows:
        table.add_row(f"{name} ({r['problems']})",
                      *[f"{r[key]:.1%}" if key in r else "-" for key, _ in cols])
    return table


def _run_sampling_report(policy, problems, task, out: Path, n: int, temperature: float, seed: int,
                         max_new_tokens: int, batch_problems: int, greedy: bool) -> dict:
    from stepforge.eval.sampling import sampling_report
    from stepforge.schema import Trajectory, read_jsonl

    out.mkdir(parents=True, exist_ok=True)
    samples_path, greedy_path = out / "trajectories.jsonl", out / "greedy.jsonl"
    cost = _sample_with_progress(policy, problems, task, samples_path, n, temperature, seed,
                                  max_new_tokens, f"sampling n={n}", "s", batch_problems)
    greedy_records = []
    if greedy:
        _sample_with_progress(policy, problems, task, greedy_path, 1, 0.0, seed, max_new_tokens,
                              "greedy", "g", batch_problems)
        greedy_records = read_jsonl(greedy_path, Trajectory)
    report = sampling_report(problems, read_jsonl(samples_path, Trajectory), task, greedy_records)
    report.update({"backend": getattr(policy, "name", type(policy).__name__), "task": task.name, "n": n,
                   "temperature": temperature, "seed": seed, "generation_cost_this_run": cost.as_dict()})
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def _print_report(report: dict, out: Path) -> None:
    console.print(_report_table(f"{report['task']}: {report['backend']}", report))
    if report.get("step_error_rate") is not None:
        console.print(f"per-step error rate: [bold]{report['step_error_rate']:.1%}[/bold]  "
                      f"(first errors / steps taken up to the first error)")
    console.print(f"unparseable answers: {report['unparseable_rate']:.1%}   "
                  f"mean generated tokens: {report['mean_generated_tokens']:.1f}")
    console.print(f"wrote [bold]{out / 'trajectories.jsonl'}[/bold] and [bold]{out / 'summary.json'}[/bold]")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    problems: Annotated[int, typer.Option(help="number of world problems")] = 200,
    n: Annotated[int, typer.Option(help="samples per problem")] = 16,
    min_steps: int = 4,
    max_steps: int = 6,
    seed: int = 0,
    policy: Annotated[Path | None, typer.Option(help="world policy checkpoint dir (default: shipped)")] = None,
    retrain: Annotated[bool, typer.Option(help="train the world policy from scratch first")] = False,
    search: Annotated[bool, typer.Option(help="also compare majority / best-of-N / beam with the world PRM")] = True,
    threads: Threads = 1,
) -> None:
    """The built-in world end to end: policy, N samples per problem, greedy / majority / oracle,
    then PRM-guided search against majority vote."""
    from stepforge.backends import make_policy
    from stepforge.tasks import ARITH
    from stepforge.worlds.arith.policy import default_cache_dir, resolve_policy_dir
    from stepforge.worlds.arith.problems import ArithConfig, generate_problems

    _quiet_hf(threads)
    start = time.perf_counter()
    if retrain or resolve_policy_dir(policy) is None:
        policy = _train_world(policy or default_cache_dir(), 2000, seed, threads)
    backend = make_policy("world", str(resolve_policy_dir(policy)))
    world_problems = generate_problems(problems, ArithConfig(min_steps=min_steps, max_steps=max_steps),
                                       seed=10_000 + seed, prefix="demo")
    report = _run_sampling_report(backend, world_problems, ARITH, out, n, 1.0, seed, 128, 64, greedy=True)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    _print_report(report, out)
    if search:
        from stepforge.prm.model import ProcessRewardModel
        from stepforge.worlds.arith.policy import SHIPPED_PRM

        hard = generate_problems(100, ArithConfig(min_steps=6, max_steps=8), seed=30_000 + seed, prefix="demo-search")
        _run_search_report(hard, backend, ProcessRewardModel.from_pretrained(SHIPPED_PRM), ARITH,
                           ["majority", "bon", "beam"], [4, 16], out / "search", 64, seed,
                           "search with the world PRM: 100 problems of 6-8 steps")
    console.print(f"done in {round(time.perf_counter() - start, 1)} s")


@app.command()
def sample(
    data: Annotated[str, typer.Option(help="'world', 'gsm8k:<split>', or a JSONL/Parquet/dataset path")] = "world",
    backend: Annotated[str, typer.Option(help="world | transformers | openai | vllm")] = "world",
    model: Annotated[str | None, typer.Option(help="model dir / served model name")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (openai backend)")] = None,
    task: Annotated[str | None, typer.Option(help="arith | gsm8k (default: from --data)")] = None,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/sample"),
    n: int = 16,
    limit: Annotated[int | None, typer.Option(help="first N problems only")] = None,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_problems: Annotated[int, typer.Option(help="problems per backend call")] = 64,
    field: Annotated[list[str] | None, typer.Option(help="field mapping ours=theirs, e.g. question=problem")] = None,
    greedy: Annotated[bool, typer.Option(help="also decode greedily once per problem")] = True,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Sample N solutions per problem from any backend; writes trajectories (resumable) + summary."""
    from stepforge.backends import BackendError, make_policy
    from stepforge.loaders import load_problems
    from stepforge.schema import RecordError
    from stepforge.tasks import get_task
    from stepforge.worlds.arith.problems import generate_problems

    _quiet_hf(threads)
    try:
        if data == "world":
            items = generate_problems(limit or 200, seed=10_000 + seed, prefix="world")
        else:
            mapping = dict(f.split("=", 1) for f in field or [])
            items = load_problems(data, fields=mapping, limit=limit)
        chosen = get_task(task or ("arith" if data == "world" else "gsm8k"))
        policy = make_policy(backend, model, base_url)
        report = _run_sampling_report(policy, items, chosen, out, n, temperature, seed, max_new_tokens,
                                      batch_problems, greedy)
    except (RecordError, FileNotFoundError, ValueError, BackendError) as err:
        raise _fail(str(err)) from None
    _print_report(report, out)


def _backend_options_policy(backend: str, model: str | None, base_url: str | None):
    from stepforge.backends import make_policy

    return make_policy(backend, model, base_url)


def _problems_index(problems: str | None) -> dict | None:
    if not problems:
        return None
    from stepforge.loaders import load_problems

    return {p.id: p for p in load_problems(problems)}


@app.command()
def label(
    input: Annotated[Path, typer.Option("--input", "-i", help="trajectories (JSONL or Parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="labeled trajectories (JSONL, resumable)")],
    method: Annotated[str, typer.Option(help="mc | binary | omegaprm | truth | judge")] = "mc",
    k: Annotated[int, typer.Option(help="rollouts per prefix")] = 8,
    hard: Annotated[bool, typer.Option(help="mc: store hard labels 1[c>0] instead of c/k")] = False,
    early_stop: Annotated[bool, typer.Option(help="mc: stop at the first prefix with no correct rollout")] = False,
    min_correct: Annotated[int, typer.Option(help="binary/omegaprm: correct rollouts to call a prefix good")] = 1,
    searches: Annotated[int, typer.Option(help="omegaprm: extra Q+U-selected tree searches per batch")] = 0,
    balance: Annotated[bool, typer.Option(help="omegaprm: keep extras only while good/bad labels balance")] = False,
    task: Annotated[str, typer.Option(help="arith | gsm8k")] = "arith",
    problems: Annotated[str | None, typer.Option(help="problems with answers (e.g. gsm8k:test)")] = None,
    backend: Annotated[str, typer.Option(help="roll-out / judge backend")] = "world",
    model: str | None = None,
    base_url: str | None = None,
    batch_size: Annotated[int, typer.Option(help="trajectories per batch (one fsync'd append each)")] = 64,
    max_new_tokens: int = 256,
    workers: Annotated[int, typer.Option(help="Ray workers (extra stepforge[ray]); 1 = in process")] = 1,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Label every step of a trajectory file; re-running resumes where it stopped."""
    import functools

    from stepforge.backends import BackendError
    from stepforge.label.runner import LabelConfig, label_file
    from stepforge.schema import RecordError
    from stepforge.tasks import get_task

    _quiet_hf(threads)
    cfg = LabelConfig(method=method, k=k, hard=hard, early_stop=early_stop, min_correct=min_correct,  # type: ignore[arg-type]
                      max_new_tokens=max_new_tokens, seed=seed, searches=searches, balance=balance)
    try:
        chosen = get_task(task)
        policy = None if method == "truth" else _backend_options_policy(backend, model, base_url)
        index = _problems_index(problems)
        from stepforge.schema import Trajectory, read_records

        total = len(read_records(input, Trajectory))
        with _progress() as bar:
            t = bar.add_task(f"labeling ({method})", total=total, rate="")
            start, tokens, done = time.perf_counter(), 0, 0

            def on_batch(batch, records) -> None:
                nonlocal tokens, done
                tokens += sum(r.cost.generated_tokens for r in records)
                done += len(batch.items)
                dt = max(time.perf_counter() - start, 1e-9)
                bar.update(t, advance=len(batch.items), rate=f"{done / dt:,.1f} items/s {tokens / dt:,.0f} tok/s")

            factory = functools.partial(_backend_options_policy, backend, model, base_url)
            stats = label_file(input, out, chosen, cfg, policy, index, batch_size, on_batch,
                               workers=workers, policy_factory=factory)
            bar.update(t, completed=total)
    except (RecordError, FileNotFoundError, ValueError, BackendError) as err:
        raise _fail(str(err)) from None
    if stats.batches_skipped:
        console.print(f"resumed: {stats.batches_skipped} batches were already labeled")
    console.print(f"wrote [bold]{out}[/bold]")


@app.command("label-consensus")
def label_consensus(
    primary: Annotated[Path, typer.Argument(help="labels to keep (e.g. MC)")],
    other: Annotated[Path, typer.Argument(help="labels to agree with (e.g. judge)")],
    out: Annotated[Path, typer.Option("--out", "-o")],
) -> None:
    """Keep trajectories whose first error agrees between two label sources."""
    from stepforge.label.quality import consensus
    from stepforge.schema import RecordError, Trajectory, read_records, write_jsonl

    try:
        result = consensus(read_records(primary, Trajectory), read_records(other, Trajectory))
    except (RecordError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    write_jsonl(out, result.kept)
    r = result.report
    console.print(f"kept {r['kept']} of {r['compared']} compared ({r['kept_share']:.1%}); wrote {out}")


@app.command("label-report")
def label_report(
    labeled: Annotated[list[Path], typer.Argument(help="labeled trajectory files")],
    truth: Annotated[Path | None, typer.Option(help="ground-truth labels (default: the task's exact checker)")] = None,
    task: str = "arith",
    out: Annotated[Path | None, typer.Option(help="also write the report as JSON")] = None,
) -> None:
    """Label quality per source against ground truth: first-error accuracy, bad-step P/R, cost."""
    from stepforge.label.methods import label_truth, problem_of
    from stepforge.label.quality import label_quality
    from stepforge.schema import RecordError, Trajectory, read_records
    from stepforge.tasks import get_task

    try:
        chosen = get_task(task)
        sources = {str(p): read_records(p, Trajectory) for p in labeled}
        if truth is not None:
            gold = read_records(truth, Trajectory)
        else:
            if not chosen.truth_is_exact:
                raise ValueError(f"task {task!r} has no exact checker; pass --truth")
            first = next(iter(sources.values()))
            gold = label_truth(first, [problem_of(t, chosen, None) for t in first], chosen)
    except (RecordError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    reports = {name: label_quality(recs, gold) for name, recs in sources.items()}
    table = Table(title="label quality vs ground truth")
    cols = {"source": "source", "trajectories": "n", "first_error_accuracy": "first-error acc",
            "bad_step_precision": "bad P", "bad_step_recall": "bad R", "step_agreement": "step agree",
            "tokens_per_trajectory": "tokens/traj", "rollouts_per_trajectory": "rollouts/traj"}
    for c in ["file", *cols.values()]:
        table.add_column(c, justify="right")
    for name, r in reports.items():
        table.add_row(Path(name).name, *[str(r[c]) if r[c] is not None else "-" for c in cols])
    console.print(table)
    if out:
        out.write_text(json.dumps(reports, indent=2))


@app.command("train-prm")
def train_prm_cmd(
    train: Annotated[Path, typer.Option(help="labeled trajectories (JSONL/Parquet)")],
    out: Annotated[Path, typer.Option(help="output PRM directory")],
    backbone: Annotated[str | None, typer.Option(help="HF model dir (default: the world policy)")] = None,
    readout: Annotated[str, typer.Option(help="separator | prefix_min")] = "prefix_min",
    logprob_feature: Annotated[bool, typer.Option(help="prefix_min: add the backbone's token log-probs")] = True,
    freeze_backbone: Annotated[bool, typer.Option(help="train only the head")] = True,
    epochs: float = 3.0,
    lr: float = 3e-3,
    batch_size: int = 32,
    hard: Annotated[bool, typer.Option(help="threshold labels at 0.5 (default: soft labels stay soft)")] = False,
    last_step_only: bool = False,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Train a process reward model on step labels (per-step BCE; soft labels stay soft)."""
    from stepforge.prm.model import PRMConfig, ProcessRewardModel
    from stepforge.prm.train import PRMTrainConfig, train_prm
    from stepforge.schema import RecordError, Trajectory, read_records
    from stepforge.worlds.arith.policy import resolve_policy_dir

    _quiet_hf(threads)
    start = time.perf_counter()
    try:
        data = read_records(train, Trajectory)
        cfg = PRMConfig(readout=readout, token_logprob_feature=logprob_feature and readout == "prefix_min")
        model = ProcessRewardModel.from_backbone(backbone or str(resolve_policy_dir()), cfg)
        history = train_prm(model, data, PRMTrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, hard=hard,
                                                        last_step_only=last_step_only, seed=seed,
                                                        freeze_backbone=freeze_backbone))
    except (RecordError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    model.save_pretrained(out)
    losses = [h["loss"] for h in history if "loss" in h]
    import sys

    (out / "stepforge_train.json").write_text(json.dumps({
        "command": " ".join(sys.argv), "train_file": str(train), "trajectories": len(data),
        "train_seconds": round(time.perf_counter() - start, 1), "final_loss": losses[-1] if losses else None,
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "hard": hard, "seed": seed,
        "freeze_backbone": freeze_backbone, "readout": readout}, indent=2))
    console.print(f"trained on {len(data)} trajectories in {time.perf_counter() - start:.0f} s "
                  f"(final loss {losses[-1] if losses else float('nan'):.3f}); saved to [bold]{out}[/bold]")


@app.command()
def score(
    prm: Annotated[Path, typer.Option(help="PRM directory")],
    input: Annotated[Path, typer.Option("--input", "-i")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    format: Annotated[str, typer.Option(help="stepforge | math-shepherd | qwen | rlhflow | token-classification")]
    = "stepforge",
    threads: Threads = 1,
) -> None:
    """Score every step of every trajectory (one forward pass each); scores go to meta.prm_scores."""
    from stepforge.prm.adapters import load_adapter
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.schema import RecordError, Trajectory, read_records, write_jsonl

    _quiet_hf(threads)
    try:
        model = ProcessRewardModel.from_pretrained(prm) if format == "stepforge" else load_adapter(format, str(prm))
        data = read_records(input, Trajectory)
        scores = model.score(data)
    except (RecordError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    write_jsonl(out, [t.model_copy(update={"meta": {**t.meta, "prm_scores": s}})
                      for t, s in zip(data, scores, strict=True)])
    console.print(f"scored {len(data)} trajectories; wrote [bold]{out}[/bold]")


@app.command("eval-prm")
def eval_prm(
    prm: Annotated[Path, typer.Option(help="PRM directory")],
    data: Annotated[Path, typer.Option(help="trajectories, several per problem, with ground truth")],
    task: str = "arith",
    dev_share: Annotated[float, typer.Option(help="share of problems used to calibrate the threshold")] = 0.3,
    policy: Annotated[str | None, typer.Option(help="policy for the log-prob baselines (default: world)")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the report as JSON")] = None,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """First-error F1 (θ calibrated on a dev split of problems), step AUC, baselines, best-of-N."""
    from stepforge.eval.prm_eval import evaluate_prm
    from stepforge.schema import RecordError

    _quiet_hf(threads)
    try:
        report = evaluate_prm(prm, data, task, dev_share=dev_share, policy=policy, seed=seed)
    except (RecordError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    table = Table(title=f"first-error F1 on {report['test_trajectories']} held-out trajectories")
    for c in ("scorer", "threshold", "F1", "acc_err", "acc_ok", "step AUC"):
        table.add_column(c, justify="right")
    for name, r in report["first_error"].items():
        table.add_row(name, "-" if r.get("threshold") is None else f"{r['threshold']:.3g}", f"{r['f1']:.3f}",
                      f"{r['acc_err']:.3f}", f"{r['acc_ok']:.3f}", "-" if r.get("auc") is None else f"{r['auc']:.3f}")
    console.print(table)
    bon = Table(title=f"best-of-N on {report['bon_problems']} problems (N = {report['n']}; 95% bootstrap CI)")
    for c in ("selection", "accuracy", "CI"):
        bon.add_column(c, justify="right")
    for name, r in report["best_of_n"].items():
        bon.add_row(name, f"{r['accuracy']:.1%}", f"{r['ci_low']:.1%} – {r['ci_high']:.1%}")
    console.print(bon)
    if out:
        out.write_text(json.dumps(report, indent=2))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="a file in a public step-label format")],
    fmt: Annotated[str, typer.Option("--from", help="processbench | prm800k | math-shepherd | trl")],
    out: Annotated[Path, typer.Option("--out", "-o", help="trajectories (JSONL or .parquet)")],
    to: Annotated[str, typer.Option(help="stepforge | trl | math-shepherd | processbench")] = "stepforge",
) -> None:
    """Convert public step-label formats to stepforge trajectories (or back out to them)."""
    from stepforge import formats
    from stepforge.schema import RecordError, write_records

    try:
        records = formats.import_file(source, fmt)
        if to == "stepforge":
            write_records(out, records)
        else:
            writer = {"trl": formats.to_trl, "math-shepherd": formats.to_math_shepherd,
                      "processbench": formats.to_processbench}.get(to)
            if writer is None:
                raise ValueError(f"unknown output format {to!r}")
            out.write_text("".join(json.dumps(writer(t)) + "\n" for t in records))
    except (RecordError, ValueError) as err:
        raise _fail(str(err)) from None
    console.print(f"converted {len(records)} records from {fmt} to {to}: [bold]{out}[/bold]")


def _search_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for c in ("method", "N", "accuracy", "95% CI", "gen tokens / problem", "PRM seqs / problem", "s / problem"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["method"], str(r["n"]), f"{r['accuracy']:.1%}", f"{r['ci_low']:.1%} – {r['ci_high']:.1%}",
                      f"{r['generated_tokens']:,.0f}", f"{r['prm_sequences']:,.1f}", f"{r['wall_seconds']:.3f}")
    return table


def _run_search_report(problems, policy, scorer, task, methods, budgets, out: Path, batch_problems: int,
                       seed: int, title: str) -> list[dict]:
    from stepforge.schema import read_jsonl
    from stepforge.search.runner import SearchRecord, plot, run_search, summarize

    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    total = len(methods) * len(budgets) * len(problems)
    with _progress() as bar:
        t = bar.add_task("searching", total=total, rate="")

        def on_batch(batch, records) -> None:
            m, n, _ = batch.items[0]
            bar.update(t, advance=len(records), rate=f"{m} N={n}")

        stats = run_search(problems, policy, scorer, task, methods, budgets, results, batch_problems=batch_problems,
                           seed=seed, on_batch=on_batch)
        bar.update(t, completed=total)
    if stats.batches_skipped:
        console.print(f"resumed {results}: {stats.batches_skipped} batches were already done")
    wanted = {(m, n) for m in methods for n in budgets}
    rows = [r for r in summarize(read_jsonl(results, SearchRecord)) if (r["method"], r["n"]) in wanted]
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    png = plot(rows, out / "accuracy_vs_compute.png", title)
    console.print(_search_table(rows, title))
    console.print(f"wrote [bold]{results}[/bold], [bold]{out / 'summary.json'}[/bold] and [bold]{png}[/bold]")
    return rows


@app.command()
def search(
    data: Annotated[str, typer.Option(help="'world', 'gsm8k:<split>', or a JSONL/Parquet/dataset path")] = "world",
    prm: Annotated[Path | None, typer.Option(help="PRM directory (default for world: the shipped world PRM)")] = None,
    prm_format: Annotated[str, typer.Option(help="stepforge | math-shepherd | qwen | rlhflow | token-classification")]
    = "stepforge",
    methods: Annotated[str, typer.Option(
        help="comma list of greedy, majority, bon, bon_mean, weighted, oracle, beam, dvts, mcts")]
    = "majority,bon,beam",
    budgets: Annotated[str, typer.Option(help="comma list of N")] = "16",
    compare: Annotated[bool, typer.Option(help="all methods over N = 1, 2, 4, ..., 64")] = False,
    backend: str = "world",
    model: str | None = None,
    base_url: str | None = None,
    task: Annotated[str | None, typer.Option(help="arith | gsm8k (default: from --data)")] = None,
    limit: Annotated[int, typer.Option(help="number of problems")] = 100,
    min_steps: int = 6,
    max_steps: int = 8,
    out: Path = Path("runs/search"),
    batch_problems: int = 64,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """PRM-guided test-time search; every result carries its compute. Re-running resumes."""
    from stepforge.backends import BackendError, make_policy
    from stepforge.loaders import load_problems
    from stepforge.prm.adapters import load_adapter
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.schema import RecordError
    from stepforge.tasks import get_task
    from stepforge.worlds.arith.policy import SHIPPED_PRM
    from stepforge.worlds.arith.problems import ArithConfig, generate_problems

    _quiet_hf(threads)
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    if compare:
        method_list = ["greedy", "majority", "bon", "weighted", "beam", "dvts", "mcts", "oracle"]
        budget_list = [1, 2, 4, 8, 16, 32, 64]
    try:
        if data == "world":
            items = generate_problems(limit, ArithConfig(min_steps=min_steps, max_steps=max_steps),
                                      seed=20_000 + seed, prefix="search")
        else:
            items = load_problems(data, limit=limit)
        chosen = get_task(task or ("arith" if data == "world" else "gsm8k"))
        policy = make_policy(backend, model, base_url)
        prm_dir = prm or (SHIPPED_PRM if chosen.name == "arith" else None)
        scorer = None
        if prm_dir is not None:
            scorer = (ProcessRewardModel.from_pretrained(prm_dir) if prm_format == "stepforge"
                      else load_adapter(prm_format, str(prm_dir)))
        _run_search_report(items, policy, scorer, chosen, method_list, budget_list, out, batch_problems, seed,
                           f"{chosen.name}: {len(items)} problems")
    except (RecordError, FileNotFoundError, ValueError, BackendError) as err:
        raise _fail(str(err)) from None


@app.command()
def pairs(
    input: Annotated[Path, typer.Option("--input", "-i", help="labeled trajectories (first_error set)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="step pairs (JSONL, TRL DPO columns)")],
    candidates: Annotated[int, typer.Option(help="alternative steps sampled per first error")] = 8,
    k: Annotated[int, typer.Option(help="rollouts verifying each alternative")] = 4,
    min_value: Annotated[float, typer.Option(help="least MC value of a chosen step")] = 0.5,
    task: str = "arith",
    problems: Annotated[str | None, typer.Option(help="problems with answers (e.g. gsm8k:test)")] = None,
    backend: str = "world",
    model: str | None = None,
    base_url: str | None = None,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Step-DPO pairs: rejected = the first wrong step, chosen = a rollout-verified alternative."""
    from stepforge.backends import BackendError
    from stepforge.label.methods import problem_of
    from stepforge.schema import RecordError, Trajectory, read_records, write_jsonl
    from stepforge.tasks import get_task
    from stepforge.train.pairs import step_dpo_pairs

    _quiet_hf(threads)
    try:
        chosen_task = get_task(task)
        data = [t for t in read_records(input, Trajectory) if t.first_error is not None]
        index = _problems_index(problems)
        result = step_dpo_pairs(data, [problem_of(t, chosen_task, index) for t in data],
                                _backend_options_policy(backend, model, base_url), chosen_task,
                                candidates=candidates, k=k, seed=seed, min_value=min_value)
    except (RecordError, FileNotFoundError, ValueError, BackendError) as err:
        raise _fail(str(err)) from None
    write_jsonl(out, result)
    console.print(f"{len(result)} pairs from {len(data)} trajectories with a first error; wrote [bold]{out}[/bold]")


@app.command("train-dpo")
def train_dpo_cmd(
    pairs_file: Annotated[Path, typer.Option("--pairs", help="step pairs (JSONL)")],
    out: Annotated[Path, typer.Option(help="output policy directory")],
    policy: Annotated[str | None, typer.Option(help="policy dir (default: the world policy)")] = None,
    orpo: Annotated[bool, typer.Option(help="ORPO instead of DPO (no reference model)")] = False,
    beta: Annotated[float, typer.Option(help="DPO β (large: stops pushing once a step is preferred)")] = 0.5,
    lr: Annotated[float, typer.Option(help="constant learning rate; small policies need it small")] = 3e-6,
    epochs: float = 1.0,
    batch_size: int = 64,
    sft_weight: Annotated[float, typer.Option(help="DPO: weight of an NLL term on the chosen step")] = 0.0,
    threads: Threads = 1,
) -> None:
    """Train a policy on step pairs with TRL's DPOTrainer (or ORPO) and save it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepforge.schema import RecordError, StepPair, read_records
    from stepforge.train.dpo import train_dpo, train_orpo
    from stepforge.worlds.arith.policy import resolve_policy_dir

    _quiet_hf(threads)
    try:
        data = read_records(pairs_file, StepPair)
        where = policy or str(resolve_policy_dir())
        model, tok = AutoModelForCausalLM.from_pretrained(where), AutoTokenizer.from_pretrained(where)
        if orpo:
            train_orpo(model, tok, data, lr=lr, steps=max(1, int(epochs * len(data) / batch_size)),
                       batch_size=batch_size)
        else:
            train_dpo(model, tok, data, beta=beta, lr=lr, epochs=epochs, sft_weight=sft_weight,
                      batch_size=batch_size)
    except (RecordError, FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    console.print(f"trained on {len(data)} pairs; saved to [bold]{out}[/bold] (use it with --backend transformers "
                  f"--model {out})")


@app.command()
def rl(
    out: Annotated[Path, typer.Option(help="run directory (metrics.jsonl, checkpoint.pt); re-run resumes")],
    credit: Annotated[str, typer.Option(help="outcome | sum | min | min_vr")] = "min",
    steps: int = 60,
    lr: Annotated[float, typer.Option(help="Adam learning rate (1e-2 suits --trainable norm)")] = 1e-2,
    trainable: Annotated[str, typer.Option(help="train only parameters whose names contain one of these "
                                                "comma-separated parts ('' = all; then use lr ~1e-6)")] = "norm",
    kl_coef: float = 0.05,
    problems_per_step: int = 16,
    samples_per_problem: int = 8,
    temperature: Annotated[float, typer.Option(help="sampling temperature of the RL policy")] = 1.0,
    gamma: Annotated[float, typer.Option(help="sum-form discount")] = 1.0,
    baseline: Annotated[str, typer.Option(help="grpo (group mean/std) | rloo (leave-one-out mean)")] = "grpo",
    prm: Annotated[str | None, typer.Option(help="PRM directory (default: the shipped world PRM), or 'implicit': "
                                                 "an implicit PRM started from the policy (PRIME)")] = None,
    prm_online_steps: Annotated[int, typer.Option(help="implicit PRM: refit steps on each batch's outcomes")] = 0,
    policy: Annotated[str | None, typer.Option(help="policy dir (default: the world policy)")] = None,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """RL on the built-in world with step-level credit assignment and hacking monitors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepforge.prm.implicit import ImplicitPRM
    from stepforge.prm.model import ProcessRewardModel
    from stepforge.train.rl import RLConfig, train_rl
    from stepforge.worlds.arith.policy import SHIPPED_PRM, resolve_policy_dir

    _quiet_hf(threads)
    try:
        cfg = RLConfig(credit=credit, steps=steps, lr=lr, kl_coef=kl_coef, problems_per_step=problems_per_step,
                       samples_per_problem=samples_per_problem, seed=seed, temperature=temperature, gamma=gamma,
                       baseline=baseline,
                       trainable=tuple(x for x in trainable.split(",") if x), prm_online_steps=prm_online_steps)
        where = policy or str(resolve_policy_dir())
        model, tok = AutoModelForCausalLM.from_pretrained(where), AutoTokenizer.from_pretrained(where)
        if credit == "outcome":
            scorer = None
        elif prm == "implicit":
            scorer = ImplicitPRM(AutoModelForCausalLM.from_pretrained(where), tok)
        else:
            scorer = ProcessRewardModel.from_pretrained(prm or SHIPPED_PRM)
        with _progress() as bar:
            t = bar.add_task(f"RL ({credit})", total=steps, rate="")

            def on_step(row) -> None:
                bar.update(t, completed=row["step"], rate=f"acc {row['accuracy']:.2f} len {row['mean_tokens']:.0f}")
                for w in row["warnings"]:
                    console.print(f"[yellow]step {row['step']}: {w}[/yellow]")

            train_rl(model, tok, out, cfg, scorer, on_step=on_step)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from None
    model.save_pretrained(out / "policy")
    tok.save_pretrained(out / "policy")
    console.print(f"metrics in [bold]{out / 'metrics.jsonl'}[/bold]; policy in [bold]{out / 'policy'}[/bold]")


@app.command()
def serve(
    backend: str = "world",
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: Annotated[str, typer.Option(help="model name the server answers to")] = "stepforge-world",
    threads: Threads = 1,
) -> None:
    """Serve a local policy over an OpenAI-compatible /v1/completions endpoint."""
    from stepforge.backends import make_policy
    from stepforge.backends.server import PolicyServer

    _quiet_hf(threads)
    server = PolicyServer(make_policy(backend, model), host=host, port=port, model_name=name, verbose=True)
    console.print(f"serving {name} at {server.base_url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
