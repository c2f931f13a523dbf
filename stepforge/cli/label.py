"""Labeling commands: label, label-consensus, label-report."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stepforge.cli.common import (
    Backend,
    BaseUrl,
    ChatFlag,
    Device,
    Dtype,
    Model,
    Overwrite,
    PromptsPerRequest,
    Retries,
    SkipTooLong,
    Threads,
    Timeout,
    TokenizerDir,
    command,
    console,
    data_identity,
    make_cli_policy,
    policy_identity,
    problems_index,
    progress,
    quiet_hf,
    refuse_existing,
    resolve_task,
)


@command()
def label(
    input: Annotated[Path, typer.Option("--input", "-i", help="trajectories (JSONL or Parquet)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="labeled trajectories (JSONL, resumable)")],
    method: Annotated[str, typer.Option(help="mc | binary | omegaprm | truth | judge")] = "mc",
    k: Annotated[int, typer.Option(min=1, help="rollouts per prefix")] = 8,
    hard: Annotated[bool, typer.Option(help="mc: store hard labels 1[c>0] instead of c/k")] = False,
    early_stop: Annotated[bool, typer.Option(help="mc: stop at the first prefix with no correct rollout")] = False,
    min_correct: Annotated[int, typer.Option(min=1, help="binary/omegaprm: correct rollouts to call a prefix "
                                                         "good (at most --k)")] = 1,
    searches: Annotated[int, typer.Option(min=0, help="omegaprm: extra Q+U-selected tree searches per batch")] = 0,
    balance: Annotated[bool, typer.Option(help="omegaprm: keep extras only while good/bad labels balance")] = False,
    task: Annotated[str, typer.Option(help="arith | gsm8k | math | a registered task")] = "arith",
    problems: Annotated[str | None, typer.Option(help="problems with answers (e.g. gsm8k:test)")] = None,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    batch_size: Annotated[int, typer.Option(min=1, help="trajectories per batch (one fsync'd append each)")] = 64,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    workers: Annotated[int, typer.Option(min=1, help="Ray workers (extra stepforge[ray]); 1 = in process")] = 1,
    chat: ChatFlag = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    timeout: Timeout = 60.0,
    retries: Retries = 3,
    prompts_per_request: PromptsPerRequest = 16,
    tokenizer: TokenizerDir = None,
    overwrite: Overwrite = False,
    skip_too_long: SkipTooLong = False,
    threads: Threads = 1,
) -> None:
    """Label every step of a trajectory file; re-running resumes where it stopped."""
    from stepforge.label.runner import METHODS, LabelConfig, label_file
    from stepforge.runs import claim_output, fingerprint
    from stepforge.schema import Trajectory, read_records

    quiet_hf(threads)
    if method not in METHODS:
        raise ValueError(f"unknown label method {method!r}; choose from {', '.join(METHODS)}")
    if min_correct > k:
        raise ValueError(f"--min-correct {min_correct} can never be reached with --k {k} rollouts")
    cfg = LabelConfig(method=method, k=k, hard=hard, early_stop=early_stop, min_correct=min_correct,  # type: ignore[arg-type]
                      max_new_tokens=max_new_tokens, seed=seed, searches=searches, balance=balance)
    total = len(read_records(input, Trajectory, unique_ids=True))  # an empty or bad input stops here
    options = (backend, model, base_url, device, dtype, timeout, retries, prompts_per_request, tokenizer)
    policy = None if method == "truth" else make_cli_policy(*options)
    chosen = resolve_task(task, "", chat, policy)
    index = problems_index(problems)
    identity = {"command": "label", "input": fingerprint(input), "method": method, "k": k, "hard": hard,
                "early_stop": early_stop, "min_correct": min_correct, "searches": searches, "balance": balance,
                "task": chosen.name, "chat": chosen.chat, "problems": data_identity(problems) if problems else None,
                "policy": policy_identity(backend, model, base_url) if policy is not None else None,
                "batch_size": batch_size, "max_new_tokens": max_new_tokens, "seed": seed}
    claim_output(out, identity, overwrite=overwrite)
    with progress() as bar:
        t = bar.add_task(f"labeling ({method})", total=total, rate="")
        start, tokens, done = time.perf_counter(), 0, 0

        def on_batch(batch, records) -> None:
            nonlocal tokens, done
            tokens += sum(r.cost.generated_tokens for r in records)
            done += len(batch.items)
            dt = max(time.perf_counter() - start, 1e-9)
            bar.update(t, advance=len(batch.items), rate=f"{done / dt:,.1f} items/s {tokens / dt:,.0f} tok/s")

        factory = functools.partial(make_cli_policy, *options)
        stats = label_file(input, out, chosen, cfg, policy, index, batch_size, on_batch,
                           workers=workers, policy_factory=factory, skip_too_long=skip_too_long)
        bar.update(t, completed=total)
    if stats.batches_skipped:
        console.print(f"resumed: {stats.batches_skipped} batches were already labeled")
    console.print(f"wrote [bold]{out}[/bold]")


@command("label-consensus")
def label_consensus(
    primary: Annotated[Path, typer.Argument(help="labels to keep (e.g. MC)")],
    other: Annotated[Path, typer.Argument(help="labels to agree with (e.g. judge)")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    overwrite: Overwrite = False,
) -> None:
    """Keep trajectories whose first error agrees between two label sources."""
    from stepforge.label.quality import consensus
    from stepforge.runs import atomic_write_jsonl
    from stepforge.schema import Trajectory, read_records

    result = consensus(read_records(primary, Trajectory, unique_ids=True),
                       read_records(other, Trajectory, unique_ids=True))
    r = result.report
    if not r["compared"]:
        raise ValueError(f"{primary} and {other} share no trajectory ids: nothing to compare")
    refuse_existing(out, overwrite)
    atomic_write_jsonl(out, result.kept)
    console.print(f"kept {r['kept']} of {r['compared']} compared ({r['kept_share']:.1%}); wrote {out}")


@command("label-report")
def label_report(
    labeled: Annotated[list[Path], typer.Argument(help="labeled trajectory files")],
    truth: Annotated[Path | None, typer.Option(help="ground-truth labels (default: the task's exact checker)")] = None,
    task: str = "arith",
    out: Annotated[Path | None, typer.Option(help="also write the report as JSON")] = None,
) -> None:
    """Label quality per source against ground truth: first-error accuracy, bad-step P/R, cost."""
    from stepforge.label.methods import label_truth, problem_of
    from stepforge.label.quality import label_quality
    from stepforge.runs import atomic_write_json
    from stepforge.schema import Trajectory, read_records
    from stepforge.tasks import get_task

    chosen = get_task(task)
    sources = {str(p): read_records(p, Trajectory, unique_ids=True) for p in labeled}
    if truth is not None:
        gold = read_records(truth, Trajectory, unique_ids=True)
    else:
        if not chosen.truth_is_exact:
            raise ValueError(f"task {task!r} has no exact checker; pass --truth")
        first = next(iter(sources.values()))
        gold = label_truth(first, [problem_of(t, chosen, None) for t in first], chosen)
    gold_ids = {g.id for g in gold}
    for name, recs in sources.items():
        if not gold_ids & {t.id for t in recs}:
            raise ValueError(f"{name} shares no trajectory ids with the ground truth "
                             f"({truth or 'the first file'}): nothing to compare")
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
        atomic_write_json(out, reports)
        console.print(f"wrote {json.dumps(str(out))}")
