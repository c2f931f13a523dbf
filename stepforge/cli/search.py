"""Search command: PRM-guided test-time search with its compute."""

from __future__ import annotations

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
    Threads,
    Timeout,
    TokenizerDir,
    comma_ints,
    comma_list,
    command,
    console,
    data_identity,
    load_data,
    make_cli_policy,
    policy_identity,
    progress,
    quiet_hf,
    resolve_task,
    world_in,
)
from stepforge.cli.prm import PRMFormat, load_scorer


def search_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for c in ("method", "N", "accuracy", "95% CI", "gen tokens / problem", "PRM seqs / problem", "s / problem"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["method"], str(r["n"]), f"{r['accuracy']:.1%}", f"{r['ci_low']:.1%} – {r['ci_high']:.1%}",
                      f"{r['generated_tokens']:,.0f}", f"{r['prm_sequences']:,.1f}", f"{r['wall_seconds']:.3f}")
    return table


def run_search_report(problems, policy, scorer, task, methods, budgets, out: Path, batch_problems: int,
                      seed: int, title: str, identity: dict, overwrite: bool = False, cfg=None) -> list[dict]:
    """Search into ``out`` (claimed by ``identity``; methods and budgets may be added on a
    re-run), then write the summary and plot atomically."""
    from stepforge.runs import atomic_write_json, claim_output
    from stepforge.schema import read_jsonl
    from stepforge.search.runner import SearchConfig, SearchRecord, plot, run_search, summarize

    cfg = cfg or SearchConfig()
    claim_output(out, {**identity, "search": cfg.__dict__}, overwrite=overwrite)
    results = out / "results.jsonl"
    total = len(methods) * len(budgets) * len(problems)
    with progress() as bar:
        t = bar.add_task("searching", total=total, rate="")

        def on_batch(batch, records) -> None:
            m, n, _ = batch.items[0]
            bar.update(t, advance=len(records), rate=f"{m} N={n}")

        stats = run_search(problems, policy, scorer, task, methods, budgets, results, batch_problems=batch_problems,
                           seed=seed, on_batch=on_batch, cfg=cfg)
        bar.update(t, completed=total)
    if stats.batches_skipped:
        console.print(f"resumed {results}: {stats.batches_skipped} batches were already done")
    wanted = {(m, n) for m in methods for n in budgets}
    rows = [r for r in summarize(read_jsonl(results, SearchRecord)) if (r["method"], r["n"]) in wanted]
    atomic_write_json(out / "summary.json", rows)
    png = plot(rows, out / "accuracy_vs_compute.png", title)
    console.print(search_table(rows, title))
    console.print(f"wrote [bold]{results}[/bold], [bold]{out / 'summary.json'}[/bold] and [bold]{png}[/bold]")
    return rows


@command()
def search(
    data: Annotated[str, typer.Option(help="'world', 'gsm8k:<split>', 'math500', or a JSONL/Parquet/dataset "
                                           "path")] = "world",
    prm: Annotated[Path | None, typer.Option(help="PRM directory (default for a world: its shipped PRM)")] = None,
    prm_format: PRMFormat = "stepforge",
    methods: Annotated[str, typer.Option(
        help="comma list of greedy, majority, bon, bon_mean, weighted, oracle, beam, dvts, mcts")]
    = "majority,bon,beam",
    budgets: Annotated[str, typer.Option(help="comma list of N")] = "16",
    compare: Annotated[bool, typer.Option(help="all methods over N = 1, 2, 4, ..., 64")] = False,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    task: Annotated[str | None, typer.Option(help="arith | gsm8k | math (default: from --data)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="number of problems")] = 100,
    min_steps: Annotated[int, typer.Option(min=1, help="world problems: fewest steps")] = 6,
    max_steps: Annotated[int, typer.Option(min=1, help="world problems: most steps")] = 8,
    temperature: Annotated[float | None, typer.Option(min=0.001, help="sampling temperature (default: "
                                                                      "SearchConfig's)")] = None,
    width: Annotated[int | None, typer.Option(min=1, help="beam/DVTS width M")] = None,
    aggregation: Annotated[str | None, typer.Option(help="bon/weighted: min | last | prod | mean")] = None,
    out: Path = Path("runs/search"),
    batch_problems: Annotated[int, typer.Option(min=1)] = 64,
    chat: ChatFlag = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    timeout: Timeout = 60.0,
    retries: Retries = 3,
    prompts_per_request: PromptsPerRequest = 16,
    tokenizer: TokenizerDir = None,
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """PRM-guided test-time search; every result carries its compute. Re-running resumes."""
    from dataclasses import replace

    from stepforge.runs import fingerprint
    from stepforge.search.runner import SearchConfig
    from stepforge.tasks import world_of

    quiet_hf(threads)
    method_list = comma_list(methods)
    budget_list = comma_ints(budgets, "--budgets")
    if compare:
        method_list = ["greedy", "majority", "bon", "weighted", "beam", "dvts", "mcts", "oracle"]
        budget_list = [1, 2, 4, 8, 16, 32, 64]
    given = {"temperature": temperature, "width": width, "aggregation": aggregation}
    cfg = replace(SearchConfig(), **{k: v for k, v in given.items() if v is not None})
    items = load_data(data, limit, seed, min_steps=min_steps, max_steps=max_steps, prefix="search", seed_offset=20_000)
    policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request, tokenizer,
                             world_in(data))
    chosen = resolve_task(task, data, chat, policy)
    world = world_of(chosen)
    prm_dir = prm or (world.prm_dir if world is not None else None)
    scorer = load_scorer(prm_dir, prm_format, device, dtype) if prm_dir is not None else None
    identity = {"command": "search", "data": data_identity(data), "limit": limit, "min_steps": min_steps,
                "max_steps": max_steps, "task": chosen.name, "chat": chosen.chat,
                **policy_identity(backend, model, base_url, world_in(data)), "prm": fingerprint(prm_dir),
                "prm_format": prm_format,
                "seed": seed}
    run_search_report(items, policy, scorer, chosen, method_list, budget_list, out, batch_problems, seed,
                      f"{chosen.name}: {len(items)} problems", identity, overwrite, cfg)


@command()
def refine(
    out: Annotated[Path, typer.Option("--out", "-o", help="one record per problem (JSONL; re-running resumes)")],
    critic: Annotated[str, typer.Option(help="none (self, no feedback) | oracle (exact checker; worlds) | "
                                             "prm[:DIR] (default DIR: the world's PRM) | judge:MODEL (an LLM "
                                             "judge through --judge-backend)")] = "prm",
    rounds: Annotated[int, typer.Option(min=0, help="revision rounds after the first answer")] = 2,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="prm: flag the first line scored below "
                                                                    "this (calibrate with eval-prm)")] = 0.5,
    data: Annotated[str, typer.Option(help="'world[:NAME]', 'gsm8k:<split>', 'math500', or a file/dataset")]
    = "world",
    limit: Annotated[int, typer.Option(min=1)] = 200,
    min_steps: Annotated[int, typer.Option(min=1, help="world problems: fewest steps")] = 6,
    max_steps: Annotated[int, typer.Option(min=1, help="world problems: most steps")] = 8,
    temperature: Annotated[float, typer.Option(min=0.0, help="sampling temperature of answers and revisions")]
    = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    backend: Backend = "world",
    model: Model = None,
    base_url: BaseUrl = None,
    judge_backend: Annotated[str, typer.Option(help="backend of judge:MODEL")] = "openai",
    judge_base_url: Annotated[str | None, typer.Option(help="judge server (default: --base-url)")] = None,
    task: Annotated[str | None, typer.Option(help="arith | gsm8k | math (default: from --data)")] = None,
    thinking: Annotated[bool, typer.Option(help="real data: ask for a <|thinking|> scratchpad first "
                                                "(PRefLexOR's format)")] = False,
    batch_problems: Annotated[int, typer.Option(min=1)] = 64,
    chat: ChatFlag = None,
    seed: int = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    timeout: Timeout = 60.0,
    retries: Retries = 3,
    prompts_per_request: PromptsPerRequest = 16,
    tokenizer: TokenizerDir = None,
    overwrite: Overwrite = False,
    threads: Threads = 1,
) -> None:
    """Recursive refinement (PRefLexOR): answer, let a critic flag a line, keep the lines before
    it and resample the rest, repeat; prints accuracy and tokens per round."""
    from stepforge.runs import claim_output, fingerprint
    from stepforge.search.refine import JudgeCritic, NoCritic, OracleCritic, PRMCritic, refine_to_file
    from stepforge.tasks import world_of

    quiet_hf(threads)
    items = load_data(data, limit, seed, min_steps=min_steps, max_steps=max_steps, prefix="refine",
                      seed_offset=40_000)
    policy = make_cli_policy(backend, model, base_url, device, dtype, timeout, retries, prompts_per_request, tokenizer,
                             world_in(data))
    chosen = resolve_task(task, data, chat, policy)
    chosen = chosen.with_thinking() if thinking else chosen
    kind, _, where = critic.partition(":")
    if kind == "none":
        judge = NoCritic()
    elif kind == "oracle":
        judge = OracleCritic(chosen)
    elif kind == "prm":
        world = world_of(chosen)
        prm_dir = where or (world.prm_dir if world is not None else None)
        if prm_dir is None:
            raise ValueError("--critic prm needs a PRM directory on real data: --critic prm:DIR")
        judge = PRMCritic(load_scorer(Path(prm_dir), "stepforge", device, dtype), threshold)
        where = str(prm_dir)
    elif kind == "judge":
        if not where:
            raise ValueError("--critic judge needs a model: --critic judge:MODEL")
        judge = JudgeCritic(make_cli_policy(judge_backend, where, judge_base_url or base_url, device, dtype, timeout,
                                            retries, prompts_per_request), chat=judge_backend != "world")
    else:
        raise ValueError(f"unknown critic {critic!r}; choose none, oracle, prm[:DIR] or judge:MODEL")
    identity = {"command": "refine", "data": data_identity(data), "limit": limit, "min_steps": min_steps,
                "max_steps": max_steps, "critic": kind, "critic_model": fingerprint(where) if where else None,
                "threshold": threshold, "rounds": rounds, "temperature": temperature,
                "max_new_tokens": max_new_tokens, "task": chosen.name, "chat": chosen.chat,
                **policy_identity(backend, model, base_url, world_in(data)), "seed": seed}
    claim_output(out, identity, overwrite=overwrite)
    with progress() as bar:
        t = bar.add_task(f"refining ({kind} critic, {rounds} rounds)", total=len(items), rate="")
        records = refine_to_file(policy, items, chosen, judge, out, rounds, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed, batch_problems=batch_problems,
                                 on_batch=lambda n: bar.update(t, advance=n))
        bar.update(t, completed=len(items))
    table = Table(title=f"refinement with the {kind} critic ({len(records)} problems)")
    for c in ("round", "latest answer", "majority of rounds", "revised", "gen tokens / problem"):
        table.add_column(c, justify="right")
    spent = 0.0
    for r in range(rounds + 1):
        spent += sum(rec.generated_tokens[r] for rec in records) / len(records)
        table.add_row(str(r), f"{sum(rec.correct[r] for rec in records) / len(records):.1%}",
                      f"{sum(rec.integrated[r] for rec in records) / len(records):.1%}",
                      str(sum(rec.revised_from[r] is not None for rec in records)), f"{spent:,.0f}")
    console.print(table)
    console.print(f"wrote [bold]{out}[/bold]")
